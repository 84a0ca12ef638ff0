//! The container's root filesystem, built in the child's new mount namespace: the overlay, the
//! spec's mounts, devices, the cgroup view, pivot_root, masked and read-only paths.
//!
//! Every destination inside the root is resolved with `openat2(RESOLVE_IN_ROOT)`, one
//! component at a time, creating what is missing beside the component that exists, and the
//! mount is made onto the opened target through `/proc/self/fd/N`. A symlink in the image is
//! followed as the container would see it, so `/data -> /../../tmp/x` mounts on the root's
//! `tmp/x`; no path string is ever handed to mount(2) that the image could redirect.
//!
//! Propagation: `/` is first made `rslave` (or what the spec asks), so that nothing mounted
//! here reaches the host. When the spec asks for a shared root (bidirectional mounts), `/`
//! and the mount holding the root directory are made private first: pivot_root refuses
//! shared parents, and the overlay must not propagate back to the host through them; the
//! shared propagation is applied to the new root once it is in place.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::child::{describe, Failure, Step};
use super::devices;
use super::plan::{ContainerPlan, MountKind, MountPlan};
use super::CgroupMount;
use crate::userns::{MountAttr, MOUNT_ATTR_RDONLY};

/// As many symlinks as the kernel follows in one lookup.
const MAX_SYMLINKS: usize = 40;
/// Bounds the create-and-retry loop of [`open_in_root`] against a racing rename.
const MAX_CREATES: usize = 4096;

/// What [`open_in_root`] creates when the path's last component is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Create {
    Dir,
    File,
}

/// The path through which mount(2) reaches an opened target.
pub(super) fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn open_resolved(root: BorrowedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let path = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, path, how)
}

fn push_components(todo: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    for part in parts.into_iter().rev() {
        todo.push_front(part);
    }
}

/// Opens (`O_PATH`) the path `rel` inside the directory `root` as if `root` were `/`,
/// following symlinks the way the container will, and creating missing directories (and a
/// missing last component of kind `create`) on the way. Returns the descriptor and the path
/// it was found at, relative to `root` and free of symlinks.
pub(super) fn open_in_root(
    root: BorrowedFd,
    rel: &Path,
    create: Option<Create>,
) -> Result<(OwnedFd, PathBuf), Errno> {
    let mut todo = VecDeque::new();
    push_components(&mut todo, rel);
    // Only real directories, so `..` is a plain pop.
    let mut done = PathBuf::new();
    let (mut links, mut creates) = (0, 0);
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&name);
        let last = todo.is_empty();
        let fd = match open_resolved(root, &candidate) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create.is_some() => {
                creates += 1;
                if creates > MAX_CREATES {
                    return Err(Errno::ELOOP);
                }
                let parent = open_resolved(root, &done)?;
                let made = if last && create == Some(Create::File) {
                    nix::fcntl::openat(
                        &parent,
                        name.as_os_str(),
                        OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_WRONLY
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map(drop)
                } else {
                    nix::sys::stat::mkdirat(
                        &parent,
                        name.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    )
                };
                match made {
                    // EEXIST: a dangling symlink (or a racing creator) has the name; look again.
                    Ok(()) | Err(Errno::EEXIST) => todo.push_front(name),
                    Err(e) => return Err(e),
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(&fd)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::ELOOP);
                }
                let target = PathBuf::from(nix::fcntl::readlinkat(&fd, "")?);
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                push_components(&mut todo, &target);
            }
            libc::S_IFDIR => {
                done = candidate;
                if last {
                    if create == Some(Create::File) {
                        return Err(Errno::EISDIR);
                    }
                    return Ok((fd, done));
                }
            }
            _ if !last || create == Some(Create::Dir) => return Err(Errno::ENOTDIR),
            _ => return Ok((fd, candidate)),
        }
    }
    // The path was empty, or ended in `..` or in a symlink to a directory.
    if create == Some(Create::File) {
        return Err(Errno::EISDIR);
    }
    Ok((open_resolved(root, &done)?, done))
}

fn flags_text(flags: MsFlags) -> &'static str {
    let rec = flags.contains(MsFlags::MS_REC);
    match () {
        _ if flags.contains(MsFlags::MS_SHARED) => ["shared", "rshared"][rec as usize],
        _ if flags.contains(MsFlags::MS_SLAVE) => ["slave", "rslave"][rec as usize],
        _ if flags.contains(MsFlags::MS_UNBINDABLE) => ["unbindable", "runbindable"][rec as usize],
        _ => ["private", "rprivate"][rec as usize],
    }
}

