//! The runtime as berthd holds it: what this node can run and whether it is ready to.

use std::path::PathBuf;

use crate::cgroups::CgroupLayout;
use std::sync::Arc;

use crate::cni::{self, Cni, NetworkLookup};
use crate::config::{CgroupConfig, CgroupDriver, CniConfig};
use crate::container::{Containers, ContainersOptions};
use crate::pod::Pods;
use crate::Result;
use berth_images::ImageService;

/// The name the CRI uses for "the runtime's default handler" (an empty `runtime_handler`).
pub const DEFAULT_HANDLER: &str = "";

/// The default handler answers to both the empty name and "default", as kubelet and crictl
/// users write either.
const HANDLERS: [&str; 2] = [DEFAULT_HANDLER, "default"];

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub root: PathBuf,
    pub state: PathBuf,
    pub cgroup: CgroupConfig,
    pub cni: CniConfig,
    /// The binary whose `monitor` subcommand runs a pod's monitor: `berth-monitor`, or berthd's
    /// own (`/proc/self/exe`, which stays valid when the file is replaced by an upgrade).
    pub monitor_exe: PathBuf,
}

/// Why the network is not ready, in the words the kubelet shows to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkStatus {
    Ready,
    NotReady { message: String },
}

/// What one runtime handler can do. Every flag is true only once it really works end to end,
/// because the kubelet admits pods on these flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerFeatures {
    pub recursive_read_only_mounts: bool,
    pub user_namespaces: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerInfo {
    pub name: String,
    pub features: HandlerFeatures,
}

pub struct Runtime {
    options: RuntimeOptions,
    cgroups: Arc<CgroupLayout>,
    pods: Pods,
    containers: Containers,
}

impl Runtime {
    pub fn new(options: RuntimeOptions, images: Arc<ImageService>) -> Result<Self> {
        let cgroups = CgroupLayout::detect()?;
        tracing::info!(
            mode = ?cgroups.mode,
            hierarchies = cgroups.hierarchies.len(),
            nest_under_self = options.cgroup.nest_under_self,
            "cgroup layout detected"
        );
        let cgroups = Arc::new(cgroups);
        let cni = Cni::new(
            options.cni.conf_dir.clone(),
            options.cni.bin_dirs.clone(),
            options.root.join("cni-cache"),
        );
        let handlers = HANDLERS.map(String::from).to_vec();
        let pods = Pods::open(
            &options.root,
            &options.state,
            cgroups.clone(),
            options.cgroup.nest_under_self,
            cni,
            handlers,
            options.monitor_exe.clone(),
        )?;
        let containers = Containers::open(
            ContainersOptions {
                root: options.root.clone(),
                state: options.state.clone(),
                cgroups: cgroups.clone(),
                nest: options.cgroup.nest_under_self,
            },
            images,
            pods.clone(),
        )?;
        Ok(Runtime { options, cgroups, pods, containers })
    }

    /// StopPodSandbox: the pod's containers, then the pod.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let id = self.pods.resolve_id(id)?;
        self.containers.stop_pod(&id).await?;
        self.pods.stop(&id).await
    }

    /// RemovePodSandbox: the pod's containers, then the pod. An unknown pod is fine.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let Some(id) = self.pods.find_id(id)? else { return Ok(()) };
        self.containers.remove_pod(&id).await?;
        self.pods.remove(&id).await
    }

    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    pub fn cgroup_layout(&self) -> &CgroupLayout {
        &self.cgroups
    }

    pub fn cgroup_driver(&self) -> CgroupDriver {
        self.options.cgroup.driver
    }

    /// Read afresh on every call: an operator (or a CNI daemonset) may install the config
    /// at any time after berthd started, and the kubelet polls Status every few seconds.
    pub fn network_status(&self) -> NetworkStatus {
        let cni = &self.options.cni;
        match cni::load_default_network(&cni.conf_dir) {
            Ok(NetworkLookup::Found(net)) => match cni::check_plugins(&net, &cni.bin_dirs) {
                Ok(()) => NetworkStatus::Ready,
                Err(message) => NetworkStatus::NotReady { message },
            },
            Ok(NetworkLookup::Missing { reason }) => NetworkStatus::NotReady { message: reason },
            Err(err) => NetworkStatus::NotReady { message: err.to_string() },
        }
    }

    /// The handlers a pod may name in `runtime_handler`.
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        HANDLERS
            .into_iter()
            .map(|name| HandlerInfo {
                name: name.to_string(),
                features: HandlerFeatures {
                    recursive_read_only_mounts: kernel_has_mount_setattr(),
                    user_namespaces: false,
                },
            })
            .collect()
    }
}

/// Recursive read-only mounts need `mount_setattr(2)` (Linux 5.12); the kubelet refuses such
/// mounts on a handler that does not claim them.
fn kernel_has_mount_setattr() -> bool {
    // SAFETY: invalid arguments on purpose: the kernel answers EBADF/EINVAL when the call
    // exists and ENOSYS when it does not, and touches nothing.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    result == -1 && nix::errno::Errno::last() != nix::errno::Errno::ENOSYS
}
