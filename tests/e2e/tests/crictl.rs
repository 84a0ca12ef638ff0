//! The README's walk-through, run with the upstream crictl against a berthd: `crictl pull
//! busybox` (docker.io mirrored to the node's loopback registry), the example pod and
//! containers of deploy/examples, logs (also followed), exec through ExecSync and through the
//! streaming server over SPDY and WebSocket (input typed seconds later, in a real terminal
//! and through a pipe, a terminal resize, Ctrl-D, exit codes), attach, port-forward, and the
//! pod's removal.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::images::{self, TestImages};
use berth_e2e::registry::REGISTRY_ADDR;
use berth_e2e::terminal::Terminal;
use berth_e2e::upstream;
use berth_e2e::{Berthd, Node, Registry};

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long the tests wait before typing: input must reach the process whenever it comes.
const DELAY: Duration = Duration::from_secs(2);
/// The transports of `crictl exec` and `crictl attach` (`--transport`).
const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples")
}

/// Drop order: daemon, registry, network, node.
struct Env {
    daemon: Berthd,
    _registry: Registry,
    _net: BridgeNetwork,
    node: Node,
    /// crictl's config file, pointing at the daemon.
    config: PathBuf,
    /// The example files as the test uses them (logs in the node's directory).
    files: PathBuf,
}

impl Env {
    /// A node whose registry serves the test busybox as docker.io's `library/busybox`, and a
    /// berthd that mirrors docker.io to it, as the README's "Registries, mirrors" shows.
    async fn start() -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let mut busybox = TestImages::get().oci.clone();
        busybox.reference = "docker.io/library/busybox:latest";
        busybox.aliases = &[];
        let addr = registry.addr.clone();
        node.block_on(|| images::push_image(&addr, &busybox)).expect("pushing busybox");
        let extra_config = format!(
            "[registry.hosts.\"docker.io\"]\nfallback_to_origin = false\n\
             mirrors = [{{ host = \"{REGISTRY_ADDR}\", prefix = \"docker.io\" }}]\n"
        );
        let daemon =
            Berthd::start_with(&node, Options { extra_config, ..Options::default() }).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);

        let files = node.dir().join("examples");
        // Not made here: berth makes the log directories, as containerd does.
        let logs = node.dir().join("logs/pods/default_busybox");
        std::fs::create_dir_all(&files).unwrap();
        for name in ["pod.json", "container.json", "container-tty.json"] {
            let text = std::fs::read_to_string(examples().join(name)).unwrap();
            let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if name == "pod.json" {
                // The host's /tmp is no place for a test's logs.
                value["log_directory"] = logs.display().to_string().into();
            }
            std::fs::write(files.join(name), value.to_string()).unwrap();
        }
        let config = node.dir().join("crictl.yaml");
        let endpoint = format!("unix://{}", daemon.socket.display());
        std::fs::write(
            &config,
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"),
        )
        .unwrap();
        Env { daemon, _registry: registry, _net: net, node, config, files }
    }

    /// crictl with `args`, on the node, not yet started.
    fn crictl(&self, args: &[&str]) -> Command {
        let mut command = self.node.command(upstream::crictl());
        // No current_dir: entering the node's mount namespace resets it; files go by path.
        command.arg("--config").arg(&self.config).args(args);
        command
    }

    /// Runs crictl to completion without input.
    fn run(&self, args: &[&str]) -> Output {
        self.crictl(args).stdin(Stdio::null()).output().expect("running crictl")
    }

    /// Runs crictl; panics with its output unless it succeeds; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "crictl {args:?} failed ({}):\n{}{}\ndaemon log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.daemon.log_text(),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs crictl with `input` written to its stdin `DELAY` after it starts, then its stdin
    /// closed: the input arrives long after the streams are open.
    fn run_with_late_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .crictl(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crictl");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(DELAY);
            let _ = stdin.write_all(input.as_bytes());
        });
        let output = wait_with_timeout(child, TIMEOUT);
        writer.join().unwrap();
        output
    }

    /// crictl with `args` on a terminal of 24 × 80.
    fn terminal(&self, args: &[&str]) -> Terminal {
        Terminal::spawn(self.crictl(args), 24, 80)
    }

    /// The path of an example file.
    fn file(&self, name: &str) -> String {
        self.files.join(name).display().to_string()
    }

    /// Creates and starts a container of the example `name`, changed by `edit`, in `pod`.
    fn create(&self, pod: &str, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let text = std::fs::read_to_string(self.files.join(name)).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut value);
        let path =
            self.files.join(format!("edited-{}", value["metadata"]["name"].as_str().unwrap()));
        std::fs::write(&path, value.to_string()).unwrap();
        let path = path.display().to_string();
        let id = self.ok(&["create", pod, &path, &self.file("pod.json")]).trim().to_string();
        self.ok(&["start", &id]);
        id
    }

    /// `crictl inspect` shows the container running.
    fn expect_running(&self, id: &str) {
        let status: serde_json::Value =
            serde_json::from_str(&self.ok(&["inspect", "-o", "json", id])).unwrap();
        assert_eq!(status["status"]["state"], "CONTAINER_RUNNING", "{status:#}");
    }

    /// The README's first steps: pull, runp, create and start; returns (pod, container).
    fn run_example(&self) -> (String, String) {
        self.ok(&["pull", "busybox"]);
        let pod_json = self.file("pod.json");
        let pod = self.ok(&["runp", &pod_json]).trim().to_string();
        let ctr = self.ok(&["create", &pod, &self.file("container.json"), &pod_json]);
        let ctr = ctr.trim().to_string();
        self.ok(&["start", &ctr]);
        (pod, ctr)
    }
}

