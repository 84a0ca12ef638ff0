//! Image volumes (CRI `Mount.image`, Kubernetes' ImageVolume) over the real socket: an image's
//! files read-only at a path of the container, binaries of it run, `image_sub_path` resolved
//! inside the image, what the CRI refuses, the image's id in ContainerStatus, RemoveImage of
//! the image refused while a container mounts it, a berthd restart under such a container, and
//! a pod in a user namespace of its own.
//!
//! The cases run once per runtime handler (`handler_cases!` at the end): the embedded executor,
//! runc and crun, with the same expectations, but that crun 1.8 refuses a user namespace
//! (`handlers::refuses_user_namespaces`).

use std::path::Path;
use std::time::Duration;

use berth_cri_server::proto::{ContainerState, IdMapping, ImageSpec, Mount, NamespaceMode};
use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::cri::{container, pod, ContainerSpec, Pod};
use berth_e2e::images;
use berth_e2e::{Berthd, Cri, Node, Registry};
use nix::sys::signal::Signal;
use tonic::Code;

const AT: &str = "/mnt/image";

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    registry: Registry,
    net: BridgeNetwork,
    node: Node,
    handler: &'static str,
    /// The containers' own image, pulled.
    image: String,
    /// The image the volumes mount (`berth-test/run:cmd`: busybox's layers and one more), as
    /// pulled, and the id PullImage answered.
    volume: String,
    volume_ref: String,
}

impl Env {
    async fn start(handler: &'static str) -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        node.block_on(|| images::push_run(&addr)).expect("pushing the run images");
        let daemon = Berthd::start_with(&node, Options::default()).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        let image = format!("{addr}/{}", images::OCI_REF);
        cri.pull(&image).await.unwrap_or_else(|err| panic!("pulling {image}: {err}"));
        let volume = format!("{addr}/{}", images::RUN_CMD_REF);
        let volume_ref =
            cri.pull(&volume).await.unwrap_or_else(|err| panic!("pulling {volume}: {err}"));
        Env { cri, daemon, registry, net, node, handler, image, volume, volume_ref }
    }

    fn pod(&self, name: &str) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        pod(name).host_network().log_directory(logs).runtime_handler(self.handler)
    }

    async fn run_pod(&mut self, pod: &Pod) -> String {
        self.cri.run_pod(pod).await.unwrap_or_else(|err| panic!("running a pod: {err}"))
    }

    /// The volume's image mounted at `at`, as the kubelet asks for it: by the id PullImage
    /// gave, with the name the user wrote beside.
    fn volume_mount(&self, at: &str, sub_path: &str) -> Mount {
        Mount {
            container_path: at.to_string(),
            readonly: true,
            image: Some(ImageSpec {
                image: self.volume_ref.clone(),
                user_specified_image: self.volume.clone(),
                ..Default::default()
            }),
            image_sub_path: sub_path.to_string(),
            ..Default::default()
        }
    }

    fn sleeper(&self, name: &str, mount: Mount) -> ContainerSpec {
        container(name, &self.image).command(&["sleep", "1000"]).mount(mount)
    }

    /// ExecSync that must succeed; its stdout.
    async fn exec(&mut self, id: &str, cmd: &[&str]) -> String {
        let out = self.cri.exec_sync(id, cmd, 20).await.expect("ExecSync");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.exit_code, 0, "{cmd:?}: stdout {stdout:?} stderr {stderr:?}");
        stdout.into_owned()
    }

    /// ExecSync that must fail; its stderr.
    async fn exec_fails(&mut self, id: &str, cmd: &[&str]) -> String {
        let out = self.cri.exec_sync(id, cmd, 20).await.expect("ExecSync");
        assert_ne!(
            out.exit_code,
            0,
            "{cmd:?} succeeded: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// What is mounted under the daemon's state dir (its pods dir aside).
    fn mounted(&self) -> Vec<String> {
        let state = self.daemon.state.display().to_string();
        self.node
            .run(&["cat", "/proc/self/mountinfo"])
            .lines()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&state) && !p.ends_with("/pods"))
            .collect()
    }

    fn image_volume_mounts(&self) -> Vec<String> {
        self.mounted().into_iter().filter(|p| p.contains("/image-volumes/")).collect()
    }

    async fn stop_and_remove_pod(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }

    fn assert_nothing_left(&self) {
        assert_eq!(self.mounted(), Vec::<String>::new(), "mounts left");
        let entries = |dir: &Path| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(entries(&self.daemon.root.join("containers")), 0, "containers left");
        assert_eq!(entries(&self.daemon.root.join("images/holds")), 0, "holds left");
        assert_eq!(entries(&self.daemon.root.join("pods")), 0, "pods left");
        assert_eq!(self.net.leases(), Vec::<String>::new(), "leases left");
    }

    /// The image volume of a container's status, checked against what was asked.
    async fn assert_status_names_the_image(&mut self, id: &str, sub_path: &str) {
        let status = self.cri.container(id).await;
        let mount = status.mounts.iter().find(|m| m.container_path == AT).expect("the mount");
        let spec = mount.image.as_ref().expect("an image volume in the status");
        assert_eq!(spec.image, self.volume_ref);
        assert_eq!(spec.user_specified_image, self.volume);
        assert_eq!(spec.image_ref, self.volume_ref, "ImageSpec.image_ref is PullImage's ref");
        assert_eq!(mount.image_sub_path, sub_path);
        assert!(mount.readonly && mount.host_path.is_empty(), "{mount:?}");
    }
}

