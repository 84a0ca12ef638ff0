//! What runs in the cloned (container init) or forked (exec) child, up to execve.
//!
//! The child is a copy of a single-threaded monitor, so it may allocate and use std freely; it
//! never returns into the caller's code: it either execs or `_exit`s. A failure is sent to the
//! parent as one line over the sync socket (`user <msg>` when the spec is at fault, `internal
//! <msg>` otherwise); readiness as `ready <host pid>`.

use std::ffi::{CStr, CString};
use std::fmt::Display;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;

use super::capabilities;
use super::mounts;
use super::plan::{ContainerPlan, ProcessPlan};
use super::CgroupMount;

/// Why the child stopped before exec.
#[derive(Debug)]
pub(super) struct Failure {
    /// The spec or the image is at fault (a missing executable, a bad mount source, a bad
    /// working directory), as opposed to the node.
    pub user: bool,
    pub msg: String,
    /// Set when the executable could not be found or run: the exit status a shell would give
    /// (127 not found, 126 not executable). An exec reports these on its stderr, as output.
    pub status: Option<i32>,
}

pub(super) type Step<T> = std::result::Result<T, Failure>;

/// An errno as the kernel's text, lower-cased like Go's (and so runc's) messages.
pub(super) fn describe(errno: Errno) -> String {
    let desc = errno.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => desc.to_string(),
    }
}

pub(super) fn errno_of(err: &io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

impl Failure {
    pub fn internal(msg: impl Into<String>) -> Self {
        Failure { user: false, msg: msg.into(), status: None }
    }
    pub fn user(msg: impl Into<String>) -> Self {
        Failure { user: true, msg: msg.into(), status: None }
    }
    pub fn internal_errno(what: impl Display, errno: Errno) -> Self {
        Self::internal(format!("{what}: {}", describe(errno)))
    }
    pub fn user_errno(what: impl Display, errno: Errno) -> Self {
        Self::user(format!("{what}: {}", describe(errno)))
    }
}

/// The container init's view of what the parent set up for it.
pub(super) struct CreateContext<'a> {
    pub plan: &'a ContainerPlan,
    pub cgroup_procs: &'a [PathBuf],
    pub cgroup_mount: &'a CgroupMount,
    pub sock: RawFd,
    pub stdio: [RawFd; 3],
    /// Namespaces to join, opened by the parent.
    pub join_ns: Vec<(CloneFlags, RawFd)>,
    /// The user namespace entered once the root is built.
    pub userns: Option<RawFd>,
    /// Idmapped trees the parent made, which the plan names by these numbers.
    pub trees: Vec<RawFd>,
}

/// An exec's view of what the parent set up for it.
pub(super) struct ExecContext<'a> {
    pub process: &'a ProcessPlan,
    pub cgroup_procs: &'a [PathBuf],
    pub sock: RawFd,
    pub stdio: [RawFd; 3],
    /// The container's namespaces in the order they are joined, mount last.
    pub join_ns: Vec<(CloneFlags, RawFd)>,
    /// The container's user namespace, when it is not the caller's: joined after the others.
    pub userns: Option<RawFd>,
}

/// The container's init: sets everything up, reports ready, waits for the start byte, execs.
pub(super) fn create_main(ctx: &CreateContext) -> ! {
    let (exe, host_pid) = match prepare_container(ctx) {
        Ok(ready) => ready,
        Err(failure) => {
            report(ctx.sock, &failure);
            exit(1)
        }
    };
    send(ctx.sock, format!("ready {host_pid}").as_bytes());
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reads into a local buffer of the given length.
        let n = unsafe { libc::recv(ctx.sock, byte.as_mut_ptr().cast(), 1, 0) };
        match n {
            1 => break,
            -1 if Errno::last() == Errno::EINTR => continue,
            // The parent dropped the container without starting it.
            _ => exit(0),
        }
    }
    if let Err(failure) = confine(&ctx.plan.process) {
        report(ctx.sock, &failure);
        exit(1)
    }
    let errno = execve(&exe, &ctx.plan.process);
    report(ctx.sock, &Failure::user_errno(format!("exec {}", exe.to_string_lossy()), errno));
    exit(127)
}

