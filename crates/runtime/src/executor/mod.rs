//! berth's embedded OCI executor: creates, starts and execs into containers from an OCI spec,
//! without an external runtime binary.
//!
//! It runs in a pod's monitor process, which is single-threaded, the subreaper of its
//! containers, and reaps them from its own `waitpid(-1)` loop. So these functions clone or fork
//! children and hand their pids back; they reap only a child that failed before it was handed
//! back.
//!
//! ```text
//!   create ── plan (spec checked, converted, seccomp compiled) ── clone(new namespaces) ──▶
//!             child: cgroups, stdio, setns, overlay, mounts, /dev, pivot_root, masks, limits,
//!             LSM exec attrs, user, caps, cwd, executable found ──"ready <host pid>"──▶
//!             parent: Created
//!   start  ── start byte ──▶ child: seccomp, execve ── sync socket closes (CLOEXEC) ──▶
//!             parent: Ok
//!   spawn_exec ── setns(pid ns of the container) ; fork ; setns(own pid ns) ──▶ child:
//!             cgroups, stdio, setns ipc/uts/net/cgroup/mnt, cwd, limits, [setns user],
//!             LSM exec attrs, user, caps, seccomp, execve
//! ```
//!
//! A container of a pod with a user namespace (`hostUsers: false`) is built as root of the
//! node, with its layers and `idmap` binds idmapped (`idmap`, made here in the caller before the
//! clone) and its file systems' owners planned as the node's ids of its own ids (`plan`); the
//! child enters the pod's user namespace only once its root is complete, and then unshares a
//! mount namespace that namespace owns: the mounts copied into it are locked (the container's
//! root cannot unmount a masked path or make a read-only one writable), and it may mount what
//! a user namespace may (a tmpfs; never a file system of the node's). Its /proc and /sys are
//! mounted as the node's root could, so nothing depends on what the kernel lets a user
//! namespace mount. An exec enters the user namespace after the others.
//!
//! Parent and child talk over a `SOCK_SEQPACKET` socket pair rather than two pipes: one
//! message per read, and the parent's sends use `MSG_NOSIGNAL`, so a child that died never
//! raises SIGPIPE in the monitor.

mod capabilities;
mod child;
mod devices;
mod idmap;
mod mounts;
mod plan;
#[cfg(test)]
pub(crate) mod tests;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxSeccomp, Process, Spec};

use crate::error::{Error, Result};

/// The longest message the child sends; longer ones are cut.
const MAX_MESSAGE: usize = 4000;
/// The container init's stack until execve. Mapped lazily: only what is touched costs memory.
const STACK_SIZE: usize = 8 << 20;

/// The overlay that becomes the container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The directory the lower layers are relative to: the child mounts from inside it, which
    /// keeps the option string under the kernel's one page with many layers.
    pub lower_base: PathBuf,
    /// Top layer first.
    pub lower: Vec<PathBuf>,
    /// Absolute; created by the caller.
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// What the container sees at /sys/fs/cgroup (the spec's `cgroup` mount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupMount {
    /// (mount name as in the host's /sys/fs/cgroup, e.g. `cpu,cpuacct`; the host directory of
    /// the container's cgroup in it): a tmpfs with each bound read-only under its name, plus
    /// the symlinks a host has for co-mounted controllers.
    V1(Vec<(String, PathBuf)>),
    /// cgroup2 itself, seen through the container's cgroup namespace.
    V2,
}

pub struct CreateRequest<'a> {
    /// `root.path` must be an existing empty directory: the overlay is mounted on it (in the
    /// container's mount namespace only).
    pub spec: &'a Spec,
    pub rootfs: &'a Rootfs,
    /// cgroup.procs files the child joins first.
    pub cgroup_procs: &'a [PathBuf],
    pub cgroup_mount: &'a CgroupMount,
    /// The pty slave for all three when `process.terminal` is set.
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// A container process that is set up and waits for [`start`]. Dropping it without starting
/// makes the process exit; the caller reaps it either way.
#[derive(Debug)]
pub struct Created {
    /// In the caller's PID namespace.
    pub pid: Pid,
    /// As the host's /proc sees it.
    pub host_pid: u32,
    sync: OwnedFd,
}

pub struct ExecRequest<'a> {
    /// Host pid of the container's init, whose namespaces the process joins.
    pub container_pid: u32,
    pub cgroup_procs: &'a [PathBuf],
    pub process: &'a Process,
    /// The container's seccomp profile (`linux.seccomp` of its spec), which an exec gets too.
    pub seccomp: Option<&'a LinuxSeccomp>,
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
}

