//! Hostile containers and hostile input against the isolation berth promises: a container (or
//! an image) that tries to reach the host through /proc (berth's pod init is pid 1 of a
//! pod-wide PID namespace, and the executor's children pass through it on their way to execve),
//! also with CAP_SYS_PTRACE over the node (granted it, or privileged), on every handler,
//! to overwrite the monitor's binary, to inherit a descriptor, to walk out of its root from an
//! exec, to write the kernel's knobs in /proc and /sys, to make and use device nodes or mount,
//! or to have berth follow an image's link to the node's files. Each case checks that the
//! attempt fails the way the kernel says it must, and that nothing on the node changed.
//!
//! Covered elsewhere, not repeated here (`containers.rs`): a rootfs symlink out of the root as
//! a mount target (`a_symlink_out_of_the_root_as_mount_target_stays_inside`), the capability
//! sets of a container's own process (`capabilities_no_new_privs_and_a_read_only_root`), a
//! seccomp-denied call failing with EPERM (`seccomp_runtime_default_localhost_unconfined_…`).
//!
//! Containers report back through their CRI log or ExecSync output, as in `containers.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_server::proto::{ContainerState, NamespaceMode};
use berth_e2e::berthd::Options;
use berth_e2e::cri::{container, log_messages, pod, read_log, ContainerSpec, Pod};
use berth_e2e::{crafted, images, Berthd, Cri, Node, Registry};
use sha2::{Digest, Sha256};

/// How long a short-lived container may take to run and be reported exited.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// In berthd's environment, so in its monitors' and in every executor child until its execve:
/// a container that can read any of those environments finds it.
const SECRET: &str = "BERTH_E2E_MONITOR_SECRET=do-not-leak-7f3a";

/// `/proc/self/status` lines about capabilities as `key=value`, for [`values`].
const CAPS_AS_VALUES: &str =
    "sed -n -E 's/^(CapInh|CapPrm|CapEff|CapBnd|CapAmb):[[:space:]]*/\\1=/p' /proc/self/status";

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    _daemon: Berthd,
    registry: Registry,
    node: Node,
}

