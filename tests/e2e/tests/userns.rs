//! Pods in user namespaces of their own (`hostUsers: false`), over the real socket: the
//! kubelet's mappings, root inside that is an unprivileged user on the node, volumes plain and
//! idmapped, capabilities that stop at the pod, the errors, and a berthd killed and restarted
//! under such a pod.
//!
//! The cases run once per runtime handler, with the same expectations, as the container suite
//! does (`cases!` at the end): the embedded executor and runc; crun 1.8, which does not claim
//! user namespaces, has them refused (`handlers::refuses_user_namespaces`) except where the
//! pod keeps the node's. What a handler says in Status and the refusals that do not depend on
//! it are tested once.
//!
//! Such pods cannot share the node's network, so they get the bridge network of `cni.rs`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_cri_server::proto::{
    AttachRequest, ContainerState, IdMapping, Mount, NamespaceMode, StatusRequest, UserNamespace,
};
use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::cri::{bind, container, log_messages, pod, read_log, ContainerSpec, Pod};
use berth_e2e::images;
use berth_e2e::streaming::{self, Input};
use berth_e2e::{Berthd, Cri, Node, Registry};
use nix::sys::signal::Signal;
use tonic::Code;

/// The size of a pod's range, as the kubelet allocates it.
const RANGE: u32 = 65536;
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    _registry: Registry,
    net: BridgeNetwork,
    node: Node,
    image: String,
    handler: &'static str,
}

impl Env {
    async fn start(handler: &'static str) -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        let daemon = Berthd::start_with(&node, Options::default()).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        let image = format!("{addr}/{}", images::OCI_REF);
        cri.pull(&image).await.unwrap_or_else(|err| panic!("pulling {image}: {err}"));
        Env { cri, daemon, _registry: registry, net, node, image, handler }
    }

    /// The environment, for a handler that claims user namespaces; for one that does not
    /// (crun 1.8, see `handlers::refuses_user_namespaces`), None once a pod in a user namespace
    /// was refused on it with the reason.
    async fn start_claimed(handler: &'static str) -> Option<Env> {
        let mut env = Env::start(handler).await;
        let pod = env.pod("refused", 26 * RANGE);
        match berth_e2e::handlers::refuses_user_namespaces(&mut env.cri, handler, &pod).await {
            true => None,
            false => Some(env),
        }
    }

    /// A pod of the test's handler in a user namespace of its own: the node's uids and gids
    /// from `base` on are the pod's from 0, as the kubelet gives one range of 65536 to a pod.
    /// A PID namespace per container, as the kubelet asks without `shareProcessNamespace`.
    fn pod(&self, name: &str, base: u32) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        let range = [IdMapping { host_id: base, container_id: 0, length: RANGE }];
        let pod = pod(name).log_directory(logs).runtime_handler(self.handler);
        pod.pid(NamespaceMode::Container).userns(&range, &range)
    }

    async fn run_pod(&mut self, pod: &Pod) -> String {
        let name = &pod.config.metadata.as_ref().unwrap().name;
        self.cri.run_pod(pod).await.unwrap_or_else(|err| panic!("running pod {name}: {err}"))
    }

    /// A container that sleeps, as the kubelet would create it in `pod` (with the pod's
    /// user namespace options repeated).
    fn sleeper(&self, name: &str, pod: &Pod) -> ContainerSpec {
        let mut spec = container(name, &self.image)
            .command(&["sleep", "1000"])
            .pid_mode(NamespaceMode::Container);
        let pod_options = pod_userns(pod).cloned();
        spec.config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
            .expect("container namespace options")
            .userns_options = pod_options;
        spec
    }

    async fn run(&mut self, pod_id: &str, pod: &Pod, spec: &ContainerSpec) -> String {
        let name = &spec.config.metadata.as_ref().unwrap().name;
        self.cri
            .run_container(pod_id, pod, spec)
            .await
            .unwrap_or_else(|err| panic!("running container {name}: {err}"))
    }

    /// ExecSync of a shell script that must succeed; its stdout.
    async fn sh(&mut self, id: &str, script: &str) -> String {
        let out = self.cri.exec_sync(id, &["sh", "-c", script], 20).await.expect("ExecSync");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.exit_code, 0, "{script}: stdout {stdout:?} stderr {stderr:?}");
        stdout.into_owned()
    }

    /// ExecSync of a shell script that must fail; its stderr.
    async fn sh_fails(&mut self, id: &str, script: &str) -> String {
        let out = self.cri.exec_sync(id, &["sh", "-c", script], 20).await.expect("ExecSync");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_ne!(
            out.exit_code,
            0,
            "{script} succeeded: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// The uid and gid lines of `/proc/<pid>/status` as the node sees a container's process.
    async fn node_ids(&mut self, id: &str) -> (Vec<u32>, Vec<u32>) {
        let info = self.cri.container_info(id).await;
        let pid = info["pid"].as_u64().expect("the container's pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            let line = status.lines().find(|l| l.starts_with(key)).expect("Uid/Gid lines");
            line.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect()
        };
        (ids("Uid:"), ids("Gid:"))
    }

    /// A scratch directory on the node with `mode`, owned by the node's root.
    fn dir(&self, name: &str, mode: u32) -> PathBuf {
        let dir = self.node.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    async fn stop_and_remove_pod(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }

    /// Nothing of any pod is left mounted (idmapped binds and rootfs included) or recorded.
    fn assert_nothing_left(&self) {
        let state = self.daemon.state.display().to_string();
        let mounted: Vec<String> = self
            .node
            .run(&["cat", "/proc/self/mountinfo"])
            .lines()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&state) && !p.ends_with("/pods"))
            .collect();
        assert_eq!(mounted, Vec::<String>::new(), "mounts left");
        let entries = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(entries(&self.daemon.root.join("containers")), 0, "containers left");
        assert_eq!(entries(&self.daemon.root.join("pods")), 0, "pods left");
        assert_eq!(self.net.leases(), Vec::<String>::new(), "leases left");
    }
}

