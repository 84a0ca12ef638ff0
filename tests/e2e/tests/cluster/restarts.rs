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

/// Seconds since the epoch of a time as the API server writes it (`2026-12-08T01:46:25Z`).
fn epoch_seconds(time: &str) -> Option<i64> {
    let (date, clock) = time.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = clock.split(':').map(|p| p.split('.').next().and_then(|p| p.parse::<i64>().ok()));
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146097 + doe - 719468) * 86400 + h * 3600 + min * 60 + sec)
}

fn now_epoch() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// How long the web pods' readiness takes to be re-established after a kubelet start: its
/// probe workers wait up to one period (5 s) before their first probe, then report.
const KUBELET_SETTLE: Duration = Duration::from_secs(12);

/// Restarts a node's component through the cluster script, waits until the node works again
/// (a new pod on it runs), and checks the pods that ran before are untouched: the same
/// containers, no restart, Ready all along (the Ready condition's transition time unchanged).
fn restart_and_check(
    c: &Cluster,
    component: &str,
    signal: &str,
    back: impl Fn() -> Res<Option<()>>,
) -> Res {
    let node = NODES[0];
    ensure_web(c)?;
    // A restarted kubelet keeps a container Ready only if it started more than 10 s before the
    // kubelet did (kubeletRestartGracePeriod, pkg/kubelet/prober); a younger one starts over as
    // not ready until probed. That is the kubelet's rule, not berth's: let every container on
    // the node get older than that first.
    let field = format!("spec.nodeName={node}");
    wait_until("the node's containers to be older than 12 s", Duration::from_secs(60), || {
        let pods = c.kubectl_json(&["get", "pods", "--field-selector", &field])?;
        let newest = at(&pods, "items")
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .flat_map(|p| at(p, "status.containerStatuses").as_array().cloned().unwrap_or_default())
            .filter_map(|s| epoch_seconds(str_at(&s, "state.running.startedAt")))
            .max()
            .unwrap_or(0);
        Ok((now_epoch() - newest > 12).then_some(()))
    })?;
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
    let restarted = std::time::Instant::now();
    c.script(&args, Duration::from_secs(90))?;
    wait_until(&format!("{name} to serve again"), Duration::from_secs(60), back)?;
    // The node works again: a new pod on it runs.
    let probe =
        format!("after-{component}-{}", signal.to_lowercase()).trim_end_matches('-').to_string();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {probe}}}\nspec:\n  nodeName: {node}\n  \
         terminationGracePeriodSeconds: 5\n  containers:\n  - name: main\n    image: busybox\n    \
         command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n"
    );
    c.apply(&manifest)?;
    c.wait_ready(&[&probe], Duration::from_secs(90))?;
    // A pod the restarted kubelet took for unready shows it only once the kubelet has probed
    // it again: the check covers that window (an absence can only be checked over a time).
    if component == "kubelet" {
        std::thread::sleep(KUBELET_SETTLE.saturating_sub(restarted.elapsed()));
    }
    let after = snapshot(c)?;
    for (pod, was) in &before {
        let now = after.get(pod).ok_or(format!("{pod} is gone after the restart of {name}"))?;
        ensure(now == was, || {
            format!("{pod} changed across the restart of {name}:\n before {was:?}\n after  {now:?}")
        })?;
    }
    // berthd still runs every container the pods have (none was recreated behind the kubelet).
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
/// or carries a gRPC status ("rpc error:"), except the kubelet's own doing: a NotFound about a
/// container it had just removed itself, and a call it cancelled itself (CANCELLED, "context
/// canceled"). Other error lines are summed up by source, not failed on.
pub fn no_cri_errors(c: &Cluster) -> Res {
    let marks = c.log_marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut cri_errors = Vec::new();
    for node in NODES {
        let mark = marks.get(node).copied().unwrap_or(0);
        let bytes = std::fs::read(c.kubelet_log(node)).map_err(|err| format!("{node}: {err}"))?;
        let whole = String::from_utf8_lossy(&bytes);
        let text =
            String::from_utf8_lossy(bytes.get(mark as usize..).unwrap_or_default()).into_owned();
        let errors: Vec<&str> = text.lines().filter(|l| is_error_line(l)).collect();
        let mut others = std::collections::BTreeMap::new();
        for line in &errors {
            if !(line.contains("remote_runtime.go")
                || line.contains("remote_image.go")
                || line.contains("rpc error:"))
            {
                // "E1208 01:55:12.526538   15507 kubelet_pods.go:2214] ..." -> the source line
                let source = line.split_whitespace().nth(3).unwrap_or("?").trim_end_matches(']');
                *others.entry(source.to_string()).or_insert(0usize) += 1;
            } else if removed_by_kubelet(&whole, line) {
                println!("{node}: NotFound for a container the kubelet had removed itself: {line}");
            } else if line.contains("code = Canceled desc = context canceled") {
                // The kubelet gave up the call itself: its log stream for `kubectl logs -f`
                // asks ContainerStatus under the request's context, which ends when the user
                // stops following.
                println!("{node}: a call the kubelet cancelled itself: {line}");
            } else {
                cri_errors.push(format!("{node}: {line}"));
            }
        }
        println!(
            "{node}: {} lines since the mark, {} error lines; not about the CRI: {others:?}",
            text.lines().count(),
            errors.len()
        );
    }
    ensure(cri_errors.is_empty(), || {
        format!("CRI errors in steady state:\n{}", cri_errors.join("\n"))
    })
}

/// A NotFound answer about a container the kubelet itself removed just before: both its pod
/// worker and its container deletor remove a dead pod's containers, and the later one logs the
/// runtime's NotFound (as it does with any runtime); berth answered right.
fn removed_by_kubelet(log: &str, line: &str) -> bool {
    if !line.contains("code = NotFound") {
        return false;
    }
    let Some(id) = line.split("containerID=\"").nth(1).and_then(|rest| rest.split('"').next())
    else {
        return false;
    };
    let removal = format!("\"RemoveContainer\" containerID=\"{id}\"");
    match (log.find(&removal), log.find(line)) {
        (Some(removed), Some(logged)) => removed < logged,
        _ => false,
    }
}

/// klog's header: `E1207 23:51:01.926127 ...`.
fn is_error_line(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 5 && b[0] == b'E' && b[1..5].iter().all(u8::is_ascii_digit)
}
