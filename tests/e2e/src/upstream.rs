//! The upstream CRI clients (cri-tools' crictl and critest), built once by
//! `tests/install-critools.sh` and cached by version: the tests drive berth with them as users
//! and other runtimes' CI do, beside our own client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory holding `crictl` and `critest`; builds them on the first call of a test binary
/// when the cache does not have them yet (`tests/run.sh` does that before the tests start).
pub fn cri_tools_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| installed_dir("install-critools.sh"))
}

/// Runs one of the install scripts beside this crate (`tests/<script>`), which print the
/// directory of what they installed (cached by version) on stdout.
fn installed_dir(script: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(script);
    let output = Command::new(&script)
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
    assert!(
        output.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The upstream `crictl` binary.
pub fn crictl() -> PathBuf {
    cri_tools_dir().join("crictl")
}

/// The upstream `critest` binary.
pub fn critest() -> PathBuf {
    cri_tools_dir().join("critest")
}

/// The upstream crictl pointed at one berthd, run on its node, with configs written as JSON
/// files the way a user (or a test standing in for the kubelet) hands them to it.
pub struct Crictl {
    /// crictl's own config file, naming the daemon's socket.
    config: PathBuf,
    /// Where the JSON configs go.
    dir: PathBuf,
}

impl Crictl {
    pub fn new(node: &crate::Node, daemon: &crate::Berthd) -> Crictl {
        let dir = node.dir().join("crictl");
        std::fs::create_dir_all(&dir).expect("crictl's directory");
        let config = dir.join("crictl.yaml");
        let endpoint = format!("unix://{}", daemon.socket.display());
        std::fs::write(
            &config,
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\n"),
        )
        .expect("writing crictl.yaml");
        Crictl { config, dir }
    }

    /// Writes `value` as `<name>.json` for crictl to read; its path.
    pub fn file(&self, name: &str, value: &serde_json::Value) -> String {
        let path = self.dir.join(format!("{name}.json"));
        std::fs::write(&path, value.to_string()).expect("writing a crictl config");
        path.display().to_string()
    }

    /// Runs crictl with `args` on `node` to completion, without input.
    pub fn run(&self, node: &crate::Node, args: &[&str]) -> std::process::Output {
        node.command(crictl())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running crictl")
    }

    /// Runs crictl; panics with its output unless it succeeds; its stdout, trimmed.
    pub fn ok(&self, node: &crate::Node, args: &[&str]) -> String {
        let output = self.run(node, args);
        assert!(
            output.status.success(),
            "crictl {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs crictl; panics unless it fails; its stderr (which carries the gRPC status).
    pub fn fails(&self, node: &crate::Node, args: &[&str]) -> String {
        let output = self.run(node, args);
        assert!(
            !output.status.success(),
            "crictl {args:?} succeeded:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// The directory holding the Kubernetes binaries (kubelet, kube-apiserver, ..., kubectl, etcd)
/// that `tests/install-kube.sh` builds and caches by version, or `KUBE_BIN_DIR` when set.
pub fn kube_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KUBE_BIN_DIR") {
            return PathBuf::from(dir);
        }
        installed_dir("install-kube.sh")
    })
}
