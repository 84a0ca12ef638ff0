//! The runtime's sections of berthd's configuration file. Every key has a default, so that
//! berthd runs with no file at all; unknown keys are errors rather than silently ignored typos.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[cgroup]`: where and how pod and container cgroups are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// Only the cgroupfs driver exists; the kubelet's `cgroupDriver` must say `cgroupfs` too.
    pub driver: CgroupDriver,
    /// Puts every cgroup berth creates under berthd's own cgroup (per hierarchy), as a runtime
    /// inside a kind node sees the node's cgroup as its root.
    pub nest_under_self: bool,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig { driver: CgroupDriver::Cgroupfs, nest_under_self: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
}

/// `[cni]`: where the network configuration and the plugins are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    /// Searched in order for each plugin binary. Debian's containernetworking-plugins installs
    /// into /usr/lib/cni, upstream's release tarballs into /opt/cni/bin.
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

/// `[cdi]`: where the spec files of CDI devices are (the Container Device Interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdiConfig {
    /// Off: a container asking for a CDI device is refused, never run without it.
    pub enabled: bool,
    /// Read in order; a device defined in a later directory overrides an earlier one's.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            enabled: true,
            spec_dirs: vec![PathBuf::from("/etc/cdi"), PathBuf::from("/var/run/cdi")],
        }
    }
}

/// `[runtimes.<name>]`: an external OCI runtime (runc, crun, …) offered as the runtime handler
/// `<name>`, beside the embedded executor (`""` / `default`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciRuntimeConfig {
    /// The runtime's binary: an absolute path, or a bare name searched in `PATH`.
    pub path: PathBuf,
    /// The runtime's state directory (its `--root`); `<state>/runtimes/<name>` when unset, so
    /// that it is gone on reboot along with the containers it describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

/// The external runtimes a default configuration offers: Debian's runc and crun, each only
/// where its binary is installed and answers.
pub fn default_runtimes() -> BTreeMap<String, OciRuntimeConfig> {
    ["runc", "crun"]
        .into_iter()
        .map(|name| (name.to_string(), OciRuntimeConfig { path: PathBuf::from(name), root: None }))
        .collect()
}

/// What the types cannot say about `[runtimes]`; messages name the key.
pub fn validate_runtimes(runtimes: &BTreeMap<String, OciRuntimeConfig>) -> Result<(), String> {
    for (name, runtime) in runtimes {
        if !is_handler_name(name) {
            return Err(format!(
                "runtimes.{name:?}: a handler name is a DNS label (lower-case letters, digits \
                 and '-', at most 63) other than \"default\""
            ));
        }
        let path = runtime.path.as_os_str();
        if path.is_empty() {
            return Err(format!("runtimes.{name}.path is empty"));
        }
        let bare = !runtime.path.to_string_lossy().contains('/');
        if !bare && !runtime.path.is_absolute() {
            return Err(format!(
                "runtimes.{name}.path must be absolute or a bare name searched in PATH, not {}",
                runtime.path.display()
            ));
        }
        if let Some(root) = runtime.root.as_ref().filter(|root| !root.is_absolute()) {
            return Err(format!(
                "runtimes.{name}.root must be an absolute path, not {}",
                root.display()
            ));
        }
    }
    Ok(())
}

/// A RuntimeClass handler is a DNS label; `default` is the embedded executor's other name.
fn is_handler_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && name != "default"
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_names_are_dns_labels() {
        for good in ["runc", "crun", "kata-v2", "r1"] {
            assert!(is_handler_name(good), "{good}");
        }
        for bad in ["", "default", "Runc", "-runc", "runc-", "run_c", "a/b", &"a".repeat(64)] {
            assert!(!is_handler_name(bad), "{bad}");
        }
    }

    #[test]
    fn runtime_paths_are_checked() {
        let one = |path: &str, root: Option<&str>| {
            let runtime =
                OciRuntimeConfig { path: PathBuf::from(path), root: root.map(PathBuf::from) };
            validate_runtimes(&[("x".to_string(), runtime)].into())
        };
        assert!(one("runc", None).is_ok());
        assert!(one("/usr/sbin/runc", Some("/run/x")).is_ok());
        assert!(one("", None).unwrap_err().contains("runtimes.x.path"));
        assert!(one("bin/runc", None).unwrap_err().contains("runtimes.x.path"));
        assert!(one("runc", Some("rel")).unwrap_err().contains("runtimes.x.root"));
        assert!(validate_runtimes(&default_runtimes()).is_ok());
    }
}
