//! Nodes, a Deployment over both nodes, the pod network across nodes, a ClusterIP Service,
//! a rolling update, scaling, static pods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::kube::{at, ensure, str_at, wait_until, Cluster, Res, NODES};

pub const WEB: &str = "web";
pub const REPLICAS: usize = 20;

pub fn nodes_ready(c: &Cluster) -> Res {
    c.kubectl(&["wait", "--for=condition=Ready", "node", "--all", "--timeout=120s"])?;
    let nodes = c.kubectl_json(&["get", "nodes"])?;
    let items = at(&nodes, "items").as_array().cloned().unwrap_or_default();
    let names: BTreeSet<&str> = items.iter().map(|n| str_at(n, "metadata.name")).collect();
    ensure(names == NODES.into_iter().collect(), || format!("nodes {names:?}, want {NODES:?}"))?;
    for node in &items {
        let runtime = str_at(node, "status.nodeInfo.containerRuntimeVersion");
        ensure(runtime.starts_with("berth://"), || {
            format!("{} runs {runtime:?}, not berth", str_at(node, "metadata.name"))
        })?;
    }
    Ok(())
}

/// `kubectl get nodes -o wide` shows berth and the version berthd reports (its crate's).
pub fn runtime_version(c: &Cluster) -> Res {
    let wide = c.kubectl(&["get", "nodes", "-o", "wide"])?;
    println!("{wide}");
    let want = format!("berth://{}", env!("CARGO_PKG_VERSION"));
    for node in NODES {
        let line =
            wide.lines().find(|l| l.starts_with(node)).ok_or(format!("{node} not listed"))?;
        ensure(line.split_whitespace().any(|f| f == want), || {
            format!("{node}: no {want} in {line:?}")
        })?;
    }
    Ok(())
}

/// The Deployment most cases use: busybox httpd answering its pod's name on 8080, spread
/// evenly over the nodes. The shell traps TERM so that a pod goes in a moment, not after the
/// grace period (a busybox shell as PID 1 ignores TERM).
fn web_manifest(image: &str, replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {WEB}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {WEB}}}}}
  strategy: {{rollingUpdate: {{maxSurge: 5, maxUnavailable: 5}}}}
  template:
    metadata: {{labels: {{app: {WEB}}}}}
    spec:
      terminationGracePeriodSeconds: 5
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: {WEB}}}}}, matchLabelKeys: [pod-template-hash]}}
      containers:
      - name: {WEB}
        image: {image}
        command: [sh, -c, 'trap "exit 0" TERM; mkdir -p /www; hostname > /www/index.html; httpd -f -p 8080 -h /www & wait']
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 5}}
"#
    )
}

/// The Deployment with all its replicas available: made if an earlier case has not.
pub fn ensure_web(c: &Cluster) -> Res {
    let exists = c.kubectl_out(&["get", "deployment", WEB])?.status.success();
    if !exists {
        c.apply(&web_manifest("busybox", REPLICAS))?;
    }
    c.kubectl(&["rollout", "status", &format!("deployment/{WEB}"), "--timeout=240s"]).map(drop)
}

/// The Deployment's pods: name -> (node, pod IP, phase).
pub fn web_pods(c: &Cluster) -> Res<BTreeMap<String, (String, String, String)>> {
    let pods = c.kubectl_json(&["get", "pods", "-l", &format!("app={WEB}")])?;
    Ok(at(&pods, "items")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|p| at(p, "metadata.deletionTimestamp").is_null())
        .map(|p| {
            (
                str_at(p, "metadata.name").to_string(),
                (
                    str_at(p, "spec.nodeName").to_string(),
                    str_at(p, "status.podIP").to_string(),
                    str_at(p, "status.phase").to_string(),
                ),
            )
        })
        .collect())
}

/// One web pod on each node: (name, ip) per node.
pub fn web_pod_per_node(c: &Cluster) -> Res<Vec<(String, String)>> {
    let pods = web_pods(c)?;
    NODES
        .iter()
        .map(|node| {
            pods.iter()
                .find(|(_, (n, ip, phase))| n == node && !ip.is_empty() && phase == "Running")
                .map(|(name, (_, ip, _))| (name.clone(), ip.clone()))
                .ok_or(format!("no running web pod on {node}"))
        })
        .collect()
}

