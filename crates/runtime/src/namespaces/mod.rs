//! The namespaces a pod's containers share (network, IPC, UTS), held for the pod's life without
//! an infra ("pause") process.
//!
//! As `ip netns add` does, each namespace is kept alive by bind-mounting its nsfs file onto a
//! file under `<state>/pods/<id>/ns`: the namespace lives until that mount goes, whatever
//! processes come and go. berthd is a multi-threaded tokio process and must never fork, so the
//! namespaces are created and entered on dedicated threads: unshare(2) and setns(2) of network,
//! IPC and UTS namespaces change only the calling thread, and that thread ends right after, so
//! no tokio worker is ever left inside a pod's namespaces. Every function here blocks; berthd
//! calls them through `spawn_blocking`.
//!
//! A pod with a user namespace of its own (`hostUsers: false`) has it made by a short-lived
//! helper process instead (a thread cannot enter or create one; see `userns`), which creates
//! the pod's network, IPC and UTS namespaces inside it, so that the user namespace owns them:
//! its root has every capability over them (routes, sysctls, the hostname) and none over the
//! node's. The user namespace is held like the others, and the rest of the setup is the same:
//! berthd, root of the node, has every capability over namespaces a child user namespace owns.
//!
//! Mount propagation of the state directory is explained at [`prepare_state_dir`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::sys::statfs::{statfs, NSFS_MAGIC};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::userns::{self, UserNamespace};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const PROC_SYS: &str = "/proc/sys";
/// The kernel's limit on a UTS hostname (`__NEW_UTS_LEN`).
const HOSTNAME_MAX: usize = 64;
/// How many mounts stacked on one path [`unmount`] removes before giving up; only a loop that
/// keeps remounting could reach it.
const MAX_STACKED_MOUNTS: usize = 64;

/// A kind of namespace a pod can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsKind {
    Net,
    Ipc,
    Uts,
    /// Only with `hostUsers: false`; never entered by a thread (the kernel allows that only
    /// to a single-threaded process).
    User,
}

impl NsKind {
    /// The kinds a thread can enter (see [`in_namespaces`]).
    pub const ALL: [NsKind; 3] = [NsKind::Net, NsKind::Ipc, NsKind::Uts];

    /// The namespace's name in /proc/<pid>/ns, which is also the name of the file holding it in
    /// a pod's namespace directory.
    pub fn as_str(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::User => "user",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NsKind::Net => "network",
            NsKind::Ipc => "IPC",
            NsKind::Uts => "UTS",
            NsKind::User => "user",
        }
    }

    fn clone_flag(self) -> CloneFlags {
        match self {
            NsKind::Net => CloneFlags::CLONE_NEWNET,
            NsKind::Ipc => CloneFlags::CLONE_NEWIPC,
            NsKind::Uts => CloneFlags::CLONE_NEWUTS,
            NsKind::User => CloneFlags::CLONE_NEWUSER,
        }
    }
}

impl fmt::Display for NsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The namespaces a pod holds. `None` means the pod uses the host's namespace of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    /// `<state>/pods/<id>/ns`.
    pub dir: PathBuf,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's own user namespace, which owns the others.
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl PodNamespaces {
    pub fn path(&self, kind: NsKind) -> Option<&Path> {
        match kind {
            NsKind::Net => self.net.as_deref(),
            NsKind::Ipc => self.ipc.as_deref(),
            NsKind::Uts => self.uts.as_deref(),
            NsKind::User => self.user.as_deref(),
        }
    }

    /// The held namespaces a thread can enter, in the form [`in_namespaces`] takes.
    pub fn held(&self) -> Vec<(NsKind, &Path)> {
        NsKind::ALL.into_iter().filter_map(|kind| Some((kind, self.path(kind)?))).collect()
    }

    fn set(&mut self, kind: NsKind, path: PathBuf) {
        match kind {
            NsKind::Net => self.net = Some(path),
            NsKind::Ipc => self.ipc = Some(path),
            NsKind::Uts => self.uts = Some(path),
            NsKind::User => self.user = Some(path),
        }
    }
}

/// Which namespaces a pod gets of its own, and how they are set up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceRequest {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    /// Set in the pod's UTS namespace; only allowed with `uts`, as it would otherwise rename the
    /// node.
    pub hostname: Option<String>,
    /// Namespaced sysctls by name, in the dotted form the kubelet sends or in the slash form.
    pub sysctls: BTreeMap<String, String>,
    /// A user namespace of the pod's own, with these mappings, owning the others.
    pub user: Option<UserNamespace>,
}