fn set_propagation(target: &str, flags: MsFlags) -> Result<(), Errno> {
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

/// The mount point of the mount that holds `path`, from /proc/self/mountinfo.
fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|field| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(field))))
        .filter(|mount_point| path.starts_with(mount_point))
        .max_by_key(|mount_point| mount_point.as_os_str().len())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Builds the root filesystem and pivots into it, then applies what is done from inside:
/// the working directory, masked paths, read-only paths, a read-only root.
pub(super) fn setup_rootfs(plan: &ContainerPlan, cgroup: &CgroupMount) -> Step<()> {
    let propagation = plan.root_propagation;
    set_propagation("/", propagation)
        .map_err(|e| Failure::internal_errno(format!("making / {}", flags_text(propagation)), e))?;
    let shared = propagation.contains(MsFlags::MS_SHARED);
    if shared {
        let parent = mount_point_of(&plan.root).unwrap_or_else(|| PathBuf::from("/"));
        for mount_point in [Path::new("/"), parent.as_path()] {
            set_propagation(&mount_point.to_string_lossy(), MsFlags::MS_PRIVATE).map_err(|e| {
                Failure::internal_errno(format!("making {} private", mount_point.display()), e)
            })?;
        }
    }

    // Relative lowerdirs keep the option string short; they are resolved from the cwd.
    nix::unistd::chdir(&plan.overlay.lower_base).map_err(|e| {
        Failure::internal_errno(format!("entering {}", plan.overlay.lower_base.display()), e)
    })?;
    mount(
        Some("overlay"),
        &plan.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(plan.overlay.data.as_c_str()),
    )
    .map_err(|e| {
        Failure::internal_errno(
            format!("mounting the root filesystem on {}", plan.root.display()),
            e,
        )
    })?;
    let root = nix::fcntl::open(
        &plan.root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::internal_errno(format!("opening {}", plan.root.display()), e))?;

    for m in &plan.mounts {
        mount_one(root.as_fd(), m, cgroup)?;
    }
    devices::create(root.as_fd(), &plan.devices)?;
    devices::symlinks(root.as_fd())?;
    if plan.process.terminal {
        devices::console(root.as_fd())?;
    }

    pivot(&root)?;
    drop(root);
    if shared {
        set_propagation("/", propagation).map_err(|e| {
            Failure::internal_errno(format!("making the root {}", flags_text(propagation)), e)
        })?;
    }
    // As runc does, a missing working directory is created (before the root may turn
    // read-only); whether the user may enter it is checked later, as that user.
    std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&plan.process.cwd).map_err(
        |e| {
            Failure::user_errno(
                format!("creating the working directory {}", plan.process.cwd.display()),
                super::child::errno_of(&e),
            )
        },
    )?;
    for path in &plan.masked {
        mask(path)?;
    }
    for path in &plan.readonly {
        make_readonly(path)?;
    }
    if plan.root_readonly {
        let flags = current_flags(Path::new("/"));
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            None::<&str>,
        )
        .map_err(|e| Failure::internal_errno("making the root read-only", e))?;
    }
    Ok(())
}

/// Flags a bind remount must keep: those of statvfs's f_flag, whose bits are the MS_ ones.
const KEPT_FLAGS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_SYNCHRONOUS)
    .union(MsFlags::MS_MANDLOCK)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME);

fn current_flags(path: &Path) -> MsFlags {
    statvfs_flags(path) & KEPT_FLAGS
}

/// The mount flags of the mount holding `path` (statvfs's f_flag bits are the MS_ ones).
fn statvfs_flags(path: &Path) -> MsFlags {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return MsFlags::empty() };
    // SAFETY: statvfs writes into the zeroed local struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == -1 {
        return MsFlags::empty();
    }
    MsFlags::from_bits_truncate(st.f_flag as libc::c_ulong)
}

/// The flags of the mount at `path` a bind's remount keeps: [`current_flags`] and read-only.
fn bind_flags(path: &Path) -> MsFlags {
    statvfs_flags(path) & (KEPT_FLAGS | MsFlags::MS_RDONLY)
}

/// The flags of a bind mount that need a remount to take effect (bind ignores them).
const REMOUNT_FLAGS: MsFlags = KEPT_FLAGS
    .union(MsFlags::MS_RDONLY)
    .union(MsFlags::MS_DIRSYNC)
    .union(MsFlags::MS_STRICTATIME)
    .union(super::plan::MS_NOSYMFOLLOW);