fn prepare_container(ctx: &CreateContext) -> Step<(CString, u32)> {
    let plan = ctx.plan;
    undumpable()?;
    reset_signals();
    let mut keep = vec![ctx.sock];
    keep.extend_from_slice(&ctx.stdio);
    keep.extend(ctx.join_ns.iter().map(|(_, fd)| *fd));
    keep.extend(ctx.userns);
    keep.extend(&ctx.trees);
    close_other_fds(&keep);
    // Modes of what is created below are exact; the process's own umask is set before exec.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());

    join_cgroups(ctx.cgroup_procs)?;
    if plan.new_cgroup_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| Failure::internal_errno("creating the cgroup namespace", e))?;
    }
    // /proc is still the host's here, so this is the pid the host sees.
    let host_pid = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        .ok_or_else(|| Failure::internal("reading the host pid from /proc/self"))?;
    setup_stdio(ctx.stdio, plan.process.terminal)?;
    join_namespaces(&ctx.join_ns)?;
    if let Some(name) = &plan.hostname {
        // SAFETY: the pointer and length describe a live C string.
        let ret = unsafe { libc::sethostname(name.as_ptr(), name.as_bytes().len()) };
        if ret == -1 {
            return Err(Failure::internal_errno("setting the hostname", Errno::last()));
        }
    }
    if let Some(name) = &plan.domainname {
        // SAFETY: as above.
        let ret = unsafe { libc::setdomainname(name.as_ptr(), name.as_bytes().len()) };
        if ret == -1 {
            return Err(Failure::internal_errno("setting the domain name", Errno::last()));
        }
    }
    mounts::setup_rootfs(plan, ctx.cgroup_mount)?;
    if let Some(adj) = plan.process.oom_score_adj {
        write_oom_score_adj(adj)?;
    }
    if let Some(userns) = ctx.userns {
        enter_user_namespace(userns)?;
        // A mount namespace of the user namespace's own: copied into it, every mount made so
        // far is locked (see the executor's module doc).
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| {
            Failure::internal_errno("creating a mount namespace in the user namespace", e)
        })?;
    }
    let exe = become_process(&plan.process)?;
    mark_fds_cloexec();
    Ok((exe, host_pid))
}

/// An exec: joins the container, becomes its process, execs. Failures to find or run the
/// executable go to the process's stderr with a shell's exit status, as an exec's output.
pub(super) fn exec_main(ctx: &ExecContext) -> ! {
    match prepare_exec(ctx) {
        Ok(exe) => {
            mark_fds_cloexec();
            if let Err(failure) = confine(ctx.process) {
                report(ctx.sock, &failure);
                exit(127)
            }
            let errno = execve(&exe, ctx.process);
            let status = if errno == Errno::ENOENT { 127 } else { 126 };
            to_stderr(&format!("exec {}: {}", exe.to_string_lossy(), describe(errno)));
            exit(status)
        }
        Err(Failure { status: Some(status), msg, .. }) => {
            to_stderr(&msg);
            exit(status)
        }
        Err(failure) => {
            report(ctx.sock, &failure);
            exit(127)
        }
    }
}

fn prepare_exec(ctx: &ExecContext) -> Step<CString> {
    undumpable()?;
    reset_signals();
    let mut keep = vec![ctx.sock];
    keep.extend_from_slice(&ctx.stdio);
    keep.extend(ctx.join_ns.iter().map(|(_, fd)| *fd));
    keep.extend(ctx.userns);
    close_other_fds(&keep);
    join_cgroups(ctx.cgroup_procs)?;
    setup_stdio(ctx.stdio, ctx.process.terminal)?;
    // Joining the mount namespace (last) also moves root and cwd to the container's root.
    join_namespaces(&ctx.join_ns)?;
    if let Some(adj) = ctx.process.oom_score_adj {
        write_oom_score_adj(adj)?;
    }
    if let Some(userns) = ctx.userns {
        enter_user_namespace(userns)?;
    }
    become_process(ctx.process)
}

/// The steps both an init and an exec take once they are in the container: limits, user,
/// capabilities, umask, working directory, and the executable, looked up with the final
/// credentials so that what is found is what execve will accept.
fn become_process(process: &ProcessPlan) -> Step<CString> {
    for limit in &process.rlimits {
        let value = libc::rlimit { rlim_cur: limit.soft, rlim_max: limit.hard };
        // SAFETY: passes a local struct.
        if unsafe { libc::setrlimit(limit.resource, &value) } == -1 {
            return Err(Failure::internal_errno(
                format!("setting rlimit {}", limit.resource),
                Errno::last(),
            ));
        }
    }
    // While still root: AppArmor and SELinux check who may set these.
    if let Some(profile) = &process.apparmor {
        write_exec_attr(
            &["/proc/thread-self/attr/apparmor/exec", "/proc/self/attr/exec"],
            profile,
        )?;
    }
    if let Some(label) = &process.selinux {
        write_exec_attr(&["/proc/thread-self/attr/exec", "/proc/self/attr/exec"], label)?;
    }
    capabilities::become_user(process)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(process.umask));
    nix::unistd::chdir(&process.cwd).map_err(|e| {
        Failure::user_errno(
            format!("changing to the working directory {}", process.cwd.display()),
            e,
        )
    })?;
    find_executable(&process.command, &process.search_path)
}

