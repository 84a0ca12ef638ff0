//! The streaming server: an HTTP/1.1 listener (TLS optional) whose only routes are
//! `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`, each upgraded to SPDY/3.1 or
//! to a WebSocket as the client asks. A token is taken by the first request that names it,
//! whatever then happens, so a URL works once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::StreamingConfig;
use crate::streaming::cache::{CacheError, RequestCache, StreamRequest};
use crate::streaming::portforward;
use crate::streaming::remotecommand::{self, SpdyVersion};
use crate::streaming::spdy::{self, Role, Session};
use crate::streaming::websocket::{self, WsProtocol};

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// Connections open at once; more wait to be accepted. Each costs at most a session's bounded
/// buffers.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads larger than this are refused (hyper's minimum is 8 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// A SPDY session in which no frame has passed for this long is closed: containerd's
/// `stream_idle_timeout` default. client-go pings every 5 s, so a live client never idles.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);

fn spdy_limits() -> spdy::Limits {
    spdy::Limits { idle_timeout: Some(IDLE_TIMEOUT), ..spdy::Limits::default() }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("streaming server address {address:?}: {message}")]
    Address { address: String, message: String },
    #[error("streaming server TLS: {0}")]
    Tls(String),
    #[error("binding the streaming server to {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Registers streaming requests and serves their URLs.
pub struct StreamingServer {
    cache: RequestCache,
    base_url: String,
    runtime: Arc<berth_runtime::Runtime>,
}

impl StreamingServer {
    /// Binds the listener and starts serving in the background.
    pub async fn start(
        config: &StreamingConfig,
        runtime: Arc<berth_runtime::Runtime>,
    ) -> Result<Arc<StreamingServer>, StreamingError> {
        let address: SocketAddr =
            config.address.parse().map_err(|err| StreamingError::Address {
                address: config.address.clone(),
                message: format!("{err}; expected ip:port"),
            })?;
        let tls = tls_acceptor(config)?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StreamingError::Bind { address: config.address.clone(), source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind { address: config.address.clone(), source })?;
        let server = Arc::new(StreamingServer {
            cache: RequestCache::default(),
            base_url: base_url(local, tls.is_some()),
            runtime,
        });
        tracing::info!(url = %server.base_url, "streaming server listening");
        tokio::spawn(serve(listener, tls, server.clone()));
        Ok(server)
    }

    /// The URL for `request`, valid once within a minute.
    pub fn register(&self, request: StreamRequest) -> Result<String, CacheError> {
        let route = request.route();
        let token = self.cache.insert(request)?;
        Ok(format!("{}/{route}/{token}", self.base_url))
    }
}

