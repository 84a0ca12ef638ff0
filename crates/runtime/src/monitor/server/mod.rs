//! The monitor process of one pod (`berthd monitor …`): a single thread, no async runtime. It
//! is the subreaper of the pod's containers (from the node's PID namespace: a pod that shares
//! one has a pod init as its pid 1, see `pod_init`): it creates them through the embedded
//! executor or an OCI runtime's CLI (`oci.rs`), owns their stdio and writes their logs, reaps
//! them and records each exit on disk. berthd talks to it over a unix socket (see `proto.rs`);
//! a berthd that is slow, restarting or gone never blocks a container, because the monitor
//! alone reads their output.
//!
//! Interactive streams: a stream exec gets its own pipes (or a pty), whose other ends go to
//! berthd at once, so its bytes never pass through here; the monitor only reports its exit.
//! Attachers share the container's own stdio: every chunk read for the log is also queued, as
//! a frame, for each attacher, and their stdin frames are queued for the container. Both
//! queues are bounded, and every descriptor is non-blocking, so that neither a slow attacher
//! nor a container that does not read its stdin ever holds the loop: an attacher that falls
//! too far behind is disconnected, and attachers are not read while the container's stdin
//! queue is full.
//!
//! Here: the entry point, the event loop, reaping and exits; in `requests` the requests that
//! make and drive containers; in `stdio` the containers' stdio, attachers and ptys.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::executor;
use crate::monitor::log::{LogWriter, Stream};
use crate::monitor::oci;
use crate::monitor::proto::ExitInfo;
use crate::monitor::proto::*;
use crate::util::now_nanos;

mod requests;
mod stdio;

use requests::*;
use stdio::*;
pub(crate) use stdio::{set_window_size, terminal_eof};

/// A line of a request larger than this is refused: requests are small JSON objects.
const MAX_REQUEST: u64 = 4 << 20;
/// How long output of an exec'd command is still collected after it exited, for pipes that its
/// own children keep open.
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 64 << 10;
/// An attacher with more output queued than this is disconnected: it is not reading.
const ATTACH_PENDING_MAX: usize = 1 << 20;
/// Attachers' stdin queued for a container that has not read it yet; attachers are not read
/// while it is full.
const STDIN_PENDING_MAX: usize = 256 << 10;
/// How long an attacher has to take the rest of its output once the container has exited.
const ATTACH_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Entry point of `berth-monitor monitor --pod <id> [--pid-ns]` (or `berthd monitor …`), with
/// the pod's state directory on the first line of standard input and, for a pod PID namespace
/// that the pod's user namespace must own, that user namespace's file on the second; returns
/// the exit code.
///
/// The paths are not arguments because the pod init the monitor forks (see `pod_init`) is pid 1
/// of the pod's PID namespace with the monitor's command line, which anyone there can read: the
/// containers learn nothing of the node's paths from it (berthd starts it with the bare name
/// `berth-monitor` as argv\[0\] too).
pub fn main(args: &[OsString]) -> i32 {
    let options = Options::parse(args).and_then(|(pod, pid_ns)| {
        let (dir, pid_ns_owner) = read_input(std::io::stdin().lock())?;
        if pid_ns_owner.is_some() && !pid_ns {
            return Err("a PID namespace owner is given without --pid-ns".into());
        }
        Ok(Options { dir, pod, pid_ns, pid_ns_owner })
    });
    let options = match options {
        Ok(options) => options,
        Err(message) => {
            eprintln!("berth monitor: {message}");
            return 2;
        }
    };
    match run(options) {
        Ok(()) => 0,
        Err(message) => {
            note(&format!("fatal: {message}"));
            1
        }
    }
}

struct Options {
    dir: PathBuf,
    pod: String,
    pid_ns: bool,
    /// The pod's user namespace, which must own its PID namespace (see `pod_init`).
    pid_ns_owner: Option<PathBuf>,
}

impl Options {
    /// The pod id and whether the monitor makes the pod's PID namespace.
    fn parse(args: &[OsString]) -> Result<(String, bool), String> {
        let (mut pod, mut pid_ns) = (None, false);
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--pod") => pod = args.next().and_then(|s| s.to_str()).map(str::to_string),
                Some("--pid-ns") => pid_ns = true,
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        Ok((pod.ok_or("--pod is required")?, pid_ns))
    }
}

/// The most the monitor takes from its standard input.
const MAX_INPUT: u64 = 8192;