impl Env {
    async fn start() -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        let (key, value) = SECRET.split_once('=').unwrap();
        let options =
            Options { env: vec![(key.to_string(), value.to_string())], ..Default::default() };
        let daemon = Berthd::start_with(&node, options).await;
        let cri = daemon.client().await;
        Env { cri, _daemon: daemon, registry, node }
    }

    /// Pulls a test image (`berth-test/…:tag`) and returns the reference it was pulled by.
    async fn image(&mut self, reference: &str) -> String {
        let name = format!("{}/{reference}", self.registry.addr);
        self.cri.pull(&name).await.unwrap_or_else(|err| panic!("pulling {name}: {err}"));
        name
    }

    /// A host-network pod `name` whose log directory exists, with the PID namespace `pid`.
    async fn run_pod(&mut self, name: &str, pid: NamespaceMode) -> (String, Pod) {
        self.run_pod_on(name, pid, "").await
    }

    /// [`Env::run_pod`] with the runtime handler `handler`.
    async fn run_pod_on(&mut self, name: &str, pid: NamespaceMode, handler: &str) -> (String, Pod) {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        let pod = pod(name)
            .hostname("")
            .host_network()
            .log_directory(logs)
            .pid(pid)
            .runtime_handler(handler);
        let id = self.cri.run_pod(&pod).await.unwrap_or_else(|err| panic!("running {name}: {err}"));
        (id, pod)
    }

    /// The host path of a container's log.
    fn log(&self, pod: &Pod, spec: &ContainerSpec) -> PathBuf {
        Path::new(&pod.config.log_directory).join(&spec.config.log_path)
    }

    /// Runs `spec` in the pod, waits for it to exit, and returns its exit code and the whole
    /// lines of its log.
    async fn run_to_exit(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> (i32, Vec<String>) {
        let id = self.cri.run_container(pod_id, pod, spec).await.expect("running the container");
        let status = self.cri.wait_exited(&id, EXIT_TIMEOUT).await;
        (status.exit_code, log_messages(&read_log(self.log(pod, spec)), None))
    }

    /// ExecSync that must run (whatever its exit code): stdout, stderr, exit code.
    async fn exec(&mut self, id: &str, cmd: &[&str]) -> (String, String, i32) {
        let out = self.cri.exec_sync(id, cmd, 30).await.unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (text(&out.stdout), text(&out.stderr), out.exit_code)
    }

    /// `sh -c script` through ExecSync; panics unless it exits 0.
    async fn sh(&mut self, id: &str, script: &str) -> String {
        let (stdout, stderr, code) = self.exec(id, &["sh", "-c", script]).await;
        assert_eq!(code, 0, "{script}: stdout {stdout:?} stderr {stderr:?}");
        stdout
    }

    /// The host pid of a running container.
    async fn host_pid(&mut self, id: &str) -> u32 {
        let info = self.cri.container_info(id).await;
        info["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("a running container's pid")
    }

    /// A file on the node, outside any container's root, whose path a container can test for.
    fn marker(&self, name: &str) -> PathBuf {
        let path = self.node.dir().join(name);
        std::fs::write(&path, "on the node only\n").unwrap();
        path
    }

    async fn stop_and_remove_pod(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }
}

/// `key=value` lines, trimmed.
fn values(lines: &[String]) -> BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|m| m.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

/// berthd and the monitors' binary (berth-monitor beside it), by hash.
fn binary_hashes() -> Vec<(PathBuf, String)> {
    let berthd = berth_e2e::berthd::binary();
    let monitor = berthd.with_file_name("berth-monitor");
    [berthd.to_path_buf(), monitor].into_iter().map(|p| (p.clone(), sha256(&p))).collect()
}

/// The mount points of the node's mount namespace.
fn node_mount_points(node: &Node) -> Vec<String> {
    let mut points: Vec<String> = node
        .run(&["cat", "/proc/self/mountinfo"])
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
        .collect();
    points.sort();
    points
}

/// For each process of the pod's PID namespace that is the monitor or a copy of it (by its
/// `comm`, which a script's own text cannot fake), every way /proc offers into it: `<pid>
/// <what> <outcome>`, the outcome being `ok` or what the tool printed. The same checks on
/// `/proc/self` come first, as `self`, and must all work: they show that each probe would
/// have got in. (`self` reads its root's /etc/passwd, not /etc/hostname, which berth writes
/// mode 0600: a container's user that is not root cannot read its own.)
///
/// Listing `/proc/<pid>/fd` is not among them: the directory is root's, mode 0500, dumpable or
/// not, so a container running as root lists the descriptor numbers (it can neither read the
/// links nor open them), as under runc.
const PROBE_MONITORS: &str = r#"
probe() {
    who=$1; d=$2; file=$3
    try() {
        what=$1; shift
        if out=$("$@" 2>&1 >/dev/null); then echo "$who $what ok"; else echo "$who $what $out"; fi
    }
    try root-file cat $d/root/$file
    try root-ls ls $d/root/
    try exe-link /bin/busybox readlink -v $d/exe
    try exe-read head -c 4 $d/exe
    try environ cat $d/environ
    try mem-open sh -c "exec 3<$d/mem"
    try cwd-ls ls $d/cwd/
    try fd-links sh -c "for f in $d/fd/0 $d/fd/1 $d/fd/2; do
        /bin/busybox readlink -v \$f || exit 1; done"
    try fd-open sh -c "exec 3<$d/fd/0"
}
probe self /proc/self etc/passwd
for d in /proc/[0-9]*; do
    read -r comm 2>/dev/null <$d/comm || continue
    case $comm in berth-monitor|berth-pod-init|berthd) probe ${d#/proc/} $d etc/hostname;; esac
done
"#;

/// What is wrong in the output of [`PROBE_MONITORS`]: a probe of `/proc/self` that failed, one
/// of another process that got in, or other than two such processes in sight (the pod init as
/// pid 1, and the process of a created container; the monitor is out of sight).
fn probe_failures(report: &str) -> Vec<String> {
    let mut outcomes: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for line in report.lines() {
        let mut parts = line.splitn(3, ' ');
        let (who, what) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        outcomes.entry(who).or_default().push((what, parts.next().unwrap_or("")));
    }
    let mut failures = Vec::new();
    let targets: Vec<&str> = outcomes.keys().copied().filter(|k| *k != "self").collect();
    if targets.len() != 2 || !targets.contains(&"1") {
        failures.push(format!("monitor processes in sight: {targets:?}"));
    }
    for (who, probes) in &outcomes {
        for (what, outcome) in probes {
            // The pod init holds no descriptor 0 to 2 (only its pipe to the monitor).
            let no_stdio = *who == "1"
                && what.starts_with("fd-")
                && outcome.to_lowercase().contains("no such file");
            let right = if *who == "self" {
                *outcome == "ok"
            } else {
                outcome.contains("Permission denied") || no_stdio
            };
            if !right {
                failures.push(format!("{who}: {what}: {outcome}"));
            }
        }
    }
    if report.contains(SECRET.split_once('=').unwrap_or_default().1) {
        failures.push("the monitor's environment leaked".to_string());
    }
    failures
}

#[tokio::test]
async fn the_monitor_and_an_unstarted_container_are_out_of_reach_in_a_shared_pid_namespace() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("shared-pid", NamespaceMode::Pod).await;
    let pid_pod = |name: &str, cmd: &[&str]| {
        container(name, &image).command(cmd).pid_mode(NamespaceMode::Pod)
    };
    let attacker = env
        .cri
        .run_container(&pod_id, &pod, &pid_pod("attacker", &["sleep", "3600"]))
        .await
        .unwrap();
    let user_spec = pid_pod("attacker-user", &["sleep", "3600"]).run_as_user(1000);
    let user_attacker = env.cri.run_container(&pod_id, &pod, &user_spec).await.unwrap();
    // Created, not started: its process waits for the start byte, set up but for seccomp,
    // with the container's capabilities and user, still a copy of the monitor.
    let waiting = env
        .cri
        .create_container(&pod_id, &pod, &pid_pod("waiting", &["sleep", "2222"]))
        .await
        .unwrap();

    for (who, id) in [("root", &attacker), ("uid 1000", &user_attacker)] {
        let report = env.sh(id, PROBE_MONITORS).await;
        let failures = probe_failures(&report);
        assert!(
            failures.is_empty(),
            "{who}: {}\n\nthe whole report:\n{report}",
            failures.join("\n")
        );
    }

    // Once started, the container's process is a program of its own, and as reachable from
    // its neighbours as any (and as `ps` needs).
    env.cri.start_container(&waiting).await.unwrap();
    let ps = env.sh(&attacker, "ps -o pid,args").await;
    let pid = ps
        .lines()
        .find(|l| l.trim_end().ends_with("sleep 2222"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the started container is not in sight: {ps}"))
        .to_string();
    let seen = env
        .sh(
            &attacker,
            &format!("/bin/busybox readlink /proc/{pid}/exe; grep -c PATH= /proc/{pid}/environ"),
        )
        .await;
    assert_eq!(seen, "/bin/busybox\n1\n");

    env.stop_and_remove_pod(&pod_id).await;
}

/// Runs in a container until `/tmp/stop` exists: every process in sight is probed for a way
/// out through /proc, without forking (builtins only) so that a round is quick. Any success
/// prints a `LEAK` line (`true`, not `:`, takes the redirections: a failed redirection of a
/// special builtin ends the shell). The exe of every process of the container is busybox, so
/// an exe that can be looked at and is something else is the monitor's binary: an executor
/// child caught before its execve.
fn hammer_script(marker: &Path) -> String {
    format!(
        r#"m={marker}; n=0
while [ ! -e /tmp/stop ]; do
    for d in /proc/[0-9]*; do
        if true 2>/dev/null >>$d/exe; then echo "LEAK opened $d/exe for writing"; fi
        if [ -e $d/root$m ]; then echo "LEAK the node's root through $d/root"; fi
        if [ -e $d/cwd$m ]; then echo "LEAK the node's root through $d/cwd"; fi
        if [ -e $d/exe ] && ! [ $d/exe -ef /bin/busybox ] && [ -e $d/exe ]; then
            echo "LEAK $d/exe is not busybox"
        fi
    done
    n=$((n+1))
done
echo "rounds=$n"
"#,
        marker = marker.display()
    )
}

#[tokio::test]
async fn execs_under_a_container_probing_proc_reach_nothing() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let hashes = binary_hashes();
    let marker = env.marker("hammer-marker");
    let (pod_id, pod) = env.run_pod("hammer", NamespaceMode::Pod).await;
    let spec = container("hammer", &image)
        .log_path("hammer.log")
        .pid_mode(NamespaceMode::Pod)
        .shell(&hammer_script(&marker));
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();

    // Execs that exec, and execs whose setup ends before execve (no such command).
    for n in 0..50 {
        let cmd: &[&str] = match n % 3 {
            0 => &["true"],
            1 => &["sh", "-c", "echo $$"],
            _ => &["no-such-command"],
        };
        let (_, stderr, code) = env.exec(&id, cmd).await;
        let want = if n % 3 == 2 { 127 } else { 0 };
        assert_eq!(code, want, "exec {n} {cmd:?}: {stderr}");
    }
    env.exec(&id, &["touch", "/tmp/stop"]).await;
    let status = env.cri.wait_exited(&id, EXIT_TIMEOUT).await;
    let messages = log_messages(&read_log(env.log(&pod, &spec)), None);
    assert_eq!(status.exit_code, 0, "{messages:?}");
    let leaks: Vec<&String> = messages.iter().filter(|m| m.starts_with("LEAK")).collect();
    assert!(leaks.is_empty(), "{leaks:?}");
    let rounds: u64 = values(&messages).get("rounds").and_then(|r| r.parse().ok()).unwrap_or(0);
    assert!(rounds > 0, "the probe never went round: {messages:?}");
    assert_eq!(binary_hashes(), hashes, "berthd or berth-monitor changed");

    env.stop_and_remove_pod(&pod_id).await;
}

/// `ls -l /proc/self/fd` parsed into fd → target, less `ls`'s own descriptor of the directory
/// it lists.
fn fds_of_ls(output: &str) -> BTreeMap<u32, String> {
    output
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter_map(|(left, target)| {
            let fd = left.split_whitespace().last()?.parse().ok()?;
            Some((fd, target.to_string()))
        })
        .filter(|(fd, target)| {
            !(*fd > 2 && target.starts_with("/proc/") && target.ends_with("/fd"))
        })
        .collect()
}

#[tokio::test]
async fn a_container_and_an_exec_have_only_stdio_open() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("fds", NamespaceMode::Pod).await;
    let stdio: BTreeSet<u32> = [0, 1, 2].into();

    // Two containers, so that the monitor holds another's pipes too when it makes each.
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let spec = container(name, &image).command(&["sleep", "3600"]).pid_mode(NamespaceMode::Pod);
        ids.push(env.cri.run_container(&pod_id, &pod, &spec).await.unwrap());
    }
    for id in &ids {
        let pid = env.host_pid(id).await;
        let open: BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        assert_eq!(open, stdio, "the container's process {pid}");
        let (out, err, code) = env.exec(id, &["ls", "-l", "/proc/self/fd"]).await;
        assert_eq!(code, 0, "{err}");
        let fds = fds_of_ls(&out);
        assert_eq!(fds.keys().copied().collect::<BTreeSet<_>>(), stdio, "an exec: {out}");
    }
    // The container's own program sees the same from inside.
    let spec = container("own", &image)
        .log_path("own.log")
        .pid_mode(NamespaceMode::Pod)
        .command(&["ls", "-l", "/proc/self/fd"]);
    let (code, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(code, 0, "{messages:?}");
    let fds = fds_of_ls(&messages.join("\n"));
    assert_eq!(fds.keys().copied().collect::<BTreeSet<_>>(), stdio, "{messages:?}");

    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test]