impl NamespaceRequest {
    fn wants(&self, kind: NsKind) -> bool {
        match kind {
            NsKind::Net => self.net,
            NsKind::Ipc => self.ipc,
            NsKind::Uts => self.uts,
            NsKind::User => self.user.is_some(),
        }
    }
}

/// Makes `dir` (berthd passes `<state>/pods`, under which every pod keeps its namespace files
/// and its /dev/shm) a mount point with shared propagation, as `ip netns` does for /run/netns.
/// Idempotent: a directory that already is a shared mount point is left as it is.
///
/// Why shared rather than private: any mount namespace created from the host's while a pod
/// lives (a systemd service with PrivateTmp, a container before it pivots) gets copies of the
/// pod's nsfs and tmpfs mounts. With a private parent those copies are cut off from the host
/// and keep the pod's network namespace (and its veth, IPs) and shm alive after release; under
/// a shared parent the copies are peers or slaves, and release's unmount propagates to them.
/// The kernel's loop rule (nsfs mounts are refused where they could make a namespace reference
/// itself, hence the private parent `unshare --mount=<file>` needs) concerns only files of
/// mount namespaces, which berth never holds; network, IPC and UTS files are fine here.
///
/// A fresh bind mount of a directory on a shared mount would join that mount's peer group, so
/// that everything mounted under it would also propagate to the hidden directory beneath and
/// to every peer of, say, `/`. It is made private first, then shared, to be a peer group of
/// its own. An existing mount point is only made shared: making it private would cut off the
/// copies other mount namespaces took while an earlier berthd ran.
///
/// The bind mount berth makes is recorded beside the directory (`<dir>.berth-bind`), so that
/// whichever berthd stops last with no pod left takes it away again ([`release_state_dir`]);
/// a mount point berth found there is left alone.
pub fn prepare_state_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let dir = fs::canonicalize(dir).map_err(Error::io("resolving", dir))?;
    let mountinfo = fs::read_to_string(MOUNTINFO).map_err(Error::io("reading", MOUNTINFO))?;
    match top_mount_at(&mountinfo, &dir) {
        Some(top) if top.shared => return Ok(()),
        Some(_) => {}
        None => {
            let marker = bind_marker(&dir);
            fs::write(&marker, b"").map_err(Error::io("writing", &marker))?;
            // Recursive, so that mounts already below (left by a berthd that ran without this
            // step) stay reachable instead of being hidden under the new mount.
            mount(Some(&dir), &dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(errno_io("bind-mounting onto itself", &dir))?;
            mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
                .map_err(errno_io("making private the mount at", &dir))?;
        }
    }
    mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .map_err(errno_io("making shared the mount at", &dir))?;
    Ok(())
}

fn bind_marker(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".berth-bind");
    PathBuf::from(name)
}

/// Takes away the bind mount [`prepare_state_dir`] made on `dir`, when it made one: for a clean
/// stop with no pod left, which should leave the node's mount table as it found it.
pub fn release_state_dir(dir: &Path) -> Result<()> {
    let Ok(dir) = fs::canonicalize(dir) else { return Ok(()) };
    let dir = dir.as_path();
    let marker = bind_marker(dir);
    if !marker.exists() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string(MOUNTINFO).map_err(Error::io("reading", MOUNTINFO))?;
    if top_mount_at(&mountinfo, dir).is_some() {
        nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
            .map_err(errno_io("unmounting", dir))?;
    }
    fs::remove_file(&marker).map_err(Error::io("removing", &marker))
}

