//! The berthd under test: built from this workspace, started on a node with a temporary root,
//! state dir and socket, and cgroup nesting on (so its cgroups live under the node's).

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cri::Cri;
use crate::node::Node;

static DAEMONS: AtomicUsize = AtomicUsize::new(0);

/// The berthd binary of this workspace (with berth-monitor beside it). It is built here (a no-op when fresh) rather than
/// found lying in target/, so that `cargo test -p berth-e2e` never runs a stale daemon.
/// `BERTHD=/path/to/berthd` runs another build instead.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("BERTHD") {
            return PathBuf::from(path);
        }
        // A test runs from target/<profile>/deps, a binary (the bench) from target/<profile>.
        let exe = std::env::current_exe().expect("locating the test binary");
        let dir = exe.parent().expect("the test binary lives in target/");
        let profile_dir = if dir.file_name().is_some_and(|name| name == "deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        let release = profile_dir.file_name().is_some_and(|name| name == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "berth-cri-server"])
            .args(["--bin", "berthd", "--bin", "berth-monitor"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build for berthd");
        assert!(status.success(), "building berthd failed");
        profile_dir.join("berthd")
    })
}

/// How a test wants its berthd. Root, state and socket are always given as flags, so that no
/// config a test writes can send the daemon to the host's /var/lib/berth or /run/berth.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Tables appended to the generated config; they must not repeat the tables the harness
    /// writes (log, cgroup, cni): use `config` to replace the whole file instead.
    pub extra_config: String,
    /// A whole config file instead of the generated one.
    pub config: Option<String>,
    /// A config path to pass as it is, written by nobody (for missing-file tests).
    pub config_path: Option<PathBuf>,
    pub args: Vec<String>,
    /// Another daemon's root (for lock tests).
    pub root: Option<PathBuf>,
    /// Another socket path (for stale socket tests).
    pub socket: Option<PathBuf>,
    /// Another daemon's state dir (for restart tests).
    pub state: Option<PathBuf>,
    /// Environment variables for berthd, such as `BERTH_FAILPOINTS`.
    pub env: Vec<(String, String)>,
    /// Plugin directories searched after the harness's (`/usr/lib/cni`, `/opt/cni/bin`) in
    /// the generated config: for test plugins.
    pub cni_bin_dirs: Vec<PathBuf>,
}

pub struct Berthd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config_file: PathBuf,
    pub log: PathBuf,
}

impl Berthd {
    /// Starts berthd with the harness's config and waits until it answers Version.
    pub async fn start(node: &Node) -> Berthd {
        Self::start_with(node, Options::default()).await
    }

    pub async fn start_with(node: &Node, options: Options) -> Berthd {
        let mut daemon = Self::spawn(node, options);
        daemon.wait_serving(Duration::from_secs(30)).await;
        daemon
    }

    /// Starts berthd without waiting for it: for tests of start-up failures.
    pub fn spawn(node: &Node, options: Options) -> Berthd {
        let n = DAEMONS.fetch_add(1, Ordering::SeqCst);
        let dir = node.dir().join(format!("berthd-{n}"));
        std::fs::create_dir_all(dir.join("cni/net.d")).expect("creating the daemon's directory");
        let root = options.root.clone().unwrap_or_else(|| dir.join("root"));
        let state = options.state.clone().unwrap_or_else(|| dir.join("state"));
        let socket = options.socket.clone().unwrap_or_else(|| dir.join("berth.sock"));
        let config_file = options.config_path.clone().unwrap_or_else(|| dir.join("config.toml"));
        let config = options.config.clone().unwrap_or_else(|| {
            let bin_dirs: Vec<String> =
                [PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")]
                    .iter()
                    .chain(&options.cni_bin_dirs)
                    .map(|dir| format!("{:?}", dir.display().to_string()))
                    .collect();
            format!(
                "[log]\nlevel = \"debug\"\n\n[cgroup]\nnest_under_self = true\n\n\
                 [cni]\nconf_dir = {conf:?}\nbin_dirs = [{bin_dirs}]\n\n{extra}",
                conf = dir.join("cni/net.d"),
                bin_dirs = bin_dirs.join(", "),
                extra = options.extra_config,
            )
        });
        if options.config_path.is_none() {
            std::fs::write(&config_file, config).expect("writing the daemon's config");
        }
        let log = node.dir().join(format!("berthd-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the daemon's log");
        let child = node
            .command(binary())
            .arg("--config")
            .arg(&config_file)
            .arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(&state)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("daemon log"))
            .stderr(log_file)
            .spawn()
            .expect("starting berthd");
        Berthd { child: Some(child), dir, root, state, socket, config_file, log }
    }

    /// The CNI configuration directory of the generated config, `<dir>/cni/net.d`; empty at
    /// start, so the network is not ready until a test installs a config (see `crate::cni`).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// SIGTERM, then waits for a clean exit: for restart tests.
    pub async fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "berthd exited with {status}:\n{}", self.log_text());
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for Version to answer; panics with the daemon's log if it exits or times out.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                panic!("berthd exited before serving ({status}):\n{}", self.log_text());
            }
            if self.socket.exists() {
                if let Ok(mut cri) = Cri::connect(&self.socket).await {
                    if cri.version().await.is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not serve within {timeout:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self) -> Cri {
        Cri::connect(&self.socket).await.expect("connecting to berthd")
    }

    pub fn signal(&self, signal: Signal) {
        // Without a child, pid() is 0, and kill(0, …) would signal the test's process group.
        assert!(self.child.is_some(), "signalling a berthd that has already exited");
        kill(self.pid(), signal).expect("signalling berthd");
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|child| child.try_wait().ok().flatten())
    }

    /// Waits for the daemon to exit by itself; panics if it does not within `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berthd did not exit within {timeout:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pod monitors running on `node` (`berthd monitor …` processes), with their pod ids.
pub fn monitors(node: &Node) -> Vec<(Pid, String)> {
    let mut found = Vec::new();
    for pid in node.processes() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) != Some(&b"monitor".as_slice()) {
            continue;
        }
        let pod = args
            .iter()
            .position(|a| *a == b"--pod")
            .and_then(|i| args.get(i + 1))
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        found.push((pid, pod));
    }
    found
}

/// What a reboot does to the monitors: kills them all, and waits until they are gone.
pub async fn kill_monitors(node: &Node) {
    for (pid, _) in monitors(node) {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !monitors(node).is_empty() {
        assert!(Instant::now() < deadline, "monitors outlived SIGKILL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
