//! The monitor's side of an external OCI runtime (runc, crun): its command line, run on a
//! container's bundle, so that the monitor keeps stdio, logs and exits exactly as for the
//! embedded executor.
//!
//! - `create` runs with the container's stdio as its own (the runtime passes it through to the
//!   container), or with a console socket on which the runtime sends the pty master; the
//!   container's init is left waiting, and reparented to the monitor (its subreaper) when the
//!   runtime exits. The monitor reads the pid file and reaps the init itself.
//! - `start` and `delete --force` are short commands; signals go to the pid directly.
//! - An exec is the runtime's `exec`, a child of the monitor whose exit code is the command's.
//!   With a terminal, it is `exec --detach`: the runtime makes the pty in the container,
//!   sends its master over a console socket of the exec's own as for `create`, and exits; the
//!   command is reparented to the monitor, which reaps it.
//!
//! Every failure is the runtime's own message, read from its JSON log (`--log`), since its
//! stderr may be the container's.
//!
//! The runtime runs in the monitor's PID namespace, the node's, even for a pod with one of its
//! own: the spec names that one by its pod init's path (`/proc/<pid>/ns/pid`, see `pod_init`),
//! and a container init left by the runtime goes to the monitor, the subreaper of the node's
//! namespace level where the runtime ran (never to the pod init).
//!
//! A runtime that takes `linux.cgroupsPath` from each hierarchy's root (crun) cannot nest under
//! berthd's cgroup, which may lie at a different path in each hierarchy: its commands run in a
//! mount namespace of their own where each hierarchy's mount shows berthd's cgroup as its root
//! (`OciExecutor::cgroup_roots`), and the spec's absolute path lands where berth made the
//! cgroup. Every command gets the same view, so that `exec` joins and `delete` removes that
//! cgroup too.

