//! Interactive Exec and Attach, berthd's side: a process's stdio as async streams, for the
//! streaming server.
//!
//! - An exec's stdio are the descriptors the monitor hands over ([`MonitorClient::exec_stream`]):
//!   pipes, or a pty master, read and written here directly (non-blocking, through tokio's
//!   reactor), so its bytes never pass through the monitor. Its exit comes as a line on the
//!   connection the exec was asked on. A terminal is resized here, on the master.
//! - An attach is a connection to the monitor that carries frames (see `monitor::proto::frame`):
//!   one task turns output frames into the session's readers, another stdin and resizes into
//!   frames. Both are bounded: a session whose reader falls behind stops reading the monitor,
//!   which disconnects it rather than buffer without end. The tasks end when the container's
//!   output has ended and every part of the session is dropped.
//!
//! Dropping a session closes berthd's ends; the process is not killed (a closed pty master
//! hangs its terminal up, which usually ends it).

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::monitor::client::{Attached, ExecStarted};
use crate::monitor::proto::{self, frame, Reply};
use crate::monitor::server::{set_window_size, terminal_eof};
use crate::monitor::MonitorClient;

/// Output chunks (each at most a frame's 64 KiB) an attach session holds per stream before it
/// stops reading the monitor.
const OUTPUT_CHUNKS: usize = 16;
/// Stdin an attach session holds before a write waits.
const STDIN_BUFFER: usize = 64 << 10;
const RESIZE_QUEUE: usize = 8;

/// Which of the process's streams to connect, and whether it has a terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size in characters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The exit of an exec (`Some(code)`, 128 + signal when killed) or of an attached container
/// (`None`).
pub type ExitFuture = Pin<Box<dyn Future<Output = Result<Option<i32>>> + Send>>;

/// A running process's stdio, as asked for. Its output must be read (or dropped) for it to go
/// on: a process blocks on a full pipe, and an attach's end comes after its output.
pub struct StdioSession {
    /// `shutdown()` is EOF for the process: on a pipe, its close; on a terminal in canonical
    /// mode, its EOF character. Attach: this attacher's end of stdin, which closes the
    /// container's only with stdin_once.
    pub stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    /// EOF when the process side is done. With a tty, the terminal's output.
    pub stdout: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// Never with a tty.
    pub stderr: Option<Pin<Box<dyn AsyncRead + Send>>>,
    /// With a tty only; a size with a 0 dimension is ignored.
    pub resize: Option<mpsc::Sender<TerminalSize>>,
    /// Exec: the exit code once the process has exited (128 + signal when killed). Attach:
    /// `None` when the container has exited and its output is all read, or when the session's
    /// stdin ended on a container without stdin_once (a detach).
    pub exit: ExitFuture,
}

impl fmt::Debug for StdioSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioSession")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("resize", &self.resize.is_some())
            .finish_non_exhaustive()
    }
}

/// Starts `process` in container `id` through the pod's monitor, with the streams `options`
/// asks for (stderr is dropped with a tty).
pub(crate) async fn exec(
    monitor: &MonitorClient,
    id: &str,
    process: oci_spec::runtime::Process,
    options: StreamOptions,
) -> Result<StdioSession> {
    let tty = options.tty;
    let request = proto::ExecStreamRequest {
        id: id.to_string(),
        process,
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr && !tty,
        tty,
    };
    let started = monitor.exec_stream(request).await.map_err(older_monitor)?;
    exec_session(started, options)
}