/// Sets up a container and leaves its process waiting for [`start`], its executable found.
/// A spec, mount source, working directory or executable at fault is
/// [`Error::InvalidArgument`]; anything else [`Error::Internal`], with the child's message.
pub fn create(req: &CreateRequest) -> Result<Created> {
    let mut plan = plan::container(req.spec, req.rootfs, req.cgroup_mount)?;
    let join_ns = plan
        .join_ns
        .iter()
        .map(|(flag, path)| Ok((*flag, open_ns(path)?)))
        .collect::<Result<Vec<_>>>()?;
    let pid_ns = plan.pid_ns_path.as_deref().map(open_ns).transpose()?;
    let userns = plan.userns.as_ref().map(|u| open_ns(&u.path)).transpose()?;
    // Open until the child has mounted them; it keeps their numbers.
    let mut trees = Vec::new();
    if let Some(fd) = &userns {
        let (layers, overlay) = idmap::layers(req.rootfs, fd.as_fd())?;
        trees.extend(layers);
        plan.overlay = overlay;
    }
    let mappings = plan.userns.as_ref().map(|u| (u.uids.clone(), u.gids.clone()));
    let container = userns.as_ref().zip(mappings.as_ref());
    let container = container.map(|(fd, (uids, gids))| (fd.as_fd(), &uids[..], &gids[..]));
    trees.extend(idmap::binds(&mut plan, &mut idmap::Namespaces::new(container))?);
    let (parent_end, child_end) = sync_pair()?;
    let ctx = child::CreateContext {
        plan: &plan,
        cgroup_procs: req.cgroup_procs,
        cgroup_mount: req.cgroup_mount,
        sock: child_end.as_raw_fd(),
        stdio: [req.stdin.as_raw_fd(), req.stdout.as_raw_fd(), req.stderr.as_raw_fd()],
        join_ns: join_ns.iter().map(|(flag, fd)| (*flag, fd.as_raw_fd())).collect(),
        userns: userns.as_ref().map(|fd| fd.as_raw_fd()),
        trees: trees.iter().map(|fd| fd.as_raw_fd()).collect(),
    };
    let mut stack = vec![0u8; STACK_SIZE];
    let pid = in_pid_namespace(pid_ns.as_ref(), || {
        // SAFETY: the caller is single-threaded, so the child's copy of memory holds no lock
        // another thread took; the child runs `create_main`, which never returns (it execs or
        // _exits), on a stack of its own that is large enough for the setup it does.
        let cloned = unsafe {
            nix::sched::clone(
                Box::new(|| child::create_main(&ctx)),
                &mut stack,
                plan.clone_flags,
                Some(libc::SIGCHLD),
            )
        };
        cloned.map_err(|e| Error::Internal(format!("cloning the container process: {e}")))
    })?;
    drop(child_end);
    match receive(&parent_end) {
        Ok(Message::Ready(host_pid)) => Ok(Created { pid, host_pid, sync: parent_end }),
        other => {
            reap(pid);
            Err(failure(other, "the container process exited during setup"))
        }
    }
}

/// Lets a created container exec its process. An error means the exec failed (the message
/// names why); the process has then exited and the caller reaps it.
pub fn start(created: Created) -> Result<()> {
    // SAFETY: sends one byte from a static buffer on a descriptor `created` owns.
    let sent = unsafe {
        libc::send(created.sync.as_raw_fd(), b"s".as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
    };
    if sent != 1 {
        return Err(Error::Internal(format!(
            "starting container process {}: it is gone ({})",
            created.pid,
            child::describe(Errno::last())
        )));
    }
    match receive(&created.sync) {
        // The socket closed with the exec (close-on-exec): the process runs.
        Ok(Message::Eof) => Ok(()),
        other => Err(failure(other, "")),
    }
}

/// Starts a process in a running container (ExecSync, Exec): born in its PID namespace, in its
/// cgroups and other namespaces, as its user. Returns its pid once it has exec'd; the caller
/// reaps it. A command that cannot be found or run is not an error here: like a shell, the
/// process prints why on its stderr and exits with 127 (not found) or 126.
pub fn spawn_exec(req: &ExecRequest) -> Result<Pid> {
    let process = plan::process(req.process, req.seccomp)?;
    let ns_dir = PathBuf::from(format!("/proc/{}/ns", req.container_pid));
    let open = |name: &str| {
        open_ns(&ns_dir.join(name)).map_err(|err| match err {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("container process {} is gone", req.container_pid))
            }
            other => other,
        })
    };
    let pid_ns = open("pid")?;
    // Mount last: it changes the root the other paths would be looked up in, and with it
    // moves the process into the container's root and working directory.
    let join_ns = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ]
    .into_iter()
    .map(|(name, flag)| Ok((flag, open(name)?)))
    .collect::<Result<Vec<_>>>()?;
    // The pod's user namespace, when the container is in one: entered last (see the module doc).
    let userns = Some(open("user")?).filter(|fd| !same_ns(fd, Path::new("/proc/self/ns/user")));
    let (parent_end, child_end) = sync_pair()?;
    let ctx = child::ExecContext {
        process: &process,
        cgroup_procs: req.cgroup_procs,
        sock: child_end.as_raw_fd(),
        stdio: [req.stdin.as_raw_fd(), req.stdout.as_raw_fd(), req.stderr.as_raw_fd()],
        join_ns: join_ns.iter().map(|(flag, fd)| (*flag, fd.as_raw_fd())).collect(),
        userns: userns.as_ref().map(|fd| fd.as_raw_fd()),
    };
    let pid = in_pid_namespace(Some(&pid_ns), || {
        // SAFETY: the caller is single-threaded (see `create`); the child runs `exec_main`,
        // which never returns.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => child::exec_main(&ctx),
            Ok(ForkResult::Parent { child }) => Ok(child),
            Err(e) => Err(Error::Internal(format!("forking the exec process: {e}"))),
        }
    })?;
    drop(child_end);
    match receive(&parent_end) {
        Ok(Message::Eof) => Ok(pid),
        other => {
            reap(pid);
            Err(failure(other, "the exec process exited during setup"))
        }
    }
}