/// The URL clients dial: an unspecified listen address is reachable on loopback.
fn base_url(mut local: SocketAddr, tls: bool) -> String {
    if local.ip().is_unspecified() {
        local.set_ip(match local {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{}://{local}", if tls { "https" } else { "http" })
}

fn tls_acceptor(
    config: &StreamingConfig,
) -> Result<Option<tokio_rustls::TlsAcceptor>, StreamingError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&config.tls_cert_file, &config.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(StreamingError::Tls(
                "tls_cert_file and tls_key_file go together: set both or neither".into(),
            ))
        }
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| StreamingError::Tls(format!("reading {}: {err}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|err| StreamingError::Tls(format!("reading {}: {err}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| StreamingError::Tls(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| StreamingError::Tls(err.to_string()))?;
    // client-go speaks HTTP/1.1 only, with or without ALPN.
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config))))
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<StreamingServer>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %err, "streaming server accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (server, tls) = (server.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, server).await,
                Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_connection(stream, server).await,
                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, server: Arc<StreamingServer>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let server = server.clone();
        async move { Ok::<_, std::convert::Infallible>(server.handle(request)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(err) = served {
        tracing::debug!(error = %err, "streaming connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

impl StreamingServer {
    fn handle(self: &Arc<Self>, request: Request<Incoming>) -> Reply {
        let Some((route, token)) = route(request.uri().path()) else { return not_found() };
        if request.method() != Method::GET && request.method() != Method::POST {
            return not_found();
        }
        let Some(stream_request) = self.cache.take(token) else { return not_found() };
        if stream_request.route() != route {
            return not_found();
        }
        if is_websocket(request.headers()) {
            self.upgrade_websocket(request, stream_request)
        } else {
            self.upgrade_spdy(request, stream_request)
        }
    }

    fn upgrade_spdy(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        what: StreamRequest,
    ) -> Reply {
        let port_forward = matches!(what, StreamRequest::PortForward { .. });
        let offered: Vec<String> = request
            .headers()
            .get_all(PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if request.headers().get(PROTOCOL_HEADER).is_none() {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "unable to upgrade: header X-Stream-Protocol-Version does not exist in \
                     request with {} headers",
                    request.headers().len()
                ),
            );
        }
        if offered.is_empty() {
            return text(StatusCode::BAD_REQUEST, "unable to upgrade: no protocol offered");
        }
        let supported: Vec<&'static str> = if port_forward {
            vec![PORT_FORWARD_PROTOCOL]
        } else {
            SpdyVersion::SUPPORTED.iter().map(|(name, _)| *name).collect()
        };
        let Some(chosen) =
            offered.iter().find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        else {
            let mut reply = text(
                StatusCode::FORBIDDEN,
                &format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"),
            );
            for protocol in &supported {
                reply.headers_mut().append(ACCEPTED_HEADER, HeaderValue::from_static(protocol));
            }
            return reply;
        };
        let upgrade_ok = header_contains(request.headers(), header::CONNECTION, "upgrade")
            && header_contains(request.headers(), header::UPGRADE, "spdy/3.1");
        if !upgrade_ok {
            return text(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request",
            );
        }
        let server = self.clone();
        let mut reply = switch_protocols(&mut request, "SPDY/3.1", move |io| async move {
            let (session, incoming) = Session::new(io, Role::Server, spdy_limits());
            server.run_spdy(session, incoming, what, chosen).await;
        });
        let headers = reply.headers_mut();
        headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(chosen));
        reply
    }

    async fn run_spdy(
        &self,
        session: Session,
        mut incoming: tokio::sync::mpsc::Receiver<spdy::IncomingStream>,
        what: StreamRequest,
        protocol: &'static str,
    ) {
        let version = SpdyVersion::SUPPORTED
            .iter()
            .find(|(name, _)| *name == protocol)
            .map_or(SpdyVersion::V4, |(_, version)| *version);
        match what {
            StreamRequest::PortForward { pod_id, .. } => {
                portforward::serve_spdy(self.runtime.clone(), pod_id, session, incoming).await;
                return;
            }
            StreamRequest::Exec { io, .. } | StreamRequest::Attach { io, .. } => {
                let Some(channels) =
                    remotecommand::spdy_channels(&session, &mut incoming, io, version).await
                else {
                    session.abort();
                    return;
                };
                self.remotecommand(what, channels, version.status_format()).await;
            }
        }
        finish(session).await;
    }

    /// Exec or attach, once the transport has made the channels.
    async fn remotecommand(
        &self,
        what: StreamRequest,
        channels: remotecommand::Channels,
        format: remotecommand::StatusFormat,
    ) {
        let runtime = &self.runtime;
        match what {
            StreamRequest::Exec { container_id, cmd, io } => {
                remotecommand::exec(runtime, &container_id, cmd, io, channels, format).await
            }
            StreamRequest::Attach { container_id, io } => {
                remotecommand::attach(runtime, &container_id, io, channels, format).await
            }
            // Not a remote command: the callers serve port forwards themselves.
            StreamRequest::PortForward { .. } => {}
        }
    }

    fn upgrade_websocket(
        self: &Arc<Self>,
        mut request: Request<Incoming>,
        what: StreamRequest,
    ) -> Reply {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade is a GET");
        }
        let headers = request.headers();
        if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
            let mut reply = text(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
            reply
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            return reply;
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let accept_key =
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let port_forward = matches!(what, StreamRequest::PortForward { .. });
        let offered =
            headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|v| v.to_str().ok());
        let Ok(protocol) = websocket::choose(offered, port_forward) else {
            return text(StatusCode::FORBIDDEN, "");
        };
        let server = self.clone();
        let mut reply = switch_protocols(&mut request, "websocket", move |io| async move {
            let ws = websocket::accept(io).await;
            server.run_websocket(ws, protocol, what).await;
        });
        let headers = reply.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&accept_key) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
        }
        if let Some(name) = protocol.name() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
        }
        reply
    }

    async fn run_websocket<S>(
        &self,
        ws: tokio_tungstenite::WebSocketStream<S>,
        protocol: WsProtocol,
        what: StreamRequest,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let format = protocol.status_format();
        match what {
            StreamRequest::PortForward { pod_id, .. }
                if protocol == WsProtocol::SpdyPortForward =>
            {
                let tunnel = websocket::tunnel(ws);
                let (session, incoming) = Session::new(tunnel, Role::Server, spdy_limits());
                portforward::serve_spdy(self.runtime.clone(), pod_id, session, incoming).await;
            }
            StreamRequest::PortForward { pod_id, ports } => {
                portforward::serve_websocket(self.runtime.clone(), pod_id, ws, protocol, ports)
                    .await;
            }
            StreamRequest::Exec { io, .. } | StreamRequest::Attach { io, .. } => {
                let channels = websocket::remotecommand_channels(ws, protocol, io);
                self.remotecommand(what, channels, format).await;
            }
        }
    }
}

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// The 101 answer to `request`, for `protocol`; once hyper has sent it, `serve` runs on the
/// connection.
fn switch_protocols<F, Fut>(
    request: &mut Request<Incoming>,
    protocol: &'static str,
    serve: F,
) -> Reply
where
    F: FnOnce(Upgraded) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(err) => tracing::debug!(error = %err, protocol, "upgrade failed"),
        }
    });
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = reply.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(protocol));
    reply
}

