//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox,
//! StreamPodSandboxes, UpdatePodSandboxResources, UpdateRuntimeConfig: translation between the
//! CRI and `berth_runtime::pod`.

use std::collections::HashMap;

use berth_runtime::container::ContainerFilter;
use berth_runtime::pod::{self, PodFilter, PodState};
use berth_runtime::userns::UserNamespace;

use crate::clock::now_nanos;
use crate::convert::container::container_status;
use crate::convert::pod::{metadata, pod_status, state};
use crate::convert::{id_mappings, lookup_id, to_map};
use crate::cri::Cri;
use crate::error::{CriError, CriResult};
use crate::proto::{
    self, ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox, PodSandboxFilter,
    PodSandboxStatusRequest, PodSandboxStatusResponse, RemovePodSandboxRequest,
    RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest,
    StopPodSandboxResponse, StreamPodSandboxesResponse, UpdatePodSandboxResourcesRequest,
    UpdatePodSandboxResourcesResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
};
use crate::rpc_layer::record_pod;

/// Pods per StreamPodSandboxes message.
const STREAM_BATCH: usize = 64;

pub async fn run(cri: &Cri, request: RunPodSandboxRequest) -> CriResult<RunPodSandboxResponse> {
    let config = request.config.ok_or_else(|| {
        CriError::InvalidRequest("RunPodSandbox needs a pod sandbox config".into())
    })?;
    let config = pod_config(config, request.runtime_handler)?;
    let id = cri.runtime.pods().run(config).await?;
    record_pod(&id);
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}

pub async fn stop(cri: &Cri, request: StopPodSandboxRequest) -> CriResult<StopPodSandboxResponse> {
    record_pod(&request.pod_sandbox_id);
    cri.runtime.stop_pod(&request.pod_sandbox_id).await?;
    Ok(StopPodSandboxResponse {})
}

pub async fn remove(
    cri: &Cri,
    request: RemovePodSandboxRequest,
) -> CriResult<RemovePodSandboxResponse> {
    record_pod(&request.pod_sandbox_id);
    cri.runtime.remove_pod(&request.pod_sandbox_id).await?;
    Ok(RemovePodSandboxResponse {})
}

