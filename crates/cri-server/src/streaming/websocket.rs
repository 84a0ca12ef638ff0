//! The WebSocket transports: the channel protocols (`channel.k8s.io` and its base64, v4 and
//! v5 forms), where each message is one channel byte and a payload, and the SPDY tunnel that
//! crictl's port-forward uses, where the messages carry a SPDY session's bytes.
//!
//! Each channel becomes an ordinary byte stream on our side (one half of a `tokio::io::duplex`
//! pipe), so exec, attach and port forward do not know which transport carries them; the
//! pipes are bounded, and a client that does not read stalls its own session only.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::streaming::cache::StdioRequest;
use crate::streaming::remotecommand::{Channels, StatusFormat};

/// No message (or frame) of ours or a client's is anywhere near this; a bigger one is abuse.
const MAX_MESSAGE: usize = 1 << 20;
/// Bytes buffered per channel and direction.
const CHANNEL_BUFFER: usize = 64 * 1024;
/// Largest payload read from a channel into one message.
const CHUNK: usize = 32 * 1024;
/// Messages queued for the socket's writer.
const QUEUE: usize = 8;

/// v5's CLOSE signal: `[255, channel]` from the client ends that channel's input.
const CLOSE_SIGNAL: u8 = 255;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// The subprotocols we speak, by `Sec-WebSocket-Protocol` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsProtocol {
    /// No subprotocol: binary channels, as `channel.k8s.io`.
    Unnamed,
    Channel,
    Base64Channel,
    V4Channel,
    V4Base64Channel,
    V5Channel,
    /// `SPDY/3.1+portforward.k8s.io`: a SPDY port-forward session inside binary messages.
    SpdyPortForward,
}

impl WsProtocol {
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            WsProtocol::Unnamed => return None,
            WsProtocol::Channel => "channel.k8s.io",
            WsProtocol::Base64Channel => "base64.channel.k8s.io",
            WsProtocol::V4Channel => "v4.channel.k8s.io",
            WsProtocol::V4Base64Channel => "v4.base64.channel.k8s.io",
            WsProtocol::V5Channel => "v5.channel.k8s.io",
            WsProtocol::SpdyPortForward => "SPDY/3.1+portforward.k8s.io",
        })
    }

    /// What exec and attach accept, and what port forward does.
    pub fn supported(port_forward: bool) -> &'static [WsProtocol] {
        use WsProtocol::*;
        if port_forward {
            &[SpdyPortForward, V4Channel, V4Base64Channel]
        } else {
            &[V5Channel, V4Channel, V4Base64Channel, Channel, Base64Channel]
        }
    }

    fn base64(self) -> bool {
        matches!(self, WsProtocol::Base64Channel | WsProtocol::V4Base64Channel)
    }

    pub fn status_format(self) -> StatusFormat {
        match self {
            WsProtocol::V4Channel | WsProtocol::V4Base64Channel | WsProtocol::V5Channel => {
                StatusFormat::Json
            }
            _ => StatusFormat::Text,
        }
    }

    fn resizes(self) -> bool {
        self.status_format() == StatusFormat::Json
    }
}

/// The first subprotocol the client offers that we speak (`Ok(Unnamed)` when it offers none);
/// `Err` when it offers only others.
pub fn choose<'a>(
    offered: impl Iterator<Item = &'a str>,
    port_forward: bool,
) -> Result<WsProtocol, ()> {
    let mut any = false;
    for name in offered.flat_map(|value| value.split(',')).map(str::trim).filter(|n| !n.is_empty())
    {
        any = true;
        if let Some(protocol) =
            WsProtocol::supported(port_forward).iter().find(|p| p.name() == Some(name))
        {
            return Ok(*protocol);
        }
    }
    if any {
        Err(())
    } else {
        Ok(WsProtocol::Unnamed)
    }
}

/// The server side of an upgraded connection.
pub async fn accept<S>(io: S) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .max_write_buffer_size(4 * MAX_MESSAGE);
    WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
}

