//! Termination (issue 17): graceful deletion with a preStop hook, a process that ignores
//! SIGTERM, a custom stop signal, Job completion, a pod deleted while its image is pulling;
//! on every handler.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::kube::{at, ensure, str_at, wait_until, Cluster, Res, NODES};
use crate::matrix::{
    apply_list, container, delete_and_time, ensure_runtime_classes, per_handler, sh, wait_event,
    wait_pods, with_cleanup, HANDLERS,
};

/// The node directory the pods write their traces to (a hostPath), read back on the node.
const TRACE_DIR: &str = "/tmp/berth-matrix-e2e";

fn traced(node: &str, grace: u64, container: Value) -> Value {
    json!({
        "nodeName": node, "terminationGracePeriodSeconds": grace,
        "volumes": [{"name": "trace", "hostPath": {"path": TRACE_DIR, "type": "DirectoryOrCreate"}}],
        "containers": [container],
    })
}

fn running(p: &Value) -> Res {
    let s = container(p, "main")?;
    ensure(at(s, "state.running").is_object() && at(s, "ready").as_bool() == Some(true), || {
        "not running and ready".into()
    })
}

fn trace(c: &Cluster, node: &str, pod: &str) -> Res<String> {
    c.on_node(node, &format!("cat {TRACE_DIR}/{pod} 2>/dev/null || true"))
}

fn clear_traces(c: &Cluster, node: &str, names: &[String]) -> Res {
    let files: Vec<String> = names.iter().map(|n| format!("{TRACE_DIR}/{n}")).collect();
    c.on_node(node, &format!("rm -f {}", files.join(" "))).map(drop)
}

fn names(base: &str) -> Vec<String> {
    HANDLERS.iter().map(|(suffix, _)| format!("{base}-{suffix}")).collect()
}

/// Graceful deletion: the kubelet runs the preStop exec hook (it appends to a hostPath file and
/// takes 2 s), then sends SIGTERM (the trap appends and exits 0); the pod goes well before its
/// 30 s grace period ends, in that order.
pub fn graceful_with_pre_stop(c: &Cluster) -> Res {
    const CASE: &str = "graceful";
    ensure_runtime_classes(c)?;
    let node = NODES[0];
    let pods = names("graceful");
    clear_traces(c, node, &pods)?;
    let main = json!({
        "name": "main", "image": "busybox",
        "volumeMounts": [{"name": "trace", "mountPath": "/trace"}],
        "command": sh("f=/trace/$(hostname); trap 'echo term >> $f; exit 0' TERM; \
                       echo started >> $f; sleep 3600 & wait"),
        "lifecycle": {"preStop": {"exec": {"command": sh("echo prestop >> /trace/$(hostname); sleep 2")}}},
    });
    apply_list(c, per_handler(CASE, "graceful", &traced(node, 30, main)))?;
    with_cleanup(c, CASE, || {
        wait_pods(c, CASE, HANDLERS.len(), "running", Duration::from_secs(90), running)?;
        let took = delete_and_time(c, &pods, Duration::from_secs(60))?;
        for (pod, took) in pods.iter().zip(&took) {
            let trace = trace(c, node, pod)?;
            println!("{pod}: gone in {took:.1?}; trace {trace:?}");
            ensure(trace == "started\nprestop\nterm\n", || {
                format!("{pod}: trace {trace:?}, want started, prestop, term")
            })?;
            ensure(*took >= Duration::from_secs(2) && *took < Duration::from_secs(20), || {
                format!("{pod} took {took:?} to go (preStop 2 s, then TERM; grace 30 s)")
            })?;
        }
        clear_traces(c, node, &pods)
    })
}

