//! Exec and Attach once the connection is upgraded, whatever the transport: the transport
//! (SPDY streams or WebSocket channels) hands over [`Channels`], this module joins them to the
//! process's stdio in the runtime and reports the outcome on the error channel in the form
//! the negotiated protocol version expects.

use std::future::Future;
use std::pin::Pin;

use berth_runtime::{StdioSession, StreamOptions, TerminalSize};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::streaming::cache::StdioRequest;
use crate::streaming::spdy::{IncomingStream, Session, StreamReader, StreamWriter};

pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// One resize message is a small JSON object; anything longer is no terminal size.
const MAX_RESIZE_MESSAGE: usize = 1024;

/// The client's side of a session, as the transport made it. Channels the client did not
/// ask for are `None`.
pub struct Channels {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    /// Newline-separated JSON terminal sizes (tty only).
    pub resize: Option<BoxRead>,
    pub error: BoxWrite,
    /// Resolves when the client has gone (its connection ended).
    pub gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// How the error channel reports the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    /// `channel.k8s.io` and the base64 form over WebSocket, v2 and v3 over SPDY: text on
    /// failure, nothing on success.
    Text,
    /// v4 and v5: a JSON `metav1.Status` either way, with the exit code as a cause.
    Json,
}

/// What happened to the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited {
        cmd: Vec<String>,
        code: i32,
    },
    /// Attach: the container exited or the client left.
    Detached,
    Failed(String),
}

/// Runs `cmd` in the container with the client's channels and reports its exit.
pub async fn exec(
    runtime: &berth_runtime::Runtime,
    container_id: &str,
    cmd: Vec<String>,
    io: StdioRequest,
    channels: Channels,
    format: StatusFormat,
) {
    let started = runtime.containers().exec_stream(container_id, cmd.clone(), options(io)).await;
    let (streams, error) = channels.split_error();
    let outcome = match started {
        Ok(session) => match join(session, streams, false).await {
            Joined::Exited(Some(code)) => Outcome::Exited { cmd, code },
            Joined::Exited(None) => Outcome::Failed("the process's exit code was lost".into()),
            Joined::Gone => return,
            Joined::Failed(err) => {
                Outcome::Failed(format!("error executing command in container: {err}"))
            }
        },
        Err(err) => Outcome::Failed(format!("error executing command in container: {err}")),
    };
    tracing::debug!(container_id, ?outcome, "exec stream ended");
    report(error, &outcome, format).await;
}

/// Connects the client to the container's own stdio.
pub async fn attach(
    runtime: &berth_runtime::Runtime,
    container_id: &str,
    io: StdioRequest,
    channels: Channels,
    format: StatusFormat,
) {
    let (streams, error) = channels.split_error();
    let outcome = match runtime.containers().attach(container_id, options(io)).await {
        Ok(session) => match join(session, streams, true).await {
            Joined::Exited(_) => Outcome::Detached,
            Joined::Gone => return,
            Joined::Failed(err) => Outcome::Failed(format!("error attaching to container: {err}")),
        },
        Err(err) => Outcome::Failed(format!("error attaching to container: {err}")),
    };
    tracing::debug!(container_id, ?outcome, "attach stream ended");
    report(error, &outcome, format).await;
}

fn options(io: StdioRequest) -> StreamOptions {
    StreamOptions { stdin: io.stdin, stdout: io.stdout, stderr: io.stderr, tty: io.tty }
}

/// The channels but the error channel, which is kept for the report.
struct Streams {
    stdin: Option<BoxRead>,
    stdout: Option<BoxWrite>,
    stderr: Option<BoxWrite>,
    resize: Option<BoxRead>,
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Channels {
    fn split_error(self) -> (Streams, BoxWrite) {
        let Channels { stdin, stdout, stderr, resize, error, gone } = self;
        (Streams { stdin, stdout, stderr, resize, gone }, error)
    }
}

enum Joined {
    Exited(Option<i32>),
    Gone,
    Failed(berth_runtime::Error),
}

/// Copies both ways until the process has exited and its output is all delivered, or until
/// the client goes. `attach`: the end of the output is the end (a container's output ends
/// when it exits).
async fn join(session: StdioSession, streams: Streams, attach: bool) -> Joined {
    let StdioSession { stdin, stdout, stderr, resize, exit } = session;
    // The client's input ends the input of the process; the process ending does not wait for
    // the client's input, so that copy runs apart and is dropped at the end.
    let input = tokio::spawn(copy_input(streams.stdin, stdin));
    let resizes = tokio::spawn(copy_resizes(streams.resize, resize));
    let output = async {
        let (out, err) =
            tokio::join!(copy_output(stdout, streams.stdout), copy_output(stderr, streams.stderr));
        out && err
    };
    let finished = async {
        let (delivered, exited) = tokio::join!(output, exit);
        (delivered, exited)
    };
    let result = tokio::select! {
        (delivered, exited) = finished => match exited {
            // Output the client could not take means the client has gone.
            _ if !delivered => Joined::Gone,
            Ok(code) => Joined::Exited(code),
            Err(err) => Joined::Failed(err),
        },
        () = streams.gone => Joined::Gone,
    };
    if attach && matches!(result, Joined::Gone) {
        tracing::debug!("attached client left");
    }
    input.abort();
    resizes.abort();
    result
}

async fn copy_input(from: Option<BoxRead>, to: Option<Pin<Box<dyn AsyncWrite + Send>>>) {
    let (Some(mut from), Some(mut to)) = (from, to) else { return };
    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
        // EOF from the client: the process sees its stdin end.
        let _ = to.shutdown().await;
    }
}

