//! The nginx of critest's stand-in web server images, in as much as the specs look at it: a
//! master process whose command line says `nginx: master process` (comm `nginx`, so `pidof
//! nginx` finds it), that writes its pid to /var/run/nginx.pid and serves
//! /usr/share/nginx/html over HTTP on the port in /etc/nginx/listen (busybox httpd does the
//! serving). SIGTERM, SIGINT and SIGQUIT stop it, as they stop nginx.
//!
//! Built with rustc alone (no crates), statically, by the e2e harness.

use std::os::unix::process::CommandExt;
use std::process::{exit, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

const MASTER: &str = "nginx: master process nginx -g daemon off;";
const PID_FILE: &str = "/var/run/nginx.pid";
const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGTERM: i32 = 15;

static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

extern "C" fn on_signal(signum: i32) {
    STOP.store(signum, Ordering::SeqCst);
}

fn main() {
    let arg0 = std::env::args().next().unwrap_or_default();
    if arg0 != MASTER {
        // Exec'd by its own path, the kernel names the process (comm) `nginx`; argv[0] is
        // what /proc/<pid>/cmdline shows.
        let me = match std::env::current_exe() {
            Ok(path) => path,
            Err(err) => fail(&format!("finding my own executable: {err}")),
        };
        let err = Command::new(me).arg0(MASTER).exec();
        fail(&format!("re-executing as the master process: {err}"));
    }
    for signum in [SIGINT, SIGQUIT, SIGTERM] {
        let handler: extern "C" fn(i32) = on_signal;
        // SAFETY: the handler only stores into an atomic.
        unsafe { signal(signum, handler as usize) };
    }
    let port = std::fs::read_to_string("/etc/nginx/listen").unwrap_or_else(|_| "80".into());
    let port = port.trim();
    let _ = std::fs::create_dir_all("/var/run");
    if let Err(err) = std::fs::write(PID_FILE, format!("{}\n", std::process::id())) {
        fail(&format!("writing {PID_FILE}: {err}"));
    }
    let mut server = match Command::new("/bin/busybox")
        .args(["httpd", "-f", "-v", "-p", port, "-h", "/usr/share/nginx/html"])
        .spawn()
    {
        Ok(child) => child,
        Err(err) => fail(&format!("starting busybox httpd: {err}")),
    };
    loop {
        if STOP.load(Ordering::SeqCst) != 0 {
            let _ = server.kill();
            let _ = server.wait();
            let _ = std::fs::remove_file(PID_FILE);
            exit(0);
        }
        match server.try_wait() {
            Ok(Some(status)) => {
                eprintln!("nginx: the server exited: {status}");
                exit(status.code().unwrap_or(1));
            }
            Ok(None) => {}
            Err(err) => fail(&format!("waiting for the server: {err}")),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("nginx: {message}");
    exit(1)
}