/// Creates the namespaces `request` asks for and holds each with a bind mount on
/// `dir/<kind>`: sets the hostname in the new UTS namespace, brings `lo` up in the new network
/// namespace and writes the sysctls there. The request is validated before anything is created;
/// on a later failure everything done so far is undone before the error is returned. A request
/// for no namespace creates nothing, not even `dir`. With `request.user`, the user namespace
/// is made first and owns the others (see the module doc).
pub fn create(dir: &Path, request: &NamespaceRequest) -> Result<PodNamespaces> {
    let sysctls = check_request(request)?;
    let mut held =
        PodNamespaces { dir: dir.to_path_buf(), net: None, ipc: None, uts: None, user: None };
    let kinds: Vec<NsKind> = NsKind::ALL.into_iter().filter(|k| request.wants(*k)).collect();
    let hostname = request.hostname.as_deref();
    let fds = match &request.user {
        None if kinds.is_empty() => return Ok(held),
        None => new_namespaces(dir, &kinds, hostname, &sysctls)?,
        Some(user) => owned_namespaces(dir, user, &kinds, hostname, &sysctls)?,
    };
    let mut undo = Undo::default();
    match hold(dir, fds, &mut held, &mut undo) {
        Ok(()) => Ok(held),
        Err(err) => {
            undo.run();
            Err(err)
        }
    }
}

/// Unmounts and removes the files holding `ns`'s namespaces, then `ns.dir` if it is empty.
/// Missing files are fine, so this is idempotent and also cleans up after a crash half way
/// through [`create`]: every kind's file in `ns.dir` is released, whatever the `Option`s say.
/// A namespace lives on while a process is still in it; release only drops berth's hold.
pub fn release(ns: &PodNamespaces) -> Result<()> {
    let kinds = NsKind::ALL.iter().chain([&NsKind::User]);
    let mut paths: Vec<PathBuf> = kinds.map(|k| ns.dir.join(k.as_str())).collect();
    for path in [&ns.net, &ns.ipc, &ns.uts, &ns.user].into_iter().flatten() {
        if !paths.contains(path) {
            paths.push(path.clone());
        }
    }
    let mut errors = Vec::new();
    for path in &paths {
        if let Err(err) = unmount(path).and_then(|()| remove_file(path)) {
            errors.push(err);
        }
    }
    // A file berth did not put there is not ours to remove, so neither is the directory.
    if let Err(err) = fs::remove_dir(&ns.dir) {
        if !matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) {
            errors.push(Error::io("removing", &ns.dir)(err));
        }
    }
    let mut errors = errors.into_iter();
    let Some(first) = errors.next() else { return Ok(()) };
    for err in errors {
        tracing::warn!(error = %err, "releasing pod namespaces in {}", ns.dir.display());
    }
    Err(first)
}

/// Whether `path` holds a namespace: an nsfs file is mounted on it. After a reboot the files
/// are gone or plain empty files, and this is false.
pub fn is_held(path: &Path) -> bool {
    // statfs follows symlinks, and a symlink to /proc/self/ns/net holds nothing.
    let not_symlink = fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_symlink());
    not_symlink && statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Runs `f` on a fresh thread that has joined the namespaces held at `paths`, and returns what
