//! A CRI client over the daemon's unix socket, generated from berth's own proto: the same
//! messages and method paths the kubelet uses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_server::proto::image_service_client::ImageServiceClient;
use berth_cri_server::proto::runtime_service_client::RuntimeServiceClient;
pub use berth_cri_server::proto::security_profile::ProfileType;
use berth_cri_server::proto::{
    AuthConfig, Capability, Container, ContainerConfig, ContainerFilter, ContainerMetadata,
    ContainerState, ContainerStateValue, ContainerStatus, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, DnsConfig, ExecSyncRequest, ExecSyncResponse,
    IdMapping, Image, ImageFilter, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest, ListImagesRequest,
    ListPodSandboxRequest, Mount, NamespaceMode, NamespaceOption, NetworkConfig, PodSandbox,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, PodSandboxStatusResponse, PortMapping, Protocol, PullImageRequest,
    RemoveContainerRequest, RemoveImageRequest, RemovePodSandboxRequest, ReopenContainerLogRequest,
    RunPodSandboxRequest, RuntimeConfig, SecurityProfile, Signal, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, StreamContainersRequest,
    StreamPodSandboxesRequest, SupplementalGroupsPolicy, UpdateRuntimeConfigRequest, UserNamespace,
    VersionRequest, VersionResponse,
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

    /// The pod's PID mode: `Pod` is one namespace for all its containers (the kubelet's
    /// `shareProcessNamespace`), `Container` one each, `Node` the node's.
    pub fn pid(mut self, mode: NamespaceMode) -> Pod {
        self.namespaces().pid = mode.into();
        self
    }

    /// A user namespace of the pod's own (`hostUsers: false`) with these mappings.
    pub fn userns(mut self, uids: &[IdMapping], gids: &[IdMapping]) -> Pod {
        self.namespaces().userns_options = Some(UserNamespace {
            mode: NamespaceMode::Pod.into(),
            uids: uids.to_vec(),
            gids: gids.to_vec(),
        });
        self
    }

    /// The node's user namespace, asked for explicitly (`userns_options` mode NODE, as critest
    /// and a kubelet with `hostUsers: true` may send it).
    pub fn userns_node(mut self) -> Pod {
        self.namespaces().userns_options =
            Some(UserNamespace { mode: NamespaceMode::Node.into(), ..Default::default() });
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

    /// Where the pod's containers' `log_path`s are relative to. The kubelet creates it before
    /// RunPodSandbox; so must a test.
    pub fn log_directory(mut self, dir: impl AsRef<Path>) -> Pod {
        self.config.log_directory = dir.as_ref().display().to_string();
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

impl Cri {
    /// CreateContainer in pod `pod_id`, which was run from `pod` (the kubelet sends the pod's
    /// config along); returns the container's id.
    pub async fn create_container(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        container: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(container.config.clone()),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self.runtime.create_container(request).await?.into_inner().container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = StartContainerRequest { container_id: id.to_string() };
        self.runtime.start_container(request).await?;
        Ok(())
    }

    /// CreateContainer, then StartContainer: what the kubelet does for each container.
    pub async fn run_container(
        &mut self,
        pod_id: &str,
        pod: &Pod,
        container: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let id = self.create_container(pod_id, pod, container).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    /// StopContainer with a grace period of `timeout` seconds.
    pub async fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let request = StopContainerRequest { container_id: id.to_string(), timeout };
        self.runtime.stop_container(request).await?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = RemoveContainerRequest { container_id: id.to_string() };
        self.runtime.remove_container(request).await?;
        Ok(())
    }

    pub async fn container_status(
        &mut self,
        id: &str,
        verbose: bool,
    ) -> Result<ContainerStatusResponse, tonic::Status> {
        let request = ContainerStatusRequest { container_id: id.to_string(), verbose };
        Ok(self.runtime.container_status(request).await?.into_inner())
    }

    /// The status of a container that must exist.
    pub async fn container(&mut self, id: &str) -> ContainerStatus {
        let response = self.container_status(id, false).await;
        response.expect("ContainerStatus").status.expect("ContainerStatus has a status")
    }

    /// The `info` JSON of a verbose ContainerStatus.
    pub async fn container_info(&mut self, id: &str) -> serde_json::Value {
        let status = self.container_status(id, true).await.expect("ContainerStatus verbose");
        let info = status.info.get("info").expect("verbose status has an \"info\" key");
        serde_json::from_str(info).expect("the verbose info is JSON")
    }

    pub async fn list_containers(&mut self, filter: Option<ContainerFilter>) -> Vec<Container> {
        let request = ListContainersRequest { filter };
        self.runtime.list_containers(request).await.expect("ListContainers").into_inner().containers
    }

    /// StreamContainers, every message of the stream concatenated.
    pub async fn stream_containers(&mut self, filter: Option<ContainerFilter>) -> Vec<Container> {
        let request = StreamContainersRequest { filter };
        let mut stream =
            self.runtime.stream_containers(request).await.expect("StreamContainers").into_inner();
        let mut containers = Vec::new();
        while let Some(message) = stream.message().await.expect("a StreamContainers message") {
            containers.extend(message.containers);
        }
        containers
    }

    /// ExecSync with a timeout of `timeout` seconds (0: none).
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        let request = ExecSyncRequest { container_id: id.to_string(), cmd: strings(cmd), timeout };
        Ok(self.runtime.exec_sync(request).await?.into_inner())
    }

    pub async fn reopen_container_log(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = ReopenContainerLogRequest { container_id: id.to_string() };
        self.runtime.reopen_container_log(request).await?;
        Ok(())
    }

    /// Polls ContainerStatus until the container has exited; panics with the last status if it
    /// has not within `timeout`.
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container(id).await;
            if status.state() == ContainerState::ContainerExited {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within {timeout:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A container to create: the config a kubelet would send, built from [`container`].
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub config: ContainerConfig,
}

/// The masked paths the kubelet sends for `procMount: Default` (an empty list for Unmasked).
pub const KUBELET_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// The read-only paths the kubelet sends for `procMount: Default`.
pub const KUBELET_READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A container `name` (attempt 0) of `image`, with a label `app=<name>`, no log, the masked and
/// read-only paths the kubelet sends by default, and nothing else set: the image's entrypoint,
/// cmd, env, working dir and user apply, no seccomp profile.
pub fn container(name: &str, image: &str) -> ContainerSpec {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.to_string(), attempt: 0 }),
        image: Some(spec(image)),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources::default()),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
                masked_paths: strings(KUBELET_MASKED_PATHS),
                readonly_paths: strings(KUBELET_READONLY_PATHS),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    ContainerSpec { config }
}

impl ContainerSpec {
    fn linux(&mut self) -> &mut LinuxContainerConfig {
        self.config.linux.get_or_insert_with(Default::default)
    }

    fn security(&mut self) -> &mut LinuxContainerSecurityContext {
        self.linux().security_context.get_or_insert_with(Default::default)
    }

    fn resources_mut(&mut self) -> &mut LinuxContainerResources {
        self.linux().resources.get_or_insert_with(Default::default)
    }

    pub fn attempt(mut self, attempt: u32) -> ContainerSpec {
        self.config.metadata.get_or_insert_with(Default::default).attempt = attempt;
        self
    }

    /// The CRI `command`: replaces the image's Entrypoint (and drops its Cmd).
    pub fn command(mut self, command: &[&str]) -> ContainerSpec {
        self.config.command = strings(command);
        self
    }

    /// The CRI `args`: replaces the image's Cmd.
    pub fn args(mut self, args: &[&str]) -> ContainerSpec {
        self.config.args = strings(args);
        self
    }

    /// `/bin/sh -c <script>` as the command.
    pub fn shell(self, script: &str) -> ContainerSpec {
        self.command(&["/bin/sh", "-c", script])
    }

    pub fn working_dir(mut self, dir: &str) -> ContainerSpec {
        self.config.working_dir = dir.to_string();
        self
    }

    /// Appends an environment variable; a later one of the same name wins.
    pub fn env(mut self, key: &str, value: &str) -> ContainerSpec {
        self.config.envs.push(KeyValue { key: key.to_string(), value: value.as_bytes().to_vec() });
        self
    }

    /// Appends a mount, such as one from [`bind`].
    pub fn mount(mut self, mount: Mount) -> ContainerSpec {
        self.config.mounts.push(mount);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> ContainerSpec {
        self.config.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> ContainerSpec {
        self.config.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Relative to the pod's log directory (see [`Pod::log_directory`]).
    pub fn log_path(mut self, path: &str) -> ContainerSpec {
        self.config.log_path = path.to_string();
        self
    }

    pub fn tty(mut self, tty: bool) -> ContainerSpec {
        self.config.tty = tty;
        self
    }

    pub fn stdin(mut self, stdin: bool, once: bool) -> ContainerSpec {
        self.config.stdin = stdin;
        self.config.stdin_once = once;
        self
    }

    pub fn resources(mut self, resources: LinuxContainerResources) -> ContainerSpec {
        self.linux().resources = Some(resources);
        self
    }

    /// A memory limit of `bytes`, swap included (so that nothing can be swapped out instead of
    /// the OOM killer stepping in).
    pub fn memory_limit(mut self, bytes: i64) -> ContainerSpec {
        let resources = self.resources_mut();
        resources.memory_limit_in_bytes = bytes;
        resources.memory_swap_limit_in_bytes = bytes;
        self
    }

    pub fn run_as_user(mut self, uid: i64) -> ContainerSpec {
        self.security().run_as_user = Some(Int64Value { value: uid });
        self
    }

    pub fn run_as_group(mut self, gid: i64) -> ContainerSpec {
        self.security().run_as_group = Some(Int64Value { value: gid });
        self
    }

    pub fn run_as_username(mut self, name: &str) -> ContainerSpec {
        self.security().run_as_username = name.to_string();
        self
    }

    pub fn supplemental_groups(mut self, gids: &[i64]) -> ContainerSpec {
        self.security().supplemental_groups = gids.to_vec();
        self
    }

    pub fn privileged(mut self) -> ContainerSpec {
        self.security().privileged = true;
        self
    }

    pub fn readonly_rootfs(mut self) -> ContainerSpec {
        self.security().readonly_rootfs = true;
        self
    }

    pub fn no_new_privs(mut self) -> ContainerSpec {
        self.security().no_new_privs = true;
        self
    }

    pub fn capabilities(mut self, add: &[&str], drop: &[&str]) -> ContainerSpec {
        self.security().capabilities = Some(Capability {
            add_capabilities: strings(add),
            drop_capabilities: strings(drop),
            add_ambient_capabilities: Vec::new(),
        });
        self
    }

    pub fn pid_mode(mut self, mode: NamespaceMode) -> ContainerSpec {
        self.security().namespace_options.get_or_insert_with(Default::default).pid = mode.into();
        self
    }

    pub fn stop_signal(mut self, signal: Signal) -> ContainerSpec {
        self.config.stop_signal = signal.into();
        self
    }

    pub fn masked_paths(mut self, paths: &[&str]) -> ContainerSpec {
        self.security().masked_paths = strings(paths);
        self
    }

    pub fn readonly_paths(mut self, paths: &[&str]) -> ContainerSpec {
        self.security().readonly_paths = strings(paths);
        self
    }

    /// The `seccomp` field (`localhost_ref` only for Localhost).
    pub fn seccomp(mut self, kind: ProfileType, localhost_ref: &str) -> ContainerSpec {
        self.security().seccomp = Some(SecurityProfile {
            profile_type: kind.into(),
            localhost_ref: localhost_ref.to_string(),
        });
        self
    }

    /// The deprecated `seccomp_profile_path` (`runtime/default`, `localhost/<path>`, …).
    pub fn seccomp_profile_path(mut self, path: &str) -> ContainerSpec {
        self.security().seccomp_profile_path = path.to_string();
        self
    }

    pub fn apparmor(mut self, kind: ProfileType, localhost_ref: &str) -> ContainerSpec {
        self.security().apparmor = Some(SecurityProfile {
            profile_type: kind.into(),
            localhost_ref: localhost_ref.to_string(),
        });
        self
    }

    pub fn supplemental_groups_policy(mut self, policy: SupplementalGroupsPolicy) -> ContainerSpec {
        self.security().supplemental_groups_policy = policy.into();
        self
    }
}

/// A read-write bind mount of `host` at `container_path`, private propagation. Change the rest
/// with struct update: `Mount { readonly: true, ..bind(dir, "/data") }`.
pub fn bind(host: impl AsRef<Path>, container_path: &str) -> Mount {
    Mount {
        container_path: container_path.to_string(),
        host_path: host.as_ref().display().to_string(),
        ..Default::default()
    }
}

/// ListContainers filters.
pub fn containers_by_id(id: &str) -> ContainerFilter {
    ContainerFilter { id: id.to_string(), ..Default::default() }
}

pub fn containers_by_state(state: ContainerState) -> ContainerFilter {
    ContainerFilter {
        state: Some(ContainerStateValue { state: state.into() }),
        ..Default::default()
    }
}

pub fn containers_by_pod(pod_id: &str) -> ContainerFilter {
    ContainerFilter { pod_sandbox_id: pod_id.to_string(), ..Default::default() }
}

pub fn containers_by_labels(labels: &[(&str, &str)]) -> ContainerFilter {
    ContainerFilter {
        label_selector: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// One line of a CRI container log: `<RFC 3339 time> <stream> <P|F> <content>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `P`: the runtime split a longer line and more of it follows; `F`: the line ends here.
    pub partial: bool,
    pub content: String,
}

/// The lines of a CRI log file; panics if it is missing or a line is not in the CRI format.
pub fn read_log(path: impl AsRef<Path>) -> Vec<LogLine> {
    let path = path.as_ref();
    match try_read_log(path) {
        Ok(lines) => lines,
        Err(err) => panic!("reading the container log {}: {err}", path.display()),
    }
}

/// As [`read_log`], but a missing file is an error rather than a panic: for polling a log that a
/// container may not have written yet.
pub fn try_read_log(path: &Path) -> std::io::Result<Vec<LogLine>> {
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    // Only complete lines: the runtime may be writing the last one right now.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(complete.split('\n').filter(|line| !line.is_empty()).map(parse_log_line).collect())
}

fn parse_log_line(line: &str) -> LogLine {
    let mut parts = line.splitn(4, ' ');
    let mut next = || parts.next().unwrap_or_else(|| panic!("a short CRI log line: {line:?}"));
    let (time, stream, tag) = (next().to_string(), next().to_string(), next());
    let content =
        parts.next().unwrap_or_else(|| panic!("a CRI log line without content: {line:?}"));
    assert!(
        time.len() >= 20 && time.as_bytes()[4] == b'-' && time.contains('T'),
        "a CRI log line without an RFC 3339 time: {line:?}"
    );
    assert!(stream == "stdout" || stream == "stderr", "an unknown stream in {line:?}");
    let partial = match tag {
        "P" => true,
        "F" => false,
        _ => panic!("an unknown tag in {line:?}"),
    };
    LogLine { time, stream, partial, content: content.to_string() }
}

/// The whole lines the container wrote to `stream` (`None`: either), partial lines joined.
pub fn log_messages(lines: &[LogLine], stream: Option<&str>) -> Vec<String> {
    let mut messages = Vec::new();
    let mut pending = String::new();
    for line in lines.iter().filter(|l| stream.is_none_or(|s| l.stream == s)) {
        pending.push_str(&line.content);
        if !line.partial {
            messages.push(std::mem::take(&mut pending));
        }
    }
    messages
}

/// Polls the log at `path` until one of its whole lines satisfies `found`; returns the lines
/// then. Panics with what the log has if none does within `timeout`.
pub async fn wait_log(
    path: &Path,
    timeout: Duration,
    found: impl Fn(&str) -> bool,
) -> Vec<LogLine> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines = try_read_log(path).unwrap_or_default();
        if log_messages(&lines, None).iter().any(|m| found(m)) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "the log {} did not get the expected line within {timeout:?}: {:?}",
            path.display(),
            log_messages(&lines, None)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Cri {
    /// UpdateContainerResources with new Linux limits.
    pub async fn update_container_resources(
        &mut self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> Result<(), tonic::Status> {
        let request = berth_cri_server::proto::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        self.runtime.update_container_resources(request).await?;
        Ok(())
    }

    /// UpdatePodSandboxResources: the pod's resources (its containers' summed) and overhead.
    pub async fn update_pod_resources(
        &mut self,
        id: &str,
        resources: LinuxContainerResources,
        overhead: LinuxContainerResources,
    ) -> Result<(), tonic::Status> {
        let request = berth_cri_server::proto::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: id.to_string(),
            resources: Some(resources),
            overhead: Some(overhead),
        };
        self.runtime.update_pod_sandbox_resources(request).await?;
        Ok(())
    }
}
