//! Containers over the real socket, in host-network pods (quick, and nothing here is about the
//! network), from the node registry's test images: how the process is made from the image
//! config and the CRI config (argv, env, working dir, user), every mount option, the CRI log
//! format, exit codes and reasons (OOM included), stop with its grace period, ExecSync, the
//! filters of ListContainers, what StopPodSandbox and RemovePodSandbox do to containers, bad
//! input that must leave nothing behind, and containers that outlive a killed berthd.
//!
//! The whole suite runs once per runtime handler, with the same expectations: the embedded
//! executor (module `embedded`), runc (`runc`) and crun (`crun`). Each case is an `async fn`
//! taking the handler, in a module by concern (`process`, `mounts`, `logs_exec`,
//! `namespaces`, `lifecycle`, `security`); `berth_e2e::handler_cases!` here makes one test per
//! (handler, case). A handler that cannot run a container on this host has its cases skipped,
//! with the reason printed (the nodes go without a hybrid host's cgroup2 mount, which crun 1.8
//! refuses, so that crun runs). Status and refused handlers are tested once.
//!
//! Containers report back through their CRI log (see `berth_e2e::cri::read_log`), so that
//! most tests depend on nothing but Create/Start/Status and the log writer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_server::proto::NamespaceMode;
use berth_cri_server::proto::{
    Container, ContainerState, ContainerStatus, Mount, MountPropagation, Signal, StatusRequest,
};
use berth_e2e::berthd::Options;
use berth_e2e::cri::{
    bind, container, containers_by_id, containers_by_labels, containers_by_pod,
    containers_by_state, log_messages, pod, read_log, wait_log, ContainerSpec, Pod,
};
use berth_e2e::images::{self, TestImages};
use berth_e2e::{Berthd, Cri, Node, Registry};
use nix::sys::signal::Signal as UnixSignal;
use tonic::Code;

mod lifecycle;
mod logs_exec;
mod mounts;
mod namespaces;
mod process;
mod security;

// The cases of every module, in one namespace for `handler_cases!` below (whose per-handler
// modules call `super::<case>`), so that the tests keep their names (`embedded::<case>`, ...);
// the modules reach the shared helpers here through `use super::*`.
use lifecycle::*;
use logs_exec::*;
use mounts::*;
use namespaces::*;
use process::*;
use security::*;

/// The longest line the log writer keeps whole; longer ones are split into `P` lines of this
/// size and a final `F` (containerd's default `max_container_log_line_size`).
const LOG_LINE_MAX: usize = 16 * 1024;

/// How long a short-lived container may take to run and be reported exited.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    registry: Registry,
    node: Node,
    /// The runtime handler of every pod the test makes.
    handler: &'static str,
}

impl Env {
    async fn start(handler: &'static str) -> Env {
        Self::start_with(handler, Options::default()).await
    }

    async fn start_with(handler: &'static str, options: Options) -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        node.block_on(|| images::push_run(&addr)).expect("pushing the run images");
        let daemon = Berthd::start_with(&node, options).await;
        let cri = daemon.client().await;
        Env { cri, daemon, registry, node, handler }
    }

    /// Pulls a test image (`berth-test/…:tag`) and returns the reference it was pulled by.
    async fn image(&mut self, reference: &str) -> String {
        let name = format!("{}/{reference}", self.registry.addr);
        self.cri.pull(&name).await.unwrap_or_else(|err| panic!("pulling {name}: {err}"));
        name
    }

