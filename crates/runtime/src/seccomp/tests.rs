//! The CRI → OCI translation, Localhost files, and the compiled filters run for real in forked
//! children.

use std::collections::BTreeSet;
use std::ffi::CString;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};

use super::*;
use crate::error::ErrorKind;

fn x86_64() -> NativeArch {
    NativeArch::named("x86_64")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// containerd's default capabilities, as the spec's bounding set names them.
fn default_caps() -> Vec<String> {
    strings(&[
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ])
}

fn default_for(caps: &[String], kernel: (u64, u64)) -> LinuxSeccomp {
    resolve(&SecurityProfile::RuntimeDefault, false, caps, x86_64(), kernel).unwrap().unwrap()
}

/// Every (name, action, has conditions) of a section.
fn rules(seccomp: &LinuxSeccomp) -> Vec<(String, LinuxSeccompAction, bool)> {
    let mut out = Vec::new();
    for call in seccomp.syscalls().iter().flatten() {
        for name in call.names() {
            out.push((name.clone(), call.action(), call.args().is_some()));
        }
    }
    out
}

fn allowed_unconditionally(seccomp: &LinuxSeccomp) -> BTreeSet<String> {
    rules(seccomp)
        .into_iter()
        .filter(|(_, action, conditional)| {
            *action == LinuxSeccompAction::ScmpActAllow && !conditional
        })
        .map(|(name, ..)| name)
        .collect()
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T>, naming: &str) {
    match result {
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(err.to_string().contains(naming), "{err} should name {naming}");
        }
        Ok(v) => panic!("expected InvalidArgument naming {naming}, got {v:?}"),
    }
}

#[test]
fn privileged_and_unconfined_get_no_filter() {
    let caps = default_caps();
    for profile in [
        SecurityProfile::Unconfined,
        SecurityProfile::RuntimeDefault,
        SecurityProfile::Localhost("/no/such/profile.json".into()),
    ] {
        assert_eq!(resolve(&profile, true, &caps, x86_64(), (6, 1)).unwrap(), None, "{profile:?}");
    }
    assert_eq!(
        resolve(&SecurityProfile::Unconfined, false, &caps, x86_64(), (6, 1)).unwrap(),
        None
    );
}

#[test]
fn the_default_profile_follows_the_capabilities() {
    let plain = default_for(&default_caps(), (6, 1));
    assert_eq!(plain.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(plain.default_errno_ret(), Some(libc::EPERM as u32));
    assert_eq!(
        plain.architectures().as_deref(),
        Some(&[oci_spec::runtime::Arch::ScmpArchX86_64][..])
    );
    let allowed = allowed_unconditionally(&plain);
    for name in ["read", "write", "openat", "execve", "mkdirat", "socket", "ptrace", "chroot"] {
        assert!(allowed.contains(name), "{name} should be allowed");
    }
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "keyctl",
        "add_key",
        "bpf",
        "kexec_load",
        "init_module",
        "reboot",
        "swapon",
        "io_uring_setup",
        "kcmp",
        "open_by_handle_at",
        "perf_event_open",
        "settimeofday",
        "personality",
        "pivot_root",
    ] {
        assert!(!allowed.contains(name), "{name} should not be allowed unconditionally");
    }
    // clone only without namespace flags, clone3 answers ENOSYS, personality for five values.
    let all = rules(&plain);
    assert!(all.contains(&("clone".into(), LinuxSeccompAction::ScmpActAllow, true)));
    assert!(all.contains(&("clone3".into(), LinuxSeccompAction::ScmpActErrno, false)));
    assert_eq!(all.iter().filter(|r| r.0 == "personality").count(), 5);

    let mut caps = default_caps();
    caps.extend(strings(&["CAP_SYS_ADMIN", "SYS_PTRACE", "sys_time"]));
    let admin = allowed_unconditionally(&default_for(&caps, (6, 1)));
    for name in ["mount", "umount2", "unshare", "setns", "clone", "clone3", "kcmp", "bpf"] {
        assert!(admin.contains(name), "{name} should be allowed with SYS_ADMIN/SYS_PTRACE");
    }
    assert!(admin.contains("settimeofday"));
    assert!(!admin.contains("reboot"));
    let admin_rules = rules(&default_for(&caps, (6, 1)));
    assert!(!admin_rules
        .iter()
        .any(|r| r.0 == "clone3" && r.1 != LinuxSeccompAction::ScmpActAllow));

    // ptrace: since 4.8 for everyone, before only with SYS_PTRACE.
    let old = allowed_unconditionally(&default_for(&default_caps(), (4, 4)));
    assert!(!old.contains("ptrace"));
    let mut tracer = default_caps();
    tracer.push("CAP_SYS_PTRACE".into());
    assert!(allowed_unconditionally(&default_for(&tracer, (4, 4))).contains("ptrace"));
}

fn profile_file(json: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json).unwrap();
    file
}

fn localhost(path: &str) -> Result<Option<LinuxSeccomp>> {
    resolve(&SecurityProfile::Localhost(path.to_string()), false, &default_caps(), x86_64(), (6, 1))
}

