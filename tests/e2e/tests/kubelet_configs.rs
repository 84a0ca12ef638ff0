//! Configs as a kubelet v1.37 sends them, handed to berth by the upstream crictl as JSON files,
//! on every runtime handler: what a real kubelet (v1.37.2) showed berth failing on.
//!
//! - Hugepage limits for every page size of the node, 0 for those the pod did not ask for:
//!   on a node without a hugetlb controller berth manages (these nodes: the host keeps hugetlb
//!   on the cgroup2 mount of its hybrid layout, which the nodes go without), the zero limits
//!   stay out of the OCI spec and the container runs; a non-zero one is refused with the
//!   reason.
//! - A pod in a user namespace of its own (`hostUsers: false`): the kubelet puts the pod's
//!   id mappings on every mount, image volumes included. Both run, with the files as the pod
//!   expects them; mappings that are not the pod's are refused on an image volume.
//! - An ephemeral container of `kubectl debug --target`: PID namespace mode TARGET, in the
//!   namespace of the running container it names.
//! - The kubelet's PodSandboxStats("") probe (crictl never sends an empty id, so our client
//!   does): NOT_FOUND, as every lookup of the empty id, not UNIMPLEMENTED.

use std::os::unix::fs::PermissionsExt;

use berth_cri_server::proto::{IdMapping, NamespaceMode};
use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::cri::pod;
use berth_e2e::images;
use berth_e2e::upstream::Crictl;
use berth_e2e::{Berthd, Node, Registry};
use serde_json::{json, Value};

/// The size of a pod's id range, as the kubelet allocates it.
const RANGE: u32 = 65536;

/// Drop order: daemon, registry, network, node.
struct Env {
    crictl: Crictl,
    daemon: Berthd,
    _registry: Registry,
    _net: BridgeNetwork,
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
        let crictl = Crictl::new(&node, &daemon);
        let image = format!("{addr}/{}", images::OCI_REF);
        crictl.ok(&node, &["pull", &image]);
        Env { crictl, daemon, _registry: registry, _net: net, node, image, handler }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.crictl.ok(&self.node, args)
    }

    fn fails(&self, args: &[&str]) -> String {
        self.crictl.fails(&self.node, args)
    }

    /// A pod config as the kubelet sends it, with `linux` as given.
    fn pod_config(&self, name: &str, linux: Value) -> Value {
        let logs = self.node.dir().join("logs").join(name);
        json!({
            "metadata": { "name": name, "namespace": "default", "uid": format!("{name}-uid") },
            "log_directory": logs.display().to_string(),
            "linux": linux,
        })
    }

    /// `crictl runp` of `config` on the test's handler; the pod's id.
    fn runp(&self, config: &Value) -> String {
        let name = config["metadata"]["name"].as_str().unwrap();
        let file = self.crictl.file(&format!("pod-{name}"), config);
        self.ok(&self.runp_args(&file))
    }

    fn runp_args<'a>(&'a self, file: &'a str) -> Vec<&'a str> {
        match self.handler {
            "" => vec!["runp", file],
            handler => vec!["runp", "--runtime", handler, file],
        }
    }

    /// `crictl create` of `config` in `pod_id`, whose config is `pod`; crictl's output.
    fn create(&self, pod_id: &str, config: &Value, pod: &Value) -> std::process::Output {
        let name = config["metadata"]["name"].as_str().unwrap();
        let file = self.crictl.file(&format!("ctr-{name}"), config);
        let pod_name = pod["metadata"]["name"].as_str().unwrap();
        let pod_file = self.crictl.file(&format!("pod-{pod_name}"), pod);
        self.crictl.run(&self.node, &["create", pod_id, &file, &pod_file])
    }

    /// Creates and starts a container; its id.
    fn run(&self, pod_id: &str, config: &Value, pod: &Value) -> String {
        let output = self.create(pod_id, config, pod);
        assert!(
            output.status.success(),
            "crictl create failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.daemon.log_text()
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        self.ok(&["start", &id]);
        let status: Value =
            serde_json::from_str(&self.ok(&["inspect", "-o", "json", &id])).unwrap();
        assert_eq!(status["status"]["state"], "CONTAINER_RUNNING", "{status:#}");
        id
    }

    /// `crictl exec` of a shell script that must succeed; its stdout.
    fn sh(&self, id: &str, script: &str) -> String {
        self.ok(&["exec", id, "sh", "-c", script])
    }

    fn remove_pod(&self, pod_id: &str) {
        self.ok(&["stopp", pod_id]);
        self.ok(&["rmp", pod_id]);
    }
}