/// A process that ignores SIGTERM is killed at the end of the grace period (8 s): its pod
/// takes about that long to go, no less.
pub fn sigterm_ignored(c: &Cluster) -> Res {
    const CASE: &str = "ignore-term";
    ensure_runtime_classes(c)?;
    let spec = json!({"terminationGracePeriodSeconds": 8, "containers": [{
        "name": "main", "image": "busybox",
        "command": sh("trap '' TERM; while true; do sleep 1; done"),
    }]});
    apply_list(c, per_handler(CASE, "noterm", &spec))?;
    with_cleanup(c, CASE, || {
        wait_pods(c, CASE, HANDLERS.len(), "running", Duration::from_secs(90), running)?;
        let pods = names("noterm");
        let took = delete_and_time(c, &pods, Duration::from_secs(60))?;
        for (pod, took) in pods.iter().zip(&took) {
            println!("{pod}: gone in {took:.1?}");
            ensure(*took >= Duration::from_secs(7) && *took < Duration::from_secs(25), || {
                format!("{pod} took {took:?} to go, want about the grace period (8 s)")
            })?;
        }
        Ok(())
    })
}

/// Pushes `busybox:stopsignal` to the cluster's registry: busybox's layer with a config that
/// has `StopSignal: SIGUSR2` (STOPSIGNAL in a Dockerfile).
fn push_stop_signal_image(c: &Cluster) -> Res {
    let work = c.dir.join("matrix-stopsignal-image");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let script = format!(
        r#"set -eu
cd {work}
r=http://127.0.0.1:5000/v2/library/busybox
accept='Accept: application/vnd.oci.image.manifest.v1+json'
curl -fsS -H "$accept" $r/manifests/latest > manifest.json
old=$(sed 's/.*"config":{{[^}}]*"digest":"\([^"]*\)".*/\1/' manifest.json)
curl -fsS $r/blobs/$old | sed 's/"config":{{/"config":{{"StopSignal":"SIGUSR2",/' > config.json
grep -q SIGUSR2 config.json
new=sha256:$(sha256sum config.json | cut -d' ' -f1)
size=$(stat -c %s config.json)
loc=$(curl -fsS -X POST -D - -o /dev/null $r/blobs/uploads/ | tr -d '\r' | awk 'tolower($1) == "location:" {{ print $2 }}')
case $loc in http*) ;; *) loc=http://127.0.0.1:5000$loc ;; esac
case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary @config.json "$loc${{sep}}digest=$new" > /dev/null
sed "s/\"config\":{{\([^}}]*\)\"digest\":\"$old\",\"size\":[0-9]*/\"config\":{{\1\"digest\":\"$new\",\"size\":$size/" manifest.json > manifest2.json
grep -q "$new" manifest2.json
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @manifest2.json $r/manifests/stopsignal > /dev/null
"#,
        work = work.display()
    );
    let mut cmd = c.in_cp("sh");
    cmd.args(["-c", &script]);
    crate::kube::run(cmd, None, Duration::from_secs(60))?.ok("pushing busybox:stopsignal").map(drop)
}