/// Prepares an OCI runtime's bundle in the caller's own mount namespace (the runtime expects
/// a mounted root, and cannot idmap itself): the overlay on `target`, its layers idmapped when
/// the spec joins a user namespace, and the spec's idmapped binds (`idmap`), after which the
/// spec file binds plain directories. Undone by [`unmount_rootfs`].
pub fn mount_bundle(rootfs: &Rootfs, target: &Path, spec: &Spec, spec_path: &Path) -> Result<()> {
    let userns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|list| {
            list.iter().find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        })
        .and_then(|n| n.path().clone());
    match userns {
        None => mount_rootfs(rootfs, target)?,
        Some(path) => {
            let fd = open_ns(&path)?;
            let (_trees, overlay) = idmap::layers(rootfs, fd.as_fd())?;
            mount_overlay(&overlay, target)?;
        }
    }
    if let Err(err) = idmap::bundle_binds(spec, spec_path) {
        let _ = unmount_rootfs(target);
        return Err(err);
    }
    Ok(())
}

/// Makes the target of each of the spec's mounts in the mounted root `target`, following
/// symlinks inside it as the container will see them, for a runtime that cannot make a
/// target behind a dangling symlink itself (crun 1.8 fails with ENOENT where runc and the
/// embedded executor create it inside the root). Only paths already there are resolved: a
/// destination under an earlier mount's is left to the runtime, since what it resolves
/// through is not mounted yet. What cannot be made is left too, for the runtime to report
/// in its own words.
pub fn prepare_mount_targets(target: &Path, spec: &Spec) -> Result<()> {
    let root = nix::fcntl::open(
        target,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Internal(format!("opening the rootfs {}: {e}", target.display())))?;
    let mut earlier: Vec<PathBuf> = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let destination = m.destination().clone();
        let covered = earlier.iter().any(|e| destination.starts_with(e));
        earlier.push(destination.clone());
        if covered {
            continue;
        }
        let options = m.options().as_deref().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let kind = match (bind, m.source()) {
            (true, Some(source)) if !source.is_dir() => mounts::Create::File,
            _ => mounts::Create::Dir,
        };
        let _ = mounts::open_in_root(root.as_fd(), &destination, Some(kind));
    }
    Ok(())
}

/// Mounts the overlay on `target` in the caller's own mount namespace, for an OCI runtime,
/// which expects a mounted root. The lower layers are given relative to `lower_base`, entered
/// for the call, so the caller must be single-threaded (the monitor).
pub fn mount_rootfs(rootfs: &Rootfs, target: &Path) -> Result<()> {
    mount_overlay(&plan::overlay(rootfs)?, target)
}

fn mount_overlay(overlay: &plan::OverlayPlan, target: &Path) -> Result<()> {
    std::env::set_current_dir(&overlay.lower_base)
        .map_err(Error::io("entering", &overlay.lower_base))?;
    let mounted = nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(overlay.data.as_c_str()),
    );
    let _ = std::env::set_current_dir("/");
    mounted.map_err(|e| {
        Error::Internal(format!("mounting the root filesystem on {}: {e}", target.display()))
    })
}