fn pod_userns(pod: &Pod) -> Option<&UserNamespace> {
    pod.config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()?
        .userns_options
        .as_ref()
}

fn idmapped(mount: Mount, base: u32) -> Mount {
    let range = vec![IdMapping { host_id: base, container_id: 0, length: RANGE }];
    Mount { uid_mappings: range.clone(), gid_mappings: range, ..mount }
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid())
}

/// The container's root is uid 0 inside and the pod's first uid on the node; ContainerStatus
/// says what the container sees; /proc, /sys and /dev work for it; the image's files are its
/// root's, its own writes too, and the image's layers are left as they were.
async fn root_inside_is_the_mapped_user_outside(handler: &'static str) {
    let Some(mut env) = Env::start_claimed(handler).await else { return };
    let base = 7 * RANGE;
    let pod = env.pod("mapped", base);
    let pod_id = env.run_pod(&pod).await;
    let status = env.cri.pod_status(&pod_id, false).await.unwrap().status.unwrap();
    let shown = status.linux.unwrap().namespaces.unwrap().options.unwrap().userns_options;
    assert_eq!(shown.as_ref(), pod_userns(&pod), "PodSandboxStatus");

    let id = env.run(&pod_id, &pod, &env.sleeper("root", &pod)).await;
    let user = env.cri.container(&id).await.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (0, 0), "ContainerStatus.user is the container's view");
    assert_eq!(env.node_ids(&id).await, (vec![base; 4], vec![base; 4]), "seen from the node");
    assert_eq!(env.sh(&id, "id -u; id -g").await, "0\n0\n");
    let maps = env.sh(&id, "cat /proc/self/uid_map /proc/self/gid_map").await;
    let words: Vec<&str> = maps.split_whitespace().collect();
    let (b, r) = (base.to_string(), RANGE.to_string());
    assert_eq!(words, ["0", b.as_str(), r.as_str(), "0", b.as_str(), r.as_str()]);
    // The image's files are its root's, through the idmapped layers; what it writes too.
    assert_eq!(env.sh(&id, "stat -c %u:%g /bin/busybox /etc/passwd /").await, "0:0\n0:0\n0:0\n");
    env.sh(&id, "echo changed > /etc/berth/kept && touch /new && test -w /tmp").await;
    assert_eq!(env.sh(&id, "stat -c %u /new /etc/berth/kept").await, "0\n0\n");
    // /proc, /sys (the pod's network), /dev.
    let seen = env
        .sh(
            &id,
            "ls /proc/1/ns >/dev/null && cat /proc/1/comm; \
                   ls /sys/class/net; echo x > /dev/null && echo null; \
                   head -c4 /dev/urandom | wc -c; ls /dev/pts/ptmx /dev/shm /dev/mqueue",
        )
        .await;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "sleep", "{seen}");
    assert!(lines.contains(&"eth0") && lines.contains(&"lo"), "the pod's interfaces: {seen}");
    assert!(seen.contains("\nnull\n4\n"), "{seen}");
    // A user of the image is the node's base + its uid.
    let user_spec = env.sleeper("user", &pod).run_as_user(1000).run_as_group(2000);
    let user_id = env.run(&pod_id, &pod, &user_spec).await;
    let status = env.cri.container(&user_id).await.user.unwrap().linux.unwrap();
    assert_eq!((status.uid, status.gid), (1000, 2000));
    let (uids, gids) = env.node_ids(&user_id).await;
    assert_eq!((uids[0], gids[0]), (base + 1000, base + 2000));
    assert_eq!(env.sh(&user_id, "id -u").await, "1000\n");

    // The layers are untouched: a fresh container of the same image sees the original file.
    let layers = env.daemon.root.join("images/snapshots");
    let on_disk: Vec<u32> = walk_owners(&layers);
    assert!(on_disk.iter().all(|uid| *uid < base), "a layer was chowned: {on_disk:?}");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

