//! A CRI client over the daemon's unix socket, generated from berth's own proto: the same
//! messages and method paths the kubelet uses.

use std::path::{Path, PathBuf};

use berth_cri_server::proto::image_service_client::ImageServiceClient;
use berth_cri_server::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri_server::proto::{
    AuthConfig, DnsConfig, Image, ImageFilter, ImageSpec, ImageStatusRequest, ImageStatusResponse,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListImagesRequest, ListPodSandboxRequest,
    NamespaceMode, NamespaceOption, NetworkConfig, PodSandbox, PodSandboxConfig, PodSandboxFilter,
    PodSandboxMetadata, PodSandboxState, PodSandboxStateValue, PodSandboxStatusRequest,
    PodSandboxStatusResponse, PortMapping, Protocol, PullImageRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, RuntimeConfig, StopPodSandboxRequest,
    StreamPodSandboxesRequest, UpdateRuntimeConfigRequest, VersionRequest, VersionResponse,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// As the kubelet's client allows.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by the API but unused: every connection goes to the socket.
        let channel = Endpoint::from_static("http://berth.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        })
    }

    pub async fn version(&mut self) -> Result<VersionResponse, tonic::Status> {
        let request = VersionRequest { version: "v1".into() };
        Ok(self.runtime.version(request).await?.into_inner())
    }

    /// Pulls as the kubelet does; returns the image ref (the image id).
    pub async fn pull(&mut self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with_auth(image, None).await
    }

    pub async fn pull_with_auth(
        &mut self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let request = PullImageRequest { image: Some(spec(image)), auth, sandbox_config: None };
        Ok(self.images.pull_image(request).await?.into_inner().image_ref)
    }

    pub async fn image_status(
        &mut self,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse, tonic::Status> {
        let request = ImageStatusRequest { image: Some(spec(image)), verbose };
        Ok(self.images.image_status(request).await?.into_inner())
    }

    /// The image `image` names, or None when the runtime has no such image.
    pub async fn image(&mut self, image: &str) -> Option<Image> {
        self.image_status(image, false).await.expect("ImageStatus").image
    }

    pub async fn list_images(&mut self, filter: Option<&str>) -> Vec<Image> {
        let filter = filter.map(|image| ImageFilter { image: Some(spec(image)) });
        let request = ListImagesRequest { filter };
        self.images.list_images(request).await.expect("ListImages").into_inner().images
    }

    pub async fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        self.images.remove_image(RemoveImageRequest { image: Some(spec(image)) }).await?;
        Ok(())
    }
}

impl Cri {
    /// RunPodSandbox; returns the pod's id.
    pub async fn run_pod(&mut self, pod: &Pod) -> Result<String, tonic::Status> {
        let request = RunPodSandboxRequest {
            config: Some(pod.config.clone()),
            runtime_handler: pod.runtime_handler.clone(),
        };
        Ok(self.runtime.run_pod_sandbox(request).await?.into_inner().pod_sandbox_id)
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.runtime.stop_pod_sandbox(request).await?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.runtime.remove_pod_sandbox(request).await?;
        Ok(())
    }

    pub async fn pod_status(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<PodSandboxStatusResponse, tonic::Status> {
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose };
        Ok(self.runtime.pod_sandbox_status(request).await?.into_inner())
    }

    /// The `info` JSON of a verbose PodSandboxStatus.
    pub async fn pod_info(&mut self, id: &str) -> serde_json::Value {
        let status = self.pod_status(id, true).await.expect("PodSandboxStatus verbose");
        let info = status.info.get("info").expect("verbose status has an \"info\" key");
        serde_json::from_str(info).expect("the verbose info is JSON")
    }

    pub async fn list_pods(&mut self, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
        let request = ListPodSandboxRequest { filter };
        self.runtime.list_pod_sandbox(request).await.expect("ListPodSandbox").into_inner().items
    }