fn exec_session(started: ExecStarted, options: StreamOptions) -> Result<StdioSession> {
    let ExecStarted { fds, connection, buffered, .. } = started;
    let wanted = match options.tty {
        true => 1,
        false => [options.stdin, options.stdout, options.stderr].iter().filter(|w| **w).count(),
    };
    if fds.len() != wanted {
        return Err(Error::Internal(format!(
            "the pod's monitor sent {} descriptors for an exec, not {wanted}",
            fds.len()
        )));
    }
    let exit = Box::pin(exec_exit(connection, buffered));
    let mut fds = fds.into_iter();
    let mut next = || fds.next().ok_or_else(|| Error::Internal("descriptors missing".into()));
    if options.tty {
        let master = Arc::new(async_fd(next()?)?);
        let (resize, sizes) = mpsc::channel(RESIZE_QUEUE);
        tokio::spawn(resize_terminal(Arc::downgrade(&master), sizes));
        let stdin = options.stdin.then(|| FdWriter { fd: Some(master.clone()), tty: true });
        let stdout = options.stdout.then(|| FdReader { fd: master, tty: true });
        return Ok(StdioSession {
            stdin: stdin.map(|w| Box::pin(w) as Pin<Box<dyn AsyncWrite + Send>>),
            stdout: stdout.map(|r| Box::pin(r) as Pin<Box<dyn AsyncRead + Send>>),
            stderr: None,
            resize: Some(resize),
            exit,
        });
    }
    let stdin: Option<Pin<Box<dyn AsyncWrite + Send>>> = match options.stdin {
        true => Some(Box::pin(FdWriter { fd: Some(Arc::new(async_fd(next()?)?)), tty: false })),
        false => None,
    };
    let mut reader = |wanted: bool| -> Result<Option<Pin<Box<dyn AsyncRead + Send>>>> {
        Ok(match wanted {
            true => Some(Box::pin(FdReader { fd: Arc::new(async_fd(next()?)?), tty: false })),
            false => None,
        })
    };
    let stdout = reader(options.stdout)?;
    let stderr = reader(options.stderr)?;
    Ok(StdioSession { stdin, stdout, stderr, resize: None, exit })
}

/// The exit line that follows an exec's start on its connection.
async fn exec_exit(connection: tokio::net::UnixStream, buffered: Vec<u8>) -> Result<Option<i32>> {
    let mut reader = tokio::io::BufReader::new(io::Cursor::new(buffered).chain(connection));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await.map_err(|err| {
        Error::MonitorGone(format!("waiting for an exec's exit from the pod's monitor: {err}"))
    })?;
    if line.is_empty() {
        return Err(Error::MonitorGone(
            "the pod's monitor closed an exec's connection before its exit".into(),
        ));
    }
    match crate::monitor::client::parse_reply(&line)? {
        Reply::ExecExited { exit_code } => Ok(Some(exit_code)),
        other => Err(Error::Internal(format!("unexpected answer from the monitor: {other:?}"))),
    }
}

async fn resize_terminal(master: Weak<AsyncFd<OwnedFd>>, mut sizes: mpsc::Receiver<TerminalSize>) {
    while let Some(size) = sizes.recv().await {
        if size.width == 0 || size.height == 0 {
            continue;
        }
        // The session's streams are gone: so is the terminal.
        let Some(master) = master.upgrade() else { return };
        if let Err(err) = set_window_size(master.get_ref(), size.width, size.height) {
            tracing::debug!(error = %err, "resizing an exec's terminal");
        }
    }
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let internal = |err: &dyn fmt::Display| Error::Internal(format!("an exec's stdio: {err}"));
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| internal(&e))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(|e| internal(&e))?;
    // SAFETY: an OwnedFd is open for as long as it lives and always gives the same number.
    unsafe { AsyncFd::register(fd) }.map_err(|e| internal(&e))
}

/// A pipe's read end or a pty master; on a master, EIO (the terminal hung up) is EOF.
struct FdReader {
    fd: Arc<AsyncFd<OwnedFd>>,
    tty: bool,
}

impl AsyncRead for FdReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref(), unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(err)) if self.tty && err.raw_os_error() == Some(libc::EIO) => {
                    return Poll::Ready(Ok(()))
                }
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A pipe's write end or a pty master.
struct FdWriter {
    /// None once shut down.
    fd: Option<Arc<AsyncFd<OwnedFd>>>,
    tty: bool,
}

impl FdWriter {
    fn poll_write_fd(
        fd: &AsyncFd<OwnedFd>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), buf)?)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &self.fd {
            Some(fd) => Self::poll_write_fd(fd, cx, buf),
            None => Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A pipe is closed; a terminal, shared with stdout, gets its EOF character when it is in
    /// canonical mode (a raw terminal has no EOF to give).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let (true, Some(fd)) = (self.tty, &self.fd) {
            if let Some(eof) = terminal_eof(fd.get_ref()) {
                // A terminal that cannot take it has hung up: there is no input to end.
                let _ = ready!(Self::poll_write_fd(fd, cx, &[eof]));
            }
        }
        self.fd = None;
        Poll::Ready(Ok(()))
    }
}

