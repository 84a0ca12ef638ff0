//! Containers run for real (root): a busybox root filesystem, a containerd-like spec, and the
//! executor driven from a forked child of the test process. The child stands in for the
//! monitor: single-threaded, the parent of the containers, free to change its own mount
//! namespace; the harness's threads stay behind in the parent.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe, ForkResult, Pid};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use super::*;
use crate::error::ErrorKind;

const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "echo",
    "id",
    "ls",
    "sleep",
    "hostname",
    "pwd",
    "touch",
    "readlink",
    "wc",
    "grep",
    "test",
    "tty",
    "stat",
    "mount",
    "mountpoint",
    "stty",
    "yes",
];

/// containerd's default capabilities, as the spec builder grants them.
const DEFAULT_CAPS: &[Capability] = &crate::container::spec::DEFAULT_CAPABILITIES;
/// The same set as the kernel prints it in /proc/<pid>/status.
const DEFAULT_CAPS_MASK: &str = "00000000a80425fb";

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// Also used by the monitor's stream tests.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) rootfs: Rootfs,
    pub(crate) root: PathBuf,
}

impl Fixture {
    /// Two layers: the bottom one with busybox, the top one overriding /etc/marker.
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layers = dir.path().join("layers");
        let bottom = layers.join("l1");
        let top = layers.join("l2");
        for d in ["bin", "etc", "tmp"] {
            fs::create_dir_all(bottom.join(d)).unwrap();
        }
        fs::create_dir_all(top.join("etc")).unwrap();
        fs::copy("/bin/busybox", bottom.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", bottom.join("bin").join(applet)).unwrap();
        }
        fs::write(
            bottom.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        fs::write(bottom.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        fs::write(bottom.join("etc/marker"), "bottom\n").unwrap();
        fs::write(top.join("etc/marker"), "top layer\n").unwrap();
        // Executable bits, but not a format the kernel can run.
        fs::write(bottom.join("bin/bad"), "garbage\n").unwrap();
        fs::set_permissions(bottom.join("bin/bad"), fs::Permissions::from_mode(0o755)).unwrap();
        let (upper, work, root) =
            (dir.path().join("upper"), dir.path().join("work"), dir.path().join("root"));
        for d in [&upper, &work, &root] {
            fs::create_dir(d).unwrap();
        }
        let rootfs =
            Rootfs { lower_base: layers, lower: vec!["l2".into(), "l1".into()], upper, work };
        Fixture { dir, rootfs, root }
    }

    fn lower(&self) -> PathBuf {
        self.rootfs.lower_base.join("l1")
    }

    /// A containerd-like spec running `args` as root.
    pub(crate) fn spec(&self, args: &[&str]) -> Spec {
        let namespaces = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
        ]
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().unwrap())
        .collect::<Vec<_>>();
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let linux = LinuxBuilder::default()
            .namespaces(namespaces)
            .masked_paths(strings(&["/proc/kcore", "/proc/keys", "/proc/acpi", "/sys/firmware"]))
            .readonly_paths(strings(&["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"]))
            .build()
            .unwrap();
        SpecBuilder::default()
            .version("1.1.0")
            .root(RootBuilder::default().path(&self.root).readonly(false).build().unwrap())
            .hostname("box")
            .mounts(default_mounts())
            .process(process(args))
            .linux(linux)
            .build()
            .unwrap()
    }
}

fn process(args: &[&str]) -> Process {
    let caps: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
    ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
        .args(args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/usr/bin:/bin".to_string(), "HOME=/root".to_string()])
        .cwd("/")
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .unwrap(),
        )
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1000u64)
            .hard(1001u64)
            .build()
            .unwrap()])
        .oom_score_adj(7)
        .build()
        .unwrap()
}

