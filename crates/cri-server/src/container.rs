//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, StreamContainers, UpdateContainerResources, ReopenContainerLog:
//! translation between the CRI and `berth_runtime::container`.
//!
//! Enum values the CRI leaves open (any i32 can arrive) are checked here: prost's getters read an
//! unknown value as the default, which for a mount's propagation or a PID mode would silently
//! give the container something other than what was asked for.

use std::time::Duration;

use crate::convert::container::{
    container, container_config, container_filter, resources, status_response,
};
use crate::convert::{lookup_id, required_id};
use crate::cri::Cri;
use crate::error::{CriError, CriResult};
use crate::proto::{
    self, Container, ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest,
    CreateContainerResponse, ListContainersRequest, ListContainersResponse, RemoveContainerRequest,
    RemoveContainerResponse, ReopenContainerLogRequest, ReopenContainerLogResponse,
    StartContainerRequest, StartContainerResponse, StopContainerRequest, StopContainerResponse,
    StreamContainersResponse, UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};
use crate::rpc_layer::{record_container, record_pod};

/// Containers per StreamContainers message.
const STREAM_BATCH: usize = 64;

pub async fn create(
    cri: &Cri,
    request: CreateContainerRequest,
) -> CriResult<CreateContainerResponse> {
    let pod_id = required_id(&request.pod_sandbox_id, "pod sandbox id")?;
    record_pod(pod_id);
    let config = request.config.ok_or_else(|| {
        CriError::InvalidRequest("CreateContainer needs a container config".into())
    })?;
    // The sandbox config of the request is not read: the runtime has the pod's own record.
    let config = container_config(config)?;
    let id = cri.runtime.containers().create(pod_id, config).await?;
    record_container(&id);
    Ok(CreateContainerResponse { container_id: id })
}

pub async fn start(cri: &Cri, request: StartContainerRequest) -> CriResult<StartContainerResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    cri.runtime.containers().start(id).await?;
    Ok(StartContainerResponse {})
}

pub async fn stop(cri: &Cri, request: StopContainerRequest) -> CriResult<StopContainerResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    cri.runtime.containers().stop(id, stop_timeout(request.timeout)).await?;
    Ok(StopContainerResponse {})
}

pub async fn remove(
    cri: &Cri,
    request: RemoveContainerRequest,
) -> CriResult<RemoveContainerResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    cri.runtime.containers().remove(id).await?;
    Ok(RemoveContainerResponse {})
}

pub async fn status(
    cri: &Cri,
    request: ContainerStatusRequest,
) -> CriResult<ContainerStatusResponse> {
    let id = lookup_id(&request.container_id, "container")?;
    record_container(id);
    let details = cri.runtime.containers().status(id, request.verbose).await?;
    record_pod(&details.record.pod_id);
    Ok(status_response(&details, request.verbose))
}

pub async fn list(cri: &Cri, request: ListContainersRequest) -> CriResult<ListContainersResponse> {
    Ok(ListContainersResponse { containers: listed(cri, request.filter).await })
}

pub async fn stream(
    cri: &Cri,
    filter: Option<proto::ContainerFilter>,
) -> CriResult<Vec<StreamContainersResponse>> {
    let containers = listed(cri, filter).await;
    Ok(containers
        .chunks(STREAM_BATCH)
        .map(|batch| StreamContainersResponse { containers: batch.to_vec() })
        .collect())
}

pub async fn update_resources(
    cri: &Cri,
    request: UpdateContainerResourcesRequest,
) -> CriResult<UpdateContainerResourcesResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    // `windows` has no meaning on Linux, and the annotations name no experimental resources
    // that berth knows. No `linux` changes nothing, but the container must still be one whose
    // resources could change.
    let resources = request.linux.map(resources).unwrap_or_default();
    cri.runtime.containers().update_resources(id, resources).await?;
    Ok(UpdateContainerResourcesResponse {})
}

pub async fn reopen_log(
    cri: &Cri,
    request: ReopenContainerLogRequest,
) -> CriResult<ReopenContainerLogResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    cri.runtime.containers().reopen_log(id).await?;
    Ok(ReopenContainerLogResponse {})
}

async fn listed(cri: &Cri, filter: Option<proto::ContainerFilter>) -> Vec<Container> {
    let Some(filter) = container_filter(filter.unwrap_or_default()) else {
        return Vec::new();
    };
    cri.runtime.containers().list(&filter).await.iter().map(container).collect()
}

/// StopContainer's grace period in seconds; a negative one means "kill at once".
fn stop_timeout(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(stop_timeout(2), Duration::from_secs(2));
        assert_eq!(stop_timeout(0), Duration::ZERO);
        assert_eq!(stop_timeout(-5), Duration::ZERO);
    }
}
