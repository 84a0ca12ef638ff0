//! The workload matrix's shared pieces (issue 17): every case runs the same pod spec on each
//! handler at once (the embedded executor, and the RuntimeClasses `runc` and `crun`), and
//! checks the outcome through the API: pod status, container states, events.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kube::{at, run, str_at, wait_until, Cluster, Res};

/// (suffix of the pod names, RuntimeClass): the embedded executor is the default handler.
pub const HANDLERS: [(&str, Option<&str>); 3] =
    [("emb", None), ("runc", Some("runc")), ("crun", Some("crun"))];

/// The RuntimeClasses for berth's OCI handlers (made by an earlier case too; apply is idempotent).
pub fn ensure_runtime_classes(c: &Cluster) -> Res {
    let items: Vec<Value> = ["runc", "crun"]
        .iter()
        .map(|h| {
            json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                   "metadata": {"name": h}, "handler": h})
        })
        .collect();
    apply_list(c, items)
}

/// A pod labelled with its case (for listing and clean-up), on the given RuntimeClass.
pub fn pod(case: &str, name: &str, class: Option<&str>, mut spec: Value) -> Value {
    if let Some(class) = class {
        spec["runtimeClassName"] = json!(class);
    }
    // The node's image unless a case asks otherwise: fewer events (the kubelet's event budget
    // per pod is 25 in a burst; a pod of four containers that restart uses it up) and no
    // registry round trip per container.
    for container in spec["containers"].as_array_mut().into_iter().flatten() {
        if container.get("imagePullPolicy").is_none() {
            container["imagePullPolicy"] = json!("IfNotPresent");
        }
    }
    if spec.get("terminationGracePeriodSeconds").is_none() {
        spec["terminationGracePeriodSeconds"] = json!(5);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"matrix": case}}, "spec": spec})
}

/// One pod per handler from the same spec: names `<base>-<handler>`.
pub fn per_handler(case: &str, base: &str, spec: &Value) -> Vec<Value> {
    HANDLERS
        .iter()
        .map(|(suffix, class)| pod(case, &format!("{base}-{suffix}"), *class, spec.clone()))
        .collect()
}

pub fn apply_list(c: &Cluster, items: Vec<Value>) -> Res {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    c.apply(&list.to_string())
}

/// The case's pods by name.
pub fn pods(c: &Cluster, case: &str) -> Res<Vec<Value>> {
    let list = c.kubectl_json(&["get", "pods", "-l", &format!("matrix={case}")])?;
    Ok(at(&list, "items").as_array().cloned().unwrap_or_default())
}

/// Waits until `check` accepts every pod of the case (Err: why not yet); the timeout's error
/// names each pod still refused, with its status.
pub fn wait_pods(
    c: &Cluster,
    case: &str,
    want: usize,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> Res,
) -> Res<Vec<Value>> {
    wait_until(what, timeout, || {
        let pods = pods(c, case)?;
        if pods.len() != want {
            return Err(format!("{} pods of {case}, want {want}", pods.len()));
        }
        let refused: Vec<String> = pods
            .iter()
            .filter_map(|p| {
                check(p).err().map(|why| {
                    format!("{}: {why}; status {}", str_at(p, "metadata.name"), at(p, "status"))
                })
            })
            .collect();
        if refused.is_empty() {
            Ok(Some(pods))
        } else {
            Err(refused.join("\n"))
        }
    })
}

/// The status of the pod's container `name` (also init containers).
pub fn container<'a>(pod: &'a Value, name: &str) -> Res<&'a Value> {
    ["status.containerStatuses", "status.initContainerStatuses"]
        .iter()
        .filter_map(|p| at(pod, p).as_array())
        .flatten()
        .find(|s| str_at(s, "name") == name)
        .ok_or(format!("no status of container {name} yet"))
}

/// The pod's events: (reason, message, fieldPath), oldest first.
pub fn events(c: &Cluster, pod: &str) -> Res<Vec<(String, String, String)>> {
    let list = c.kubectl_json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind=Pod,involvedObject.name={pod}"),
    ])?;
    Ok(at(&list, "items")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                str_at(e, "reason").to_string(),
                str_at(e, "message").to_string(),
                str_at(e, "involvedObject.fieldPath").to_string(),
            )
        })
        .collect())
}