/// What berthd writes to the monitor's standard input: the pod's state directory, and the user
/// namespace that owns the pod's PID namespace if there is one, each an absolute path on a line
/// of its own; then end of input.
fn read_input(input: impl std::io::Read) -> Result<(PathBuf, Option<PathBuf>), String> {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = Vec::new();
    input
        .take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading standard input: {e}"))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(format!("standard input holds more than {MAX_INPUT} bytes"));
    }
    let mut lines = bytes.split(|b| *b == b'\n').filter(|line| !line.is_empty());
    let path = |line: Option<&[u8]>, what: &str| -> Result<Option<PathBuf>, String> {
        let Some(line) = line else { return Ok(None) };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(line));
        match path.is_absolute() {
            true => Ok(Some(path)),
            false => Err(format!("{what} must be an absolute path, not {path:?}")),
        }
    };
    let dir = path(lines.next(), "the pod's state directory")?
        .ok_or("standard input must hold the pod's state directory")?;
    let owner = path(lines.next(), "the PID namespace's owner")?;
    if lines.next().is_some() {
        return Err("standard input holds more than two paths".into());
    }
    Ok((dir, owner))
}

pub(super) fn note(message: &str) {
    let now = crate::monitor::log::format_timestamp(SystemTime::now());
    // Written to the descriptor, never to a test harness's capture of `eprintln!`.
    let _ = writeln!(std::io::stderr(), "{now} {message}");
}

