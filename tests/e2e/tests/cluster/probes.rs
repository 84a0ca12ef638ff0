//! Probes (issue 17): exec, httpGet and tcpSocket as startup, liveness and readiness probes,
//! on every handler. The kubelet runs exec probes through berth's ExecSync and makes the HTTP
//! and TCP probes itself, into the pod's network namespace berth set up.

use std::time::Duration;

use serde_json::{json, Value};

use crate::kube::{at, ensure, str_at, Cluster, Res};
use crate::matrix::{
    apply_list, container, ensure_runtime_classes, per_handler, pods, sh, wait_event, wait_pods,
    with_cleanup, HANDLERS,
};

fn probe(kind: &str, port: u16, file: &str) -> Value {
    let action = match kind {
        "exec" => json!({"exec": {"command": ["test", "-f", file]}}),
        "http" => json!({"httpGet": {"path": "/", "port": port}}),
        _ => json!({"tcpSocket": {"port": port}}),
    };
    let mut probe = action;
    probe["periodSeconds"] = json!(1);
    probe["failureThreshold"] = json!(if file.ends_with("started") { 60 } else { 3 });
    probe
}

/// Each probe kind in each role, over three containers (a container serves HTTP on one port
/// and takes TCP on another; it creates its marker files a moment after starting, so the
/// startup probe has something to wait for); a fourth container's readiness probe asks a port
/// nobody listens on: it never becomes ready, and the pod with it.
pub fn passing(c: &Cluster) -> Res {
    const CASE: &str = "probes-pass";
    ensure_runtime_classes(c)?;
    let roles = [("exec", "http", "tcp"), ("http", "tcp", "exec"), ("tcp", "exec", "http")];
    let mut containers: Vec<Value> = roles
        .iter()
        .enumerate()
        .map(|(i, (startup, liveness, readiness))| {
            let (http, tcp) = (8081 + 2 * i as u16, 8082 + 2 * i as u16);
            let port = |kind: &str| if kind == "http" { http } else { tcp };
            json!({
                "name": format!("c{i}"), "image": "busybox",
                "command": sh(&format!(
                    "trap 'exit 0' TERM; mkdir -p /www; echo ok > /www/index.html; sleep 2; \
                     httpd -f -p {http} -h /www & httpd -f -p {tcp} -h /www & \
                     touch /tmp/started /tmp/live /tmp/ready; wait")),
                "startupProbe": probe(startup, port(startup), "/tmp/started"),
                "livenessProbe": probe(liveness, port(liveness), "/tmp/live"),
                "readinessProbe": probe(readiness, port(readiness), "/tmp/ready"),
            })
        })
        .collect();
    containers.push(json!({
        "name": "unready", "image": "busybox",
        "command": sh("trap 'exit 0' TERM; sleep 3600 & wait"),
        "readinessProbe": {"httpGet": {"path": "/", "port": 8099}, "periodSeconds": 1},
    }));
    let spec = json!({"containers": containers});
    apply_list(c, per_handler(CASE, "probes", &spec))?;
    with_cleanup(c, CASE, || {
        let names = ["c0", "c1", "c2"];
        wait_pods(
            c,
            CASE,
            HANDLERS.len(),
            "probed containers ready",
            Duration::from_secs(120),
            |p| {
                for name in names {
                    let s = container(p, name)?;
                    ensure(at(s, "started").as_bool() == Some(true), || {
                        format!("{name} not started")
                    })?;
                    ensure(at(s, "ready").as_bool() == Some(true), || format!("{name} not ready"))?;
                }
                Ok(())
            },
        )?;
        for (suffix, _) in HANDLERS {
            let pod = format!("probes-{suffix}");
            let msg = wait_event(
                c,
                &pod,
                "unready",
                "Unhealthy",
                "Readiness probe failed",
                Duration::from_secs(30),
            )?;
            println!("{pod}: unready: {msg}");
        }
        // The liveness probes keep passing: over more than failureThreshold periods no
        // container restarts (an absence, so checked over a window).
        let window = std::time::Instant::now();
        while window.elapsed() < Duration::from_secs(5) {
            for p in pods(c, CASE)? {
                let pod = str_at(&p, "metadata.name");
                for name in names {
                    let s = container(&p, name)?;
                    ensure(at(s, "restartCount").as_u64() == Some(0), || {
                        format!("{pod}: {name} restarted: {s}")
                    })?;
                    ensure(at(s, "ready").as_bool() == Some(true), || {
                        format!("{pod}: {name} no longer ready: {s}")
                    })?;
                }
                let s = container(&p, "unready")?;
                ensure(at(s, "ready").as_bool() == Some(false), || {
                    format!("{pod}: unready is ready")
                })?;
                let ready = at(&p, "status.conditions")
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| str_at(c, "type") == "Ready"))
                    .map(|c| str_at(c, "status").to_string());
                ensure(ready.as_deref() == Some("False"), || {
                    format!("{pod}: Ready is {ready:?} with a container not ready")
                })?;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    })
}

