//! User namespaces for pods (`hostUsers: false`): the id mappings the kubelet allocates, checked;
//! the namespace made from them, with the namespaces it is to own; idmapped mounts, through
//! which files owned by the node's ids appear owned by the pod's and the other way round.
//!
//! A user namespace can only be entered or created by a single-threaded process: berthd is
//! multi-threaded, so [`create`] forks a helper that unshares it (and, once berthd has written
//! its mappings, the namespaces it is to own) and does nothing else; berthd keeps the
//! namespaces by their `/proc/<helper>/ns` files and kills the helper. Between fork and death
//! the helper makes system calls only: it is a copy of a multi-threaded process, whose other
//! threads may have held locks (the allocator's) at the fork.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxIdMapping;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The kernel takes at most this many lines in a `uid_map` or `gid_map`.
const MAX_MAPPINGS: usize = 340;
/// `(uid_t) -1` is no id; a range may end just below it.
const ID_LIMIT: u64 = u32::MAX as u64;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

/// One range of ids: the `length` ids from `container_id` on in the namespace are those from
/// `host_id` on, on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMapping {
    /// The node's id of `id` as the namespace sees it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id).filter(|o| *o < self.length)?;
        self.host_id.checked_add(offset)
    }

    /// The namespace's id of the node's `host`.
    pub fn to_container(&self, host: u32) -> Option<u32> {
        let offset = host.checked_sub(self.host_id).filter(|o| *o < self.length)?;
        self.container_id.checked_add(offset)
    }

    fn check(&self, what: &str) -> Result<()> {
        let end = |start: u32| u64::from(start) + u64::from(self.length);
        if self.length == 0 {
            return Err(Error::InvalidArgument(format!("{what} {self}: the length is 0")));
        }
        if end(self.container_id) > ID_LIMIT || end(self.host_id) > ID_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "{what} {self}: the range runs past the last id ({})",
                ID_LIMIT - 1
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for IdMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = |start: u32| u64::from(start) + u64::from(self.length).max(1) - 1;
        write!(
            f,
            "{}-{} (node {}-{})",
            self.container_id,
            last(self.container_id),
            self.host_id,
            last(self.host_id)
        )
    }
}

impl From<&LinuxIdMapping> for IdMapping {
    fn from(m: &LinuxIdMapping) -> IdMapping {
        IdMapping { container_id: m.container_id(), host_id: m.host_id(), length: m.size() }
    }
}

impl From<&IdMapping> for LinuxIdMapping {
    fn from(m: &IdMapping) -> LinuxIdMapping {
        // Every field is set, so the builder cannot fail.
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(m.container_id)
            .host_id(m.host_id)
            .size(m.length)
            .build()
            .unwrap_or_default()
    }
}

/// A pod's user namespace, as the kubelet asks for it: one range of uids and one of gids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    pub uids: IdMapping,
    pub gids: IdMapping,
}

impl UserNamespace {
    /// From the CRI's lists, which must hold exactly one mapping each (the kubelet gives every
    /// pod one range of its own). A range that takes in the node's root is refused: the pod's
    /// processes would be root on the node. So is one without the pod's id 0, as containerd
    /// and CRI-O refuse it: the pod would have no root to own its namespaces, files and
    /// volumes, and the image's root-owned files would be nobody's.
    pub fn new(uids: &[IdMapping], gids: &[IdMapping]) -> Result<UserNamespace> {
        let one = |list: &[IdMapping], what: &str| match list {
            [mapping] => {
                mapping.check(what)?;
                if mapping.to_host(0).is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "{what} {mapping}: container ID 0 is not mapped"
                    )));
                }
                if mapping.to_container(0).is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "{what} {mapping}: it maps the node's root into the pod"
                    )));
                }
                Ok(*mapping)
            }
            _ => Err(Error::InvalidArgument(format!(
                "a pod's user namespace takes exactly one {what}, not {}",
                list.len()
            ))),
        };
        Ok(UserNamespace { uids: one(uids, "uid mapping")?, gids: one(gids, "gid mapping")? })
    }

    /// The node's uid and gid of the namespace's root, when it has one.
    pub fn root_on_host(&self) -> Option<(u32, u32)> {
        Some((self.uids.to_host(0)?, self.gids.to_host(0)?))
    }

    pub fn oci_uids(&self) -> Vec<LinuxIdMapping> {
        vec![LinuxIdMapping::from(&self.uids)]
    }

    pub fn oci_gids(&self) -> Vec<LinuxIdMapping> {
        vec![LinuxIdMapping::from(&self.gids)]
    }
}

