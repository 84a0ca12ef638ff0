//! The requests that make and drive containers: create (embedded executor or OCI runtime),
//! start, signal, exec (collected or streamed) and attach.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::PollFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};

use super::*;
use crate::executor;
use crate::monitor::log::{LogWriter, Stream};
use crate::monitor::oci;
use crate::util::now_nanos;

impl Monitor {
    pub(super) fn create(&mut self, request: CreateRequest) -> Reply {
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
                stdin: launched.stdin,
                tty: request.tty,
                has_stdin: request.stdin,
                stdin_once: request.stdin_once,
                stdin_pending: Vec::new(),
                stdin_closing: false,
                attachers: Vec::new(),
                exited_at: None,
                ended: false,
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
    pub(super) fn create_oci(
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
        if executor.prepare_mount_targets {
            if let Err(err) = executor::prepare_mount_targets(&target, spec) {
                if let Err(undo) = executor::unmount_rootfs(&target) {
                    note(&format!("unmounting the rootfs of {}: {undo}", request.id));
                }
                return Err(executor_error(err));
            }
        }
        let cli = oci::Cli::new(executor, bundle, &request.id).map_err(executor_error)?;
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

    pub(super) fn start(&mut self, id: &str) -> Reply {
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

    pub(super) fn signal(&mut self, id: &str, signal: i32) -> Reply {
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

    /// The container `id`, which must be running (for an exec or an attach).
    pub(super) fn running(&self, id: &str) -> Result<&Container, Reply> {
        let container = self.containers.get(id).ok_or_else(|| not_found(id))?;
        if !matches!(container.phase, Phase::Running { .. }) {
            return Err(error(ErrorKind::State, format!("container {id} is not running")));
        }
        Ok(container)
    }

    pub(super) fn exec(&mut self, request: ExecRequest, stream: &UnixStream) -> Result<(), Reply> {
        let container = self.running(&request.id)?;
        let internal = |what: &str, err: &dyn std::fmt::Display| {
            error(ErrorKind::Internal, format!("{what}: {err}"))
        };
        let null =
            std::fs::File::open("/dev/null").map_err(|e| internal("opening /dev/null", &e))?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e))?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| internal("pipe", &e))?;
        let id = self.next_exec;
        let stdio = [null.as_fd(), out_w.as_fd(), err_w.as_fd()];
        let (pid, oci) = container.spawn_exec(&request.process, id, stdio)?;
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

    /// An interactive exec: the process's stdio (pipes, or a pty) goes to berthd with the
    /// answer, and its exit follows on the same connection once it is reaped.
    pub(super) fn exec_stream(
        &mut self,
        request: ExecStreamRequest,
        stream: &UnixStream,
    ) -> Result<(), Reply> {
        let n = self.next_exec;
        self.next_exec += 1;
        let container = self.running(&request.id)?;
        let internal = |what: &str, err: &dyn std::fmt::Display| {
            error(ErrorKind::Internal, format!("{what}: {err}"))
        };
        let mut process = request.process;
        process.set_terminal(Some(request.tty));
        let (pid, oci, ours) = if request.tty {
            match &container.oci {
                Some(cli) => {
                    let (exec, master) =
                        cli.spawn_exec_console(&process, n).map_err(executor_error)?;
                    (exec.pid, Some(exec), vec![master])
                }
                None => {
                    let (master, slave) = open_exec_pty(container.host_pid)
                        .map_err(|e| internal("making the exec's terminal", &e))?;
                    // The terminal is its user's, as a login makes it.
                    let uid = process.user().uid();
                    let _ = nix::unistd::fchown(&slave, Some(uid.into()), None);
                    let (pid, _) = container.spawn_exec(&process, n, [slave.as_fd(); 3])?;
                    (pid, None, vec![master])
                }
            }
        } else {
            let pipes = ExecPipes::new(request.stdin, request.stdout, request.stderr)
                .map_err(|e| internal("making the exec's pipes", &e))?;
            let [stdin, stdout, stderr] = &pipes.child;
            let stdio = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
            let (pid, oci) = container.spawn_exec(&process, n, stdio)?;
            (pid, oci, pipes.ours)
        };
        let host_pid = oci::host_pid_of(pid).unwrap_or(pid.as_raw() as u32);
        // The monitor keeps none of berthd's ends (they go with `ours`), so that each EOF is
        // the process's or berthd's alone.
        if let Err(err) = send_with_fds(stream, &Reply::ExecStarted { pid: host_pid }, &ours) {
            // Nobody can talk to it: it is stopped rather than left running unseen.
            note(&format!("handing an exec's stdio to berthd: {err}; killing it"));
            if let Some(command) = oci.as_ref().and_then(oci::Exec::command_pid) {
                let _ = kill(command, Signal::SIGKILL);
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        drop(ours);
        match stream.try_clone() {
            Ok(reply_to) => self.stream_execs.push(StreamExec { pid, reply_to, oci }),
            Err(err) => {
                note(&format!("keeping an exec's connection: {err}"));
                if let Some(oci) = &oci {
                    oci.clean_up();
                }
            }
        }
        Ok(())
    }

    /// Adds an attacher to a running container; the answer line is its first queued output.
    pub(super) fn attach(
        &mut self,
        id: &str,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        stream: &UnixStream,
    ) -> Result<(), Reply> {
        let container = self.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        if !matches!(container.phase, Phase::Running { .. }) {
            return Err(error(ErrorKind::State, format!("container {id} is not running")));
        }
        if stdin && !container.has_stdin {
            return Err(error(
                ErrorKind::Invalid,
                format!("container {id} was not created with stdin"),
            ));
        }
        let internal = |err: std::io::Error| {
            error(ErrorKind::Internal, format!("keeping the attach connection: {err}"))
        };
        let connection = stream.try_clone().map_err(internal)?;
        connection.set_nonblocking(true).map_err(internal)?;
        let mut attacher = Attacher {
            stream: connection,
            stdin,
            stdout,
            stderr: stderr && !container.tty,
            stdin_done: !stdin,
            out: Vec::new(),
            sent: 0,
            decoder: frame::Decoder::new(&[frame::STDIN, frame::RESIZE, frame::STDIN_EOF]),
            close_by: None,
            dead: false,
            revents: PollFlags::empty(),
        };
        let mut line = serde_json::to_vec(&Reply::Attached { tty: container.tty })
            .map_err(|e| error(ErrorKind::Internal, format!("encoding the answer: {e}")))?;
        line.push(b'\n');
        attacher.out = line;
        attacher.flush();
        container.attachers.push(attacher);
        Ok(())
    }
}

/// A container made and waiting for Start, with the monitor's side of its stdio.
pub(super) struct Launched {
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
pub(super) fn create_embedded(
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

pub(super) fn rootfs_of(request: &CreateRequest) -> executor::Rootfs {
    executor::Rootfs {
        lower_base: request.rootfs.lower_base.clone(),
        lower: request.rootfs.lower.clone(),
        upper: request.rootfs.upper.clone(),
        work: request.rootfs.work.clone(),
    }
}

/// An error of the executor or the runtime: the client's fault when the spec (its mounts, its
/// process) is, else internal.
pub(super) fn executor_error(err: crate::Error) -> Reply {
    let kind = match err.kind() {
        crate::ErrorKind::InvalidArgument => ErrorKind::Invalid,
        _ => ErrorKind::Internal,
    };
    error(kind, message_of(err))
}

/// The error's own words: berthd gives the reply's kind its prefix again, so it must not be
/// said twice ("invalid argument: invalid argument: …").
pub(super) fn message_of(err: crate::Error) -> String {
    match err {
        crate::Error::InvalidArgument(message) => message,
        other => other.to_string(),
    }
}

/// Forget: kills what is left of the container; an OCI runtime's container is deleted from it
/// and its rootfs unmounted. The rest (its cgroup, its files) is berthd's to remove.
pub(super) fn forget(container: Container) -> Reply {
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