    /// A host-network pod `name` whose log directory exists, as the kubelet makes it.
    fn pod(&self, name: &str) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        pod(name).hostname("").host_network().log_directory(logs).runtime_handler(self.handler)
    }

    async fn run_pod(&mut self, name: &str) -> (String, Pod) {
        let pod = self.pod(name);
        let id = self.cri.run_pod(&pod).await.unwrap_or_else(|err| panic!("running {name}: {err}"));
        (id, pod)
    }

    /// The host path of a container's log, `<pod log dir>/<log_path>`.
    fn log(&self, pod: &Pod, spec: &ContainerSpec) -> PathBuf {
        Path::new(&pod.config.log_directory).join(&spec.config.log_path)
    }

    /// A scratch directory of the test on the node, created.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.node.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `spec` in the pod, waits for it to exit, and returns its status and the whole
    /// lines of its log.
    async fn run_to_exit(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> (ContainerStatus, Vec<String>) {
        let name = spec.config.metadata.as_ref().unwrap().name.clone();
        let id = self
            .cri
            .run_container(pod_id, pod, spec)
            .await
            .unwrap_or_else(|err| panic!("running container {name}: {err}"));
        let status = self.cri.wait_exited(&id, EXIT_TIMEOUT).await;
        let lines = read_log(self.log(pod, spec));
        (status, log_messages(&lines, None))
    }

    async fn stop_and_remove_pod(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }

    /// `<root>/containers`: one directory per container.
    fn container_dirs(&self) -> Vec<String> {
        entries(&self.daemon.root.join("containers"))
    }

    /// No container is listed, recorded, or has a cgroup or a mounted rootfs left.
    async fn assert_no_containers(&mut self) {
        assert_eq!(self.cri.list_containers(None).await, Vec::<Container>::new());
        assert_eq!(self.container_dirs(), Vec::<String>::new(), "container directories left");
        assert_eq!(self.node.cgroup_children(), Vec::<PathBuf>::new(), "cgroups left");
        let state = self.daemon.state.join("containers").display().to_string();
        let mounted: Vec<String> =
            node_mount_points(&self.node).into_iter().filter(|p| p.starts_with(&state)).collect();
        assert_eq!(mounted, Vec::<String>::new(), "rootfs mounts left");
    }

    /// Whether Status says the test's handler has recursive read-only mounts.
    async fn handler_has_rro(&mut self) -> bool {
        let answer = self.cri.runtime.status(StatusRequest { verbose: false }).await.unwrap();
        let handlers = answer.into_inner().runtime_handlers;
        let handler = handlers.iter().find(|h| h.name == self.handler).expect("the handler");
        handler.features.as_ref().is_some_and(|f| f.recursive_read_only_mounts)
    }

    /// SIGKILL to berthd: nothing of it runs its shutdown.
    async fn kill_daemon(&mut self) {
        self.daemon.signal(UnixSignal::SIGKILL);
        self.daemon.wait_exit(Duration::from_secs(10)).await;
    }

    /// Another berthd on the same root and state.
    async fn start_daemon_again(&mut self) {
        let options = Options {
            root: Some(self.daemon.root.clone()),
            state: Some(self.daemon.state.clone()),
            ..Default::default()
        };
        self.daemon = Berthd::start_with(&self.node, options).await;
        self.cri = self.daemon.client().await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

/// The mount points of the node's mount namespace.
fn node_mount_points(node: &Node) -> Vec<String> {
    node.run(&["cat", "/proc/self/mountinfo"])
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(|p| p.replace("\\040", " ")))
        .collect()
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn ids(containers: &[Container]) -> BTreeSet<String> {
    containers.iter().map(|c| c.id.clone()).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// The `probe <key>=<value>` lines of [`images::PROBE`] in a log.
fn probe_output(messages: &[String]) -> BTreeMap<String, String> {
    messages
        .iter()
        .filter_map(|m| m.strip_prefix("probe "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn gid_set(groups: &str) -> BTreeSet<i64> {
    groups.split_whitespace().map(|g| g.parse().unwrap()).collect()
}

/// One row of the process table: a container and what [`images::PROBE`] must print in it.
struct Row {
    what: &'static str,
    spec: ContainerSpec,
    expect: Vec<(&'static str, &'static str)>,
    /// uid, gid and the whole set of groups (`id -G`), when the row is about the user.
    ids: Option<(i64, i64, &'static [i64])>,
}

/// The `key=value` lines of a log, and whether any line contains `text`.
fn values(messages: &[String]) -> BTreeMap<String, String> {
    messages
        .iter()
        .filter_map(|m| m.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn says(messages: &[String], text: &str) -> bool {
    messages.iter().any(|m| m.contains(text))
}

/// `/proc/self/status` lines (`CapEff`, `Seccomp`, …) as `key=value` for [`values`].
const STATUS_AS_VALUES: &str =
    "sed -n -E 's/^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):[[:space:]]*/\\1=/p' /proc/self/status";

berth_e2e::handler_cases!(
    the_process_follows_the_image_and_config_rules,
    read_only_and_read_write_mounts,
    mount_propagation_private_host_to_container_and_bidirectional,
    a_recursive_read_only_mount_is_read_only_below_too,
    a_missing_host_directory_is_created,
    a_symlink_out_of_the_root_as_mount_target_stays_inside,
    the_log_is_in_the_cri_format,
    exit_codes_and_reasons,
    pid_namespaces_of_the_pod_the_container_and_the_node,
    an_image_removed_under_a_container_keeps_its_layers_until_the_container_goes,
    stdin_is_kept_open_only_when_asked_for,
    stop_signals_waits_the_grace_period_and_kills,
    exec_sync_output_exit_codes_and_timeout,
    list_filters_stream_and_what_a_listed_container_says,
    stop_pod_sandbox_stops_its_containers_and_remove_removes_them,
    bad_input_fails_and_leaves_nothing,
    containers_outlive_a_killed_berthd,
    the_container_runs_in_the_cgroup_berth_made,
    seccomp_runtime_default_localhost_unconfined_and_privileged,
    bad_security_profiles_fail_create_and_leave_nothing,
    capabilities_no_new_privs_and_a_read_only_root,
    masked_and_read_only_paths_by_default_not_when_empty_or_privileged,
    supplemental_groups_strict_and_merge_and_inherited_rlimits,
);

/// Status lists the embedded executor under both its names and every runtime installed here,
/// each with the features it really has.
#[tokio::test]
async fn status_lists_the_handlers_with_their_features() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let answer = cri.runtime.status(StatusRequest { verbose: true }).await.unwrap().into_inner();
    let handlers: BTreeMap<String, (bool, bool)> = answer
        .runtime_handlers
        .iter()
        .map(|h| {
            let f = h.features.expect("handler features");
            (h.name.clone(), (f.recursive_read_only_mounts, f.user_namespaces))
        })
        .collect();
    // This kernel has mount_setattr and idmaps overlay layers (user namespaces: userns.rs).
    assert_eq!(handlers.get(""), Some(&(true, true)), "{handlers:?}");
    assert_eq!(handlers.get("default"), Some(&(true, true)), "{handlers:?}");
    let installed = |name: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    // runc ≥ 1.1 (Debian's, CI's) says rro and the user namespace in its `features`.
    if installed("runc") {
        assert_eq!(handlers.get("runc"), Some(&(true, true)), "{handlers:?}");
    }
    if installed("crun") {
        assert!(handlers.contains_key("crun"), "{handlers:?}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&answer.info["runtimeHandlers"]).expect("runtimeHandlers is JSON");
    if installed("runc") {
        let version = summary["oci"]["runc"]["version"].as_str().unwrap_or_default();
        assert!(version.starts_with("runc version"), "{summary}");
    }
}

/// A pod names a handler that does not exist, or one that is configured but whose binary is
/// missing: refused, naming it, and nothing is left.
#[tokio::test]
async fn a_pod_with_an_unknown_or_unavailable_handler_is_refused() {
    let options = Options {
        extra_config: "[runtimes.missing]\npath = \"/no/such/runtime\"\n".into(),
        ..Default::default()
    };
    let mut env = Env::start_with("", options).await;
    let answer = env.cri.runtime.status(StatusRequest { verbose: false }).await.unwrap();
    let names: Vec<String> =
        answer.into_inner().runtime_handlers.into_iter().map(|h| h.name).collect();
    // The file's [runtimes] replaces the default list; the missing one is not offered.
    assert_eq!(names, ["", "default"]);

    for (handler, words) in [
        ("gvisor", &["gvisor", "not configured"][..]),
        ("missing", &["missing", "not available", "/no/such/runtime"][..]),
    ] {
        let pod = env.pod("refused").runtime_handler(handler);
        let err = env.cri.run_pod(&pod).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{handler}: {err:?}");
        for word in words {
            assert!(err.message().contains(word), "{handler}: {word:?} in {}", err.message());
        }
    }
    assert!(env.cri.list_pods(None).await.is_empty());
}
