//! A client of berthd's streaming server, as kubectl (through the kubelet) and crictl are: the
//! HTTP upgrade written by hand, SPDY/3.1 through berth's SPDY library in the client role, and
//! WebSocket through tungstenite, with the channel framing of the Kubernetes protocols.
//! Connections are made inside the test node's network namespace, where berthd listens.

use std::time::Duration;

use base64::Engine;
use berth_cri_server::streaming::spdy::{self, Headers, Role, Session, StreamReader, StreamWriter};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::Node;

pub const V4: &str = "v4.channel.k8s.io";
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// The remote command protocols client-go offers over SPDY, most preferred first.
pub const SPDY_OFFER: [&str; 5] =
    ["v5.channel.k8s.io", V4, "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];

/// `http://host:port/path` → (`host:port`, `/path`).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let slash = rest.find('/').expect("a path");
    (rest[..slash].to_string(), rest[slash..].to_string())
}

/// A TCP connection to the URL's host, made inside the node.
pub async fn connect(node: &Node, url: &str) -> TcpStream {
    let (host, _) = split_url(url);
    let stream = node.in_netns(|| std::net::TcpStream::connect(&host)).expect("connecting");
    // As Go's net package does by default: small frames go out at once.
    stream.set_nodelay(true).unwrap();
    stream.set_nonblocking(true).unwrap();
    TcpStream::from_std(stream).unwrap()
}

/// The answer to an HTTP request: status, headers (names lower-cased), and the connection,
/// positioned right after the head (the upgraded protocol starts there).
pub struct Answer<IO = TcpStream> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub io: IO,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Answer<IO> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub async fn body(mut self) -> String {
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.io.read_to_end(&mut body)).await;
        String::from_utf8_lossy(&body).into_owned()
    }
}

/// Sends `method path` with `headers` on a new connection inside the node.
pub async fn request(node: &Node, url: &str, method: &str, headers: &[(&str, &str)]) -> Answer {
    request_on(connect(node, url).await, url, method, headers).await
}

/// Sends `method path` with `headers` on `io` and reads the response head byte by byte, so
/// that nothing after it is consumed.
pub async fn request_on<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> Answer<IO> {
    let (host, path) = split_url(url);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        let byte = io.read_u8().await.expect("reading the response head");
        raw.push(byte);
        assert!(raw.len() < 64 * 1024, "response head too long");
    }
    let text = String::from_utf8(raw).expect("a text head");
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status: status.expect("a status line"), headers, io }
}

/// A SPDY upgrade offering `protocols`; panics unless it succeeds.
pub async fn spdy_session(node: &Node, url: &str, protocols: &[&str]) -> (Session, String) {
    spdy_session_on(connect(node, url).await, url, protocols).await
}

/// A SPDY upgrade on `io` (a TLS stream, say).
pub async fn spdy_session_on<IO>(io: IO, url: &str, protocols: &[&str]) -> (Session, String)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
    headers.extend(protocols.iter().map(|p| ("X-Stream-Protocol-Version", *p)));
    let answer = request_on(io, url, "POST", &headers).await;
    assert_eq!(answer.status, 101, "SPDY upgrade of {url}");
    let chosen = answer.header("x-stream-protocol-version").unwrap_or_default().to_string();
    let (session, _incoming) = Session::new(answer.io, Role::Client, spdy::Limits::default());
    (session, chosen)
}

/// What a remote command is given.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub stdin: Option<Vec<u8>>,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// Sent on the resize stream (tty) before stdin.
    pub size: Option<(u16, u16)>,
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream: a JSON status (v4, v5), text on failure (older), or nothing.
    pub error: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code as kubectl reads it: 0 on Success, the ExitCode cause on NonZeroExitCode.
    pub fn exit_code(&self) -> Option<i32> {
        let status: serde_json::Value = serde_json::from_slice(&self.error).ok()?;
        match status["status"].as_str()? {
            "Success" => Some(0),
            _ if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
                .as_array()?
                .iter()
                .find(|c| c["reason"] == "ExitCode")?["message"]
                .as_str()?
                .parse()
                .ok(),
            _ => None,
        }
    }
}

/// The streams of a remote command over SPDY, opened as client-go opens them.
pub struct SpdyCommand {
    pub session: Session,
    pub error: StreamReader,
    pub stdin: Option<StreamWriter>,
    pub stdout: Option<StreamReader>,
    pub stderr: Option<StreamReader>,
    pub resize: Option<StreamWriter>,
}

pub async fn spdy_command(
    node: &Node,
    url: &str,
    protocols: &[&str],
    input: &Input,
) -> (SpdyCommand, String) {
    let (session, chosen) = spdy_session(node, url, protocols).await;
    let command = spdy_command_with(session, &chosen, input).await;
    (command, chosen)
}

/// The streams of a remote command, on a session upgraded to protocol `chosen`.
pub async fn spdy_command_with(session: Session, chosen: &str, input: &Input) -> SpdyCommand {
    let open = |kind: &str| {
        let session = session.clone();
        let headers = Headers::new().with("streamtype", kind);
        async move { session.open(headers).await.expect("opening a stream").split() }
    };
    let (error, error_w) = open("error").await;
    drop(error_w);
    let stdin = match input.stdin {
        Some(_) => Some(open("stdin").await.1),
        None => None,
    };
    let stdout = match input.stdout {
        true => Some(open("stdout").await.0),
        false => None,
    };
    let stderr = match input.stderr && !input.tty {
        true => Some(open("stderr").await.0),
        false => None,
    };
    let resize = match input.tty && chosen != "v2.channel.k8s.io" && chosen != "channel.k8s.io" {
        true => Some(open("resize").await.1),
        false => None,
    };
    SpdyCommand { session, error, stdin, stdout, stderr, resize }
}

