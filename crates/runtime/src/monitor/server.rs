//! The monitor process of one pod (`berthd monitor …`): a single thread, no async runtime. It
//! is the subreaper of the pod's containers (and pid 1 of the pod's PID namespace when the pod
//! shares one): it creates them through the embedded executor or an OCI runtime's CLI
//! (`oci.rs`), owns their stdio and writes their logs, reaps them and records each exit on
//! disk. berthd talks to it over a unix socket (see `proto.rs`); a berthd that is slow,
//! restarting or gone never blocks a container, because the monitor alone reads their output.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind as IoKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};

use crate::container::ExitInfo;
use crate::executor;
use crate::monitor::log::{LogWriter, Stream};
use crate::monitor::oci;
use crate::monitor::proto::*;
use crate::util::now_nanos;

/// A line of a request larger than this is refused: requests are small JSON objects.
const MAX_REQUEST: u64 = 4 << 20;
/// How long output of an exec'd command is still collected after it exited, for pipes that its
/// own children keep open.
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 64 << 10;

/// Entry point of `berthd monitor --dir <pod state dir> --pod <id> [--pid-ns]`; returns the exit
/// code.
pub fn main(args: &[OsString]) -> i32 {
    let options = match Options::parse(args) {
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
}

impl Options {
    fn parse(args: &[OsString]) -> Result<Options, String> {
        let (mut dir, mut pod, mut pid_ns) = (None, None, false);
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--dir") => dir = args.next().map(PathBuf::from),
                Some("--pod") => pod = args.next().and_then(|s| s.to_str()).map(str::to_string),
                Some("--pid-ns") => pid_ns = true,
                _ => return Err(format!("unexpected argument {arg:?}")),
            }
        }
        Ok(Options {
            dir: dir.ok_or("--dir is required")?,
            pod: pod.ok_or("--pod is required")?,
            pid_ns,
        })
    }
}

pub(super) fn note(message: &str) {
    let now = crate::monitor::log::format_timestamp(SystemTime::now());
    eprintln!("{now} {message}");
}

fn run(options: Options) -> Result<(), String> {
    // Its own session, so that no terminal or process group of berthd's reaches it; then a
    // fork, so that berthd's child exits at once and the monitor is nobody's child but init's
    // (berthd may die and restart; the monitor must not be its zombie or its hostage).
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if options.pid_ns {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| format!("creating the pod's PID namespace: {e}"))?;
    }
    // SAFETY: the process is single-threaded here (nothing has spawned a thread).
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        nix::unistd::ForkResult::Child => {}
    }
    // Before anything else: the monitor is pid 1 of the pod's PID namespace, so its containers
    // see it, as the same uid. Dumpable, it is kept from them by the kernel's capability rule
    // alone (a container holding every capability the monitor has would get in: all of them
    // here, fewer when berthd itself runs confined), and for them /proc/1/root is the host's
    // root, /proc/1/exe berth's binary, /proc/1/mem its memory.
    // Non-dumpable, only CAP_SYS_PTRACE reaches it. Its children inherit this until execve.
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
        pid_ns: options.pid_ns,
        host_pid,
        listener,
        signals,
        containers: BTreeMap::new(),
        execs: BTreeMap::new(),
        next_exec: 0,
        shutdown: false,
    };
    // berthd waits for this line: the socket is there from now on.
    println!("ready {host_pid}");
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
    /// The monitor is pid 1 of the pod's PID namespace.
    pid_ns: bool,
    host_pid: u32,
    listener: UnixListener,
    signals: SignalFd,
    containers: BTreeMap<String, Container>,
    execs: BTreeMap<u64, Exec>,
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
    /// Kept open for a later attach, so that the container does not see EOF on stdin.
    _stdin: Option<OwnedFd>,
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