/// Waits for `child`, killing it after `timeout`; the output read so far either way.
/// (stdout, if the caller has not taken it, and stderr.)
fn wait_with_timeout(mut child: std::process::Child, timeout: Duration) -> Output {
    let out = child.stdout.take();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut out) = out {
            let _ = out.read_to_end(&mut buf);
        }
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Runs `stty size` in the shell on `term` until it shows `rows` × `cols`: a new size travels
/// from the terminal to crictl (SIGWINCH) and on to the container's terminal a moment later.
fn expect_size(term: &mut Terminal, rows: u16, cols: u16) {
    let want = format!("\n{rows} {cols}\r");
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        term.type_keys("stty size\r");
        if term.try_expect(&want, Duration::from_secs(1)) {
            return;
        }
    }
    panic!("the terminal never showed {rows} {cols}:\n{}", term.text());
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `exec -i` with input piped seconds after the streams opened: the shell runs it and exits at
/// its end, over both transports.
#[tokio::test]
async fn exec_takes_input_that_comes_later() {
    let env = Env::start().await;
    let (_pod, ctr) = env.run_example();
    for transport in TRANSPORTS {
        let output = env.run_with_late_input(
            &["exec", "-r", transport, "-i", &ctr, "sh"],
            "echo delayed-$((40+2))\n",
        );
        assert!(
            output.status.success() && text(&output.stdout) == "delayed-42\n",
            "exec -i over {transport}: {}\nstdout: {}\nstderr: {}",
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
    }
}

/// `exec -it` in a real terminal: keys typed seconds later are echoed and run, a resize reaches
/// the shell, the exit code comes back, and Ctrl-D ends the shell; over both transports.
#[tokio::test]
async fn exec_in_a_terminal() {
    let env = Env::start().await;
    let (_pod, ctr) = env.run_example();
    for transport in TRANSPORTS {
        let mut term = env.terminal(&["exec", "-r", transport, "-it", &ctr, "sh"]);
        std::thread::sleep(DELAY);
        term.type_keys("echo typed-$((40+2))\r");
        term.expect("echo typed-$((40+2))", TIMEOUT);
        term.expect("typed-42", TIMEOUT);
        expect_size(&mut term, 24, 80);
        term.resize(30, 100);
        expect_size(&mut term, 30, 100);
        // Ctrl-D at an empty prompt ends the shell, and so crictl.
        term.type_keys("\x04");
        let status = term.wait(TIMEOUT);
        assert!(status.success(), "exec -it over {transport}: {status}\n{}", term.text());
    }
}

/// The exit code of a command comes back: `exec -s` exits with it; a streamed exec reports it
/// (crictl exits 1 and names the code, as client-go reports it), over both transports.
#[tokio::test]
async fn exec_reports_exit_codes() {
    let env = Env::start().await;
    let (_pod, ctr) = env.run_example();
    // crictl v1.37 turns ExecSync's exit code into an error (cri-client's "exited with").
    let output = env.run(&["exec", "-s", &ctr, "sh", "-c", "exit 3"]);
    assert!(
        !output.status.success() && text(&output.stderr).contains("exited with 3"),
        "exec -s: {}\n{}",
        output.status,
        text(&output.stderr)
    );
    for transport in TRANSPORTS {
        let output = env.run(&["exec", "-r", transport, &ctr, "sh", "-c", "echo out; exit 3"]);
        assert_eq!(text(&output.stdout), "out\n", "exec over {transport}");
        assert!(
            !output.status.success()
                && text(&output.stderr).contains("command terminated with exit code 3"),
            "exec over {transport}: {}\n{}",
            output.status,
            text(&output.stderr)
        );
        let mut term = env.terminal(&["exec", "-r", transport, "-it", &ctr, "sh"]);
        term.expect("# ", TIMEOUT);
        std::thread::sleep(DELAY);
        term.type_keys("exit 3\r");
        let status = term.wait(TIMEOUT);
        assert!(!status.success(), "exec -it over {transport}: {status}\n{}", term.text());
        term.expect("command terminated with exit code 3", TIMEOUT);
    }
}

/// `attach -it` to a container's shell on a terminal and `attach -i` to one reading a pipe:
/// keys typed seconds later reach the container, resizes its terminal; detaching leaves it
/// running, Ctrl-D ends it.
#[tokio::test]
async fn attach_takes_input_that_comes_later() {
    let env = Env::start().await;
    let (pod, _ctr) = env.run_example();
    let shell = env.create(&pod, "container-tty.json", |_| {});
    let reader = env.create(&pod, "container-tty.json", |c| {
        c["metadata"]["name"] = "reader".into();
        c["log_path"] = "reader.0.log".into();
        c["tty"] = false.into();
    });
    for transport in TRANSPORTS {
        let mut term = env.terminal(&["attach", "-r", transport, "-it", &shell]);
        std::thread::sleep(DELAY);
        term.type_keys(&format!("echo attached-{transport}-$((40+2))\r"));
        term.expect(&format!("attached-{transport}-42"), TIMEOUT);
        // The container's terminal takes crictl's size, and then its new one.
        expect_size(&mut term, 24, 80);
        let cols = if transport == "spdy" { 100 } else { 110 };
        term.resize(40, cols);
        expect_size(&mut term, 40, cols);
        // crictl's detach keys: Ctrl-P Ctrl-Q.
        term.type_keys("\x10\x11");
        let status = term.wait(TIMEOUT);
        assert!(status.success(), "attach -it over {transport}: {status}\n{}", term.text());
        env.expect_running(&shell);

        let mut child = env
            .crictl(&["attach", "-r", transport, "-i", &reader])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting crictl");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let want = format!("piped-{transport}-42\n");
        let watcher = std::thread::spawn(move || {
            let mut stdout = std::io::BufReader::new(stdout);
            let mut line = String::new();
            let mut seen = String::new();
            while std::io::BufRead::read_line(&mut stdout, &mut line).unwrap_or(0) > 0 {
                seen.push_str(&line);
                if line == want {
                    let _ = seen_tx.send(());
                }
                line.clear();
            }
            seen
        });
        std::thread::sleep(DELAY);
        stdin.write_all(format!("echo piped-{transport}-$((40+2))\n").as_bytes()).unwrap();
        let answered = seen_rx.recv_timeout(TIMEOUT).is_ok();
        // The end of the input detaches crictl; the container's stdin stays open.
        drop(stdin);
        let output = wait_with_timeout(child, TIMEOUT);
        let seen = watcher.join().unwrap();
        assert!(
            answered && output.status.success(),
            "attach -i over {transport}: {}\nstdout: {seen}\nstderr: {}",
            output.status,
            text(&output.stderr)
        );
        env.expect_running(&reader);
    }
    // Ctrl-D in the attached shell ends it, the container, and so crictl.
    let mut term = env.terminal(&["attach", "-it", &shell]);
    std::thread::sleep(DELAY);
    term.type_keys("\x04");
    let status = term.wait(TIMEOUT);
    assert!(status.success(), "attach -it, Ctrl-D: {status}\n{}", term.text());
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "-o", "json", &shell])).unwrap();
    assert_eq!(status["status"]["state"], "CONTAINER_EXITED", "{status:#}");
}

