//! The PID namespace of a pod with a user namespace of its own, owned by that user namespace.
//!
//! An OCI runtime enters a container's user namespace before its other namespaces, and may then
//! join only a PID namespace that user namespace owns (runc and crun both do so): one the
//! monitor made with `unshare` would be the node's user namespace's. A PID namespace is owned
//! by the user namespace of the process that creates it, so a short-lived helper enters the
//! pod's user namespace and creates it, and its child becomes the namespace's pid 1: a process
//! that does nothing but live as long as the monitor (containerd's pause container has the same
//! place). The monitor, which stays in the node's user namespace with its privileges, joins the
//! namespace and is forked into it, so that it is still the subreaper of everything the pod
//! runs there and sees their exits, while its pod init holds no capability over the node.
//!
//! The pod init reads a pipe whose only writer is the monitor (close-on-exec, so no runtime or
//! container keeps it): when the monitor is gone, for any reason, the read ends, the pod init
//! exits and the kernel kills everything left in the namespace, as it did when the monitor
//! itself was pid 1.
//!
//! Everything here runs in the monitor's first process, single-threaded, before it forks the
//! monitor proper: plain system calls, and forks of a process that holds no lock.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;

/// Creates the pod's PID namespace inside the user namespace held at `user_ns` and makes it the
/// one this process's children are born in. Returns the pipe's write end, which the monitor
/// must hold for its whole life.
pub(super) fn enter(user_ns: &Path) -> Result<OwnedFd, String> {
    let user = File::open(user_ns).map_err(|e| format!("opening {}: {e}", user_ns.display()))?;
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
        helper_main(user.as_raw_fd(), life_read.as_raw_fd(), pid_write.as_raw_fd())
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
                b'u' => "entering the pod's user namespace",
                b'p' => "creating a PID namespace",
                _ => "forking the pod init",
            };
            return Err(format!("{what}: {errno}"));
        }
        _ => return Err(format!("the pod init's helper failed (status {status:#x})")),
    }
    let init = i32::from_ne_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let path = format!("/proc/{init}/ns/pid");
    let pid_ns = File::open(&path).map_err(|e| format!("opening {path}: {e}"))?;
    nix::sched::setns(&pid_ns, nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("joining the pod's PID namespace: {e}"))?;
    Ok(life_write)
}

/// The helper: into the user namespace as its root, a new PID namespace, the pod init forked
/// into it; its pid (or the failed step and errno) written to `report`, then gone.
fn helper_main(user: RawFd, life: RawFd, report: RawFd) -> ! {
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
        if libc::setns(user, libc::CLONE_NEWUSER) != 0 {
            fail(b'u')
        }
        // The pod's root (its id 0 is always mapped), so that what the namespace is born with
        // is the pod's. The capabilities over the pod's namespaces stay either way.
        libc::setresgid(0, 0, 0);
        libc::setresuid(0, 0, 0);
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

/// The pod init: pid 1 of the pod's PID namespace until the monitor is gone.
fn init_main(life: RawFd) -> ! {
    // SAFETY: plain system calls on this process's own descriptors and local buffers.
    unsafe {
        // Nothing of the monitor's stays open here but the pipe: not berthd's stdout, not the
        // pod's state. The namespace's other processes cannot reach it either (no ptrace).
        for fd in 0..1024 {
            if fd != life {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"berth-pod-init".as_ptr(), 0, 0, 0);
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