/// A custom stop signal, from the pod spec (`lifecycle.stopSignal`, gate ContainerStopSignals;
/// the CRI's stop_signal: SIGUSR1) and from the image (STOPSIGNAL SIGUSR2 in its config): the
/// kubelet's stop sends that signal, which the container traps (it ignores TERM), so it goes
/// at once, not after its 30 s grace period.
pub fn stop_signal(c: &Cluster) -> Res {
    const CASE: &str = "stop-signal";
    ensure_runtime_classes(c)?;
    push_stop_signal_image(c)?;
    let node = NODES[0];
    let (spec_pods, image_pods) = (names("stopsig"), names("imgsig"));
    let pods: Vec<String> = spec_pods.iter().chain(&image_pods).cloned().collect();
    clear_traces(c, node, &pods)?;
    let main = |image: &str| {
        json!({
            "name": "main", "image": image,
            "volumeMounts": [{"name": "trace", "mountPath": "/trace"}],
            "command": sh("f=/trace/$(hostname); trap 'echo usr1 >> $f; exit 0' USR1; \
                           trap 'echo usr2 >> $f; exit 0' USR2; trap '' TERM; sleep 3600 & wait"),
        })
    };
    let mut from_spec = main("busybox");
    from_spec["lifecycle"] = json!({"stopSignal": "SIGUSR1"});
    let mut spec = traced(node, 30, from_spec);
    spec["os"] = json!({"name": "linux"});
    let mut items = per_handler(CASE, "stopsig", &spec);
    items.extend(per_handler(CASE, "imgsig", &traced(node, 30, main("busybox:stopsignal"))));
    apply_list(c, items)?;
    with_cleanup(c, CASE, || {
        let listed = wait_pods(c, CASE, pods.len(), "running", Duration::from_secs(90), running)?;
        for p in listed.iter().filter(|p| str_at(p, "metadata.name").starts_with("stopsig")) {
            let kept = str_at(p, "spec.containers.0.lifecycle.stopSignal");
            ensure(kept == "SIGUSR1", || {
                format!("the API server dropped lifecycle.stopSignal (gate off?): {kept:?}")
            })?;
        }
        let took = delete_and_time(c, &pods, Duration::from_secs(60))?;
        for (pod, took) in pods.iter().zip(&took) {
            let trace = trace(c, node, pod)?;
            println!("{pod}: gone in {took:.1?}; trace {trace:?}");
            let want = if spec_pods.contains(pod) { "usr1\n" } else { "usr2\n" };
            ensure(trace == want, || format!("{pod}: trace {trace:?}, want {want:?}"))?;
            ensure(*took < Duration::from_secs(15), || format!("{pod} took {took:?} to go"))?;
        }
        clear_traces(c, node, &pods)
    })
}

/// A Job of two completions (two pods at once) completes on each handler.
pub fn job_completion(c: &Cluster) -> Res {
    ensure_runtime_classes(c)?;
    let jobs: Vec<(String, Value)> = HANDLERS
        .iter()
        .map(|(suffix, class)| {
            let name = format!("job-{suffix}");
            let mut spec = json!({"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "main", "image": "busybox",
                                "command": sh("echo done from $(hostname)")}]});
            if let Some(class) = class {
                spec["runtimeClassName"] = json!(class);
            }
            let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"completions": 2, "parallelism": 2, "backoffLimit": 0,
                         "template": {"spec": spec}}});
            (name, job)
        })
        .collect();
    apply_list(c, jobs.iter().map(|(_, j)| j.clone()).collect())?;
    let names: Vec<String> = jobs.iter().map(|(n, _)| format!("job/{n}")).collect();
    let mut args = vec!["wait", "--for=condition=Complete", "--timeout=120s"];
    args.extend(names.iter().map(String::as_str));
    let waited = c.kubectl(&args).map(drop);
    let result = waited.and_then(|()| {
        for (name, _) in &jobs {
            let job = c.kubectl_json(&["get", "job", name])?;
            let succeeded = at(&job, "status.succeeded").as_u64();
            ensure(succeeded == Some(2), || format!("{name}: succeeded {succeeded:?}"))?;
            let logs = c.kubectl(&["logs", &format!("job/{name}")])?;
            ensure(logs.contains("done from"), || format!("{name}: logs {logs:?}"))?;
            println!("{name}: {} succeeded: {}", 2, logs.trim());
        }
        Ok(())
    });
    let describe = if result.is_err() { c.describe(&[]) } else { String::new() };
    let mut args = vec!["delete", "--cascade=foreground", "--timeout=90s"];
    args.extend(names.iter().map(String::as_str));
    let deleted = c.kubectl(&args).map(drop);
    result.map_err(|err| format!("{err}\n{describe}")).and(deleted)
}