#[derive(Clone, Copy)]
enum Token {
    Listener,
    Signals,
    /// A container's or an exec's output: all of those are read in `read_outputs`.
    Output,
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
                    Token::Output => {}
                }
            }
            // Output is read after reaping: an exit drains its container's pipes first.
            self.read_outputs();
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
        let timeout = self.next_deadline().map_or(PollTimeout::NONE, |at| {
            let left = at.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(err) => return Err(err),
        }
        Ok(fds
            .iter()
            .zip(tokens)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, token)| token)
            .collect())
    }

    fn next_deadline(&self) -> Option<Instant> {
        let waits = self.containers.values().flat_map(|c| c.waiters.iter().map(|(_, at)| *at));
        let execs = self.execs.values().flat_map(|e| {
            [e.deadline.filter(|_| e.exit.is_none()), e.exit.map(|(_, at)| at + EXEC_OUTPUT_GRACE)]
        });
        waits.chain(execs.flatten()).min()
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

    fn create(&mut self, request: CreateRequest) -> Reply {
        if self.containers.contains_key(&request.id) {
            return error(ErrorKind::State, format!("container {} already exists", request.id));
        }
        let spec = match oci_spec::runtime::Spec::load(&request.spec) {
            Ok(spec) => spec,
            Err(err) => {
                return error(
                    ErrorKind::Internal,
                    format!("reading {}: {err}", request.spec.display()),
                )
            }
        };
        let log = match &request.log_path {
            Some(path) => match LogWriter::open(path) {
                Ok(log) => Some(log),
                Err(err) => {
                    return error(
                        ErrorKind::Invalid,
                        format!("opening the log file {}: {err}", path.display()),
                    )
                }
            },
            None => None,
        };
        let launched = match &request.executor {
            Executor::Embedded => create_embedded(&request, &spec),
            Executor::Oci(executor) => self.create_oci(&request, &spec, executor),
        };
        let launched = match launched {
            Ok(launched) => launched,
            Err(reply) => return reply,
        };
        let (pid, host_pid) = (launched.pid, launched.host_pid);
        note(&format!("container {} created, pid {host_pid}", request.id));
        self.containers.insert(
            request.id,
            Container {
                pid,
                host_pid,
                phase: Phase::Created(launched.created),
                outputs: launched.outputs,
                _stdin: launched.stdin,
                log,
                exit_file: request.exit_file,
                memory_cgroup: request.memory_cgroup,
                cgroup_procs: request.cgroup_procs,
                waiters: Vec::new(),
                seccomp: spec.linux().as_ref().and_then(|linux| linux.seccomp().clone()),
                oci: launched.oci,
                rootfs: launched.rootfs,
            },
        );
        Reply::Created { pid: host_pid }
    }

    /// Through an OCI runtime: the rootfs mounted where the spec says (the runtime expects a
    /// mounted root), then the runtime's `create`. A failure unmounts it again.
    fn create_oci(
        &self,
        request: &CreateRequest,
        spec: &oci_spec::runtime::Spec,
        executor: &OciExecutor,
    ) -> Result<Launched, Reply> {
        let bundle = request.spec.parent().ok_or_else(|| {
            error(ErrorKind::Internal, format!("{} has no directory", request.spec.display()))
        })?;
        let target = spec.root().as_ref().map(|root| root.path().clone()).ok_or_else(|| {
            error(ErrorKind::Invalid, format!("{} has no root.path", request.spec.display()))
        })?;
        executor::mount_bundle(&rootfs_of(request), &target, spec, &request.spec)
            .map_err(executor_error)?;
        let cli = oci::Cli::new(executor, bundle, &request.id, self.pid_ns);
        let launched = if request.tty {
            cli.create(oci::CreateStdio::Console).and_then(|mut created| {
                let master = created
                    .console
                    .take()
                    .ok_or_else(|| crate::Error::Internal("the runtime sent no terminal".into()))?;
                set_nonblocking(&master);
                let stdin = match request.stdin {
                    true => Some(master.try_clone().map_err(|e| {
                        crate::Error::Internal(format!("duplicating the terminal: {e}"))
                    })?),
                    false => None,
                };
                Ok((created, vec![Output { fd: master, stream: Stream::Stdout }], stdin))
            })
        } else {
            Stdio::new(false, request.stdin)
                .map_err(|e| crate::Error::Internal(format!("making stdio: {e}")))
                .and_then(|stdio| {
                    let created = cli.create(oci::CreateStdio::Inherit {
                        stdin: stdio.child_stdin.as_fd(),
                        stdout: stdio.child_stdout.as_fd(),
                        stderr: stdio.child_stderr.as_fd(),
                    })?;
                    Ok((created, stdio.outputs, stdio.stdin))
                })
        };
        match launched {
            Ok((created, outputs, stdin)) => Ok(Launched {
                pid: created.pid,
                host_pid: created.host_pid,
                created: None,
                outputs,
                stdin,
                oci: Some(cli),
                rootfs: Some(target),
            }),
            Err(err) => {
                if let Err(undo) = executor::unmount_rootfs(&target) {
                    note(&format!("unmounting the rootfs of {}: {undo}", request.id));
                }
                Err(executor_error(err))
            }
        }
    }

    fn start(&mut self, id: &str) -> Reply {
        let Some(container) = self.containers.get_mut(id) else { return not_found(id) };
        match &container.phase {
            Phase::Created(_) => {}
            Phase::Running { .. } => {
                return error(ErrorKind::State, format!("container {id} is already running"))
            }
            Phase::Exited(_) => {
                return error(ErrorKind::State, format!("container {id} has exited"))
            }
        }
        if let Some(cli) = &container.oci {
            let started = cli.start();
            let started_at_nanos = now_nanos();
            container.phase = Phase::Running { started_at_nanos };
            return match started {
                Ok(()) => {
                    note(&format!("container {id} started"));
                    Reply::Started { pid: container.host_pid, started_at_nanos }
                }
                // Its init still waits for a start that will not come: killed, its exit is
                // recorded when it is reaped.
                Err(err) => {
                    let _ = kill(container.pid, Signal::SIGKILL);
                    executor_error(err)
                }
            };
        }
        let created = match &mut container.phase {
            Phase::Created(created) => created.take(),
            _ => None,
        };
        let Some(created) = created else {
            return error(ErrorKind::State, format!("container {id} is being started"));
        };
        match executor::start(created) {
            Ok(()) => {
                let started_at_nanos = now_nanos();
                container.phase = Phase::Running { started_at_nanos };
                note(&format!("container {id} started"));
                Reply::Started { pid: container.host_pid, started_at_nanos }
            }
            // The child exits; its exit is recorded when it is reaped.
            Err(err) => {
                container.phase = Phase::Running { started_at_nanos: now_nanos() };
                error(ErrorKind::Invalid, message_of(err))
            }
        }
    }

    fn signal(&mut self, id: &str, signal: i32) -> Reply {
        let Some(container) = self.containers.get(id) else { return not_found(id) };
        if container.exited() {
            return Reply::Done;
        }
        let Ok(signal) = Signal::try_from(signal) else {
            return error(ErrorKind::Invalid, format!("unknown signal {signal}"));
        };
        match kill(container.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Reply::Done,
            Err(err) => error(ErrorKind::Internal, format!("sending {signal} to {id}: {err}")),
        }
    }

    fn exec(&mut self, request: ExecRequest, stream: &UnixStream) -> Result<(), Reply> {
        let container = self.containers.get(&request.id).ok_or_else(|| not_found(&request.id))?;
        if !matches!(container.phase, Phase::Running { .. }) {
            return Err(error(
                ErrorKind::State,
                format!("container {} is not running", request.id),
            ));
        }
        let internal = |what: &str, err: &dyn std::fmt::Display| {
            error(ErrorKind::Internal, format!("{what}: {err}"))
        };
        let null =
            std::fs::File::open("/dev/null").map_err(|e| internal("opening /dev/null", &e))?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e))?;
        let id = self.next_exec;
        let (pid, oci) = match &container.oci {
            Some(cli) => {
                let exec = cli
                    .spawn_exec(&request.process, id, null.as_fd(), out_w.as_fd(), err_w.as_fd())
                    .map_err(executor_error)?;
                (exec.pid, Some(exec))
            }
            None => {
                let pid = executor::spawn_exec(&executor::ExecRequest {
                    container_pid: container.host_pid,
                    cgroup_procs: &container.cgroup_procs,
                    process: &request.process,
                    seccomp: container.seccomp.as_ref(),
                    stdin: null.as_fd(),
                    stdout: out_w.as_fd(),
                    stderr: err_w.as_fd(),
                })
                .map_err(executor_error)?;
                (pid, None)
            }
        };
        drop((out_w, err_w));
        let reply_to = stream.try_clone().map_err(|e| internal("cloning the connection", &e))?;
        let outputs = vec![
            Output { fd: out_r, stream: Stream::Stdout },
            Output { fd: err_r, stream: Stream::Stderr },
        ];
        for output in &outputs {
            set_nonblocking(&output.fd);
        }
        self.next_exec += 1;
        self.execs.insert(
            id,
            Exec {
                pid,
                outputs,
                stdout: Vec::new(),
                stderr: Vec::new(),
                limit: request.output_limit,
                deadline: (request.timeout_ms > 0)
                    .then(|| Instant::now() + Duration::from_millis(request.timeout_ms)),
                timed_out: false,
                exit: None,
                reply_to,
                oci,
            },
        );
        Ok(())
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
            .is_some_and(|dir| crate::container::cgroup::oom_kills_in(dir) > 0);
        let info = ExitInfo {
            exit_code,
            signal,
            finished_at_nanos: now_nanos(),
            oom_killed,
            message: String::new(),
        };
        match serde_json::to_vec(&info) {
            Ok(bytes) => {
                if let Err(err) = berth_images::fsutil::atomic_write(&container.exit_file, &bytes) {
                    note(&format!("recording the exit of {id}: {err}"));
                }
            }
            Err(err) => note(&format!("encoding the exit of {id}: {err}")),
        }
        note(&format!("container {id} exited: code {exit_code}, oom {oom_killed}"));
        container.phase = Phase::Exited(info);
        container._stdin = None;
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