/// Attaches to container `id`'s stdio through the pod's monitor. The container's tty decides
/// the streams: with one, its output is stdout and there is no stderr.
pub(crate) async fn attach(
    monitor: &MonitorClient,
    id: &str,
    options: StreamOptions,
) -> Result<StdioSession> {
    let attached = monitor
        .attach(id, options.stdin, options.stdout, options.stderr)
        .await
        .map_err(older_monitor)?;
    Ok(attach_session(attached, options))
}

/// A monitor started by an earlier berthd refuses the streams' protocol version: the pod
/// cannot stream until it is made again, which is the caller's to decide.
fn older_monitor(err: Error) -> Error {
    match err {
        Error::InvalidArgument(message) if message.starts_with("protocol version") => {
            Error::FailedPrecondition(format!(
                "the pod's monitor predates interactive streams ({message}); recreate the pod \
                 to use them"
            ))
        }
        other => other,
    }
}

fn attach_session(attached: Attached, options: StreamOptions) -> StdioSession {
    let Attached { tty, connection, buffered } = attached;
    let (read_half, write_half) = connection.into_split();
    // Every part of the session holds a sender; when all are dropped the tasks end.
    let (alive, alive_rx) = mpsc::channel::<()>(1);
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let (exit_tx, exit_rx) = oneshot::channel::<Result<Option<i32>>>();
    let output = |wanted: bool| wanted.then(|| mpsc::channel(OUTPUT_CHUNKS));
    let (stdout_tx, stdout) = output(options.stdout).unzip();
    let (stderr_tx, stderr) = output(options.stderr && !tty).unzip();
    let reader = |rx| ChunkReader { rx, chunk: Vec::new(), pos: 0, _alive: alive.clone() };
    let stdout = stdout.map(|rx| Box::pin(reader(rx)) as Pin<Box<dyn AsyncRead + Send>>);
    let stderr = stderr.map(|rx| Box::pin(reader(rx)) as Pin<Box<dyn AsyncRead + Send>>);
    let (stdin, stdin_far) = match options.stdin {
        true => {
            let (near, far) = tokio::io::duplex(STDIN_BUFFER);
            let writer = StdinWriter { inner: near, _alive: alive.clone() };
            (Some(Box::pin(writer) as Pin<Box<dyn AsyncWrite + Send>>), Some(far))
        }
        false => (None, None),
    };
    let (resize, sizes) = match tty {
        true => {
            let (tx, rx) = mpsc::channel(RESIZE_QUEUE);
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let outputs = Outputs { stdout: stdout_tx, stderr: stderr_tx };
    tokio::spawn(attach_reader(read_half, buffered, outputs, exit_tx, alive_rx, done_tx));
    tokio::spawn(attach_writer(write_half, stdin_far, sizes, done_rx));
    let exit = Box::pin(async move {
        let _alive = alive;
        exit_rx.await.unwrap_or_else(|_| Err(Error::Internal("the attach ended".into())))
    });
    StdioSession { stdin, stdout, stderr, resize, exit }
}

type Chunk = io::Result<Vec<u8>>;

struct Outputs {
    stdout: Option<mpsc::Sender<Chunk>>,
    stderr: Option<mpsc::Sender<Chunk>>,
}

impl Outputs {
    async fn deliver(&mut self, kind: u8, payload: Vec<u8>) {
        let sink = match kind {
            frame::STDOUT => &mut self.stdout,
            _ => &mut self.stderr,
        };
        // A reader dropped is a stream nobody wants: the rest of it is dropped too.
        if let Some(tx) = sink {
            if tx.send(Ok(payload)).await.is_err() {
                *sink = None;
            }
        }
    }

    /// Ends both streams with an error (when there is room for it; else with EOF).
    fn fail(&self, message: &str) {
        for tx in [&self.stdout, &self.stderr].into_iter().flatten() {
            let _ = tx.try_send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, message)));
        }
    }
}

