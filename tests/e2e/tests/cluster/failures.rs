//! Restarts and failures (issue 17): restart policies, CrashLoopBackOff, containers that exit
//! or cannot start, images that cannot be pulled, image pull policies; on every handler.

use std::time::Duration;

use serde_json::{json, Value};

use crate::kube::{at, ensure, str_at, Cluster, Res, NODES};
use crate::matrix::{
    apply_list, container, ensure_runtime_classes, events, per_handler, sh, wait_event, wait_pods,
    with_cleanup, HANDLERS,
};

fn one(command: &str, restart: &str) -> Value {
    json!({"restartPolicy": restart,
           "containers": [{"name": "main", "image": "busybox", "command": sh(command)}]})
}

fn name_has(pod: &Value, part: &str) -> bool {
    str_at(pod, "metadata.name").contains(part)
}

/// restartPolicy Always restarts a container that exited 0; OnFailure leaves one that exited 0
/// (the pod Succeeded) and restarts one that exited 1; Never leaves a container that exits
/// non-zero at once: the pod Failed, exit code 1, reason Error, no restart.
pub fn restart_policies(c: &Cluster) -> Res {
    const CASE: &str = "restart-policy";
    ensure_runtime_classes(c)?;
    let mut items = Vec::new();
    for (base, command, policy) in [
        ("rp-always-ok", "exit 0", "Always"),
        ("rp-onfailure-ok", "exit 0", "OnFailure"),
        ("rp-onfailure-fail", "exit 1", "OnFailure"),
        ("rp-never-fail", "exit 1", "Never"),
    ] {
        items.extend(per_handler(CASE, base, &one(command, policy)));
    }
    let count = items.len();
    apply_list(c, items)?;
    with_cleanup(c, CASE, || {
        wait_pods(c, CASE, count, "each policy's outcome", Duration::from_secs(120), |p| {
            let s = container(p, "main")?;
            let restarts = at(s, "restartCount").as_u64().unwrap_or(0);
            let phase = str_at(p, "status.phase");
            let (last, now) = (at(s, "lastState.terminated"), at(s, "state.terminated"));
            if name_has(p, "rp-always-ok") {
                ensure(restarts >= 1 && phase == "Running", || {
                    format!("{phase}, {restarts} restarts")
                })?;
                ensure(
                    at(last, "exitCode").as_i64() == Some(0)
                        && str_at(last, "reason") == "Completed",
                    || format!("last state {last}"),
                )
            } else if name_has(p, "rp-onfailure-ok") {
                ensure(phase == "Succeeded" && restarts == 0, || {
                    format!("{phase}, {restarts} restarts")
                })?;
                ensure(
                    at(now, "exitCode").as_i64() == Some(0) && str_at(now, "reason") == "Completed",
                    || format!("state {now}"),
                )
            } else if name_has(p, "rp-onfailure-fail") {
                ensure(restarts >= 1 && phase == "Running", || {
                    format!("{phase}, {restarts} restarts")
                })?;
                ensure(
                    at(last, "exitCode").as_i64() == Some(1) && str_at(last, "reason") == "Error",
                    || format!("last state {last}"),
                )
            } else {
                ensure(phase == "Failed" && restarts == 0, || {
                    format!("{phase}, {restarts} restarts")
                })?;
                ensure(
                    at(now, "exitCode").as_i64() == Some(1) && str_at(now, "reason") == "Error",
                    || format!("state {now}"),
                )
            }
        })
        .and_then(|_| crate::matrix::no_event(c, &["rp-"], "already exists"))
    })
}

