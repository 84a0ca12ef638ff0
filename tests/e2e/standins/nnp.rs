//! The entrypoint of critest's no-new-privileges stand-in image: installed setuid root, it
//! prints the effective uid it runs with, which is 0 unless no_new_privs kept the kernel
//! from honouring the setuid bit.
//!
//! Built with rustc alone (no crates), statically, by the e2e harness.

extern "C" {
    fn geteuid() -> u32;
}

fn main() {
    // SAFETY: geteuid cannot fail and has no preconditions.
    let euid = unsafe { geteuid() };
    println!("Effective uid: {euid}");
}
