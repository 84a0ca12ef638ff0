//! A pseudo-terminal to drive an interactive client (`crictl exec -it`, `crictl attach -it`)
//! the way a user at a terminal does: the client runs as a session leader with the pty's slave
//! as its controlling terminal and stdio, so that it can put the terminal into raw mode and
//! receives SIGWINCH when the test changes the window size; the test types keys into the
//! master, at any time, and reads everything the client writes.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};

/// What the client wrote to the terminal, and whether it has closed its side.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

pub struct Terminal {
    master: File,
    child: Child,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    /// How much of the screen `expect` has already matched past.
    mark: usize,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

impl Terminal {
    /// Starts `command` on a new terminal of `rows` × `cols`.
    pub fn spawn(mut command: Command, rows: u16, cols: u16) -> Terminal {
        let pty = openpty(Some(&winsize(rows, cols)), None).expect("opening a pty");
        let slave: OwnedFd = pty.slave;
        let dup = |fd: &OwnedFd| fd.try_clone().expect("duplicating the pty's slave");
        command.stdin(Stdio::from(dup(&slave))).stdout(Stdio::from(dup(&slave)));
        command.stderr(Stdio::from(dup(&slave)));
        // SAFETY: setsid and ioctl are async-signal-safe; nothing allocates.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                // stdin is the slave by now: make it the controlling terminal.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("starting the client on the pty");
        // Only the child may hold the slave: the master reads EIO once the child is gone.
        drop(command);
        drop(slave);
        let master = File::from(pty.master);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = master.try_clone().expect("duplicating the pty's master");
        let shared = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, changed) = &*shared;
                let mut screen = lock.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    screen.closed = true;
                    changed.notify_all();
                    return;
                }
                screen.bytes.extend_from_slice(&buf[..n]);
                changed.notify_all();
            }
        });
        Terminal { master, child, screen, mark: 0 }
    }

    /// Types `keys` as a user would (they go through the terminal's line discipline).
    pub fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("typing into the pty");
    }

    /// Changes the window size; the kernel sends the client SIGWINCH.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "resizing the pty: {}", std::io::Error::last_os_error());
    }

    /// All the client wrote so far, lossily decoded.
    pub fn text(&self) -> String {
        let (lock, _) = &*self.screen;
        let screen = lock.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&screen.bytes).into_owned()
    }

    /// Waits until `needle` appears after what earlier calls matched, and moves past it; panics
    /// with the screen when it does not within `timeout`.
    pub fn expect(&mut self, needle: &str, timeout: Duration) {
        if !self.try_expect(needle, timeout) {
            panic!("{needle:?} did not appear on the terminal; it shows:\n{}", self.text());
        }
    }

    /// [`expect`](Self::expect), false instead of a panic.
    pub fn try_expect(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.screen;
        let mut screen = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let seen = &screen.bytes[self.mark.min(screen.bytes.len())..];
            if let Some(at) = find(seen, needle.as_bytes()) {
                self.mark += at + needle.len();
                return true;
            }
            let now = Instant::now();
            if screen.closed || now >= deadline {
                return false;
            }
            screen =
                changed.wait_timeout(screen, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Waits for the client to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the client") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the client did not exit in {timeout:?}; the terminal shows:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len().max(1)).position(|w| w == needle)
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