/// A registry on the node's loopback (berth uses plain HTTP there) that takes connections and
/// never answers: a pull from it hangs until cancelled. Stops when dropped.
struct SilentRegistry {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentRegistry {
    fn start(c: &Cluster, node: &str, port: u16) -> Res<SilentRegistry> {
        let netns = format!("/proc/{}/ns/net", c.holder(node)?);
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (ready, started) = std::sync::mpsc::channel();
        let (s, a) = (stop.clone(), accepted.clone());
        // Its own thread: setns changes the network namespace of the calling thread only.
        let thread = std::thread::spawn(move || {
            let listener = (|| -> Res<TcpListener> {
                let ns = std::fs::File::open(&netns).map_err(|e| format!("{netns}: {e}"))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns {netns}: {e}"))?;
                let l = TcpListener::bind(("127.0.0.1", port)).map_err(|e| format!("bind: {e}"))?;
                l.set_nonblocking(true).map_err(|e| format!("nonblocking: {e}"))?;
                Ok(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready.send(Ok(()));
                    l
                }
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        held.push(conn);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        started
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("the silent registry did not start: {e}"))??;
        Ok(SilentRegistry { stop, accepted, thread: Some(thread) })
    }
}

impl Drop for SilentRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A pod deleted while its image is pulling (from a registry that takes the connection and
/// never answers). The kubelet does not cancel a pull when its pod is deleted (kubelet 1.37
/// runs SyncPod under context.WithoutCancel, TODO #113606; with serialized pulls a queued one
/// waits too), so the pod goes when berth gives the pull up: after its stall timeout
/// (registry.stall_timeout_secs, 60 s by default; containerd's image_pull_progress_timeout
/// plays the same part), with berth's reason in the pod's events. Afterwards the node pulls
/// again. One pod: no container is created before the pull, so the handler plays no part.
pub fn deleted_while_pulling(c: &Cluster) -> Res {
    const CASE: &str = "pull-deleted";
    const PORT: u16 = 5999;
    const STALL: Duration = Duration::from_secs(60);
    let node = NODES[0];
    let registry = SilentRegistry::start(c, node, PORT)?;
    let spec = json!({"nodeName": node, "containers": [{"name": "main",
        "image": format!("127.0.0.1:{PORT}/slow/busybox:1"), "command": sh("sleep 3600")}]});
    apply_list(c, vec![crate::matrix::pod(CASE, "pulling", None, spec)])?;
    let result = with_cleanup(c, CASE, || {
        let pod = "pulling".to_string();
        wait_event(c, &pod, "main", "Pulling", "Pulling image", Duration::from_secs(60))?;
        let pulling = std::time::Instant::now();
        wait_until("berth to connect to the registry", Duration::from_secs(30), || {
            Ok((registry.accepted.load(Ordering::Relaxed) > 0).then_some(()))
        })?;
        let p = c.pod(&pod)?;
        let waiting = str_at(container(&p, "main")?, "state.waiting.reason");
        ensure(waiting == "ContainerCreating", || {
            format!("{pod}: waiting {waiting:?} while pulling")
        })?;
        let took = delete_and_time(c, std::slice::from_ref(&pod), STALL + Duration::from_secs(45))?;
        let since_pull = pulling.elapsed();
        println!(
            "{pod}: deleted while pulling, gone in {:.1?} ({since_pull:.1?} after the pull began)",
            took[0]
        );
        ensure(since_pull >= STALL - Duration::from_secs(5), || {
            format!("{pod} went {since_pull:?} after its pull began: the pull was not hanging?")
        })?;
        let msg =
            wait_event(c, &pod, "main", "Failed", "no data received", Duration::from_secs(20))?;
        println!("{pod}: {msg}");
        let after = json!({"nodeName": node, "containers": [{"name": "main", "image": "busybox",
            "imagePullPolicy": "Always", "command": sh("trap 'exit 0' TERM; sleep 3600 & wait")}]});
        apply_list(c, per_handler(CASE, "pullafter", &after))?;
        wait_pods(
            c,
            CASE,
            HANDLERS.len(),
            "pods pulled after the deletion",
            Duration::from_secs(90),
            running,
        )?;
        println!(
            "berth took {} connections to the silent registry",
            registry.accepted.load(Ordering::Relaxed)
        );
        Ok(())
    });
    drop(registry);
    result
}
