//! The daemon's ground floor over the real socket: identity, readiness, configuration,
//! the root lock, the socket, shutdown, and the test registry every later suite pulls from.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use berth_cri_server::proto::{
    CgroupDriver, CheckpointContainerRequest, CheckpointPodRequest, RestorePodRequest,
    RuntimeConfigRequest, StatusRequest, VersionRequest,
};
use berth_e2e::berthd::{self, Options};
use berth_e2e::images::{self, TestImages};
use berth_e2e::{Berthd, Node, Registry};
use nix::sys::signal::Signal;
use tonic::Code;

#[tokio::test]
async fn version_names_berth_and_cri_v1() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let version = daemon.client().await.version().await.unwrap();
    assert_eq!(version.runtime_name, "berth");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.version, "0.1.0");
}

#[tokio::test]
async fn status_reports_network_readiness_from_the_cni_config_dir() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let status = |verbose| StatusRequest { verbose };

    let answer = cri.runtime.status(status(false)).await.unwrap().into_inner();
    let conditions = answer.status.expect("a runtime status").conditions;
    let runtime_ready =
        conditions.iter().find(|c| c.r#type == "RuntimeReady").expect("RuntimeReady");
    assert!(runtime_ready.status);
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").expect("NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(
        network.message.contains("cni/net.d"),
        "the message names the directory: {}",
        network.message
    );
    assert!(answer.info.is_empty(), "info only when verbose");

    // Handlers and features claim nothing that is not built yet.
    let default =
        answer.runtime_handlers.iter().find(|h| h.name.is_empty()).expect("the default handler");
    let features = default.features.as_ref().expect("handler features");
    // Recursive read-only mounts work on any kernel with mount_setattr (5.12), and pod user
    // namespaces wherever overlay layers can be idmapped (5.19), as here.
    assert!(features.recursive_read_only_mounts && features.user_namespaces);
    let features = answer.features.expect("runtime features");
    assert!(features.supplemental_groups_policy && !features.user_namespaces_host_network);

    // A network config whose plugin is missing is still not ready, and says which plugin.
    let conf_dir = daemon.dir.join("cni/net.d");
    std::fs::write(
        conf_dir.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let answer = cri.runtime.status(status(false)).await.unwrap().into_inner();
    let network =
        answer.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!network.status);
    assert!(network.message.contains("no-such-plugin"), "{}", network.message);

    // Installing a valid config makes the network ready without a restart.
    std::fs::write(
        conf_dir.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[
            {"type":"bridge","bridge":"berth0","isGateway":true,"ipMasq":false,
             "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]]}},
            {"type":"loopback"}]}"#,
    )
    .unwrap();
    let answer = cri.runtime.status(status(true)).await.unwrap().into_inner();
    let network =
        answer.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(network.status, "network ready: {}", network.message);

    // Verbose info is JSON a debugging user can read: the effective config and the cgroups.
    let config: serde_json::Value = serde_json::from_str(&answer.info["config"]).unwrap();
    assert_eq!(config["cgroup"]["nest_under_self"], true);
    assert_eq!(config["root"], daemon.root.display().to_string());
    let cgroups: serde_json::Value = serde_json::from_str(&answer.info["cgroups"]).unwrap();
    assert!(cgroups["hierarchies"].as_array().is_some_and(|h| !h.is_empty()), "{cgroups}");
}

#[tokio::test]
async fn runtime_config_reports_the_cgroupfs_driver() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let answer =
        daemon.client().await.runtime.runtime_config(RuntimeConfigRequest {}).await.unwrap();
    let linux = answer.into_inner().linux.expect("linux runtime config");
    assert_eq!(linux.cgroup_driver(), CgroupDriver::Cgroupfs);
}

#[tokio::test]
async fn checkpoint_and_restore_are_unimplemented_and_say_why() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let request = CheckpointContainerRequest { container_id: "abc".into(), ..Default::default() };
    let container = cri.runtime.checkpoint_container(request).await.unwrap_err();
    let request = CheckpointPodRequest { pod_sandbox_id: "abc".into(), ..Default::default() };
    let pod = cri.runtime.checkpoint_pod(request).await.unwrap_err();
    let request = RestorePodRequest { checkpoint_path: "/x.tar".into(), ..Default::default() };
    let restore = cri.runtime.restore_pod(request).await.unwrap_err();
    for (err, rpc) in
        [(container, "CheckpointContainer"), (pod, "CheckpointPod"), (restore, "RestorePod")]
    {
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains(rpc), "{}", err.message());
        assert!(err.message().contains("CRIU"), "{}", err.message());
    }
    // The daemon is unharmed.
    cri.version().await.unwrap();
}