/// A container made and waiting for Start, with the monitor's side of its stdio.
struct Launched {
    pid: Pid,
    host_pid: u32,
    /// The embedded executor's handle.
    created: Option<executor::Created>,
    outputs: Vec<Output>,
    stdin: Option<OwnedFd>,
    oci: Option<oci::Cli>,
    rootfs: Option<PathBuf>,
}

/// Through the embedded executor, which mounts the rootfs in the container's own namespace.
fn create_embedded(
    request: &CreateRequest,
    spec: &oci_spec::runtime::Spec,
) -> Result<Launched, Reply> {
    let stdio = Stdio::new(request.tty, request.stdin)
        .map_err(|err| error(ErrorKind::Internal, format!("making stdio: {err}")))?;
    let cgroup_mount = match &request.cgroup_view {
        CgroupView::V1(mounts) => executor::CgroupMount::V1(mounts.clone()),
        CgroupView::V2 => executor::CgroupMount::V2,
    };
    let created = executor::create(&executor::CreateRequest {
        spec,
        rootfs: &rootfs_of(request),
        cgroup_procs: &request.cgroup_procs,
        cgroup_mount: &cgroup_mount,
        stdin: stdio.child_stdin.as_fd(),
        stdout: stdio.child_stdout.as_fd(),
        stderr: stdio.child_stderr.as_fd(),
    })
    .map_err(executor_error)?;
    Ok(Launched {
        pid: created.pid,
        host_pid: created.host_pid,
        created: Some(created),
        outputs: stdio.outputs,
        stdin: stdio.stdin,
        oci: None,
        rootfs: None,
    })
}