/// Writes an LSM exec attribute (the profile or label the next execve takes on) to the first
/// of `paths` that exists: the per-LSM file of a kernel with stacked LSMs, else the shared one.
fn write_exec_attr(paths: &[&str], value: &CStr) -> Step<()> {
    let mut last = Errno::ENOENT;
    for path in paths {
        match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(mut file) => {
                use std::io::Write;
                return file.write_all(value.to_bytes()).map_err(|e| {
                    Failure::user_errno(
                        format!("setting {} to {:?}", path, value.to_string_lossy()),
                        errno_of(&e),
                    )
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => last = Errno::ENOENT,
            Err(e) => last = errno_of(&e),
        }
    }
    Err(Failure::internal_errno(format!("opening {}", paths.join(" or ")), last))
}

/// The last step before execve: the seccomp filter, so that nothing of the executor but
/// execve runs under it (see `capabilities` for the `CAP_SYS_ADMIN` it may take).
fn confine(process: &ProcessPlan) -> Step<()> {
    if let Some(filters) = &process.seccomp {
        filters.install().map_err(|e| Failure::internal_errno("loading the seccomp filter", e))?;
    }
    Ok(())
}

/// Finds the executable as a shell (or Go's exec.LookPath) does: a name with a `/` is taken as
/// it is, anything else is searched in `PATH`, an empty entry meaning the working directory.
fn find_executable(command: &str, search_path: &str) -> Step<CString> {
    let not_executable = |path: &Path, errno: Errno| Failure {
        user: true,
        msg: format!("exec {:?}: {}: {}", command, path.display(), describe(errno)),
        status: Some(if errno == Errno::ENOENT { 127 } else { 126 }),
    };
    if command.contains('/') {
        let path = Path::new(command);
        return match check_executable(path) {
            Ok(()) => Ok(path_cstring(path)),
            Err(errno) => Err(not_executable(path, errno)),
        };
    }
    let mut denied = None;
    for dir in search_path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(command);
        match check_executable(&candidate) {
            Ok(()) => return Ok(path_cstring(&candidate)),
            Err(Errno::EACCES) => denied = denied.or(Some(candidate)),
            Err(_) => {}
        }
    }
    if let Some(path) = denied {
        return Err(not_executable(&path, Errno::EACCES));
    }
    Err(Failure {
        user: true,
        msg: format!("executable file not found in $PATH: {command:?}"),
        status: Some(127),
    })
}

fn check_executable(path: &Path) -> Result<(), Errno> {
    let st = nix::sys::stat::stat(path)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Errno::EACCES);
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
}