fn run(options: Options) -> Result<(), String> {
    // Its own session, so that no terminal or process group of berthd's reaches it; then a
    // fork, so that berthd's child exits at once and the monitor is nobody's child but init's
    // (berthd may die and restart; the monitor must not be its zombie or its hostage).
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // The pod's PID namespace, with a pod init as its pid 1 (see `pod_init`): the monitor
    // stays in the node's, out of the containers' reach. The pipe is held open for the
    // monitor's whole life: its pod init lives as long.
    let pod_init = match options.pid_ns {
        true => Some(super::pod_init::start(options.pid_ns_owner.as_deref())?),
        false => None,
    };
    // SAFETY: the process is single-threaded here (nothing has spawned a thread).
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        nix::unistd::ForkResult::Child => {}
    }
    // Before anything else: the monitor is outside the pod's PID namespace, but a container in
    // the node's sees it, and the executor's children, copies of it, are in their containers'
    // namespaces until their execve. Dumpable, they are kept from containers by the kernel's
    // capability rule alone; non-dumpable, only CAP_SYS_PTRACE reaches them. Its children
    // inherit this until execve.
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!("making the monitor non-dumpable: {}", Errno::last()));
    }
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("becoming a subreaper: {}", Errno::last()));
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| format!("blocking SIGCHLD: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;

    // Bound by a relative name: the full path may not fit in a socket address (see the client).
    std::env::set_current_dir(&options.dir)
        .map_err(|e| format!("entering {}: {e}", options.dir.display()))?;
    let socket = options.dir.join("monitor.sock");
    let _ = std::fs::remove_file("monitor.sock");
    let listener = UnixListener::bind("monitor.sock")
        .map_err(|e| format!("binding {}: {e}", socket.display()))?;
    std::fs::set_permissions("monitor.sock", std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    listener.set_nonblocking(true).map_err(|e| format!("listener: {e}"))?;
    let _ = std::env::set_current_dir("/");
    let host_pid = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        .unwrap_or(std::process::id());
    let mut monitor = Monitor {
        pod: options.pod,
        host_pid,
        listener,
        signals,
        containers: BTreeMap::new(),
        execs: BTreeMap::new(),
        stream_execs: Vec::new(),
        next_exec: 0,
        shutdown: false,
    };
    // berthd waits for this line: the socket is there from now on.
    let (_pod_init_life, pod_init_pid) = match pod_init {
        Some(init) => (Some(init.life), Some(init.pid)),
        None => (None, None),
    };
    match pod_init_pid {
        Some(init) => {
            let _ = writeln!(std::io::stdout(), "ready {host_pid} {init}");
        }
        None => {
            let _ = writeln!(std::io::stdout(), "ready {host_pid}");
        }
    }
    let _ = std::io::stdout().flush();
    redirect_stdio_to_null();
    note(&format!("monitor of pod {} started, pid {host_pid}", monitor.pod));
    monitor.serve();
    note("monitor exits");
    Ok(())
}

fn redirect_stdio_to_null() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in [0, 1] {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

struct Monitor {
    pod: String,
    host_pid: u32,
    listener: UnixListener,
    signals: SignalFd,
    containers: BTreeMap<String, Container>,
    execs: BTreeMap<u64, Exec>,
    stream_execs: Vec<StreamExec>,
    /// Numbers execs of both kinds (an OCI runtime's exec files are named by it).
    next_exec: u64,
    shutdown: bool,
}

enum Phase {
    Created(Option<executor::Created>),
    Running { started_at_nanos: i64 },
    Exited(ExitInfo),
}

struct Output {
    fd: OwnedFd,
    stream: Stream,
}

struct Container {
    pid: Pid,
    host_pid: u32,
    phase: Phase,
    outputs: Vec<Output>,
    /// The monitor's end of the container's stdin (a pipe's write end, or a copy of the pty
    /// master): attachers write through it, and it is kept open so that the container does not
    /// see EOF until stdin_once says so. Non-blocking.
    stdin: Option<OwnedFd>,
    tty: bool,
    /// It was created with a stdin (which `stdin` may since have closed).
    has_stdin: bool,
    stdin_once: bool,
    /// Attachers' stdin the container has not taken yet.
    stdin_pending: Vec<u8>,
    /// stdin_once: the stdin is closed once `stdin_pending` is written.
    stdin_closing: bool,
    attachers: Vec<Attacher>,
    /// When it was reaped: attachers get their end frame once its output is drained, or a
    /// grace period after this.
    exited_at: Option<Instant>,
    /// The end frame went to the attachers.
    ended: bool,
    log: Option<LogWriter>,
    exit_file: PathBuf,
    memory_cgroup: Option<PathBuf>,
    cgroup_procs: Vec<PathBuf>,
    waiters: Vec<(UnixStream, Instant)>,
    /// The spec's seccomp profile: an exec in the container runs under it too.
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// The OCI runtime that runs it; None: the embedded executor.
    oci: Option<oci::Cli>,
    /// Where the monitor mounted its rootfs (OCI runtimes only), unmounted when it is forgotten.
    rootfs: Option<PathBuf>,
}

impl Container {
    fn status(&self) -> ContainerStatus {
        match &self.phase {
            Phase::Created(_) => ContainerStatus::Created { pid: self.host_pid },
            Phase::Running { started_at_nanos } => {
                ContainerStatus::Running { pid: self.host_pid, started_at_nanos: *started_at_nanos }
            }
            Phase::Exited(info) => ContainerStatus::Exited(info.clone()),
        }
    }

    fn exited(&self) -> bool {
        matches!(self.phase, Phase::Exited(_))
    }

    /// Starts `process` in the container with `stdio` (stdin, stdout, stderr), through its OCI
    /// runtime or the embedded executor; exec `n` of the monitor names the runtime's files.
    fn spawn_exec(
        &self,
        process: &oci_spec::runtime::Process,
        n: u64,
        [stdin, stdout, stderr]: [BorrowedFd<'_>; 3],
    ) -> Result<(Pid, Option<oci::Exec>), Reply> {
        match &self.oci {
            Some(cli) => {
                let exec =
                    cli.spawn_exec(process, n, stdin, stdout, stderr).map_err(executor_error)?;
                Ok((exec.pid, Some(exec)))
            }
            None => {
                let pid = executor::spawn_exec(&executor::ExecRequest {
                    container_pid: self.host_pid,
                    cgroup_procs: &self.cgroup_procs,
                    process,
                    seccomp: self.seccomp.as_ref(),
                    stdin,
                    stdout,
                    stderr,
                })
                .map_err(executor_error)?;
                Ok((pid, None))
            }
        }
    }
}

struct Exec {
    pid: Pid,
    outputs: Vec<Output>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    limit: usize,
    deadline: Option<Instant>,
    timed_out: bool,
    exit: Option<(i32, Instant)>,
    reply_to: UnixStream,
    /// The OCI runtime's `exec` this is; `pid` is the runtime's.
    oci: Option<oci::Exec>,
}

/// A stream exec: its stdio went to berthd; its exit goes on the connection it came on.
struct StreamExec {
    pid: Pid,
    reply_to: UnixStream,
    oci: Option<oci::Exec>,
}

/// An attach connection (non-blocking), with its queued output (frames) and partial input.
struct Attacher {
    stream: UnixStream,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    /// Its stdin ended (an EOF frame, or the connection).
    stdin_done: bool,
    out: Vec<u8>,
    /// How much of `out` is sent.
    sent: usize,
    decoder: frame::Decoder,
    /// The end frame is queued: closed once it is sent, or at this time.
    close_by: Option<Instant>,
    /// Dropped (closed) at the next turn.
    dead: bool,
    /// What the last poll said of it.
    revents: PollFlags,
}

impl Attacher {
    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Queues a frame of output, or disconnects an attacher that is too far behind.
    fn queue(&mut self, kind: u8, payload: &[u8]) {
        if self.dead || self.close_by.is_some() {
            return;
        }
        // Only what the connection cannot take counts against it: a container may write more
        // than the bound in one turn of the loop.
        if self.unsent() + frame::HEADER + payload.len() > ATTACH_PENDING_MAX {
            self.flush();
        }
        if self.unsent() + frame::HEADER + payload.len() > ATTACH_PENDING_MAX {
            note("an attacher is too far behind the container's output: disconnected");
            self.dead = true;
            return;
        }
        frame::encode(kind, payload, &mut self.out);
    }

    /// Queues the end frame; the connection closes once it is sent, or after a grace period.
    fn end(&mut self, now: Instant) {
        if self.close_by.is_some() {
            return;
        }
        self.queue(frame::END, &[]);
        self.close_by = Some(now + ATTACH_CLOSE_GRACE);
    }

    /// Sends what it can of the queue without blocking.
    fn flush(&mut self) {
        while self.unsent() > 0 && !self.dead {
            match nix::sys::socket::send(
                self.stream.as_raw_fd(),
                &self.out[self.sent..],
                nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => self.sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                Err(_) => self.dead = true,
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent >= READ_CHUNK {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
    }
}

#[derive(Clone, Copy)]
enum Token {
    Listener,
    Signals,
    /// A container's or an exec's output: all of those are read in `read_outputs`.
    Output,
    /// An attacher or a container's stdin: all of those are served in `serve_attachers`.
    Attach,
}

impl Monitor {
    fn serve(&mut self) {
        while !self.shutdown {
            let ready = match self.wait() {
                Ok(ready) => ready,
                Err(err) => {
                    note(&format!("poll: {err}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for token in ready {
                match token {
                    Token::Listener => self.accept(),
                    Token::Signals => self.reap(),
                    Token::Output | Token::Attach => {}
                }
            }
            // Output is read after reaping: an exit drains its container's pipes first.
            self.read_outputs();
            self.serve_attachers(Instant::now());
            self.expire(Instant::now());
        }
        self.kill_all();
        // Their exits are recorded before the monitor goes, so that no container of a stopped
        // pod is left looking alive.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.containers.values().any(|c| !c.exited()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            self.reap();
        }
    }

    /// Polls everything; returns the listener and signal tokens that are ready (output is read
    /// for every readable pipe in `read_outputs`).
    fn wait(&mut self) -> nix::Result<Vec<Token>> {
        let mut tokens = vec![Token::Listener, Token::Signals];
        let mut fds = vec![
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
        ];
        let container_outputs = self.containers.values().flat_map(|c| c.outputs.iter());
        let exec_outputs = self.execs.values().flat_map(|e| e.outputs.iter());
        for output in container_outputs.chain(exec_outputs) {
            tokens.push(Token::Output);
            fds.push(PollFd::new(output.fd.as_fd(), PollFlags::POLLIN));
        }
        // The attachers, in the order of `containers` and their lists, which the revents are
        // given back in below.
        let first_attacher = fds.len();
        for container in self.containers.values() {
            let reading = container.stdin_pending.len() < STDIN_PENDING_MAX;
            for attacher in &container.attachers {
                let mut events = PollFlags::empty();
                if reading {
                    events |= PollFlags::POLLIN;
                }
                if attacher.unsent() > 0 {
                    events |= PollFlags::POLLOUT;
                }
                tokens.push(Token::Attach);
                fds.push(PollFd::new(attacher.stream.as_fd(), events));
            }
        }
        for container in self.containers.values() {
            if let (Some(stdin), false) = (&container.stdin, container.stdin_pending.is_empty()) {
                tokens.push(Token::Attach);
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLOUT));
            }
        }
        let timeout = self.next_deadline().map_or(PollTimeout::NONE, |at| {
            let left = at.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(err) => return Err(err),
        }
        let revents: Vec<PollFlags> =
            fds.iter().map(|fd| fd.revents().unwrap_or(PollFlags::empty())).collect();
        drop(fds);
        let mut attacher_revents = revents[first_attacher..].iter();
        for container in self.containers.values_mut() {
            for attacher in &mut container.attachers {
                attacher.revents = attacher_revents.next().copied().unwrap_or(PollFlags::empty());
            }
        }
        Ok(revents
            .iter()
            .zip(tokens)
            .filter(|(revents, _)| !revents.is_empty())
            .map(|(_, token)| token)
            .collect())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let waits = self.containers.values().flat_map(|c| c.waiters.iter().map(|(_, at)| *at));
        let execs = self.execs.values().flat_map(|e| {
            [e.deadline.filter(|_| e.exit.is_none()), e.exit.map(|(_, at)| at + EXEC_OUTPUT_GRACE)]
        });
        let ends = self
            .containers
            .values()
            .filter(|c| !c.ended && !c.attachers.is_empty())
            .map(|c| c.exited_at.map(|at| at + EXEC_OUTPUT_GRACE));
        let closes = self.containers.values().flat_map(|c| c.attachers.iter().map(|a| a.close_by));
        waits.chain(execs.flatten()).chain(ends.flatten()).chain(closes.flatten()).min()
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.handle_connection(stream),
                Err(err) if err.kind() == IoKind::WouldBlock => return,
                Err(err) if err.kind() == IoKind::Interrupted => continue,
                Err(err) => {
                    note(&format!("accept: {err}"));
                    return;
                }
            }
        }
    }

    fn handle_connection(&mut self, stream: UnixStream) {
        // berthd writes its request as soon as it connects; a client that does not is dropped
        // after a second rather than holding the pod's containers' output up.
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
        let reply = match read {
            Ok(0) => return,
            Err(err) => error(ErrorKind::Invalid, format!("reading the request: {err}")),
            Ok(_) => match serde_json::from_str::<RequestLine>(&line) {
                Ok(request) if !(MIN_VERSION..=VERSION).contains(&request.v) => error(
                    ErrorKind::Invalid,
                    format!(
                        "protocol version {} is not supported (monitor speaks \
                         {MIN_VERSION} to {VERSION})",
                        request.v
                    ),
                ),
                Ok(request) => match self.handle(request.request, &stream) {
                    Some(reply) => reply,
                    None => return,
                },
                Err(err) => error(ErrorKind::Invalid, format!("bad request: {err}")),
            },
        };
        send(&stream, &reply);
    }

    /// Answers a request; None when the answer comes later (the stream is kept for it).
    fn handle(&mut self, request: Request, stream: &UnixStream) -> Option<Reply> {
        let reply = match request {
            Request::Hello => Reply::Hello {
                version: VERSION,
                pid: self.host_pid,
                containers: self
                    .containers
                    .iter()
                    .map(|(id, c)| (id.clone(), c.status()))
                    .collect(),
            },
            Request::Create(create) => self.create(*create),
            Request::Start { id } => self.start(&id),
            Request::Signal { id, signal } => self.signal(&id, signal),
            Request::Wait { id, timeout_ms } => {
                let Some(container) = self.containers.get_mut(&id) else {
                    return Some(not_found(&id));
                };
                if container.exited() {
                    Reply::Status(container.status())
                } else {
                    let Ok(stream) = stream.try_clone() else {
                        return Some(error(ErrorKind::Internal, "cloning the connection".into()));
                    };
                    let at = Instant::now() + Duration::from_millis(timeout_ms);
                    container.waiters.push((stream, at));
                    return None;
                }
            }
            Request::Exec(exec) => match self.exec(*exec, stream) {
                Ok(()) => return None,
                Err(reply) => reply,
            },
            Request::ExecStream(exec) => match self.exec_stream(*exec, stream) {
                Ok(()) => return None,
                Err(reply) => reply,
            },
            Request::Attach { id, stdin, stdout, stderr } => {
                match self.attach(&id, stdin, stdout, stderr, stream) {
                    Ok(()) => return None,
                    Err(reply) => reply,
                }
            }
            Request::ReopenLog { id } => match self.containers.get_mut(&id) {
                None => not_found(&id),
                Some(Container { log: None, .. }) => Reply::Done,
                Some(Container { log: Some(log), .. }) => match log.reopen() {
                    Ok(()) => Reply::Done,
                    Err(err) => error(ErrorKind::Internal, format!("reopening the log: {err}")),
                },
            },
            Request::Forget { id } => match self.containers.remove(&id) {
                Some(container) => forget(container),
                None => Reply::Done,
            },
            Request::Shutdown => {
                self.shutdown = true;
                Reply::Done
            }
        };
        Some(reply)
    }

    /// Everything attachers need each turn: their input read (stdin, resizes), the
    /// containers' stdin written, their output sent, the end frame after an exit, and the
    /// closed, finished and slow ones dropped.
    fn serve_attachers(&mut self, now: Instant) {
        for container in self.containers.values_mut() {
            if container.attachers.is_empty() && container.stdin_pending.is_empty() {
                continue;
            }
            let mut attachers = std::mem::take(&mut container.attachers);
            for attacher in &mut attachers {
                read_attacher(attacher, container);
            }
            flush_stdin(container);
            if !container.ended
                && container
                    .exited_at
                    .is_some_and(|at| container.outputs.is_empty() || at + EXEC_OUTPUT_GRACE <= now)
            {
                container.ended = true;
                for attacher in &mut attachers {
                    attacher.end(now);
                }
            }
            for attacher in &mut attachers {
                attacher.flush();
            }
            attachers
                .retain(|a| !a.dead && !a.close_by.is_some_and(|at| a.unsent() == 0 || at <= now));
            // Attachers that came meanwhile cannot exist (nothing here accepts), but keep any.
            attachers.append(&mut container.attachers);
            container.attachers = attachers;
        }
    }

    /// Reaps every child that has exited: containers, exec'd commands, and orphans the
    /// monitor inherited as subreaper.
    fn reap(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        loop {
            let status = match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => status,
            };
            let (pid, code, signal) = match status {
                WaitStatus::Exited(pid, code) => (pid, code, None),
                WaitStatus::Signaled(pid, signal, _) => {
                    (pid, 128 + signal as i32, Some(signal as i32))
                }
                _ => continue,
            };
            if let Some(id) = self
                .containers
                .iter()
                .find(|(_, c)| c.pid == pid && !c.exited())
                .map(|(id, _)| id.clone())
            {
                self.container_exited(&id, code, signal);
            } else if let Some(exec) = self.execs.values_mut().find(|e| e.pid == pid) {
                exec.exit = Some((code, Instant::now()));
            } else if let Some(at) = self.stream_execs.iter().position(|e| e.pid == pid) {
                let exec = self.stream_execs.swap_remove(at);
                // berthd may be gone; the process is over either way.
                send(&exec.reply_to, &Reply::ExecExited { exit_code: code });
                if let Some(oci) = &exec.oci {
                    oci.clean_up();
                }
            }
        }
    }

    fn container_exited(&mut self, id: &str, exit_code: i32, signal: Option<i32>) {
        let Some(container) = self.containers.get_mut(id) else { return };
        // What it wrote before it died goes to the log before the exit is visible.
        drain(container);
        let oom_killed = container
            .memory_cgroup
            .as_deref()
            .is_some_and(|dir| crate::cgroups::oom_kills_in(dir) > 0);
        let info = ExitInfo {
            exit_code,
            signal,
            finished_at_nanos: now_nanos(),
            oom_killed,
            message: String::new(),
        };
        match serde_json::to_vec(&info) {
            Ok(bytes) => {
                if let Err(err) = berth_fsutil::atomic_write(&container.exit_file, &bytes) {
                    note(&format!("recording the exit of {id}: {err}"));
                }
            }
            Err(err) => note(&format!("encoding the exit of {id}: {err}")),
        }
        note(&format!("container {id} exited: code {exit_code}, oom {oom_killed}"));
        container.phase = Phase::Exited(info);
        container.exited_at = Some(Instant::now());
        container.stdin = None;
        container.stdin_pending = Vec::new();
        let status = container.status();
        for (stream, _) in container.waiters.drain(..) {
            send(&stream, &Reply::Status(status.clone()));
        }
        // The runtime's record of it (and the cgroup it joined) go once the exit is safe.
        if let Some(cli) = &container.oci {
            if let Err(err) = cli.delete() {
                note(&format!("deleting exited container {id}: {err}"));
            }
        }
    }

    fn read_outputs(&mut self) {
        for container in self.containers.values_mut() {
            drain(container);
        }
        for exec in self.execs.values_mut() {
            let mut buf = [0u8; READ_CHUNK];
            exec.outputs.retain(|output| loop {
                match nix::unistd::read(&output.fd, &mut buf) {
                    Ok(0) | Err(Errno::EIO) => return false,
                    Ok(n) => {
                        let sink = match output.stream {
                            Stream::Stdout => &mut exec.stdout,
                            Stream::Stderr => &mut exec.stderr,
                        };
                        let room = exec.limit.saturating_sub(sink.len());
                        sink.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => return true,
                }
            });
        }
        let done: Vec<u64> = self
            .execs
            .iter()
            .filter(|(_, e)| e.exit.is_some() && e.outputs.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.finish_exec(id);
        }
    }

    fn finish_exec(&mut self, id: u64) {
        let Some(exec) = self.execs.remove(&id) else { return };
        if let Some(oci) = &exec.oci {
            oci.clean_up();
        }
        let exit_code = exec.exit.map_or(-1, |(code, _)| code);
        send(
            &exec.reply_to,
            &Reply::Exec {
                exit_code,
                stdout: encode_bytes(&exec.stdout),
                stderr: encode_bytes(&exec.stderr),
                timed_out: exec.timed_out,
            },
        );
    }

    /// Timeouts: waits answered with the current state, execs past their deadline killed,
    /// exited execs whose output pipes some child of theirs keeps open answered anyway.
    fn expire(&mut self, now: Instant) {
        for container in self.containers.values_mut() {
            let status = container.status();
            container.waiters.retain(|(stream, at)| {
                if *at > now {
                    return true;
                }
                send(stream, &Reply::Status(status.clone()));
                false
            });
        }
        let mut done = Vec::new();
        for (id, exec) in &mut self.execs {
            match exec.exit {
                None if exec.deadline.is_some_and(|at| at <= now) && !exec.timed_out => {
                    exec.timed_out = true;
                    // The runtime's exec does not pass SIGKILL on: the command first.
                    if let Some(command) = exec.oci.as_ref().and_then(oci::Exec::command_pid) {
                        let _ = kill(command, Signal::SIGKILL);
                    }
                    let _ = kill(exec.pid, Signal::SIGKILL);
                }
                Some((_, at)) if at + EXEC_OUTPUT_GRACE <= now => done.push(*id),
                _ => {}
            }
        }
        for id in done {
            self.finish_exec(id);
        }
    }

    fn kill_all(&mut self) {
        for container in self.containers.values().filter(|c| !c.exited()) {
            let _ = kill(container.pid, Signal::SIGKILL);
        }
    }
}

fn send(stream: &UnixStream, reply: &Reply) {
    if let Ok(mut line) = serde_json::to_vec(reply) {
        line.push(b'\n');
        // berthd may have gone away meanwhile; it asks again when it is back.
        let _ = (&*stream).write_all(&line);
    }
}

fn error(kind: ErrorKind, message: String) -> Reply {
    Reply::Error { kind, message }
}

fn not_found(id: &str) -> Reply {
    error(ErrorKind::NotFound, format!("container {id} is not known to the pod's monitor"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_paths_come_on_stdin() {
        let dir = Path::new("/run/berth/pods/abc");
        assert_eq!(read_input(&b"/run/berth/pods/abc\n"[..]).unwrap(), (dir.into(), None));
        assert_eq!(read_input(&b"/a b/c"[..]).unwrap(), (PathBuf::from("/a b/c"), None));
        let both = read_input(&b"/run/berth/pods/abc\n/run/berth/pods/abc/ns/user\n"[..]);
        assert_eq!(both.unwrap(), (dir.into(), Some(dir.join("ns/user"))));
        assert!(read_input(&b""[..]).is_err());
        assert!(read_input(&b"relative/dir"[..]).is_err());
        assert!(read_input(&b"/a\nrelative"[..]).is_err());
        assert!(read_input(&b"/a\n/b\n/c\n"[..]).is_err());
        assert!(read_input(&vec![b'/'; 9000][..]).is_err());
        let args: Vec<OsString> = vec!["--pod".into(), "p".into(), "--pid-ns".into()];
        assert_eq!(Options::parse(&args).unwrap(), ("p".to_string(), true));
        let args: Vec<OsString> = vec!["--dir".into(), "/x".into(), "--pod".into(), "p".into()];
        assert!(Options::parse(&args).is_err(), "the directory is no argument");
    }
}