fn rootfs_of(request: &CreateRequest) -> executor::Rootfs {
    executor::Rootfs {
        lower_base: request.rootfs.lower_base.clone(),
        lower: request.rootfs.lower.clone(),
        upper: request.rootfs.upper.clone(),
        work: request.rootfs.work.clone(),
    }
}

/// An error of the executor or the runtime: the client's fault when the spec (its mounts, its
/// process) is, else internal.
fn executor_error(err: crate::Error) -> Reply {
    let kind = match err.kind() {
        crate::ErrorKind::InvalidArgument => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    };
    error(kind, message_of(err))
}

/// The error's own words: berthd gives the reply's kind its prefix again, so it must not be
/// said twice ("invalid argument: invalid argument: …").
fn message_of(err: crate::Error) -> String {
    match err {
        crate::Error::InvalidArgument(message) => message,
        other => other.to_string(),
    }
}

/// Forget: kills what is left of the container; an OCI runtime's container is deleted from it
/// and its rootfs unmounted. The rest (its cgroup, its files) is berthd's to remove.
fn forget(container: Container) -> Reply {
    if !container.exited() {
        let _ = kill(container.pid, Signal::SIGKILL);
    }
    if let Some(cli) = &container.oci {
        // Idempotent: also after the delete that followed its exit.
        if let Err(err) = cli.delete() {
            note(&format!("deleting a forgotten container: {err}"));
        }
    }
    if let Some(rootfs) = &container.rootfs {
        if let Err(err) = executor::unmount_rootfs(rootfs) {
            return error(ErrorKind::Internal, err.to_string());
        }
    }
    Reply::Done
}