fn path_cstring(path: &Path) -> CString {
    // The plan's strings were checked for NUL bytes, and so were the PATH entries in them.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// Returns only on failure, with its errno.
fn execve(exe: &CStr, process: &ProcessPlan) -> Errno {
    let mut argv: Vec<*const libc::c_char> = process.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = process.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated and point into strings that outlive the call.
    unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// Until its execve the child is a copy of the monitor (its memory, its executable, its
/// environment), and it soon lives in the container's PID namespace, root and, once the
/// capabilities are dropped, with no more privilege than the container's own processes: were
/// it dumpable, those could open its /proc/<pid>/mem, exe, environ or fd/*, or ptrace it
/// before its seccomp filter is in place. Non-dumpable, only CAP_SYS_PTRACE reaches it. The monitor is so
/// already (and this inherits it), but the executor must not depend on its caller. execve
/// makes the container's program dumpable again, as any program.
fn undumpable() -> Step<()> {
    // SAFETY: plain prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == -1 {
        return Err(Failure::internal_errno("making the process non-dumpable", Errno::last()));
    }
    Ok(())
}

/// The monitor may have handlers, ignored signals and a blocked mask of its own; a container
/// process starts with none of them (ignored signals and the mask would survive execve).
fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; signals glibc reserves fail harmlessly.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty set, passed by pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn close_range(first: u32, last: u32, flags: libc::c_uint) {
    if first <= last {
        // SAFETY: close_range only closes or flags descriptors.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    }
}

/// Closes every descriptor from 3 up except `keep`: the child is a copy of a monitor that
/// holds other containers' pipes and sync sockets, which must not stay open in this one.
fn close_other_fds(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter_map(|fd| u32::try_from(*fd).ok()).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 3u32;
    for fd in keep.into_iter().filter(|fd| *fd >= 3) {
        if fd > next {
            close_range(next, fd - 1, 0);
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX, 0);
}

/// Everything but stdio closes at execve, the sync socket included: its EOF tells the parent
/// the exec happened.
fn mark_fds_cloexec() {
    close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
}

fn join_cgroups(procs: &[PathBuf]) -> Step<()> {
    for path in procs {
        std::fs::write(path, b"0").map_err(|e| {
            Failure::internal_errno(format!("joining cgroup {}", path.display()), errno_of(&e))
        })?;
    }
    Ok(())
}

fn setup_stdio(stdio: [RawFd; 3], terminal: bool) -> Step<()> {
    nix::unistd::setsid().map_err(|e| Failure::internal_errno("setsid", e))?;
    // Copies above 2 first, so that a source that is itself 0, 1 or 2 is not overwritten by
    // an earlier dup2.
    let mut copies = [0; 3];
    for (copy, fd) in copies.iter_mut().zip(stdio) {
        // SAFETY: fcntl on a descriptor number; failure is checked.
        *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if *copy == -1 {
            return Err(Failure::internal_errno("duplicating stdio", Errno::last()));
        }
    }
    for (target, copy) in copies.into_iter().enumerate() {
        // SAFETY: dup2 and close on descriptor numbers this process owns.
        unsafe {
            if libc::dup2(copy, target as RawFd) == -1 {
                return Err(Failure::internal_errno("setting up stdio", Errno::last()));
            }
            libc::close(copy);
        }
    }
    if terminal {
        // SAFETY: ioctl without a pointer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } == -1 {
            return Err(Failure::internal_errno("setting the controlling terminal", Errno::last()));
        }
    }
    Ok(())
}

fn ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        f if f == CloneFlags::CLONE_NEWNET => "network",
        f if f == CloneFlags::CLONE_NEWIPC => "IPC",
        f if f == CloneFlags::CLONE_NEWUTS => "UTS",
        f if f == CloneFlags::CLONE_NEWCGROUP => "cgroup",
        f if f == CloneFlags::CLONE_NEWNS => "mount",
        f if f == CloneFlags::CLONE_NEWPID => "PID",
        f if f == CloneFlags::CLONE_NEWUSER => "user",
        _ => "other",
    }
}

fn join_namespaces(join: &[(CloneFlags, RawFd)]) -> Step<()> {
    for (flag, fd) in join {
        // SAFETY: the parent opened the descriptor and it was kept open for this child.
        let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
        nix::sched::setns(fd, *flag).map_err(|e| {
            Failure::internal_errno(format!("joining the {} namespace", ns_name(*flag)), e)
        })?;
    }
    Ok(())
}

/// Enters the pod's user namespace, with every capability there and none outside: after the
/// work that needs the node's root (mounts, a lower oom_score_adj), before the switch to the
/// process's user, whose ids are the namespace's.
fn enter_user_namespace(fd: RawFd) -> Step<()> {
    // SAFETY: the parent opened the descriptor and it was kept open for this child.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER)
        .map_err(|e| Failure::internal_errno("joining the pod's user namespace", e))
}

fn write_oom_score_adj(adj: i32) -> Step<()> {
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .map_err(|e| Failure::internal_errno("writing oom_score_adj", errno_of(&e)))
}

fn send(sock: RawFd, msg: &[u8]) {
    // SAFETY: sends from a live buffer; MSG_NOSIGNAL so a gone parent cannot kill us by SIGPIPE.
    unsafe { libc::send(sock, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
}

fn report(sock: RawFd, failure: &Failure) {
    let kind = if failure.user { "user" } else { "internal" };
    let mut msg = format!("{kind} {}", failure.msg);
    msg.truncate(super::MAX_MESSAGE);
    send(sock, msg.as_bytes());
}

fn to_stderr(msg: &str) {
    let line = format!("berth: {msg}\n");
    // SAFETY: writes from a live buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

fn exit(status: i32) -> ! {
    // SAFETY: _exit skips the atexit handlers and buffers that belong to the parent's copy.
    unsafe { libc::_exit(status) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_is_lower_case() {
        assert_eq!(describe(Errno::ENOENT), "no such file or directory");
    }

    #[test]
    fn lookup_reports_missing_and_finds_in_path() {
        let err = find_executable("surely-not-a-command", "/nonexistent:/also-not").unwrap_err();
        assert!(err.user);
        assert_eq!(err.status, Some(127));
        assert!(err.msg.contains("executable file not found in $PATH"), "{}", err.msg);
        let found = find_executable("sh", "/nonexistent:/bin").unwrap();
        assert_eq!(found.to_str().unwrap(), "/bin/sh");
        let err = find_executable("/etc/passwd", "").unwrap_err();
        assert_eq!(err.status, Some(126));
    }
}