/// Runs a remote command to its end over SPDY.
pub async fn spdy_run(node: &Node, url: &str, protocols: &[&str], input: Input) -> Output {
    let (command, _) = spdy_command(node, url, protocols, &input).await;
    spdy_finish(command, input).await
}

/// Feeds the input to a remote command's streams and reads them to their ends.
pub async fn spdy_finish(mut command: SpdyCommand, input: Input) -> Output {
    if let (Some(resize), Some((width, height))) = (command.resize.as_mut(), input.size) {
        let line = format!("{{\"Width\":{width},\"Height\":{height}}}\n");
        resize.write_all(line.as_bytes()).await.unwrap();
    }
    let feed = async {
        if let (Some(mut stdin), Some(data)) = (command.stdin.take(), input.stdin.clone()) {
            stdin.write_all(&data).await.unwrap();
            stdin.shutdown().await.unwrap();
        }
    };
    let read = |reader: Option<StreamReader>| async move {
        let mut out = Vec::new();
        if let Some(mut reader) = reader {
            reader.read_to_end(&mut out).await.unwrap();
        }
        out
    };
    let (_, stdout, stderr, error) = tokio::join!(
        feed,
        read(command.stdout.take()),
        read(command.stderr.take()),
        read(Some(command.error))
    );
    Output { stdout, stderr, error }
}

/// A WebSocket upgrade offering `protocols`.
pub async fn websocket(
    node: &Node,
    url: &str,
    protocols: &[&str],
) -> (tokio_tungstenite::WebSocketStream<TcpStream>, Option<String>) {
    let io = connect(node, url).await;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut request = ws_url.into_client_request().unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    }
    let (ws, response) =
        tokio_tungstenite::client_async(request, io).await.expect("WebSocket upgrade");
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (ws, chosen)
}

/// Runs a remote command to its end over a WebSocket channel protocol: stdin is sent at once,
/// followed by v5's CLOSE of channel 0; the socket is read until the server closes it.
pub async fn ws_run(node: &Node, url: &str, protocol: &str, input: Input) -> Output {
    let (mut ws, chosen) = websocket(node, url, &[protocol]).await;
    assert_eq!(chosen.as_deref(), Some(protocol));
    let base64 = protocol.contains("base64");
    if let Some((width, height)) = input.size {
        let line = format!("{{\"Width\":{width},\"Height\":{height}}}");
        ws.send(encode(base64, 4, line.as_bytes())).await.unwrap();
    }
    if let Some(data) = &input.stdin {
        for chunk in data.chunks(16 * 1024) {
            ws.send(encode(base64, 0, chunk)).await.unwrap();
        }
        if protocol == "v5.channel.k8s.io" {
            ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
        }
    }
    let mut output = Output::default();
    while let Some(message) = ws.next().await {
        let (channel, payload) = match message.expect("a message") {
            Message::Binary(data) if !base64 => match data.split_first() {
                Some((c, p)) => (*c, p.to_vec()),
                None => continue,
            },
            Message::Text(text) if base64 => {
                let (&digit, rest) = text.as_bytes().split_first().unwrap();
                let payload = base64::engine::general_purpose::STANDARD.decode(rest).unwrap();
                (digit - b'0', payload)
            }
            Message::Close(frame) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000), "normal closure");
                break;
            }
            other => panic!("unexpected message {other:?}"),
        };
        match channel {
            1 => output.stdout.extend(payload),
            2 => output.stderr.extend(payload),
            3 => output.error.extend(payload),
            other => panic!("data on channel {other}"),
        }
    }
    output
}

pub fn encode(base64: bool, channel: u8, payload: &[u8]) -> Message {
    if base64 {
        let text = format!(
            "{}{}",
            char::from(b'0' + channel),
            base64::engine::general_purpose::STANDARD.encode(payload)
        );
        Message::text(text)
    } else {
        let mut data = vec![channel];
        data.extend_from_slice(payload);
        Message::Binary(data.into())
    }
}

/// One forwarded connection over a SPDY port-forward session: the error stream (read to its
/// end for the outcome) and the data stream, both ways.
pub struct Forward {
    pub error: StreamReader,
    pub data_in: StreamReader,
    pub data_out: StreamWriter,
}

pub async fn spdy_forward(session: &Session, port: u16, request_id: u32) -> Forward {
    let headers = |kind: &str| {
        Headers::new()
            .with("streamtype", kind)
            .with("port", port.to_string())
            .with("requestid", request_id.to_string())
    };
    let (error, mut error_w) = session.open(headers("error")).await.expect("error stream").split();
    error_w.shutdown().await.unwrap();
    let (data_in, data_out) = session.open(headers("data")).await.expect("data stream").split();
    Forward { error, data_in, data_out }
}

/// A whole HTTP/1.0 GET through a forwarded connection: the response, to EOF, and what the
/// error stream said. As client-go does, the data stream is reset once the response has
/// ended, and then the error stream is read to its end.
pub async fn http_get(forward: Forward, path: &str) -> (Vec<u8>, String) {
    let Forward { mut error, mut data_in, mut data_out } = forward;
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    // A port nobody listens on gets the data stream reset at once, maybe before this write:
    // client-go only logs a failed copy; the error stream tells what happened.
    let _ = data_out.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    data_in.read_to_end(&mut response).await.unwrap();
    data_out.reset();
    let mut error_text = Vec::new();
    error.read_to_end(&mut error_text).await.unwrap();
    (response, String::from_utf8_lossy(&error_text).into_owned())
}

/// The body of an HTTP response.
pub fn body(response: &[u8]) -> &[u8] {
    let at = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
    &response[at..]
}