/// Checks a list of mappings (an idmapped mount's): each range sane, at most what the kernel
/// takes, none overlapping another on either side.
pub fn check_mappings(list: &[IdMapping], what: &str) -> Result<()> {
    if list.is_empty() || list.len() > MAX_MAPPINGS {
        return Err(Error::InvalidArgument(format!(
            "{what}: {} mappings (1 to {MAX_MAPPINGS} are possible)",
            list.len()
        )));
    }
    for (i, mapping) in list.iter().enumerate() {
        mapping.check(what)?;
        let overlap = |a: u32, b: u32, len_b: u32| {
            u64::from(a) < u64::from(b) + u64::from(len_b)
                && u64::from(b) < u64::from(a) + u64::from(mapping.length)
        };
        if let Some(other) = list[..i].iter().find(|o| {
            overlap(mapping.container_id, o.container_id, o.length)
                || overlap(mapping.host_id, o.host_id, o.length)
        }) {
            return Err(Error::InvalidArgument(format!("{what}: {mapping} overlaps {other}")));
        }
    }
    Ok(())
}

/// The text of a `uid_map` or `gid_map`: one `<inside> <outside> <length>` line each.
pub fn map_text(list: &[IdMapping]) -> String {
    list.iter().map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length)).collect()
}

/// What [`create`] made: the user namespace and those it owns, each kept by a file.
#[derive(Debug)]
pub struct Created {
    pub user: File,
    /// In the order of [`OWNABLE`] that were asked for.
    pub owned: Vec<(CloneFlags, File)>,
}

/// The namespaces [`create`] can make inside the new user namespace, with their names in
/// `/proc/<pid>/ns`.
pub const OWNABLE: [(CloneFlags, &str); 3] = [
    (CloneFlags::CLONE_NEWNET, "net"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
];

/// Creates a user namespace with the given mappings and, inside it, new namespaces of the
/// kinds in `owned` (some of [`OWNABLE`]), which it then owns: its root has every capability
/// over them and none over the node's. Safe to call from a multi-threaded process.
///
/// The helper becomes the namespace's root (where 0 is mapped) before it makes the others, so
/// that what those are born with (an IPC namespace's mqueue root) belongs to the pod.
pub fn create(uids: &[IdMapping], gids: &[IdMapping], owned: CloneFlags) -> Result<Created> {
    if owned.intersects(!OWNABLE.iter().fold(CloneFlags::empty(), |all, (flag, _)| all | *flag)) {
        return Err(Error::Internal(format!("cannot own namespaces {owned:?}")));
    }
    let (uid_map, gid_map) = (map_text(uids), map_text(gids));
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
    let pipes = pipe().and_then(|a| Ok((a, pipe()?)));
    let ((from_child, to_parent), (from_parent, to_child)) =
        pipes.map_err(|e| Error::Internal(format!("creating pipes for a user namespace: {e}")))?;
    let fds = HelperFds {
        to_parent: to_parent.as_raw_fd(),
        from_parent: from_parent.as_raw_fd(),
        to_child: to_child.as_raw_fd(),
    };
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the child runs `helper`, which makes system calls on integers and static buffers
    // only and never returns: nothing in it can depend on a lock another thread held.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        return Err(Error::Internal(format!(
            "forking a helper for a user namespace: {}",
            Errno::last()
        )));
    }
    if pid == 0 {
        helper(&fds, owned.bits(), parent)
    }
    drop((to_parent, from_parent));
    let pid = Pid::from_raw(pid);
    let made = set_up(pid, &from_child, to_child.as_fd(), &uid_map, &gid_map, owned);
    // Killed rather than told to go: another helper forked meanwhile holds copies of these
    // pipes until it is gone, so an end of file here could wait on it (and it on this one).
    let _ = kill(pid, Signal::SIGKILL);
    while waitpid(pid, None) == Err(Errno::EINTR) {}
    made
}

struct HelperFds {
    to_parent: RawFd,
    from_parent: RawFd,
    to_child: RawFd,
}

