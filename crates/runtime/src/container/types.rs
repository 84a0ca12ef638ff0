//! A container as the runtime knows it: the config it was created from (plain Rust, translated
//! from the CRI by cri-server), its record on disk, and its state.
//!
//! ```text
//!   CreateContainer ──▶ Created ──StartContainer──▶ Running ──exit / StopContainer──▶ Exited
//!                          │                                                          │
//!                          └──────────── RemoveContainer (from any state) ────────────┴─▶ (gone)
//!   a container whose monitor is gone and left no exit record ──▶ Unknown (then only Remove)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pod::NamespaceMode;
pub use crate::security::{SecurityProfile, SelinuxOptions};
pub use crate::userns::{IdMapping, UserNamespace};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMetadata {
    pub name: String,
    pub attempt: u32,
}

/// A CRI mount. `host_path` is the node's path; `container_path` is resolved inside the
/// container's root, never through a link out of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub recursive_read_only: bool,
    pub propagation: Propagation,
    /// An idmapped mount (CRI `uidMappings`/`gidMappings`, both or neither): a file the node
    /// has as `host_id` appears in the container as `container_id`, and the other way round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gid_mappings: Vec<IdMapping>,
    /// CRI `mount_options`: more restrictions for the bind, as OCI mount options; only those
    /// of [`BIND_OPTIONS`] are taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// An image volume (CRI `Mount.image`): the image's filesystem, read-only, in place of a
    /// host path (which is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageVolume>,
}

/// The image of an image volume and what of it to mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVolume {
    /// The image as the client named it (`ImageSpec.image`; the kubelet passes the image's id).
    pub image: String,
    /// `ImageSpec.user_specified_image`, kept to be reported back.
    #[serde(default)]
    pub user_specified_image: String,
    /// A path inside the image to mount instead of its root (`image_sub_path`); empty: the root.
    #[serde(default)]
    pub sub_path: String,
    /// The image's id, as PullImage answered it: set by CreateContainer, reported in
    /// ContainerStatus (`ImageSpec.image_ref`).
    #[serde(default)]
    pub image_ref: String,
}

/// The CRI mount options berth applies to a bind (KEP-5855's `noexec`, `nodev`, `nosuid`, and
/// `ro`, the same as `readonly`). Each only takes something away from the container; one that
/// would give it more than the node's mount has (`exec`, `suid`, `dev`, `rw`) or that means
/// something else to a bind is refused, never ignored.
pub const BIND_OPTIONS: [&str; 4] = ["noexec", "nodev", "nosuid", "ro"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// No propagation either way (CRI `PROPAGATION_PRIVATE`).
    #[default]
    Private,
    /// Host mounts appear in the container (`PROPAGATION_HOST_TO_CONTAINER`, rslave).
    HostToContainer,
    /// Both ways (`PROPAGATION_BIDIRECTIONAL`, rshared); privileged containers only.
    Bidirectional,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub container_path: String,
    pub host_path: String,
    /// Cgroup device permissions: some of `r`, `w`, `m`.
    pub permissions: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// CRI `LinuxContainerResources`; zero means "not set", as in the CRI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub memory_swap_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// cgroup v2 files to write as they are.
    pub unified: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub add: Vec<String>,
    pub drop: Vec<String>,
    pub add_ambient: Vec<String>,
}

/// CRI `LinuxContainerSecurityContext`, the parts berth acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    pub capabilities: Capabilities,
    pub privileged: bool,
    /// The PID mode of the container (`Pod`, `Container`, `Node` or `Target`); network and IPC
    /// follow the pod.
    pub pid: NamespaceMode,
    /// For `pid == Target`: the container whose PID namespace to join.
    pub target_id: String,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub no_new_privs: bool,
    /// `None`: the runtime's defaults; an empty list: none.
    pub masked_paths: Option<Vec<String>>,
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default)]
    pub seccomp: SecurityProfile,
    #[serde(default)]
    pub apparmor: SecurityProfile,
    #[serde(default)]
    pub selinux: Option<SelinuxOptions>,
    #[serde(default)]
    pub supplemental_groups_policy: SupplementalGroupsPolicy,
    /// What the config says of the container's user namespace, which is always its pod's.
    #[serde(default)]
    pub user_namespace: UsernsRequest,
}

