//! The pause of critest's stand-in pause image: it does nothing until SIGTERM or SIGINT ends
//! it, and reaps any child that gets reparented to it, as the Kubernetes pause does.
//!
//! Built with rustc alone (no crates), statically, by the e2e harness.

use std::sync::atomic::{AtomicBool, Ordering};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIGCHLD: i32 = 17;
const WNOHANG: i32 = 1;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn pause() -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
}

extern "C" fn on_stop(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_child(_: i32) {}

fn main() {
    let stop: extern "C" fn(i32) = on_stop;
    let child: extern "C" fn(i32) = on_child;
    // SAFETY: the handlers only store into an atomic or do nothing.
    unsafe {
        signal(SIGINT, stop as usize);
        signal(SIGTERM, stop as usize);
        signal(SIGCHLD, child as usize);
    }
    while !STOP.load(Ordering::SeqCst) {
        // SAFETY: pause and waitpid with a valid status pointer have no preconditions.
        unsafe {
            pause();
            let mut status = 0;
            while waitpid(-1, &mut status, WNOHANG) > 0 {}
        }
    }
}
