//! One case (at least) per kubelet feature gate that meets the CRI; the gates are on for the
//! whole cluster (main.rs, FEATURE_GATES).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::kube::{at, ensure, str_at, wait_until, Cluster, Res, NODES};

/// A pod pinned to a node, with the given extra pod spec and container fields (YAML, indented
/// as `spec:`'s and the container's children).
fn pod_manifest(
    name: &str,
    node: &str,
    pod_extra: &str,
    container_extra: &str,
    command: &str,
) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
{pod_extra}  containers:
  - name: main
    image: busybox
    command: [sh, -c, '{command}']
{container_extra}"#
    )
}

const SLEEPER: &str = r#"trap "exit 0" TERM; sleep 3600 & wait"#;

/// The kubelet's metric `name` (a counter or a histogram's _count), as the API server proxies
/// the node's /metrics.
fn kubelet_metric(c: &Cluster, node: &str, name: &str) -> Res<f64> {
    let text = c.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/metrics")])?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// KubeletCgroupDriverFromCRI: each kubelet took the cgroup driver from berth's
/// RuntimeConfig instead of its own config.
pub fn cgroup_driver_from_cri(c: &Cluster) -> Res {
    for node in NODES {
        let log =
            std::fs::read_to_string(c.kubelet_log(node)).map_err(|err| format!("{node}: {err}"))?;
        let line = log
            .lines()
            .find(|l| l.contains("Using cgroup driver setting received from the CRI runtime"))
            .ok_or(format!("{node}'s kubelet did not take its cgroup driver from berth"))?;
        ensure(line.contains(r#"cgroupDriver="cgroupfs""#), || format!("{node}: {line}"))?;
    }
    Ok(())
}

/// EventedPLEG: in kubelet 1.37 the evented PLEG watches berth's GetContainerEvents stream
/// beside the generic relist (still once a second) and asks for an immediate relist of a pod
/// when a CONTAINER_STOPPED event comes (pkg/kubelet/pleg/evented.go). What shows it uses
/// berth's events: its stream connected, and its event latency histogram counts the events of
/// a pod whose container runs and exits (created, started, stopped), with no stream error.
pub fn evented_pleg(c: &Cluster) -> Res {
    let node = NODES[0];
    let connected = kubelet_metric(c, node, "kubelet_evented_pleg_connection_success_count")?;
    ensure(connected >= 1.0, || {
        format!("{node}'s kubelet never connected to berth's event stream")
    })?;
    let events_before =
        kubelet_metric(c, node, "kubelet_evented_pleg_connection_latency_seconds_count")?;
    let pod = "pleg";
    c.apply(&pod_manifest(pod, node, "  restartPolicy: Never\n", "", "sleep 2; exit 3"))?;
    let terminated =
        wait_until("the container's exit in the pod status", Duration::from_secs(60), || {
            let status = c.pod(pod)?;
            let state = at(&status, "status.containerStatuses.0.state.terminated");
            Ok((!state.is_null()).then(|| state.clone()))
        })?;
    ensure(at(&terminated, "exitCode").as_i64() == Some(3), || {
        format!("terminated as {terminated}")
    })?;
    let events_after =
        wait_until("the kubelet to count berth's events", Duration::from_secs(20), || {
            let n =
                kubelet_metric(c, node, "kubelet_evented_pleg_connection_latency_seconds_count")?;
            // created, started and stopped, at least
            Ok((n >= events_before + 3.0).then_some(n))
        })?;
    println!("evented PLEG: {} container events counted for the pod", events_after - events_before);
    let errors = kubelet_metric(c, node, "kubelet_evented_pleg_connection_error_count")?;
    ensure(errors == 0.0, || format!("{errors} errors on the event stream"))?;
    c.delete_pods(&[pod])
}

/// PodAndContainerStatsFromCRI: /stats/summary comes from berth's ListPodSandboxStats and
/// ListContainerStats: pod network stats (which cAdvisor cannot give for berth's pods), cpu
/// and memory of the container.
pub fn stats_from_cri(c: &Cluster) -> Res {
    let node = NODES[0];
    let pod = "stats";
    c.apply(&pod_manifest(pod, node, "", "", SLEEPER))?;
    c.wait_ready(&[pod], Duration::from_secs(60))?;
    let found = wait_until(
        "the pod in /stats/summary with network, cpu and memory",
        Duration::from_secs(60),
        || {
            let summary = c.get_raw(&format!("/api/v1/nodes/{node}/proxy/stats/summary"))?;
            let entry = at(&summary, "pods")
                .as_array()
                .and_then(|pods| pods.iter().find(|p| str_at(p, "podRef.name") == pod).cloned());
            let Some(entry) = entry else { return Ok(None) };
            let eth0 = at(&entry, "network.interfaces")
                .as_array()
                .and_then(|i| i.iter().find(|i| str_at(i, "name") == "eth0").cloned());
            let container = at(&entry, "containers")
                .as_array()
                .and_then(|cs| cs.iter().find(|x| str_at(x, "name") == "main").cloned());
            let ok = eth0.as_ref().is_some_and(|e| at(e, "rxBytes").is_u64())
                && container.as_ref().is_some_and(|x| {
                    at(x, "cpu.usageCoreNanoSeconds").as_u64().unwrap_or(0) > 0
                        && at(x, "memory.workingSetBytes").as_u64().unwrap_or(0) > 0
                });
            Ok(ok.then_some(entry))
        },
    )?;
    println!(
        "stats/summary for {pod}: network {} cpu {} memory {}",
        at(&found, "network.interfaces"),
        at(&found, "containers.0.cpu"),
        at(&found, "containers.0.memory.workingSetBytes")
    );
    c.delete_pods(&[pod])
}

/// UserNamespacesSupport: a `hostUsers: false` pod runs as root in a user namespace mapped to
/// an unprivileged range of the node.
pub fn user_namespaces(c: &Cluster) -> Res {
    let pod = "userns";
    c.apply(&pod_manifest(pod, NODES[1], "  hostUsers: false\n", "", SLEEPER))?;
    c.wait_ready(&[pod], Duration::from_secs(60))?;
    let map = c.exec(pod, "cat /proc/self/uid_map; id -u")?;
    let fields: Vec<&str> = map.split_whitespace().collect();
    ensure(fields.len() == 4 && fields[0] == "0" && fields[1] != "0" && fields[3] == "0", || {
        format!("uid_map and id -u: {map:?} (want root mapped to a non-zero host id)")
    })?;
    println!("userns uid_map: {}", map.lines().next().unwrap_or("").trim());
    c.delete_pods(&[pod])
}

/// ImageVolume: an OCI image mounted as a volume, its files readable (and read-only).
pub fn image_volume(c: &Cluster) -> Res {
    image_volume_in(c, "imgvol", "")
}

/// Both gates at once: the kubelet puts the pod's id mappings on every mount of a
/// `hostUsers: false` pod, the image volume's included; its files are readable in the pod as
/// they are in the image (root's, mapped).
pub fn image_volume_user_namespace(c: &Cluster) -> Res {
    image_volume_in(c, "imgvol-userns", "  hostUsers: false\n")?;
    Ok(())
}

fn image_volume_in(c: &Cluster, pod: &str, pod_extra: &str) -> Res {
    let volumes = format!(
        "{pod_extra}  volumes:\n  - name: img\n    \
         image: {{reference: busybox:2, pullPolicy: IfNotPresent}}\n"
    );
    let mounts = "    volumeMounts: [{name: img, mountPath: /img}]\n";
    c.apply(&pod_manifest(pod, NODES[0], &volumes, mounts, SLEEPER))?;
    c.wait_ready(&[pod], Duration::from_secs(90))?;
    let passwd = c.exec(pod, "cat /img/etc/passwd")?;
    ensure(passwd.starts_with("root:x:0:0:"), || format!("/img/etc/passwd: {passwd:?}"))?;
    let owner = c.exec(pod, "stat -c %u:%g /img/etc/passwd")?;
    ensure(owner.trim() == "0:0", || format!("/img/etc/passwd is owned by {owner:?} in the pod"))?;
    let out = c.kubectl_out(&["exec", pod, "--", "touch", "/img/new"])?;
    ensure(!out.status.success(), || "the image volume is writable".into())?;
    c.delete_pods(&[pod])
}

/// RecursiveReadOnlyMounts: berth reports the feature for its handler in the node status, and
/// a read-only hostPath with a submount, `recursiveReadOnly: Enabled`, is read-only in the
/// submount too.
pub fn recursive_read_only(c: &Cluster) -> Res {
    let node = NODES[0];
    let status = c.kubectl_json(&["get", "node", node])?;
    let handlers = at(&status, "status.runtimeHandlers").as_array().cloned().unwrap_or_default();
    let default = handlers
        .iter()
        .find(|h| str_at(h, "name").is_empty())
        .ok_or(format!("no default handler in {handlers:?}"))?;
    ensure(at(default, "features.recursiveReadOnlyMounts").as_bool() == Some(true), || {
        format!("the default handler does not list recursive read-only mounts: {default}")
    })?;
    // The hostPath and its submount, in the node's mount namespace (gone with the node).
    c.on_node(node, "mkdir -p /var/lib/rro && mountpoint -q /var/lib/rro/sub || { mkdir -p /var/lib/rro/sub && mount -t tmpfs rro-sub /var/lib/rro/sub; }")?;
    let pod = "rro";
    let volumes =
        "  volumes:\n  - name: data\n    hostPath: {path: /var/lib/rro, type: Directory}\n";
    let mounts = "    volumeMounts: [{name: data, mountPath: /data, readOnly: true, recursiveReadOnly: Enabled}]\n";
    c.apply(&pod_manifest(pod, node, volumes, mounts, SLEEPER))?;
    c.wait_ready(&[pod], Duration::from_secs(60))?;
    for path in ["/data/x", "/data/sub/x"] {
        let out = c.kubectl_out(&["exec", pod, "--", "touch", path])?;
        ensure(!out.status.success() && out.stderr.contains("Read-only file system"), || {
            format!("touch {path}: {:?} {}", out.status, out.stderr)
        })?;
    }
    let pod_status = c.pod(pod)?;
    let mount = at(&pod_status, "status.containerStatuses.0.volumeMounts")
        .as_array()
        .and_then(|m| m.iter().find(|m| str_at(m, "name") == "data").cloned())
        .unwrap_or(Value::Null);
    ensure(str_at(&mount, "recursiveReadOnly") == "Enabled", || {
        format!("the status shows the mount as {mount}")
    })?;
    c.delete_pods(&[pod])
}

/// SupplementalGroupsPolicy Strict: only the groups of the pod spec (not /etc/group's), shown in
/// the container status and seen by `id -G` alike.
pub fn supplemental_groups_strict(c: &Cluster) -> Res {
    let pod = "groups";
    let security = "  securityContext: {runAsUser: 1000, runAsGroup: 1000, supplementalGroups: [4242], supplementalGroupsPolicy: Strict}\n";
    c.apply(&pod_manifest(pod, NODES[1], security, "", SLEEPER))?;
    c.wait_ready(&[pod], Duration::from_secs(60))?;
    let status = c.pod(pod)?;
    let linux = at(&status, "status.containerStatuses.0.user.linux");
    let shown: BTreeSet<u64> = at(linux, "supplementalGroups")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let seen: BTreeSet<u64> =
        c.exec(pod, "id -G")?.split_whitespace().filter_map(|g| g.parse().ok()).collect();
    ensure(
        at(linux, "uid").as_u64() == Some(1000) && at(linux, "gid").as_u64() == Some(1000),
        || format!("user {linux}"),
    )?;
    ensure(shown == BTreeSet::from([1000, 4242]), || format!("status shows groups {shown:?}"))?;
    ensure(seen == shown, || format!("id -G shows {seen:?}, the status {shown:?}"))?;
    c.delete_pods(&[pod])
}

/// InPlacePodVerticalScaling: the resize subresource changes the container's cgroup limits in
/// place; the container is not restarted.
pub fn in_place_resize(c: &Cluster) -> Res {
    let pod = "resize";
    let resources = "    resources:\n      requests: {cpu: 200m, memory: 64Mi}\n      limits: {cpu: 200m, memory: 64Mi}\n";
    c.apply(&pod_manifest(pod, NODES[0], "", resources, SLEEPER))?;
    c.wait_ready(&[pod], Duration::from_secs(60))?;
    let read = || -> Res<(String, String)> {
        let out = c.exec(
            pod,
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes",
        )?;
        let mut lines = out.lines().map(str::trim).map(String::from);
        Ok((lines.next().unwrap_or_default(), lines.next().unwrap_or_default()))
    };
    let before = read()?;
    ensure(before == ("20000".into(), (64u64 << 20).to_string()), || {
        format!("before the resize: {before:?}")
    })?;
    let patch = r#"{"spec":{"containers":[{"name":"main","resources":{"requests":{"cpu":"300m","memory":"80Mi"},"limits":{"cpu":"300m","memory":"80Mi"}}}]}}"#;
    c.kubectl(&[
        "patch",
        "pod",
        pod,
        "--subresource",
        "resize",
        "--type",
        "strategic",
        "-p",
        patch,
    ])?;
    let want = ("30000".to_string(), (80u64 << 20).to_string());
    wait_until("the new limits in the container's cgroups", Duration::from_secs(60), || {
        Ok((read()? == want).then_some(()))
    })?;
    wait_until("the resize in the pod status", Duration::from_secs(60), || {
        let status = c.pod(pod)?;
        let limits = at(&status, "status.containerStatuses.0.resources.limits");
        Ok((str_at(limits, "cpu") == "300m" && str_at(limits, "memory") == "80Mi").then_some(()))
    })?;
    let status = c.pod(pod)?;
    ensure(at(&status, "status.containerStatuses.0.restartCount").as_u64() == Some(0), || {
        "the container restarted".into()
    })?;
    c.delete_pods(&[pod])
}

/// PodAndContainerStatsFromCRI while pods stop: the kubelet's summary is asked for over and
/// over as ten pods are deleted at once. Pod stats whose network lacks the default interface
/// (a pod whose network is being torn down as its stats are read) make kubelet 1.37 panic: it
/// dereferences the default interface unchecked. The race is narrow; this case only makes it
/// likelier than the kubelet's own summary every 10 s does (the check after every case names
/// a panic in whichever case it happens).
pub fn stats_while_pods_stop(c: &Cluster) -> Res {
    let node = NODES[0];
    // The node as busy as in the other cases: a stats call takes longer with more pods.
    crate::workloads::ensure_web(c)?;
    let pods: Vec<String> = (0..10).map(|i| format!("churn-{i}")).collect();
    let manifest: Vec<String> = pods
        .iter()
        .map(|p| {
            pod_manifest(p, node, "", "", SLEEPER)
                .replace("metadata: {name: ", "metadata: {labels: {app: churn}, name: ")
        })
        .collect();
    c.apply(&manifest.join("---\n"))?;
    let names: Vec<&str> = pods.iter().map(String::as_str).collect();
    c.wait_ready(&names, Duration::from_secs(90))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = std::thread::scope(|scope| -> Res<usize> {
        let askers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let path = format!("/api/v1/nodes/{node}/proxy/stats/summary");
                        if c.kubectl(&["get", "--raw", &path]).is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let deleted = c.kubectl(&["delete", "pod", "-l", "app=churn", "--timeout=90s"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut n = 0;
        for asker in askers {
            n += asker.join().map_err(|_| "a summary loop panicked".to_string())?;
        }
        deleted?;
        Ok(n)
    })?;
    println!("{asked} summaries read while 10 pods stopped");
    let dead = c.dead_components();
    ensure(dead.is_empty(), || dead.join("\n"))
}
