//! CNI networks for a test daemon: Debian's real plugins (bridge + host-local + portmap +
//! loopback) on a bridge of the node's own, and a plugin that always fails.
//!
//! Everything a pod's network makes lives in the node's network namespace (the bridge, the
//! host side of each veth, portmap's iptables rules), and host-local keeps its leases in the
//! daemon's directory instead of the host's /var/lib/cni, so nothing reaches the host.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::berthd::Berthd;
use crate::node::Node;

/// The network's name in its conflist, and so host-local's directory under its `dataDir`.
pub const NETWORK: &str = "berth-e2e";
pub const BRIDGE: &str = "berth0";
pub const SUBNET: &str = "10.88.0.0/16";
/// The IPv6 range of the dual-stack network (unique local addresses, inside the node only).
pub const SUBNET_V6: &str = "fd00:88::/64";
/// The bridge's address in the node: every pod's gateway.
pub const GATEWAY: &str = "10.88.0.1";
/// The conflist's file name in the daemon's conf dir.
pub const CONFLIST: &str = "10-berth.conflist";

/// The bridge network, with host-local's leases in `data_dir`.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    pub data_dir: PathBuf,
}

impl BridgeNetwork {
    /// A network whose leases live in the daemon's directory (`<dir>/cni/ipam`).
    pub fn for_daemon(daemon: &Berthd) -> BridgeNetwork {
        BridgeNetwork { data_dir: daemon.dir.join("cni/ipam") }
    }

    /// The conflist: bridge (gateway, no masquerade) with host-local's range `SUBNET`,
    /// portmap and loopback.
    pub fn conflist(&self) -> String {
        self.conflist_with(serde_json::json!({"ranges": [[{"subnet": SUBNET}]]}))
    }

    /// An IPv4 and an IPv6 range: every pod gets one address of each.
    pub fn conflist_dual_stack(&self) -> String {
        self.conflist_with(serde_json::json!({
            "ranges": [[{"subnet": SUBNET}], [{"subnet": SUBNET_V6}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        }))
    }

    /// The conflist with no range of its own: host-local takes the pod CIDR that
    /// UpdateRuntimeConfig gave (the `ipRanges` capability), and fails without one. (Both at
    /// once would not do: the bridge plugin gives the bridge one IPv4 gateway only.)
    pub fn conflist_from_pod_cidr(&self) -> String {
        self.conflist_with(serde_json::json!({}))
    }

    fn conflist_with(&self, ranges: serde_json::Value) -> String {
        let mut ipam = serde_json::json!({
            "type": "host-local",
            "dataDir": self.data_dir,
            "routes": [{"dst": "0.0.0.0/0"}],
        });
        ipam.as_object_mut().unwrap().extend(ranges.as_object().cloned().unwrap_or_default());
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "capabilities": {"ipRanges": true},
                    "ipam": ipam,
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"},
            ],
        })
        .to_string()
    }

    /// Writes the conflist into the daemon's conf dir, replacing any other config there.
    pub fn install(&self, daemon: &Berthd) {
        install(daemon, &self.conflist());
    }

    /// The addresses host-local holds leases for.
    pub fn leases(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join(NETWORK)) else {
            return Vec::new();
        };
        let mut leases: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect();
        leases.sort();
        leases
    }
}

/// A plugin that fails every call with a CNI error object.
#[derive(Debug, Clone)]
pub struct BrokenPlugin {
    /// Holds the plugin; give it to the daemon in `Options::cni_bin_dirs`.
    pub bin_dir: PathBuf,
}

impl BrokenPlugin {
    pub const TYPE: &'static str = "berth-e2e-broken";
    pub const MESSAGE: &'static str = "boom from the test plugin";
    pub const DETAILS: &'static str = "the test plugin fails on purpose";

    /// Writes the plugin into `<node dir>/broken-cni-bin`.
    pub fn new(node: &Node) -> BrokenPlugin {
        let bin_dir = node.dir().join("broken-cni-bin");
        std::fs::create_dir_all(&bin_dir).expect("creating the broken plugin's directory");
        let error = serde_json::json!({
            "cniVersion": "1.0.0", "code": 7, "msg": Self::MESSAGE, "details": Self::DETAILS,
        });
        let script = format!("#!/bin/sh\ncat >/dev/null\necho '{error}'\nexit 1\n");
        // Written aside and renamed, so that no process ever sees it half written.
        let tmp = bin_dir.join(".plugin.tmp");
        std::fs::write(&tmp, script).expect("writing the broken plugin");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .expect("making the broken plugin executable");
        std::fs::rename(&tmp, bin_dir.join(Self::TYPE)).expect("installing the broken plugin");
        BrokenPlugin { bin_dir }
    }

    pub fn conflist(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "berth-e2e-broken",
            "plugins": [{"type": Self::TYPE}],
        })
        .to_string()
    }

    pub fn install(&self, daemon: &Berthd) {
        install(daemon, &self.conflist());
    }
}

/// Makes `conflist` the daemon's only network config, atomically.
pub fn install(daemon: &Berthd, conflist: &str) {
    let dir = daemon.cni_conf_dir();
    let tmp = dir.join(".conflist.tmp");
    std::fs::write(&tmp, conflist).expect("writing a conflist");
    std::fs::rename(&tmp, dir.join(CONFLIST)).expect("installing a conflist");
}

/// The names of the veth interfaces in the node's network namespace: one per pod on the bridge.
pub fn node_veths(node: &Node) -> Vec<String> {
    let out = node.run(&["ip", "-o", "link", "show", "type", "veth"]);
    out.lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}
