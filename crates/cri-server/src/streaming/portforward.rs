//! Port forward once the connection is upgraded. Over SPDY (`portforward.k8s.io`) each
//! forwarded connection is a pair of streams, error and data, that the client opens with the
//! same `requestid`; over WebSocket channels each port of the request gets one data and one
//! error channel for the connection's life. Either way, a pair is joined to a TCP connection
//! to the port inside the pod.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::streaming::spdy::{IncomingStream, Session, Stream};
use crate::streaming::websocket::{self, WsProtocol};

/// A pair whose second stream does not come within this is dropped.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// Pairs being formed at once; more are refused, which bounds what a client that opens only
/// halves can make us hold.
const MAX_PENDING_PAIRS: usize = 64;

/// Serves the forwards of one SPDY session until the client closes it.
pub async fn serve_spdy(
    runtime: Arc<berth_runtime::Runtime>,
    pod_id: String,
    session: Session,
    mut incoming: tokio::sync::mpsc::Receiver<IncomingStream>,
) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    loop {
        let next_expiry = pending.values().map(|p| p.since + PAIR_TIMEOUT).min();
        let expired = async {
            match next_expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            stream = incoming.recv() => {
                let Some(stream) = stream else { break };
                if let Some((port, data, error)) = pair(stream, &mut pending).await {
                    let runtime = runtime.clone();
                    let pod_id = pod_id.clone();
                    tokio::spawn(async move { forward_spdy(&runtime, &pod_id, port, data, error).await });
                }
            }
            () = expired => expire(&mut pending).await,
        }
    }
    session.close().await;
}

/// Half of a pair, waiting for the other half.
struct Pending {
    since: Instant,
    port: u16,
    data: Option<Stream>,
    error: Option<Stream>,
}

/// Takes a new stream into its pair; returns the pair once complete.
async fn pair(
    incoming: IncomingStream,
    pending: &mut HashMap<String, Pending>,
) -> Option<(u16, Stream, Stream)> {
    let headers = &incoming.headers;
    let port = headers.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
    let kind = headers.get("streamtype").map(str::to_owned);
    let (Some(port), Some(kind)) = (port, kind) else {
        tracing::debug!(stream = incoming.id, "port forward stream without a valid port or type");
        incoming.reject();
        return None;
    };
    if kind != "data" && kind != "error" {
        incoming.reject();
        return None;
    }
    // Very old clients send no request id: their error stream comes right before its data
    // stream, two ids earlier.
    let key = match headers.get("requestid") {
        Some(id) => id.to_owned(),
        None if kind == "data" => incoming.id.wrapping_sub(2).to_string(),
        None => incoming.id.to_string(),
    };
    if !pending.contains_key(&key) && pending.len() >= MAX_PENDING_PAIRS {
        incoming.reject();
        return None;
    }
    let stream = incoming.accept().await.ok()?;
    let entry = pending.entry(key.clone()).or_insert_with(|| Pending {
        since: Instant::now(),
        port,
        data: None,
        error: None,
    });
    let slot = if kind == "data" { &mut entry.data } else { &mut entry.error };
    if slot.is_some() {
        let message =
            format!("error processing stream for request {key}: {kind} stream already assigned");
        if let Some(error) = entry.error.take() {
            let (_, mut writer) = error.split();
            let _ = writer.write_all(message.as_bytes()).await;
            let _ = writer.shutdown().await;
        }
        pending.remove(&key);
        return None;
    }
    *slot = Some(stream);
    if entry.data.is_some() && entry.error.is_some() {
        let entry = pending.remove(&key)?;
        return Some((entry.port, entry.data?, entry.error?));
    }
    None
}

async fn expire(pending: &mut HashMap<String, Pending>) {
    let now = Instant::now();
    let expired: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since + PAIR_TIMEOUT <= now)
        .map(|(key, _)| key.clone())
        .collect();
    for key in expired {
        if let Some(Pending { error: Some(error), .. }) = pending.remove(&key) {
            let (_, mut writer) = error.split();
            let message = format!("request {key}: timed out waiting for streams");
            let _ = writer.write_all(message.as_bytes()).await;
            let _ = writer.shutdown().await;
        }
    }
}

async fn forward_spdy(
    runtime: &berth_runtime::Runtime,
    pod_id: &str,
    port: u16,
    data: Stream,
    error: Stream,
) {
    let (data_in, data_out) = data.split();
    let (_, mut error_out) = error.split();
    match runtime.pods().connect_port(pod_id, port).await {
        Ok(conn) => {
            copy_both(conn, data_in, data_out).await;
        }
        Err(err) => {
            tracing::debug!(pod_id, port, error = %err, "port forward failed");
            let message = format!("error forwarding port {port} to pod {pod_id}, uid : {err}");
            let _ = error_out.write_all(message.as_bytes()).await;
            data_out.reset();
        }
    }
    let _ = error_out.shutdown().await;
}

/// Copies between the client's stream and the pod's connection until both directions end;
/// each direction's end is passed on as a half-close.
async fn copy_both(
    conn: tokio::net::TcpStream,
    mut from_client: impl AsyncRead + Unpin,
    mut to_client: impl AsyncWrite + Unpin,
) {
    let (mut conn_read, mut conn_write) = conn.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut from_client, &mut conn_write).await;
        let _ = conn_write.shutdown().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut conn_read, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Serves the channel form over WebSocket: the ports come from the CRI request.
pub async fn serve_websocket<S>(
    runtime: Arc<berth_runtime::Runtime>,
    pod_id: String,
    ws: tokio_tungstenite::WebSocketStream<S>,
    protocol: WsProtocol,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ports: Vec<(u16, u8, u8)> = ports
        .into_iter()
        .enumerate()
        .filter_map(|(i, port)| {
            let data = u8::try_from(2 * i).ok()?;
            Some((port, data, data.checked_add(1)?))
        })
        .collect();
    let inputs: Vec<u8> = ports.iter().map(|(_, data, _)| *data).collect();
    let outputs: Vec<u8> = ports.iter().flat_map(|(_, data, error)| [*data, *error]).collect();
    // Each channel starts with its port, little-endian, for the client to match them up.
    let initial = ports
        .iter()
        .flat_map(|(port, data, error)| {
            [(*data, port.to_le_bytes().to_vec()), (*error, port.to_le_bytes().to_vec())]
        })
        .collect();
    let mut split = websocket::split(ws, protocol, &inputs, &outputs, initial);
    let mut forwards = Vec::new();
    for (port, data, error) in ports {
        let (Some(from_client), Some(to_client), Some(mut error_out)) =
            (split.inputs.remove(&data), split.outputs.remove(&data), split.outputs.remove(&error))
        else {
            continue;
        };
        let (runtime, pod_id) = (runtime.clone(), pod_id.clone());
        forwards.push(tokio::spawn(async move {
            match runtime.pods().connect_port(&pod_id, port).await {
                Ok(conn) => copy_both(conn, from_client, to_client).await,
                Err(err) => {
                    let message =
                        format!("error forwarding port {port} to pod {pod_id}, uid : {err}");
                    let _ = error_out.write_all(message.as_bytes()).await;
                    let mut to_client = to_client;
                    let _ = to_client.shutdown().await;
                }
            }
            let _ = error_out.shutdown().await;
        }));
    }
    let all = futures::future::join_all(forwards);
    tokio::select! {
        _ = all => {}
        () = split.gone => {}
    }
}