fn check_spread(c: &Cluster, image: &str) -> Res {
    let pods = web_pods(c)?;
    ensure(pods.len() == REPLICAS, || {
        format!("{} web pods, want {REPLICAS}: {pods:?}", pods.len())
    })?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, (node, _, phase)) in &pods {
        ensure(phase == "Running", || format!("{name} is {phase}"))?;
        *per_node.entry(node.as_str()).or_default() += 1;
    }
    println!("web pods per node: {per_node:?}");
    ensure(
        NODES.iter().all(|n| per_node.get(n).copied().unwrap_or(0) >= REPLICAS / 2 - 1),
        || format!("not spread over both nodes: {per_node:?}"),
    )?;
    // Every container runs the image asked for; the status names it (not an image id).
    let list = c.kubectl_json(&["get", "pods", "-l", &format!("app={WEB}")])?;
    for pod in at(&list, "items").as_array().map(Vec::as_slice).unwrap_or_default() {
        let shown = str_at(pod, "status.containerStatuses.0.image");
        ensure(
            shown.ends_with(&format!("/{image}"))
                || shown == image
                || shown.ends_with(&format!("/{image}:latest")),
            || format!("{} shows image {shown:?}, want {image}", str_at(pod, "metadata.name")),
        )?;
    }
    Ok(())
}

pub fn deployment(c: &Cluster) -> Res {
    ensure_web(c)?;
    check_spread(c, "busybox")
}

/// An HTTP/1.0 GET with busybox nc (busybox-static's wget crashes on this Debian).
fn http_get(target: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {target}")
}

pub fn pod_to_pod(c: &Cluster) -> Res {
    ensure_web(c)?;
    let pair = web_pod_per_node(c)?;
    for (from, to) in [(&pair[0], &pair[1]), (&pair[1], &pair[0])] {
        let answer = wait_until(
            &format!("{} to reach {} at {}", from.0, to.0, to.1),
            Duration::from_secs(30),
            || {
                let out = c.exec(&from.0, &http_get(&format!("{} 8080", to.1)))?;
                Ok(out.contains(&to.0).then_some(out))
            },
        )?;
        println!("{} -> {}: {}", from.0, to.0, answer.lines().last().unwrap_or(""));
    }
    Ok(())
}

pub fn cluster_ip_service(c: &Cluster) -> Res {
    ensure_web(c)?;
    if !c.kubectl_out(&["get", "service", WEB])?.status.success() {
        c.kubectl(&["expose", "deployment", WEB, "--port=80", "--target-port=8080"])?;
    }
    let ip = c.kubectl(&["get", "service", WEB, "-o", "jsonpath={.spec.clusterIP}"])?;
    // The endpoints are all there before kube-proxy is asked to balance over them.
    wait_until("the service's endpoints to be ready", Duration::from_secs(60), || {
        let slices = c.kubectl_json(&[
            "get",
            "endpointslices",
            "-l",
            &format!("kubernetes.io/service-name={WEB}"),
        ])?;
        let ready = at(&slices, "items")
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| at(s, "endpoints").as_array().cloned().unwrap_or_default())
            .filter(|e| at(e, "conditions.ready").as_bool() == Some(true))
            .count();
        Ok((ready == REPLICAS).then_some(()))
    })?;
    let pods = web_pods(c)?;
    let (client, _) = web_pod_per_node(c)?.remove(0);
    // Requests until pods on both nodes have answered: kube-proxy picks endpoints at random.
    let mut answered: BTreeSet<String> = BTreeSet::new();
    wait_until("pods on both nodes to answer through the service", Duration::from_secs(60), || {
        let script =
            format!("for i in 1 2 3 4 5 6 7 8 9 10; do {}; done", http_get(&format!("{ip} 80")));
        let out = c.exec(&client, &script)?;
        answered
            .extend(out.lines().map(str::trim).filter(|l| pods.contains_key(*l)).map(String::from));
        let nodes: BTreeSet<&str> =
            answered.iter().filter_map(|p| pods.get(p)).map(|(n, _, _)| n.as_str()).collect();
        Ok((nodes.len() == NODES.len()).then_some(()))
    })
    .map_err(|err| format!("{err}; answered so far: {answered:?}"))?;
    println!("{} of {REPLICAS} endpoints answered through {ip}", answered.len());
    Ok(())
}

pub fn rolling_update(c: &Cluster) -> Res {
    ensure_web(c)?;
    c.kubectl(&["set", "image", &format!("deployment/{WEB}"), &format!("{WEB}=busybox:2")])?;
    c.kubectl(&["rollout", "status", &format!("deployment/{WEB}"), "--timeout=240s"])?;
    // The rollout is complete by the Deployment's status; the old pods' deletion may still be
    // on its way to the pod list.
    wait_until("only pods of the new template, all running", Duration::from_secs(60), || {
        let list = c.kubectl_json(&["get", "pods", "-l", &format!("app={WEB}")])?;
        let pods = at(&list, "items").as_array().cloned().unwrap_or_default();
        let new = pods
            .iter()
            .filter(|p| str_at(p, "spec.containers.0.image") == "busybox:2")
            .filter(|p| str_at(p, "status.phase") == "Running")
            .count();
        Ok((pods.len() == REPLICAS && new == REPLICAS).then_some(()))
    })?;
    check_spread(c, "busybox:2")
}