/// Failing liveness probes of each kind restart their container: the kubelet stops it with
/// SIGTERM (each container's trap exits with its own code), and the status shows the restart
/// count and the last state's exit code and reason. An exec probe that outlives its
/// timeoutSeconds fails as timed out (berth's ExecSync ends it at the deadline).
pub fn liveness_failure(c: &Cluster) -> Res {
    const CASE: &str = "probes-fail";
    ensure_runtime_classes(c)?;
    let serve_then_stop = |port: u16, code: u8| {
        sh(&format!(
            "trap 'exit {code}' TERM; mkdir -p /www; echo ok > /www/index.html; \
             httpd -f -p {port} -h /www & h=$!; sleep 3; kill $h; sleep 3600 & wait"
        ))
    };
    let live = |probe: Value| {
        let mut probe = probe;
        probe["periodSeconds"] = json!(1);
        probe["failureThreshold"] = json!(1);
        probe
    };
    // Two pods per handler of two containers each: the kubelet's events of one pod are
    // rate-limited (a burst of 25), and each restart adds some.
    let first = json!({"containers": [
        {"name": "lexec", "image": "busybox",
         "command": sh("trap 'exit 3' TERM; touch /tmp/live; sleep 3; rm /tmp/live; sleep 3600 & wait"),
         "livenessProbe": live(json!({"exec": {"command": ["test", "-f", "/tmp/live"]}}))},
        {"name": "lhttp", "image": "busybox", "command": serve_then_stop(8091, 4),
         "livenessProbe": live(json!({"httpGet": {"path": "/", "port": 8091}}))},
    ]});
    let second = json!({"containers": [
        {"name": "ltcp", "image": "busybox", "command": serve_then_stop(8092, 5),
         "livenessProbe": live(json!({"tcpSocket": {"port": 8092}}))},
        {"name": "ltimeout", "image": "busybox",
         "command": sh("trap 'exit 6' TERM; sleep 3600 & wait"),
         "livenessProbe": live(json!({"exec": {"command": ["sleep", "10"]}, "timeoutSeconds": 1}))},
    ]});
    let mut items = per_handler(CASE, "liveness-a", &first);
    items.extend(per_handler(CASE, "liveness-b", &second));
    apply_list(c, items)?;
    with_cleanup(c, CASE, || {
        let want = [("lexec", 3), ("lhttp", 4), ("ltcp", 5), ("ltimeout", 6)];
        let restarted = |p: &Value| -> Res {
            for (name, code) in want.into_iter().filter(|(n, _)| has(p, n)) {
                let s = container(p, name)?;
                let restarts = at(s, "restartCount").as_u64().unwrap_or(0);
                ensure(restarts >= 1, || format!("{name} not restarted"))?;
                let last = at(s, "lastState.terminated");
                ensure(at(last, "exitCode").as_i64() == Some(code), || {
                    format!("{name}: last state {last}, want exit code {code}")
                })?;
                ensure(str_at(last, "reason") == "Error", || format!("{name}: last state {last}"))?;
            }
            Ok(())
        };
        let timeout = Duration::from_secs(120);
        let pods = wait_pods(c, CASE, 2 * HANDLERS.len(), "liveness restarts", timeout, restarted)?;
        for p in &pods {
            let pod = str_at(p, "metadata.name");
            for (name, _) in want.into_iter().filter(|(n, _)| has(p, n)) {
                let killing = "failed liveness probe, will be restarted";
                wait_event(c, pod, name, "Killing", killing, Duration::from_secs(10))?;
            }
            if has(p, "ltimeout") {
                let wait = Duration::from_secs(10);
                let msg = wait_event(c, pod, "ltimeout", "Unhealthy", "timed out", wait)?;
                println!("{pod}: {msg}");
            }
        }
        crate::matrix::no_event(c, &["liveness-"], "already exists")
    })
}

/// Whether the pod's spec has the container.
fn has(pod: &Value, name: &str) -> bool {
    at(pod, "spec.containers")
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| str_at(c, "name") == name))
}