/// False when the client could not be written to.
async fn copy_output(from: Option<Pin<Box<dyn AsyncRead + Send>>>, to: Option<BoxWrite>) -> bool {
    match (from, to) {
        (Some(mut from), Some(mut to)) => {
            let copied = tokio::io::copy(&mut from, &mut to).await;
            let closed = to.shutdown().await;
            copied.is_ok() && closed.is_ok()
        }
        // Output nobody asked for is not made; a channel without output just ends.
        (None, Some(mut to)) => to.shutdown().await.is_ok(),
        (Some(mut from), None) => tokio::io::copy(&mut from, &mut tokio::io::sink()).await.is_ok(),
        (None, None) => true,
    }
}

/// Reads the sizes as a stream of JSON values: client-go ends each with a newline, other
/// clients send one per WebSocket message without one.
async fn copy_resizes(from: Option<BoxRead>, to: Option<tokio::sync::mpsc::Sender<TerminalSize>>) {
    let (Some(mut from), Some(to)) = (from, to) else { return };
    let mut pending = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
        let mut values =
            serde_json::Deserializer::from_slice(&pending).into_iter::<serde_json::Value>();
        let mut consumed = 0;
        loop {
            match values.next() {
                Some(Ok(value)) => {
                    consumed = values.byte_offset();
                    let Some(size) = parse_size(&value).filter(|s| s.width > 0 && s.height > 0)
                    else {
                        continue;
                    };
                    tracing::debug!(width = size.width, height = size.height, "terminal resized");
                    if to.send(size).await.is_err() {
                        return;
                    }
                }
                // The rest of a value is still to come.
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(_)) => {
                    tracing::debug!("garbage on the resize stream; ignoring the rest of it");
                    return;
                }
                None => {
                    consumed = pending.len();
                    break;
                }
            }
        }
        pending.drain(..consumed);
        if pending.len() > MAX_RESIZE_MESSAGE {
            tracing::debug!("resize message too long; ignoring the rest of the stream");
            return;
        }
    }
}

/// `{"Width":80,"Height":24}`, keys in any case (Go's decoder matches them so).
fn parse_size(value: &serde_json::Value) -> Option<TerminalSize> {
    let object = value.as_object()?;
    let field = |name: &str| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_u64())
            .and_then(|v| u16::try_from(v).ok())
    };
    Some(TerminalSize { width: field("width")?, height: field("height")? })
}

/// Writes the outcome on the error channel and closes it.
async fn report(mut error: BoxWrite, outcome: &Outcome, format: StatusFormat) {
    let bytes = match format {
        StatusFormat::Json => status_json(outcome).into_bytes(),
        StatusFormat::Text => match outcome {
            Outcome::Exited { code: 0, .. } | Outcome::Detached => Vec::new(),
            Outcome::Exited { cmd, code } => non_zero_message(cmd, *code).into_bytes(),
            Outcome::Failed(message) => message.clone().into_bytes(),
        },
    };
    if !bytes.is_empty() {
        let _ = error.write_all(&bytes).await;
    }
    let _ = error.shutdown().await;
}

/// A `metav1.Status`, with the fields in the order and form the kubelet's library writes them.
#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

fn status_json(outcome: &Outcome) -> String {
    let status = match outcome {
        Outcome::Exited { code: 0, .. } | Outcome::Detached => Status {
            metadata: Empty {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        },
        Outcome::Exited { cmd, code } => Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(non_zero_message(cmd, *code)),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause { reason: Some("ExitCode"), message: code.to_string() }],
            }),
            code: None,
        },
        Outcome::Failed(message) => Status {
            metadata: Empty {},
            status: "Failure",
            message: Some(format!("Internal error occurred: {message}")),
            reason: Some("InternalError"),
            details: Some(Details {
                causes: vec![Cause { reason: None, message: message.clone() }],
            }),
            code: Some(500),
        },
    };
    serde_json::to_string(&status).unwrap_or_default()
}

fn non_zero_message(cmd: &[String], code: i32) -> String {
    format!(
        "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
        cmd.join(" ")
    )
}

/// The SPDY protocol versions of exec and attach, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpdyVersion {
    V1,
    V2,
    V3,
    V4,
}

