//! The runtime's sections of berthd's configuration file. Every key has a default, so that
//! berthd runs with no file at all; unknown keys are errors rather than silently ignored typos.

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