fn mount_one(root: BorrowedFd, m: &MountPlan, cgroup: &CgroupMount) -> Step<()> {
    let dest = m.destination.display();
    let fail = |e: Errno| Failure::internal_errno(format!("mounting {dest}"), e);
    let reopen = |rel: &Path| open_in_root(root, rel, None).map(|(fd, _)| fd).map_err(fail);
    let resolved = match &m.kind {
        MountKind::Bind { source } => {
            // SAFETY: the parent made the tree and keeps it open until this child is done.
            let tree = m
                .idmap
                .as_ref()
                .and_then(|i| i.tree)
                .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
            let st = match tree {
                Some(tree) => nix::sys::stat::fstat(tree),
                None => nix::sys::stat::stat(source.as_path()),
            };
            let st = st.map_err(|e| {
                Failure::user(format!(
                    "mounting {dest}: source {}: {}",
                    source.display(),
                    describe(e)
                ))
            })?;
            let kind = match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => Create::Dir,
                _ => Create::File,
            };
            let (target, resolved) = open_in_root(root, &m.target, Some(kind)).map_err(fail)?;
            match tree {
                // In place of the bind: the source's idmapped copy.
                Some(tree) => crate::userns::attach(tree, target.as_fd()).map_err(fail)?,
                None => {
                    let bind = m.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
                    mount(
                        Some(source.as_path()),
                        fd_path(&target).as_str(),
                        None::<&str>,
                        bind,
                        None::<&str>,
                    )
                    .map_err(fail)?
                }
            }
            // The descriptor still names the directory under the new mount; the remount must
            // reach the mount itself.
            let target = reopen(&resolved)?;
            let flags = m.flags & REMOUNT_FLAGS;
            if !flags.is_empty() {
                // A bind remount sets every one of these flags at once: without the source's
                // own (a node's nosuid or read-only mount, or those the kernel locks in a user
                // namespace) it would lift them, or fail with EPERM where they are locked.
                let kept = bind_flags(Path::new(&fd_path(&target))) & !m.cleared;
                let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | kept;
                mount(None::<&str>, fd_path(&target).as_str(), None::<&str>, remount, None::<&str>)
                    .map_err(fail)?;
            }
            if m.recursive_readonly {
                recursive_readonly(&target).map_err(fail)?;
            }
            resolved
        }
        MountKind::Fs { fstype, source } => {
            let (target, resolved) =
                open_in_root(root, &m.target, Some(Create::Dir)).map_err(fail)?;
            mount(
                Some(source.as_c_str()),
                fd_path(&target).as_str(),
                Some(fstype.as_c_str()),
                m.flags,
                m.data.as_deref(),
            )
            .map_err(fail)?;
            resolved
        }
        MountKind::Cgroup => cgroup_view(root, m, cgroup)?,
    };
    if !m.propagation.is_empty() {
        let target = reopen(&resolved)?;
        for flags in &m.propagation {
            set_propagation(&fd_path(&target), *flags).map_err(fail)?;
        }
    }
    Ok(())
}

fn recursive_readonly(target: &OwnedFd) -> Result<(), Errno> {
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: mount_setattr reads `attr` of the size passed; the path is an empty C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(ret).map(drop)
}

/// `/sys/fs/cgroup` per [`CgroupMount`]: cgroup2 itself, or a tmpfs holding a read-only bind
/// of the container's own cgroup directory of each v1 hierarchy, with the symlinks a host has
/// for co-mounted controllers (`cpu -> cpu,cpuacct`).
fn cgroup_view(root: BorrowedFd, m: &MountPlan, cgroup: &CgroupMount) -> Step<PathBuf> {
    let dest = m.destination.display();
    let fail = |e: Errno| Failure::internal_errno(format!("mounting {dest}"), e);
    let (target, resolved) = open_in_root(root, &m.target, Some(Create::Dir)).map_err(fail)?;
    let controllers = match cgroup {
        CgroupMount::V2 => {
            mount(
                Some("cgroup2"),
                fd_path(&target).as_str(),
                Some("cgroup2"),
                m.flags,
                None::<&str>,
            )
            .map_err(fail)?;
            return Ok(resolved);
        }
        CgroupMount::V1(controllers) => controllers,
    };
    let tmpfs_flags = m.flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC);
    mount(Some("tmpfs"), fd_path(&target).as_str(), Some("tmpfs"), tmpfs_flags, Some("mode=755"))
        .map_err(fail)?;
    let base = open_in_root(root, &resolved, None).map_err(fail)?.0;
    let bind_flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | (m.flags
            & (MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC));
    for (name, host_dir) in controllers {
        let fail_at = |e: Errno| {
            Failure::internal_errno(
                format!("mounting {dest}/{name} from {}", host_dir.display()),
                e,
            )
        };
        let (sub, sub_path) =
            open_in_root(root, &resolved.join(name), Some(Create::Dir)).map_err(fail_at)?;
        mount(
            Some(host_dir.as_path()),
            fd_path(&sub).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail_at)?;
        let sub = open_in_root(root, &sub_path, None).map_err(fail_at)?.0;
        mount(None::<&str>, fd_path(&sub).as_str(), None::<&str>, bind_flags, None::<&str>)
            .map_err(fail_at)?;
        if name.contains(',') {
            for alias in name.split(',').filter(|a| !a.is_empty() && *a != name) {
                match nix::unistd::symlinkat(name.as_str(), &base, alias) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(fail_at(e)),
                }
            }
        }
    }
    if m.flags.contains(MsFlags::MS_RDONLY) {
        let base = open_in_root(root, &resolved, None).map_err(fail)?.0;
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | tmpfs_flags;
        mount(None::<&str>, fd_path(&base).as_str(), None::<&str>, remount, None::<&str>)
            .map_err(fail)?;
    }
    Ok(resolved)
}

