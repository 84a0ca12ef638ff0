//! ImageService over the real socket, against the node's real registry: every reference form,
//! both manifest formats and the index, what the layers look like through overlayfs, removal
//! and garbage collection, restarts, concurrency, and the errors the kubelet acts on.

use std::collections::BTreeSet;
use std::time::Duration;

use berth_e2e::berthd::Options;
use berth_e2e::images::{self, TestImages};
use berth_e2e::{Berthd, Cri, Node, Registry};
use nix::sys::signal::Signal;
use tonic::Code;

/// Drop order matters: the client and daemon go before the registry, the node last.
struct Env {
    cri: Cri,
    daemon: Berthd,
    registry: Registry,
    node: Node,
}

impl Env {
    async fn start() -> Env {
        Self::start_with(Options::default()).await
    }

    async fn start_with(options: Options) -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        push_all(&node, &registry.addr);
        let daemon = Berthd::start_with(&node, options).await;
        let cri = daemon.client().await;
        Env { cri, daemon, registry, node }
    }

    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.addr)
    }

    /// The directories of an image's snapshots, base first, from ImageStatus verbose.
    async fn snapshot_dirs(&mut self, image: &str) -> Vec<std::path::PathBuf> {
        let status = self.cri.image_status(image, true).await.unwrap();
        let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
        info["chainIDs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| {
                let hex = id.as_str().unwrap().trim_start_matches("sha256:");
                self.daemon.root.join("images/snapshots").join(hex).join("fs")
            })
            .collect()
    }

    fn snapshot_count(&self) -> usize {
        let dir = self.daemon.root.join("images/snapshots");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    }
}

fn push_all(node: &Node, addr: &str) {
    node.block_on(|| images::push_all(addr)).expect("pushing the test images");
}

#[tokio::test]
async fn every_reference_form_pulls_and_reports_the_image() {
    let mut env = Env::start().await;
    let expected = TestImages::get();
    let oci = &expected.oci;
    let id = oci.config.digest.clone();
    let name = env.reference("berth-test/busybox");

    let forms = [
        format!("{name}:oci"),
        name.clone(), // :latest
        format!("{name}@{}", oci.digest()),
        format!("{name}:oci@{}", oci.digest()),
    ];
    for form in &forms {
        let image_ref = env.cri.pull(form).await.unwrap_or_else(|e| panic!("pulling {form}: {e}"));
        assert_eq!(image_ref, id, "{form}");
    }
    let image = env.cri.image(&format!("{name}:oci")).await.expect("the image is known");
    assert_eq!(image.id, id);
    let tags: BTreeSet<_> = image.repo_tags.iter().cloned().collect();
    assert_eq!(tags, BTreeSet::from([format!("{name}:latest"), format!("{name}:oci")]));
    assert_eq!(image.repo_digests, vec![format!("{name}@{}", oci.digest())]);
    let layer_bytes: usize = oci.layers.iter().map(|l| l.bytes.len()).sum();
    assert_eq!(image.size as usize, layer_bytes + oci.config.bytes.len());
    assert_eq!(image.uid, None);
    assert_eq!(image.username, "");

    // The same image is found by id, by bare hex id, and by digest.
    for key in [
        id.clone(),
        id.trim_start_matches("sha256:").to_string(),
        format!("{name}@{}", oci.digest()),
    ] {
        assert_eq!(env.cri.image(&key).await.map(|i| i.id), Some(id.clone()), "{key}");
    }

    // Verbose status carries the image config.
    let status = env.cri.image_status(&id, true).await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Env"][1], "BERTH_IMAGE=oci");
}