fn container_config(name: &str, image: &str, linux: Value, mounts: Value) -> Value {
    json!({
        "metadata": { "name": name },
        "image": { "image": image },
        "command": ["sleep", "1000"],
        "log_path": format!("{name}.log"),
        "mounts": mounts,
        "linux": linux,
    })
}

/// The hugepage limits of a node with 2MB and 1GB pages, for a pod that asked for none; what
/// the kubelet sends for every container (`GetHugepageLimitsFromResources`).
fn kubelet_hugepage_limits() -> Value {
    json!([{ "page_size": "2MB", "limit": 0 }, { "page_size": "1GB", "limit": 0 }])
}

/// A BestEffort container's resources as the kubelet computes them, with `hugepage_limits`.
fn kubelet_resources(hugepage_limits: Value) -> Value {
    json!({
        "cpu_period": 100000,
        "cpu_shares": 2,
        "oom_score_adj": 1000,
        "hugepage_limits": hugepage_limits,
    })
}

/// The node's hugetlb controller as berthd's verbose Status (`crictl info`) tells it.
fn node_holds_hugepage_limits(env: &Env) -> bool {
    let info: Value = serde_json::from_str(&env.ok(&["info"])).unwrap();
    let cgroups = match &info["cgroups"] {
        Value::String(text) => serde_json::from_str(text).unwrap(),
        other => other.clone(),
    };
    cgroups["hugetlb"].as_bool().unwrap_or_else(|| panic!("no hugetlb in {cgroups:#}"))
}

/// Zero limits for every page size run on every handler; a non-zero one where no hugetlb
/// controller can hold it is refused with the reason, and leaves no container.
async fn hugepage_limits_of_the_node(handler: &'static str) {
    let env = Env::start(handler).await;
    let linux = json!({ "security_context": { "namespace_options": { "network": 2 } } });
    let pod = env.pod_config("huge", linux);
    let pod_id = env.runp(&pod);
    let ctr_linux = |limits: Value| {
        json!({
            "resources": kubelet_resources(limits),
            "security_context": { "namespace_options": { "network": 2, "pid": 1 } },
        })
    };
    let config =
        container_config("huge", &env.image, ctr_linux(kubelet_hugepage_limits()), json!([]));
    let id = env.run(&pod_id, &config, &pod);
    assert_eq!(env.sh(&id, "echo running"), "running");

    if !node_holds_hugepage_limits(&env) {
        let asked = json!([{ "page_size": "2MB", "limit": 4 << 20 }, { "page_size": "1GB" }]);
        let config = container_config("asked", &env.image, ctr_linux(asked), json!([]));
        let output = env.create(&pod_id, &config, &pod);
        assert!(!output.status.success(), "a hugepage limit nothing can hold was taken");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in ["FailedPrecondition", "hugepage limit 4194304", "2MB", "hugetlb"] {
            assert!(stderr.contains(word), "{word}: {stderr}");
        }
        let all = env.ok(&["ps", "-a", "-q", "--pod", &pod_id]);
        assert_eq!(all.lines().collect::<Vec<_>>(), [id.as_str()], "the refused one is gone");
    }
    env.remove_pod(&pod_id);
}

fn mapping(base: u32) -> Value {
    json!([{ "host_id": base, "container_id": 0, "length": RANGE }])
}