/// Output frames into the session's readers, until the end frame, the connection's end, or
/// the session's.
async fn attach_reader(
    mut connection: OwnedReadHalf,
    buffered: Vec<u8>,
    mut outputs: Outputs,
    exit: oneshot::Sender<Result<Option<i32>>>,
    mut alive: mpsc::Receiver<()>,
    _done: oneshot::Sender<()>,
) {
    let mut decoder = frame::Decoder::new(&[frame::STDOUT, frame::STDERR, frame::END]);
    decoder.push(&buffered);
    let mut buf = vec![0u8; frame::MAX_PAYLOAD];
    let outcome = 'session: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some((frame::END, _))) => break 'session Ok(None),
                Ok(Some((kind, payload))) => outputs.deliver(kind, payload).await,
                Ok(None) => break,
                Err(frame::BadFrame(message)) => {
                    break 'session Err(Error::Internal(format!(
                        "the pod's monitor sent a bad attach frame: {message}"
                    )))
                }
            }
        }
        tokio::select! {
            _ = alive.recv() => return,
            read = connection.read(&mut buf) => match read {
                Ok(0) => break Err(Error::MonitorGone(
                    "the pod's monitor ended the attach before the container's exit (the \
                     session fell too far behind its output, or the monitor is gone)"
                        .into(),
                )),
                Ok(n) => decoder.push(&buf[..n]),
                Err(err) => break Err(Error::MonitorGone(format!("the attach connection: {err}"))),
            },
        }
    };
    if let Err(err) = &outcome {
        outputs.fail(&err.to_string());
    }
    let _ = exit.send(outcome);
}

enum Input {
    Stdin(io::Result<usize>),
    Resize(Option<TerminalSize>),
    Done,
}