/// The README's "Using it" walk-through, command by command, as a user runs it.
#[tokio::test]
async fn readme_walk_through() {
    let env = Env::start().await;
    let (pod, ctr) = env.run_example();
    let images = env.ok(&["images"]);
    assert!(images.contains("docker.io/library/busybox"), "{images}");
    // The log's directories, which nobody made beforehand, are berth's.
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "-o", "json", &ctr])).unwrap();
    let log_path = status["status"]["logPath"].as_str().unwrap_or_default().to_string();
    assert!(log_path.ends_with("/logs/pods/default_busybox/busybox/0.log"), "{status:#}");
    assert!(Path::new(&log_path).is_file(), "{log_path}");
    // The image by its tag, as the kubelet copies it into the pod's status.
    assert_eq!(status["status"]["image"]["image"], "docker.io/library/busybox:latest");
    // Created as the kubelet does, by the image's id with the pod spec's reference beside it:
    // the status shows the tag, and the reference as it came.
    let image_id = status["status"]["imageId"].as_str().unwrap_or_default().to_string();
    let by_id = env.create(&pod, "container.json", |c| {
        c["metadata"]["name"] = "by-id".into();
        // Its own log: removing it removes its log file.
        c["log_path"] = "by-id/0.log".into();
        c["image"] = serde_json::json!({ "image": image_id, "user_specified_image": "busybox" });
    });
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "-o", "json", &by_id])).unwrap();
    let image = &shown["status"]["image"];
    assert_eq!(image["image"], "docker.io/library/busybox:latest", "{shown:#}");
    assert_eq!(image["userSpecifiedImage"], "busybox", "{shown:#}");
    env.ok(&["stop", &by_id]);
    env.ok(&["rm", &by_id]);
    // pid 1 of the pod's PID namespace (the pod init) shows the containers no node path.
    let init = env.ok(&["exec", "-s", &ctr, "cat", "/proc/1/cmdline"]).replace('\0', " ");
    // crictl ends what it prints with newlines of its own.
    let init = init.trim_end();
    assert_eq!(init, format!("berth-monitor monitor --pod {pod} --pid-ns"));

    // crictl logs, and logs -f following lines written after it started.
    let logs = env.ok(&["logs", &ctr]);
    assert!(logs.starts_with("hello from busybox\n"), "{logs}");
    let mut follow = env
        .crictl(&["logs", "-f", &ctr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting crictl logs -f");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let last_tick = |text: &str| {
        text.lines().filter_map(|l| l.strip_prefix("tick ")?.parse::<u32>().ok()).max()
    };
    let before = last_tick(&env.ok(&["logs", &ctr])).unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut followed = Vec::new();
    while !followed.iter().any(|l: &String| last_tick(l).is_some_and(|n| n >= before + 2)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => followed.push(line),
            Err(_) => panic!("logs -f did not follow past tick {before}: {followed:?}"),
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();

    // exec: through ExecSync, then through the streaming server with input piped later and
    // on a terminal (the other tests take both transports through every case).
    let root = env.ok(&["exec", "-s", &ctr, "ls", "/"]);
    assert!(root.lines().any(|l| l.trim() == "bin"), "{root}");
    let output = env.run_with_late_input(&["exec", "-i", &ctr, "sh"], "echo delayed\n");
    assert_eq!(text(&output.stdout), "delayed\n", "{}", text(&output.stderr));
    let mut term = env.terminal(&["exec", "-it", &ctr, "sh"]);
    std::thread::sleep(DELAY);
    term.type_keys("echo typed-$((40+2))\r");
    term.expect("typed-42", TIMEOUT);
    term.type_keys("exit\r");
    let status = term.wait(TIMEOUT);
    assert!(status.success(), "exec -it: {status}\n{}", term.text());

    // attach to a shell with a terminal of its own, and detach.
    let tty_json = env.file("container-tty.json");
    let shell = env.ok(&["create", &pod, &tty_json, &env.file("pod.json")]).trim().to_string();
    env.ok(&["start", &shell]);
    let mut term = env.terminal(&["attach", "-it", &shell]);
    std::thread::sleep(DELAY);
    term.type_keys("echo attached-$((40+2))\r");
    term.expect("attached-42", TIMEOUT);
    term.type_keys("\x10\x11");
    let status = term.wait(TIMEOUT);
    assert!(status.success(), "attach -it: {status}\n{}", term.text());
    env.expect_running(&shell);

    // port-forward to busybox httpd in the pod, reached from the node.
    env.ok(&[
        "exec",
        "-s",
        &ctr,
        "sh",
        "-c",
        "mkdir -p /www && echo hello from berth > /www/index.html && httpd -p 8080 -h /www",
    ]);
    let mut forward = env
        .crictl(&["port-forward", &pod, "18080:8080"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting crictl port-forward");
    let mut announced = std::io::BufReader::new(forward.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut announced, &mut line).unwrap();
    assert!(line.starts_with("Forwarding from 127.0.0.1:18080 -> 8080"), "{line:?}");
    let page = env.node.in_netns(|| {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:18080").unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut page = Vec::new();
        stream.read_to_end(&mut page).unwrap();
        text(&page)
    });
    assert!(page.starts_with("HTTP/1.") && page.ends_with("\r\n\r\nhello from berth\n"), "{page}");
    let _ = forward.kill();
    let _ = forward.wait();

    // stop and remove it all.
    env.ok(&["stop", &ctr, &shell]);
    env.ok(&["stopp", &pod]);
    env.ok(&["rmp", &pod]);
    assert_eq!(env.ok(&["pods", "-q"]).trim(), "");
    assert_eq!(env.ok(&["ps", "-a", "-q"]).trim(), "");
}

/// `kubectl debug --target` asks for another container's PID namespace (TARGET): the debug
/// container of the README's pod (which shares one PID namespace) sees the example's loop.
#[tokio::test]
async fn a_debug_container_sees_its_targets_processes() {
    let env = Env::start().await;
    let (pod, ctr) = env.run_example();
    let debug = env.create(pod.as_str(), "container.json", |value| {
        value["metadata"]["name"] = "debug".into();
        value["command"] = serde_json::json!(["sleep", "3600"]);
        // NamespaceMode TARGET is 3.
        value["linux"]["security_context"] =
            serde_json::json!({ "namespace_options": { "pid": 3, "target_id": ctr } });
    });
    env.expect_running(&debug);
    let ps = env.ok(&["exec", &debug, "ps"]);
    assert!(ps.contains("echo hello from busybox") || ps.contains("trap"), "{ps}");
    let ns = |id: &str| env.ok(&["exec", id, "sh", "-c", "readlink /proc/self/ns/pid"]);
    assert_eq!(ns(&debug), ns(&ctr), "one PID namespace");
    env.ok(&["stopp", &pod]);
    env.ok(&["rmp", &pod]);
}