#[tokio::test]
async fn messages_up_to_kubelets_16_mib_are_accepted_and_larger_refused() {
    let node = Node::start();
    let daemon = Berthd::start(&node).await;
    let cri = daemon.client().await;
    // A client that would send more than the daemon takes.
    let mut cri_runtime = cri.runtime.clone().max_encoding_message_size(64 << 20);

    // Over tonic's 4 MiB default, within the kubelet's 16 MiB.
    let request = VersionRequest { version: "v".repeat(8 << 20) };
    cri_runtime.version(request).await.expect("an 8 MiB request is served");

    let request = VersionRequest { version: "v".repeat(17 << 20) };
    let err = cri_runtime.version(request).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
}

#[tokio::test]
async fn bad_configuration_stops_berthd_with_an_error_naming_the_key() {
    let node = Node::start();
    let cases = [
        ("[registry]\nmax_concurent_downloads = 2\n", "max_concurent_downloads"),
        ("[streaming]\naddress = \"chatty\"\n", "streaming.address"),
        ("[grpc]\nmax_recv_message_size = 1\n", "grpc.max_recv_message_size"),
    ];
    for (extra, key) in cases {
        let mut daemon =
            Berthd::spawn(&node, Options { extra_config: extra.into(), ..Default::default() });
        let status = daemon.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(2), "config errors exit 2");
        let log = daemon.log_text();
        assert!(log.contains(key), "the error names {key:?}: {log}");
        assert!(log.contains(&daemon.config_file.display().to_string()), "and the file: {log}");
        assert!(!daemon.socket.exists(), "nothing was served");
    }

    // A config file that was asked for but is missing is an error too.
    let missing = node.dir().join("missing.toml");
    let mut daemon =
        Berthd::spawn(&node, Options { config: Some(String::new()), ..Default::default() });
    daemon.wait_serving(Duration::from_secs(30)).await; // an empty file is the defaults + nothing
    drop(daemon);
    let mut daemon =
        Berthd::spawn(&node, Options { config_path: Some(missing), ..Default::default() });
    let status = daemon.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(2));
    assert!(daemon.log_text().contains("missing.toml"), "{}", daemon.log_text());
}

#[tokio::test]
async fn a_second_berthd_on_the_same_root_refuses_to_start() {
    let node = Node::start();
    let first = Berthd::start(&node).await;
    let mut second =
        Berthd::spawn(&node, Options { root: Some(first.root.clone()), ..Default::default() });
    let status = second.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = second.log_text();
    assert!(log.contains("already uses root"), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "names the holder: {log}");
    // The first one is untouched.
    first.client().await.version().await.unwrap();
}

#[tokio::test]
async fn the_socket_is_0660_and_a_stale_one_is_replaced() {
    let node = Node::start();
    // A socket left behind by a crashed daemon: bound, then abandoned.
    let mut daemon = Berthd::spawn(
        &node,
        Options { args: vec!["--log-level".into(), "info".into()], ..Default::default() },
    );
    daemon.wait_serving(Duration::from_secs(30)).await;
    let socket = daemon.socket.clone();
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10)).await;
    assert!(
        std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket(),
        "the crash left the socket"
    );

    let mut again = Berthd::spawn(
        &node,
        Options {
            root: Some(daemon.root.clone()),
            socket: Some(socket.clone()),
            ..Default::default()
        },
    );
    again.wait_serving(Duration::from_secs(30)).await;
    assert!(again.log_text().contains("replacing a stale socket"), "{}", again.log_text());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
}

#[tokio::test]
async fn sigterm_and_sigint_stop_berthd_cleanly() {
    let node = Node::start();
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut daemon = Berthd::start(&node).await;
        let mut cri = daemon.client().await;
        cri.version().await.unwrap();
        daemon.signal(signal);
        let status = daemon.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "{signal}: {status}\n{}", daemon.log_text());
        assert!(!daemon.socket.exists(), "{signal}: the socket is removed");
        assert!(daemon.log_text().contains("berthd stopped"), "{}", daemon.log_text());
        // The lock went with the process: the same root serves again.
        let again = Berthd::start_with(
            &node,
            Options { root: Some(daemon.root.clone()), ..Default::default() },
        )
        .await;
        again.client().await.version().await.unwrap();
    }
}