/// The CRI's `userns_options` of a container. The kubelet repeats the pod's; a container's
/// user namespace is its pod's in any case, so this is only checked against the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsernsRequest {
    /// Nothing said (crictl's configs): the pod's.
    #[default]
    Unspecified,
    /// The node's.
    Node,
    /// The pod's, with the mappings the pod has (empty: not repeated).
    Pod { uids: Vec<IdMapping>, gids: Vec<IdMapping> },
}

/// Which groups a container's process gets beside the primary one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupplementalGroupsPolicy {
    /// The user's groups in the image's `/etc/group`, then the config's.
    #[default]
    Merge,
    /// Only the config's.
    Strict,
}

/// CRI `ContainerConfig`, with the image already resolved by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    /// The image as the client named it (`ImageSpec.image`).
    pub image: String,
    /// `ImageSpec.user_specified_image`: the kubelet names the image by its id in `image` and
    /// gives the pod spec's reference here; reported back as it came.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_specified_image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    /// In the order given; a later duplicate wins, as in the kubelet.
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<Device>,
    /// CDI devices by qualified name (`vendor.com/class=name`), as the CRI's `CDI_devices`
    /// lists them; those of `cdi.k8s.io/*` annotations are added when the spec is built.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdi_devices: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's `log_directory`; empty: no log.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub resources: Resources,
    pub security: SecurityContext,
    /// A signal name (`SIGTERM`); empty: the image's `STOPSIGNAL`, else SIGTERM.
    pub stop_signal: String,
}

/// The user a container runs as, resolved from its config and its image's files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplemental groups: the user's groups in the image's `/etc/group`, then the config's.
    pub additional_gids: Vec<u32>,
}

/// Defined by the monitor's protocol, which records it; re-exported where the state holds it.
pub use crate::monitor::proto::ExitInfo;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Set up and waiting to be started.
    Created,
    Running {
        pid: u32,
    },
    Exited(ExitInfo),
    /// Its monitor is gone and no exit was recorded.
    Unknown,
}

impl ContainerState {
    pub fn name(&self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running { .. } => "running",
            ContainerState::Exited(_) => "exited",
            ContainerState::Unknown => "unknown",
        }
    }
}

/// The image a container was created from, as ContainerStatus reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// The image's name as ContainerStatus shows it: as named in the request, or the image's
    /// first tag when the request named it otherwise (by its id, as the kubelet does).
    pub name: String,
    /// `sha256:<config digest>`.
    pub id: String,
    /// A repo digest when the image has one (what kubelet shows as `imageID`), else the id.
    pub reference: String,
}

/// What a container is, persisted as `<root>/containers/<id>/container.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    /// Unique among containers: `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
    pub name: String,
    pub pod_id: String,
    pub config: ContainerConfig,
    pub image: ContainerImage,
    /// `log_directory/log_path` of the pod and container; `None`: no log.
    pub log_path: Option<PathBuf>,
    pub user: ResolvedUser,
    /// From the config, else the image, else SIGTERM.
    pub stop_signal: i32,
    pub created_at_nanos: i64,
    /// 0 until started.
    pub started_at_nanos: i64,
    pub state: ContainerState,
    /// The container's cgroup, relative to each hierarchy's root (before nesting).
    pub cgroup: String,
}

pub const RECORD_VERSION: u32 = 1;

impl crate::store::Record for ContainerRecord {
    const KIND: &'static str = "container";
    const FILE: &'static str = "container.json";
    const VERSION: u32 = RECORD_VERSION;
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn name_key(&self) -> String {
        self.name.clone()
    }
}

/// Filters of ListContainers, in plain terms.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub state: Option<&'static str>,
    pub pod_id: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl ContainerFilter {
    pub fn matches(&self, c: &ContainerRecord) -> bool {
        self.id.as_ref().is_none_or(|id| c.id.starts_with(id.as_str()))
            && self.state.is_none_or(|state| c.state.name() == state)
            && self.pod_id.as_ref().is_none_or(|pod| c.pod_id.starts_with(pod.as_str()))
            && self.labels.iter().all(|(k, v)| c.config.labels.get(k) == Some(v))
    }
}

/// What a container takes from its image's config (`config` of the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}