/// A container that keeps failing goes into CrashLoopBackOff: the kubelet's BackOff event,
/// restarts with the last exit code in lastState, and the waiting reason CrashLoopBackOff in
/// the status. Kubelet 1.37 resyncs a pod in back-off only when its back-off expires (the
/// pod worker requeues it then), so for a container that fails at once the waiting state is
/// in the API only between that sync and the next exit: a watch sees it, a poll may not.
pub fn crash_loop_back_off(c: &Cluster) -> Res {
    const CASE: &str = "crashloop";
    ensure_runtime_classes(c)?;
    let template = "{.metadata.name} {.status.containerStatuses[0].state.waiting.reason}{\"\\n\"}";
    let watch = c.kubectl_cmd(&[
        "get",
        "pods",
        "-l",
        "matrix=crashloop",
        "-w",
        "-o",
        &format!("jsonpath={template}"),
    ]);
    let mut watch = crate::kube::Background::spawn(watch, false)?;
    apply_list(c, per_handler(CASE, "crashloop", &one("echo crashing; exit 2", "Always")))?;
    with_cleanup(c, CASE, || {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < HANDLERS.len() {
            let pod = watch.expect(
                "a pod waiting in CrashLoopBackOff",
                Duration::from_secs(90),
                |line| {
                    let (pod, reason) = line.trim().split_once(' ')?;
                    (reason == "CrashLoopBackOff").then(|| pod.to_string())
                },
            )?;
            seen.insert(pod);
        }
        println!("waiting in CrashLoopBackOff seen through the watch: {seen:?}");
        let pods = wait_pods(c, CASE, HANDLERS.len(), "restarts", Duration::from_secs(30), |p| {
            let s = container(p, "main")?;
            ensure(at(s, "restartCount").as_u64().unwrap_or(0) >= 1, || "no restart".into())?;
            let last = at(s, "lastState.terminated");
            ensure(at(last, "exitCode").as_i64() == Some(2), || format!("last state {last}"))
        })?;
        for p in &pods {
            let pod = str_at(p, "metadata.name");
            let backoff = "Back-off restarting failed container";
            let msg = wait_event(c, pod, "main", "BackOff", backoff, Duration::from_secs(10))?;
            println!("{pod}: {msg}");
        }
        crate::matrix::no_event(c, &["crashloop-"], "already exists")
    })
}

/// A command that does not exist: the container cannot start; the kubelet reports berth's
/// error (naming the missing file) in the pod's events and the container's waiting state
/// (CreateContainerError or RunContainerError), or, when the OCI runtime's start got as far as
/// an exit, a StartError terminated state; and retries with back-off.
pub fn command_not_found(c: &Cluster) -> Res {
    const CASE: &str = "no-command";
    const MISSING: &str = "/no/such/command";
    ensure_runtime_classes(c)?;
    let spec = json!({"containers": [{"name": "main", "image": "busybox", "command": [MISSING]}]});
    apply_list(c, per_handler(CASE, "nocmd", &spec))?;
    with_cleanup(c, CASE, || {
        let pods = wait_pods(
            c,
            CASE,
            HANDLERS.len(),
            "the start failure in the status",
            Duration::from_secs(90),
            |p| {
                let s = container(p, "main")?;
                let waiting = str_at(s, "state.waiting.reason");
                let message = str_at(s, "state.waiting.message");
                let last = at(s, "lastState.terminated");
                let shown = match waiting {
                    "CreateContainerError" | "RunContainerError" => message.contains(MISSING),
                    // Started once and failed: the failure's message is in the last state.
                    "CrashLoopBackOff" => str_at(last, "message").contains(MISSING),
                    _ => false,
                };
                ensure(shown, || format!("waiting {waiting:?} {message:?}, last state {last}"))
            },
        )?;
        for p in &pods {
            let pod = str_at(p, "metadata.name");
            let msg = wait_event(c, pod, "main", "Failed", MISSING, Duration::from_secs(20))?;
            let s = container(p, "main")?;
            println!(
                "{pod}: waiting {} / last {}: event {msg}",
                at(s, "state.waiting"),
                at(s, "lastState")
            );
        }
        Ok(())
    })
}

