//! A pod sandbox as the runtime knows it: the config it was asked for (plain Rust, translated
//! from the CRI by cri-server), its state, and what it holds.
//!
//! ```text
//!   RunPodSandbox ──▶ Ready ──StopPodSandbox──▶ NotReady ──RemovePodSandbox──▶ (gone)
//!        │                 │                          ▲
//!        └─ setup fails ───┴── node reboot, namespaces lost ──┘ (then only Stop/Remove)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Port mappings are handed to CNI as they are, so the pod keeps CNI's own type.
pub use crate::cni::{PortMapping, Protocol};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

impl PodMetadata {
    /// The name that must be unique among pods, as kubelet builds it.
    pub fn key(&self) -> String {
        format!("{}_{}_{}_{}", self.name, self.namespace, self.uid, self.attempt)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// One namespace for the whole pod.
    #[default]
    Pod,
    /// One per container (PID only).
    Container,
    /// The node's own.
    Node,
    /// Another container's (PID only).
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub target_id: String,
    /// A user namespace of the pod's own (`hostUsers: false`), with the kubelet's mappings;
    /// None: the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<crate::userns::UserNamespace>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodConfig {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub namespaces: NamespaceOptions,
    pub sysctls: BTreeMap<String, String>,
    pub runtime_handler: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

/// The pod's network as CNI set it up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// Primary first.
    pub ips: Vec<String>,
    /// The CNI result, for verbose status.
    pub cni_result: serde_json::Value,
}

/// What a pod is, persisted as `<root>/pods/<id>/pod.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub version: u32,
    pub id: String,
    pub config: PodConfig,
    pub created_at_nanos: i64,
    pub state: PodState,
    /// Empty while networking is not set up (host network, stopped, or not yet).
    pub network: Option<PodNetwork>,
    /// A CNI ADD was started and no DEL has completed since: set before ADD, so that an ADD
    /// cut short (by a crash) is still undone by the next stop.
    #[serde(default)]
    pub network_pending: bool,
    /// The pod's cgroup, relative to each hierarchy's root (before nesting).
    pub cgroup: String,
    /// The cgroup directories berth made for the pod (and so removes), parents first; the
    /// kubelet's own are left to it.
    pub cgroup_created: Vec<String>,
    /// The pod's monitor process (pid in berthd's PID namespace), once started.
    #[serde(default)]
    pub monitor_pid: Option<u32>,
    /// With a pod-wide PID namespace, its pid 1 (see `monitor::pod_init`), in berthd's PID
    /// namespace. None in a record of an earlier berthd, whose monitor was that pid 1 itself.
    #[serde(default)]
    pub pod_init_pid: Option<u32>,
}

pub const RECORD_VERSION: u32 = 1;

impl crate::store::Record for PodRecord {
    const KIND: &'static str = "pod sandbox";
    const FILE: &'static str = "pod.json";
    const VERSION: u32 = RECORD_VERSION;
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn name_key(&self) -> String {
        self.config.metadata.key()
    }
}

/// Filters of ListPodSandbox, in plain terms.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    pub id: Option<String>,
    pub state: Option<PodState>,
    pub labels: BTreeMap<String, String>,
}

impl PodFilter {
    pub fn matches(&self, pod: &PodRecord) -> bool {
        self.id.as_ref().is_none_or(|id| pod.id.starts_with(id.as_str()))
            && self.state.is_none_or(|state| pod.state == state)
            && self.labels.iter().all(|(k, v)| pod.config.labels.get(k) == Some(v))
    }
}