async fn an_exec_stays_in_the_containers_root() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let marker = env.marker("exec-root-marker");
    let (pod_id, pod) = env.run_pod("exec-root", NamespaceMode::Pod).await;
    let spec = container("c", &image)
        .command(&["sleep", "3600"])
        .working_dir("/w")
        .pid_mode(NamespaceMode::Pod);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let root = env.sh(&id, "ls /").await;
    let host_root = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<BTreeSet<_>>();
    assert_ne!(lines(&root).into_iter().collect::<BTreeSet<_>>(), host_root);

    let m = marker.display();
    let script = format!(
        "test -e {m} && echo marker=present || echo marker=absent; \
         cd /..; echo up=$(pwd); ls; cd ../../../../..; ls; cd -P /proc/self/root/..; ls"
    );
    let out = env.sh(&id, &script).await;
    assert_eq!(out, format!("marker=absent\nup=/\n{root}{root}{root}"));

    // The working directory an exec starts in, replaced by a link that climbs out.
    env.sh(&id, "cd / && rmdir /w && /bin/busybox ln -s ../../../../../../.. /w").await;
    let out = env.sh(&id, &format!("pwd; test -e .{m} && echo present; ls")).await;
    assert_eq!(out, format!("/\n{root}"), "through ../..");

    // … or by a link to the monitor's root, which is the node's: the exec is refused (its
    // chdir is made with the container's capabilities, to a process it cannot look into).
    env.sh(&id, "rm /w && /bin/busybox ln -s /proc/1/root /w").await;
    let err = env
        .cri
        .exec_sync(&id, &["sh", "-c", &format!("pwd; ls; cat .{m}")], 30)
        .await
        .expect_err("an exec started in the node's root");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("changing to the working directory /w: permission denied"),
        "{err:?}"
    );
    env.stop_and_remove_pod(&pod_id).await;
}