/// it returns: for CNI, sysctl or port-forward work inside a pod. The thread ends with `f`, so
/// no other work ever runs in the pod's namespaces. A panic in `f` is resumed on the caller.
/// Note that /sys shows the network namespace of whoever mounted it, not the thread's; /proc/sys
/// and sockets do follow the thread.
pub fn in_namespaces<T: Send>(
    paths: &[(NsKind, &Path)],
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let files = paths
        .iter()
        .map(|&(kind, path)| {
            let file = File::open(path).map_err(Error::io("opening namespace file", path))?;
            Ok((kind, path, file))
        })
        .collect::<Result<Vec<_>>>()?;
    thread::scope(|scope| {
        let entered = thread::Builder::new()
            .name("berth-nsenter".to_string())
            .spawn_scoped(scope, move || {
                for (kind, path, file) in &files {
                    setns(file, kind.clone_flag()).map_err(|err| join_error(*kind, path, err))?;
                }
                f()
            })
            .map_err(|err| {
                Error::Internal(format!("starting a thread to enter pod namespaces: {err}"))
            })?;
        entered.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Validates `sysctls` and writes them from inside the held namespaces of `ns`: for sysctls
/// that need the pod's network set up first, such as those of its `eth0`.
pub fn apply_sysctls(ns: &PodNamespaces, sysctls: &BTreeMap<String, String>) -> Result<()> {
    let checked = sysctls
        .iter()
        .map(|(name, value)| check_sysctl(name, value, ns.net.is_some(), ns.ipc.is_some()))
        .collect::<Result<Vec<_>>>()?;
    in_namespaces(&ns.held(), || checked.iter().try_for_each(write_sysctl))
}

/// Mounts a tmpfs for a pod's /dev/shm on `path` (created if missing), of at most `size_bytes`
/// (rounded up to whole pages by the kernel).
pub fn mount_shm(path: &Path, size_bytes: u64) -> Result<()> {
    if size_bytes == 0 {
        // tmpfs reads size=0 as "no limit".
        return Err(Error::InvalidArgument(format!(
            "shm size 0 for {}: it must be at least one byte",
            path.display()
        )));
    }
    fs::create_dir_all(path).map_err(Error::io("creating", path))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let options = format!("mode=1777,size={size_bytes}");
    mount(Some("shm"), path, Some("tmpfs"), flags, Some(options.as_str()))
        .map_err(errno_io("mounting a tmpfs for /dev/shm on", path))
}

/// Detaches every mount stacked on `path`; a path that is missing or no mount point is fine.
pub fn unmount(path: &Path) -> Result<()> {
    // Each umount2 takes off the topmost mount only. NOFOLLOW: a symlink planted in the state
    // dir must not redirect the unmount elsewhere.
    for _ in 0..MAX_STACKED_MOUNTS {
        match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {}
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(err) => return Err(errno_io("unmounting", path)(err)),
        }
    }
    Err(Error::Internal(format!(
        "unmounting {}: still a mount point after {MAX_STACKED_MOUNTS} unmounts",
        path.display()
    )))
}

fn errno_io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> Error {
    let wrap = Error::io(what, path);
    move |errno| wrap(io::Error::from(errno))
}

fn join_error(kind: NsKind, path: &Path, err: Errno) -> Error {
    // setns refuses a file that is no namespace (or one of another kind) with EINVAL; a
    // released or never-mounted file is the usual reason.
    let hint = if err == Errno::EINVAL { " (is it still held?)" } else { "" };
    Error::Internal(format!(
        "joining the {} namespace held at {}: {err}{hint}",
        kind.describe(),
        path.display()
    ))
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(Error::io("removing", path)(err)),
        _ => Ok(()),
    }
}

/// A sysctl checked against the request: where it lives under /proc/sys.
struct Sysctl<'a> {
    name: &'a str,
    value: &'a str,
    /// Relative to /proc/sys, e.g. `net/ipv4/ip_forward`.
    path: PathBuf,
}