    /// StreamPodSandboxes, every message of the stream concatenated.
    pub async fn stream_pods(&mut self, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
        let request = StreamPodSandboxesRequest { filter };
        let mut stream = self
            .runtime
            .stream_pod_sandboxes(request)
            .await
            .expect("StreamPodSandboxes")
            .into_inner();
        let mut pods = Vec::new();
        while let Some(message) = stream.message().await.expect("a StreamPodSandboxes message") {
            pods.extend(message.pod_sandboxes);
        }
        pods
    }

    pub async fn update_pod_cidr(&mut self, cidr: &str) -> Result<(), tonic::Status> {
        let request = UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig { pod_cidr: cidr.to_string() }),
            }),
        };
        self.runtime.update_runtime_config(request).await?;
        Ok(())
    }
}

/// A pod sandbox to run: its config and runtime handler, built from [`pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub config: PodSandboxConfig,
    pub runtime_handler: String,
}

/// A pod as the kubelet would send it: metadata (uid `uid-<name>`, namespace `default`),
/// hostname `<name>`, a label `app=<name>`, pod network, IPC and PID namespaces.
pub fn pod(name: &str) -> Pod {
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Pod { config, runtime_handler: String::new() }
}

impl Pod {
    fn metadata(&mut self) -> &mut PodSandboxMetadata {
        self.config.metadata.get_or_insert_with(Default::default)
    }

    fn linux(&mut self) -> &mut LinuxPodSandboxConfig {
        self.config.linux.get_or_insert_with(Default::default)
    }

    fn namespaces(&mut self) -> &mut NamespaceOption {
        self.linux()
            .security_context
            .get_or_insert_with(Default::default)
            .namespace_options
            .get_or_insert_with(Default::default)
    }

    pub fn uid(mut self, uid: &str) -> Pod {
        self.metadata().uid = uid.to_string();
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Pod {
        self.metadata().namespace = namespace.to_string();
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Pod {
        self.metadata().attempt = attempt;
        self
    }

    pub fn hostname(mut self, hostname: &str) -> Pod {
        self.config.hostname = hostname.to_string();
        self
    }

    pub fn dns(mut self, servers: &[&str], searches: &[&str], options: &[&str]) -> Pod {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect();
        self.config.dns_config = Some(DnsConfig {
            servers: strings(servers),
            searches: strings(searches),
            options: strings(options),
        });
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Pod {
        self.config.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Pod {
        self.config.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// A TCP port mapping, on every host address.
    pub fn port(mut self, host_port: i32, container_port: i32) -> Pod {
        self.config.port_mappings.push(PortMapping {
            protocol: Protocol::Tcp.into(),
            container_port,
            host_port,
            host_ip: String::new(),
        });
        self
    }

    /// The node's network namespace (and so no CNI), as hostNetwork pods have.
    pub fn host_network(mut self) -> Pod {
        self.namespaces().network = NamespaceMode::Node.into();
        self
    }

    pub fn host_ipc(mut self) -> Pod {
        self.namespaces().ipc = NamespaceMode::Node.into();
        self
    }

    pub fn sysctl(mut self, key: &str, value: &str) -> Pod {
        self.linux().sysctls.insert(key.to_string(), value.to_string());
        self
    }

    pub fn cgroup_parent(mut self, parent: &str) -> Pod {
        self.linux().cgroup_parent = parent.to_string();
        self
    }

    pub fn runtime_handler(mut self, handler: &str) -> Pod {
        self.runtime_handler = handler.to_string();
        self
    }
}

/// ListPodSandbox filters.
pub fn filter_id(id: &str) -> PodSandboxFilter {
    PodSandboxFilter { id: id.to_string(), ..Default::default() }
}

pub fn filter_state(state: PodSandboxState) -> PodSandboxFilter {
    PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: state.into() }),
        ..Default::default()
    }
}

pub fn filter_labels(labels: &[(&str, &str)]) -> PodSandboxFilter {
    PodSandboxFilter {
        label_selector: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

pub fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.to_string(), ..Default::default() }
}