/// pivot_root with the new root as both arguments: the old root ends up stacked on the new
/// one and is detached from there, with no directory needed to hold it.
fn pivot(root: &OwnedFd) -> Step<()> {
    let fail = |what: &str, e: Errno| Failure::internal_errno(format!("pivot_root: {what}"), e);
    let old_root =
        nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| fail("opening the old root", e))?;
    nix::unistd::fchdir(root).map_err(|e| fail("entering the root", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivoting", e))?;
    // After the pivot "." is still the new root for mount(2), which does not cross the old
    // root stacked on it; the old root's own descriptor names it without doubt.
    nix::unistd::fchdir(&old_root).map_err(|e| fail("entering the old root", e))?;
    // Slave first, so that detaching the old root's mounts cannot propagate to the host's.
    set_propagation(".", MsFlags::MS_SLAVE | MsFlags::MS_REC)
        .map_err(|e| fail("making the old root rslave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detaching the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("entering /", e))
}

/// Hides a path: an empty read-only tmpfs over a directory, /dev/null over anything else. A
/// path that does not exist needs no hiding.
fn mask(path: &Path) -> Step<()> {
    let fail = |e: Errno| Failure::internal_errno(format!("masking {}", path.display()), e);
    let st = match nix::sys::stat::stat(path) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(fail(e)),
    };
    let done = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>)
    } else {
        mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    match done {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

fn make_readonly(path: &Path) -> Step<()> {
    let fail =
        |e: Errno| Failure::internal_errno(format!("making {} read-only", path.display()), e);
    match mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(fail(e)),
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | current_flags(path);
    mount(Some(path), path, None::<&str>, flags, None::<&str>).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c\0"), b"/a b\\c\\0");
    }

    #[test]
    fn open_in_root_stays_inside_and_creates() {
        let dir = tempfile::tempdir().unwrap();
        let root_dir = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root_dir.join("etc")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        symlink("/../../../outside/x", root_dir.join("data")).unwrap();
        symlink("../etc", root_dir.join("etc2")).unwrap();
        symlink("loop", root_dir.join("loop")).unwrap();
        let root =
            nix::fcntl::open(&root_dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();

        let (_, at) = open_in_root(root.as_fd(), Path::new("data/sub"), Some(Create::Dir)).unwrap();
        assert_eq!(at, PathBuf::from("outside/x/sub"));
        assert!(root_dir.join("outside/x/sub").is_dir());
        assert!(!outside.join("x").exists());

        let (_, at) =
            open_in_root(root.as_fd(), Path::new("/etc2/../etc/hosts"), Some(Create::File))
                .unwrap();
        assert_eq!(at, PathBuf::from("etc/hosts"));
        assert!(root_dir.join("etc/hosts").is_file());

        let err =
            open_in_root(root.as_fd(), Path::new("etc/hosts"), Some(Create::Dir)).unwrap_err();
        assert_eq!(err, Errno::ENOTDIR);
        let err = open_in_root(root.as_fd(), Path::new("loop/x"), Some(Create::Dir)).unwrap_err();
        assert_eq!(err, Errno::ELOOP);
        let err = open_in_root(root.as_fd(), Path::new("missing"), None).unwrap_err();
        assert_eq!(err, Errno::ENOENT);
    }
}