use std::ffi::{CString, OsStr};
use std::io::{ErrorKind as IoKind, IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::error::{Error, Result};
use crate::monitor::proto::OciExecutor;

/// The environment of a runtime command: the monitor has none of its own.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// A runtime command that takes longer is killed and the operation fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Relative to the bundle (the runtime's working directory): a full path may not fit in a
/// socket address.
const CONSOLE_SOCKET: &str = "console.sock";
const PID_FILE: &str = "init.pid";
const LOG_FILE: &str = "runtime.log";

/// One container's runtime: the binary and its root, the bundle, the container's id.
#[derive(Debug, Clone)]
pub struct Cli {
    handler: String,
    binary: PathBuf,
    root: PathBuf,
    bundle: PathBuf,
    id: String,
    /// (mountpoint, cgroup shown as its root), as C strings for the forked child.
    cgroup_roots: Vec<(CString, CString)>,
}

/// The container's stdio for `create`.
pub enum CreateStdio<'a> {
    /// Passed through: the runtime's own stdin, stdout and stderr become the container's.
    Inherit { stdin: BorrowedFd<'a>, stdout: BorrowedFd<'a>, stderr: BorrowedFd<'a> },
    /// A terminal: the runtime makes the pty and sends its master over the console socket.
    Console,
}

/// A created container.
#[derive(Debug)]
pub struct Created {
    /// As the monitor sees it (the pid file), and as the host does.
    pub pid: Pid,
    pub host_pid: u32,
    /// The pty master, for [`CreateStdio::Console`].
    pub console: Option<OwnedFd>,
}

/// A running exec: the runtime's process, and where it writes the command's pid.
#[derive(Debug)]
pub struct Exec {
    pub pid: Pid,
    process_file: PathBuf,
    pid_file: PathBuf,
}

impl Exec {
    /// The command's own pid, once the runtime has written it.
    pub fn command_pid(&self) -> Option<Pid> {
        read_pid(&self.pid_file).ok()
    }

    /// Removes the exec's files; called when it is over.
    pub fn clean_up(&self) {
        let _ = std::fs::remove_file(&self.process_file);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

impl Cli {
    pub fn new(executor: &OciExecutor, bundle: &Path, id: &str) -> Result<Cli> {
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                Error::Internal(format!("cgroup path {} contains a NUL byte", path.display()))
            })
        };
        let cgroup_roots = executor
            .cgroup_roots
            .iter()
            .map(|r| Ok((c_path(&r.mountpoint)?, c_path(&r.cgroup)?)))
            .collect::<Result<_>>()?;
        Ok(Cli {
            handler: executor.handler.clone(),
            binary: executor.binary.clone(),
            root: executor.root.clone(),
            bundle: bundle.to_path_buf(),
            id: id.to_string(),
            cgroup_roots,
        })
    }

    fn log_file(&self) -> PathBuf {
        self.bundle.join(LOG_FILE)
    }

    /// `<binary> --root R --log L --log-format json <args…>`, in the bundle, with no
    /// environment but `PATH` and no stdio unless the caller gives some.
    fn command(&self, args: &[&OsStr]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(self.log_file())
            .args(["--log-format", "json"])
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .current_dir(&self.bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !self.cgroup_roots.is_empty() {
            let roots = self.cgroup_roots.clone();
            // SAFETY: the monitor is single-threaded, so the forked child holds no lock another
            // thread took; the closure makes plain syscalls on strings made before the fork.
            unsafe { command.pre_exec(move || own_mounts(&roots)) };
        }
        command
    }

    /// `create`: the container set up and waiting for `start`. On failure nothing of it is
    /// left in the runtime (a `delete` is run).
    pub fn create(&self, stdio: CreateStdio) -> Result<Created> {
        let pid_file = self.bundle.join(PID_FILE);
        let _ = std::fs::remove_file(&pid_file);
        let console = match &stdio {
            CreateStdio::Console => Some(self.console_listener()?),
            CreateStdio::Inherit { .. } => None,
        };
        let mut args = vec![
            OsStr::new("create"),
            OsStr::new("--bundle"),
            self.bundle.as_os_str(),
            OsStr::new("--pid-file"),
            pid_file.as_os_str(),
        ];
        if console.is_some() {
            args.extend([OsStr::new("--console-socket"), OsStr::new(CONSOLE_SOCKET)]);
        }
        args.push(OsStr::new(&self.id));
        let mut command = self.command(&args);
        if let CreateStdio::Inherit { stdin, stdout, stderr } = stdio {
            command.stdin(dup(stdin)?).stdout(dup(stdout)?).stderr(dup(stderr)?);
        }
        let log_start = self.log_len();
        let result = self.run_to_exit("create", command, console.as_ref(), &pid_file, log_start);
        if console.is_some() {
            let _ = std::fs::remove_file(self.bundle.join(CONSOLE_SOCKET));
        }
        if result.is_err() {
            // A runtime that failed half way may have left its state (and cgroup) behind.
            if let Err(err) = self.delete() {
                super::server::note(&format!("deleting {} after a failed create: {err}", self.id));
            }
        }
        result
    }

    /// Runs a command that starts a process, sends its pty master on `console` (when given)
    /// and exits; the process it leaves is named by `pid_file`.
    fn run_to_exit(
        &self,
        what: &str,
        mut command: Command,
        console: Option<&UnixListener>,
        pid_file: &Path,
        log_start: u64,
    ) -> Result<Created> {
        let child = command.spawn().map_err(|e| self.spawn_error(what, e))?;
        let pidfd = pidfd_open(child.id())?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut master = None;
        let mut child = Some(child);
        let mut status = None;
        // The runtime connects to the console socket, sends the master and exits; both are
        // watched, so that a runtime that fails first is not waited for in vain.
        while status.is_none() || (console.is_some() && master.is_none()) {
            if let (Some(listener), None) = (console, &master) {
                master = receive_console(listener)?;
            }
            if status.is_none() {
                if let Some(c) = child.as_mut() {
                    if let Some(exit) = c.try_wait().map_err(|e| self.wait_error(what, e))? {
                        status = Some(exit);
                        continue;
                    }
                }
            } else if master.is_none() {
                // It exited without sending one: whatever it had to send is pending now.
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(Error::Internal(format!(
                    "{} {what} of {} did not finish within {COMMAND_TIMEOUT:?}",
                    self.handler, self.id
                )));
            }
            let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            if let (Some(listener), None) = (console, &master) {
                fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            }
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::Internal(format!("waiting for {what}: {e}"))),
            }
        }
        let status = status.ok_or_else(|| Error::Internal(format!("{what} was not waited for")))?;
        if !status.success() {
            return Err(self.failure(what, status, log_start));
        }
        if console.is_some() && master.is_none() {
            return Err(Error::Internal(format!(
                "{} {what} of {} sent no terminal on the console socket",
                self.handler, self.id
            )));
        }
        let pid = read_pid(pid_file).map_err(|e| {
            Error::Internal(format!(
                "reading {} written by {}: {e}",
                pid_file.display(),
                self.handler
            ))
        })?;
        let host_pid = host_pid_of(pid)?;
        Ok(Created { pid, host_pid, console: master })
    }

    /// Binds the console socket in the bundle, by a relative name (see [`CONSOLE_SOCKET`]).
    fn console_listener(&self) -> Result<UnixListener> {
        self.listener(CONSOLE_SOCKET)
    }

    /// Binds a socket of the bundle by its relative name: a full path may not fit.
    fn listener(&self, name: &str) -> Result<UnixListener> {
        let socket = self.bundle.join(name);
        let _ = std::fs::remove_file(&socket);
        std::env::set_current_dir(&self.bundle).map_err(Error::io("entering", &self.bundle))?;
        let bound = UnixListener::bind(name);
        let _ = std::env::set_current_dir("/");
        let listener = bound.map_err(Error::io("binding", &socket))?;
        listener.set_nonblocking(true).map_err(Error::io("configuring", &socket))?;
        Ok(listener)
    }

    /// `start`: the container's process execs.
    pub fn start(&self) -> Result<()> {
        self.run("start", &[OsStr::new(&self.id)])
    }

    /// `delete --force`: kills what is left and forgets the container. Idempotent: a container
    /// the runtime does not know is fine.
    pub fn delete(&self) -> Result<()> {
        self.run("delete", &[OsStr::new("--force"), OsStr::new(&self.id)])
    }

    /// `exec --process <file> --pid-file <file> <id>` with the given stdio; returns at once.
    /// `n` makes the exec's files unique in the bundle.
    pub fn spawn_exec(
        &self,
        process: &Process,
        n: u64,
        stdin: BorrowedFd,
        stdout: BorrowedFd,
        stderr: BorrowedFd,
    ) -> Result<Exec> {
        let process_file = self.bundle.join(format!("exec-{n}.json"));
        let pid_file = self.bundle.join(format!("exec-{n}.pid"));
        let json = serde_json::to_vec(process)
            .map_err(|e| Error::Internal(format!("encoding the exec's process: {e}")))?;
        std::fs::write(&process_file, json).map_err(Error::io("writing", &process_file))?;
        let exec = Exec { pid: Pid::from_raw(0), process_file, pid_file };
        let args = [
            OsStr::new("exec"),
            OsStr::new("--process"),
            exec.process_file.as_os_str(),
            OsStr::new("--pid-file"),
            exec.pid_file.as_os_str(),
            OsStr::new(&self.id),
        ];
        let mut command = self.command(&args);
        command.stdin(dup(stdin)?).stdout(dup(stdout)?).stderr(dup(stderr)?);
        match command.spawn() {
            // Reaped by the monitor's loop, as every child.
            Ok(child) => Ok(Exec { pid: Pid::from_raw(child.id() as i32), ..exec }),
            Err(e) => {
                exec.clean_up();
                Err(self.spawn_error("exec", e))
            }
        }
    }

    /// `exec --detach` with a terminal (`process.terminal` set): the runtime makes the pty in
    /// the container, sends its master on a console socket of the exec's own and exits, and
    /// the command, left running, is reparented to the monitor (its subreaper), which reaps it
    /// by the returned pid. Returns once the runtime has exited, with the master.
    pub fn spawn_exec_console(&self, process: &Process, n: u64) -> Result<(Exec, OwnedFd)> {
        let socket_name = format!("exec-{n}.sock");
        let listener = self.listener(&socket_name)?;
        let process_file = self.bundle.join(format!("exec-{n}.json"));
        let pid_file = self.bundle.join(format!("exec-{n}.pid"));
        let exec = Exec { pid: Pid::from_raw(0), process_file, pid_file };
        let json = serde_json::to_vec(process)
            .map_err(|e| Error::Internal(format!("encoding the exec's process: {e}")));
        let result = json.and_then(|json| {
            std::fs::write(&exec.process_file, json)
                .map_err(Error::io("writing", &exec.process_file))
        });
        let result = result.and_then(|()| {
            // runc takes a console socket only with both flags, whatever the process says.
            let args = [
                OsStr::new("exec"),
                OsStr::new("--detach"),
                OsStr::new("--tty"),
                OsStr::new("--console-socket"),
                OsStr::new(&socket_name),
                OsStr::new("--process"),
                exec.process_file.as_os_str(),
                OsStr::new("--pid-file"),
                exec.pid_file.as_os_str(),
                OsStr::new(&self.id),
            ];
            let log_start = self.log_len();
            self.run_to_exit(
                "exec",
                self.command(&args),
                Some(&listener),
                &exec.pid_file,
                log_start,
            )
        });
        let _ = std::fs::remove_file(self.bundle.join(&socket_name));
        match result {
            Ok(Created { pid, console: Some(master), .. }) => Ok((Exec { pid, ..exec }, master)),
            Ok(Created { pid, .. }) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                exec.clean_up();
                Err(Error::Internal(format!(
                    "{} exec in {} sent no terminal",
                    self.handler, self.id
                )))
            }
            Err(err) => {
                exec.clean_up();
                Err(err)
            }
        }
    }

    /// Runs a short command to its end; a failure is the runtime's message.
    fn run(&self, what: &str, args: &[&OsStr]) -> Result<()> {
        let mut all = vec![OsStr::new(what)];
        all.extend_from_slice(args);
        let log_start = self.log_len();
        let mut child = self.command(&all).spawn().map_err(|e| self.spawn_error(what, e))?;
        let status = self.wait(&mut child, what)?;
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(what, status, log_start))
        }
    }

    fn wait(&self, child: &mut Child, what: &str) -> Result<ExitStatus> {
        let pidfd = pidfd_open(child.id())?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| self.wait_error(what, e))? {
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Internal(format!(
                    "{} {what} of {} did not finish within {COMMAND_TIMEOUT:?}",
                    self.handler, self.id
                )));
            }
            let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::Internal(format!("waiting for {what}: {e}"))),
            }
        }
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_file()).map(|m| m.len()).unwrap_or(0)
    }

    /// The error of a command that failed: the last error its log got since `log_start`.
    fn failure(&self, what: &str, status: ExitStatus, log_start: u64) -> Error {
        let message = last_log_error(&self.log_file(), log_start)
            .unwrap_or_else(|| format!("exited with {status} and logged no error"));
        let message = format!("{} {what} of {}: {message}", self.handler, self.id);
        // The container's process is the client's: its executable or working directory.
        if matches!(what, "create" | "exec") && is_process_error(&message) {
            Error::InvalidArgument(message)
        } else {
            Error::Internal(message)
        }
    }

    fn spawn_error(&self, what: &str, err: std::io::Error) -> Error {
        Error::Internal(format!(
            "running {} {what} ({}): {err}",
            self.handler,
            self.binary.display()
        ))
    }

    fn wait_error(&self, what: &str, err: std::io::Error) -> Error {
        Error::Internal(format!("waiting for {} {what}: {err}", self.handler))
    }
}