/// An image that does not exist in the registry: ErrImagePull (with berth's reason in the
/// event), then ImagePullBackOff.
pub fn image_not_found(c: &Cluster) -> Res {
    const CASE: &str = "no-image";
    const IMAGE: &str = "busybox:no-such-tag";
    ensure_runtime_classes(c)?;
    let spec = json!({"containers": [{"name": "main", "image": IMAGE,
                                      "command": sh("sleep 3600")}]});
    apply_list(c, per_handler(CASE, "noimage", &spec))?;
    with_cleanup(c, CASE, || {
        wait_pods(c, CASE, HANDLERS.len(), "ImagePullBackOff", Duration::from_secs(120), |p| {
            let s = container(p, "main")?;
            let waiting = str_at(s, "state.waiting.reason");
            ensure(waiting == "ImagePullBackOff", || format!("waiting reason {waiting:?}"))
        })?;
        for (suffix, _) in HANDLERS {
            let pod = format!("noimage-{suffix}");
            let pulled = wait_event(
                c,
                &pod,
                "main",
                "Failed",
                "Failed to pull image",
                Duration::from_secs(10),
            )?;
            wait_event(c, &pod, "main", "Failed", "ErrImagePull", Duration::from_secs(10))?;
            wait_event(
                c,
                &pod,
                "main",
                "BackOff",
                "Back-off pulling image",
                Duration::from_secs(10),
            )?;
            wait_event(c, &pod, "main", "Failed", "ImagePullBackOff", Duration::from_secs(10))?;
            ensure(pulled.contains(IMAGE), || format!("{pod}: {pulled}"))?;
            println!("{pod}: {pulled}");
        }
        Ok(())
    })
}

/// imagePullPolicy: Always pulls (Pulling/Pulled events) even with the image on the node;
/// IfNotPresent and Never use the node's image ("already present on machine", no Pulling);
/// Never with an image the node does not have: ErrImageNeverPull. All on one node, the
/// Always pods first so that the image is there.
pub fn image_pull_policies(c: &Cluster) -> Res {
    const CASE: &str = "pull-policy";
    ensure_runtime_classes(c)?;
    let node = NODES[0];
    let spec = |policy: &str, image: &str| {
        json!({"nodeName": node, "containers": [{"name": "main", "image": image,
               "imagePullPolicy": policy, "command": sh("trap 'exit 0' TERM; sleep 3600 & wait")}]})
    };
    apply_list(c, per_handler(CASE, "pp-always", &spec("Always", "busybox")))?;
    with_cleanup(c, CASE, || {
        wait_pods(
            c,
            CASE,
            HANDLERS.len(),
            "the Always pods running",
            Duration::from_secs(90),
            |p| {
                let s = container(p, "main")?;
                ensure(at(s, "state.running").is_object(), || "not running".into())
            },
        )?;
        let mut items = per_handler(CASE, "pp-ifnotpresent", &spec("IfNotPresent", "busybox"));
        items.extend(per_handler(CASE, "pp-never", &spec("Never", "busybox")));
        items.extend(per_handler(CASE, "pp-never-absent", &spec("Never", "busybox:never-pulled")));
        apply_list(c, items)?;
        wait_pods(
            c,
            CASE,
            4 * HANDLERS.len(),
            "each policy's outcome",
            Duration::from_secs(90),
            |p| {
                let s = container(p, "main")?;
                if name_has(p, "pp-never-absent") {
                    let waiting = str_at(s, "state.waiting.reason");
                    ensure(waiting == "ErrImageNeverPull", || format!("waiting reason {waiting:?}"))
                } else {
                    ensure(at(s, "state.running").is_object(), || "not running".into())
                }
            },
        )?;
        for (suffix, _) in HANDLERS {
            let pod = format!("pp-always-{suffix}");
            wait_event(c, &pod, "main", "Pulling", "Pulling image", Duration::from_secs(10))?;
            wait_event(
                c,
                &pod,
                "main",
                "Pulled",
                "Successfully pulled image",
                Duration::from_secs(10),
            )?;
            for base in ["pp-ifnotpresent", "pp-never"] {
                let pod = format!("{base}-{suffix}");
                wait_event(
                    c,
                    &pod,
                    "main",
                    "Pulled",
                    "already present on machine",
                    Duration::from_secs(10),
                )?;
                let pulling =
                    events(c, &pod)?.into_iter().filter(|(r, _, _)| r == "Pulling").count();
                ensure(pulling == 0, || format!("{pod} pulled with its policy"))?;
            }
            let pod = format!("pp-never-absent-{suffix}");
            let msg =
                wait_event(c, &pod, "main", "ErrImageNeverPull", "", Duration::from_secs(10))?;
            println!("{pod}: {msg}");
        }
        Ok(())
    })
}

/// A registry that needs basic auth (Debian's docker-registry with an htpasswd file, serving
/// the cluster registry's storage), on a node's loopback where berth uses plain HTTP; killed
/// when dropped.
struct AuthRegistry(std::process::Child);

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const AUTH_USER: &str = "matrix";
const AUTH_PASSWORD: &str = "matrixpw";