/// A `hostUsers: false` pod whose container has a hostPath-like bind and an image volume, each
/// with the pod's mappings as the kubelet sends them: the bind is idmapped (the node's root's
/// files are the pod's root's), the image volume shows the image's owners, and both are
/// readable; an image volume with mappings of another range is refused.
async fn user_namespace_mounts_carry_the_pods_mappings(handler: &'static str) {
    let env = Env::start(handler).await;
    let base = 13 * RANGE;
    let userns = json!({ "mode": 0, "uids": mapping(base), "gids": mapping(base) });
    let namespaces = json!({ "network": 0, "pid": 1, "ipc": 0, "userns_options": userns });
    let pod_config = env
        .pod_config("userns", json!({ "security_context": { "namespace_options": namespaces } }));

    // crun 1.8 does not claim user namespaces: such a pod is refused there, with the reason
    // (as the userns suite checks through the harness).
    let mut cri = env.daemon.client().await;
    let range = [IdMapping { host_id: base, container_id: 0, length: RANGE }];
    let logs = env.node.dir().join("logs/refused");
    std::fs::create_dir_all(&logs).unwrap();
    let probe = pod("refused").log_directory(logs).runtime_handler(handler);
    let probe = probe.pid(NamespaceMode::Container).userns(&range, &range);
    if berth_e2e::handlers::refuses_user_namespaces(&mut cri, handler, &probe).await {
        let file = env.crictl.file("pod-userns", &pod_config);
        let stderr = env.fails(&env.runp_args(&file));
        assert!(stderr.contains("user namespace"), "{stderr}");
        return;
    }

    let pod_id = env.runp(&pod_config);
    let volume = env.node.dir().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(volume.join("from-node"), "node\n").unwrap();
    let volume = volume.display().to_string();
    let mounts = |image_mappings: u32| {
        json!([
            {
                "container_path": "/volume",
                "host_path": volume,
                "uidMappings": mapping(base),
                "gidMappings": mapping(base),
            },
            {
                "container_path": "/image",
                "readonly": true,
                "image": { "image": env.image },
                "uidMappings": mapping(image_mappings),
                "gidMappings": mapping(image_mappings),
            },
        ])
    };
    let linux = json!({
        "resources": kubelet_resources(kubelet_hugepage_limits()),
        "security_context": { "namespace_options": namespaces },
    });
    let config = container_config("mounts", &env.image, linux.clone(), mounts(base));
    let id = env.run(&pod_id, &config, &pod_config);
    assert_eq!(env.sh(&id, "id -u"), "0");
    let seen = env.sh(
        &id,
        "cat /volume/from-node; stat -c %u:%g /volume/from-node /image/bin/busybox /image/etc/passwd; \
         /image/bin/busybox echo from-image; head -c5 /image/etc/passwd",
    );
    assert_eq!(seen, "node\n0:0\n0:0\n0:0\nfrom-image\nroot:", "{seen}");
    // What the pod's root writes on the idmapped bind is the node's root's.
    env.sh(&id, "echo pod > /volume/from-pod");
    let meta = std::fs::metadata(std::path::Path::new(&volume).join("from-pod")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // `kubectl debug --target` in such a pod: the PID namespace the target's runtime made in
    // the pod's user namespace, joined from it.
    let mut debug_linux = linux.clone();
    debug_linux["security_context"]["namespace_options"]["pid"] = json!(3);
    debug_linux["security_context"]["namespace_options"]["target_id"] = json!(id);
    let debug = container_config("debug", &env.image, debug_linux, json!([]));
    let debug_id = env.run(&pod_id, &debug, &pod_config);
    let ns = "readlink /proc/self/ns/pid; id -u";
    assert_eq!(env.sh(&debug_id, ns), env.sh(&id, ns), "one PID namespace, root inside");

    let other = container_config("other", &env.image, linux, mounts(base + RANGE));
    let output = env.create(&pod_id, &other, &pod_config);
    assert!(!output.status.success(), "an image volume with another pod's mappings was taken");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for word in ["InvalidArgument", "/image", "not the pod's"] {
        assert!(stderr.contains(word), "{word}: {stderr}");
    }
    env.remove_pod(&pod_id);
}

/// `kubectl debug --target=app`: the kubelet creates the ephemeral container with PID mode
/// TARGET and the id of `app`, in a pod whose containers each have their own PID namespace.
/// It sees `app`'s processes (its pid 1 is `app`'s), in the same namespace; a target that is
/// not running, of another pod or unknown is refused with the reason.
async fn a_debug_container_joins_its_targets_pid_namespace(handler: &'static str) {
    let env = Env::start(handler).await;
    let pod_linux =
        json!({ "security_context": { "namespace_options": { "network": 2, "pid": 1 } } });
    let pod = env.pod_config("debugged", pod_linux.clone());
    let pod_id = env.runp(&pod);
    let namespaces = |pid: u8, target: &str| {
        json!({ "security_context": { "namespace_options": {
            "network": 2, "pid": pid, "target_id": target,
        } } })
    };
    let mut app = container_config("app", &env.image, namespaces(1, ""), json!([]));
    app["command"] = json!(["sh", "-c", "exec sleep 1001"]);
    let app_id = env.run(&pod_id, &app, &pod);
    let debug = container_config("debug", &env.image, namespaces(3, &app_id), json!([]));
    let debug_id = env.run(&pod_id, &debug, &pod);

    let ps = env.sh(&debug_id, "ps");
    assert!(ps.contains("sleep 1001"), "the target's process: {ps}");
    assert_eq!(env.sh(&debug_id, "tr '\\0' ' ' < /proc/1/cmdline"), "sleep 1001", "{ps}");
    let ns = "readlink /proc/self/ns/pid";
    assert_eq!(env.sh(&debug_id, ns), env.sh(&app_id, ns), "one PID namespace");
    let status: Value =
        serde_json::from_str(&env.ok(&["inspect", "-o", "json", &debug_id])).unwrap();
    let security = &status["info"]["config"]["security"];
    assert_eq!((&security["pid"], &security["target_id"]), (&json!("Target"), &json!(app_id)));

    // In a pod sharing one PID namespace (`shareProcessNamespace`), a target in it names it.
    let shared_linux = json!({ "security_context": { "namespace_options": { "network": 2 } } });
    let shared = env.pod_config("shared", shared_linux);
    let shared_id = env.runp(&shared);
    let in_pod = |pid: u8, target: &str| {
        json!({ "security_context": { "namespace_options": {
            "network": 2, "pid": pid, "target_id": target,
        } } })
    };
    let mut app = container_config("app", &env.image, in_pod(0, ""), json!([]));
    app["command"] = json!(["sh", "-c", "exec sleep 1002"]);
    let shared_app = env.run(&shared_id, &app, &shared);
    let debug = container_config("debug", &env.image, in_pod(3, &shared_app), json!([]));
    let shared_debug = env.run(&shared_id, &debug, &shared);
    assert!(env.sh(&shared_debug, "ps").contains("sleep 1002"));
    assert_eq!(env.sh(&shared_debug, ns), env.sh(&shared_app, ns), "the pod's PID namespace");
    env.remove_pod(&shared_id);

    // A target that is not running, of another pod, or unknown.
    let idle = container_config("idle", &env.image, namespaces(1, ""), json!([]));
    let file = env.crictl.file("ctr-idle", &idle);
    let pod_file = env.crictl.file("pod-debugged", &pod);
    let idle_id = env.ok(&["create", &pod_id, &file, &pod_file]);
    let other_pod = env.pod_config("other", pod_linux);
    let other_pod_id = env.runp(&other_pod);
    let elsewhere = container_config("elsewhere", &env.image, namespaces(1, ""), json!([]));
    let elsewhere_id = env.run(&other_pod_id, &elsewhere, &other_pod);
    for (target, words) in [
        (idle_id.as_str(), ["FailedPrecondition", "created", "running"]),
        (elsewhere_id.as_str(), ["InvalidArgument", "pod sandbox", &other_pod_id]),
        ("0123456789abcdef", ["NotFound", "0123456789abcdef", "TARGET"]),
    ] {
        let config = container_config("refused", &env.image, namespaces(3, target), json!([]));
        let output = env.create(&pod_id, &config, &pod);
        assert!(!output.status.success(), "target {target} was taken");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for word in words {
            assert!(stderr.contains(word), "{word}: {stderr}");
        }
    }
    env.remove_pod(&other_pod_id);
    env.remove_pod(&pod_id);
}

/// With PodAndContainerStatsFromCRI the kubelet calls PodSandboxStats("") at start and looks
/// only for UNIMPLEMENTED. Lookups (status, stats) of the empty id answer NOT_FOUND, as for
/// any id nothing has; actions on it stay INVALID_ARGUMENT (a removal of "" must not succeed
/// as the removal of something gone).
#[tokio::test]
async fn lookups_of_the_empty_id_are_not_found() {
    use berth_cri_server::proto::{
        ContainerStatsRequest, ContainerStatusRequest, PodSandboxStatsRequest,
        PodSandboxStatusRequest, RemovePodSandboxRequest, StopContainerRequest,
    };
    use tonic::Code;
    let node = Node::start();
    let daemon = Berthd::start_with(&node, Options::default()).await;
    let mut cri = daemon.client().await;
    let rt = &mut cri.runtime;
    let pod_id = String::new();
    let container_id = String::new();
    let lookups = [
        rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod_id.clone() })
            .await
            .map(drop),
        rt.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .map(drop),
        rt.container_stats(ContainerStatsRequest { container_id: container_id.clone() })
            .await
            .map(drop),
        rt.container_status(ContainerStatusRequest {
            container_id: container_id.clone(),
            verbose: false,
        })
        .await
        .map(drop),
    ];
    for (n, answer) in lookups.into_iter().enumerate() {
        let err = answer.expect_err("a lookup of the empty id");
        assert_eq!(err.code(), Code::NotFound, "lookup {n}: {err:?}");
        assert!(err.message().contains("empty id"), "{}", err.message());
    }
    let err = rt
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod_id })
        .await
        .expect_err("removing the empty id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = rt
        .stop_container(StopContainerRequest { container_id, timeout: 0 })
        .await
        .expect_err("stopping the empty id");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

berth_e2e::handler_cases!(
    hugepage_limits_of_the_node,
    user_namespace_mounts_carry_the_pods_mappings,
    a_debug_container_joins_its_targets_pid_namespace,
);