/// Stdin and resizes into frames; holds the connection's write side until the reader is done
/// (closing it earlier would end the attach).
async fn attach_writer(
    mut connection: OwnedWriteHalf,
    mut stdin: Option<tokio::io::DuplexStream>,
    mut sizes: Option<mpsc::Receiver<TerminalSize>>,
    mut done: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; 32 << 10];
    let mut out = Vec::new();
    loop {
        let input = tokio::select! {
            _ = &mut done => Input::Done,
            read = read_some(&mut stdin, &mut buf) => Input::Stdin(read),
            size = next_size(&mut sizes) => Input::Resize(size),
        };
        out.clear();
        match input {
            Input::Done => return,
            Input::Stdin(Ok(n)) if n > 0 => frame::encode(frame::STDIN, &buf[..n], &mut out),
            Input::Stdin(_) => {
                stdin = None;
                frame::encode(frame::STDIN_EOF, &[], &mut out);
            }
            Input::Resize(Some(size)) if size.width > 0 && size.height > 0 => {
                frame::encode(frame::RESIZE, &frame::resize(size.width, size.height), &mut out)
            }
            Input::Resize(Some(_)) => continue,
            Input::Resize(None) => {
                sizes = None;
                continue;
            }
        }
        if connection.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn read_some(
    stdin: &mut Option<tokio::io::DuplexStream>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match stdin {
        Some(stdin) => stdin.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn next_size(sizes: &mut Option<mpsc::Receiver<TerminalSize>>) -> Option<TerminalSize> {
    match sizes {
        Some(sizes) => sizes.recv().await,
        None => std::future::pending().await,
    }
}

/// An attach session's stdout or stderr: chunks from the reader task.
struct ChunkReader {
    rx: mpsc::Receiver<Chunk>,
    chunk: Vec<u8>,
    pos: usize,
    _alive: mpsc::Sender<()>,
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.chunk.len() {
                let n = (self.chunk.len() - self.pos).min(buf.remaining());
                let start = self.pos;
                buf.put_slice(&self.chunk[start..start + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(err)) => return Poll::Ready(Err(err)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// An attach session's stdin: the near end of a bounded pipe the writer task reads.
struct StdinWriter {
    inner: tokio::io::DuplexStream,
    _alive: mpsc::Sender<()>,
}

impl AsyncWrite for StdinWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::UnixStream;

    use super::*;

    fn frames(bytes: &[u8], kinds: &'static [u8]) -> Vec<(u8, Vec<u8>)> {
        let mut decoder = frame::Decoder::new(kinds);
        decoder.push(bytes);
        std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
    }

    fn framed(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame::encode(kind, payload, &mut out);
        out
    }

    fn attached(connection: UnixStream, buffered: Vec<u8>, tty: bool) -> Attached {
        Attached { tty, connection, buffered }
    }

    async fn read_all(reader: &mut Pin<Box<dyn AsyncRead + Send>>) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.map(|_| bytes)
    }

    #[tokio::test]
    async fn output_frames_become_the_streams_until_the_end() {
        let (ours, mut monitor) = UnixStream::pair().unwrap();
        let buffered = framed(frame::STDOUT, b"early ");
        let options = StreamOptions { stdout: true, stderr: true, ..Default::default() };
        let mut session = attach_session(attached(ours, buffered, false), options);
        assert!(session.stdin.is_none() && session.resize.is_none());
        let mut bytes = framed(frame::STDOUT, b"out");
        bytes.extend(framed(frame::STDERR, b"err"));
        bytes.extend(framed(frame::END, b""));
        monitor.write_all(&bytes).await.unwrap();
        let (stdout, stderr) = (session.stdout.as_mut().unwrap(), session.stderr.as_mut().unwrap());
        assert_eq!(read_all(stdout).await.unwrap(), b"early out");
        assert_eq!(read_all(stderr).await.unwrap(), b"err");
        assert_eq!(session.exit.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_tty_attach_has_no_stderr() {
        let (ours, _monitor) = UnixStream::pair().unwrap();
        let options = StreamOptions { stdout: true, stderr: true, tty: false, stdin: false };
        let session = attach_session(attached(ours, Vec::new(), true), options);
        assert!(session.stdout.is_some() && session.stderr.is_none() && session.resize.is_some());
    }

    #[tokio::test]
    async fn stdin_and_sizes_become_frames_and_the_connection_stays_for_the_output() {
        let (ours, mut monitor) = UnixStream::pair().unwrap();
        let options = StreamOptions { stdin: true, stdout: true, ..Default::default() };
        let mut session = attach_session(attached(ours, Vec::new(), true), options);
        let resize = session.resize.take().unwrap();
        resize.send(TerminalSize { width: 0, height: 5 }).await.unwrap();
        resize.send(TerminalSize { width: 80, height: 24 }).await.unwrap();
        let kinds = &[frame::STDIN, frame::RESIZE, frame::STDIN_EOF];
        let mut buf = vec![0u8; 1024];
        let n = monitor.read(&mut buf).await.unwrap();
        assert_eq!(frames(&buf[..n], kinds), vec![(frame::RESIZE, vec![0, 80, 0, 24])]);
        let mut stdin = session.stdin.take().unwrap();
        stdin.write_all(b"typed").await.unwrap();
        stdin.shutdown().await.unwrap();
        let mut got = Vec::new();
        while frames(&got, kinds).len() < 2 {
            let n = monitor.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed with stdin");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            frames(&got, kinds),
            vec![(frame::STDIN, b"typed".to_vec()), (frame::STDIN_EOF, vec![])]
        );
        // The output still comes after stdin's end.
        let idle = tokio::time::timeout(Duration::from_millis(100), monitor.read(&mut buf)).await;
        assert!(idle.is_err(), "the connection ended with stdin: {idle:?}");
        monitor.write_all(&framed(frame::STDOUT, b"later")).await.unwrap();
        monitor.write_all(&framed(frame::END, b"")).await.unwrap();
        assert_eq!(read_all(session.stdout.as_mut().unwrap()).await.unwrap(), b"later");
        assert_eq!(session.exit.await.unwrap(), None);
        // The session is over: the connection closes.
        drop(stdin);
        let n = tokio::time::timeout(Duration::from_secs(5), monitor.read(&mut buf)).await;
        assert_eq!(n.unwrap().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_lost_connection_is_an_error() {
        let (ours, mut monitor) = UnixStream::pair().unwrap();
        let options = StreamOptions { stdout: true, ..Default::default() };
        let mut session = attach_session(attached(ours, Vec::new(), false), options);
        monitor.write_all(&framed(frame::STDOUT, b"partial")).await.unwrap();
        drop(monitor);
        let mut stdout = session.stdout.take().unwrap();
        let mut bytes = Vec::new();
        let read = stdout.read_to_end(&mut bytes).await;
        assert_eq!(bytes, b"partial");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(session.exit.await.unwrap_err().kind(), crate::ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn a_bad_frame_ends_the_session() {
        let (ours, mut monitor) = UnixStream::pair().unwrap();
        let options = StreamOptions { stdout: true, ..Default::default() };
        let session = attach_session(attached(ours, Vec::new(), false), options);
        monitor.write_all(&framed(frame::STDIN, b"not from a monitor")).await.unwrap();
        assert_eq!(session.exit.await.unwrap_err().kind(), crate::ErrorKind::Internal);
    }

    #[tokio::test]
    async fn dropping_the_session_closes_the_connection() {
        let (ours, mut monitor) = UnixStream::pair().unwrap();
        let options = StreamOptions { stdin: true, stdout: true, stderr: true, tty: false };
        let session = attach_session(attached(ours, Vec::new(), false), options);
        drop(session);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), monitor.read(&mut buf));
            match read.await.unwrap().unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        // At most stdin's end came first (the monitor takes the close as that end too).
        assert!(got.is_empty() || got == framed(frame::STDIN_EOF, b""), "{got:?}");
    }

    #[test]
    fn an_older_monitors_refusal_is_a_precondition() {
        let refusal = "protocol version 3 is not supported (monitor speaks 1 to 2)";
        let err = older_monitor(Error::InvalidArgument(refusal.into()));
        assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains(refusal), "{err}");
        let other = older_monitor(Error::InvalidArgument("bad".into()));
        assert_eq!(other.kind(), crate::ErrorKind::InvalidArgument);
    }

    fn exit_line(code: i32) -> Vec<u8> {
        let mut line = serde_json::to_vec(&Reply::ExecExited { exit_code: code }).unwrap();
        line.push(b'\n');
        line
    }

    #[tokio::test]
    async fn an_exec_session_over_pipes() {
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let (stdout_r, stdout_w) = nix::unistd::pipe().unwrap();
        let (ours, mut monitor) = UnixStream::pair().unwrap();
        let started = ExecStarted {
            pid: 1,
            fds: vec![stdin_w, stdout_r],
            connection: ours,
            // Part of the exit line came with the start.
            buffered: exit_line(3)[..4].to_vec(),
        };
        let options = StreamOptions { stdin: true, stdout: true, ..Default::default() };
        let mut session = exec_session(started, options).unwrap();
        assert!(session.stderr.is_none() && session.resize.is_none());
        let mut stdin = session.stdin.take().unwrap();
        stdin.write_all(b"to the process").await.unwrap();
        stdin.shutdown().await.unwrap();
        let mut received = Vec::new();
        std::fs::File::from(stdin_r).read_to_end_sync(&mut received);
        assert_eq!(received, b"to the process", "shutdown closed the pipe");
        nix::unistd::write(&stdout_w, b"from it").unwrap();
        drop(stdout_w);
        assert_eq!(read_all(session.stdout.as_mut().unwrap()).await.unwrap(), b"from it");
        monitor.write_all(&exit_line(3)[4..]).await.unwrap();
        assert_eq!(session.exit.await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn an_exec_session_on_a_terminal() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let (ours, monitor) = UnixStream::pair().unwrap();
        let started =
            ExecStarted { pid: 1, fds: vec![pty.master], connection: ours, buffered: vec![] };
        let options = StreamOptions { stdin: true, stdout: true, stderr: true, tty: true };
        let mut session = exec_session(started, options).unwrap();
        assert!(session.stderr.is_none());
        let resize = session.resize.take().unwrap();
        resize.send(TerminalSize { width: 90, height: 33 }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes a winsize to the pointer, which is live for the call.
        assert_eq!(unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) }, 0);
        assert_eq!((size.ws_col, size.ws_row), (90, 33));
        // Shutdown of stdin is the terminal's EOF character; its output ends when it hangs up.
        let mut stdin = session.stdin.take().unwrap();
        stdin.shutdown().await.unwrap();
        let mut typed = [0u8; 8];
        let n = nix::unistd::read(&pty.slave, &mut typed).unwrap();
        assert_eq!(n, 0, "a canonical terminal reads EOF");
        nix::unistd::write(&pty.slave, b"bye").unwrap();
        drop(pty.slave);
        assert_eq!(read_all(session.stdout.as_mut().unwrap()).await.unwrap(), b"bye");
        drop(monitor);
        assert_eq!(session.exit.await.unwrap_err().kind(), crate::ErrorKind::Unavailable);
    }

    trait ReadToEndSync {
        fn read_to_end_sync(self, into: &mut Vec<u8>);
    }

    impl ReadToEndSync for std::fs::File {
        fn read_to_end_sync(mut self, into: &mut Vec<u8>) {
            std::io::Read::read_to_end(&mut self, into).unwrap();
        }
    }

    use std::os::fd::AsRawFd;
}