/// Every regular file under the given globs (two levels) is opened for writing with `: >`
/// (O_TRUNC, which these files ignore, and nothing written): `writable <path>` for one that
/// opens, `refused <path>: <error>` otherwise, and `count=<n>`.
const OPEN_FOR_WRITING: &str = r#"
n=0
for f in /proc/sys/kernel/* /proc/sys/kernel/*/* /proc/sysrq-trigger \
         /sys/kernel/* /sys/kernel/*/* /sys/fs/cgroup/*/*; do
    [ -f "$f" ] || continue
    n=$((n+1))
    if err=$( (: >"$f") 2>&1 ); then echo "writable $f"; else echo "refused $f: $err"; fi
done
echo "count=$n"
"#;

/// Host files a write would change, what the container writes to each, and a harmless
/// value for it.
fn knobs() -> Vec<(&'static str, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
    let toggle = |p: &str| if read(p) == "0" { "1".to_string() } else { "0".to_string() };
    let ratelimit: u64 = read("/proc/sys/kernel/printk_ratelimit").parse().unwrap();
    vec![
        ("/proc/sys/kernel/printk_ratelimit", (ratelimit + 1).to_string()),
        // `h` only prints the help into the kernel log, if it were ever let through.
        ("/proc/sysrq-trigger", "h".to_string()),
        ("/sys/kernel/rcu_expedited", toggle("/sys/kernel/rcu_expedited")),
    ]
    .into_iter()
    // A kernel without magic SysRq has no trigger.
    .filter(|(path, _)| Path::new(path).exists())
    .collect()
}

#[tokio::test]
async fn proc_and_sys_cannot_be_written_by_an_unprivileged_container() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("knobs", NamespaceMode::Pod).await;
    let knobs = knobs();
    let host_values = |knobs: &[(&str, String)]| -> Vec<String> {
        knobs
            .iter()
            .filter(|(p, _)| !p.ends_with("trigger"))
            .map(|(p, _)| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    let before = host_values(&knobs);
    let writes: String = knobs
        .iter()
        .map(|(path, value)| format!("(echo {value} > {path}) 2>&1; echo {path}=$?;"))
        .collect();

    let spec = container("knobs", &image)
        .log_path("knobs.log")
        .shell(&format!("{OPEN_FOR_WRITING}\n{writes}"));
    let (code, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(code, 0, "{messages:?}");
    let got = values(&messages);
    let count: usize = got.get("count").and_then(|c| c.parse().ok()).unwrap_or(0);
    assert!(count > 100, "only {count} files tried: {messages:?}");
    let wrong: Vec<&String> = messages
        .iter()
        .filter(|m| {
            m.starts_with("writable")
                || (m.starts_with("refused") && !m.ends_with("Read-only file system"))
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    for (path, _) in &knobs {
        assert_eq!(got.get(*path).map(String::as_str), Some("1"), "{path}: {messages:?}");
        let said = format!("can't create {path}: Read-only file system");
        assert!(messages.iter().any(|m| m.ends_with(&said)), "{path}: {messages:?}");
    }
    let after = host_values(&knobs);
    if after != before {
        // Put the node back before failing.
        for ((path, _), value) in knobs.iter().filter(|(p, _)| !p.ends_with("trigger")).zip(&before)
        {
            let _ = std::fs::write(path, value);
        }
    }
    assert_eq!(after, before, "a host value changed");

    env.stop_and_remove_pod(&pod_id).await;
}

/// The first disk of the host, as `(name, major, minor)` from /proc/partitions.
fn host_disk() -> (String, u32, u32) {
    let text = std::fs::read_to_string("/proc/partitions").unwrap();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(3)?.to_string(), f.first()?.parse().ok()?, f.get(1)?.parse().ok()?))
        })
        .find(|(name, ..)| !name.starts_with("loop") && !name.starts_with("ram"))
        .expect("a disk in /proc/partitions")
}

/// `try <name> <command…>`: runs the command and prints `<name>=<status> <its stderr>`.
const TRY: &str = r#"try() { name=$1; shift; out=$("$@" 2>&1 >/dev/null); echo "$name=$? $out"; }"#;

#[tokio::test]
async fn a_block_device_cannot_be_used_and_nothing_can_be_mounted() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("devices", NamespaceMode::Pod).await;
    let (_, major, minor) = host_disk();
    let mounts_before = node_mount_points(&env.node);

    // As runc: CAP_MKNOD and the device cgroup's `b *:* m` let the node be made, but the
    // device cgroup refuses opening it for reading or writing (nothing is written: `: >>`).
    let script = format!(
        "{TRY}
        try mknod mknod /tmp/disk b {major} {minor}
        try read head -c 512 /tmp/disk
        try write sh -c ': >>/tmp/disk'
        mkdir /tmp/m
        try tmpfs mount -t tmpfs none /tmp/m
        try bind mount -o bind / /tmp/m
        try proc mount -t proc proc /tmp/m
        try cgroup mount -t cgroup -o memory none /tmp/m
        try remount mount -o remount,rw /proc/sys
        try umount /bin/busybox umount /proc/sys
        echo mnt=$(grep -c ' /tmp/m ' /proc/self/mountinfo)"
    );
    let spec = container("root", &image).log_path("root.log").shell(&script);
    let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    let got = values(&messages);
    let eperm = "Operation not permitted";
    // busybox mount says EPERM its own way.
    let mount_eperm = "permission denied";
    // (step, None to succeed or what its failure must say)
    let want = [
        ("mknod", None),
        ("read", Some(eperm)),
        ("write", Some(eperm)),
        ("tmpfs", Some(mount_eperm)),
        ("bind", Some(mount_eperm)),
        ("proc", Some(mount_eperm)),
        ("cgroup", Some(mount_eperm)),
        ("remount", Some(mount_eperm)),
        ("umount", Some(eperm)),
    ];
    let mut wrong: Vec<String> = want
        .iter()
        .filter(|(key, want)| {
            let value = got.get(*key).map(String::as_str).unwrap_or("<none>");
            let succeeded = value.split(' ').next() == Some("0");
            match want {
                None => !succeeded,
                Some(text) => succeeded || !value.contains(text),
            }
        })
        .map(|(key, _)| format!("{key}: {:?}", got.get(*key)))
        .collect();
    if got.get("mnt").map(String::as_str) != Some("0") {
        wrong.push(format!("mounted on /tmp/m: {:?}", got.get("mnt")));
    }
    assert!(wrong.is_empty(), "{wrong:?} in {messages:?}");

    // Without CAP_MKNOD (dropped, or a user that is not root) the node cannot even be made.
    let script = format!("{TRY}\ntry mknod mknod /tmp/disk b {major} {minor}");
    for (name, spec) in [
        ("no-mknod", container("no-mknod", &image).capabilities(&[], &["MKNOD"])),
        ("user", container("user", &image).run_as_user(1000)),
    ] {
        let spec = spec.log_path(&format!("{name}.log")).shell(&script);
        let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
        let got = values(&messages);
        let value = got.get("mknod").map(String::as_str).unwrap_or("<none>");
        let succeeded = value.split(' ').next() == Some("0");
        assert!(!succeeded && value.contains(eperm), "{name}: {messages:?}");
    }
    assert_eq!(node_mount_points(&env.node), mounts_before, "a mount reached the node");

    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test]
async fn an_exec_has_the_containers_capabilities_and_no_more() {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("exec-caps", NamespaceMode::Pod).await;
    // containerd's default set; nothing.
    let default = "00000000a80425fb";
    let none = "0000000000000000";
    let rows = [
        ("default", container("default", &image), [none, default, default, default, none]),
        (
            "drop ALL",
            container("drop-all", &image).capabilities(&[], &["ALL"]),
            [none, none, none, none, none],
        ),
        (
            "a user that is not root",
            container("user", &image).run_as_user(1000),
            [none, none, none, default, none],
        ),
    ];
    let keys = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];
    let mut failures = Vec::new();
    for (what, spec, want) in rows {
        let name = spec.config.metadata.as_ref().unwrap().name.clone();
        let spec = spec
            .log_path(&format!("{name}.log"))
            .shell(&format!("{CAPS_AS_VALUES}; exec sleep 3600"));
        let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
        let from_exec = values(&lines(&env.sh(&id, CAPS_AS_VALUES).await));
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let from_init = loop {
            let got = values(&log_messages(&read_log(env.log(&pod, &spec)), None));
            if got.len() == keys.len() || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (source, got) in [("exec", &from_exec), ("container", &from_init)] {
            for (key, want) in keys.iter().zip(want) {
                let value = got.get(*key).map(String::as_str);
                if value != Some(want) {
                    failures.push(format!("{what}, {source}: {key} is {value:?}, not {want}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.stop_and_remove_pod(&pod_id).await;
}

#[tokio::test]
async fn an_image_passwd_linked_out_of_the_root_is_read_inside_the_image() {
    let mut env = Env::start().await;
    let hostile = crafted::passwd_link();
    let addr = env.registry.addr.clone();
    env.node.block_on(|| images::push_image(&addr, hostile)).expect("pushing passwd-link");
    let image = env.image(hostile.reference).await;
    // The node's own /etc/shadow, as the node's mount namespace sees it, also knows the user,
    // with other ids: following the link out of the image would show.
    let fake = env.node.dir().join("node-shadow");
    std::fs::write(&fake, format!("{}:x:6666:6666::/:/bin/sh\n", crafted::PASSWD_LINK_USER))
        .unwrap();
    let shadow = sha256(Path::new("/etc/shadow"));
    env.node.run(&["mount", "--bind", &fake.display().to_string(), "/etc/shadow"]);
    let (pod_id, pod) = env.run_pod("passwd-link", NamespaceMode::Pod).await;

    let spec =
        container("c", &image).log_path("c.log").shell("echo uid=$(id -u) gid=$(id -g); id -un");
    let id = env.cri.create_container(&pod_id, &pod, &spec).await.expect("CreateContainer");
    let status = env.cri.container(&id).await;
    let user = status.user.and_then(|u| u.linux).map(|u| (u.uid, u.gid));
    let want = i64::from(crafted::PASSWD_LINK_ID);
    assert_eq!(user, Some((want, want)));
    env.cri.start_container(&id).await.unwrap();
    let status = env.cri.wait_exited(&id, EXIT_TIMEOUT).await;
    assert_eq!(status.state(), ContainerState::ContainerExited);
    let messages = log_messages(&read_log(env.log(&pod, &spec)), None);
    assert_eq!(
        messages,
        [format!("uid={want} gid={want}"), crafted::PASSWD_LINK_USER.to_string()],
        "{status:?}"
    );

    env.stop_and_remove_pod(&pod_id).await;
    env.node.run(&["umount", "/etc/shadow"]);
    assert_eq!(sha256(Path::new("/etc/shadow")), shadow, "the host's /etc/shadow changed");
}

/// What a container finds of pid 1 (`key=<exit code> [<output>]` lines), through every way
/// /proc offers into another process's files, and every process in sight whose root or working
/// directory leads to the node's marker file `$1`.
const PROBE_PID_1: &str = r#"
m=$1
try() {
    what=$1; shift
    out=$("$@" 2>&1); rc=$?
    echo "$what=$rc [$(printf %s "$out" | tr '\n' ' ')]"
}
echo "comm=$(cat /proc/1/comm)"
try root ls -A /proc/1/root/
try root-up ls -A /proc/1/root/../../
try cwd ls -A /proc/1/cwd/
try environ cat /proc/1/environ
try exe-dir ls /proc/1/exe/../
for d in /proc/[0-9]*; do
    [ -e $d/root$m ] && echo "LEAK the node's root through $d/root"
    [ -e $d/cwd$m ] && echo "LEAK the node's root through $d/cwd"
    [ -e $d/root/..$m ] && echo "LEAK the node's root through $d/root/.."
    read -r comm 2>/dev/null <$d/comm &&
        case $comm in berth-monitor|berthd) echo "LEAK $d is $comm";; esac
done
true
"#;

/// A container holding CAP_SYS_PTRACE over the node, granted it or privileged, in a pod-wide PID
/// namespace without a user namespace of its own: the kernel's ptrace rule lets it into every
/// process of its namespace, non-dumpable or not. Pid 1, berth's pod init, has only an empty
/// read-only root and no environment to show it (a chroot would let `..` walk out, which the
/// pod init's detached old root does not), and the monitor, whose root is the node's, is out of
/// sight in the node's PID namespace.
async fn pid_1_gives_a_container_with_cap_sys_ptrace_nothing_of_the_node(handler: &'static str) {
    let mut env = Env::start().await;
    let image = env.image(images::OCI_REF).await;
    let marker = env.marker("ptrace-marker");
    let (pod_id, pod) = env.run_pod_on("ptrace", NamespaceMode::Pod, handler).await;
    let sleeper = |name: &str| {
        container(name, &image).command(&["sleep", "3600"]).pid_mode(NamespaceMode::Pod)
    };
    let specs = [
        ("granted", sleeper("granted").capabilities(&["SYS_PTRACE"], &[])),
        ("privileged", sleeper("privileged").privileged()),
    ];
    for (who, spec) in specs {
        let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
        let caps = values(&lines(&env.sh(&id, CAPS_AS_VALUES).await));
        let effective = u64::from_str_radix(&caps["CapEff"], 16).unwrap();
        assert!(effective & (1 << 19) != 0, "{who}: no CAP_SYS_PTRACE: {caps:?}");
        let marker = marker.display().to_string();
        let (report, stderr, code) =
            env.exec(&id, &["sh", "-c", PROBE_PID_1, "probe", &marker]).await;
        assert_eq!(code, 0, "{who}: {report} {stderr}");
        let expected =
            ["comm=berth-pod-init", "root=0 []", "root-up=0 []", "cwd=0 []", "environ=0 []"];
        let report_lines: Vec<&str> = report.lines().collect();
        for line in expected {
            assert!(report_lines.contains(&line), "{who}: no {line:?} in\n{report}");
        }
        let exe_dir = report_lines.iter().find(|l| l.starts_with("exe-dir=")).unwrap();
        assert!(!exe_dir.starts_with("exe-dir=0 "), "{who}: {exe_dir}");
        assert!(!report.contains("LEAK"), "{who}:\n{report}");
        assert!(!report.contains(SECRET.split_once('=').unwrap().1), "{who}:\n{report}");
    }
    env.stop_and_remove_pod(&pod_id).await;
}

berth_e2e::handler_cases!(pid_1_gives_a_container_with_cap_sys_ptrace_nothing_of_the_node);