#[test]
fn localhost_profiles_are_read_and_checked() {
    let good = profile_file(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
            "comment": "ignored"}"#,
    );
    let path = good.path().display().to_string();
    let seccomp = localhost(&path).unwrap().unwrap();
    assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(seccomp.architectures().as_ref().unwrap().len(), 2);
    assert_eq!(
        rules(&seccomp),
        vec![
            ("mkdir".into(), LinuxSeccompAction::ScmpActErrno, false),
            ("mkdirat".into(), LinuxSeccompAction::ScmpActErrno, false)
        ]
    );
    // The deprecated form's prefix is taken off.
    assert_eq!(localhost(&format!("localhost/{path}")).unwrap().unwrap(), seccomp);

    assert_invalid(localhost("/no/such/profile.json"), "/no/such/profile.json");
    assert_invalid(localhost("relative/profile.json"), "absolute");
    // (profile, what the error names)
    let cases = [
        (r#"{"defaultAction": "#, "not a seccomp profile"),
        (r#"{"syscalls": []}"#, "defaultAction"),
        (r#"{"defaultAction": "SCMP_ACT_BOGUS"}"#, "not a seccomp profile"),
        (r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "SCMP_ACT_NOTIFY"),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#,
            "listenerPath",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]}"#,
            "x86_64",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
            "WAIT_KILLABLE_RECV",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
            "70000",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
                "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "argument index 6",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0]",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ERRNO"}]}"#,
            "name and names",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
            "archMap",
        ),
    ];
    for (json, naming) in cases {
        let file = profile_file(json);
        let path = file.path().display().to_string();
        let result = localhost(&path);
        assert_invalid(localhost(&path), naming);
        // The message names the file, whatever is wrong in it.
        assert!(result.unwrap_err().to_string().contains(&path), "{json}");
    }
}