fn start_auth_registry(c: &Cluster, node: &str, port: u16) -> Res<AuthRegistry> {
    let dir = c.dir.join("matrix-auth-registry");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The registry takes bcrypt hashes only; glibc's crypt makes them (through perl).
    let hash = crate::kube::run(
        {
            let mut cmd = std::process::Command::new("perl");
            cmd.args([
                "-e",
                &format!("print crypt('{AUTH_PASSWORD}', '$2b$05$matrixmatrixmatrixmatr')"),
            ]);
            cmd
        },
        None,
        Duration::from_secs(10),
    )?
    .ok("perl crypt")?;
    ensure(hash.starts_with("$2b$"), || format!("no bcrypt hash from crypt: {hash:?}"))?;
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("{AUTH_USER}:{hash}\n")).map_err(|e| e.to_string())?;
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  \
             maintenance: {{readonly: {{enabled: true}}}}\nhttp: {{addr: '127.0.0.1:{port}'}}\n\
             auth:\n  htpasswd: {{realm: matrix, path: {}}}\n",
            c.dir.join("registry/data").display(),
            htpasswd.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/proc/{}/ns/net", c.holder(node)?));
    cmd.args(["--", "docker-registry", "serve"]).arg(&config);
    cmd.stdin(std::process::Stdio::null());
    let log = std::fs::File::create(dir.join("registry.log")).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(log).stderr(err);
    let registry = AuthRegistry(cmd.spawn().map_err(|e| format!("docker-registry: {e}"))?);
    crate::kube::wait_until("the auth registry to answer 401", Duration::from_secs(20), || {
        let code = c.on_node(
            node,
            &format!("curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/v2/"),
        )?;
        Ok((code.trim() == "401").then_some(()))
    })?;
    Ok(registry)
}

/// An image pull secret for a registry that needs auth: pods with the secret pull and run;
/// a pod without it gets ErrImagePull with the registry's refusal in the event.
pub fn image_pull_secret(c: &Cluster) -> Res {
    const CASE: &str = "pull-secret";
    const PORT: u16 = 5001;
    ensure_runtime_classes(c)?;
    let node = NODES[0];
    let _registry = start_auth_registry(c, node, PORT)?;
    let server = format!("127.0.0.1:{PORT}");
    c.kubectl(&["delete", "secret", "matrix-regcred", "--ignore-not-found"])?;
    c.kubectl(&[
        "create",
        "secret",
        "docker-registry",
        "matrix-regcred",
        &format!("--docker-server={server}"),
        &format!("--docker-username={AUTH_USER}"),
        &format!("--docker-password={AUTH_PASSWORD}"),
    ])?;
    let image = format!("{server}/library/busybox:latest");
    let spec = |secret: bool| {
        let mut spec = json!({"nodeName": node, "containers": [{"name": "main", "image": image,
            "imagePullPolicy": "Always", "command": sh("trap 'exit 0' TERM; sleep 3600 & wait")}]});
        if secret {
            spec["imagePullSecrets"] = json!([{"name": "matrix-regcred"}]);
        }
        spec
    };
    let mut items = per_handler(CASE, "secret", &spec(true));
    items.push(crate::matrix::pod(CASE, "nosecret", None, spec(false)));
    apply_list(c, items)?;
    let result = with_cleanup(c, CASE, || {
        wait_pods(
            c,
            CASE,
            HANDLERS.len() + 1,
            "pulled with the secret",
            Duration::from_secs(90),
            |p| {
                let s = container(p, "main")?;
                if name_has(p, "nosecret") {
                    let waiting = str_at(s, "state.waiting.reason");
                    ensure(waiting == "ErrImagePull" || waiting == "ImagePullBackOff", || {
                        format!("waiting {waiting:?}")
                    })
                } else {
                    ensure(at(s, "state.running").is_object(), || "not running".into())
                }
            },
        )?;
        let msg = wait_event(
            c,
            "nosecret",
            "main",
            "Failed",
            "Failed to pull image",
            Duration::from_secs(10),
        )?;
        println!("nosecret: {msg}");
        Ok(())
    });
    let deleted = c.kubectl(&["delete", "secret", "matrix-regcred", "--ignore-not-found"]);
    result.and(deleted.map(drop))
}