/// Errors about the container's own process, as runc (`exec: "x": …`, `chdir to cwd`) and crun
/// (`executable file `x` not found`) word them.
fn is_process_error(message: &str) -> bool {
    ["exec: \"", "executable file", "chdir to cwd", "chdir `"].iter().any(|m| message.contains(m))
}

/// The message of the last `"level":"error"` entry of a runtime's JSON log from `start` on.
/// crun writes entries without newlines between them, so the text is read as a stream of
/// JSON values.
fn last_log_error(path: &Path, start: u64) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    let mut last = None;
    for value in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let Ok(value) = value else { break };
        let level = value["level"].as_str().unwrap_or_default();
        if matches!(level, "error" | "fatal" | "panic") {
            if let Some(msg) = value["msg"].as_str() {
                last = Some(msg.to_string());
            }
        }
    }
    last
}

/// In the child of a runtime command: a mount namespace of its own with each of `cgroup_roots`
/// bound over its hierarchy's mount. Only the mounts covered are made private: the rest keeps its
/// propagation, so that the container's bidirectional mounts still reach the host.
fn own_mounts(cgroup_roots: &[(CString, CString)]) -> std::io::Result<()> {
    let check = |result: libc::c_int| match result {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    };
    let none = std::ptr::null();
    // SAFETY: plain syscalls with C strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        for (mountpoint, cgroup) in cgroup_roots {
            // Private first, or the bind would propagate to the node's own mount namespace.
            check(libc::mount(none, mountpoint.as_ptr(), none, libc::MS_PRIVATE, none.cast()))?;
            check(libc::mount(
                cgroup.as_ptr(),
                mountpoint.as_ptr(),
                none,
                libc::MS_BIND,
                none.cast(),
            ))?;
        }
    }
    Ok(())
}