#[test]
fn docker_conditions_are_decided_for_the_container() {
    let file = profile_file(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [
              {"name": "read", "action": "SCMP_ACT_ALLOW"},
              {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
              {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
              {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
              {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
              {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
              {"names": ["futex_waitv"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "7.0"}},
              {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_CHROOT"]}}
            ]}"#,
    );
    let seccomp = localhost(&file.path().display().to_string()).unwrap().unwrap();
    let names: Vec<String> = rules(&seccomp).into_iter().map(|r| r.0).collect();
    assert_eq!(names, strings(&["read", "chroot", "arch_prctl", "ptrace"]));
    use oci_spec::runtime::Arch::*;
    assert_eq!(
        seccomp.architectures().as_deref(),
        Some(&[ScmpArchX86_64, ScmpArchX86, ScmpArchX32][..])
    );

    let file = profile_file(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
            "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "4.8"}}]}"#,
    );
    assert_invalid(localhost(&file.path().display().to_string()), "excludes.minKernel");
}

#[test]
fn kernel_versions() {
    assert_eq!(profile::kernel_version("6.18.44-fc-v669\n"), Some((6, 18)));
    assert_eq!(profile::kernel_version("4.8"), Some((4, 8)));
    assert_eq!(profile::kernel_version("5"), Some((5, 0)));
    assert_eq!(profile::kernel_version("x.y"), None);
}

/// A profile's section straight from JSON, as a spec carries it.
fn section(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

#[test]
fn compiled_filters_stack_per_action() {
    let arch = NativeArch::of_node();
    let allow_all = section(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    assert!(compile::compile(&allow_all, &arch).unwrap().is_empty());
    // Names this architecture lacks are dropped, not refused.
    let unknown = section(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    assert!(compile::compile(&unknown, &arch).unwrap().is_empty());
    let guard = usize::from(arch.linux == "x86_64");
    let mixed = section(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getpgrp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["getsid"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    // base, kill process, ENOSYS, EPERM
    assert_eq!(compile::compile(&mixed, &arch).unwrap().len(), 4 + guard);
    let default = default_for(&default_caps(), (6, 1));
    // base and ENOSYS (clone3)
    assert_eq!(compile(&default).unwrap().len(), 2 + guard);
}

/// Runs `body` in a forked child under `filters` (with no_new_privs) and returns how it ended.
/// The child only makes system calls: the test process has other threads.
fn under(filters: &Filters, body: impl Fn() -> i32) -> WaitStatus {
    // SAFETY: the child makes only system calls (no allocation, no locks) and then _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments, _exit.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if filters.install().is_err() {
                    libc::_exit(100);
                }
                libc::_exit(body())
            }
        }
        ForkResult::Parent { child } => waitpid(child, None).unwrap(),
    }
}

/// 0 when the call failed with `want`, 1 when it succeeded, 2 for another errno.
fn fails_with(ret: libc::c_long, want: Errno) -> i32 {
    match (ret, Errno::last()) {
        (-1, e) if e == want => 0,
        (-1, _) => 2,
        _ => 1,
    }
}

fn exited(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        _ => None,
    }
}

#[test]
fn a_localhost_profile_denies_mkdir_with_eperm() {
    let dir = tempfile::tempdir().unwrap();
    let target = CString::new(dir.path().join("x").display().to_string()).unwrap();
    let filters = compile(&section(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    // SAFETY (closures below): plain system calls on a live C string.
    let mkdir = || fails_with(unsafe { libc::mkdir(target.as_ptr(), 0o755) }.into(), Errno::EPERM);
    assert_eq!(exited(under(&filters, mkdir)), Some(0));
    let getpid = || i32::from(unsafe { libc::getpid() } <= 0);
    assert_eq!(exited(under(&filters, getpid)), Some(0));
    // Without the filter the same call works.
    assert_eq!(exited(under(&Filters::default(), mkdir)), Some(1));
}

#[test]
fn the_default_profile_denies_namespaces_and_keeps_the_rest() {
    let filters = compile(&default_for(&default_caps(), (6, 1))).unwrap();
    // SAFETY (closures below): raw system calls with integer arguments; none of them succeeds
    // in creating anything when the filter works.
    let unshare = || fails_with(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into(), Errno::EPERM);
    assert_eq!(exited(under(&filters, unshare)), Some(0));
    let clone_ns = || {
        let flags = (libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong;
        fails_with(unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) }, Errno::EPERM)
    };
    assert_eq!(exited(under(&filters, clone_ns)), Some(0));
    let clone3 =
        || fails_with(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) }, Errno::ENOSYS);
    assert_eq!(exited(under(&filters, clone3)), Some(0));
    let keyctl = || fails_with(unsafe { libc::syscall(libc::SYS_keyctl, 0, 0, 0) }, Errno::EPERM);
    assert_eq!(exited(under(&filters, keyctl)), Some(0));
    let personality = || {
        let query = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffffu64) };
        let odd = unsafe { libc::syscall(libc::SYS_personality, 0x0040_0000u64) };
        if query >= 0 && fails_with(odd, Errno::EPERM) == 0 {
            0
        } else {
            1
        }
    };
    assert_eq!(exited(under(&filters, personality)), Some(0));
    let ordinary = || {
        let pid = unsafe { libc::getpid() };
        let uid = unsafe { libc::getuid() };
        i32::from(pid <= 0 || uid != 0)
    };
    assert_eq!(exited(under(&filters, ordinary)), Some(0));
    // Unconfined: the same unshare works (the test runs as root).
    assert_eq!(exited(under(&Filters::default(), unshare)), Some(1));
}

#[test]
fn kill_trap_errno_and_log_actions() {
    let filters = compile(&section(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getpgrp"], "action": "SCMP_ACT_TRAP"},
            {"names": ["getsid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["getuid"], "action": "SCMP_ACT_LOG"},
            {"names": ["getgid"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 9, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getegid"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 255, "valueTwo": 7, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]}"#,
    ))
    .unwrap();
    // SAFETY (closures below): raw system calls with integer arguments.
    let killed = under(&filters, || unsafe { libc::syscall(libc::SYS_getppid) as i32 });
    assert!(matches!(killed, WaitStatus::Signaled(_, Signal::SIGSYS, _)), "{killed:?}");
    let trapped = under(&filters, || unsafe { libc::syscall(libc::SYS_getpgrp) as i32 });
    assert!(matches!(trapped, WaitStatus::Signaled(_, Signal::SIGSYS, _)), "{trapped:?}");
    let enosys = || fails_with(unsafe { libc::syscall(libc::SYS_getsid, 0) }, Errno::ENOSYS);
    assert_eq!(exited(under(&filters, enosys)), Some(0));
    let logged = || i32::from(unsafe { libc::syscall(libc::SYS_getuid) } < 0);
    assert_eq!(exited(under(&filters, logged)), Some(0));
    // Two conditions on one argument are alternatives; the call's other values pass.
    let either = || {
        let seven = fails_with(unsafe { libc::syscall(libc::SYS_getgid, 7) }, Errno::EPERM);
        let nine = fails_with(unsafe { libc::syscall(libc::SYS_getgid, 9) }, Errno::EPERM);
        let eight = unsafe { libc::syscall(libc::SYS_getgid, 8) };
        i32::from(seven != 0 || nine != 0 || eight < 0)
    };
    assert_eq!(exited(under(&filters, either)), Some(0));
    let masked = || {
        let hit = fails_with(unsafe { libc::syscall(libc::SYS_getegid, 0x107) }, Errno::EPERM);
        let miss = unsafe { libc::syscall(libc::SYS_getegid, 0x108) };
        i32::from(hit != 0 || miss < 0)
    };
    assert_eq!(exited(under(&filters, masked)), Some(0));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_calls_are_refused() {
    let filters = compile(&section(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    ))
    .unwrap();
    // SAFETY: a raw system call with an integer argument.
    let x32_getpid =
        || fails_with(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }, Errno::ENOSYS);
    assert_eq!(exited(under(&filters, x32_getpid)), Some(0));
}