/// Checks everything in `request` that can be checked before creating anything.
fn check_request(request: &NamespaceRequest) -> Result<Vec<Sysctl<'_>>> {
    if let Some(hostname) = &request.hostname {
        if !request.uts {
            return Err(Error::InvalidArgument(format!(
                "hostname {hostname:?}: the pod shares the host's UTS namespace, so setting it \
                 would rename the node"
            )));
        }
        check_hostname(hostname)?;
    }
    request
        .sysctls
        .iter()
        .map(|(name, value)| check_sysctl(name, value, request.net, request.ipc))
        .collect()
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
fn check_hostname(hostname: &str) -> Result<()> {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if hostname.len() > HOSTNAME_MAX || !hostname.split('.').all(label_ok) {
        return Err(Error::InvalidArgument(format!(
            "hostname {hostname:?} is not an RFC 1123 host name of at most {HOSTNAME_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_sysctl<'a>(
    name: &'a str,
    value: &'a str,
    own_net: bool,
    own_ipc: bool,
) -> Result<Sysctl<'a>> {
    let refuse = |why: &str| Error::InvalidArgument(format!("sysctl {name:?}: {why}"));
    let path = sysctl_path(name)
        .ok_or_else(|| refuse("not a sysctl name (empty, \".\" or \"..\" parts, or a NUL byte)"))?;
    let parts: Vec<&[u8]> = path.as_os_str().as_bytes().split(|b| *b == b'/').collect();
    let kind = match parts.as_slice() {
        [b"net", _, ..] => NsKind::Net,
        [b"kernel", b"sem"] | [b"fs", b"mqueue", _] => NsKind::Ipc,
        [b"kernel", leaf] if leaf.starts_with(b"shm") || leaf.starts_with(b"msg") => NsKind::Ipc,
        [b"kernel", b"hostname" | b"domainname"] => {
            return Err(refuse(
                "belongs to the UTS namespace, which sysctls may not change: the pod's hostname \
                 comes from its config",
            ))
        }
        _ => {
            return Err(refuse(
                "not namespaced: it would change the whole node (allowed: kernel.shm*, \
                 kernel.msg*, kernel.sem, fs.mqueue.*, net.*)",
            ))
        }
    };
    match kind {
        NsKind::Net if !own_net => {
            return Err(refuse("the pod shares the host's network namespace"));
        }
        NsKind::Ipc if !own_ipc => return Err(refuse("the pod shares the host's IPC namespace")),
        _ => {}
    }
    if value.contains('\0') {
        return Err(Error::InvalidArgument(format!("sysctl {name:?}: the value has a NUL byte")));
    }
    Ok(Sysctl { name, value, path })
}

/// The path of sysctl `name` under /proc/sys, or None for a name that could leave it.
///
/// Like sysctl(8) and the kubelet: when the first separator is a dot, dots separate and a slash
/// stands for a dot inside a part (`net.ipv4.conf.eth0/100.forwarding` is
/// `net/ipv4/conf/eth0.100/forwarding`); when it is a slash, the name already is the path.
fn sysctl_path(name: &str) -> Option<PathBuf> {
    let dotted = name.find(['.', '/']).is_some_and(|i| name.as_bytes()[i] == b'.');
    let path: Vec<u8> = if dotted {
        name.bytes()
            .map(|b| match b {
                b'.' => b'/',
                b'/' => b'.',
                b => b,
            })
            .collect()
    } else {
        name.as_bytes().to_vec()
    };
    let bad_part = |part: &[u8]| matches!(part, b"" | b"." | b"..");
    if path.contains(&0) || path.split(|b| *b == b'/').any(bad_part) {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(&path)))
}

/// Writes a sysctl under /proc/sys, which resolves net and IPC sysctls in the namespaces of the
/// calling thread.
fn write_sysctl(sysctl: &Sysctl<'_>) -> Result<()> {
    let path = Path::new(PROC_SYS).join(&sysctl.path);
    let written = OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut file| file.write_all(sysctl.value.as_bytes()));
    let Err(err) = written else { return Ok(()) };
    let (name, value, shown) = (sysctl.name, sysctl.value, path.display());
    match err.raw_os_error() {
        Some(libc::ENOENT) => Err(Error::InvalidArgument(format!(
            "sysctl {name:?}: no such sysctl in the pod's namespaces ({shown} is missing)"
        ))),
        Some(libc::EINVAL | libc::ERANGE) => Err(Error::InvalidArgument(format!(
            "sysctl {name:?}: the kernel refused the value {value:?} ({shown}): {err}"
        ))),
        _ => Err(Error::io("writing sysctl", path)(err)),
    }
}

/// Creates namespaces of `kinds` on a thread of their own, sets them up and returns a file
/// for each, which keeps it alive until it is bind-mounted.
fn new_namespaces(
    dir: &Path,
    kinds: &[NsKind],
    hostname: Option<&str>,
    sysctls: &[Sysctl<'_>],
) -> Result<Vec<(NsKind, File)>> {
    let names = kinds.iter().map(|k| k.describe()).collect::<Vec<_>>().join(", ");
    let failed = |what: &str, err: &dyn fmt::Display| {
        Error::Internal(format!("{what} for pod namespaces {}: {err}", dir.display()))
    };
    let set_up = || -> Result<Vec<(NsKind, File)>> {
        let flags = kinds.iter().fold(CloneFlags::empty(), |flags, k| flags | k.clone_flag());
        unshare(flags).map_err(|err| failed(&format!("creating {names} namespaces"), &err))?;
        if let Some(hostname) = hostname {
            nix::unistd::sethostname(hostname)
                .map_err(|err| failed(&format!("setting hostname {hostname:?}"), &err))?;
        }
        if kinds.contains(&NsKind::Net) {
            // A new network namespace has lo down, so not even 127.0.0.1 would work.
            loopback_up().map_err(|err| failed("bringing up lo", &err))?;
        }
        sysctls.iter().try_for_each(write_sysctl)?;
        kinds
            .iter()
            .map(|&kind| {
                // /proc/self would be the main thread's namespaces, not this thread's.
                let own = Path::new("/proc/thread-self/ns").join(kind.as_str());
                let file = File::open(&own).map_err(Error::io("opening", own))?;
                Ok((kind, file))
            })
            .collect()
    };
    thread::scope(|scope| {
        let thread = thread::Builder::new()
            .name("berth-ns".to_string())
            .spawn_scoped(scope, set_up)
            .map_err(|err| failed("starting a thread to create namespaces", &err))?;
        thread
            .join()
            .map_err(|_| failed("creating namespaces", &"the thread creating them panicked"))?
    })
}

/// Creates a user namespace with `user`'s mappings and, inside it, namespaces of `kinds`, which
/// it owns; sets them up from a thread that enters them as [`new_namespaces`] does inside its
/// own. Returns a file for each, the user namespace's last.
fn owned_namespaces(
    dir: &Path,
    user: &UserNamespace,
    kinds: &[NsKind],
    hostname: Option<&str>,
    sysctls: &[Sysctl<'_>],
) -> Result<Vec<(NsKind, File)>> {
    let flags = kinds.iter().fold(CloneFlags::empty(), |flags, k| flags | k.clone_flag());
    let made = userns::create(&[user.uids], &[user.gids], flags)?;
    let mut files: Vec<(NsKind, File)> = made
        .owned
        .into_iter()
        .filter_map(|(flag, file)| {
            let kind = NsKind::ALL.into_iter().find(|k| k.clone_flag() == flag)?;
            Some((kind, file))
        })
        .collect();
    let failed = |what: &str, err: &dyn fmt::Display| {
        Error::Internal(format!("{what} for pod namespaces {}: {err}", dir.display()))
    };
    let set_up = || -> Result<()> {
        for (kind, file) in &files {
            setns(file, kind.clone_flag()).map_err(|err| {
                failed(&format!("entering the new {} namespace", kind.describe()), &err)
            })?;
        }
        if let Some(hostname) = hostname {
            nix::unistd::sethostname(hostname)
                .map_err(|err| failed(&format!("setting hostname {hostname:?}"), &err))?;
        }
        if kinds.contains(&NsKind::Net) {
            loopback_up().map_err(|err| failed("bringing up lo", &err))?;
        }
        // Network sysctls take CAP_NET_ADMIN over the namespace; IPC ones only the namespace's
        // root, whatever capabilities the writer has: this thread, which ends with this work,
        // takes its ids for them, and so loses its capabilities. The raw system calls change
        // the calling thread alone (glibc's would change them all).
        let (net, ipc): (Vec<&Sysctl>, Vec<&Sysctl>) =
            sysctls.iter().partition(|s| s.path.starts_with("net"));
        net.into_iter().try_for_each(write_sysctl)?;
        if let (Some((uid, gid)), false) = (user.root_on_host(), ipc.is_empty()) {
            // SAFETY: setresgid and setresuid with plain integers; -1 leaves an id as it is.
            let changed = unsafe {
                libc::syscall(libc::SYS_setresgid, -1, gid, -1) == 0
                    && libc::syscall(libc::SYS_setresuid, -1, uid, -1) == 0
            };
            if !changed {
                return Err(failed("becoming the pod's root", &Errno::last()));
            }
        }
        ipc.into_iter().try_for_each(write_sysctl)
    };
    thread::scope(|scope| {
        let thread = thread::Builder::new()
            .name("berth-ns".to_string())
            .spawn_scoped(scope, set_up)
            .map_err(|err| failed("starting a thread to set up namespaces", &err))?;
        thread
            .join()
            .map_err(|_| failed("setting up namespaces", &"the thread setting them up panicked"))?
    })?;
    files.push((NsKind::User, made.user));
    Ok(files)
}

/// What [`create`] did so far, for undoing it on a failure.
#[derive(Default)]
struct Undo {
    /// Deepest first.
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
}

impl Undo {
    /// Best effort: the error that made us undo is the one the caller gets, so failures here
    /// are only logged.
    fn run(self) {
        let log = |err: Error| tracing::warn!(error = %err, "undoing pod namespace creation");
        for mounted in self.mounts.iter().rev() {
            unmount(mounted).unwrap_or_else(log);
        }
        for file in &self.files {
            remove_file(file).unwrap_or_else(log);
        }
        for dir in &self.dirs {
            if let Err(err) = fs::remove_dir(dir) {
                log(Error::io("removing", dir)(err));
            }
        }
    }
}

/// Bind-mounts each of `fds` onto `dir/<kind>`.
fn hold(
    dir: &Path,
    fds: Vec<(NsKind, File)>,
    held: &mut PodNamespaces,
    undo: &mut Undo,
) -> Result<()> {
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || fs::symlink_metadata(ancestor).is_ok() {
            break;
        }
        undo.dirs.push(ancestor.to_path_buf());
    }
    fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    for (kind, fd) in fds {
        let target = dir.join(kind.as_str());
        mount_target(&target)?;
        undo.files.push(target.clone());
        // The fd's /proc path leads to the namespace itself, as /proc/<pid>/ns/<kind> would.
        let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
            |err| {
                Error::Internal(format!(
                    "bind-mounting the new {} namespace onto {}: {err}",
                    kind.describe(),
                    target.display()
                ))
            },
        )?;
        undo.mounts.push(target.clone());
        held.set(kind, target);
    }
    Ok(())
}

/// Creates the empty file a namespace is mounted on. A leftover plain file (from a crash or a
/// reboot) is reused; one that still holds a namespace belongs to a live pod and is refused.
fn mount_target(path: &Path) -> Result<()> {
    let created = OpenOptions::new().write(true).create_new(true).mode(0o444).open(path);
    match created {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            if is_held(path) {
                return Err(Error::AlreadyExists(format!(
                    "{} already holds a namespace; release the pod's namespaces first",
                    path.display()
                )));
            }
            let meta = fs::symlink_metadata(path).map_err(Error::io("inspecting", path))?;
            if !meta.file_type().is_file() {
                return Err(Error::Internal(format!(
                    "{} is in the way of a namespace file: it is not a regular file",
                    path.display()
                )));
            }
            Ok(())
        }
        Err(err) => Err(Error::io("creating", path)(err)),
    }
}