fn walk_owners(dir: &Path) -> Vec<u32> {
    let mut owners = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.path().symlink_metadata().unwrap();
            owners.push(meta.uid());
            if meta.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    owners.sort_unstable();
    owners.dedup();
    owners
}

/// A plain bind: what the container writes is the pod's on the node, and the node's files
/// are nobody's inside. An idmapped bind (the pod's mappings, as the kubelet asks for volumes):
/// the node's root's files are the container's root's, and what it writes lands as the node's
/// root's, so another pod with another range sees it the same.
async fn files_on_plain_and_idmapped_binds(handler: &'static str) {
    let Some(mut env) = Env::start_claimed(handler).await else { return };
    let base = 9 * RANGE;
    let (plain, mapped) = (env.dir("plain", 0o777), env.dir("mapped", 0o755));
    std::fs::write(mapped.join("from-node"), "node\n").unwrap();
    std::fs::write(plain.join("from-node"), "node\n").unwrap();
    let pod = env.pod("binds", base);
    let pod_id = env.run_pod(&pod).await;
    // With CRI mount options, which the remount of an idmapped bind takes too.
    let options = |list: &[&str]| list.iter().map(|o| o.to_string()).collect::<Vec<_>>();
    let spec = env
        .sleeper("binds", &pod)
        .mount(Mount { mount_options: options(&["nodev"]), ..bind(&plain, "/plain") })
        .mount(Mount {
            mount_options: options(&["noexec", "nosuid"]),
            ..idmapped(bind(&mapped, "/mapped"), base)
        });
    let id = env.run(&pod_id, &pod, &spec).await;
    let flags =
        env.sh(&id, "awk '$5 ~ /^\\/(plain|mapped)$/ { print $5, $6 }' /proc/self/mountinfo").await;
    let flags_of = |path: &str| -> Vec<String> {
        let line = flags.lines().find(|l| l.starts_with(&format!("{path} "))).unwrap_or("");
        line.split([' ', ',']).skip(1).map(str::to_string).collect()
    };
    assert!(flags_of("/plain").contains(&"nodev".to_string()), "{flags}");
    let mapped_flags = flags_of("/mapped");
    assert!(["noexec", "nosuid"].iter().all(|f| mapped_flags.contains(&f.to_string())), "{flags}");
    let status = env.cri.container(&id).await;
    let shown = status.mounts.iter().find(|m| m.container_path == "/mapped").unwrap();
    assert_eq!(shown.uid_mappings.len(), 1, "ContainerStatus keeps the mappings: {shown:?}");

    env.sh(&id, "echo pod > /plain/from-pod && echo pod > /mapped/from-pod").await;
    assert_eq!(owner(&plain.join("from-pod")), (base, base), "plain bind");
    assert_eq!(owner(&mapped.join("from-pod")), (0, 0), "idmapped bind");
    let inside = env.sh(&id, "stat -c %u /plain/from-node /mapped/from-node /mapped").await;
    assert_eq!(inside, "65534\n0\n0\n", "the node's root, inside");
    // The node's root's directory is the container's root's only when idmapped.
    env.sh_fails(&id, "chmod 700 /plain").await;
    env.sh(&id, "chmod 700 /mapped && chmod 755 /mapped").await;

    // A second pod with another range sees the idmapped volume the same way.
    let other_base = 11 * RANGE;
    let other = env.pod("binds2", other_base);
    let other_id = env.run_pod(&other).await;
    let spec = env.sleeper("binds2", &other).mount(idmapped(bind(&mapped, "/mapped"), other_base));
    let id2 = env.run(&other_id, &other, &spec).await;
    assert_eq!(env.sh(&id2, "stat -c %u /mapped/from-pod; cat /mapped/from-pod").await, "0\npod\n");

    // Mappings that are not a pod's own: refused before anything is made.
    let bad = env
        .sleeper("bad", &pod)
        .mount(Mount { gid_mappings: vec![], ..idmapped(bind(&mapped, "/bad"), base) });
    let err = env.cri.create_container(&pod_id, &pod, &bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("uid and gid mappings"), "{}", err.message());

    env.stop_and_remove_pod(&pod_id).await;
    env.stop_and_remove_pod(&other_id).await;
    env.assert_nothing_left();
    // The volume outlived the pods, whole.
    assert_eq!(std::fs::read_to_string(mapped.join("from-pod")).unwrap(), "pod\n");
}

