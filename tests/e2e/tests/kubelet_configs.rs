//! Configs as a kubelet v1.37 sends them, handed to berth by the upstream crictl as JSON files,
//! on every runtime handler: what a real kubelet (v1.37.2) showed berth failing on.
//!
//! - Hugepage limits for every page size of the node, 0 for those the pod did not ask for:
//!   on a node without a hugetlb controller berth manages (these nodes: the host keeps hugetlb
//!   on the cgroup2 mount of its hybrid layout, which the nodes go without), the zero limits
//!   stay out of the OCI spec and the container runs; a non-zero one is refused with the
//!   reason.

use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::images;
use berth_e2e::upstream::Crictl;
use berth_e2e::{Berthd, Node, Registry};
use serde_json::{json, Value};

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

berth_e2e::handler_cases!(hugepage_limits_of_the_node);
