//! Where the container's processes live: PID namespaces and the cgroups berth made.

use super::*;

/// The processes an ExecSync of `ps` sees in a container, by command line.
pub(super) async fn processes_seen(env: &mut Env, id: &str) -> Vec<String> {
    let out = env.cri.exec_sync(id, &["ps", "-o", "pid,args"], 10).await.expect("ExecSync ps");
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().skip(1).map(|l| l.trim().to_string()).collect()
}

pub(super) async fn pid_namespaces_of_the_pod_the_container_and_the_node(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let sleeper = |name: &str, mode: NamespaceMode| {
        container(name, &image).command(&["sleep", "3600"]).pid_mode(mode)
    };

    // One namespace for the pod: berth's pod init is pid 1 (with its monitor's command line),
    // and each container sees the other.
    let pod = env.pod("shared").pid(NamespaceMode::Pod);
    let pod_id = env.cri.run_pod(&pod).await.unwrap();
    let a = env.cri.run_container(&pod_id, &pod, &sleeper("a", NamespaceMode::Pod)).await.unwrap();
    let b = env.cri.run_container(&pod_id, &pod, &sleeper("b", NamespaceMode::Pod)).await.unwrap();
    let seen = processes_seen(&mut env, &b).await;
    assert_eq!(seen.iter().filter(|p| p.ends_with("sleep 3600")).count(), 2, "{seen:?}");
    assert!(seen.iter().any(|p| p.starts_with("1 ") && p.contains(" monitor ")), "{seen:?}");
    // pid 1's command line tells a container nothing of the node's paths.
    let cmdline = env.cri.exec_sync(&b, &["cat", "/proc/1/cmdline"], 10).await.unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline.stdout).replace('\0', " ");
    assert_eq!(cmdline, format!("berth-monitor monitor --pod {pod_id} --pid-ns "));
    // The namespace outlives a container that leaves it.
    env.cri.stop_container(&a, 0).await.unwrap();
    let seen = processes_seen(&mut env, &b).await;
    assert_eq!(seen.iter().filter(|p| p.ends_with("sleep 3600")).count(), 1, "{seen:?}");
    env.stop_and_remove_pod(&pod_id).await;

    // One per container: the container's own process is pid 1 and sees no other container.
    let pod = env.pod("own").pid(NamespaceMode::Container);
    let pod_id = env.cri.run_pod(&pod).await.unwrap();
    let c = NamespaceMode::Container;
    let a = env.cri.run_container(&pod_id, &pod, &sleeper("a", c)).await.unwrap();
    env.cri.run_container(&pod_id, &pod, &sleeper("b", c)).await.unwrap();
    let seen = processes_seen(&mut env, &a).await;
    assert_eq!(seen.iter().filter(|p| p.contains("sleep")).collect::<Vec<_>>(), ["1 sleep 3600"]);
    env.stop_and_remove_pod(&pod_id).await;

    // The node's: berthd is in sight.
    let pod = env.pod("node").pid(NamespaceMode::Node);
    let pod_id = env.cri.run_pod(&pod).await.unwrap();
    let a = env.cri.run_container(&pod_id, &pod, &sleeper("a", NamespaceMode::Node)).await.unwrap();
    let seen = processes_seen(&mut env, &a).await;
    let berthd = env.daemon.pid().as_raw().to_string();
    assert!(seen.iter().any(|p| p.split_whitespace().next() == Some(&berthd)), "{seen:?}");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

/// Where the container's process really is: in the cgroup berth made for it (with its limits),
/// in every hierarchy berth manages, whichever runtime put it there.
pub(super) async fn the_container_runs_in_the_cgroup_berth_made(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("cgroup").await;
    let spec = container("c", &image).memory_limit(64 << 20).command(&["sleep", "1000"]);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let info = env.cri.container_info(&id).await;
    assert_eq!(info["runtimeHandler"], handler, "{info}");
    let runtime_type = info["runtimeType"].as_str().unwrap_or_default();
    assert!(runtime_type.contains(if handler.is_empty() { "embedded" } else { handler }), "{info}");
    let pid = info["pid"].as_u64().expect("the container's pid");
    let cgroup = info["cgroup"].as_str().expect("the container's cgroup").to_string();
    let dirs = env.node.cgroup_dirs();
    assert!(!dirs.is_empty());
    for node_dir in dirs {
        let dir = node_dir.join(cgroup.trim_start_matches('/'));
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        assert!(
            procs.lines().any(|p| p.trim() == pid.to_string()),
            "pid {pid} is not in {}: {procs:?}",
            dir.display()
        );
        let limit = dir.join("memory.limit_in_bytes");
        if limit.exists() {
            assert_eq!(std::fs::read_to_string(limit).unwrap().trim(), (64u64 << 20).to_string());
        }
    }
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}