/// The node's root device of `/`, when it is a block device a container could be given.
fn root_block_device() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some("/"))?;
    let source = line.split(" - ").nth(1)?.split(' ').nth(1)?.to_string();
    let meta = std::fs::metadata(&source).ok()?;
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_block_device().then_some(source)
}

/// Every capability the container asks for is its user namespace's: it mounts a tmpfs and
/// renames its pod, but cannot load a kernel module, mount the node's file systems, make
/// device nodes or unmount what hides the node's /proc files.
async fn capabilities_stop_at_the_pod(handler: &'static str) {
    let Some(mut env) = Env::start_claimed(handler).await else { return };
    let pod = env.pod("caps", 13 * RANGE);
    let pod_id = env.run_pod(&pod).await;
    let mut spec = env
        .sleeper("caps", &pod)
        .capabilities(&["SYS_ADMIN", "SYS_MODULE", "MKNOD", "NET_ADMIN", "SYS_RAWIO"], &[]);
    let device = root_block_device();
    if let Some(device) = &device {
        // At the node's path: runc in a user namespace binds the node's device node from the
        // container path.
        spec.config.devices.push(berth_cri_server::proto::Device {
            container_path: device.clone(),
            host_path: device.clone(),
            permissions: "r".into(),
        });
    }
    let id = env.run(&pod_id, &pod, &spec).await;
    let caps = env.sh(&id, "grep CapEff /proc/self/status").await;
    let mask = u64::from_str_radix(caps.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert!(mask & (1 << 21) != 0 && mask & (1 << 16) != 0, "SYS_ADMIN, SYS_MODULE: {caps}");

    // What its own namespaces allow.
    env.sh(&id, "mkdir -p /mnt/t && mount -t tmpfs t /mnt/t && touch /mnt/t/x").await;
    let node_hostname = nix::unistd::gethostname().unwrap();
    env.sh(&id, "hostname renamed-by-pod && hostname | grep -x renamed-by-pod").await;
    assert_eq!(nix::unistd::gethostname().unwrap(), node_hostname, "the node's hostname");

    // And nothing of the node's.
    let module = env.sh_fails(&id, "printf '\\177ELF' > /tmp/m.ko; insmod /tmp/m.ko").await;
    assert!(
        // A kernel built without modules says so (busybox's words for ENOSYS).
        ["not permitted", "not implemented", "does not support"].iter().any(|w| module.contains(w)),
        "insmod: {module}"
    );
    if let Some(device) = &device {
        let err = env
            .sh_fails(&id, &format!("mkdir -p /mnt/root && mount -o ro {device} /mnt/root"))
            .await;
        assert!(err.contains("denied") || err.contains("not permitted"), "mount {device}: {err}");
    }
    let err = env.sh_fails(&id, "mknod /tmp/disk b 7 0").await;
    assert!(err.contains("not permitted"), "mknod: {err}");
    // Whether or not the masks and read-only mounts can be undone (the embedded executor
    // locks them; runc makes them inside the pod's user namespace), the node's files behind
    // them stay out of reach.
    env.sh_fails(&id, "umount /proc/kcore 2>/dev/null; head -c1 /proc/kcore").await;
    env.sh_fails(&id, "mount -o remount,rw /proc/sys 2>/dev/null; echo 1 > /proc/sys/kernel/panic")
        .await;
    env.sh_fails(&id, "mount -o remount,rw /sys 2>/dev/null; echo 1 > /sys/kernel/rcu_expedited")
        .await;
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

/// Mappings that are not one range each or leave out the pod's id 0, and namespaces the node
/// would have to share: INVALID_ARGUMENT, naming the fault, and nothing is left.
async fn bad_mappings_fail_clearly(handler: &'static str) {
    let Some(mut env) = Env::start_claimed(handler).await else { return };
    let range = IdMapping { host_id: 15 * RANGE, container_id: 0, length: RANGE };
    let second = IdMapping { host_id: 17 * RANGE, container_id: RANGE, length: RANGE };
    let base = env.pod("bad", 15 * RANGE);
    let cases = [
        (base.clone().userns(&[range, second], &[range]), "exactly one uid mapping, not 2"),
        (base.clone().userns(&[range], &[]), "exactly one gid mapping, not 0"),
        (base.clone().userns(&[IdMapping { length: 0, ..range }], &[range]), "the length is 0"),
        (
            base.clone().userns(&[IdMapping { host_id: 0, ..range }], &[range]),
            "maps the node's root",
        ),
        (
            base.clone().userns(&[range], &[IdMapping { container_id: 1, ..range }]),
            "container ID 0 is not mapped",
        ),
        (base.clone().host_network(), "cannot share the node's network namespace"),
        (base.clone().host_ipc(), "cannot share the node's IPC namespace"),
        (base.clone().pid(NamespaceMode::Node), "cannot share the node's PID namespace"),
    ];
    for (pod, words) in cases {
        let err = env.cri.run_pod(&pod).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{words}: {err:?}");
        assert!(err.message().contains(words), "{words}: {}", err.message());
    }
    assert!(env.cri.list_pods(None).await.is_empty());

    // A container that asks for the node's user namespace in such a pod, or for other
    // mappings than its pod's.
    let pod = env.pod("ok", 21 * RANGE);
    let pod_id = env.run_pod(&pod).await;
    let mut node = env.sleeper("node", &pod);
    set_container_userns(
        &mut node,
        UserNamespace { mode: NamespaceMode::Node.into(), ..Default::default() },
    );
    let err = env.cri.create_container(&pod_id, &pod, &node).await.unwrap_err();
    assert!(err.message().contains("cannot use the node's"), "{}", err.message());
    let mut other = env.sleeper("other", &pod);
    set_container_userns(
        &mut other,
        UserNamespace { mode: NamespaceMode::Pod.into(), uids: vec![range], gids: vec![range] },
    );
    let err = env.cri.create_container(&pod_id, &pod, &other).await.unwrap_err();
    assert!(err.message().contains("not its pod's"), "{}", err.message());
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

/// `shareProcessNamespace` with `hostUsers: false`: the pod's PID namespace is owned by its
/// user namespace (an OCI runtime, which enters the user namespace first, can join it only
/// then), with berth's pod init as its pid 1 and the monitor outside it. Its containers see
/// each other's processes, as the pod's root; what is the node's stays out of reach; and
/// stopping the pod leaves no process of it.
async fn a_shared_pid_namespace_belongs_to_the_pod(handler: &'static str) {
    let Some(mut env) = Env::start_claimed(handler).await else { return };
    let base = 19 * RANGE;
    let pod = env.pod("shared-pid", base).pid(NamespaceMode::Pod);
    let pod_id = env.run_pod(&pod).await;
    let a = env.run(&pod_id, &pod, &env.sleeper("a", &pod).pid_mode(NamespaceMode::Pod)).await;
    let spec = env.sleeper("b", &pod).pid_mode(NamespaceMode::Pod).command(&["sleep", "2000"]);
    let b = env.run(&pod_id, &pod, &spec).await;
    assert_eq!(env.sh(&a, "id -u").await, "0\n");
    assert_eq!(env.node_ids(&a).await.0[0], base);
    let pid_ns = |pid: u64| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let pids = [env.cri.container_info(&a).await, env.cri.container_info(&b).await]
        .map(|info| info["pid"].as_u64().expect("the container's pid"));
    assert_eq!(pid_ns(pids[0]), pid_ns(pids[1]), "one PID namespace");
    // Each sees the other's process, and the pod init as pid 1.
    let seen = env.sh(&a, "cat /proc/1/comm; cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await;
    assert!(seen.starts_with("berth-pod-init\n"), "{seen}");
    assert!(seen.contains("sleep 2000"), "{seen}");
    // The pod init ignores the signals of its namespace (the kernel drops them for a pid 1
    // without handlers); the monitor is the node's, in the node's PID namespace, out of sight.
    let init = env.sh(&a, "kill -9 1; sleep 0.2; cat /proc/1/comm").await;
    assert_eq!(init, "berth-pod-init\n");
    let others = env.sh(&a, "grep -l berth /proc/[0-9]*/comm | grep -v '^/proc/1/' || true").await;
    assert_eq!(others, "", "the monitor is in the pod's PID namespace: {seen}");
    // The pod init shows no node path on its command line.
    let shown = env.sh(&a, "cat /proc/1/cmdline").await;
    assert_eq!(shown, format!("berth-monitor\0monitor\0--pod\0{pod_id}\0--pid-ns\0"));
    assert_eq!(env.sh(&b, "echo alive").await, "alive\n");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
    let left: Vec<String> = env
        .node
        .processes()
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .filter(|comm| comm.trim() == "berth-pod-init")
        .collect();
    assert!(left.is_empty(), "pod init left behind: {left:?}");
}

/// `userns_options` mode NODE, as critest sends it (a pod sharing one PID namespace, the
/// container repeating the pod's options): the container is in the node's user namespace, its
/// uid_map is the node's, and what it writes reaches its log and an attacher.
async fn node_mode_is_the_nodes_user_namespace(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let logs = env.node.dir().join("logs/node-mode");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod("node-mode").log_directory(&logs).runtime_handler(handler).userns_node();
    let pod_id = env.run_pod(&pod).await;
    let repeat = |mut spec: ContainerSpec| {
        set_container_userns(
            &mut spec,
            UserNamespace { mode: NamespaceMode::Node.into(), ..Default::default() },
        );
        spec
    };
    let maps = repeat(container("maps", &env.image).command(&["cat", "/proc/self/uid_map"]))
        .log_path("maps.log");
    let id = env.run(&pod_id, &pod, &maps).await;
    let exited = env.cri.wait_exited(&id, EXIT_TIMEOUT).await;
    assert_eq!(exited.exit_code, 0);
    let words = |text: &str| text.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let logged = log_messages(&read_log(logs.join("maps.log")), None).join("\n");
    let node_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert_eq!(words(&logged), words(&node_map), "the node's uid_map");
    let user_ns = std::fs::read_link("/proc/self/ns/user").unwrap();

    // Attach, as critest's attach spec does: a shell reading its stdin.
    let shell = repeat(container("shell", &env.image).command(&["sh"]))
        .stdin(true, true)
        .log_path("shell.log");
    let id = env.run(&pod_id, &pod, &shell).await;
    let pid = env.cri.container_info(&id).await["pid"].as_u64().unwrap();
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap(), user_ns);
    let input = Input {
        stdin: Some(b"echo -n hello\n".to_vec()),
        stdout: true,
        stderr: true,
        ..Input::default()
    };
    let request = AttachRequest {
        container_id: id.clone(),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let url = env.cri.runtime.attach(request).await.expect("Attach").into_inner().url;
    let output = tokio::time::timeout(
        EXIT_TIMEOUT,
        streaming::spdy_run(&env.node, &url, &streaming::SPDY_OFFER, input),
    )
    .await
    .expect("the attach output arrives");
    assert_eq!(output.stdout, b"hello", "{output:?}");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

fn set_container_userns(spec: &mut ContainerSpec, options: UserNamespace) {
    let security = spec.config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    security.namespace_options.get_or_insert_with(Default::default).userns_options = Some(options);
}

/// berthd killed with SIGKILL under a running pod and started again: the pod's user namespace
/// is still held, ContainerStatus and ExecSync work as before, a new container joins the same
/// namespace, and stop and remove leave nothing.
async fn a_restart_keeps_the_mappings(handler: &'static str) {
    let Some(mut env) = Env::start_claimed(handler).await else { return };
    let base = 23 * RANGE;
    let mapped = env.dir("kept", 0o755);
    let pod = env.pod("restart", base);
    let pod_id = env.run_pod(&pod).await;
    let spec = env.sleeper("before", &pod).mount(idmapped(bind(&mapped, "/mapped"), base));
    let id = env.run(&pod_id, &pod, &spec).await;
    let maps_before = env.sh(&id, "cat /proc/self/uid_map").await;

    env.daemon.signal(Signal::SIGKILL);
    env.daemon.wait_exit(Duration::from_secs(10)).await;
    let options = Options {
        root: Some(env.daemon.root.clone()),
        state: Some(env.daemon.state.clone()),
        ..Default::default()
    };
    env.daemon = Berthd::start_with(&env.node, options).await;
    env.net.install(&env.daemon);
    env.cri = env.daemon.client().await;

    let status = env.cri.container(&id).await;
    assert_eq!(status.state(), ContainerState::ContainerRunning);
    let user = status.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid), (0, 0));
    assert_eq!(env.node_ids(&id).await.0[0], base);
    assert_eq!(env.sh(&id, "cat /proc/self/uid_map").await, maps_before);
    env.sh(&id, "touch /mapped/after-restart").await;
    assert_eq!(owner(&mapped.join("after-restart")).0, 0);
    let pod_status = env.cri.pod_status(&pod_id, false).await.unwrap().status.unwrap();
    let shown = pod_status.linux.unwrap().namespaces.unwrap().options.unwrap().userns_options;
    assert_eq!(shown.as_ref(), pod_userns(&pod));

    let after = env.run(&pod_id, &pod, &env.sleeper("after", &pod)).await;
    assert_eq!(env.node_ids(&after).await.0[0], base);
    let user_ns = |pid: u64| std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    let (a, b) = (env.cri.container_info(&id).await, env.cri.container_info(&after).await);
    assert_eq!(user_ns(a["pid"].as_u64().unwrap()), user_ns(b["pid"].as_u64().unwrap()));
    env.cri.stop_container(&after, 0).await.unwrap();
    let exited = env.cri.wait_exited(&after, EXIT_TIMEOUT).await;
    assert_eq!(exited.state(), ContainerState::ContainerExited);
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

/// Status: the embedded executor and runc (which joins a user namespace; berth idmaps for it)
/// run such pods where the node can idmap; crun 1.8, without a `features` command, claims
/// nothing, and a pod asking for it there is refused with the reason.
#[tokio::test]
async fn status_says_which_handlers_run_user_namespaces_and_others_refuse() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let answer = cri.runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let userns = |name: &str| {
        answer
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.features.as_ref().unwrap().user_namespaces)
    };
    assert_eq!(userns(""), Some(true), "this kernel idmaps overlay layers");
    assert_eq!(userns("default"), Some(true));
    if let Some(runc) = userns("runc") {
        assert!(runc, "runc lists the user namespace in its features");
    }
    let summary: serde_json::Value = serde_json::from_str(&answer.info["runtimeHandlers"]).unwrap();
    assert_eq!(summary["userNamespaces"], "supported", "{summary}");
    assert!(!answer.features.unwrap().user_namespaces_host_network);

    if userns("crun") == Some(false) {
        let range = [IdMapping { host_id: 25 * RANGE, container_id: 0, length: RANGE }];
        let refused = pod("crun").runtime_handler("crun").userns(&range, &range);
        let err = cri.run_pod(&refused).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        for word in ["\"crun\"", "user namespace", "features"] {
            assert!(err.message().contains(word), "{word}: {}", err.message());
        }
        assert!(cri.list_pods(None).await.is_empty());
    }
}

berth_e2e::handler_cases!(
    root_inside_is_the_mapped_user_outside,
    files_on_plain_and_idmapped_binds,
    capabilities_stop_at_the_pod,
    bad_mappings_fail_clearly,
    a_shared_pid_namespace_belongs_to_the_pod,
    node_mode_is_the_nodes_user_namespace,
    a_restart_keeps_the_mappings,
);