/// The image's files (its layers merged, whiteouts applied) at the mount, read-only, its
/// binaries runnable; the image's id in ContainerStatus; RemoveImage of the image refused while
/// the container exists, and done after; nothing left mounted.
async fn an_image_read_only_at_a_path_and_held(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let pod = env.pod("whole");
    let pod_id = env.run_pod(&pod).await;
    let spec = env.sleeper("whole", env.volume_mount(AT, ""));
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.expect("running the container");

    for (path, contents) in images::EXPECT_CONTENTS {
        assert_eq!(env.exec(&id, &["cat", &format!("{AT}{path}")]).await, *contents, "{path}");
    }
    for path in images::EXPECT_ABSENT {
        env.exec_fails(&id, &["ls", "-d", &format!("{AT}{path}")]).await;
    }
    // The layer only the volume's image has: the probe script, run from the volume.
    let probe = format!("{AT}{}", images::PROBE);
    assert!(env.exec(&id, &[&probe]).await.contains("probe uid=0"));
    let ls = format!("{AT}/bin/ls");
    assert!(env.exec(&id, &[&ls, AT]).await.contains("etc"));
    let err = env.exec_fails(&id, &["touch", &format!("{AT}/written")]).await;
    assert!(err.contains("Read-only file system"), "{err}");
    let err = env.exec_fails(&id, &["rm", &format!("{AT}/etc/berth/kept")]).await;
    assert!(err.contains("Read-only file system"), "{err}");
    // Owned as in the image.
    assert_eq!(env.exec(&id, &["stat", "-c", "%u:%g", &format!("{AT}/etc/passwd")]).await, "0:0\n");
    env.assert_status_names_the_image(&id, "").await;

    // The image is held: by id and by name alike.
    for name in [env.volume_ref.clone(), env.volume.clone()] {
        let err = env.cri.remove_image(&name).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains(&id), "{}", err.message());
    }
    assert!(env.cri.image(&env.volume_ref).await.is_some());
    // The container's own image is not held against RemoveImage (its layers are, against GC).
    env.cri.stop_container(&id, 0).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    assert_eq!(env.image_volume_mounts(), Vec::<String>::new());
    env.cri.remove_image(&env.volume_ref).await.expect("RemoveImage once the container is gone");
    assert!(env.cri.image(&env.volume_ref).await.is_none());
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

/// `image_sub_path`: a directory of the image in place of its root; links followed as the
/// image has them, never out of it; what the image lacks, `..`, absolute paths and
/// `readonly: false` refused, leaving nothing behind.
async fn sub_paths_and_refusals(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let pod = env.pod("sub");
    let pod_id = env.run_pod(&pod).await;
    let spec = env.sleeper("etc", env.volume_mount(AT, "etc"));
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.expect("a sub path container");
    assert_eq!(env.exec(&id, &["cat", &format!("{AT}/berth/kept")]).await, "kept\n");
    env.exec(&id, &["ls", &format!("{AT}/passwd")]).await;
    env.exec_fails(&id, &["ls", &format!("{AT}/etc")]).await;
    env.exec_fails(&id, &["touch", &format!("{AT}/written")]).await;
    env.assert_status_names_the_image(&id, "etc").await;

    let refused: [(&str, Mount, Code); 7] = [
        ("missing", env.volume_mount(AT, "not-in-the-image"), Code::InvalidArgument),
        ("dotdot", env.volume_mount(AT, "../etc"), Code::InvalidArgument),
        ("inner-dotdot", env.volume_mount(AT, "etc/../../etc"), Code::InvalidArgument),
        ("absolute", env.volume_mount(AT, "/etc"), Code::InvalidArgument),
        // Links out of the root resolve inside it, where their targets are not.
        (
            "abs-link",
            env.volume_mount(AT, images::ESCAPE_ABS_LINK.trim_start_matches('/')),
            Code::InvalidArgument,
        ),
        (
            "rel-link",
            env.volume_mount(AT, images::ESCAPE_REL_LINK.trim_start_matches('/')),
            Code::InvalidArgument,
        ),
        ("writable", Mount { readonly: false, ..env.volume_mount(AT, "") }, Code::InvalidArgument),
    ];
    for (name, mount, code) in refused {
        let err = env.cri.create_container(&pod_id, &pod, &env.sleeper(name, mount)).await;
        let err = err.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(err.message().contains(AT), "{name}: {}", err.message());
    }
    let mut unknown = env.volume_mount(AT, "");
    unknown.image.as_mut().unwrap().image = format!("{}/berth-test/none:1", env.registry.addr);
    let err = env.cri.create_container(&pod_id, &pod, &env.sleeper("unknown", unknown)).await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);
    assert_eq!(env.cri.list_containers(None).await.len(), 1, "only the first container");
    assert_eq!(env.image_volume_mounts().len(), 1, "{:?}", env.image_volume_mounts());

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
    // Nothing holds the image any more.
    env.cri.remove_image(&env.volume_ref).await.expect("RemoveImage");
}

