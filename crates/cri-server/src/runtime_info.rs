//! Version, Status and RuntimeConfig: what the kubelet asks before it runs anything.

use std::collections::HashMap;

use berth_runtime::{HandlerInfo, NetworkStatus};

use crate::cri::Cri;
use crate::error::CriResult;
use crate::proto::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigRequest,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, VersionRequest, VersionResponse,
};

pub const RUNTIME_NAME: &str = "berth";
/// The CRI API version berth serves.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The version of the kubelet-facing "runtime API" field, which kubelet only logs; containerd
/// and CRI-O answer 0.1.0 as well.
const KUBELET_API_VERSION: &str = "0.1.0";

/// Condition names and the reason the kubelet looks for, from the CRI's well-known values.
const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";
const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";

pub async fn version(_cri: &Cri, _request: VersionRequest) -> CriResult<VersionResponse> {
    Ok(VersionResponse {
        version: KUBELET_API_VERSION.into(),
        runtime_name: RUNTIME_NAME.into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: RUNTIME_API_VERSION.into(),
    })
}

pub async fn status(cri: &Cri, request: StatusRequest) -> CriResult<StatusResponse> {
    // The runtime is ready whenever berthd serves: it checks its root, state and cgroups at
    // start and refuses to start without them.
    let runtime_ready =
        RuntimeCondition { r#type: RUNTIME_READY.into(), status: true, ..Default::default() };
    let network = cri.runtime.network_status();
    let network_ready = match &network {
        NetworkStatus::Ready => {
            RuntimeCondition { r#type: NETWORK_READY.into(), status: true, ..Default::default() }
        }
        NetworkStatus::NotReady { message } => RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: false,
            reason: NETWORK_NOT_READY_REASON.into(),
            message: message.clone(),
        },
    };
    let mut info = HashMap::new();
    if request.verbose {
        info.insert("config".into(), json(&*cri.config));
        let nest = cri.runtime.options().cgroup.nest_under_self;
        info.insert("cgroups".into(), cri.runtime.cgroup_layout().summary(nest).to_string());
        info.insert("runtimeHandlers".into(), cri.runtime.handlers_summary().to_string());
    }
    Ok(StatusResponse {
        status: Some(RuntimeStatus { conditions: vec![runtime_ready, network_ready] }),
        info,
        runtime_handlers: cri.runtime.handlers().into_iter().map(handler).collect(),
        // Each feature is advertised once it works end to end; the kubelet relies on them.
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: false,
            // Every handler: the embedded executor applies them, runc and crun take the OCI
            // options (with the node mount's own restrictions named beside them).
            mount_options: true,
        }),
    })
}

pub async fn runtime_config(
    cri: &Cri,
    _request: RuntimeConfigRequest,
) -> CriResult<RuntimeConfigResponse> {
    let driver = match cri.runtime.cgroup_driver() {
        berth_runtime::config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration { cgroup_driver: driver.into() }),
    })
}

fn handler(info: HandlerInfo) -> RuntimeHandler {
    RuntimeHandler {
        name: info.name,
        features: Some(RuntimeHandlerFeatures {
            recursive_read_only_mounts: info.features.recursive_read_only_mounts,
            user_namespaces: info.features.user_namespaces,
        }),
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
}