/// The helper's whole life. Its messages: `U` (user namespace made), `R` (ready), or a step
/// letter and the errno of its failure. It ends killed, by its parent or with it.
fn helper(fds: &HelperFds, owned: libc::c_int, parent: libc::pid_t) -> ! {
    // SAFETY: system calls on descriptors this process owns and on local buffers.
    unsafe {
        libc::close(fds.to_child);
        // The thread that forked it is its parent here: one that dies never kills it otherwise.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
            || libc::getppid() != parent
        {
            libc::_exit(1)
        }
        let fail = |step: u8| -> ! {
            let errno = *libc::__errno_location();
            let mut msg = [step, 0, 0, 0, 0];
            msg[1..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(fds.to_parent, msg.as_ptr().cast(), msg.len());
            libc::_exit(1)
        };
        if libc::unshare(libc::CLONE_NEWUSER) != 0 {
            fail(b'u')
        }
        libc::write(fds.to_parent, b"U".as_ptr().cast(), 1);
        let mut byte = 0u8;
        if libc::read(fds.from_parent, (&mut byte as *mut u8).cast(), 1) != 1 {
            libc::_exit(1)
        }
        // Fails where 0 is not mapped; the capabilities stay either way.
        libc::setresgid(0, 0, 0);
        libc::setresuid(0, 0, 0);
        if owned != 0 && libc::unshare(owned) != 0 {
            fail(b'o')
        }
        libc::write(fds.to_parent, b"R".as_ptr().cast(), 1);
        loop {
            libc::pause();
        }
    }
}

fn set_up(
    pid: Pid,
    from_child: &OwnedFd,
    to_child: BorrowedFd,
    uid_map: &str,
    gid_map: &str,
    owned: CloneFlags,
) -> Result<Created> {
    expect_message(from_child, b'U')?;
    for (file, text) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "writing the user namespace's {file} ({:?}): {e}",
                    text.trim_end()
                ))
            })?;
    }
    nix::unistd::write(to_child, b"m")
        .map_err(|e| Error::Internal(format!("signalling the user namespace helper: {e}")))?;
    expect_message(from_child, b'R')?;
    let open = |name: &str| {
        let path = format!("/proc/{pid}/ns/{name}");
        File::open(&path).map_err(Error::io("opening", path))
    };
    let owned = OWNABLE
        .iter()
        .filter(|(flag, _)| owned.contains(*flag))
        .map(|(flag, name)| Ok((*flag, open(name)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Created { user: open("user")?, owned })
}

fn expect_message(from_child: &OwnedFd, expected: u8) -> Result<()> {
    let mut msg = [0u8; 5];
    let n = loop {
        match nix::unistd::read(from_child, &mut msg) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    let n = n.map_err(|e| Error::Internal(format!("reading the user namespace helper: {e}")))?;
    match (n, msg[0]) {
        (1, got) if got == expected => Ok(()),
        (5, step) => {
            let errno = Errno::from_raw(i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]));
            let what = match step {
                b'u' => "creating a user namespace",
                _ => "creating the namespaces a user namespace owns",
            };
            Err(Error::Internal(format!("{what}: {errno}")))
        }
        _ => Err(Error::Internal("the user namespace helper exited early".into())),
    }
}

/// A detached copy of the mount at `path` (with its submounts when `recursive`), idmapped
/// through `userns` (the submounts too when `idmap_all`): a file a namespace's id owns there
/// appears owned by the node's id it maps to, and what the node's ids write lands with the
/// namespace's.
pub(crate) fn idmapped_tree(
    path: &Path,
    userns: BorrowedFd,
    recursive: bool,
    idmap_all: bool,
) -> std::result::Result<OwnedFd, Errno> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the C string and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), flags) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just returned this descriptor, which nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let at = if idmap_all { libc::AT_EMPTY_PATH | libc::AT_RECURSIVE } else { libc::AT_EMPTY_PATH };
    // SAFETY: mount_setattr reads `attr` of the size passed; the path is an empty C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret)?;
    Ok(tree)
}

/// Attaches a detached tree (from [`idmapped_tree`]) on the opened `target`.
pub(crate) fn attach(tree: BorrowedFd, target: BorrowedFd) -> std::result::Result<(), Errno> {
    // SAFETY: move_mount with two descriptors and empty C strings.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(ret).map(drop)
}

