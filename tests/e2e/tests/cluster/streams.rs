//! The streaming paths a user drives through the API server with the upstream kubectl: exec
//! (plain, with stdin, and in a real terminal), logs and logs -f, attach, port-forward, cp.
//! The API server proxies each to the kubelet, which redirects to berthd's streaming server.

use std::time::Duration;

use berth_e2e::terminal::Terminal;

use crate::kube::{ensure, run, wait_until, Background, Cluster, Res};
use crate::workloads::{ensure_web, web_pod_per_node};

/// A web pod on the second node (so the stream crosses from the control plane to a node).
fn some_web_pod(c: &Cluster) -> Res<String> {
    ensure_web(c)?;
    Ok(web_pod_per_node(c)?.remove(1).0)
}

pub fn exec(c: &Cluster) -> Res {
    let pod = some_web_pod(c)?;
    let out = c.kubectl_out(&["exec", &pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3"])?;
    ensure(out.status.code() == Some(3), || format!("exit status {:?}, want 3", out.status))?;
    ensure(out.stdout == "out\n", || format!("stdout {:?}", out.stdout))?;
    ensure(out.stderr.contains("err\n"), || format!("stderr {:?}", out.stderr))?;
    // stdin through `-i`, to its end.
    let input = "line one\nline two\n";
    let out = run(
        c.kubectl_cmd(&["exec", "-i", &pod, "--", "sh", "-c", "cat; echo eof"]),
        Some(input.as_bytes()),
        Duration::from_secs(60),
    )?;
    let stdout = out.ok("kubectl exec -i")?;
    ensure(stdout == format!("{input}eof\n"), || format!("exec -i gave {stdout:?}"))
}

/// `kubectl exec -it` on a pty: keys typed after the shell is up (and a pause, as a user
/// types), a resize seen by the container, the exit code passed back.
pub fn exec_tty(c: &Cluster) -> Res {
    let pod = some_web_pod(c)?;
    let mut term = Terminal::spawn(c.kubectl_cmd(&["exec", "-it", &pod, "--", "sh"]), 24, 80);
    let wait = Duration::from_secs(30);
    if !term.try_expect("# ", wait) {
        return Err(format!("no shell prompt; the terminal shows:\n{}", term.text()));
    }
    // The scenario, not a wait for something: keys typed a while after the session began.
    std::thread::sleep(Duration::from_secs(1));
    term.type_keys("echo $((6 * 7))\r");
    if !term.try_expect("42", wait) {
        return Err(format!("no answer to typed keys; the terminal shows:\n{}", term.text()));
    }
    term.type_keys("stty size\r");
    if !term.try_expect("24 80", wait) {
        return Err(format!("not 24x80; the terminal shows:\n{}", term.text()));
    }
    term.resize(30, 100);
    // The resize travels to the container asynchronously: ask until it shows.
    wait_until("the resize to reach the container", Duration::from_secs(20), || {
        term.type_keys("stty size\r");
        Ok(term.try_expect("30 100", Duration::from_secs(1)).then_some(()))
    })
    .map_err(|err| format!("{err}; the terminal shows:\n{}", term.text()))?;
    term.type_keys("exit 5\r");
    let status = term.wait(wait);
    ensure(status.code() == Some(5), || {
        format!("kubectl exec -it exited {status:?}, want 5:\n{}", term.text())
    })
}

pub fn logs(c: &Cluster) -> Res {
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: logger}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "exit 0" TERM; echo first; echo second >&2; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1 & wait; done']
"#;
    c.apply(manifest)?;
    c.wait_ready(&["logger"], Duration::from_secs(60))?;
    let before = wait_until("the first lines in kubectl logs", Duration::from_secs(30), || {
        let text = c.kubectl(&["logs", "logger"])?;
        Ok((text.contains("first\n") && text.contains("second\n") && text.contains("tick 0"))
            .then_some(text))
    })?;
    let last = before
        .lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    // Following: a line written after kubectl started arrives on the open stream.
    let mut follow = Background::spawn(c.kubectl_cmd(&["logs", "-f", "logger"]), false)?;
    let next = follow.expect("a new tick from logs -f", Duration::from_secs(30), |line| {
        line.strip_prefix("tick ").and_then(|n| n.parse::<u64>().ok()).filter(|n| *n > last + 1)
    })?;
    ensure(follow.seen.iter().any(|l| l == "first"), || {
        format!("logs -f did not start from the beginning: {:?}", follow.seen)
    })?;
    println!("logs -f: tick {next} arrived (tick {last} was the last before)");
    drop(follow);
    c.delete_pods(&["logger"])
}

pub fn attach(c: &Cluster) -> Res {
    let manifest = r#"apiVersion: v1
kind: Pod
metadata: {name: attached}
spec:
  # Its shell waits in `read` and takes TERM only after it: a second of grace, not five.
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    stdin: true
    command: [sh, -c, 'echo ready; while read line; do echo "got:$line"; done']
"#;
    c.apply(manifest)?;
    c.wait_ready(&["attached"], Duration::from_secs(60))?;
    let mut client =
        Background::spawn(c.kubectl_cmd(&["attach", "-i", "attached", "-c", "main"]), true)?;
    // What is typed before the stream is up waits in kubectl's stdin; write again until seen.
    wait_until("an answer through attach", Duration::from_secs(30), || {
        client.write("hello\n")?;
        Ok(client
            .expect("got:hello", Duration::from_secs(2), |l| (l == "got:hello").then_some(()))
            .ok())
    })?;
    drop(client);
    let logs = c.kubectl(&["logs", "attached"])?;
    ensure(logs.contains("got:hello"), || {
        format!("the container's log lacks what was attached: {logs:?}")
    })?;
    c.delete_pods(&["attached"])
}

pub fn port_forward(c: &Cluster) -> Res {
    let pod = some_web_pod(c)?;
    let mut forward =
        Background::spawn(c.kubectl_cmd(&["port-forward", &format!("pod/{pod}"), ":8080"]), false)?;
    let port = forward.expect("the forwarded port", Duration::from_secs(30), |line| {
        // "Forwarding from 127.0.0.1:PORT -> 8080"
        line.strip_prefix("Forwarding from 127.0.0.1:")?.split(' ').next()?.parse::<u16>().ok()
    })?;
    for _ in 0..3 {
        let mut curl = c.in_cp("curl");
        curl.args(["-fsS", "--max-time", "10", &format!("http://127.0.0.1:{port}/")]);
        let body = run(curl, None, Duration::from_secs(20))?.ok("curl through port-forward")?;
        ensure(body.trim() == pod, || format!("port-forward answered {body:?}, want {pod}"))?;
    }
    Ok(())
}

pub fn cp(c: &Cluster) -> Res {
    let pod = some_web_pod(c)?;
    let work = c.dir.join("cp-test");
    std::fs::create_dir_all(&work).map_err(|err| format!("{}: {err}", work.display()))?;
    let content: String =
        (0..2000).map(|i| format!("line {i} of a file copied by kubectl cp\n")).collect();
    let local = work.join("in.txt");
    std::fs::write(&local, &content).map_err(|err| format!("{err}"))?;
    let local_s = local.display().to_string();
    c.kubectl(&["cp", &local_s, &format!("default/{pod}:/tmp/copied.txt")])?;
    let inside = c.exec(&pod, "cat /tmp/copied.txt")?;
    ensure(inside == content, || {
        format!("the copy in the pod differs ({} bytes, want {})", inside.len(), content.len())
    })?;
    c.exec(&pod, "echo from-the-pod > /tmp/back.txt")?;
    let back = work.join("back.txt");
    c.kubectl(&["cp", &format!("default/{pod}:/tmp/back.txt"), &back.display().to_string()])?;
    let text =
        std::fs::read_to_string(&back).map_err(|err| format!("{}: {err}", back.display()))?;
    ensure(text == "from-the-pod\n", || format!("copied out {text:?}"))?;
    std::fs::remove_dir_all(&work).map_err(|err| format!("{err}"))
}