#[tokio::test]
async fn docker_schema2_and_a_multi_platform_index_pull() {
    let mut env = Env::start().await;
    let expected = TestImages::get();

    let docker = env.reference("berth-test/busybox:docker");
    assert_eq!(env.cri.pull(&docker).await.unwrap(), expected.docker.config.digest);

    // The index resolves to this node's platform; the repo digest is the index's.
    let multiarch = env.reference("berth-test/multiarch:latest");
    let amd64 = expected.multiarch.child("amd64").expect("an amd64 child");
    assert_eq!(env.cri.pull(&multiarch).await.unwrap(), amd64.config.digest);
    let image = env.cri.image(&multiarch).await.unwrap();
    assert_eq!(
        image.repo_digests,
        vec![format!("{}@{}", env.reference("berth-test/multiarch"), expected.multiarch.digest())]
    );

    // Images that share layers share snapshots: three layers, whatever the formats.
    assert_eq!(env.snapshot_count(), 3);
    let listed: BTreeSet<String> =
        env.cri.list_images(None).await.into_iter().map(|i| i.id).collect();
    assert_eq!(
        listed,
        BTreeSet::from([expected.docker.config.digest.clone(), amd64.config.digest.clone()])
    );
    let filtered = env.cri.list_images(Some(&docker)).await;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, expected.docker.config.digest);
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_show_through_an_overlay_of_the_layers() {
    let mut env = Env::start().await;
    let image = env.reference("berth-test/busybox:oci");
    env.cri.pull(&image).await.unwrap();
    let dirs = env.snapshot_dirs(&image).await;
    assert_eq!(dirs.len(), 3);
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    let target = env.node.dir().join("rootfs");
    std::fs::create_dir_all(&target).unwrap();
    let target = target.display().to_string();
    env.node.run(&[
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        &format!("lowerdir={}", lower.join(":")),
        &target,
    ]);
    for path in images::EXPECT_PRESENT {
        env.node.run(&["test", "-e", &format!("{target}/{}", path.trim_start_matches('/'))]);
    }
    for path in images::EXPECT_ABSENT {
        let full = format!("{target}/{}", path.trim_start_matches('/'));
        let status = env.node.command("test").args(["-e", &full]).status().unwrap();
        assert!(!status.success(), "{path} must not be visible");
    }
    for (path, content) in images::EXPECT_CONTENTS {
        let text = env.node.run(&["cat", &format!("{target}/{}", path.trim_start_matches('/'))]);
        assert_eq!(text, *content, "{path}");
    }
    // The base layer's metadata survived unpacking.
    let stat = env.node.run(&["stat", "-c", "%a %u %g", &format!("{target}/tmp")]);
    assert_eq!(stat.trim(), "1777 0 0");
    let stat = env.node.run(&["stat", "-c", "%u %g", &format!("{target}/home/berth")]);
    assert_eq!(stat.trim(), "1000 1000");
    env.node.run(&["umount", &target]);
}

#[tokio::test]
async fn remove_by_tag_id_or_digest_and_collect_unused_layers() {
    let mut env = Env::start().await;
    let expected = TestImages::get();
    let name = env.reference("berth-test/busybox");
    let id = env.cri.pull(&format!("{name}:oci")).await.unwrap();
    env.cri.pull(&format!("{name}:latest")).await.unwrap();
    assert_eq!(env.snapshot_count(), 3);

    // By tag: only that tag goes while another remains.
    env.cri.remove_image(&format!("{name}:latest")).await.unwrap();
    let image = env.cri.image(&id).await.expect("still there under its other tag");
    assert_eq!(image.repo_tags, vec![format!("{name}:oci")]);
    assert_eq!(env.snapshot_count(), 3);

    // By id: everything goes, and so do the layers nothing else uses.
    env.cri.remove_image(&id).await.unwrap();
    assert!(env.cri.image(&id).await.is_none());
    assert_eq!(env.snapshot_count(), 0);
    // Removing again is fine.
    env.cri.remove_image(&id).await.unwrap();
    env.cri.remove_image("never-pulled:latest").await.unwrap();

    // By digest.
    env.cri.pull(&format!("{name}:docker")).await.unwrap();
    let by_digest = format!("{name}@{}", expected.docker.digest());
    env.cri.remove_image(&by_digest).await.unwrap();
    assert!(env.cri.list_images(None).await.is_empty());
    assert_eq!(env.snapshot_count(), 0);
}

