//! Restarts under running pods (the kubelet; berthd stopped with SIGTERM; berthd killed with
//! SIGKILL): no container restarts, pods stay Ready; and the kubelet logs free of CRI errors
//! in steady state.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::kube::{at, ensure, run, str_at, wait_until, Cluster, Res, NODES};
use crate::workloads::ensure_web;

/// What must not change across a restart, per pod: its node, its containers (id and restart
/// count) and when it last became Ready.
type Snapshot = BTreeMap<String, (String, Vec<(String, u64)>, String)>;

fn snapshot(c: &Cluster) -> Res<Snapshot> {
    let pods = c.kubectl_json(&["get", "pods"])?;
    let mut out = Snapshot::new();
    for pod in at(&pods, "items").as_array().map(Vec::as_slice).unwrap_or_default() {
        if !at(pod, "metadata.deletionTimestamp").is_null()
            || str_at(pod, "status.phase") != "Running"
        {
            continue;
        }
        let containers = at(pod, "status.containerStatuses")
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                (str_at(s, "containerID").to_string(), at(s, "restartCount").as_u64().unwrap_or(0))
            })
            .collect();
        let ready = at(pod, "status.conditions")
            .as_array()
            .and_then(|cs| cs.iter().find(|c| str_at(c, "type") == "Ready").cloned())
            .unwrap_or_default();
        let ready = if str_at(&ready, "status") == "True" {
            str_at(&ready, "lastTransitionTime").to_string()
        } else {
            "not ready".to_string()
        };
        out.insert(
            str_at(pod, "metadata.name").to_string(),
            (str_at(pod, "spec.nodeName").to_string(), containers, ready),
        );
    }
    Ok(out)
}

/// Restarts a node's component through the cluster script, waits until the node works again
/// (a new pod on it runs), and checks the pods that ran before are untouched.
fn restart_and_check(
    c: &Cluster,
    component: &str,
    signal: &str,
    back: impl Fn() -> Res<Option<()>>,
) -> Res {
    let node = NODES[0];
    ensure_web(c)?;
    let before = snapshot(c)?;
    let on_node = before.values().filter(|(n, _, _)| n == node).count();
    ensure(on_node >= 5, || format!("only {on_node} pods run on {node}"))?;
    ensure(before.values().all(|(_, _, ready)| ready != "not ready"), || {
        format!("pods not ready before the restart: {before:?}")
    })?;
    let name = format!("{node}-{component}");
    let mut args = vec!["restart", name.as_str()];
    if !signal.is_empty() {
        args.push(signal);
    }
    c.script(&args, Duration::from_secs(90))?;
    wait_until(&format!("{name} to serve again"), Duration::from_secs(60), back)?;
    // The node works again: a new pod on it runs.
    let probe =
        format!("after-{component}-{}", signal.to_lowercase()).trim_end_matches('-').to_string();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {probe}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: busybox\n    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n"
    );
    c.apply(&manifest)?;
    c.wait_ready(&[&probe], Duration::from_secs(90))?;
    let after = snapshot(c)?;
    for (pod, was) in &before {
        let now = after.get(pod).ok_or(format!("{pod} is gone after the restart of {name}"))?;
        ensure(now == was, || {
            format!("{pod} changed across the restart of {name}:\n before {was:?}\n after  {now:?}")
        })?;
    }
    // berthd still runs every container the pods had (none was recreated behind the kubelet).
    let containers = c.crictl_json(node, &["ps", "--state", "running"])?;
    let running = at(&containers, "containers").as_array().map(Vec::len).unwrap_or(0);
    let want: usize = after.values().filter(|(n, _, _)| n == node).map(|(_, cs, _)| cs.len()).sum();
    ensure(running == want, || {
        format!("berthd on {node} runs {running} containers, the pods have {want}")
    })?;
    println!(
        "{name} restarted{}: {} pods on {node} untouched",
        if signal.is_empty() { String::new() } else { format!(" ({signal})") },
        on_node
    );
    c.delete_pods(&[&probe])?;
    // From here on, the node is in steady state again.
    c.mark_logs()
}

fn kubelet_healthy(c: &Cluster, node: &str) -> Res<Option<()>> {
    Ok(c.on_node(node, "curl -fsS --max-time 2 http://127.0.0.1:10248/healthz")
        .is_ok_and(|s| s.trim() == "ok")
        .then_some(()))
}

fn berthd_serving(c: &Cluster, node: &str) -> Res<Option<()>> {
    let mut cmd = std::process::Command::new(berth_e2e::upstream::crictl());
    let endpoint = format!("unix://{}", c.node_dir(node).join("berth.sock").display());
    cmd.args(["--runtime-endpoint", &endpoint, "--timeout", "2s", "version"]);
    Ok(run(cmd, None, Duration::from_secs(10))?.status.success().then_some(()))
}

pub fn kubelet_restart(c: &Cluster) -> Res {
    restart_and_check(c, "kubelet", "", || kubelet_healthy(c, NODES[0]))
}

pub fn berthd_restart_term(c: &Cluster) -> Res {
    restart_and_check(c, "berthd", "TERM", || berthd_serving(c, NODES[0]))
}

pub fn berthd_restart_kill(c: &Cluster) -> Res {
    restart_and_check(c, "berthd", "KILL", || berthd_serving(c, NODES[0]))
}

/// The kubelets' error lines about the CRI since their steady state began (after `up`, or
/// after the last restart the suite made had settled). Filter: only lines written after that
/// mark are read (a kubelet's start-up has its own expected errors, e.g. the PodSandboxStats("")
/// probe by which it detects CRI stats support); of those, an error line (klog level E) is a
/// CRI error when it comes from the kubelet's CRI client (remote_runtime.go, remote_image.go)
/// or carries a gRPC status ("rpc error:"). Other error lines are printed, not failed on.
pub fn no_cri_errors(c: &Cluster) -> Res {
    let marks = c.log_marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut cri_errors = Vec::new();
    for node in NODES {
        let mark = marks.get(node).copied().unwrap_or(0);
        let bytes = std::fs::read(c.kubelet_log(node)).map_err(|err| format!("{node}: {err}"))?;
        let text =
            String::from_utf8_lossy(bytes.get(mark as usize..).unwrap_or_default()).into_owned();
        let errors: Vec<&str> = text.lines().filter(|l| is_error_line(l)).collect();
        for line in &errors {
            if line.contains("remote_runtime.go")
                || line.contains("remote_image.go")
                || line.contains("rpc error:")
            {
                cri_errors.push(format!("{node}: {line}"));
            } else {
                println!("{node}: other error line (not a CRI error): {line}");
            }
        }
        println!(
            "{node}: {} lines since the mark, {} error lines",
            text.lines().count(),
            errors.len()
        );
    }
    ensure(cri_errors.is_empty(), || {
        format!("CRI errors in steady state:\n{}", cri_errors.join("\n"))
    })
}

/// klog's header: `E1207 23:51:01.926127 ...`.
fn is_error_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 5 && b[0] == b'E' && b[1..5].iter().all(u8::is_ascii_digit)
}