/// A socket split into channels: what the client sends on `inputs` is read from the returned
/// readers; what is written to the writers of `outputs` is sent. The socket closes (code
/// 1000) once every output writer is shut down.
pub struct Split {
    pub inputs: HashMap<u8, DuplexStream>,
    pub outputs: HashMap<u8, DuplexStream>,
    pub gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// `initial`: messages sent before anything else (the channel announcement of exec and
/// attach, the port prefixes of port forward).
pub fn split<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    inputs: &[u8],
    outputs: &[u8],
    initial: Vec<(u8, Vec<u8>)>,
) -> Split
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let (gone_tx, gone_rx) = watch::channel(false);
    let (queue_tx, queue_rx) = mpsc::channel::<(u8, Bytes)>(QUEUE);

    let mut ours_out = HashMap::new();
    for &channel in outputs {
        let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
        ours_out.insert(channel, ours);
        tokio::spawn(pump_out(channel, theirs, queue_tx.clone()));
    }
    drop(queue_tx);
    tokio::spawn(write_messages(sink, queue_rx, protocol, initial, gone_tx.clone()));

    let mut ours_in = HashMap::new();
    let mut theirs_in = HashMap::new();
    for &channel in inputs {
        let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
        ours_in.insert(channel, ours);
        theirs_in.insert(channel, theirs);
    }
    tokio::spawn(read_messages(stream, theirs_in, protocol, gone_tx));

    let gone = async move {
        let mut gone_rx = gone_rx;
        let _ = gone_rx.wait_for(|gone| *gone).await;
    };
    Split { inputs: ours_in, outputs: ours_out, gone: Box::pin(gone) }
}

/// Exec and attach's channels over a split socket.
pub fn remotecommand_channels<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    io: StdioRequest,
) -> Channels
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let resize = io.tty && protocol.resizes();
    let inputs: Vec<u8> = [(io.stdin, STDIN), (resize, RESIZE)]
        .into_iter()
        .filter_map(|(wanted, channel)| wanted.then_some(channel))
        .collect();
    let outputs: Vec<u8> = [(io.stdout, STDOUT), (io.stderr, STDERR), (true, ERROR)]
        .into_iter()
        .filter_map(|(wanted, channel)| wanted.then_some(channel))
        .collect();
    // The reference servers announce themselves with an empty message on the first channel
    // they write; clients wait for it.
    let first = outputs.first().copied().unwrap_or(ERROR);
    let mut split = split(ws, protocol, &inputs, &outputs, vec![(first, Vec::new())]);
    let boxed_read = |d: Option<DuplexStream>| d.map(|d| Box::pin(d) as _);
    let boxed_write = |d: Option<DuplexStream>| d.map(|d| Box::pin(d) as _);
    let error = split.outputs.remove(&ERROR).map_or_else(
        || Box::pin(tokio::io::sink()) as crate::streaming::remotecommand::BoxWrite,
        |d| Box::pin(d) as _,
    );
    Channels {
        stdin: boxed_read(split.inputs.remove(&STDIN)),
        stdout: boxed_write(split.outputs.remove(&STDOUT)),
        stderr: boxed_write(split.outputs.remove(&STDERR)),
        resize: boxed_read(split.inputs.remove(&RESIZE)),
        error,
        gone: split.gone,
    }
}

/// A SPDY session's bytes over the socket: binary messages in, concatenated; each write out
/// one binary message. Close code 1000 (or any end) is EOF.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(CHANNEL_BUFFER);
    let (mut sink, mut stream) = ws.split();
    let (mut theirs_read, mut theirs_write) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                // Pings are answered by the library as the socket is read.
                _ => continue,
            };
            if theirs_write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = theirs_write.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match theirs_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(Some(done()))).await;
        let _ = sink.close().await;
    });
    ours
}

fn done() -> CloseFrame {
    CloseFrame { code: CloseCode::Normal, reason: "".into() }
}