mod ioctl {
    nix::ioctl_readwrite_bad!(get_flags, nix::libc::SIOCGIFFLAGS, nix::libc::ifreq);
    nix::ioctl_write_ptr_bad!(set_flags, nix::libc::SIOCSIFFLAGS, nix::libc::ifreq);
}

/// An inet socket: interface ioctls act on the network namespace the socket was made in.
fn ioctl_socket() -> nix::Result<OwnedFd> {
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
}

fn interface_flags(sock: &OwnedFd, name: &str) -> nix::Result<libc::ifreq> {
    // SAFETY: ifreq holds only integers, arrays and a union of such; all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // At most IFNAMSIZ - 1 bytes, so that the name stays NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // SAFETY: req is a valid, NUL-terminated ifreq that outlives the call.
    unsafe { ioctl::get_flags(sock.as_raw_fd(), &mut req) }?;
    Ok(req)
}

fn loopback_up() -> nix::Result<()> {
    let sock = ioctl_socket()?;
    let mut req = interface_flags(&sock, "lo")?;
    // SAFETY: SIOCGIFFLAGS filled in ifru_flags, the union member used.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: req is a valid ifreq that outlives the call.
    unsafe { ioctl::set_flags(sock.as_raw_fd(), &req) }?;
    Ok(())
}

