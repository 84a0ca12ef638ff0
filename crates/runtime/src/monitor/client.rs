//! berthd's side of the monitor: starting one for a pod, and asking it things; for the
//! interactive streams, the connections they keep (`container/stream.rs` makes sessions of
//! them).

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::monitor::proto::{self, Reply, Request, RequestLine};

/// How long a monitor may take to answer a request that does not wait for anything.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new monitor may take to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream exec may wait for an OCI runtime to send its terminal (the monitor gives it a
/// minute) on top of the usual.
const EXEC_START_TIMEOUT: Duration = Duration::from_secs(90);
/// An answer line longer than this is not the monitor's.
const MAX_ANSWER: usize = 64 << 10;

/// A stream exec the monitor started.
#[derive(Debug)]
pub struct ExecStarted {
    /// As the host sees it.
    pub pid: u32,
    /// berthd's ends of the process's stdio, in the protocol's order (see `proto`).
    pub fds: Vec<OwnedFd>,
    /// Where its exit comes, as a line; `buffered` holds what was read of it already.
    pub connection: UnixStream,
    pub buffered: Vec<u8>,
}

/// An attach connection, past its answer line.
#[derive(Debug)]
pub struct Attached {
    /// The container's: its output is then all stdout.
    pub tty: bool,
    pub connection: UnixStream,
    /// Frames already read with the answer.
    pub buffered: Vec<u8>,
}

/// A pod's monitor, by its socket.
#[derive(Debug, Clone)]
pub struct MonitorClient {
    dir: PathBuf,
    socket: PathBuf,
}

/// A socket path must fit in `sun_path` (108 bytes), which a state dir and a 64-character pod
/// id can overflow: the socket is reached through a descriptor of its directory instead,
/// `/proc/self/fd/<n>/monitor.sock`, which is short whatever the directory.
struct ShortPath {
    _dir: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl ShortPath {
    fn to(dir: &Path) -> std::io::Result<ShortPath> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}/monitor.sock", dir.as_raw_fd()));
        Ok(ShortPath { _dir: dir.into(), path })
    }
}

impl MonitorClient {
    pub fn new(pod_state_dir: &Path) -> MonitorClient {
        MonitorClient {
            dir: pod_state_dir.to_path_buf(),
            socket: pod_state_dir.join("monitor.sock"),
        }
    }

    /// Sends one request; `wait` is how long its answer may take on top of the usual.
    pub async fn call(&self, request: Request, wait: Duration) -> Result<Reply> {
        let deadline = REPLY_TIMEOUT + wait;
        match tokio::time::timeout(deadline, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Internal(format!(
                "the pod's monitor ({}) did not answer within {deadline:?}",
                self.socket.display()
            ))),
        }
    }

    async fn exchange(&self, request: Request) -> Result<Reply> {
        let unavailable = |err: std::io::Error| {
            Error::MonitorGone(format!("the pod's monitor ({}): {err}", self.socket.display()))
        };
        let short = ShortPath::to(&self.dir).map_err(unavailable)?;
        let mut stream = UnixStream::connect(&short.path).await.map_err(unavailable)?;
        drop(short);
        let mut line = serde_json::to_vec(&RequestLine::new(request))
            .map_err(|err| Error::Internal(format!("encoding a monitor request: {err}")))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(unavailable)?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.map_err(unavailable)?;
        if answer.is_empty() {
            return Err(Error::MonitorGone(format!(
                "the pod's monitor ({}) closed the connection",
                self.socket.display()
            )));
        }
        parse_reply(answer.as_bytes())
    }

    async fn connect(&self) -> Result<UnixStream> {
        let short = ShortPath::to(&self.dir).map_err(|err| self.gone(err))?;
        UnixStream::connect(&short.path).await.map_err(|err| self.gone(err))
    }

    fn gone(&self, err: std::io::Error) -> Error {
        Error::MonitorGone(format!("the pod's monitor ({}): {err}", self.socket.display()))
    }

    /// Starts an interactive exec (protocol version 3). The answer carries descriptors, so it
    /// is received with `recvmsg` on a blocking socket, off the async threads.
    pub async fn exec_stream(&self, request: proto::ExecStreamRequest) -> Result<ExecStarted> {
        let (dir, socket) = (self.dir.clone(), self.socket.clone());
        let line = encode(Request::ExecStream(Box::new(request)))?;
        let received = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let io = |err: std::io::Error| {
                Error::MonitorGone(format!("the pod's monitor ({}): {err}", socket.display()))
            };
            let short = ShortPath::to(&dir).map_err(io)?;
            let stream = std::os::unix::net::UnixStream::connect(&short.path).map_err(io)?;
            drop(short);
            stream.set_read_timeout(Some(REPLY_TIMEOUT + EXEC_START_TIMEOUT)).map_err(io)?;
            (&stream).write_all(&line).map_err(io)?;
            let (answer, rest, fds) = receive_with_fds(&stream).map_err(io)?;
            stream.set_read_timeout(None).map_err(io)?;
            stream.set_nonblocking(true).map_err(io)?;
            Ok::<_, Error>((stream, answer, rest, fds))
        })
        .await
        .map_err(|err| Error::Internal(format!("starting a stream exec: {err}")))?;
        let (stream, answer, buffered, fds) = received?;
        match parse_reply(&answer)? {
            Reply::ExecStarted { pid } => {
                let connection = UnixStream::from_std(stream).map_err(|err| self.gone(err))?;
                Ok(ExecStarted { pid, fds, connection, buffered })
            }
            other => Err(Error::Internal(format!("unexpected answer from the monitor: {other:?}"))),
        }
    }

    /// Attaches to a container's stdio (protocol version 3): the connection, past the answer.
    pub async fn attach(
        &self,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<Attached> {
        let request = Request::Attach { id: id.to_string(), stdin, stdout, stderr };
        let attach = async {
            let mut stream = self.connect().await?;
            stream.write_all(&encode(request)?).await.map_err(|err| self.gone(err))?;
            let mut reader = BufReader::new(stream);
            let mut answer = Vec::new();
            (&mut reader)
                .take(MAX_ANSWER as u64)
                .read_until(b'\n', &mut answer)
                .await
                .map_err(|err| self.gone(err))?;
            let buffered = reader.buffer().to_vec();
            Ok::<_, Error>((parse_reply(&answer)?, reader.into_inner(), buffered))
        };
        let (reply, connection, buffered) =
            tokio::time::timeout(REPLY_TIMEOUT, attach).await.map_err(|_| {
                Error::Internal(format!(
                    "the pod's monitor ({}) did not answer within {REPLY_TIMEOUT:?}",
                    self.socket.display()
                ))
            })??;
        match reply {
            Reply::Attached { tty } => Ok(Attached { tty, connection, buffered }),
            other => Err(Error::Internal(format!("unexpected answer from the monitor: {other:?}"))),
        }
    }
}

