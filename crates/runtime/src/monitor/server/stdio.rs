//! The containers' stdio: draining output into the log and to attachers, attachers' frames and
//! stdin, ptys for containers and stream execs, and descriptors passed to berthd.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;
use nix::unistd::pipe2;

use super::*;
use crate::monitor::log::Stream;

/// Reads what the container's pipes hold into its log; at EOF, a partial line left at the end
/// of a stream is written out as full.
pub(super) fn drain(container: &mut Container) {
    let mut buf = [0u8; READ_CHUNK];
    let log = &mut container.log;
    let attachers = &mut container.attachers;
    container.outputs.retain(|output| {
        // A bounded number of reads per turn, so that one chatty container cannot starve the
        // rest of the pod.
        for _ in 0..16 {
            match nix::unistd::read(&output.fd, &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    if let Some(log) = log.as_mut() {
                        if let Err(err) = log.flush_stream(output.stream, SystemTime::now()) {
                            crate::monitor::server::note(&format!("writing a log: {err}"));
                        }
                    }
                    return false;
                }
                Ok(n) => {
                    if let Some(log) = log.as_mut() {
                        if let Err(err) = log.write(output.stream, &buf[..n], SystemTime::now()) {
                            crate::monitor::server::note(&format!("writing a log: {err}"));
                        }
                    }
                    for attacher in attachers.iter_mut() {
                        match output.stream {
                            Stream::Stdout if attacher.stdout => {
                                attacher.queue(frame::STDOUT, &buf[..n])
                            }
                            Stream::Stderr if attacher.stderr => {
                                attacher.queue(frame::STDERR, &buf[..n])
                            }
                            _ => {}
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(_) => return true,
            }
        }
        true
    });
}

/// Reads what an attacher sent (when the container's stdin has room, or the attacher hung
/// up) and acts on its frames. A bad frame or a closed connection marks it dead.
pub(super) fn read_attacher(attacher: &mut Attacher, container: &mut Container) {
    let hangup = attacher.revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
    if attacher.dead || !(hangup || attacher.revents.contains(PollFlags::POLLIN)) {
        return;
    }
    let mut buf = [0u8; READ_CHUNK];
    for _ in 0..4 {
        if !hangup && container.stdin_pending.len() >= STDIN_PENDING_MAX {
            return;
        }
        match nix::unistd::read(&attacher.stream, &mut buf) {
            Ok(0) => {
                // berthd went away: that ends this attacher's stdin too.
                if !attacher.stdin_done {
                    attacher.stdin_done = true;
                    stdin_ended(container);
                }
                attacher.dead = true;
                return;
            }
            Ok(n) => attacher.decoder.push(&buf[..n]),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return,
            Err(_) => {
                attacher.dead = true;
                return;
            }
        }
        loop {
            match attacher.decoder.next_frame() {
                Ok(None) => break,
                Ok(Some((kind, payload))) => {
                    if let Err(message) = attacher_frame(attacher, container, kind, &payload) {
                        note(&format!("attach connection closed: {message}"));
                        attacher.dead = true;
                        return;
                    }
                }
                Err(frame::BadFrame(message)) => {
                    note(&format!("attach connection closed: {message}"));
                    attacher.dead = true;
                    return;
                }
            }
        }
    }
}

pub(super) fn attacher_frame(
    attacher: &mut Attacher,
    container: &mut Container,
    kind: u8,
    payload: &[u8],
) -> Result<(), String> {
    match kind {
        frame::STDIN | frame::STDIN_EOF if !attacher.stdin => {
            return Err("stdin from an attacher that did not ask for it".into())
        }
        frame::STDIN | frame::STDIN_EOF if attacher.stdin_done => {
            return Err("stdin after its end".into())
        }
        frame::STDIN => {
            // Once stdin_once has closed it, or after the exit, stdin goes nowhere.
            if container.stdin.is_some() && !container.stdin_closing {
                container.stdin_pending.extend_from_slice(payload);
            }
        }
        frame::STDIN_EOF => {
            attacher.stdin_done = true;
            if container.stdin_once {
                stdin_ended(container);
            } else {
                // The container's stdin stays open for the next attacher, and this one's
                // input ending is its detach (crictl's Ctrl-P Ctrl-Q, a pipe at its end): its
                // session ends here, as containerd ends it, instead of waiting for the exit.
                attacher.end(Instant::now());
            }
        }
        frame::RESIZE => {
            let (width, height) =
                frame::parse_resize(payload).ok_or("a resize frame of the wrong size")?;
            // Only a terminal has a size; zero is no size at all.
            if container.tty && width > 0 && height > 0 {
                if let Some(master) = container.outputs.first() {
                    let _ = set_window_size(&master.fd, width, height);
                }
            }
        }
        _ => return Err(format!("unexpected frame kind {kind}")),
    }
    Ok(())
}

/// An attacher's stdin ended: with stdin_once, the container's stdin closes once what is
/// queued for it is written (on a terminal in canonical mode, after its EOF character).
pub(super) fn stdin_ended(container: &mut Container) {
    if !container.stdin_once || container.stdin_closing {
        return;
    }
    container.stdin_closing = true;
    if let (true, Some(stdin)) = (container.tty, &container.stdin) {
        if let Some(eof) = terminal_eof(stdin) {
            container.stdin_pending.push(eof);
        }
    }
}

/// The EOF character of a terminal in canonical mode (where it means end of input).
pub(crate) fn terminal_eof(fd: &OwnedFd) -> Option<u8> {
    use nix::sys::termios::{tcgetattr, LocalFlags, SpecialCharacterIndices};
    let termios = tcgetattr(fd).ok()?;
    termios
        .local_flags
        .contains(LocalFlags::ICANON)
        .then(|| termios.control_chars[SpecialCharacterIndices::VEOF as usize])
}

/// Writes what it can of the attachers' stdin into the container's, without blocking; a
/// container that closed its stdin (or exited) takes no more.
pub(super) fn flush_stdin(container: &mut Container) {
    let Some(stdin) = &container.stdin else {
        container.stdin_pending.clear();
        return;
    };
    while !container.stdin_pending.is_empty() {
        match nix::unistd::write(stdin, &container.stdin_pending) {
            Ok(n) => {
                container.stdin_pending.drain(..n);
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return,
            Err(_) => {
                container.stdin_pending.clear();
                container.stdin = None;
                return;
            }
        }
    }
    if container.stdin_closing {
        container.stdin = None;
    }
}

pub(crate) fn set_window_size(fd: &OwnedFd, width: u16, height: u16) -> std::io::Result<()> {
    let size = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is live for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pty for a stream exec, in the container's own devpts when it has one (so that the
/// process sees its terminal as `/dev/pts/N`, as under an OCI runtime), else the host's.
/// Returns (master, slave); the master is non-blocking and both are close-on-exec.
pub(super) fn open_exec_pty(container_pid: u32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (master, slave) = match open_container_pty(container_pid) {
        Ok(pair) => pair,
        Err(_) => {
            let pty = nix::pty::openpty(None, None)?;
            for fd in [&pty.master, &pty.slave] {
                fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
            }
            (pty.master, pty.slave)
        }
    };
    set_nonblocking(&master);
    Ok((master, slave))
}

/// The container's `/dev/pts/ptmx`, reached through its root and resolved inside it, checked
/// to be a devpts multiplexer; the slave is opened from the master (`TIOCGPTPEER`), never by
/// a path the container could swap.
pub(super) fn open_container_pty(container_pid: u32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    use std::os::fd::FromRawFd;
    const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
    let root = std::fs::File::open(format!("/proc/{container_pid}/root"))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let master = openat2(&root, "dev/pts/ptmx", how)?;
    let fs = nix::sys::statfs::fstatfs(&master)?;
    let stat = nix::sys::stat::fstat(&master)?;
    let is_ptmx = fs.filesystem_type().0 as i64 == DEVPTS_SUPER_MAGIC
        && stat.st_mode & libc::S_IFMT == libc::S_IFCHR
        && stat.st_rdev == libc::makedev(5, 2);
    if !is_ptmx {
        return Err(std::io::Error::other(
            "the container's /dev/pts/ptmx is not a pty multiplexer",
        ));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer, which is live for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor or -1.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if slave == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, which nothing else owns.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// A stream exec's pipes: the process's three ends (`/dev/null` for a stream not asked for)
/// and berthd's, in the protocol's order (stdin's write end, stdout's and stderr's read ends).
pub(super) struct ExecPipes {
    pub(super) child: [OwnedFd; 3],
    pub(super) ours: Vec<OwnedFd>,
}

impl ExecPipes {
    pub(super) fn new(stdin: bool, stdout: bool, stderr: bool) -> std::io::Result<ExecPipes> {
        let null = || -> std::io::Result<OwnedFd> {
            Ok(std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?.into())
        };
        let mut ours = Vec::new();
        let child_stdin = if stdin {
            let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
            ours.push(w);
            r
        } else {
            null()?
        };
        let mut output = |wanted: bool| -> std::io::Result<OwnedFd> {
            if !wanted {
                return null();
            }
            let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
            ours.push(r);
            Ok(w)
        };
        let child_stdout = output(stdout)?;
        let child_stderr = output(stderr)?;
        Ok(ExecPipes { child: [child_stdin, child_stdout, child_stderr], ours })
    }
}

/// Sends a reply line and descriptors in one message, so that they cannot be told apart.
pub(super) fn send_with_fds(
    stream: &UnixStream,
    reply: &Reply,
    fds: &[OwnedFd],
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let iov = [std::io::IoSlice::new(&line)];
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    if sent != line.len() {
        return Err(std::io::Error::other(format!("sent {sent} of {} bytes", line.len())));
    }
    Ok(())
}

/// The container's side and the monitor's side of its stdio.
pub(super) struct Stdio {
    pub(super) child_stdin: OwnedFd,
    pub(super) child_stdout: OwnedFd,
    pub(super) child_stderr: OwnedFd,
    pub(super) outputs: Vec<Output>,
    pub(super) stdin: Option<OwnedFd>,
}

impl Stdio {
    pub(super) fn new(tty: bool, stdin: bool) -> std::io::Result<Stdio> {
        if tty {
            let pty = nix::pty::openpty(None, None)?;
            for fd in [&pty.master, &pty.slave] {
                fcntl(fd, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
            }
            set_nonblocking(&pty.master);
            let master_in = pty.master.try_clone()?;
            return Ok(Stdio {
                child_stdin: pty.slave.try_clone()?,
                child_stdout: pty.slave.try_clone()?,
                child_stderr: pty.slave,
                outputs: vec![Output { fd: pty.master, stream: Stream::Stdout }],
                stdin: stdin.then_some(master_in),
            });
        }
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (child_stdin, stdin) = if stdin {
            let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
            // Attachers' stdin is written without blocking the monitor.
            set_nonblocking(&w);
            (r, Some(w))
        } else {
            (std::fs::File::open("/dev/null")?.into(), None)
        };
        set_nonblocking(&out_r);
        set_nonblocking(&err_r);
        Ok(Stdio {
            child_stdin,
            child_stdout: out_w,
            child_stderr: err_w,
            outputs: vec![
                Output { fd: out_r, stream: Stream::Stdout },
                Output { fd: err_r, stream: Stream::Stderr },
            ],
            stdin,
        })
    }
}

pub(super) fn set_nonblocking(fd: &OwnedFd) {
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(fd, FcntlArg::F_SETFL(flags));
    }
}