/// How long a finished exec or attach session waits for the client to take the last bytes
/// and close, before it is cut.
const FINISH_GRACE: Duration = Duration::from_secs(15);

async fn finish(session: Session) {
    if tokio::time::timeout(FINISH_GRACE, session.close()).await.is_err() {
        session.abort();
    }
}

/// `/exec/<token>` and the like: exactly two segments.
fn route(path: &str) -> Option<(&str, &str)> {
    let mut parts = path.strip_prefix('/')?.split('/');
    let (route, token) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || token.is_empty() {
        return None;
    }
    matches!(route, "exec" | "attach" | "portforward").then_some((route, token))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade_is_websocket = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
    upgrade_is_websocket && header_contains(headers, header::CONNECTION, "upgrade")
}

fn header_contains(headers: &HeaderMap, name: header::HeaderName, needle: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains(needle))
}

fn not_found() -> Reply {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

fn text(status: StatusCode, body: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_routes_with_a_token_are_served() {
        assert_eq!(route("/exec/abcdefgh"), Some(("exec", "abcdefgh")));
        assert_eq!(route("/portforward/x"), Some(("portforward", "x")));
        assert_eq!(route("/exec/"), None);
        assert_eq!(route("/exec/a/b"), None);
        assert_eq!(route("/metrics/a"), None);
        assert_eq!(route("exec/a"), None);
    }

    #[test]
    fn unspecified_addresses_are_dialled_on_loopback() {
        assert_eq!(base_url("0.0.0.0:1234".parse().unwrap(), false), "http://127.0.0.1:1234");
        assert_eq!(base_url("[::]:1".parse().unwrap(), true), "https://[::1]:1");
        assert_eq!(base_url("10.0.0.2:5".parse().unwrap(), false), "http://10.0.0.2:5");
    }
}