fn encode(request: Request) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&RequestLine::new(request))
        .map_err(|err| Error::Internal(format!("encoding a monitor request: {err}")))?;
    line.push(b'\n');
    Ok(line)
}

/// A reply line; an error reply becomes the error it names.
pub(crate) fn parse_reply(answer: &[u8]) -> Result<Reply> {
    if answer.is_empty() {
        return Err(Error::MonitorGone("the pod's monitor closed the connection".into()));
    }
    let reply: Reply = serde_json::from_slice(answer)
        .map_err(|err| Error::Internal(format!("bad answer from the pod's monitor: {err}")))?;
    match reply {
        Reply::Error { kind, message } => Err(match kind {
            proto::ErrorKind::Invalid => Error::InvalidArgument(message),
            proto::ErrorKind::NotFound => Error::NotFound(message),
            proto::ErrorKind::State => Error::FailedPrecondition(message),
            proto::ErrorKind::Internal => Error::Internal(message),
        }),
        reply => Ok(reply),
    }
}

/// Reads one answer line and the descriptors that came with it (close-on-exec); returns the
/// line, whatever followed it in the same reads, and the descriptors.
fn receive_with_fds(
    stream: &std::os::unix::net::UnixStream,
) -> std::io::Result<(Vec<u8>, Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let msg = match recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        };
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(std::io::Error::other("the monitor sent more descriptors than asked for"));
        }
        let n = msg.bytes;
        if n == 0 {
            // Closed: an empty answer, which the caller reports.
            return Ok((data, Vec::new(), fds));
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.iter().position(|b| *b == b'\n') {
            let rest = data.split_off(end + 1);
            return Ok((data, rest, fds));
        }
        if data.len() > MAX_ANSWER {
            return Err(std::io::Error::other("the monitor's answer is too long"));
        }
    }
}

/// A started monitor, by pids in berthd's PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub monitor: u32,
    /// The pid 1 of the pod's PID namespace, when the pod has one (see `pod_init`).
    pub pod_init: Option<u32>,
}

/// Starts the monitor of a pod and waits until it listens. `exe` is `berth-monitor` or berthd
/// itself; both take the `monitor` subcommand.
pub async fn spawn(
    exe: &Path,
    pod_state_dir: &Path,
    pod_id: &str,
    pid_ns: PodPidNamespace,
) -> Result<Spawned> {
    let (exe, dir, pod) = (exe.to_path_buf(), pod_state_dir.to_path_buf(), pod_id.to_string());
    let started = tokio::task::spawn_blocking(move || spawn_blocking(&exe, &dir, &pod, &pid_ns));
    match tokio::time::timeout(START_TIMEOUT, started).await {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => Err(Error::Internal(format!("starting the monitor: {err}"))),
        Err(_) => Err(Error::Internal(format!(
            "the pod's monitor did not start within {START_TIMEOUT:?}"
        ))),
    }
}