fn mount_entry(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// containerd's default mounts.
fn default_mounts() -> Vec<Mount> {
    vec![
        mount_entry("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount_entry(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount_entry(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount_entry(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount_entry("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount_entry("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        mount_entry(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

fn add_mount(spec: &mut Spec, m: Mount) {
    spec.mounts_mut().get_or_insert_with(Vec::new).push(m);
}

fn process_mut(spec: &mut Spec) -> &mut Process {
    spec.process_mut().as_mut().unwrap()
}

/// Runs `body` in a forked child (single-threaded, like the monitor) and fails the test with
/// its error. The child has a minute before SIGALRM ends it.
fn in_child(body: impl FnOnce() -> Result<(), String>) {
    let (mut reader, writer) = pipe().unwrap();
    // SAFETY: the child only runs `body` and then _exits; it never returns into the harness.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            drop(reader);
            unsafe { libc::alarm(60) };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
            let msg = match outcome {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(e)) => e,
                Err(panic) => format!(
                    "panic: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ),
            };
            let _ = nix::unistd::write(&writer, msg.as_bytes());
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(writer);
            let mut msg = String::new();
            File::from(std::mem::replace(&mut reader, dev_null()))
                .read_to_string(&mut msg)
                .unwrap();
            let status = waitpid(child, None).unwrap();
            assert_eq!(msg, "ok", "test child failed ({status:?})");
        }
    }
}

fn dev_null() -> OwnedFd {
    File::open("/dev/null").unwrap().into()
}

impl Fixture {
    /// Creates `spec` on the fixture's rootfs, outside any cgroup, with `stdio` on all three.
    fn create_quiet(&self, spec: &Spec, stdio: &OwnedFd) -> Result<Created, String> {
        create(&CreateRequest {
            spec,
            rootfs: &self.rootfs,
            cgroup_procs: &[],
            cgroup_mount: &CgroupMount::V1(Vec::new()),
            stdin: stdio.as_fd(),
            stdout: stdio.as_fd(),
            stderr: stdio.as_fd(),
        })
        .map_err(|e| e.to_string())
    }
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

struct Output {
    stdout: String,
    stderr: String,
    status: i32,
}

fn exit_status(pid: Pid) -> Result<i32, String> {
    match waitpid(pid, None) {
        Ok(WaitStatus::Exited(_, code)) => Ok(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Ok(128 + sig as i32),
        other => Err(format!("waiting for {pid}: {other:?}")),
    }
}

fn read_all(fd: OwnedFd) -> String {
    let mut text = String::new();
    let _ = File::from(fd).read_to_string(&mut text);
    text
}

/// Creates and starts a container with pipes for stdout and stderr, and waits for it.
fn run_with(
    spec: &Spec,
    f: &Fixture,
    cgroup_procs: &[PathBuf],
    cgroup: &CgroupMount,
) -> Result<Output, Error> {
    let (out_r, out_w) = pipe().unwrap();
    let (err_r, err_w) = pipe().unwrap();
    let stdin = dev_null();
    let created = create(&CreateRequest {
        spec,
        rootfs: &f.rootfs,
        cgroup_procs,
        cgroup_mount: cgroup,
        stdin: stdin.as_fd(),
        stdout: out_w.as_fd(),
        stderr: err_w.as_fd(),
    })?;
    drop((out_w, err_w));
    let pid = created.pid;
    start(created)?;
    let stdout = read_all(out_r);
    let stderr = read_all(err_r);
    let status = exit_status(pid).map_err(Error::Internal)?;
    Ok(Output { stdout, stderr, status })
}

fn run(spec: &Spec, f: &Fixture) -> Result<Output, String> {
    let out = run_with(spec, f, &[], &CgroupMount::V1(Vec::new())).map_err(|e| e.to_string())?;
    no_host_mounts(f)?;
    Ok(out)
}

/// The overlay and everything under it exist only in the container's mount namespace.
fn no_host_mounts(f: &Fixture) -> Result<(), String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = f.dir.path().to_string_lossy().to_string();
    check!(!info.contains(&dir), "a mount under {dir} is left on the host:\n{info}");
    check!(
        fs::read_dir(&f.root).unwrap().next().is_none(),
        "the root dir is not empty on the host"
    );
    Ok(())
}

/// Unmounts what a test mounted in its own namespace, so that its temp dir can be removed.
fn detach(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}

fn no_children_left() -> Result<(), String> {
    let left = waitpid(Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    check!(left == Err(nix::errno::Errno::ECHILD), "a child was left unreaped: {left:?}");
    Ok(())
}

#[test]
fn echo_through_a_pipe_and_exit_code() {
    in_child(|| {
        let f = Fixture::new();
        let spec = f.spec(&["sh", "-c", "echo hello; cat /etc/marker; echo oops >&2; exit 3"]);
        let out = run(&spec, &f)?;
        check!(out.stdout == "hello\ntop layer\n", "stdout {:?}", out.stdout);
        check!(out.stderr == "oops\n", "stderr {:?}", out.stderr);
        check!(out.status == 3, "status {}", out.status);
        Ok(())
    });
}

#[test]
fn init_is_pid_1_with_its_own_namespaces_devices_and_limits() {
    in_child(|| {
        let f = Fixture::new();
        let script = "echo $$; hostname; \
            test -c /dev/null && test -c /dev/urandom && test -c /dev/tty && echo devices; \
            readlink /dev/fd; readlink /dev/ptmx; echo x > /dev/null && echo null-ok; \
            grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; \
            cat /proc/self/oom_score_adj; grep 'open files' /proc/self/limits; \
            wc -c < /proc/keys; echo 1 > /proc/sys/kernel/hostname || echo sys-ro; \
            touch /sys/x || echo sysfs-ro; ls /dev/shm /dev/mqueue /dev/pts >/dev/null && echo dirs";
        let spec = f.spec(&["sh", "-c", script]);
        let out = run(&spec, &f)?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        let expect_prefix = ["1", "box", "devices", "/proc/self/fd", "pts/ptmx", "null-ok"];
        check!(
            lines.len() > expect_prefix.len(),
            "stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        check!(lines[..expect_prefix.len()] == expect_prefix, "stdout {:?}", out.stdout);
        let text = out.stdout.as_str();
        check!(text.contains(&format!("CapBnd:\t{DEFAULT_CAPS_MASK}")), "caps: {text}");
        check!(text.contains(&format!("CapEff:\t{DEFAULT_CAPS_MASK}")), "caps: {text}");
        check!(text.contains("NoNewPrivs:\t1"), "no_new_privs: {text}");
        check!(text.contains("\n7\n"), "oom_score_adj: {text}");
        check!(
            text.lines().any(|l| l.starts_with("Max open files")
                && l.contains("1000")
                && l.contains("1001")),
            "limits: {text}"
        );
        check!(text.contains("\n0\nsys-ro\nsysfs-ro\ndirs\n"), "masks, read-only: {text}");
        check!(out.status == 0, "status {} stderr {:?}", out.status, out.stderr);
        Ok(())
    });
}

#[test]
fn missing_executable_fails_create() {
    in_child(|| {
        let f = Fixture::new();
        let err = match run(&f.spec(&["nope"]), &f) {
            Ok(_) => return Err("a missing executable was run".into()),
            Err(e) => e,
        };
        check!(
            err.contains("executable file not found in $PATH: \"nope\"")
                && err.starts_with("invalid argument"),
            "error {err}"
        );
        let err = run_with(&f.spec(&["/bin/nope"]), &f, &[], &CgroupMount::V2).err();
        check!(err.as_ref().map(|e| e.kind()) == Some(ErrorKind::InvalidArgument), "error {err:?}");
        no_children_left()?;
        no_host_mounts(&f)
    });
}

#[test]
fn exec_failure_is_reported_by_start_and_unstarted_init_exits() {
    in_child(|| {
        let f = Fixture::new();
        let err = run_with(&f.spec(&["/bin/bad"]), &f, &[], &CgroupMount::V1(Vec::new())).err();
        let text = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
        check!(text.contains("exec /bin/bad: exec format error"), "error {err:?}");
        // start() failed, so the caller reaps.
        let pid = waitpid(Pid::from_raw(-1), None).map_err(|e| e.to_string())?;
        check!(matches!(pid, WaitStatus::Exited(_, 127)), "exit {pid:?}");

        let stdio = dev_null();
        let created = f.create_quiet(&f.spec(&["sh", "-c", "echo never"]), &stdio)?;
        let pid = created.pid;
        check!(created.host_pid == pid.as_raw() as u32, "host pid {} pid {pid}", created.host_pid);
        drop(created);
        check!(exit_status(pid)? == 0, "an unstarted init did not exit cleanly");
        no_children_left()
    });
}

#[test]
fn read_only_bind_and_bad_source() {
    in_child(|| {
        let f = Fixture::new();
        let data = f.dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("f"), "hello\n").unwrap();
        let file = f.dir.path().join("single");
        fs::write(&file, "one file\n").unwrap();
        let mut spec = f.spec(&[
            "sh",
            "-c",
            "cat /data/f /etc/single; touch /data/new || echo ro; echo x >> /etc/single || echo file-ro",
        ]);
        add_mount(
            &mut spec,
            mount_entry("/data", "bind", &data.to_string_lossy(), &["rbind", "ro"]),
        );
        add_mount(
            &mut spec,
            mount_entry("/etc/single", "bind", &file.to_string_lossy(), &["bind", "ro"]),
        );
        let out = run(&spec, &f)?;
        check!(
            out.stdout == "hello\none file\nro\nfile-ro\n",
            "stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        check!(out.stderr.contains("Read-only file system"), "stderr {:?}", out.stderr);
        check!(!data.join("new").exists(), "the write went through");

        let mut spec = f.spec(&["true"]);
        add_mount(&mut spec, mount_entry("/data", "bind", "/nonexistent-berth-source", &["rbind"]));
        let err = run_with(&spec, &f, &[], &CgroupMount::V1(Vec::new())).err();
        let ok = matches!(&err, Some(Error::InvalidArgument(m))
            if m == "mounting /data: source /nonexistent-berth-source: no such file or directory");
        check!(ok, "error {err:?}");
        no_children_left()
    });
}

#[test]
fn recursive_read_only_bind() {
    in_child(|| {
        // A private mount namespace for the test child, so the submount stays out of the host.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
        .unwrap();
        let f = Fixture::new();
        let data = f.dir.path().join("data");
        fs::create_dir_all(data.join("sub")).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &data.join("sub"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mut spec =
            f.spec(&["sh", "-c", "touch /data/sub/x || echo sub-ro; touch /data/x || echo ro"]);
        add_mount(
            &mut spec,
            mount_entry("/data", "bind", &data.to_string_lossy(), &["rbind", "ro", "rro"]),
        );
        let out = run_with(&spec, &f, &[], &CgroupMount::V1(Vec::new()));
        detach(&data.join("sub"));
        let out = out.map_err(|e| e.to_string())?;
        check!(out.stdout == "sub-ro\nro\n", "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        Ok(())
    });
}

#[test]
fn symlink_in_image_cannot_move_a_mount_outside() {
    in_child(|| {
        let f = Fixture::new();
        let name = format!(
            "berth-exec-escape-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        );
        let host_target = Path::new("/tmp").join(&name);
        symlink(format!("/../../tmp/{name}"), f.lower().join("data")).unwrap();
        let data = f.dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("f"), "inside\n").unwrap();
        let mut spec = f.spec(&["sh", "-c", &format!("cat /data/f /tmp/{name}/f")]);
        add_mount(&mut spec, mount_entry("/data", "bind", &data.to_string_lossy(), &["rbind"]));
        let out = run(&spec, &f)?;
        check!(out.stdout == "inside\ninside\n", "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        check!(!host_target.exists(), "{} was created on the host", host_target.display());
        check!(
            f.rootfs.upper.join("tmp").join(&name).is_dir(),
            "the target was not made in the root"
        );
        Ok(())
    });
}

#[test]
fn user_groups_and_created_cwd() {
    in_child(|| {
        let f = Fixture::new();
        let mut spec = f.spec(&[
            "sh",
            "-c",
            "id -u; id -g; id -G; pwd; grep -E '^Cap(Prm|Eff)' /proc/self/status",
        ]);
        let p = process_mut(&mut spec);
        p.set_user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(1000u32)
                .additional_gids(vec![10u32, 20])
                .build()
                .unwrap(),
        );
        p.set_cwd("/work/deep/dir".into());
        let out = run(&spec, &f)?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        check!(lines.len() == 6, "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        check!(lines[0] == "1000" && lines[1] == "1000", "ids {lines:?}");
        let groups: HashSet<&str> = lines[2].split_whitespace().collect();
        check!(
            groups.contains("10") && groups.contains("20") && !groups.contains("0"),
            "groups {lines:?}"
        );
        check!(lines[3] == "/work/deep/dir", "cwd {lines:?}");
        check!(lines[4] == "CapPrm:\t0000000000000000", "caps {lines:?}");
        check!(lines[5] == "CapEff:\t0000000000000000", "caps {lines:?}");
        Ok(())
    });
}

#[test]
fn read_only_root() {
    in_child(|| {
        let f = Fixture::new();
        let mut spec =
            f.spec(&["sh", "-c", "touch /x || echo ro; touch /dev/shm/x && echo shm-rw"]);
        spec.set_root(Some(RootBuilder::default().path(&f.root).readonly(true).build().unwrap()));
        let out = run(&spec, &f)?;
        check!(out.stdout == "ro\nshm-rw\n", "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        Ok(())
    });
}

/// The test process's own v1 cgroups, as (name in /sys/fs/cgroup, directory).
fn own_v1_cgroups() -> Vec<(String, PathBuf)> {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let name = controllers.strip_prefix("name=").unwrap_or(controllers);
            if name.is_empty() {
                return None;
            }
            let dir = Path::new("/sys/fs/cgroup").join(name).join(path.trim_start_matches('/'));
            dir.is_dir().then(|| (name.to_string(), dir))
        })
        .collect()
}

#[test]
fn cgroup_v1_view() {
    in_child(|| {
        let f = Fixture::new();
        let mut cgroups = own_v1_cgroups();
        let Some((_, memory)) = cgroups.iter().find(|(name, _)| name == "memory").cloned() else {
            return Ok(()); // not a v1 host
        };
        let (_, pids) = cgroups.iter().find(|(name, _)| name == "pids").cloned().unwrap();
        cgroups.push(("net_cls,net_prio".to_string(), pids));
        let spec = f.spec(&[
            "sh",
            "-c",
            "grep -qx 1 /sys/fs/cgroup/memory/cgroup.procs && echo joined; readlink /sys/fs/cgroup/net_prio; \
             touch /sys/fs/cgroup/memory/x || echo ro; touch /sys/fs/cgroup/y || echo tmpfs-ro",
        ]);
        let procs = [memory.join("cgroup.procs")];
        let out =
            run_with(&spec, &f, &procs, &CgroupMount::V1(cgroups)).map_err(|e| e.to_string())?;
        check!(
            out.stdout == "joined\nnet_cls,net_prio\nro\ntmpfs-ro\n",
            "stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        no_host_mounts(&f)
    });
}

#[test]
fn cgroup_v2_in_a_cgroup_namespace() {
    in_child(|| {
        if !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists()
            && !Path::new("/sys/fs/cgroup/cgroup.procs").exists()
        {
            return Ok(());
        }
        let f = Fixture::new();
        let mut spec = f.spec(&[
            "sh",
            "-c",
            "grep '^0::' /proc/self/cgroup; test -f /sys/fs/cgroup/cgroup.procs && echo v2",
        ]);
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.namespaces_mut().as_mut().unwrap().push(
            LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Cgroup).build().unwrap(),
        );
        let out = run_with(&spec, &f, &[], &CgroupMount::V2).map_err(|e| e.to_string())?;
        check!(out.stdout == "0::/\nv2\n", "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        Ok(())
    });
}

#[test]
fn exec_into_a_running_container() {
    in_child(|| {
        let f = Fixture::new();
        let stdio = dev_null();
        let spec = f.spec(&["sleep", "1000"]);
        let created = f.create_quiet(&spec, &stdio)?;
        let (container, host_pid) = (created.pid, created.host_pid);
        start(created).map_err(|e| e.to_string())?;

        let exec = |args: &[&str]| -> Result<Output, String> {
            let (out_r, out_w) = pipe().unwrap();
            let (err_r, err_w) = pipe().unwrap();
            let mut p = process(args);
            p.set_user(UserBuilder::default().uid(1000u32).gid(1000u32).build().unwrap());
            p.set_cwd("/etc".into());
            let pid = spawn_exec(&ExecRequest {
                container_pid: host_pid,
                cgroup_procs: &[],
                process: &p,
                seccomp: None,
                stdin: stdio.as_fd(),
                stdout: out_w.as_fd(),
                stderr: err_w.as_fd(),
            })
            .map_err(|e| e.to_string())?;
            drop((out_w, err_w));
            let (stdout, stderr) = (read_all(out_r), read_all(err_r));
            Ok(Output { stdout, stderr, status: exit_status(pid)? })
        };
        let out = exec(&[
            "sh",
            "-c",
            "cat marker; cat /proc/1/cmdline; echo; hostname; id -u; pwd; exit 5",
        ])?;
        check!(
            out.stdout == "top layer\nsleep\u{0}1000\u{0}\nbox\n1000\n/etc\n",
            "stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        check!(out.status == 5, "status {}", out.status);
        let out = exec(&["nope"])?;
        check!(out.status == 127, "status {}", out.status);
        check!(
            out.stderr.contains("executable file not found in $PATH: \"nope\""),
            "stderr {:?}",
            out.stderr
        );
        let out = exec(&["/etc/passwd"])?;
        check!(out.status == 126, "status {} stderr {:?}", out.status, out.stderr);

        nix::sys::signal::kill(container, nix::sys::signal::Signal::SIGKILL).unwrap();
        exit_status(container)?;
        let gone = exec(&["true"]).err().unwrap_or_default();
        check!(gone.contains("is gone"), "exec into a dead container: {gone:?}");
        no_children_left()?;
        no_host_mounts(&f)
    });
}

#[test]
fn terminal() {
    in_child(|| {
        let f = Fixture::new();
        // SAFETY: plain libc pty calls; the descriptors are owned right away.
        let (master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            check!(master >= 0, "posix_openpt");
            check!(libc::grantpt(master) == 0 && libc::unlockpt(master) == 0, "grantpt");
            let mut name = [0 as libc::c_char; 128];
            check!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()) == 0, "ptsname");
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            check!(slave >= 0, "open slave");
            (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
        };
        let mut spec = f.spec(&[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo tty; test -e /dev/console && echo console",
        ]);
        process_mut(&mut spec).set_terminal(Some(true));
        let created = create(&CreateRequest {
            spec: &spec,
            rootfs: &f.rootfs,
            cgroup_procs: &[],
            cgroup_mount: &CgroupMount::V1(Vec::new()),
            stdin: slave.as_fd(),
            stdout: slave.as_fd(),
            stderr: slave.as_fd(),
        })
        .map_err(|e| e.to_string())?;
        drop(slave);
        let pid = created.pid;
        start(created).map_err(|e| e.to_string())?;
        // Reading the master ends with EIO once the last slave descriptor is closed.
        let out = read_all(master);
        check!(exit_status(pid)? == 0, "status");
        check!(out == "tty\r\nconsole\r\n", "output {out:?}");
        Ok(())
    });
}

#[test]
fn joins_the_namespaces_of_another_container() {
    in_child(|| {
        let f = Fixture::new();
        let stdio = dev_null();
        let first_spec = f.spec(&["sleep", "1000"]);
        let first = f.create_quiet(&first_spec, &stdio)?;
        let (first_pid, host_pid) = (first.pid, first.host_pid);
        start(first).map_err(|e| e.to_string())?;

        let g = Fixture::new();
        let mut spec = g.spec(&["sh", "-c", "cat /proc/1/cmdline; echo; echo $$; hostname"]);
        spec.set_hostname(Some("ignored".to_string()));
        let namespaces = [
            (LinuxNamespaceType::Pid, "pid"),
            (LinuxNamespaceType::Network, "net"),
            (LinuxNamespaceType::Ipc, "ipc"),
            (LinuxNamespaceType::Uts, "uts"),
        ]
        .into_iter()
        .map(|(typ, name)| {
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .path(format!("/proc/{host_pid}/ns/{name}"))
                .build()
                .unwrap()
        })
        .chain([LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Mount).build().unwrap()])
        .collect::<Vec<_>>();
        spec.linux_mut().as_mut().unwrap().set_namespaces(Some(namespaces));
        let out = run(&spec, &g)?;
        check!(
            out.stdout == "sleep\u{0}1000\u{0}\n2\nbox\n",
            "stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        // The monitor's own children are born in its own PID namespace again.
        let own = fs::read_link("/proc/self/ns/pid").unwrap();
        let children = fs::read_link("/proc/self/ns/pid_for_children").unwrap();
        check!(own == children, "pid_for_children left at {children:?}");
        nix::sys::signal::kill(first_pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        exit_status(first_pid)?;
        no_children_left()
    });
}

#[test]
fn shared_root_propagation_makes_bidirectional_mounts() {
    in_child(|| {
        // The test child's own mount namespace stands in for the host.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        let private = nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_REC;
        nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        let f = Fixture::new();
        let shared = f.dir.path().join("shared");
        fs::create_dir_all(&shared).unwrap();
        let none = nix::mount::MsFlags::empty();
        nix::mount::mount(Some("tmpfs"), &shared, Some("tmpfs"), none, None::<&str>).unwrap();
        nix::mount::mount(
            None::<&str>,
            &shared,
            None::<&str>,
            nix::mount::MsFlags::MS_SHARED,
            None::<&str>,
        )
        .unwrap();
        let mut spec = f.spec(&["sh", "-c", "mount -t tmpfs tmpfs /mnt/sub && echo mounted"]);
        spec.linux_mut().as_mut().unwrap().set_rootfs_propagation(Some("rshared".to_string()));
        let mut caps: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
        caps.insert(Capability::SysAdmin);
        process_mut(&mut spec).set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()
                .unwrap(),
        ));
        fs::create_dir(shared.join("sub")).unwrap();
        add_mount(
            &mut spec,
            mount_entry("/mnt", "bind", &shared.to_string_lossy(), &["rbind", "rshared"]),
        );
        let out = run_with(&spec, &f, &[], &CgroupMount::V1(Vec::new()));
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        detach(&shared.join("sub"));
        detach(&shared);
        let out = out.map_err(|e| e.to_string())?;
        check!(out.stdout == "mounted\n", "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        let sub = shared.join("sub").to_string_lossy().to_string();
        check!(
            info.contains(&format!(" {sub} ")),
            "the container's mount did not come back:\n{info}\n{}",
            out.stderr
        );
        let root = f.root.to_string_lossy().to_string();
        check!(!info.contains(&root), "the root filesystem propagated out:\n{info}");
        Ok(())
    });
}

/// Denies mkdir with EPERM and allows the rest.
fn deny_mkdir() -> oci_spec::runtime::LinuxSeccomp {
    serde_json::from_str(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap()
}

/// mkdir, then the capabilities and seccomp mode as the process sees them.
const SECCOMP_PROBE: &str = "mkdir /tmp/made 2>&1 && echo made; \
    grep -E '^(CapEff|CapPrm|Seccomp):' /proc/self/status";

/// mkdir refused, the filter on, and the capabilities as without it: CAP_SYS_ADMIN, kept for
/// loading the filter without no_new_privs, did not survive execve (a user that is not root
/// has none left after execve at all).
fn check_confined(out: &Output, uid: u32, what: &str) -> Result<(), String> {
    let text = &out.stdout;
    let refused = text.contains("Operation not permitted") && !text.lines().any(|l| l == "made");
    check!(refused, "{what}: {text}");
    let caps = if uid == 0 { DEFAULT_CAPS_MASK } else { "0000000000000000" };
    check!(text.contains(&format!("CapEff:\t{caps}")), "{what}: {text}");
    check!(text.contains(&format!("CapPrm:\t{caps}")), "{what}: {text}");
    check!(text.contains("Seccomp:\t2"), "{what}: {text}");
    Ok(())
}

#[test]
fn seccomp_is_loaded_last_with_or_without_no_new_privs() {
    in_child(|| {
        let f = Fixture::new();
        for (uid, no_new_privs) in [(0u32, true), (0, false), (1000, true), (1000, false)] {
            let what = format!("uid {uid}, no_new_privs {no_new_privs}");
            let mut spec = f.spec(&["sh", "-c", SECCOMP_PROBE]);
            spec.linux_mut().as_mut().unwrap().set_seccomp(Some(deny_mkdir()));
            let p = process_mut(&mut spec);
            p.set_no_new_privileges(Some(no_new_privs));
            p.set_user(UserBuilder::default().uid(uid).gid(uid).build().unwrap());
            let out = run(&spec, &f)?;
            check_confined(&out, uid, &what)?;
        }
        // Nothing but execve runs under the filter: a profile may refuse what the executor
        // did before it.
        let mut spec = f.spec(&["sh", "-c", "grep CapEff /proc/self/status"]);
        let refuse_capset: oci_spec::runtime::LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["capset"], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        spec.linux_mut().as_mut().unwrap().set_seccomp(Some(refuse_capset));
        let p = process_mut(&mut spec);
        p.set_no_new_privileges(Some(false));
        let out = run(&spec, &f)?;
        let want = format!("CapEff:\t{DEFAULT_CAPS_MASK}\n");
        check!(out.stdout == want, "stdout {:?} stderr {:?}", out.stdout, out.stderr);
        no_children_left()?;
        no_host_mounts(&f)
    });
}

#[test]
fn an_exec_runs_under_the_containers_filter() {
    in_child(|| {
        let f = Fixture::new();
        let stdio = dev_null();
        let mut spec = f.spec(&["sleep", "1000"]);
        spec.linux_mut().as_mut().unwrap().set_seccomp(Some(deny_mkdir()));
        let created = f.create_quiet(&spec, &stdio)?;
        let (container, host_pid) = (created.pid, created.host_pid);
        start(created).map_err(|e| e.to_string())?;
        let seccomp = deny_mkdir();
        let exec = |filter: Option<&oci_spec::runtime::LinuxSeccomp>| -> Result<Output, String> {
            let (out_r, out_w) = pipe().unwrap();
            let mut p = process(&["sh", "-c", SECCOMP_PROBE]);
            p.set_no_new_privileges(Some(false));
            p.set_user(UserBuilder::default().uid(1000u32).gid(1000u32).build().unwrap());
            let pid = spawn_exec(&ExecRequest {
                container_pid: host_pid,
                cgroup_procs: &[],
                process: &p,
                seccomp: filter,
                stdin: stdio.as_fd(),
                stdout: out_w.as_fd(),
                stderr: stdio.as_fd(),
            })
            .map_err(|e| e.to_string())?;
            drop(out_w);
            let stdout = read_all(out_r);
            Ok(Output { stdout, stderr: String::new(), status: exit_status(pid)? })
        };
        check_confined(&exec(Some(&seccomp))?, 1000, "exec")?;
        let free = exec(None)?;
        // (uid 1000 may not write to /tmp of the fixture: EACCES, from the kernel.)
        let unfiltered =
            free.stdout.contains("Seccomp:\t0") && !free.stdout.contains("not permitted");
        check!(unfiltered, "an exec without the filter: {}", free.stdout);
        nix::sys::signal::kill(container, nix::sys::signal::Signal::SIGKILL).unwrap();
        exit_status(container)?;
        no_children_left()?;
        no_host_mounts(&f)
    });
}

/// Whether a process of the same uid with every capability but `CAP_SYS_PTRACE` (so more
/// than the container's: the ptrace access check's capability rule passes) can read the
/// `/proc/<pid>/exe` and `/proc/<pid>/root` links. Only dumpability is left to decide;
/// `Ok(false)` is EACCES on both.
fn reachable_without_ptrace(pid: u32) -> Result<bool, String> {
    // SAFETY: the child only drops a capability, tries two system calls and _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        ForkResult::Child => {
            let code = (|| {
                caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_PTRACE).ok()?;
                let denied =
                    |e: std::io::Error| (e.raw_os_error() == Some(libc::EACCES)).then_some(());
                let exe = fs::read_link(format!("/proc/{pid}/exe"));
                let root = fs::read_link(format!("/proc/{pid}/root"));
                match (exe, root) {
                    (Ok(_), Ok(_)) => Some(0),
                    (Err(a), Err(b)) => denied(a).and(denied(b)).map(|()| 1),
                    _ => None,
                }
            })()
            .unwrap_or(2);
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match exit_status(child)? {
            0 => Ok(true),
            1 => Ok(false),
            other => Err(format!("probing /proc/{pid}: mixed or unexpected results ({other})")),
        },
    }
}

/// execve makes a process dumpable as it ends, just after it closes the sync socket.
fn becomes_reachable(pid: u32) -> Result<(), String> {
    for _ in 0..100 {
        if reachable_without_ptrace(pid)? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("process {pid} stayed non-dumpable after its execve"))
}

#[test]
fn the_executors_children_are_not_dumpable_until_they_exec() {
    in_child(|| {
        let f = Fixture::new();
        let stdio = dev_null();
        let spec = f.spec(&["sleep", "1000"]);
        let created = f.create_quiet(&spec, &stdio)?;
        let (container, host_pid) = (created.pid, created.host_pid);
        // Created and waiting for its start: a copy of the caller, with the container's
        // capabilities and root as its user.
        check!(!reachable_without_ptrace(host_pid)?, "a created container init is dumpable");
        start(created).map_err(|e| e.to_string())?;
        becomes_reachable(host_pid)?;

        let mut p = process(&["sleep", "1000"]);
        p.set_cwd("/".into());
        let exec = spawn_exec(&ExecRequest {
            container_pid: host_pid,
            cgroup_procs: &[],
            process: &p,
            seccomp: None,
            stdin: stdio.as_fd(),
            stdout: stdio.as_fd(),
            stderr: stdio.as_fd(),
        })
        .map_err(|e| e.to_string())?;
        becomes_reachable(exec.as_raw() as u32)?;

        for pid in [exec, container] {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            exit_status(pid)?;
        }
        no_children_left()?;
        no_host_mounts(&f)
    });
}

/// The pod's user namespace, as `create` would get it: held by a file, mapping the container's
/// 0-65535 to the node's 200000-265535.
const USERNS_BASE: u32 = 200_000;

fn join_userns(spec: &mut Spec, userns: &File) {
    use oci_spec::runtime::LinuxIdMappingBuilder;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(userns));
    let mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(USERNS_BASE)
        .size(65536u32)
        .build()
        .unwrap();
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut namespaces = linux.namespaces().clone().unwrap();
    namespaces.push(
        LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).path(path).build().unwrap(),
    );
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(Some(vec![mapping])).set_gid_mappings(Some(vec![mapping]));
}

#[test]
fn a_container_in_a_user_namespace() {
    use std::os::unix::fs::MetadataExt;
    in_child(|| {
        let f = Fixture::new();
        let range =
            crate::userns::IdMapping { container_id: 0, host_id: USERNS_BASE, length: 65536 };
        let userns = crate::userns::create(&[range], &[range], nix::sched::CloneFlags::empty())
            .map_err(|e| e.to_string())?;
        // As berthd hands it over: the writable layer's root is the pod's root's.
        std::os::unix::fs::chown(&f.rootfs.upper, Some(USERNS_BASE), Some(USERNS_BASE)).unwrap();
        let (plain, mapped) = (f.dir.path().join("plain"), f.dir.path().join("mapped"));
        for dir in [&plain, &mapped] {
            fs::create_dir(dir).unwrap();
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
        }
        let script = "id -u; id -g; stat -c %u:%g /etc/marker / /dev/null /dev; \
            echo x > /etc/marker && stat -c %u /etc/marker; touch /new /plain/p /mapped/m; \
            grep -E '^(Uid|CapEff)' /proc/self/status; \
            mount -t tmpfs t /tmp && echo tmpfs-mounted; \
            umount /proc/kcore 2>/dev/null || echo mask-locked; \
            mount -o remount,rw /sys 2>/dev/null || echo sys-locked; \
            mknod /tmp/disk b 7 0 2>/dev/null || echo no-mknod";
        let mut spec = f.spec(&["sh", "-c", script]);
        join_userns(&mut spec, &userns.user);
        let caps: HashSet<Capability> = DEFAULT_CAPS
            .iter()
            .copied()
            .chain([Capability::SysAdmin, Capability::NetAdmin])
            .collect();
        process_mut(&mut spec).set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()
                .unwrap(),
        ));
        add_mount(&mut spec, mount_entry("/plain", "bind", plain.to_str().unwrap(), &["rbind"]));
        add_mount(
            &mut spec,
            mount_entry("/mapped", "bind", mapped.to_str().unwrap(), &["rbind", "idmap"]),
        );
        let out = run(&spec, &f)?;
        check!(
            out.status == 0,
            "status {} stdout {:?} stderr {:?}",
            out.status,
            out.stdout,
            out.stderr
        );
        let lines: Vec<&str> = out.stdout.lines().collect();
        let expected = ["0", "0", "0:0", "0:0", "0:0", "0:0", "0", "Uid:\t0\t0\t0\t0"];
        check!(
            lines.len() > expected.len() && lines[..expected.len()] == expected,
            "stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        for word in ["tmpfs-mounted", "mask-locked", "sys-locked", "no-mknod"] {
            check!(
                lines.contains(&word),
                "{word}: stdout {:?} stderr {:?}",
                out.stdout,
                out.stderr
            );
        }
        // On the node: the pod's ids on what a plain bind and the writable layer got, the
        // node's own (unmapped) through the idmapped bind; the layer itself untouched.
        let owner = |p: &Path| fs::metadata(p).map(|m| m.uid()).unwrap_or(u32::MAX);
        check!(owner(&plain.join("p")) == USERNS_BASE, "plain bind: {}", owner(&plain.join("p")));
        check!(owner(&mapped.join("m")) == 0, "idmapped bind: {}", owner(&mapped.join("m")));
        check!(
            owner(&f.rootfs.upper.join("new")) == USERNS_BASE,
            "upper: {}",
            owner(&f.rootfs.upper.join("new"))
        );
        check!(owner(&f.rootfs.upper.join("etc/marker")) == USERNS_BASE, "copied up");
        check!(owner(&f.lower().join("etc/marker")) == 0, "a layer was changed");

        // A running one: seen from the node, and an exec into it.
        let stdio = dev_null();
        let mut spec = f.spec(&["sleep", "1000"]);
        join_userns(&mut spec, &userns.user);
        let created = f.create_quiet(&spec, &stdio)?;
        let (container, host_pid) = (created.pid, created.host_pid);
        start(created).map_err(|e| e.to_string())?;
        let status = fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
        check!(status.contains(&format!("Uid:\t{USERNS_BASE}\t")), "from the node: {status}");
        let (out_r, out_w) = pipe().unwrap();
        let pid = spawn_exec(&ExecRequest {
            container_pid: host_pid,
            cgroup_procs: &[],
            process: &process(&["sh", "-c", "id -u; cat /proc/self/uid_map"]),
            seccomp: None,
            stdin: stdio.as_fd(),
            stdout: out_w.as_fd(),
            stderr: stdio.as_fd(),
        })
        .map_err(|e| e.to_string())?;
        drop(out_w);
        let text = read_all(out_r);
        check!(exit_status(pid)? == 0, "exec: {text}");
        let words: Vec<&str> = text.split_whitespace().collect();
        check!(words == ["0", "0", "200000", "65536"], "exec: {text:?}");
        nix::sys::signal::kill(container, nix::sys::signal::Signal::SIGKILL).unwrap();
        exit_status(container)?;
        no_children_left()?;
        no_host_mounts(&f)
    });
}

/// For a runtime that cannot make targets behind a dangling symlink: they are made inside the
/// root, as the symlink resolves there; a destination under an earlier mount's is left alone.
#[test]
fn mount_targets_are_made_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("etc")).unwrap();
    symlink("/inside/dir", root.join("abs")).unwrap();
    symlink("../../../../up", root.join("rel")).unwrap();
    let source_file = dir.path().join("file");
    fs::write(&source_file, "x").unwrap();
    let mount = |destination: &str, typ: &str, source: &Path, options: &[&str]| {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(PathBuf::from(destination))
            .set_typ(Some(typ.to_string()))
            .set_source(Some(source.to_path_buf()))
            .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        m
    };
    let mut spec = Spec::default();
    spec.set_mounts(Some(vec![
        mount("/abs", "bind", dir.path(), &["rbind"]),
        mount("/abs/under", "tmpfs", Path::new("tmpfs"), &[]),
        mount("/rel", "none", dir.path(), &["bind"]),
        mount("/etc/file", "bind", &source_file, &["rbind", "ro"]),
    ]));
    prepare_mount_targets(&root, &spec).unwrap();
    assert!(root.join("inside/dir").is_dir());
    assert!(!root.join("inside/dir/under").exists());
    assert!(root.join("up").is_dir());
    assert!(root.join("etc/file").is_file());
    assert!(!dir.path().join("inside").exists() && !Path::new("/up").exists());
}