struct MountLine {
    id: u64,
    parent: u64,
    mountpoint: PathBuf,
    shared: bool,
}

fn parse_mount_line(line: &str) -> Option<MountLine> {
    // Optional fields (shared:N, master:N) sit between field 6 and " - ".
    let (before, _) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    Some(MountLine {
        id: fields.first()?.parse().ok()?,
        parent: fields.get(1)?.parse().ok()?,
        mountpoint: unescape(fields.get(4)?),
        shared: fields.iter().skip(6).any(|f| f.starts_with("shared:")),
    })
}

/// The topmost of the mounts on `path`: the one no other mount on `path` is mounted over.
fn top_mount_at(mountinfo: &str, path: &Path) -> Option<MountLine> {
    let on_path: Vec<MountLine> =
        mountinfo.lines().filter_map(parse_mount_line).filter(|m| m.mountpoint == path).collect();
    let parents: Vec<u64> = on_path.iter().map(|m| m.parent).collect();
    on_path.into_iter().find(|m| !parents.contains(&m.id))
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes into mountinfo paths.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\').and_then(|digits| {
            let value = digits.iter().try_fold(0u32, |v, b| {
                (b'0'..=b'7').contains(b).then(|| v * 8 + u32::from(b - b'0'))
            })?;
            u8::try_from(value).ok()
        });
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

#[cfg(test)]
mod tests;