/// What a monitor's command line calls it, whichever binary runs it.
const MONITOR_NAME: &str = "berth-monitor";

/// The PID namespace of a pod's monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPidNamespace {
    /// The node's: each container gets its own, or the node's.
    None,
    /// One the monitor creates, with a pod init as its pid 1 (see `pod_init`); the monitor
    /// stays in the node's.
    Own,
    /// The same, owned by the pod's user namespace (held at this path).
    OwnedBy(PathBuf),
}

fn spawn_blocking(exe: &Path, dir: &Path, pod: &str, pid_ns: &PodPidNamespace) -> Result<Spawned> {
    use std::io::BufRead;
    let log_path = dir.join("monitor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(Error::io("opening", &log_path))?;
    let mut command = std::process::Command::new(exe);
    // The pod init the monitor forks is pid 1 of a pod PID namespace, with the monitor's
    // command line, which every container there can read: a bare name and the pod id, no host
    // path (the state directory goes in on stdin).
    command
        .arg0(MONITOR_NAME)
        .args(["monitor", "--pod", pod])
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // The paths go in on stdin, a line each (see `monitor::main`).
    let mut input = path_line(dir)?;
    match pid_ns {
        PodPidNamespace::None => {}
        PodPidNamespace::Own => {
            command.arg("--pid-ns");
        }
        PodPidNamespace::OwnedBy(user_ns) => {
            command.arg("--pid-ns");
            input.extend(path_line(user_ns)?);
        }
    }
    let mut child = command.spawn().map_err(Error::io("starting", exe))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        // A failed write shows as the monitor's refusal to start, with its reason in its log.
        let _ = stdin.write_all(&input);
    }
    let stdout = child.stdout.take();
    // The first process forks the monitor and exits; its exit status says whether it got that
    // far, the monitor's first line whether it is listening.
    let status = child.wait().map_err(Error::io("waiting for", exe))?;
    let mut line = String::new();
    if let Some(stdout) = stdout {
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
    }
    // `ready <monitor> [<pod init>]`
    let mut pids = line.strip_prefix("ready ").unwrap_or_default().split_whitespace();
    let mut next = || pids.next().map(|pid| pid.parse::<u32>().ok());
    let spawned = match (next(), next(), pid_ns) {
        (Some(Some(monitor)), None, PodPidNamespace::None) => {
            Some(Spawned { monitor, pod_init: None })
        }
        (
            Some(Some(monitor)),
            Some(Some(init)),
            PodPidNamespace::Own | PodPidNamespace::OwnedBy(_),
        ) => Some(Spawned { monitor, pod_init: Some(init) }),
        _ => None,
    };
    match (status.success(), spawned) {
        (true, Some(spawned)) => Ok(spawned),
        _ => {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            Err(Error::Internal(format!(
                "the pod's monitor did not start ({status}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("; ")
            )))
        }
    }
}

/// `path` and a newline, for the monitor's standard input.
fn path_line(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&b'\n') {
        return Err(Error::InvalidArgument(format!(
            "{} holds a newline, which the pod's monitor cannot be given",
            path.display()
        )));
    }
    Ok([bytes, b"\n"].concat())
}

/// Waits until process `pid` (a monitor that was asked to exit) is gone, and kills it if it
/// is still there after `grace`. A pid whose process is gone is fine.
pub fn wait_gone(pid: u32, grace: Duration) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let deadline = std::time::Instant::now() + grace;
    loop {
        if !is_monitor(pid) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(20));
            return match is_monitor(pid) {
                false => Ok(()),
                true => Err(Error::Internal(format!("the pod's monitor (pid {pid}) does not die"))),
            };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `pid` is still a berth monitor (and not a zombie, nor a process that reused its pid).
fn is_monitor(pid: nix::unistd::Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the parenthesised command name, which may hold spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if state == Some("Z") {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| cmdline.split(|b| *b == 0).nth(1) == Some(b"monitor".as_slice()))
        .unwrap_or(false)
}

/// Asks a monitor what it runs, synchronously (berthd's start, before serving). None when no
/// monitor answers.
pub fn hello_blocking(pod_state_dir: &Path) -> Option<Vec<(String, proto::ContainerStatus)>> {
    use std::io::{BufRead, Write};
    let short = ShortPath::to(pod_state_dir).ok()?;
    let stream = std::os::unix::net::UnixStream::connect(&short.path).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = serde_json::to_vec(&RequestLine::new(Request::Hello)).ok()?;
    line.push(b'\n');
    (&stream).write_all(&line).ok()?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream).read_line(&mut answer).ok()?;
    match serde_json::from_str(&answer).ok()? {
        Reply::Hello { containers, .. } => Some(containers),
        _ => None,
    }
}