pub fn scale_to_zero_and_back(c: &Cluster) -> Res {
    ensure_web(c)?;
    c.kubectl(&["scale", &format!("deployment/{WEB}"), "--replicas=0"])?;
    wait_until("the web pods to go", Duration::from_secs(120), || {
        Ok(web_pods(c)?.is_empty().then_some(()))
    })?;
    // The kubelet has stopped their sandboxes in berth too (it removes them later, in its
    // garbage collection once a minute).
    for node in NODES {
        no_ready_sandbox(c, node, &format!("app={WEB}"))?;
    }
    c.kubectl(&["scale", &format!("deployment/{WEB}"), &format!("--replicas={REPLICAS}")])?;
    c.kubectl(&["rollout", "status", &format!("deployment/{WEB}"), "--timeout=240s"])?;
    let image = c.kubectl(&[
        "get",
        "deployment",
        WEB,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    check_spread(c, &image)
}

/// A pod from a manifest in the node's staticPodPath: its mirror pod appears in the API
/// server, Running; removing the file removes the pod.
pub fn static_pod(c: &Cluster) -> Res {
    let node = NODES[1];
    let dir = c.node_dir(node).join("manifests");
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: static-web, labels: {app: static-web}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "exit 0" TERM; echo static; sleep 3600 & wait']
"#;
    // Written aside and renamed: the kubelet ignores dot files and must not read half a file.
    let tmp = dir.join(".static-web.yaml");
    std::fs::write(&tmp, manifest).map_err(|err| format!("{}: {err}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("static-web.yaml"))
        .map_err(|err| format!("placing the manifest: {err}"))?;
    let mirror = format!("static-web-{node}");
    wait_until("the mirror pod", Duration::from_secs(60), || {
        Ok(c.kubectl_out(&["get", "pod", &mirror])?.status.success().then_some(()))
    })?;
    c.wait_ready(&[&mirror], Duration::from_secs(60))?;
    let pod: Value = c.pod(&mirror)?;
    ensure(config_source(&pod) == "file", || {
        format!("{mirror} is not from a file: {}", at(&pod, "metadata.annotations"))
    })?;
    ensure(c.exec(&mirror, "echo hi")?.trim() == "hi", || "exec in the static pod".into())?;
    std::fs::remove_file(dir.join("static-web.yaml"))
        .map_err(|err| format!("removing the manifest: {err}"))?;
    wait_until("the mirror pod to go", Duration::from_secs(60), || {
        Ok((!c.kubectl_out(&["get", "pod", &mirror])?.status.success()).then_some(()))
    })?;
    no_ready_sandbox(c, node, "app=static-web")
}

/// Waits until berthd on the node has no ready sandbox with the label.
fn no_ready_sandbox(c: &Cluster, node: &str, label: &str) -> Res {
    wait_until(&format!("no ready sandbox {label} on {node}"), Duration::from_secs(60), || {
        let pods = c.crictl_json(node, &["pods", "--label", label, "--state", "ready"])?;
        Ok(at(&pods, "items").as_array().is_none_or(Vec::is_empty).then_some(()))
    })
}

fn config_source(pod: &Value) -> &str {
    at(pod, "metadata.annotations")
        .get("kubernetes.io/config.source")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Pods on the OCI runtime handlers berth configures by default (RuntimeClasses `runc` and
/// `crun`), beside the embedded executor every other case uses.
pub fn runtime_classes(c: &Cluster) -> Res {
    let mut pods = Vec::new();
    for handler in ["runc", "crun"] {
        let pod = format!("on-{handler}");
        c.apply(&format!(
            "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {{name: {handler}}}\n\
             handler: {handler}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\n\
             spec:\n  runtimeClassName: {handler}\n  terminationGracePeriodSeconds: 5\n  \
             containers:\n  - name: main\n    image: busybox\n    \
             command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n"
        ))?;
        pods.push(pod);
    }
    let names: Vec<&str> = pods.iter().map(String::as_str).collect();
    c.wait_ready(&names, Duration::from_secs(90))?;
    for pod in &names {
        let out = c.exec(pod, "echo hi from $(hostname)")?;
        ensure(out.trim() == format!("hi from {pod}"), || format!("{pod}: {out:?}"))?;
    }
    c.delete_pods(&names)
}
