//! Every mount option: read-only and read-write, propagation, recursive read-only, a missing
//! host directory, a target that is a symlink out of the root.

use super::*;

pub(super) async fn read_only_and_read_write_mounts(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("mounts").await;
    let ro = env.dir("ro");
    std::fs::write(ro.join("f"), "ro-content\n").unwrap();
    let rw = env.dir("rw");

    let spec = container("rw-ro", &image)
        .log_path("rw-ro.log")
        .mount(Mount { readonly: true, ..bind(&ro, "/ro") })
        .mount(bind(&rw, "/rw"))
        .shell(
            "cat /ro/f; \
             if touch /ro/new 2>/dev/null; then echo ro:writable; else echo ro:refused; fi; \
             echo from-container > /rw/written && echo rw:written",
        );
    let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["ro-content", "ro:refused", "rw:written"], "{status:?}");
    assert!(!ro.join("new").exists());
    assert_eq!(std::fs::read_to_string(rw.join("written")).unwrap(), "from-container\n");

    // ContainerStatus reports the mounts as they were asked for.
    let mounts: Vec<(String, String, bool)> = status
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.host_path.clone(), m.readonly))
        .collect();
    let expected = vec![
        ("/ro".to_string(), ro.display().to_string(), true),
        ("/rw".to_string(), rw.display().to_string(), false),
    ];
    assert_eq!(mounts, expected);

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn mount_propagation_private_host_to_container_and_bidirectional(
    handler: &'static str,
) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("propagation").await;
    // Each source is a shared mount of its own on the node, as the kubelet's volumes are when
    // they propagate: a slave or shared mount needs a shared source.
    let mut sources = Vec::new();
    for name in ["private", "h2c", "bidi"] {
        let dir = env.dir(name);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let path = dir.display().to_string();
        env.node.run(&["mount", "--bind", &path, &path]);
        env.node.run(&["mount", "--make-shared", &path]);
        sources.push(dir);
    }
    let trigger = env.dir("trigger");
    let with = |propagation: MountPropagation, source: &Path, target: &str| Mount {
        propagation: propagation.into(),
        ..bind(source, target)
    };
    let spec = container("propagation", &image)
        .log_path("propagation.log")
        .privileged()
        .mount(with(MountPropagation::PropagationPrivate, &sources[0], "/private"))
        .mount(with(MountPropagation::PropagationHostToContainer, &sources[1], "/h2c"))
        .mount(with(MountPropagation::PropagationBidirectional, &sources[2], "/bidi"))
        .mount(Mount { readonly: true, ..bind(&trigger, "/trigger") })
        .shell(
            "echo ready; \
             while [ ! -e /trigger/go ]; do sleep 0.1; done; \
             if [ -e /private/sub/marker ]; then echo private:seen; else echo private:unseen; fi; \
             if [ -e /h2c/sub/marker ]; then echo h2c:seen; else echo h2c:unseen; fi; \
             if mount -t tmpfs tmpfs /bidi/sub && echo from-container > /bidi/sub/marker; \
             then echo bidi:mounted; else echo bidi:failed; fi; \
             exec sleep 1000",
        );
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let log = env.log(&pod, &spec);
    wait_log(&log, EXIT_TIMEOUT, |m| m == "ready").await;

    // Mounts made on the node after the container started.
    for source in &sources[..2] {
        let sub = source.join("sub").display().to_string();
        env.node.run(&["mount", "-t", "tmpfs", "tmpfs", &sub]);
        env.node.run(&["sh", "-c", &format!("echo from-node > {sub}/marker")]);
    }
    std::fs::write(trigger.join("go"), "").unwrap();
    let lines = wait_log(&log, EXIT_TIMEOUT, |m| m.starts_with("bidi:")).await;
    let messages = log_messages(&lines, None);
    assert!(messages.contains(&"private:unseen".to_string()), "{messages:?}");
    assert!(messages.contains(&"h2c:seen".to_string()), "{messages:?}");
    assert!(messages.contains(&"bidi:mounted".to_string()), "{messages:?}");
    // The container's mount reached the node.
    let marker = sources[2].join("sub/marker").display().to_string();
    assert_eq!(env.node.run(&["cat", &marker]), "from-container\n");

    env.cri.stop_container(&id, 0).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn a_recursive_read_only_mount_is_read_only_below_too(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("rro").await;
    let source = env.dir("rro");
    let sub = source.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let sub_path = sub.display().to_string();
    env.node.run(&["mount", "-t", "tmpfs", "tmpfs", &sub_path]);
    env.node.run(&["sh", "-c", &format!("echo in-submount > {sub_path}/marker")]);

    let spec = container("rro", &image)
        .log_path("rro.log")
        .mount(Mount { readonly: true, recursive_read_only: true, ..bind(&source, "/rro") })
        .shell(
            "cat /rro/sub/marker; \
             if touch /rro/top 2>/dev/null; then echo top:writable; else echo top:refused; fi; \
             if touch /rro/sub/below 2>/dev/null; then echo sub:writable; \
             else echo sub:refused; fi",
        );
    // A handler that does not claim the feature refuses such a mount, as the kubelet would.
    if !env.handler_has_rro().await {
        let err = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("recursive read-only"), "{err:?}");
        env.stop_and_remove_pod(&pod_id).await;
        env.assert_no_containers().await;
        return;
    }
    let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["in-submount", "top:refused", "sub:refused"], "{status:?}");
    assert!(status.mounts.first().is_some_and(|m| m.recursive_read_only), "{status:?}");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn a_missing_host_directory_is_created(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("missing").await;
    let missing = env.node.dir().join("not-yet/made/here");
    assert!(!missing.exists());

    let spec = container("missing", &image)
        .log_path("missing.log")
        .mount(bind(&missing, "/data"))
        .shell("echo hello > /data/file && echo written");
    let (_, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["written"]);
    assert!(missing.is_dir());
    assert_eq!(std::fs::read_to_string(missing.join("file")).unwrap(), "hello\n");

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn a_symlink_out_of_the_root_as_mount_target_stays_inside(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::RUN_CMD_REF).await;
    let (pod_id, pod) = env.run_pod("links").await;
    let abs = env.dir("abs");
    std::fs::write(abs.join("marker"), "abs-marker\n").unwrap();
    let rel = env.dir("rel");
    std::fs::write(rel.join("marker"), "rel-marker\n").unwrap();

    let spec = container("links", &image)
        .log_path("links.log")
        .mount(bind(&abs, images::ESCAPE_ABS_LINK))
        .mount(bind(&rel, images::ESCAPE_REL_LINK))
        .command(&[
            "/bin/sh",
            "-c",
            &format!(
                "cat {}/marker {}/marker",
                images::ESCAPE_ABS_INSIDE,
                images::ESCAPE_REL_INSIDE
            ),
        ]);
    let (status, messages) = env.run_to_exit(&pod_id, &pod, &spec).await;
    assert_eq!(messages, ["abs-marker", "rel-marker"], "{status:?}");
    // Nothing was mounted or made at those paths on the node.
    let escaped: Vec<String> = node_mount_points(&env.node)
        .into_iter()
        .filter(|p| p.starts_with("/tmp/berth-e2e-escape"))
        .collect();
    assert_eq!(escaped, Vec::<String>::new());
    for inside in [images::ESCAPE_ABS_INSIDE, images::ESCAPE_REL_INSIDE] {
        env.node.run(&["test", "!", "-e", inside]);
    }

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}