async fn pump_out(channel: u8, mut from: DuplexStream, queue: mpsc::Sender<(u8, Bytes)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if queue.send((channel, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_messages<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
    mut queue: mpsc::Receiver<(u8, Bytes)>,
    protocol: WsProtocol,
    initial: Vec<(u8, Vec<u8>)>,
    gone: watch::Sender<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    for (channel, payload) in initial {
        if sink.send(encode(protocol, channel, &payload)).await.is_err() {
            let _ = gone.send(true);
            return;
        }
    }
    while let Some((channel, payload)) = queue.recv().await {
        if sink.send(encode(protocol, channel, &payload)).await.is_err() {
            // Dropping the queue makes the pumps fail, and with them the writers.
            let _ = gone.send(true);
            return;
        }
    }
    let _ = sink.send(Message::Close(Some(done()))).await;
    let _ = sink.close().await;
}

async fn read_messages<S>(
    mut stream: futures::stream::SplitStream<WebSocketStream<S>>,
    mut inputs: HashMap<u8, DuplexStream>,
    protocol: WsProtocol,
    gone: watch::Sender<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(Ok(message)) = stream.next().await {
        let (channel, payload) = match message {
            Message::Binary(data) if !protocol.base64() => match data.split_first() {
                Some((channel, payload)) => (*channel, payload.to_vec()),
                None => continue,
            },
            Message::Text(text) if protocol.base64() => match decode_base64(text.as_str()) {
                Some(decoded) => decoded,
                None => break,
            },
            Message::Close(_) => break,
            // Pings are answered by the library; messages of the wrong kind carry nothing.
            _ => continue,
        };
        if channel == CLOSE_SIGNAL && protocol == WsProtocol::V5Channel {
            match payload.as_slice() {
                [closed] => {
                    if let Some(mut input) = inputs.remove(closed) {
                        let _ = input.shutdown().await;
                    }
                    continue;
                }
                _ => break,
            }
        }
        if payload.is_empty() {
            continue;
        }
        if let Some(input) = inputs.get_mut(&channel) {
            if input.write_all(&payload).await.is_err() {
                // Nobody reads that channel any more.
                inputs.remove(&channel);
            }
        }
    }
    for (_, mut input) in inputs {
        let _ = input.shutdown().await;
    }
    let _ = gone.send(true);
}

fn encode(protocol: WsProtocol, channel: u8, payload: &[u8]) -> Message {
    if protocol.base64() {
        let mut text = String::with_capacity(1 + payload.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(payload, &mut text);
        Message::text(text)
    } else {
        let mut data = Vec::with_capacity(1 + payload.len());
        data.push(channel);
        data.extend_from_slice(payload);
        Message::Binary(data.into())
    }
}

fn decode_base64(text: &str) -> Option<(u8, Vec<u8>)> {
    let (&digit, rest) = text.as_bytes().split_first()?;
    let channel = digit.checked_sub(b'0').filter(|c| *c <= 9)?;
    let payload = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    Some((channel, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offered_protocol_we_speak_wins() {
        let offered = ["v5.channel.k8s.io, v4.channel.k8s.io"];
        assert_eq!(choose(offered.into_iter(), false), Ok(WsProtocol::V5Channel));
        let offered = ["bogus", "v4.base64.channel.k8s.io"];
        assert_eq!(choose(offered.into_iter(), false), Ok(WsProtocol::V4Base64Channel));
        assert_eq!(choose(std::iter::empty(), false), Ok(WsProtocol::Unnamed));
        assert_eq!(choose(["v5.channel.k8s.io"].into_iter(), true), Err(()));
        let offered = ["SPDY/3.1+portforward.k8s.io"];
        assert_eq!(choose(offered.into_iter(), true), Ok(WsProtocol::SpdyPortForward));
    }

    #[test]
    fn base64_messages_carry_the_channel_as_a_digit() {
        let Message::Text(text) = encode(WsProtocol::V4Base64Channel, 1, b"hi") else {
            panic!("not text")
        };
        assert_eq!(text.as_str(), "1aGk=");
        assert_eq!(decode_base64("0aGk="), Some((0, b"hi".to_vec())));
        assert_eq!(decode_base64("x"), None);
        let Message::Binary(data) = encode(WsProtocol::V5Channel, 2, b"e") else {
            panic!("not binary")
        };
        assert_eq!(&data[..], &[2, b'e']);
    }

    #[tokio::test]
    async fn channels_carry_data_both_ways_and_v5_close_ends_input() {
        let (server_io, client_io) = tokio::io::duplex(1 << 16);
        let server = accept(server_io);
        let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None);
        let (server, mut client) = tokio::join!(server, client);
        let io = StdioRequest { stdin: true, stdout: true, stderr: true, tty: false };
        let mut channels = remotecommand_channels(server, WsProtocol::V5Channel, io);
        // The announcement first.
        let first = client.next().await.unwrap().unwrap();
        assert_eq!(first, Message::Binary(vec![STDOUT].into()));
        client.send(Message::Binary(vec![STDIN, b'a', b'b'].into())).await.unwrap();
        client.send(Message::Binary(vec![CLOSE_SIGNAL, STDIN].into())).await.unwrap();
        let mut input = Vec::new();
        channels.stdin.take().unwrap().read_to_end(&mut input).await.unwrap();
        assert_eq!(input, b"ab");
        let mut stdout = channels.stdout.take().unwrap();
        stdout.write_all(b"out").await.unwrap();
        stdout.shutdown().await.unwrap();
        let mut stderr = channels.stderr.take().unwrap();
        stderr.shutdown().await.unwrap();
        channels.error.write_all(b"{}").await.unwrap();
        channels.error.shutdown().await.unwrap();
        let mut got = Vec::new();
        while let Some(Ok(message)) = client.next().await {
            got.push(message);
        }
        assert!(got.contains(&Message::Binary(vec![STDOUT, b'o', b'u', b't'].into())), "{got:?}");
        assert!(got.contains(&Message::Binary(vec![ERROR, b'{', b'}'].into())), "{got:?}");
        assert!(
            matches!(got.last(), Some(Message::Close(Some(frame))) if frame.code == CloseCode::Normal)
        );
        drop(client);
        channels.gone.await;
    }
}