/// Whether this host can run pods in user namespaces as berth does: a user namespace made,
/// a directory of the file system under `dir` (where the image layers are) idmapped, and an
/// overlay mounted with it as a lower layer, its files owned as the mapping says. `Err` says
/// why not. Runs the mounts in a private mount namespace of a thread of its own.
pub fn probe(dir: &Path) -> std::result::Result<(), String> {
    const HOST_ID: u32 = 65536;
    let mapping = [IdMapping { container_id: 0, host_id: HOST_ID, length: 1 }];
    let ns = create(&mapping, &mapping, CloneFlags::empty())
        .map_err(|e| format!("no user namespaces: {e}"))?;
    let base = dir.join(".userns-probe");
    let _ = std::fs::remove_dir_all(&base);
    let result = probe_in(&base, &ns.user, HOST_ID);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn probe_in(base: &Path, userns: &File, host_id: u32) -> std::result::Result<(), String> {
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| base.join(d));
    for dir in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let file = lower.join("file");
    std::fs::write(&file, b"").map_err(|e| format!("creating {}: {e}", file.display()))?;
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("berth-userns-probe".into())
            .spawn_scoped(scope, || -> std::result::Result<(), String> {
                use nix::mount::{mount, umount2, MntFlags, MsFlags};
                nix::sched::unshare(CloneFlags::CLONE_NEWNS)
                    .map_err(|e| format!("a private mount namespace: {e}"))?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|e| format!("making / private: {e}"))?;
                let tree = idmapped_tree(&lower, userns.as_fd(), false, false)
                    .map_err(|e| format!("idmapping a directory of {}: {e}", lower.display()))?;
                let data = format!(
                    "lowerdir=/proc/thread-self/fd/{},upperdir={},workdir={}",
                    tree.as_raw_fd(),
                    upper.display(),
                    work.display()
                );
                mount(
                    Some("overlay"),
                    &merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data.as_str()),
                )
                .map_err(|e| format!("an overlay on an idmapped lower layer: {e}"))?;
                let owner = nix::sys::stat::stat(&merged.join("file")).map(|st| st.st_uid);
                let _ = umount2(&merged, MntFlags::MNT_DETACH);
                match owner {
                    Ok(uid) if uid == host_id => Ok(()),
                    Ok(uid) => Err(format!(
                        "an idmapped overlay layer shows uid {uid} where {host_id} was expected"
                    )),
                    Err(e) => Err(format!("reading through an idmapped overlay layer: {e}")),
                }
            })
            .map_err(|e| format!("starting a probe thread: {e}"))?;
        thread.join().unwrap_or_else(|_| Err("the probe thread panicked".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::os::unix::fs::MetadataExt;

    fn m(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping { container_id, host_id, length }
    }

    #[test]
    fn translation_both_ways() {
        let map = m(0, 100_000, 65536);
        assert_eq!(map.to_host(0), Some(100_000));
        assert_eq!(map.to_host(65535), Some(165_535));
        assert_eq!(map.to_host(65536), None);
        assert_eq!(map.to_container(100_001), Some(1));
        assert_eq!(map.to_container(99_999), None);
        assert_eq!(map.to_container(165_536), None);
        let shifted = m(1000, 5000, 10);
        assert_eq!(shifted.to_host(999), None);
        assert_eq!(shifted.to_host(1009), Some(5009));
        assert_eq!(m(0, u32::MAX - 1, 1).to_host(0), Some(u32::MAX - 1));
        assert_eq!(map_text(&[map, shifted]), "0 100000 65536\n1000 5000 10\n");
        let oci = LinuxIdMapping::from(&map);
        assert_eq!((oci.container_id(), oci.host_id(), oci.size()), (0, 100_000, 65536));
        assert_eq!(IdMapping::from(&oci), map);
    }

    #[test]
    fn a_pods_namespace_takes_one_sane_mapping_each() {
        let good = m(0, 65536, 65536);
        let ns = UserNamespace::new(&[good], &[m(0, 131_072, 65536)]).unwrap();
        assert_eq!(ns.root_on_host(), Some((65536, 131_072)));
        assert_eq!(ns.oci_uids().len(), 1);
        let cases: [(&[IdMapping], &[IdMapping], &str); 9] = [
            (&[], &[good], "exactly one uid mapping, not 0"),
            (&[good, m(65536, 200_000, 10)], &[good], "exactly one uid mapping, not 2"),
            (&[good], &[], "exactly one gid mapping"),
            (&[m(0, 65536, 0)], &[good], "the length is 0"),
            (&[m(0, u32::MAX - 10, 65536)], &[good], "runs past the last id"),
            (&[good], &[m(u32::MAX, 65536, 1)], "runs past the last id"),
            (&[m(0, 0, 65536)], &[good], "maps the node's root"),
            (&[m(1, 65536, 65536)], &[good], "container ID 0 is not mapped"),
            (&[good], &[m(1000, 65536, 10)], "container ID 0 is not mapped"),
        ];
        for (uids, gids, why) in cases {
            let err = UserNamespace::new(uids, gids).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn mount_mapping_lists() {
        check_mappings(&[m(0, 1000, 10), m(10, 2000, 10)], "mount").unwrap();
        for (list, why) in [
            (vec![], "0 mappings"),
            (vec![m(0, 1000, 10), m(5, 5000, 1)], "overlaps"),
            (vec![m(0, 1000, 10), m(100, 1009, 1)], "overlaps"),
            (vec![m(0, 1000, 0)], "length is 0"),
            (vec![m(0, 1000, 1); MAX_MAPPINGS + 1], "mappings (1 to 340"),
        ] {
            let err = check_mappings(&list, "mount /data").unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
            assert!(err.to_string().contains("mount /data"), "{err}");
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn ino(path: impl AsRef<Path>) -> u64 {
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn created_with_its_mappings_and_the_namespaces_it_owns() {
        if !is_root() {
            return;
        }
        let (uids, gids) = ([m(0, 300_000, 65536)], [m(0, 400_000, 1000)]);
        let owned = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
        // From a multi-threaded test process, as berthd calls it.
        let made = create(&uids, &gids, owned).unwrap();
        assert_ne!(made.user.metadata().unwrap().ino(), ino("/proc/self/ns/user"));
        let kinds: Vec<CloneFlags> = made.owned.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [CloneFlags::CLONE_NEWNET, CloneFlags::CLONE_NEWUTS]);
        // NS_GET_USERNS: the user namespace that owns a namespace.
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        for (_, file) in &made.owned {
            // SAFETY: an ioctl without arguments on an open nsfs file.
            let owner = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_USERNS) };
            assert!(owner >= 0, "{}", Errno::last());
            // SAFETY: the kernel returned a new descriptor.
            let owner = unsafe { File::from_raw_fd(owner) };
            assert_eq!(owner.metadata().unwrap().ino(), made.user.metadata().unwrap().ino());
        }
        // The mappings, as a process in the namespace shows them.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = nix::sched::setns(&made.user, CloneFlags::CLONE_NEWUSER).is_ok()
                && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|t| {
                    t.split_whitespace().collect::<Vec<_>>() == ["0", "300000", "65536"]
                })
                && std::fs::read_to_string("/proc/self/gid_map").is_ok_and(|t| {
                    t.split_whitespace().collect::<Vec<_>>() == ["0", "400000", "1000"]
                });
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        let status = waitpid(Pid::from_raw(pid), None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(Pid::from_raw(pid), 0));
    }

    /// Helpers forked at the same time hold copies of each other's pipes: none may wait on
    /// another's.
    #[test]
    fn created_from_many_threads_at_once() {
        if !is_root() {
            return;
        }
        std::thread::scope(|scope| {
            for n in 0..8u32 {
                scope.spawn(move || {
                    let range = [m(0, 1_000_000 + n * 65536, 65536)];
                    for _ in 0..5 {
                        let made = create(&range, &range, CloneFlags::CLONE_NEWNET).unwrap();
                        assert_eq!(made.owned.len(), 1);
                    }
                });
            }
        });
    }

    #[test]
    fn mappings_the_kernel_refuses_are_invalid() {
        if !is_root() {
            return;
        }
        let overlapping = [m(0, 300_000, 10), m(5, 400_000, 10)];
        let err = create(&overlapping, &[m(0, 300_000, 10)], CloneFlags::empty()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("uid_map"), "{err}");
    }

    #[test]
    fn this_host_can_idmap_overlay_layers() {
        if !is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path()).unwrap();
        assert!(!dir.path().join(".userns-probe").exists());
    }
}