#[tokio::test]
async fn a_stop_ends_the_container_event_streams_at_once() {
    let node = Node::start();
    let mut daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let request = berth_cri_server::proto::GetEventsRequest {};
    let mut events = cri.runtime.get_container_events(request).await.unwrap().into_inner();
    let start = std::time::Instant::now();
    daemon.signal(Signal::SIGTERM);
    // The kubelet holds this stream open for good: a stop that waited for it would always take
    // its whole grace period (5 s) and refuse the kubelet's calls meanwhile.
    let ended = events.message().await;
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
    assert!(daemon.wait_exit(Duration::from_secs(15)).await.success(), "{}", daemon.log_text());
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "the stop took {took:?}\n{}", daemon.log_text());
    assert!(!daemon.log_text().contains("cut off"), "{}", daemon.log_text());
}

/// The node's mount points under `dir`, as the node's mount namespace has them.
fn mounts_under(node: &Node, dir: &std::path::Path) -> Vec<String> {
    let output = node.command("cat").arg("/proc/self/mountinfo").output().unwrap();
    let prefix = format!("{}/", dir.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix) || *point == dir.to_str().unwrap())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_clean_stop_with_no_pod_left_leaves_no_mount() {
    let node = Node::start();
    let mut daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    // A pod with namespaces of its own and /dev/shm: everything berth mounts for a pod.
    let id = cri.run_pod(&berth_e2e::cri::pod("gone").host_network()).await.unwrap();
    assert!(!mounts_under(&node, &daemon.state).is_empty());
    cri.stop_pod(&id).await.unwrap();
    cri.remove_pod(&id).await.unwrap();
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(15)).await.success(), "{}", daemon.log_text());
    let left = mounts_under(&node, &daemon.state);
    assert!(left.is_empty(), "left mounted: {left:?}\n{}", daemon.log_text());
    assert!(mounts_under(&node, &daemon.root).is_empty());

    // With a pod left, its namespaces stay held for the next berthd, under the shared mount.
    let options = Options {
        root: Some(daemon.root.clone()),
        state: Some(daemon.state.clone()),
        ..Default::default()
    };
    let mut daemon = Berthd::start_with(&node, options.clone()).await;
    let mut cri = daemon.client().await;
    let id = cri.run_pod(&berth_e2e::cri::pod("kept").host_network()).await.unwrap();
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait_exit(Duration::from_secs(15)).await.success());
    let pods_dir = daemon.state.join("pods");
    assert!(mounts_under(&node, &daemon.state).contains(&pods_dir.display().to_string()));
    let again = Berthd::start_with(&node, options).await;
    let mut cri = again.client().await;
    cri.stop_pod(&id).await.unwrap();
    cri.remove_pod(&id).await.unwrap();
}

#[tokio::test]
async fn config_default_prints_the_documented_defaults() {
    let output =
        std::process::Command::new(berthd::binary()).args(["config", "default"]).output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed, berth_cri_server::config::DEFAULT_CONFIG_TOML);
    let parsed = berth_cri_server::config::Config::parse(&printed).unwrap();
    assert_eq!(parsed, berth_cri_server::config::Config::default());
}

#[tokio::test]
async fn the_node_registry_serves_the_test_images() {
    let node = Node::start();
    let registry = Registry::start(&node);
    let addr = registry.addr.clone();
    let expected = TestImages::get();
    node.block_on(|| async {
        images::push_all(&addr).await.expect("pushing the test images");
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let auth = oci_client::secrets::RegistryAuth::Anonymous;
        for image in [&expected.oci, &expected.docker] {
            let reference: oci_client::Reference = image.reference_at(&addr).parse().unwrap();
            let accept = [image.manifest.media_type.as_str()];
            let (bytes, digest) =
                client.pull_manifest_raw(&reference, &auth, &accept).await.unwrap();
            assert_eq!(digest, image.digest(), "{}", image.reference);
            assert_eq!(bytes.as_ref(), image.manifest.bytes.as_slice());
        }
        // The index resolves to this node's platform.
        let reference: oci_client::Reference =
            expected.multiarch.reference_at(&addr).parse().unwrap();
        let (bytes, digest) =
            client.pull_manifest_raw(&reference, &auth, &[images::MEDIA_OCI_INDEX]).await.unwrap();
        assert_eq!(digest, expected.multiarch.digest());
        let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let arches: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["platform"]["architecture"].as_str())
            .collect();
        assert_eq!(arches, ["amd64", "arm64"]);
    });
}
