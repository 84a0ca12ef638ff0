//! Where images come from and what can go wrong on the way: other layer compressions,
//! registries that want a password, mirrors (down, or serving under a namespace prefix),
//! corrupt blobs, a daemon killed mid-pull, and hostile layers that try to write outside
//! their snapshot.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use berth_cri_server::proto::AuthConfig;
use berth_e2e::berthd::Options;
use berth_e2e::images::{self, Pusher, TestImage, TestImages};
use berth_e2e::registry::{DOWN_ADDR, REGISTRY_ADDR};
use berth_e2e::{crafted, Berthd, Node, Registry};
use nix::sys::signal::Signal;
use oci_client::secrets::RegistryAuth;
use tonic::Code;

fn push(node: &Node, registry: &str, image: &TestImage) {
    node.block_on(|| images::push_image(registry, image)).expect("pushing a test image");
}

/// `image` under another repository name, as a mirror with a namespace prefix holds it.
fn renamed(image: &TestImage, prefix: &str) -> TestImage {
    let mut copy = image.clone();
    copy.reference = Box::leak(format!("{prefix}/{}", image.reference).into_boxed_str());
    copy.aliases = &[];
    copy
}

fn snapshot_entries(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("images/snapshots"))
        .map(|entries| {
            entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn zstd_and_uncompressed_layers_unpack_to_the_same_snapshots() {
    let node = Node::start();
    let registry = Registry::start(&node);
    let all = TestImages::get();
    node.block_on(|| images::push_extra(&registry.addr)).unwrap();
    push(&node, &registry.addr, &all.oci);
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    for image in [&all.zstd, &all.plain, &all.oci] {
        let reference = image.reference_at(&registry.addr);
        assert_eq!(cri.pull(&reference).await.unwrap(), image.config.digest, "{reference}");
    }
    // Same diff ids, so the same three snapshots serve all three images.
    assert_eq!(snapshot_entries(&daemon.root).iter().filter(|n| !n.starts_with('.')).count(), 3);
}

#[tokio::test]
async fn registry_credentials_from_the_request_or_the_node_file() {
    const USER: &str = "puller";
    const PASSWORD: &str = "s3cret pass";
    let node = Node::start();
    let locked = Registry::start_with_auth(&node, "127.0.0.1:5002", USER, PASSWORD);
    let oci = &TestImages::get().oci;
    let pusher = Pusher::with_auth(&locked.addr, RegistryAuth::Basic(USER.into(), PASSWORD.into()));
    node.block_on(|| pusher.push(oci)).unwrap();
    let reference = oci.reference_at(&locked.addr);

    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let err = cri.pull(&reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let wrong = AuthConfig { username: USER.into(), password: "nope".into(), ..Default::default() };
    let err = cri.pull_with_auth(&reference, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let plain =
        AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
    assert_eq!(cri.pull_with_auth(&reference, Some(plain)).await.unwrap(), oci.config.digest);
    cri.remove_image(&reference).await.unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let auth = AuthConfig { auth: encoded.clone(), ..Default::default() };
    assert_eq!(cri.pull_with_auth(&reference, Some(auth)).await.unwrap(), oci.config.digest);
    drop(cri);
    drop(daemon);

    // The node's credentials file, docker's config.json format.
    let file = node.dir().join("auth.json");
    std::fs::write(&file, format!(r#"{{"auths":{{"{}":{{"auth":"{encoded}"}}}}}}"#, locked.addr))
        .unwrap();
    let daemon = Berthd::start_with(
        &node,
        Options {
            extra_config: format!("[registry]\ncredentials_file = {file:?}\n"),
            ..Default::default()
        },
    )
    .await;
    let mut cri = daemon.client().await;
    assert_eq!(cri.pull(&reference).await.unwrap(), oci.config.digest);
}

#[tokio::test]
async fn mirrors_are_tried_in_order_then_the_origin() {
    let node = Node::start();
    let origin = Registry::start(&node);
    let mirror = Registry::start_on(&node, "127.0.0.1:5001");
    let oci = &TestImages::get().oci;
    let docker = &TestImages::get().docker;
    push(&node, &origin.addr, docker);
    // The mirror holds the origin's images under a namespace prefix.
    push(&node, &mirror.addr, &renamed(oci, "cache/origin"));
    let config = format!(
        "[registry.hosts.\"{REGISTRY_ADDR}\"]\nmirrors = [{{ host = \"{DOWN_ADDR}\" }}, {{ host = \"{}\", prefix = \"cache/origin\" }}]\n",
        mirror.addr
    );
    let daemon =
        Berthd::start_with(&node, Options { extra_config: config, ..Default::default() }).await;
    let mut cri = daemon.client().await;

    // Down mirror, then the prefixed mirror, which has it: the origin has not.
    let reference = oci.reference_at(&origin.addr);
    assert_eq!(cri.pull(&reference).await.unwrap(), oci.config.digest);
    // The image is known by the name it was asked for, not the mirror's.
    let image = cri.image(&reference).await.unwrap();
    assert_eq!(image.repo_tags, vec![reference.clone()]);
    // Neither mirror has this one: the origin serves it.
    assert_eq!(cri.pull(&docker.reference_at(&origin.addr)).await.unwrap(), docker.config.digest);
    assert!(daemon.log_text().contains(DOWN_ADDR), "the down mirror was tried");
}

#[tokio::test]
async fn without_fallback_a_down_mirror_fails_the_pull() {
    let node = Node::start();
    let origin = Registry::start(&node);
    let oci = &TestImages::get().oci;
    push(&node, &origin.addr, oci);
    let config = format!(
        "[registry.hosts.\"{REGISTRY_ADDR}\"]\nfallback_to_origin = false\nmirrors = [{{ host = \"{DOWN_ADDR}\" }}]\n"
    );
    let daemon =
        Berthd::start_with(&node, Options { extra_config: config, ..Default::default() }).await;
    let err = daemon.client().await.pull(&oci.reference_at(&origin.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message().contains("RegistryUnavailable") && err.message().contains(DOWN_ADDR),
        "{err}"
    );
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused() {
    let node = Node::start();
    let registry = Registry::start(&node);
    let oci = &TestImages::get().oci;
    push(&node, &registry.addr, oci);
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;

    // A valid layer of the same length but other content, then plain garbage.
    let layer = &oci.layers[2];
    registry.replace_blob(&layer.digest, &images::impostor_layer(layer));
    let err = cri.pull(&oci.reference_at(&registry.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("digest mismatch") && err.message().contains(&layer.digest),
        "{err}"
    );
    registry.corrupt_blob(&layer.digest);
    let err = cri.pull(&oci.reference_at(&registry.addr)).await.unwrap_err();
    assert!(err.message().contains("digest mismatch"), "{err}");
    // Nothing of the bad layer became a snapshot, and no image was recorded.
    assert_eq!(snapshot_entries(&daemon.root).iter().filter(|n| n.starts_with(".tmp")).count(), 0);
    assert!(cri.list_images(None).await.is_empty());
}

#[tokio::test]
async fn a_pull_interrupted_by_kill_9_leaves_nothing_half_done() {
    let node = Node::start();
    let registry = Registry::start(&node);
    let big = crafted::big_image(96, 4, 7);
    push(&node, &registry.addr, &big);
    let reference = big.reference_at(&registry.addr);
    let mut daemon = Berthd::start(&node).await;
    let root = daemon.root.clone();

    let mut cri = daemon.client().await;
    let pulling = tokio::spawn({
        let reference = reference.clone();
        async move { cri.pull(&reference).await }
    });
    // Kill it while a layer is being unpacked.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !snapshot_entries(&root).iter().any(|n| n.starts_with(".tmp")) {
        assert!(std::time::Instant::now() < deadline, "the pull never started unpacking");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10)).await;
    assert!(pulling.await.unwrap().is_err());

    let daemon =
        Berthd::start_with(&node, Options { root: Some(root.clone()), ..Default::default() }).await;
    assert!(
        !snapshot_entries(&root).iter().any(|n| n.starts_with(".tmp")),
        "a restart clears half-unpacked layers"
    );
    let mut cri = daemon.client().await;
    assert!(cri.image(&reference).await.is_none(), "the interrupted image was not recorded");
    assert_eq!(cri.pull(&reference).await.unwrap(), big.config.digest);
}

#[tokio::test]
async fn hostile_layers_are_refused_and_write_nothing_outside() {
    let node = Node::start();
    let registry = Registry::start(&node);
    node.block_on(|| crafted::push_hostile(&registry.addr)).unwrap();
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let shadow_links = std::fs::metadata("/etc/shadow").map(|m| m.nlink()).unwrap_or(0);

    let snapshots = daemon.root.join("images/snapshots");
    for hostile in crafted::hostile_images() {
        let reference = hostile.image.reference_at(&registry.addr);
        let outcome = cri.pull(&reference).await;
        if hostile.name == "device" {
            // Device nodes are allowed by default, as containerd allows them to root.
            outcome.unwrap_or_else(|e| panic!("{}: {e}", hostile.name));
        } else if hostile.name == "rel-symlink-parent" {
            // `evil -> ../../..` resolves inside the snapshot, to its root: the file is
            // written there, contained, as if the layer's root were `/`.
            outcome.unwrap_or_else(|e| panic!("{}: {e}", hostile.name));
            let inside = crafted::find_named(&snapshots, hostile.escape_names, &[]);
            assert_eq!(inside.len(), 1, "{}: contained in the snapshot: {inside:?}", hostile.name);
        } else {
            let err = outcome.expect_err(&hostile.name);
            assert_eq!(err.code(), Code::FailedPrecondition, "{}: {err}", hostile.name);
            assert!(err.message().contains("refused"), "{}: {err}", hostile.name);
        }
        for path in hostile.host_paths {
            assert!(!Path::new(path).exists(), "{}: {path} was written", hostile.name);
        }
        let escaped = crafted::find_named(node.dir(), hostile.escape_names, &[&snapshots]);
        assert!(escaped.is_empty(), "{}: escaped to {escaped:?}", hostile.name);
    }
    assert_eq!(std::fs::metadata("/etc/shadow").map(|m| m.nlink()).unwrap_or(0), shadow_links);
    drop(cri);
    drop(daemon);

    // Where device nodes are not allowed, a layer with one is refused.
    let daemon = Berthd::start_with(
        &node,
        Options {
            extra_config: "[images]\nallow_device_nodes = false\n".into(),
            ..Default::default()
        },
    )
    .await;
    let err = daemon
        .client()
        .await
        .pull(&crafted::hostile("device").image.reference_at(&registry.addr))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
}

#[tokio::test]
async fn a_layer_with_too_many_entries_is_refused() {
    let node = Node::start();
    let registry = Registry::start(&node);
    let many = crafted::many_files(crafted::MANY_FILES_DEFAULT);
    push(&node, &registry.addr, &many.image);
    let daemon = Berthd::start_with(
        &node,
        Options {
            extra_config: "[images]\nmax_layer_entries = 1000\n".into(),
            ..Default::default()
        },
    )
    .await;
    let err =
        daemon.client().await.pull(&many.image.reference_at(&registry.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("1000"), "the limit is named: {err}");
}

#[tokio::test]
async fn a_registry_that_stops_sending_fails_the_pull_after_the_stall_timeout() {
    let node = Node::start();
    let (_registry, proxy) = stalling_registry(&node);
    let oci = &TestImages::get().oci;
    let base = &oci.layers[0];
    let daemon = Berthd::start_with(
        &node,
        Options {
            extra_config: "[registry]\nstall_timeout_secs = 2\n".into(),
            ..Default::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let err = daemon.client().await.pull(&oci.reference_at(&proxy.addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("no data received for 2s"), "{err}");
    assert!(err.message().contains(&base.digest), "names the layer: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up in time: {:?}",
        started.elapsed()
    );
    assert!(!snapshot_entries(&daemon.root).iter().any(|n| n.starts_with(".tmp")));
}

/// A registry with the OCI test image behind a proxy whose base layer (busybox, about a
/// megabyte) stops after 64 KiB.
fn stalling_registry(node: &Node) -> (Registry, berth_e2e::stall::StallingProxy) {
    let registry = Registry::start(node);
    let oci = &TestImages::get().oci;
    push(node, &registry.addr, oci);
    let base = &oci.layers[0].digest;
    let proxy =
        berth_e2e::stall::StallingProxy::start(node, "127.0.0.1:5004", &registry.addr, base);
    (registry, proxy)
}

/// A pull that outlives the client's gRPC deadline is answered DEADLINE_EXCEEDED, as critest's
/// "public image should timeout if requested" and the kubelet expect (not CANCELLED).
#[tokio::test]
async fn a_pull_past_the_clients_deadline_is_deadline_exceeded() {
    let node = Node::start();
    let (_registry, proxy) = stalling_registry(&node);
    let oci = &TestImages::get().oci;
    let daemon = Berthd::start(&node).await;
    let started = std::time::Instant::now();
    let (code, message) =
        pull_with_grpc_timeout(&daemon.socket, &oci.reference_at(&proxy.addr), "500m").await;
    assert_eq!(code, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(message.contains("PullImage"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The daemon serves on.
    daemon.client().await.version().await.unwrap();
}

/// What berthd answers a PullImage whose `grpc-timeout` header is `timeout`, read off a raw
/// HTTP/2 exchange: a gRPC client keeps the same deadline and, giving up first, would reset
/// the stream before berthd's answer arrives. Returns `grpc-status` and `grpc-message`.
async fn pull_with_grpc_timeout(socket: &Path, image: &str, timeout: &str) -> (String, String) {
    use prost::Message;
    let stream = tokio::net::UnixStream::connect(socket).await.expect("connecting to berthd");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let spec = berth_cri_server::proto::ImageSpec { image: image.into(), ..Default::default() };
    let message =
        berth_cri_server::proto::PullImageRequest { image: Some(spec), ..Default::default() }
            .encode_to_vec();
    // The gRPC frame: uncompressed, then the message's length, then the message.
    let mut body = vec![0u8];
    body.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend(message);
    let request = http::Request::post("http://berth/runtime.v1.ImageService/PullImage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.expect("berthd's answer");
    // An error comes "trailers-only": the status is in the headers.
    let header = |name: &str| {
        let value = response.headers().get(name).map(|v| v.to_str().unwrap_or_default());
        value.unwrap_or_default().to_string()
    };
    (header("grpc-status"), header("grpc-message"))
}