pub async fn status(
    cri: &Cri,
    request: PodSandboxStatusRequest,
) -> CriResult<PodSandboxStatusResponse> {
    let id = lookup_id(&request.pod_sandbox_id, "pod sandbox")?;
    record_pod(id);
    let details = cri.runtime.pods().status(id).await?;
    let record = &details.record;
    let mut info = HashMap::new();
    if request.verbose {
        let verbose = serde_json::json!({
            "pid": 0,
            "netns": details.netns.as_ref().map(|p| p.display().to_string()),
            "cgroup": record.cgroup,
            "cgroupDirs": details.cgroup_dirs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "cniResult": record.network.as_ref().map(|n| &n.cni_result),
            "config": record.config,
            "runtimeHandler": record.config.runtime_handler,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    let status = pod_status(record);
    // With the evented PLEG the kubelet takes the pod's containers from here (the timestamp
    // says the list is there) instead of listing them: an empty list would have it start
    // every container again. As containerd, always all of the pod's.
    let timestamp = now_nanos();
    let filter = ContainerFilter { pod_id: Some(record.id.clone()), ..Default::default() };
    let containers = cri.runtime.containers().list(&filter).await;
    Ok(PodSandboxStatusResponse {
        status: Some(status),
        info,
        // Newest first (the list is oldest first): kubelet 1.37 takes this list as it comes
        // (GetPodStatus, evented PLEG) and looks a container up by name taking the first
        // match, so oldest first had it see a restarted container's exited predecessor and
        // create the same attempt again (AlreadyExists). Its own listing sorts newest first.
        containers_statuses: containers.iter().rev().map(container_status).collect(),
        timestamp,
    })
}

pub async fn list(cri: &Cri, request: ListPodSandboxRequest) -> CriResult<ListPodSandboxResponse> {
    Ok(ListPodSandboxResponse { items: listed(cri, request.filter).await })
}

pub async fn stream(
    cri: &Cri,
    filter: Option<PodSandboxFilter>,
) -> CriResult<Vec<StreamPodSandboxesResponse>> {
    let pods = listed(cri, filter).await;
    Ok(pods
        .chunks(STREAM_BATCH)
        .map(|batch| StreamPodSandboxesResponse { pod_sandboxes: batch.to_vec() })
        .collect())
}

async fn listed(cri: &Cri, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    let filter = filter.map(|f| PodFilter {
        id: Some(f.id).filter(|id| !id.is_empty()),
        state: f.state.map(|s| match proto::PodSandboxState::try_from(s.state) {
            Ok(proto::PodSandboxState::SandboxReady) => PodState::Ready,
            _ => PodState::NotReady,
        }),
        labels: f.label_selector.into_iter().collect(),
    });
    cri.runtime
        .pods()
        .list(&filter.unwrap_or_default())
        .await
        .iter()
        .map(|record| PodSandbox {
            id: record.id.clone(),
            metadata: Some(metadata(record)),
            state: state(record.state).into(),
            created_at: record.created_at_nanos,
            labels: to_map(&record.config.labels),
            annotations: to_map(&record.config.annotations),
            runtime_handler: record.config.runtime_handler.clone(),
        })
        .collect()
}

pub async fn update_resources(
    cri: &Cri,
    request: UpdatePodSandboxResourcesRequest,
) -> CriResult<UpdatePodSandboxResourcesResponse> {
    record_pod(&request.pod_sandbox_id);
    let resources = request.resources.map(crate::convert::container::resources).unwrap_or_default();
    let overhead = request.overhead.map(crate::convert::container::resources).unwrap_or_default();
    cri.runtime.pods().update_resources(&request.pod_sandbox_id, resources, overhead).await?;
    Ok(UpdatePodSandboxResourcesResponse {})
}

pub async fn update_runtime_config(
    cri: &Cri,
    request: UpdateRuntimeConfigRequest,
) -> CriResult<UpdateRuntimeConfigResponse> {
    if let Some(cidr) = request.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr) {
        cri.runtime.pods().set_pod_cidr(&cidr);
    }
    Ok(UpdateRuntimeConfigResponse {})
}

fn pod_config(
    config: proto::PodSandboxConfig,
    runtime_handler: String,
) -> CriResult<pod::PodConfig> {
    let meta = config
        .metadata
        .ok_or_else(|| CriError::InvalidRequest("pod sandbox config needs metadata".into()))?;
    if meta.name.is_empty() || meta.namespace.is_empty() || meta.uid.is_empty() {
        return Err(CriError::InvalidRequest(
            "pod sandbox metadata needs name, namespace and uid".into(),
        ));
    }
    let linux = config.linux.unwrap_or_default();
    let options = linux.security_context.and_then(|s| s.namespace_options).unwrap_or_default();
    let user = user_namespace(options.userns_options.as_ref())?;
    let port_mappings = config
        .port_mappings
        .into_iter()
        .map(|pm| {
            let port = |value: i32, what: &str| match value {
                0..=65535 => Ok(value),
                _ => Err(CriError::InvalidRequest(format!("{what} {value} is not a port"))),
            };
            Ok(pod::PortMapping {
                protocol: match pm.protocol() {
                    proto::Protocol::Tcp => pod::Protocol::Tcp,
                    proto::Protocol::Udp => pod::Protocol::Udp,
                    proto::Protocol::Sctp => pod::Protocol::Sctp,
                },
                container_port: port(pm.container_port, "container port")?,
                host_port: port(pm.host_port, "host port")?,
                host_ip: pm.host_ip,
            })
        })
        .collect::<CriResult<Vec<_>>>()?;
    Ok(pod::PodConfig {
        metadata: pod::PodMetadata {
            name: meta.name,
            uid: meta.uid,
            namespace: meta.namespace,
            attempt: meta.attempt,
        },
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| pod::DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        namespaces: pod::NamespaceOptions {
            network: mode(options.network()),
            pid: mode(options.pid()),
            ipc: mode(options.ipc()),
            target_id: options.target_id,
            user,
        },
        sysctls: linux.sysctls.into_iter().collect(),
        runtime_handler,
    })
}

/// The pod's `userns_options`: absent or NODE, the node's user namespace; POD, one of its own
/// with the kubelet's mappings (exactly one range each, checked by the runtime).
fn user_namespace(options: Option<&proto::UserNamespace>) -> CriResult<Option<UserNamespace>> {
    let Some(options) = options else { return Ok(None) };
    match proto::NamespaceMode::try_from(options.mode) {
        Ok(proto::NamespaceMode::Node) if options.uids.is_empty() && options.gids.is_empty() => {
            Ok(None)
        }
        Ok(proto::NamespaceMode::Node) => Err(CriError::InvalidRequest(
            "user namespace mode NODE takes no uid or gid mappings".into(),
        )),
        Ok(proto::NamespaceMode::Pod) => {
            Ok(Some(UserNamespace::new(&id_mappings(&options.uids), &id_mappings(&options.gids))?))
        }
        Ok(other) => Err(CriError::InvalidRequest(format!(
            "user namespace mode {} is not supported (POD or NODE)",
            other.as_str_name()
        ))),
        Err(_) => {
            Err(CriError::InvalidRequest(format!("unknown user namespace mode {}", options.mode)))
        }
    }
}

fn mode(mode: proto::NamespaceMode) -> pod::NamespaceMode {
    match mode {
        proto::NamespaceMode::Pod => pod::NamespaceMode::Pod,
        proto::NamespaceMode::Container => pod::NamespaceMode::Container,
        proto::NamespaceMode::Node => pod::NamespaceMode::Node,
        proto::NamespaceMode::Target => pod::NamespaceMode::Target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::pod::namespace_option;
    use berth_runtime::userns::IdMapping;
    use tonic::Code;

    fn userns(
        mode: proto::NamespaceMode,
        uids: &[(u32, u32, u32)],
        gids: &[(u32, u32, u32)],
    ) -> proto::UserNamespace {
        let list = |l: &[(u32, u32, u32)]| {
            l.iter()
                .map(|&(container_id, host_id, length)| proto::IdMapping {
                    host_id,
                    container_id,
                    length,
                })
                .collect()
        };
        proto::UserNamespace { mode: mode.into(), uids: list(uids), gids: list(gids) }
    }

    fn code(result: CriResult<Option<UserNamespace>>) -> (Code, String) {
        let status = tonic::Status::from(result.unwrap_err());
        (status.code(), status.message().to_string())
    }

    #[test]
    fn user_namespace_options_translate_and_are_checked() {
        use proto::NamespaceMode::*;
        assert_eq!(user_namespace(None).unwrap(), None);
        assert_eq!(user_namespace(Some(&userns(Node, &[], &[]))).unwrap(), None);
        let pod = user_namespace(Some(&userns(Pod, &[(0, 65536, 65536)], &[(0, 131_072, 65536)])));
        let pod = pod.unwrap().unwrap();
        assert_eq!(pod.uids, IdMapping { container_id: 0, host_id: 65536, length: 65536 });
        assert_eq!(pod.gids.host_id, 131_072);
        // And back, for PodSandboxStatus.
        let options = pod::NamespaceOptions { user: Some(pod), ..Default::default() };
        let shown = namespace_option(&options).userns_options.unwrap();
        assert_eq!(shown, userns(Pod, &[(0, 65536, 65536)], &[(0, 131_072, 65536)]));
        assert_eq!(namespace_option(&pod::NamespaceOptions::default()).userns_options, None);

        let range = [(0, 65536, 65536)];
        let two = [(0, 65536, 1000), (1000, 200_000, 10)];
        for (options, words) in [
            (userns(Pod, &[], &range), "exactly one uid mapping, not 0"),
            (userns(Pod, &two, &range), "exactly one uid mapping, not 2"),
            (userns(Pod, &range, &two), "exactly one gid mapping, not 2"),
            (userns(Pod, &[(0, 65536, 0)], &range), "length is 0"),
            (userns(Pod, &[(0, 0, 65536)], &range), "node's root"),
            (userns(Pod, &[(1, 65536, 65536)], &range), "container ID 0 is not mapped"),
            (userns(Node, &range, &range), "mode NODE takes no"),
            (userns(Container, &range, &range), "CONTAINER is not supported"),
            (proto::UserNamespace { mode: 9, ..Default::default() }, "mode 9"),
        ] {
            let (code, message) = code(user_namespace(Some(&options)));
            assert_eq!(code, Code::InvalidArgument, "{message}");
            assert!(message.contains(words), "{words}: {message}");
        }
    }
}
