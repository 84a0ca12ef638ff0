//! The tonic service traits, implemented by delegation: each RPC translates nothing itself and
//! calls the module of its group (runtime_info, sandbox, container, exec, image, stats with
//! the metrics RPCs, events). An RPC that berth does not implement answers UNIMPLEMENTED.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub use crate::cri::Cri;
use crate::error::checkpoint_unimplemented;
use crate::proto::image_service_server::ImageService;
use crate::proto::runtime_service_server::RuntimeService;
use crate::proto::*;
use crate::{container, events, exec, image, runtime_info, sandbox, stats};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RuntimeService for Cri {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(runtime_info::version(self, request.into_inner()).await?))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        Ok(Response::new(sandbox::run(self, request.into_inner()).await?))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        Ok(Response::new(sandbox::stop(self, request.into_inner()).await?))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        Ok(Response::new(sandbox::remove(self, request.into_inner()).await?))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        Ok(Response::new(sandbox::status(self, request.into_inner()).await?))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        Ok(Response::new(sandbox::list(self, request.into_inner()).await?))
    }

    type StreamPodSandboxesStream = ResponseStream<StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let batches = sandbox::stream(self, request.into_inner().filter).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok)))))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        Ok(Response::new(container::create(self, request.into_inner()).await?))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        Ok(Response::new(container::start(self, request.into_inner()).await?))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        Ok(Response::new(container::stop(self, request.into_inner()).await?))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        Ok(Response::new(container::remove(self, request.into_inner()).await?))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        Ok(Response::new(container::list(self, request.into_inner()).await?))
    }

    type StreamContainersStream = ResponseStream<StreamContainersResponse>;

    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let batches = container::stream(self, request.into_inner().filter).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok)))))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        Ok(Response::new(container::status(self, request.into_inner()).await?))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        Ok(Response::new(container::update_resources(self, request.into_inner()).await?))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        Ok(Response::new(container::reopen_log(self, request.into_inner()).await?))
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        Ok(Response::new(exec::exec_sync(self, request.into_inner()).await?))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        Ok(Response::new(exec::exec(self, request.into_inner()).await?))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        Ok(Response::new(exec::attach(self, request.into_inner()).await?))
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        Ok(Response::new(exec::port_forward(self, request.into_inner()).await?))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        Ok(Response::new(stats::container_stats(self, request.into_inner()).await?))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        Ok(Response::new(stats::list_container_stats(self, request.into_inner()).await?))
    }

    type StreamContainerStatsStream = ResponseStream<StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        request: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let batches = stats::stream_container_stats(self, request.into_inner().filter).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok)))))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        Ok(Response::new(stats::pod_stats(self, request.into_inner()).await?))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        Ok(Response::new(stats::list_pod_stats(self, request.into_inner()).await?))
    }

    type StreamPodSandboxStatsStream = ResponseStream<StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let batches = stats::stream_pod_stats(self, request.into_inner().filter).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok)))))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        Ok(Response::new(sandbox::update_runtime_config(self, request.into_inner()).await?))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(runtime_info::status(self, request.into_inner()).await?))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        Err(checkpoint_unimplemented("CheckpointContainer"))
    }

    async fn checkpoint_pod(
        &self,
        _request: Request<CheckpointPodRequest>,
    ) -> Result<Response<CheckpointPodResponse>, Status> {
        Err(checkpoint_unimplemented("CheckpointPod"))
    }

    async fn restore_pod(
        &self,
        _request: Request<RestorePodRequest>,
    ) -> Result<Response<RestorePodResponse>, Status> {
        Err(checkpoint_unimplemented("RestorePod"))
    }

    type GetContainerEventsStream = ResponseStream<ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(Box::pin(events::subscribe(self))))
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(stats::list_metric_descriptors(self, request.into_inner()).await?))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(stats::list_pod_metrics(self, request.into_inner()).await?))
    }

    type StreamPodSandboxMetricsStream = ResponseStream<StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _request: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let batches = stats::stream_pod_metrics(self).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok)))))
    }

    async fn runtime_config(
        &self,
        request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        Ok(Response::new(runtime_info::runtime_config(self, request.into_inner()).await?))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        Ok(Response::new(sandbox::update_resources(self, request.into_inner()).await?))
    }
}

#[tonic::async_trait]
impl ImageService for Cri {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(image::list_images(self, request.into_inner()).await?))
    }

    type StreamImagesStream = ResponseStream<StreamImagesResponse>;

    async fn stream_images(
        &self,
        request: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let filter = request.into_inner().filter.and_then(|f| f.image);
        let batches = image::stream_images(self, filter).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(batches.into_iter().map(Ok)))))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Ok(Response::new(image::image_status(self, request.into_inner()).await?))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        Ok(Response::new(image::pull_image(self, request.into_inner()).await?))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Ok(Response::new(image::remove_image(self, request.into_inner()).await?))
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(image::image_fs_info(self, request.into_inner()).await?))
    }
}
