//! The pod's PID namespace and its pid 1, the pod init: a process that does nothing but live
//! as long as the monitor and reap the orphans the kernel gives it (containerd's pause
//! container has the same place).
//!
//! The monitor itself stays in the node's PID namespace. Any process of the pod's namespace is
//! within reach of a container holding CAP_SYS_PTRACE over the node (privileged, or granted it),
//! non-dumpable or not: through `/proc/<pid>/root` it would walk the node's filesystem, as it
//! did through the monitor when that was pid 1. The pod init has none to give: before the
//! namespace is made, its helper moves into a mount namespace of its own whose root is an empty
//! read-only tmpfs (a `pivot_root`, the node's root detached: a `chroot` would leave
//! `/proc/1/root/..` leading out), and it execs nothing, holds no descriptor but one pipe, and
//! has no environment (berthd starts the monitor with none).
//!
//! Containers are put into the namespace by path (`/proc/<pod init>/ns/pid`): the embedded
//! executor clones each one as the monitor's own child there, and runc or crun, started by the
//! monitor in the node's namespace, leave it to the monitor (their subreaper) when they exit.
//! The kernel hands an orphan to the nearest subreaper of its parent's namespace level, so
//! those stay the monitor's to reap; only what the containers' own processes leave goes to the
//! pod init.
//!
//! A pod with a user namespace of its own has the PID namespace owned by it: an OCI runtime
//! enters a container's user namespace before its other namespaces, and may then join only a
//! PID namespace that user namespace owns (runc and crun both do so). A PID namespace is owned
//! by the user namespace of the process that creates it, so the helper enters the pod's user
//! namespace first.
//!
//! The pod init reads a pipe whose only writer is the monitor (close-on-exec, so no runtime or
//! container keeps it): when the monitor is gone, for any reason, the read ends, the pod init
//! exits and the kernel kills everything left in the namespace.
//!
//! Everything here runs in the monitor's first process, single-threaded, before it forks the
//! monitor proper: plain system calls, and forks of a process that holds no lock.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;

/// The pod init, started: the pipe's write end, which the monitor must hold for its whole
/// life, and its pid in the monitor's (the node's) PID namespace.
pub(super) struct PodInit {
    pub(super) life: OwnedFd,
    pub(super) pid: i32,
}

/// Creates the pod's PID namespace, inside the user namespace held at `user_ns` when there is
/// one, with the pod init as its pid 1.
pub(super) fn start(user_ns: Option<&Path>) -> Result<PodInit, String> {
    let user = user_ns
        .map(|path| File::open(path).map_err(|e| format!("opening {}: {e}", path.display())))
        .transpose()?;
    let (life_read, life_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (pid_read, pid_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: this process is single-threaded (see the module doc).
    let helper = unsafe { libc::fork() };
    if helper == -1 {
        return Err(format!("forking the pod init's helper: {}", Errno::last()));
    }
    if helper == 0 {
        let user = user.as_ref().map(|u| u.as_raw_fd());
        helper_main(user, life_read.as_raw_fd(), pid_write.as_raw_fd())
    }
    drop((life_read, pid_write, user));
    let mut status = 0;
    // SAFETY: waitpid on our own child with a local status word.
    while unsafe { libc::waitpid(helper, &mut status, 0) } == -1 && Errno::last() == Errno::EINTR {}
    let mut bytes = [0u8; 5];
    let read = nix::unistd::read(&pid_read, &mut bytes).unwrap_or(0);
    match (read, bytes[0]) {
        (5, b'P') => {}
        (5, step) => {
            let errno =
                Errno::from_raw(i32::from_ne_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]));
            let what = match step {
                b'm' => "making the pod init's empty root",
                b'u' => "entering the pod's user namespace",
                b'p' => "creating a PID namespace",
                _ => "forking the pod init",
            };
            return Err(format!("{what}: {errno}"));
        }
        _ => return Err(format!("the pod init's helper failed (status {status:#x})")),
    }
    let pid = i32::from_ne_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok(PodInit { life: life_write, pid })
}

/// The helper: into an empty root, into the user namespace as its root (if any), a new PID
/// namespace, the pod init forked into it; its pid (or the failed step and errno) written to
/// `report`, then gone.
fn helper_main(user: Option<RawFd>, life: RawFd, report: RawFd) -> ! {
    let fail = |step: u8| -> ! {
        let errno = Errno::last_raw();
        let mut msg = [step, 0, 0, 0, 0];
        msg[1..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: a write of a local buffer, then _exit.
        unsafe {
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(1)
        }
    };
    // SAFETY: plain system calls on descriptors this process owns.
    unsafe {
        // Still in the node's user namespace, so that the mount namespace is the node's root's
        // and the node's mounts in it are not locked: the old root can be detached whole.
        if empty_root().is_err() {
            fail(b'm')
        }
        if let Some(user) = user {
            if libc::setns(user, libc::CLONE_NEWUSER) != 0 {
                fail(b'u')
            }
            // The pod's root (its id 0 is always mapped), so that what the namespace is born
            // with is the pod's. The capabilities over the pod's namespaces stay either way.
            libc::setresgid(0, 0, 0);
            libc::setresuid(0, 0, 0);
        }
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            fail(b'p')
        }
        let init = libc::fork();
        if init == -1 {
            fail(b'f')
        }
        if init == 0 {
            init_main(life)
        }
        let mut msg = [b'P', 0, 0, 0, 0];
        msg[1..].copy_from_slice(&init.to_ne_bytes());
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(0)
    }
}

/// A mount namespace of this process's own whose root is an empty read-only tmpfs, the old root
/// detached: nothing of the node is left to reach through this process's `/proc/<pid>/root`
/// or `/proc/<pid>/cwd`, and no `..` leads out of it.
fn empty_root() -> Result<(), Errno> {
    let check = |result: libc::c_int| match result {
        0 => Ok(()),
        _ => Err(Errno::last()),
    };
    let none = std::ptr::null::<libc::c_char>();
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: plain system calls with C strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        // Private, so that nothing done here reaches the node's mount namespace.
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            none.cast(),
        ))?;
        // `/proc` always exists where the monitor runs; what it covers here is never seen.
        check(libc::mount(
            c"tmpfs".as_ptr(),
            c"/proc".as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            c"size=4k,nr_inodes=2,mode=0555".as_ptr().cast(),
        ))?;
        check(libc::chdir(c"/proc".as_ptr()))?;
        // The old root is stacked under the new one and detached: no directory needed for it.
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REMOUNT | libc::MS_RDONLY | flags,
            none.cast(),
        ))?;
    }
    Ok(())
}

/// The pod init: pid 1 of the pod's PID namespace until the monitor is gone.
fn init_main(life: RawFd) -> ! {
    // SAFETY: plain system calls on this process's own descriptors and local buffers.
    unsafe {
        // Nothing of the monitor's stays open here but the pipe: not berthd's stdout, not the
        // pod's state.
        for fd in 0..1024 {
            if fd != life {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"berth-pod-init".as_ptr(), 0, 0, 0);
        // Orphans of the containers' processes come here: ignoring SIGCHLD has the kernel reap
        // them at once, as a waitpid loop would, and none ever lingers as a zombie.
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
        let life = OwnedFd::from_raw_fd(life);
        let mut byte = [0u8; 1];
        loop {
            match nix::unistd::read(&life, &mut byte) {
                Err(Errno::EINTR) | Ok(1..) => continue,
                _ => libc::_exit(0),
            }
        }
    }
}