/// Reads what the container's pipes hold into its log; at EOF, a partial line left at the end
/// of a stream is written out as full.
fn drain(container: &mut Container) {
    let mut buf = [0u8; READ_CHUNK];
    let log = &mut container.log;
    container.outputs.retain(|output| {
        // A bounded number of reads per turn, so that one chatty container cannot starve the
        // rest of the pod.
        for _ in 0..16 {
            match nix::unistd::read(&output.fd, &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    if let Some(log) = log.as_mut() {
                        if let Err(err) = log.flush_stream(output.stream, SystemTime::now()) {
                            crate::monitor::server::note(&format!("writing a log: {err}"));
                        }
                    }
                    return false;
                }
                Ok(n) => {
                    if let Some(log) = log.as_mut() {
                        if let Err(err) = log.write(output.stream, &buf[..n], SystemTime::now()) {
                            crate::monitor::server::note(&format!("writing a log: {err}"));
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
        true
    });
}

/// The container's side and the monitor's side of its stdio.
struct Stdio {
    child_stdin: OwnedFd,
    child_stdout: OwnedFd,
    child_stderr: OwnedFd,
    outputs: Vec<Output>,
    stdin: Option<OwnedFd>,
}

impl Stdio {
    fn new(tty: bool, stdin: bool) -> std::io::Result<Stdio> {
        if tty {
            let pty = nix::pty::openpty(None, None)?;
            for fd in [&pty.master, &pty.slave] {
                fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
            }
            set_nonblocking(&pty.master);
            let master_in = pty.master.try_clone()?;
            return Ok(Stdio {
                child_stdin: pty.slave.try_clone()?,
                child_stdout: pty.slave.try_clone()?,
                child_stderr: pty.slave,
                outputs: vec![Output { fd: pty.master, stream: Stream::Stdout }],
                stdin: stdin.then_some(master_in),
            });
        }
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (child_stdin, stdin) = if stdin {
            let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
            (r, Some(w))
        } else {
            (std::fs::File::open("/dev/null")?.into(), None)
        };
        set_nonblocking(&out_r);
        set_nonblocking(&err_r);
        Ok(Stdio {
            child_stdin,
            child_stdout: out_w,
            child_stderr: err_w,
            outputs: vec![
                Output { fd: out_r, stream: Stream::Stdout },
                Output { fd: err_r, stream: Stream::Stderr },
            ],
            stdin,
        })
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd, FcntlArg::F_SETFL(flags));
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
