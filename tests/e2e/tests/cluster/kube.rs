//! The suite's handle on the cluster: the `deploy/cluster/cluster` script, kubectl (run in the
//! control plane's network namespace, where the API server listens), crictl on a node's berthd
//! socket, and waits with deadlines.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The cluster's name (BERTH_CLUSTER_NAME): its namespaces are `berthct-cp`, `berthct-nI` and
/// its cgroups `berthct/`, so a user's cluster (`berthc`) is never touched.
pub const NAME: &str = "berthct";
/// Its state dir (BERTH_CLUSTER_DIR), fixed so that a run that was killed is found and taken
/// down by the next one.
pub const DIR: &str = "/var/lib/berth-cluster-e2e";

/// The name this run uses: [`NAME`], or `BERTH_CLUSTER_E2E_NAME` (up to 11 letters and digits)
/// for a run beside another one, e.g. of a second worktree.
pub fn name() -> &'static str {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| match std::env::var("BERTH_CLUSTER_E2E_NAME") {
        Ok(name)
            if !name.is_empty()
                && name.len() <= 11
                && name.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            name
        }
        Ok(name) => panic!("BERTH_CLUSTER_E2E_NAME {name:?}: up to 11 letters and digits"),
        Err(_) => NAME.to_string(),
    })
}

/// The state dir this run uses: [`DIR`], or `<DIR>-<name>` beside another run.
pub fn dir() -> &'static str {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN.get_or_init(|| match name() {
        NAME => DIR.to_string(),
        other => format!("{DIR}-{other}"),
    })
}
pub const NODES: [&str; 2] = ["berth-node-1", "berth-node-2"];

pub type Res<T = ()> = Result<T, String>;

/// What a finished command gave.
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(self, what: &str) -> Res<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(format!(
                "{what}: {}\nstdout: {}\nstderr: {}",
                self.status, self.stdout, self.stderr
            ))
        }
    }
}

