//! CRI `Mount.mount_options` (KEP-5855: `noexec`, `nodev`, `nosuid`, and `ro`) over the real
//! socket, once per runtime handler with the same expectations: the container sees the flags
//! on its bind in /proc/self/mountinfo and feels them (a program there cannot run, a file
//! cannot be written), the flags of the node's mount are kept beside them, and an option berth
//! does not apply is refused by name. Then the same through the upstream crictl, from a
//! container JSON as its users write it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_cri_server::proto::{Mount, StatusRequest};
use berth_e2e::cri::{bind, container, log_messages, pod, read_log, ContainerSpec, Pod};
use berth_e2e::{images, Berthd, Cri, Node, Registry};
use tonic::Code;

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    _registry: Registry,
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
        let daemon = Berthd::start(&node).await;
        let mut cri = daemon.client().await;
        let image = format!("{addr}/{}", images::OCI_REF);
        cri.pull(&image).await.unwrap_or_else(|err| panic!("pulling {image}: {err}"));
        Env { cri, daemon, _registry: registry, node, image, handler }
    }

    /// A host-network pod of the test's handler whose log directory exists.
    fn pod(&self, name: &str) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        pod(name).hostname("").host_network().log_directory(logs).runtime_handler(self.handler)
    }

    /// A node directory holding `run.sh`, a program that prints `ran`.
    fn volume(&self, name: &str) -> PathBuf {
        let dir = self.node.dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("run.sh");
        std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// Runs `spec` in `pod` to its exit; the lines of its log.
    async fn run_to_exit(&mut self, pod_id: &str, pod: &Pod, spec: &ContainerSpec) -> Vec<String> {
        let id = self.cri.run_container(pod_id, pod, spec).await.expect("running the container");
        let status = self.cri.wait_exited(&id, EXIT_TIMEOUT).await;
        let log = Path::new(&pod.config.log_directory).join(&spec.config.log_path);
        let lines = log_messages(&read_log(log), None);
        assert_eq!(status.exit_code, 0, "{lines:?}");
        lines
    }
}

fn with_options(mount: Mount, options: &[&str]) -> Mount {
    Mount { mount_options: options.iter().map(|o| o.to_string()).collect(), ..mount }
}

/// What a container's script prints about the mount at `path`: its per-mount options from
/// mountinfo (`opts <field 6>`), whether its program runs, whether it can be written.
fn probe(path: &str) -> String {
    format!(
        "echo opts $(awk '$5 == \"{path}\" {{ print $6 }}' /proc/self/mountinfo); \
         if {path}/run.sh >/dev/null 2>&1; then echo {path}:runs; else echo {path}:noexec; fi; \
         if touch {path}/new 2>/dev/null; then echo {path}:writable; else echo {path}:readonly; fi; "
    )
}

/// The comma-separated options of an `opts` line of [`probe`].
fn opts(line: &str) -> Vec<&str> {
    line.strip_prefix("opts ")
        .unwrap_or_else(|| panic!("not an opts line: {line}"))
        .split(',')
        .collect()
}

/// Each option on a bind takes effect and shows in the container's mountinfo, beside the
/// readonly and recursive read-only fields; a bind without options runs its programs; the
/// options are shown back by ContainerStatus.
async fn options_restrict_the_bind(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let (plain, restricted, readonly) =
        (env.volume("plain"), env.volume("restricted"), env.volume("readonly"));
    let pod = env.pod("options");
    let pod_id = env.cri.run_pod(&pod).await.expect("RunPodSandbox");
    let script = [probe("/plain"), probe("/restricted"), probe("/readonly")].concat();
    let spec = container("options", &env.image)
        .log_path("options.log")
        .mount(bind(&plain, "/plain"))
        .mount(with_options(bind(&restricted, "/restricted"), &["noexec", "nosuid", "nodev"]))
        .mount(with_options(bind(&readonly, "/readonly"), &["ro", "noexec"]))
        .shell(&script);
    let lines = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(lines.len(), 9, "{lines:?}");

    let plain_opts = opts(&lines[0]);
    assert!(!plain_opts.contains(&"noexec"), "{lines:?}");
    assert_eq!(lines[1..3], ["/plain:runs", "/plain:writable"], "{lines:?}");

    let restricted_opts = opts(&lines[3]);
    for flag in ["rw", "nosuid", "nodev", "noexec"] {
        assert!(restricted_opts.contains(&flag), "{flag}: {lines:?}");
    }
    assert_eq!(lines[4..6], ["/restricted:noexec", "/restricted:writable"], "{lines:?}");

    let readonly_opts = opts(&lines[6]);
    for flag in ["ro", "noexec"] {
        assert!(readonly_opts.contains(&flag), "{flag}: {lines:?}");
    }
    assert_eq!(lines[7..9], ["/readonly:noexec", "/readonly:readonly"], "{lines:?}");
    assert!(restricted.join("new").exists() && !readonly.join("new").exists());

    let containers = env.cri.list_containers(None).await;
    let status = env.cri.container(&containers[0].id).await;
    let shown = status.mounts.iter().find(|m| m.container_path == "/restricted").unwrap();
    assert_eq!(shown.mount_options, ["noexec", "nosuid", "nodev"]);
    env.cri.stop_pod(&pod_id).await.expect("StopPodSandbox");
    env.cri.remove_pod(&pod_id).await.expect("RemovePodSandbox");
}

