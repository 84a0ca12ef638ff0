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
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../install-critools.sh");
        let output = Command::new(&script)
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
        PathBuf::from(dir)
    })
}

/// The upstream `crictl` binary.
pub fn crictl() -> PathBuf {
    cri_tools_dir().join("crictl")
}

/// The upstream `critest` binary.
pub fn critest() -> PathBuf {
    cri_tools_dir().join("critest")
}

/// The directory holding the Kubernetes binaries (kubelet, kube-apiserver, ..., kubectl, etcd)
/// that `tests/install-kube.sh` builds and caches by version, or `KUBE_BIN_DIR` when set.
pub fn kube_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KUBE_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../install-kube.sh");
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
    })
}