/// Waits for an event of the pod with the reason whose message contains `text` (and, when
/// `container` is not empty, about that container); gives its message.
pub fn wait_event(
    c: &Cluster,
    pod: &str,
    container: &str,
    reason: &str,
    text: &str,
    timeout: Duration,
) -> Res<String> {
    let field = format!("spec.containers{{{container}}}");
    wait_until(&format!("event {reason} {text:?} of {pod} {container}"), timeout, || {
        let events = events(c, pod)?;
        let found = events.iter().find(|(r, m, f)| {
            r == reason && m.contains(text) && (container.is_empty() || *f == field)
        });
        match found {
            Some((_, m, _)) => Ok(Some(m.clone())),
            None => Err(format!("events so far: {events:?}")),
        }
    })
}

/// Deletes the case's pods and waits until they are gone.
pub fn delete_case(c: &Cluster, case: &str) -> Res {
    c.kubectl(&["delete", "pod", "-l", &format!("matrix={case}"), "--timeout=120s"]).map(drop)
}

/// Asks the API server to delete the pods (not waiting), then gives how long each took to
/// disappear from it.
pub fn delete_and_time(c: &Cluster, names: &[String], timeout: Duration) -> Res<Vec<Duration>> {
    let start = Instant::now();
    let mut args = vec!["delete", "pod", "--wait=false"];
    args.extend(names.iter().map(String::as_str));
    c.kubectl(&args)?;
    let mut gone: Vec<Option<Duration>> = vec![None; names.len()];
    wait_until("the deleted pods to go", timeout, || {
        let mut args = vec!["get", "pods", "--ignore-not-found", "-o", "name"];
        args.extend(names.iter().map(String::as_str));
        let listed = c.kubectl(&args)?;
        for (i, name) in names.iter().enumerate() {
            if gone[i].is_none() && !listed.lines().any(|l| l == format!("pod/{name}")) {
                gone[i] = Some(start.elapsed());
            }
        }
        Ok(gone.iter().all(Option::is_some).then_some(()))
    })
    .map_err(|err| format!("{err}; gone so far: {gone:?}"))?;
    Ok(gone.into_iter().flatten().collect())
}

/// The pods' `kubectl describe`, for a failure's message.
pub fn describe_case(c: &Cluster, case: &str) -> String {
    match run(
        c.kubectl_cmd(&["describe", "pod", "-l", &format!("matrix={case}")]),
        None,
        Duration::from_secs(60),
    ) {
        Ok(out) => out.stdout,
        Err(err) => err,
    }
}

/// Runs a case's body; on failure the message carries the pods' descriptions. The pods are
/// deleted either way (a failed case must not leave crash-looping pods for the next ones).
pub fn with_cleanup(c: &Cluster, case: &str, body: impl FnOnce() -> Res) -> Res {
    let result =
        body().map_err(|err| format!("{err}\n--- pods of {case}:\n{}", describe_case(c, case)));
    let cleaned = delete_case(c, case);
    result.and(cleaned)
}

/// A shell command as the container's command.
pub fn sh(script: &str) -> Value {
    json!(["sh", "-c", script])
}

/// Fails if a pod whose name starts with one of `prefixes` has an event whose message has
/// `text`: a restart must create each attempt once (kubelet 1.37 with the evented PLEG created
/// an attempt twice when berth listed a pod's containers oldest first: "already exists").
pub fn no_event(c: &Cluster, prefixes: &[&str], text: &str) -> Res {
    let list = c.kubectl_json(&["get", "events"])?;
    let found: Vec<String> = at(&list, "items")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| prefixes.iter().any(|p| str_at(e, "involvedObject.name").starts_with(p)))
        .filter(|e| str_at(e, "message").contains(text))
        .map(|e| format!("{}: {}", str_at(e, "involvedObject.name"), str_at(e, "message")))
        .collect();
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("events with {text:?}:\n{}", found.join("\n")))
    }
}