fn dup(fd: BorrowedFd) -> Result<OwnedFd> {
    fd.try_clone_to_owned().map_err(|e| Error::Internal(format!("duplicating stdio: {e}")))
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Error::Internal(format!("pidfd_open({pid}): {}", Errno::last())));
    }
    // SAFETY: the kernel just returned this descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_pid(path: &Path) -> std::io::Result<Pid> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(IoKind::InvalidData, format!("bad pid {text:?}")))
}

/// The host's pid of a process the monitor knows by the pid of its own namespace: the
/// monitor's `/proc` is the host's, and a pidfd's fdinfo gives the pid in that `/proc`'s
/// namespace.
pub(super) fn host_pid_of(pid: Pid) -> Result<u32> {
    let pidfd = pidfd_open(pid.as_raw() as u32)?;
    let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
    let info = std::fs::read_to_string(&path).map_err(Error::io("reading", &path))?;
    info.lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
        .map(|pid| pid as u32)
        .ok_or_else(|| Error::Internal(format!("no live pid for {pid} in {path}")))
}

/// Accepts the runtime's connection on the console socket, if it is there, and takes the pty
/// master it sends.
fn receive_console(listener: &UnixListener) -> Result<Option<OwnedFd>> {
    let stream = match listener.accept() {
        Ok((stream, _)) => stream,
        Err(e) if e.kind() == IoKind::WouldBlock || e.kind() == IoKind::Interrupted => {
            return Ok(None)
        }
        Err(e) => return Err(Error::Internal(format!("accepting on the console socket: {e}"))),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| Error::Internal(format!("console socket: {e}")))?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg =
        recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| Error::Internal(format!("receiving the terminal: {e}")))?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(|e| Error::Internal(format!("console message: {e}")))? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let mut fds = fds.into_iter();
    match fds.next() {
        Some(master) => Ok(Some(master)),
        None => Err(Error::Internal("the console socket carried no terminal".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_of_the_log_is_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runtime.log");
        // runc: one entry a line; crun: entries run together.
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"old\"}\n{\"level\":\"info\",\"msg\":\"x\"}\n",
        )
        .unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        assert_eq!(last_log_error(&log, 0).as_deref(), Some("old"));
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str(
            "{\"msg\":\"first\",\"level\":\"error\"}{\"msg\":\"second\",\"level\":\"error\"}",
        );
        std::fs::write(&log, text).unwrap();
        assert_eq!(last_log_error(&log, start).as_deref(), Some("second"));
        assert_eq!(last_log_error(&dir.path().join("none"), 0), None);
    }

    #[test]
    fn process_errors_are_the_clients() {
        assert!(is_process_error(
            "runc create failed: unable to start container process: exec: \"/no/such\": stat \
             /no/such: no such file or directory"
        ));
        assert!(is_process_error("executable file `nope` not found in $PATH: No such file"));
        assert!(!is_process_error("cgroups in hybrid mode not supported"));
    }

    #[test]
    fn host_pid_of_a_child_is_its_pid_here() {
        let child = Command::new("sleep").arg("10").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert_eq!(host_pid_of(pid).unwrap(), child.id());
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