#[tokio::test]
async fn images_survive_a_restart() {
    let mut env = Env::start().await;
    let image = env.reference("berth-test/busybox:oci");
    let id = env.cri.pull(&image).await.unwrap();
    env.daemon.signal(Signal::SIGTERM);
    env.daemon.wait_exit(Duration::from_secs(15)).await;

    let daemon = Berthd::start_with(
        &env.node,
        Options { root: Some(env.daemon.root.clone()), ..Default::default() },
    )
    .await;
    let mut cri = daemon.client().await;
    let found = cri.image(&image).await.expect("the image is still known");
    assert_eq!(found.id, id);
    // And its layers are still there: a pull finds nothing to fetch.
    assert_eq!(cri.pull(&image).await.unwrap(), id);
    assert!(!daemon.log_text().contains("layer fetched"), "no layer was fetched again");
}

#[tokio::test]
async fn concurrent_pulls_share_one_download() {
    let env = Env::start().await;
    let image = env.reference("berth-test/busybox:oci");
    let mut pulls = Vec::new();
    for _ in 0..6 {
        let mut cri = env.cri.clone();
        let image = image.clone();
        pulls.push(tokio::spawn(async move { cri.pull(&image).await }));
    }
    let mut ids = BTreeSet::new();
    for pull in pulls {
        ids.insert(pull.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 1);
    let unpacked = env.daemon.log_text().matches("layer fetched").count();
    assert_eq!(unpacked, 3, "each of the 3 layers is fetched once");
}

#[tokio::test]
async fn image_fs_info_reports_real_usage() {
    let mut env = Env::start().await;
    env.cri.pull(&env.reference("berth-test/busybox:oci")).await.unwrap();
    let info = env
        .cri
        .images
        .image_fs_info(berth_cri_server::proto::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let fs = &info.image_filesystems[0];
    let used = fs.used_bytes.as_ref().unwrap().value;
    // busybox alone is about 2 MB.
    assert!(used > 1_000_000, "{used}");
    assert!(fs.inodes_used.as_ref().unwrap().value > 40);
    assert!(!fs.fs_id.as_ref().unwrap().mountpoint.is_empty());
    assert!(fs.timestamp > 0);
}

#[tokio::test]
async fn errors_the_kubelet_acts_on() {
    let mut env = Env::start().await;
    // Malformed references name what is wrong.
    for (image, reason) in
        [("UPPER/case", "uppercase"), ("busybox:bad tag!", "tag"), ("busybox@sha256:123", "digest")]
    {
        let err = env.cri.pull(image).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{image}: {err}");
        assert!(err.message().contains(reason), "{image}: {}", err.message());
    }
    // An unknown image is NOT_FOUND and names the reference.
    let missing = env.reference("berth-test/nothing-here:latest");
    let err = env.cri.pull(&missing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("berth-test/nothing-here"), "{}", err.message());
    // An absent image's status is empty, not an error.
    assert!(env.cri.image_status(&missing, false).await.unwrap().image.is_none());
    // A registry that is not there is the CRI's RegistryUnavailable.
    let err = env.cri.pull("127.0.0.1:5999/berth-test/busybox:oci").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("RegistryUnavailable"), "{}", err.message());
    // Plain HTTP is refused where the config says the registry speaks TLS.
    drop(env);
    let env_tls = Env::start_with(Options {
        extra_config: "[registry.hosts.\"127.0.0.1:5000\"]\nplain_http = false\n".into(),
        ..Default::default()
    })
    .await;
    let mut cri = env_tls.cri.clone();
    let err = cri.pull(&env_tls.reference("berth-test/busybox:oci")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test]
async fn configured_images_are_reported_pinned() {
    let pinned = format!("{}/berth-test/busybox:oci", berth_e2e::registry::REGISTRY_ADDR);
    let mut env = Env::start_with(Options {
        extra_config: format!("[images]\npinned = [{pinned:?}]\n"),
        ..Default::default()
    })
    .await;
    env.cri.pull(&pinned).await.unwrap();
    env.cri.pull(&env.reference("berth-test/multiarch:latest")).await.unwrap();
    assert!(env.cri.image(&pinned).await.unwrap().pinned);
    let multiarch = env.cri.image(&env.reference("berth-test/multiarch:latest")).await.unwrap();
    assert!(!multiarch.pinned);
}