/// berthd killed with SIGKILL under a container with an image volume and started again: the
/// volume is still there and still held, its status still names the image, and what a create
/// cut short would have left is given back; removing the container then lets the image go.
async fn a_restart_keeps_image_volumes(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let pod = env.pod("restart");
    let pod_id = env.run_pod(&pod).await;
    let spec = env.sleeper("restart", env.volume_mount(AT, "etc"));
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.expect("running the container");

    env.daemon.signal(Signal::SIGKILL);
    env.daemon.wait_exit(Duration::from_secs(10)).await;
    // What a crash in the middle of a create leaves, before the container's record: its hold
    // on the image and its bundle, with an image volume mounted. The restart gives them back.
    let orphan = "0".repeat(64);
    let hold = serde_json::json!({ "chains": [], "volume_images": [env.volume_ref] });
    let holds = env.daemon.root.join("images/holds");
    std::fs::write(holds.join(&orphan), hold.to_string()).unwrap();
    let orphan_volume = env.daemon.state.join("containers").join(&orphan).join("image-volumes/0");
    std::fs::create_dir_all(&orphan_volume).unwrap();
    let volume_dir = orphan_volume.display().to_string();
    env.node.run(&["mount", "-t", "tmpfs", "-o", "ro", "orphan", &volume_dir]);
    let options = Options {
        root: Some(env.daemon.root.clone()),
        state: Some(env.daemon.state.clone()),
        ..Default::default()
    };
    env.daemon = Berthd::start_with(&env.node, options).await;
    env.net.install(&env.daemon);
    env.cri = env.daemon.client().await;

    assert_eq!(env.cri.container(&id).await.state(), ContainerState::ContainerRunning);
    assert!(!holds.join(&orphan).exists(), "the unrecorded container's hold is released");
    assert!(!env.daemon.state.join("containers").join(&orphan).exists());
    assert_eq!(env.image_volume_mounts().len(), 1, "{:?}", env.image_volume_mounts());
    env.assert_status_names_the_image(&id, "etc").await;
    assert_eq!(env.exec(&id, &["cat", &format!("{AT}/berth/kept")]).await, "kept\n");
    let err = env.cri.remove_image(&env.volume_ref).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // A new container after the restart mounts it too.
    let after = env.sleeper("after", env.volume_mount(AT, ""));
    let after = env.cri.run_container(&pod_id, &pod, &after).await.expect("a new container");
    env.exec(&after, &["ls", &format!("{AT}/etc/passwd")]).await;

    env.cri.remove_container(&id).await.unwrap();
    assert!(env.cri.remove_image(&env.volume_ref).await.is_err(), "the new container holds it");
    env.cri.remove_container(&after).await.unwrap();
    env.cri.remove_image(&env.volume_ref).await.expect("RemoveImage");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

/// A pod in a user namespace of its own: the volume's files are owned inside as in the image
/// (idmapped, as the layers of the root are), and still read-only.
async fn image_volumes_in_a_user_namespace(handler: &'static str) {
    const RANGE: u32 = 65536;
    let mut env = Env::start(handler).await;
    let base = 31 * RANGE;
    let range = [IdMapping { host_id: base, container_id: 0, length: RANGE }];
    let logs = env.node.dir().join("logs/userns");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod("userns")
        .log_directory(logs)
        .runtime_handler(handler)
        .pid(NamespaceMode::Container)
        .userns(&range, &range);
    if berth_e2e::handlers::refuses_user_namespaces(&mut env.cri, handler, &pod).await {
        return;
    }
    let pod_id = env.run_pod(&pod).await;
    let spec = env.sleeper("userns", env.volume_mount(AT, "")).pid_mode(NamespaceMode::Container);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.expect("running the container");

    assert_eq!(env.exec(&id, &["stat", "-c", "%u:%g", &format!("{AT}/etc/passwd")]).await, "0:0\n");
    let home = format!("{AT}/home/{}", images::TEST_USER);
    let owner = format!("{}:{}\n", images::TEST_UID, images::TEST_GID);
    assert_eq!(env.exec(&id, &["stat", "-c", "%u:%g", &home]).await, owner);
    env.exec_fails(&id, &["touch", &format!("{AT}/written")]).await;
    let probe = format!("{AT}{}", images::PROBE);
    assert!(env.exec(&id, &[&probe]).await.contains("probe uid=0"));
    // On the node, the mount shows the pod's ids.
    let mounted = env.image_volume_mounts();
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    let passwd = format!("{}/etc/passwd", mounted[0]);
    assert_eq!(env.node.run(&["stat", "-c", "%u", &passwd]).trim(), base.to_string());
    env.assert_status_names_the_image(&id, "").await;

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_nothing_left();
}

/// The same through the upstream crictl, as a user at a node's shell: a container whose JSON
/// config has an image mount, `crictl inspect` showing the image and its id, `crictl rmi`
/// refused while the container exists and done after.
#[tokio::test]
async fn crictl_creates_inspects_and_is_refused_rmi() {
    let env = Env::start("").await;
    let dir = env.node.dir().join("crictl");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let pod = serde_json::json!({
        "metadata": { "name": "crictl", "namespace": "default", "uid": "crictl-uid" },
        "log_directory": dir.join("logs"),
        "linux": { "security_context": { "namespace_options": { "network": 2 } } },
    });
    let config = serde_json::json!({
        "metadata": { "name": "vol" },
        "image": { "image": env.image },
        "command": ["sleep", "1000"],
        "log_path": "vol.log",
        "mounts": [{
            "container_path": AT,
            "readonly": true,
            "image": { "image": env.volume },
            "image_sub_path": "etc",
        }],
    });
    let (pod_file, config_file) = (dir.join("pod.json"), dir.join("container.json"));
    std::fs::write(&pod_file, pod.to_string()).unwrap();
    std::fs::write(&config_file, config.to_string()).unwrap();
    let endpoint = format!("unix://{}", env.daemon.socket.display());
    let crictl = berth_e2e::upstream::crictl();
    let command = |args: &[&str]| {
        let mut command = env.node.command(&crictl);
        command.args(["--runtime-endpoint", &endpoint, "--image-endpoint", &endpoint]);
        command.args(args).stdin(std::process::Stdio::null()).output().expect("running crictl")
    };
    let ok = |args: &[&str]| {
        let out = command(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "crictl {args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (pod_path, config_path) =
        (pod_file.display().to_string(), config_file.display().to_string());
    let pod_id = ok(&["runp", &pod_path]);
    let id = ok(&["create", &pod_id, &config_path, &pod_path]);
    ok(&["start", &id]);
    assert_eq!(ok(&["exec", &id, "cat", &format!("{AT}/berth/kept")]), "kept");

    let inspect: serde_json::Value = serde_json::from_str(&ok(&["inspect", &id])).unwrap();
    let mounts = inspect["status"]["mounts"].as_array().expect("mounts in crictl inspect");
    let mount = mounts.iter().find(|m| m["containerPath"] == AT).expect("the image volume");
    assert_eq!(mount["image"]["image"], env.volume.as_str(), "{mount}");
    assert_eq!(mount["image"]["imageRef"], env.volume_ref.as_str(), "{mount}");
    assert_eq!(mount["imageSubPath"], "etc", "{mount}");

    let refused = command(&["rmi", &env.volume]);
    assert!(!refused.status.success(), "crictl rmi of a mounted image succeeded");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("image volume") && stderr.contains(&id), "{stderr}");
    ok(&["rm", "-f", &id]);
    ok(&["rmi", &env.volume]);
    ok(&["stopp", &pod_id]);
    ok(&["rmp", &pod_id]);
    env.assert_nothing_left();
}

berth_e2e::handler_cases!(
    an_image_read_only_at_a_path_and_held,
    sub_paths_and_refusals,
    a_restart_keeps_image_volumes,
    image_volumes_in_a_user_namespace,
);