/// A node mount that is already `nosuid,noexec`: a bind of it with `nodev` keeps both beside
/// the new flag (a remount that dropped them would give the container more than the node has).
async fn the_nodes_flags_are_kept(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let volume = env.node.dir().join("locked");
    std::fs::create_dir_all(&volume).unwrap();
    let path = volume.display().to_string();
    env.node.run(&["mount", "-t", "tmpfs", "-o", "nosuid,noexec,size=1m", "locked", &path]);
    let volume = env.volume("locked");
    let pod = env.pod("kept");
    let pod_id = env.cri.run_pod(&pod).await.expect("RunPodSandbox");
    let spec = container("kept", &env.image)
        .log_path("kept.log")
        .mount(with_options(bind(&volume, "/locked"), &["nodev"]))
        .shell(&probe("/locked"));
    let lines = env.run_to_exit(&pod_id, &pod, &spec).await;
    let flags = opts(&lines[0]);
    for flag in ["nosuid", "noexec", "nodev"] {
        assert!(flags.contains(&flag), "{flag}: {lines:?}");
    }
    assert_eq!(lines[1..], ["/locked:noexec", "/locked:writable"], "{lines:?}");
    env.cri.stop_pod(&pod_id).await.expect("StopPodSandbox");
    env.cri.remove_pod(&pod_id).await.expect("RemovePodSandbox");
    env.node.run(&["umount", &path]);
}

/// Options that would loosen the node's mount, or that berth does not apply to a bind:
/// INVALID_ARGUMENT naming the option, and no container is left.
async fn other_options_are_refused(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let volume = env.volume("refused");
    let pod = env.pod("refused");
    let pod_id = env.cri.run_pod(&pod).await.expect("RunPodSandbox");
    for option in ["exec", "suid", "rw", "rshared", "size=1m"] {
        let spec = container("refused", &env.image)
            .mount(with_options(bind(&volume, "/v"), &["noexec", option]))
            .command(&["true"]);
        let err = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{option}: {err:?}");
        let named = format!("mount option {option:?}");
        assert!(err.message().contains(&named), "{option}: {}", err.message());
    }
    assert!(env.cri.list_containers(None).await.is_empty());
    env.cri.stop_pod(&pod_id).await.expect("StopPodSandbox");
    env.cri.remove_pod(&pod_id).await.expect("RemovePodSandbox");
}

/// The upstream crictl, as its users drive it: a container JSON whose mount has
/// `mount_options` (crictl decodes it into the CRI's `Mount.mount_options`), `crictl create`,
/// then `crictl exec -s` sees the flags on the bind and `crictl inspect` shows them back.
#[tokio::test]
async fn crictl_passes_mount_options_through() {
    let mut env = Env::start("").await;
    let status = env.cri.runtime.status(StatusRequest { verbose: false }).await.unwrap();
    let features = status.into_inner().features.unwrap();
    assert!(features.mount_options, "Status advertises mount options");
    let volume = env.volume("crictl");
    let dir = env.node.dir().join("crictl-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let logs = env.node.dir().join("logs/crictl");
    std::fs::create_dir_all(&logs).unwrap();
    // NODE (2) network: nothing here is about the network.
    let pod_json = serde_json::json!({
        "metadata": {"name": "crictl", "namespace": "default", "uid": "crictl-uid", "attempt": 1},
        "log_directory": logs,
        "linux": {"security_context": {"namespace_options": {"network": 2}}},
    });
    let container_json = serde_json::json!({
        "metadata": {"name": "opts"},
        "image": {"image": env.image},
        "command": ["sleep", "1000"],
        "log_path": "opts.log",
        "mounts": [{
            "container_path": "/v",
            "host_path": volume,
            "mount_options": ["noexec", "nosuid", "nodev"],
        }],
    });
    let (pod_file, container_file) = (dir.join("pod.json"), dir.join("container.json"));
    std::fs::write(&pod_file, pod_json.to_string()).unwrap();
    std::fs::write(&container_file, container_json.to_string()).unwrap();

    let endpoint = format!("unix://{}", env.daemon.socket.display());
    let crictl = |args: &[&str]| -> String {
        let output = env
            .node
            .command(berth_e2e::upstream::crictl())
            .args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running crictl");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(output.status.success(), "crictl {args:?}: {stdout}{stderr}");
        stdout.trim().to_string()
    };
    let (pod_path, container_path) =
        (pod_file.display().to_string(), container_file.display().to_string());
    let pod_id = crictl(&["runp", &pod_path]);
    let id = crictl(&["create", "--no-pull", &pod_id, &container_path, &pod_path]);
    crictl(&["start", &id]);
    let script = probe("/v");
    let lines: Vec<String> =
        crictl(&["exec", "-s", &id, "sh", "-c", &script]).lines().map(str::to_string).collect();
    let flags = opts(&lines[0]);
    for flag in ["noexec", "nosuid", "nodev"] {
        assert!(flags.contains(&flag), "{flag}: {lines:?}");
    }
    assert_eq!(lines[1..], ["/v:noexec", "/v:writable"], "{lines:?}");
    let inspect: serde_json::Value =
        serde_json::from_str(&crictl(&["inspect", "-o", "json", &id])).unwrap();
    let shown = &inspect["status"]["mounts"][0]["mountOptions"];
    assert_eq!(shown, &serde_json::json!(["noexec", "nosuid", "nodev"]), "{inspect}");
    crictl(&["stopp", &pod_id]);
    crictl(&["rmp", &pod_id]);
}

berth_e2e::handler_cases!(
    options_restrict_the_bind,
    the_nodes_flags_are_kept,
    other_options_are_refused,
);