/// Undoes [`mount_bundle`] (the idmapped binds beside `target` too) and [`mount_rootfs`].
/// Nothing mounted there, or no such directory, is fine. Lazily, so that a process still
/// inside (an exec racing the removal) cannot keep it.
pub fn unmount_rootfs(target: &Path) -> Result<()> {
    if let Some(bundle) = target.parent() {
        idmap::unmount_bundle_binds(bundle)?;
    }
    // A mount made twice over (a retried create) is taken off to the bottom.
    for _ in 0..8 {
        match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(Error::Internal(format!(
                    "unmounting the root filesystem at {}: {e}",
                    target.display()
                )))
            }
        }
    }
    Err(Error::Internal(format!("{} stays mounted", target.display())))
}

/// Runs `spawn` (a clone or fork) so that the child is born in the PID namespace `target`
/// (when given), and puts the caller's namespace for children back afterwards. setns of a PID
/// namespace only changes where the caller's future children go, never the caller itself.
fn in_pid_namespace(target: Option<&OwnedFd>, spawn: impl FnOnce() -> Result<Pid>) -> Result<Pid> {
    let Some(target) = target else { return spawn() };
    let own = open_ns(Path::new("/proc/self/ns/pid"))?;
    nix::sched::setns(target, CloneFlags::CLONE_NEWPID)
        .map_err(|e| Error::Internal(format!("entering the container's PID namespace: {e}")))?;
    let spawned = spawn();
    if let Err(e) = nix::sched::setns(&own, CloneFlags::CLONE_NEWPID) {
        if let Ok(pid) = spawned {
            let _ = kill(pid, Signal::SIGKILL);
            reap(pid);
        }
        return Err(Error::Internal(format!("returning to the monitor's PID namespace: {e}")));
    }
    spawned
}

/// Detaches what [`mount_bundle`] attached for the idmapped binds of the bundle at `bundle`.
pub fn unmount_idmapped(bundle: &Path) -> Result<()> {
    idmap::unmount_bundle_binds(bundle)
}

/// Whether a namespace file names the same namespace as `other`.
fn same_ns(fd: &OwnedFd, other: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(st) = nix::sys::stat::fstat(fd) else { return false };
    std::fs::metadata(other).is_ok_and(|m| m.ino() == st.st_ino && m.dev() == st.st_dev)
}

fn open_ns(path: &Path) -> Result<OwnedFd> {
    // std opens with O_CLOEXEC.
    File::open(path).map(OwnedFd::from).map_err(Error::io("opening namespace", path))
}

fn sync_pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| Error::Internal(format!("creating the sync socket pair: {e}")))
}

fn reap(pid: Pid) {
    while waitpid(pid, None) == Err(Errno::EINTR) {}
}

/// What the child said over the sync socket.
#[derive(Debug, PartialEq, Eq)]
enum Message {
    Ready(u32),
    Failed {
        user: bool,
        msg: String,
    },
    /// The child's end closed: it exec'd, or died without a word.
    Eof,
}

fn receive(sock: &impl AsFd) -> Result<Message> {
    let mut buf = vec![0u8; MAX_MESSAGE + 64];
    let n = loop {
        // SAFETY: receives into a live buffer of the given length.
        let n =
            unsafe { libc::recv(sock.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match Errno::result(n) {
            Ok(n) => break n as usize,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Error::Internal(format!("reading the sync socket: {e}"))),
        }
    };
    Ok(parse_message(&buf[..n]))
}

fn parse_message(bytes: &[u8]) -> Message {
    if bytes.is_empty() {
        return Message::Eof;
    }
    let text = String::from_utf8_lossy(bytes);
    let (kind, rest) = text.split_once(' ').unwrap_or((&text, ""));
    match kind {
        "ready" => match rest.parse() {
            Ok(pid) => Message::Ready(pid),
            Err(_) => Message::Failed { user: false, msg: format!("bad ready message {text:?}") },
        },
        "user" => Message::Failed { user: true, msg: rest.to_string() },
        "internal" => Message::Failed { user: false, msg: rest.to_string() },
        _ => Message::Failed { user: false, msg: format!("unexpected message {text:?}") },
    }
}

/// The error for anything but the message the caller hoped for.
fn failure(got: Result<Message>, on_eof: &str) -> Error {
    match got {
        Err(err) => err,
        Ok(Message::Failed { user: true, msg }) => Error::InvalidArgument(msg),
        Ok(Message::Failed { user: false, msg }) => Error::Internal(msg),
        Ok(Message::Eof) => Error::Internal(on_eof.to_string()),
        Ok(Message::Ready(_)) => Error::Internal("unexpected ready message".to_string()),
    }
}