/// Runs a command to its end, feeding it `input`; kills it after `timeout` (a hung client
/// must fail the case, not hold the suite).
pub fn run(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Res<Out> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|err| format!("starting {what}: {err}"))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish in {timeout:?}"));
            }
            Err(err) => return Err(format!("waiting for {what}: {err}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Out { status, stdout, stderr })
}

fn reader(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Calls `check` until it gives `Some`, or fails with its last word after `timeout`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Res<Option<T>>,
) -> Res<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not yet");
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = err,
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}: {last}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A background client (kubectl logs -f, port-forward, attach) whose output the case reads
/// while it runs; killed on drop.
pub struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    pub fn spawn(mut cmd: Command, stdin: bool) -> Res<Background> {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|err| format!("starting {cmd:?}: {err}"))?;
        let (send, lines) = std::sync::mpsc::channel();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let send = send.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if send.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Background { child, lines, seen: Vec::new() })
    }

    pub fn write(&mut self, data: &str) -> Res {
        let stdin = self.child.stdin.as_mut().ok_or("the client has no stdin")?;
        stdin
            .write_all(data.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|err| format!("writing to the client: {err}"))
    }

    /// Waits for an output line (stdout or stderr) that `pick` accepts.
    pub fn expect<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Res<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return Ok(found);
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    return Err(format!(
                        "no {what} within {timeout:?} (client exited: {status:?}); it wrote:\n{}",
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub kube_bin: PathBuf,
    berthd: PathBuf,
    /// Per node: the kubelet log's length when its steady state began (after `up`, or after a
    /// restart the suite made settled); the CRI error check reads from there.
    pub log_marks: Mutex<BTreeMap<String, u64>>,
    /// Cases' names, durations and results, for the summary.
    pub timings: Mutex<Vec<(String, Duration, bool)>>,
}

impl Cluster {
    pub fn new(berthd: PathBuf, kube_bin: PathBuf) -> Cluster {
        Cluster {
            dir: PathBuf::from(dir()),
            kube_bin,
            berthd,
            log_marks: Mutex::new(BTreeMap::new()),
            timings: Mutex::new(Vec::new()),
        }
    }

    fn script_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cluster/cluster")
    }

    /// `deploy/cluster/cluster ARGS` for this cluster; its output goes to the suite's.
    pub fn script(&self, args: &[&str], timeout: Duration) -> Res {
        let mut cmd = Command::new(Self::script_path());
        cmd.args(args)
            .env("BERTH_CLUSTER_NAME", name())
            .env("BERTH_CLUSTER_DIR", &self.dir)
            .env("BERTHD", &self.berthd)
            .env("KUBE_BIN_DIR", &self.kube_bin);
        let out = run(cmd, None, timeout)?;
        eprint!("{}", out.stderr);
        print!("{}", out.stdout);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("cluster {}: {}", args.join(" "), out.status))
        }
    }

    pub fn in_cp(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}-cp", name())).arg("--").arg(program);
        cmd
    }

    /// kubectl with the admin kubeconfig, where the API server is reachable.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.in_cp(self.kube_bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(self.dir.join("admin.conf"));
        cmd.arg("--cache-dir").arg(self.dir.join("kubectl-cache"));
        cmd.args(args);
        cmd
    }

    pub fn kubectl_out(&self, args: &[&str]) -> Res<Out> {
        run(self.kubectl_cmd(args), None, Duration::from_secs(240))
    }

    pub fn kubectl(&self, args: &[&str]) -> Res<String> {
        self.kubectl_out(args)?.ok(&format!("kubectl {}", args.join(" ")))
    }

    pub fn kubectl_json(&self, args: &[&str]) -> Res<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.kubectl(&all)?;
        serde_json::from_str(&text)
            .map_err(|err| format!("kubectl {}: bad json: {err}", args.join(" ")))
    }

    pub fn apply(&self, manifest: &str) -> Res {
        let out = run(
            self.kubectl_cmd(&["apply", "-f", "-"]),
            Some(manifest.as_bytes()),
            Duration::from_secs(60),
        )?;
        out.ok(&format!("kubectl apply of\n{manifest}")).map(drop)
    }

    pub fn get_raw(&self, path: &str) -> Res<Value> {
        let text = self.kubectl(&["get", "--raw", path])?;
        serde_json::from_str(&text).map_err(|err| format!("{path}: bad json: {err}"))
    }

    pub fn pod(&self, name: &str) -> Res<Value> {
        self.kubectl_json(&["get", "pod", name])
    }

    /// Waits for the pods to be Ready (kubectl wait: a watch, not a poll).
    pub fn wait_ready(&self, pods: &[&str], timeout: Duration) -> Res {
        let mut args = vec!["wait", "--for=condition=Ready"];
        let names: Vec<String> = pods.iter().map(|p| format!("pod/{p}")).collect();
        args.extend(names.iter().map(String::as_str));
        let t = format!("--timeout={}s", timeout.as_secs());
        args.push(&t);
        self.kubectl(&args).map(drop).map_err(|err| format!("{err}\n{}", self.describe(pods)))
    }

    /// `kubectl describe` of the pods, for a failure message.
    pub fn describe(&self, pods: &[&str]) -> String {
        let mut args = vec!["describe", "pod"];
        args.extend(pods);
        match self.kubectl_out(&args) {
            Ok(out) => out.stdout,
            Err(err) => err,
        }
    }

    /// Deletes pods and waits until they are gone.
    pub fn delete_pods(&self, pods: &[&str]) -> Res {
        let mut args = vec!["delete", "pod", "--ignore-not-found", "--timeout=90s"];
        args.extend(pods);
        self.kubectl(&args).map(drop)
    }

    pub fn exec(&self, pod: &str, script: &str) -> Res<String> {
        self.kubectl(&["exec", pod, "--", "sh", "-c", script])
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    pub fn kubelet_log(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{node}-kubelet.log"))
    }

    /// crictl on the node's berthd socket, JSON out.
    pub fn crictl_json(&self, node: &str, args: &[&str]) -> Res<Value> {
        let mut cmd = Command::new(berth_e2e::upstream::crictl());
        let endpoint = format!("unix://{}", self.node_dir(node).join("berth.sock").display());
        cmd.args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
            "--timeout",
            "20s",
        ]);
        cmd.args(args).args(["-o", "json"]);
        let text =
            run(cmd, None, Duration::from_secs(60))?.ok(&format!("crictl {}", args.join(" ")))?;
        serde_json::from_str(&text)
            .map_err(|err| format!("crictl {}: bad json: {err}", args.join(" ")))
    }

    /// The pid of the node's holder process, whose namespaces are the node's.
    pub fn holder(&self, node: &str) -> Res<String> {
        let path = self.dir.join("pids").join(format!("{node}-holder"));
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|err| format!("{}: {err}", path.display()))
    }

    /// A shell command in the node's mount and network namespaces (as the kubelet sees the node).
    pub fn on_node(&self, node: &str, script: &str) -> Res<String> {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.holder(node)?, "--mount", "--net", "--", "sh", "-c", script]);
        run(cmd, None, Duration::from_secs(60))?.ok(&format!("on {node}: {script}"))
    }

    /// The cluster's components (pids/<name>) that are no longer running, each with the end of
    /// its log (from a Go panic's first line when there is one): a kubelet or berthd that died
    /// fails the case it died in, by name, rather than leaving later waits to time out.
    pub fn dead_components(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("pids")) else { return Vec::new() };
        let mut dead = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()));
            let alive = status
                .is_ok_and(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')));
            if alive {
                continue;
            }
            let log = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")));
            let log = log.unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines
                .iter()
                .rposition(|l| l.starts_with("panic: "))
                .unwrap_or(lines.len().saturating_sub(15));
            let tail: Vec<&str> = lines[from..].iter().take(30).copied().collect();
            dead.push(format!(
                "{name} (pid {}) is not running; its log ends:\n{}",
                pid.trim(),
                tail.join("\n")
            ));
        }
        dead
    }

    /// Marks the kubelet logs' current ends as the start of a steady state.
    pub fn mark_logs(&self) -> Res {
        let mut marks = self.log_marks.lock().unwrap_or_else(|e| e.into_inner());
        for node in NODES {
            let len = std::fs::metadata(self.kubelet_log(node))
                .map_err(|err| format!("{node}'s kubelet log: {err}"))?
                .len();
            marks.insert(node.to_string(), len);
        }
        Ok(())
    }
}

/// Field access by a path of keys and indices, e.g. `at(&pod, "status.phase")`.
pub fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |v, key| match key.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[key],
    })
}

pub fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).as_str().unwrap_or("")
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Res {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}