impl SpdyVersion {
    pub const SUPPORTED: [(&'static str, SpdyVersion); 4] = [
        ("v4.channel.k8s.io", SpdyVersion::V4),
        ("v3.channel.k8s.io", SpdyVersion::V3),
        ("v2.channel.k8s.io", SpdyVersion::V2),
        ("channel.k8s.io", SpdyVersion::V1),
    ];

    pub fn status_format(self) -> StatusFormat {
        if self == SpdyVersion::V4 {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        }
    }
}

/// An input stream of the client's (stdin, resize) with our half of it, which stays open for
/// as long as the input is read and gets its FIN when it is dropped. client-go reads stdin only
/// to learn that the server is done with it: our FIN makes it close its own side, so a FIN sent
/// at once would end the process's input before the user typed anything.
struct InputStream {
    read: StreamReader,
    _ours: StreamWriter,
}

impl AsyncRead for InputStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

/// How long a client may take to open its streams after the upgrade.
const STREAM_CREATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts the streams the client opens for exec or attach (error, then stdin, stdout, stderr
/// and resize as requested, in any order), or None when they do not all come in time.
pub async fn spdy_channels(
    session: &Session,
    incoming: &mut tokio::sync::mpsc::Receiver<IncomingStream>,
    io: StdioRequest,
    version: SpdyVersion,
) -> Option<Channels> {
    let resize = io.tty && version >= SpdyVersion::V3;
    let expected = 1 + [io.stdin, io.stdout, io.stderr, resize].iter().filter(|w| **w).count();
    let mut streams: std::collections::HashMap<&'static str, crate::streaming::spdy::Stream> =
        std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while streams.len() < expected {
        let next = tokio::time::timeout_at(deadline, incoming.recv()).await;
        let Ok(Some(stream)) = next else {
            tracing::debug!("the client did not create its streams");
            return None;
        };
        let kind = match stream.headers.get("streamtype") {
            Some("error") => "error",
            Some("stdin") if io.stdin => "stdin",
            Some("stdout") if io.stdout => "stdout",
            Some("stderr") if io.stderr => "stderr",
            Some("resize") if resize => "resize",
            other => {
                // As the reference does: accepted, but not counted, and never read.
                tracing::debug!(stream_type = ?other, "unexpected stream");
                let _ = stream.accept().await;
                continue;
            }
        };
        if streams.contains_key(kind) {
            stream.reject();
            continue;
        }
        let accepted = stream.accept().await.ok()?;
        streams.insert(kind, accepted);
    }
    let mut reader = |kind: &str| {
        streams.remove(kind).map(|s| {
            let (read, write) = s.split();
            Box::pin(InputStream { read, _ours: write }) as BoxRead
        })
    };
    let stdin = reader("stdin");
    let resize = reader("resize");
    let mut writer = |kind: &str| {
        streams.remove(kind).map(|s| {
            let (_, write) = s.split();
            Box::pin(write) as BoxWrite
        })
    };
    let stdout = writer("stdout");
    let stderr = writer("stderr");
    let error = writer("error")?;
    let closed = session.clone();
    Some(Channels {
        stdin,
        stdout,
        stderr,
        resize,
        error,
        gone: Box::pin(async move { closed.closed().await }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_written_as_the_kubelet_library_writes_them() {
        let ok = Outcome::Exited { cmd: vec!["true".into()], code: 0 };
        assert_eq!(status_json(&ok), r#"{"metadata":{},"status":"Success"}"#);
        let three =
            Outcome::Exited { cmd: vec!["sh".into(), "-c".into(), "exit 3".into()], code: 3 };
        assert_eq!(
            status_json(&three),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        let failed = Outcome::Failed("error executing command in container: boom".into());
        assert_eq!(
            status_json(&failed),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: error executing command in container: boom","reason":"InternalError","details":{"causes":[{"message":"error executing command in container: boom"}]},"code":500}"#
        );
    }

    #[test]
    fn sizes_are_read_with_keys_in_any_case() {
        let parse = |text: &str| parse_size(&serde_json::from_str(text).unwrap());
        let size = parse(r#"{"Width":80,"Height":24}"#).unwrap();
        assert_eq!((size.width, size.height), (80, 24));
        let size = parse("{\"width\":100,\"HEIGHT\":7}\n").unwrap();
        assert_eq!((size.width, size.height), (100, 7));
        assert!(parse(r#"{"Width":70000,"Height":24}"#).is_none());
        assert!(parse("[1]").is_none());
    }

    #[tokio::test]
    async fn resize_lines_reach_the_runtime_and_zero_sizes_do_not() {
        // With and without newlines, as client-go and WebSocket clients send them.
        let input: &[u8] =
            b"{\"Width\":80,\"Height\":24}\n{\"Width\":0,\"Height\":5}{\"Width\":1,\"Height\":2}";
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        copy_resizes(Some(Box::pin(input)), Some(tx)).await;
        let first = rx.recv().await.unwrap();
        assert_eq!((first.width, first.height), (80, 24));
        let second = rx.recv().await.unwrap();
        assert_eq!((second.width, second.height), (1, 2));
        assert!(rx.recv().await.is_none());
    }
}
