//! /dev inside the container: device nodes made with mknod (the defaults and the spec's), the
//! usual symlinks, and /dev/console for a terminal. Runs before pivot_root, with the umask at 0
//! so that modes are the spec's.

use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::child::{Failure, Step};
use super::mounts::{fd_path, open_in_root, Create};
use super::plan::DevicePlan;

pub(super) fn create(root: BorrowedFd, devices: &[DevicePlan]) -> Step<()> {
    for device in devices {
        let fail = |e: Errno| {
            Failure::internal_errno(format!("creating device /{}", device.target.display()), e)
        };
        let parent = device.target.parent().unwrap_or(Path::new(""));
        let Some(name) = device.target.file_name() else { continue };
        let (dir, _) = open_in_root(root, parent, Some(Create::Dir)).map_err(fail)?;
        let mode = Mode::from_bits_truncate(device.mode);
        let mut made = nix::sys::stat::mknodat(&dir, name, device.kind, mode, device.dev);
        if made == Err(Errno::EEXIST) {
            // Whatever the image has there (a node, a symlink) is replaced by the spec's.
            nix::unistd::unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(fail)?;
            made = nix::sys::stat::mknodat(&dir, name, device.kind, mode, device.dev);
        }
        made.map_err(fail)?;
        nix::unistd::fchownat(
            &dir,
            name,
            Some(Uid::from_raw(device.uid)),
            Some(Gid::from_raw(device.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(fail)?;
    }
    Ok(())
}

pub(super) fn symlinks(root: BorrowedFd) -> Step<()> {
    let fail = |e: Errno| Failure::internal_errno("creating the /dev symlinks", e);
    let (dev, _) = open_in_root(root, Path::new("dev"), Some(Create::Dir)).map_err(fail)?;
    let mut links = vec![
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("core", "/proc/kcore"));
    }
    for (name, target) in links {
        match nix::unistd::symlinkat(target, &dev, name) {
            Ok(()) => {}
            // An image's /dev/ptmx would be the host's multiplexer, not this devpts's.
            Err(Errno::EEXIST) if name == "ptmx" => {
                if nix::unistd::unlinkat(&dev, name, UnlinkatFlags::NoRemoveDir).is_ok() {
                    nix::unistd::symlinkat(target, &dev, name).map_err(fail)?;
                }
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

/// Binds the terminal (the process's stdin, already the pty slave) onto /dev/console.
///
/// By its path, not through /proc/self/fd/0: the descriptor was opened in the monitor's mount
/// namespace, and bind mounts only take sources from the caller's own; the path names the
/// same pty in this namespace's copy of the host's /dev/pts.
pub(super) fn console(root: BorrowedFd) -> Step<()> {
    let fail = |e: Errno| Failure::internal_errno("mounting /dev/console", e);
    let pty = nix::fcntl::readlink("/proc/self/fd/0").map_err(fail)?;
    let (target, _) =
        open_in_root(root, Path::new("dev/console"), Some(Create::File)).map_err(fail)?;
    mount(
        Some(pty.as_os_str()),
        fd_path(&target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(fail)
}
