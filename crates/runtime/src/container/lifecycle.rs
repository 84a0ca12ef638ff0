//! CreateContainer, StartContainer, StopContainer, RemoveContainer, UpdateContainerResources,
//! ExecSync, the interactive Exec and Attach (their streams: `stream.rs`) and the queries,
//! over the container store and the pods' monitors.
//!
//! Create does all the work that can be done before the process runs (the user, the spec, the
//! cgroup with its limits, the process itself set up to its last step and waiting), so that
//! Start is one message to the monitor. The record is written before the monitor is asked to
//! create anything: a crash in between leaves a record that Remove cleans up. Exits are written
//! by the monitor to `exit.json` beside the record; berthd reads it when it next looks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_images::ImageService;

use crate::cgroups::{CgroupLayout, CgroupMode};
use crate::container::cgroup::ContainerCgroup;
use crate::container::image_volume;
use crate::container::spec::{self, PidNamespace, PodContext, PodUserNamespace, SpecInputs};
use crate::container::stream::{self, StdioSession, StreamOptions};
use crate::container::types::*;
use crate::container::user;
use crate::error::{Error, Result};
use crate::events::{ContainerEvent, ContainerEventKind, Events};
use crate::handlers::{Handler, Handlers};
use crate::monitor::proto::{
    self, CgroupRoot, CgroupView, ContainerStatus as MonitorStatus, CreateRequest, Executor,
    OciExecutor, Reply, Request, RootfsPlan,
};
use crate::monitor::MonitorClient;
use crate::pod::{NamespaceMode, PodForContainer, Pods};
use crate::store::{new_id, Store};
use crate::util::{blocking, now_nanos, remove_dir};

/// ExecSync output beyond this, per stream, is dropped: the answer must fit a gRPC message
/// (berthd allows 16 MiB), and probes read only the first few KiB.
const EXEC_OUTPUT_LIMIT: usize = 4 << 20;
/// How long a SIGKILLed container may take to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// ExecSync without a timeout still ends some day.
const EXEC_NO_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How often the exit files of live containers are looked at, so that an exit nobody asks
/// about still becomes a Stopped event.
const EXIT_POLL: Duration = Duration::from_millis(250);

/// What ContainerStatus reports beyond the record.
#[derive(Debug, Clone)]
pub struct ContainerDetails {
    pub record: ContainerRecord,
    /// For `verbose`: pid, the OCI spec, rootfs and snapshot paths.
    pub info: Option<serde_json::Value>,
}

/// What ExecSync returns.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

pub struct ContainersOptions {
    pub root: PathBuf,
    pub state: PathBuf,
    pub cgroups: Arc<CgroupLayout>,
    pub nest: bool,
    pub handlers: Arc<Handlers>,
    pub events: Arc<Events>,
}

/// The container service: a cheap handle on shared state. Mutating calls run in tasks of their
/// own, so that a client that gives up does not leave a container half made.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store<ContainerRecord>,
    /// `<state>/containers`: specs and rootfs mount points, gone on reboot.
    state_dir: PathBuf,
    images: Arc<ImageService>,
    pods: Pods,
    cgroups: Arc<CgroupLayout>,
    nest: bool,
    handlers: Arc<Handlers>,
    /// berthd's own oom_score_adj: a container's cannot go below it without CAP_SYS_RESOURCE,
    /// so it is raised to it (as containerd's `restrict_oom_score_adj` does).
    oom_floor: i64,
    events: Arc<Events>,
}

impl Containers {
    /// Loads the containers of an earlier berthd and settles what became of them while it was
    /// down: an exit recorded by the monitor is taken; a container its monitor no longer
    /// knows (the monitor died, the node rebooted) is Unknown.
    pub fn open(options: ContainersOptions, images: Arc<ImageService>, pods: Pods) -> Result<Self> {
        let state_dir = options.state.join("containers");
        std::fs::create_dir_all(&state_dir).map_err(Error::io("creating", &state_dir))?;
        let store = Store::open(&options.root.join("containers"))?;
        let oom_floor = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let inner = Inner {
            store,
            state_dir,
            images,
            pods,
            cgroups: options.cgroups,
            nest: options.nest,
            handlers: options.handlers,
            oom_floor,
            events: options.events,
        };
        inner.recover();
        let inner = Arc::new(inner);
        // Tests open the service outside any async runtime; they get no watcher.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(watch_exits(Arc::downgrade(&inner)));
        }
        Ok(Containers { inner })
    }

    pub async fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
        let (inner, pod_id) = (self.inner.clone(), pod_id.to_string());
        spawn(async move { inner.create(&pod_id, config).await }).await
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        spawn(async move { inner.start(&id).await }).await
    }

    /// Sends the stop signal, then SIGKILL after `timeout` (zero: at once).
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        spawn(async move { inner.stop(&id, timeout).await }).await
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        spawn(async move { inner.remove(&id).await }).await
    }

    /// UpdateContainerResources: the new limits go into the container's cgroup, its record
    /// and its spec, all or none of them. What `resources` leaves unset (zero, empty) stays as
    /// it is; `oom_score_adj` cannot change once the process runs and is ignored, as
    /// containerd does.
    pub async fn update_resources(&self, id: &str, resources: Resources) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        spawn(async move { inner.update_resources(&id, resources).await }).await
    }

    pub async fn status(&self, id: &str, verbose: bool) -> Result<ContainerDetails> {
        self.inner.status(id, verbose)
    }

    pub async fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        self.inner.list(filter)
    }

    /// Runs `cmd` in the container; `timeout` (None: no limit) kills it and fails with
    /// [`Error::Timeout`].
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        self.inner.exec_sync(id, cmd, timeout).await
    }

    /// Exec (not ExecSync): `cmd` in running container `id`, as ExecSync runs it, with a pipe
    /// for each stream asked for, or a terminal (as its controlling terminal, all three
    /// streams on it; stderr is then not given). Dropping the session does not kill it.
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        options: StreamOptions,
    ) -> Result<StdioSession> {
        self.inner.exec_stream(id, cmd, options).await
    }

    /// Attach: the running container's own stdio, held by its pod's monitor. Every attacher
    /// gets the output from the moment it attaches; each may write stdin (a container created
    /// with stdin only); with stdin_once, the container's stdin closes when the first attacher
    /// with stdin ends it; without, an attacher's stdin ending is its detach, and ends its
    /// session (as with containerd) while the container's stdin stays open. The container's tty decides the streams whatever `options.tty`
    /// says (as containerd and CRI-O do): with one, its output is stdout, there is no stderr,
    /// and resizes apply to its terminal.
    pub async fn attach(&self, id: &str, options: StreamOptions) -> Result<StdioSession> {
        self.inner.attach(id, options).await
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        self.inner.reopen_log(id).await
    }

    /// The container events from now on (see [`Events`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<ContainerEvent>> {
        self.inner.events.subscribe()
    }

    /// Containers the OOM killer stopped since berthd started.
    pub fn oom_kills(&self) -> u64 {
        self.inner.events.oom_kills()
    }

    /// The record of `id` (a full id or unique prefix) with any exit recorded since.
    pub fn record(&self, id: &str) -> Result<ContainerRecord> {
        let entry = self.inner.store.get(id)?;
        Ok(self.inner.refreshed(&entry.record()))
    }

    /// `<root>/containers/<id>/upper`: the container's writable layer.
    pub fn upper_dir(&self, id: &str) -> PathBuf {
        self.inner.root_dir(id).join("upper")
    }

    /// StopPodSandbox: every container of the pod, killed at once (the kubelet has already
    /// given them their grace period).
    pub async fn stop_pod(&self, pod_id: &str) -> Result<()> {
        let (inner, pod_id) = (self.inner.clone(), pod_id.to_string());
        spawn(async move {
            for id in inner.of_pod(&pod_id) {
                inner.stop(&id, Duration::ZERO).await?;
            }
            Ok(())
        })
        .await
    }

    /// RemovePodSandbox: every container of the pod.
    pub async fn remove_pod(&self, pod_id: &str) -> Result<()> {
        let (inner, pod_id) = (self.inner.clone(), pod_id.to_string());
        spawn(async move {
            for id in inner.of_pod(&pod_id) {
                inner.remove(&id).await?;
            }
            Ok(())
        })
        .await
    }
}

async fn spawn<T: Send + 'static>(
    task: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(task)
        .await
        .map_err(|err| Error::Internal(format!("container task failed: {err}")))?
}

/// The images a new container uses: its own, and those of its image volumes by the index of
/// their mount.
struct Images {
    own: berth_images::ContainerImage,
    volumes: Vec<(usize, berth_images::ContainerImage)>,
}

/// What a create has taken so far, for its rollback.
#[derive(Default)]
struct Taken {
    name: Option<String>,
    dirs: bool,
    hold: bool,
    cgroup: Option<ContainerCgroup>,
    record: bool,
    monitor: Option<MonitorClient>,
}

impl Inner {
    fn root_dir(&self, id: &str) -> PathBuf {
        self.store.dir_of(id)
    }

    fn bundle(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.root_dir(id).join("exit.json")
    }

    fn monitor_of(&self, record: &ContainerRecord) -> MonitorClient {
        MonitorClient::new(&self.pods.state_dir(&record.pod_id))
    }

    fn of_pod(&self, pod_id: &str) -> Vec<String> {
        self.store
            .all()
            .into_iter()
            .map(|entry| entry.record())
            .filter(|record| record.pod_id == pod_id)
            .map(|record| record.id)
            .collect()
    }

    async fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
        if config.metadata.name.is_empty() {
            return Err(Error::InvalidArgument("container metadata.name is empty".into()));
        }
        if config.image.is_empty() {
            return Err(Error::InvalidArgument("container image is empty".into()));
        }
        let pod = self.pods.container_context(pod_id)?;
        let image = self
            .images
            .for_container(&config.image)
            .map_err(|err| Error::Internal(format!("image {}: {err}", config.image)))?
            .ok_or_else(|| {
                Error::NotFound(format!("image {:?} is not present on this node", config.image))
            })?;
        let volumes = self.volume_images(&config)?;
        let meta = &pod.record.config.metadata;
        let name = format!(
            "{}_{}_{}_{}_{}",
            config.metadata.name, meta.name, meta.namespace, meta.uid, config.metadata.attempt
        );
        let log_path = log_path(&pod.record.config.log_directory, &config.log_path)?;
        let id = new_id()?;
        let mut taken = Taken::default();
        let images = Images { own: image, volumes };
        let result = self.take(&id, &name, &pod, config, images, log_path, &mut taken).await;
        match result {
            Ok(record) => {
                tracing::info!(container_id = %id, pod_id = %pod.record.id, name, "container created");
                let at = record.created_at_nanos;
                self.store.insert(record.clone());
                self.publish(ContainerEventKind::Created, &record, at, false);
                Ok(id)
            }
            Err(err) => {
                tracing::warn!(container_id = %id, error = %err, "container create failed: rolling back");
                self.give_back(&id, taken).await;
                Err(err)
            }
        }
    }

    /// The images of the config's image volumes, by the index of their mount, each checked
    /// first; one not on the node is NotFound, as the kubelet pulls them before it creates.
    fn volume_images(
        &self,
        config: &ContainerConfig,
    ) -> Result<Vec<(usize, berth_images::ContainerImage)>> {
        let mut volumes = Vec::new();
        for (index, m) in config.mounts.iter().enumerate() {
            let Some(volume) = &m.image else { continue };
            image_volume::check(m, volume)?;
            let image = self
                .images
                .for_container(&volume.image)
                .map_err(|err| Error::Internal(format!("image {}: {err}", volume.image)))?
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "image {:?} of the image volume at {:?} is not present on this node",
                        volume.image, m.container_path
                    ))
                })?;
            volumes.push((index, image));
        }
        Ok(volumes)
    }

    #[allow(clippy::too_many_arguments)]
    async fn take(
        &self,
        id: &str,
        name: &str,
        pod: &PodForContainer,
        mut config: ContainerConfig,
        images: Images,
        log_path: Option<PathBuf>,
        taken: &mut Taken,
    ) -> Result<ContainerRecord> {
        let Images { own: image, volumes } = images;
        let handler_name = &pod.record.config.runtime_handler;
        let handler = self.handlers.get(handler_name).map_err(|err| {
            Error::FailedPrecondition(format!(
                "pod sandbox {} cannot take containers: {err}",
                pod.record.id
            ))
        })?;
        let user_namespace = pod_user_namespace(&config, pod)?;
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
            if !handler.features().recursive_read_only_mounts {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: recursive read-only mounts are not supported by runtime handler \
                     {handler_name:?}",
                    m.container_path
                )));
            }
        }
        // Nested under berthd's cgroup, a runtime that does not take a relative cgroups path
        // from its own cgroup sees the hierarchies rooted there, and gets an absolute path.
        let runtime_nests = self.nest
            && match handler {
                Handler::Embedded(_) => true,
                Handler::Oci(runtime) => runtime.nests_relative_cgroups,
            };
        let executor = match handler {
            Handler::Embedded(_) => Executor::Embedded,
            Handler::Oci(runtime) => Executor::Oci(OciExecutor {
                handler: runtime.name.clone(),
                binary: runtime.binary.clone(),
                root: runtime.root.clone(),
                cgroup_roots: match self.nest && !runtime_nests {
                    true => cgroup_roots(&self.cgroups)?,
                    false => Vec::new(),
                },
                prepare_mount_targets: !runtime.makes_targets_behind_symlinks,
            }),
        };
        let oci = executor != Executor::Embedded;
        self.store.reserve_name(name, id)?;
        taken.name = Some(name.to_string());
        let run = ImageRunConfig {
            entrypoint: image.run.entrypoint.clone().unwrap_or_default(),
            cmd: image.run.cmd.clone().unwrap_or_default(),
            env: image.run.env.clone().unwrap_or_default(),
            working_dir: image.run.working_dir.clone().unwrap_or_default(),
            user: image.run.user.clone().unwrap_or_default(),
            stop_signal: image.run.stop_signal.clone().unwrap_or_default(),
        };
        let stop_signal = spec::stop_signal(&config, &run)?;
        let cgroup_path = format!("{}/{id}", pod.record.cgroup.trim_end_matches('/'));
        let spec_cgroup_path = runtime_cgroup_path(&cgroup_path, runtime_nests)?;
        let (root_dir, bundle) = (self.root_dir(id), self.bundle(id));
        let (upper, work, rootfs) =
            (root_dir.join("upper"), root_dir.join("work"), bundle.join("rootfs"));

        // Held before the image volumes are mounted on them: a GC or RemoveImage from here on
        // sees them in use.
        let mut hold = berth_images::Hold {
            chains: image.chain_ids.clone(),
            volume_images: Vec::with_capacity(volumes.len()),
        };
        for (index, volume) in &volumes {
            hold.chains.extend(volume.chain_ids.iter().cloned());
            hold.volume_images.push(volume.record.id.clone());
            if let Some(requested) = config.mounts.get_mut(*index).and_then(|m| m.image.as_mut()) {
                requested.image_ref = volume.record.id.to_string();
            }
        }
        hold.chains.sort();
        hold.chains.dedup();
        self.images.hold(id, &hold).map_err(|err| match err.kind() {
            berth_images::ErrorKind::NotFound => Error::NotFound(err.to_string()),
            _ => Error::Internal(format!("holding the image's layers: {err}")),
        })?;
        taken.hold = true;

        // The blocking part: files of the image, the image volumes, the spec, directories.
        let prepared = {
            let (config, pod, run, layers) =
                (config.clone(), pod.clone(), run.clone(), image.layers.clone());
            let volumes: Vec<(usize, Vec<PathBuf>)> =
                volumes.iter().map(|(index, image)| (*index, image.layers.clone())).collect();
            let (id, rootfs) = (id.to_string(), rootfs.clone());
            let (upper, work, bundle) = (upper.clone(), work.clone(), bundle.clone());
            let (layout, oom_floor) = (self.cgroups.clone(), self.oom_floor);
            blocking(move || {
                // The spec binds what is mounted here: its config names it as the host path.
                let mut config = config;
                let userns = user_namespace.as_ref().map(|u| u.path.as_path());
                for (index, layers) in &volumes {
                    let Some(m) = config.mounts.get_mut(*index) else { continue };
                    let sub = m.image.as_ref().map(|v| v.sub_path.as_str()).unwrap_or_default();
                    let source = image_volume::prepare(&bundle, *index, layers, userns, sub)
                        .map_err(|err| match err {
                            Error::InvalidArgument(why) => Error::InvalidArgument(format!(
                                "image volume at {:?}: {why}",
                                m.container_path
                            )),
                            other => other,
                        })?;
                    m.host_path = source.display().to_string();
                }
                let user = user::resolve(&config.security, &run.user, &layers)?;
                let pid = pid_namespace(&config, &pod, oci);
                let context = PodContext {
                    hostname: pod.hostname.clone(),
                    net: pod.net.clone(),
                    ipc: pod.ipc.clone(),
                    uts: pod.uts.clone(),
                    pid,
                    cgroup_ns: layout.mode == CgroupMode::Unified,
                    hosts: pod.hosts.clone(),
                    resolv_conf: pod.resolv_conf.clone(),
                    hostname_file: pod.hostname_file.clone(),
                    shm: pod.shm.clone(),
                    sandbox_id: pod.record.id.clone(),
                    user: user_namespace.clone(),
                };
                let mut spec = spec::build(&SpecInputs {
                    id: &id,
                    config: &config,
                    image: &run,
                    user: &user,
                    pod: &context,
                    rootfs: &rootfs,
                    cgroup_path: &spec_cgroup_path,
                    oom_score_adj_floor: oom_floor,
                })?;
                default_home(&mut spec, &user::home(user.uid, &layers)?);
                spec::prepare_host_paths(&config.mounts)?;
                spec::check_mounts(&config.mounts)?;
                for dir in [&upper, &work, &rootfs] {
                    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
                }
                // The image's layers are idmapped, never chowned; the writable layer is the
                // container's alone, and its root must be the container's root's, who could
                // not write to a directory of the node's root.
                if let Some((uid, gid)) =
                    user_namespace.as_ref().and_then(|u| u.mappings.root_on_host())
                {
                    std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
                        .map_err(Error::io("handing to the pod's root", &upper))?;
                }
                let spec_json = serde_json::to_vec_pretty(&spec)
                    .map_err(|err| Error::Internal(format!("encoding the OCI spec: {err}")))?;
                berth_images::fsutil::replace_volatile(&bundle.join("config.json"), &spec_json)
                    .map_err(|err| Error::Internal(err.to_string()))?;
                let resources = spec
                    .linux()
                    .as_ref()
                    .and_then(|linux| linux.resources().clone())
                    .unwrap_or_default();
                Ok((user, resources))
            })
        };
        taken.dirs = true;
        let (user, resources) = prepared.await?;

        let (layout, nest, path) = (self.cgroups.clone(), self.nest, cgroup_path.clone());
        let cgroup =
            blocking(move || ContainerCgroup::create(&layout, &path, nest, &resources)).await?;
        let procs = cgroup.procs_files();
        let view = match self.cgroups.mode {
            CgroupMode::Unified => CgroupView::V2,
            _ => CgroupView::V1(cgroup.v1_mounts()),
        };
        let memory_cgroup = cgroup.memory_dir();
        taken.cgroup = Some(cgroup);

        let (lower_base, lower) = split_layers(&image.layers)?;
        let mut record = ContainerRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            name: name.to_string(),
            pod_id: pod.record.id.clone(),
            image: ContainerImage {
                name: config.image.clone(),
                id: image.record.id.to_string(),
                reference: image
                    .record
                    .repo_digests
                    .first()
                    .cloned()
                    .unwrap_or_else(|| image.record.id.to_string()),
            },
            log_path: log_path.clone(),
            user,
            stop_signal,
            created_at_nanos: now_nanos(),
            started_at_nanos: 0,
            state: ContainerState::Created,
            cgroup: cgroup_path,
            config,
        };
        self.store.save(&record)?;
        taken.record = true;

        let monitor = MonitorClient::new(&pod.state_dir);
        let request = CreateRequest {
            id: id.to_string(),
            spec: bundle.join("config.json"),
            rootfs: RootfsPlan { lower_base, lower, upper, work },
            cgroup_procs: procs,
            cgroup_view: view,
            memory_cgroup,
            log_path,
            tty: record.config.tty,
            stdin: record.config.stdin,
            stdin_once: record.config.stdin_once,
            exit_file: self.exit_file(id),
            executor,
        };
        taken.monitor = Some(monitor.clone());
        match monitor.call(Request::Create(Box::new(request)), Duration::ZERO).await? {
            Reply::Created { .. } => {}
            other => return Err(unexpected(&other)),
        }
        record.state = ContainerState::Created;
        Ok(record)
    }

    /// Undoes a failed create, in reverse. Failures are logged: the create's own error is the
    /// one the client needs, and what is left is found by the next removal of the pod.
    async fn give_back(&self, id: &str, taken: Taken) {
        let mut undo = Vec::new();
        if let Some(monitor) = taken.monitor {
            if let Err(err) =
                monitor.call(Request::Forget { id: id.to_string() }, Duration::ZERO).await
            {
                undo.push(err);
            }
        }
        if let Some(cgroup) = taken.cgroup {
            let result = blocking(move || {
                cgroup.kill_all()?;
                cgroup.remove()
            })
            .await;
            undo.extend(result.err());
        }
        if taken.hold {
            if let Err(err) = self.images.release(id) {
                undo.push(Error::Internal(err.to_string()));
            }
        }
        if taken.dirs || taken.record {
            undo.extend(remove_bundle(&self.bundle(id)).err());
            undo.extend(self.store.delete(id).err());
        }
        if let Some(name) = taken.name {
            self.store.release_name(&name, id);
        }
        for err in undo {
            tracing::error!(container_id = %id, error = %err, "rolling back a failed create");
        }
    }

    async fn start(&self, id: &str) -> Result<()> {
        let entry = self.store.get(id)?;
        let _step = entry.step.lock().await;
        let mut record = self.refreshed(&entry.record());
        match &record.state {
            ContainerState::Created => {}
            state => {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is {}, not created",
                    record.id,
                    state.name()
                )))
            }
        }
        let monitor = self.monitor_of(&record);
        match monitor.call(Request::Start { id: record.id.clone() }, Duration::ZERO).await {
            Ok(Reply::Started { pid, started_at_nanos }) => {
                record.state = ContainerState::Running { pid };
                record.started_at_nanos = started_at_nanos;
                self.store.save(&record)?;
                tracing::info!(container_id = %record.id, pid, "container started");
                self.publish(ContainerEventKind::Started, &record, started_at_nanos, false);
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(err) => {
                // As containerd: a start that failed leaves an exited container that says why.
                record.state = ContainerState::Exited(ExitInfo {
                    exit_code: 128,
                    signal: None,
                    finished_at_nanos: now_nanos(),
                    oom_killed: false,
                    message: format!("failed to start: {err}"),
                });
                self.store.save(&record)?;
                self.publish_stopped(&record, false);
                Err(err)
            }
        }
    }

    async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        // Idempotent as the CRI asks: a container that is gone (or goes while we wait for
        // its step lock) is as stopped as it gets.
        let Some(entry) = self.store.find(id)? else { return Ok(()) };
        let _step = entry.step.lock().await;
        if !self.store.contains(&entry.id) {
            return Ok(());
        }
        let record = self.refreshed(&entry.record());
        let was_live = is_live(&record.state);
        let mut record = self.stop_record(record, timeout).await?;
        // A container whose monitor is gone has nothing that could record an exit; whatever
        // is left of it is killed through its cgroup.
        if record.state == ContainerState::Unknown {
            let (layout, nest, path) = (self.cgroups.clone(), self.nest, record.cgroup.clone());
            blocking(move || match ContainerCgroup::open(&layout, &path, nest) {
                Ok(cgroup) => cgroup.kill_all(),
                Err(_) => Ok(()),
            })
            .await?;
            record.state = ContainerState::Exited(ExitInfo {
                exit_code: 137,
                signal: Some(9),
                finished_at_nanos: now_nanos(),
                oom_killed: false,
                message: "killed by berth: its monitor was gone".into(),
            });
        }
        self.store.save(&record)?;
        if was_live {
            self.publish_stopped(&record, false);
        }
        Ok(())
    }

    /// The signalling part of a stop; returns the record with the state the monitor reports.
    async fn stop_record(
        &self,
        record: ContainerRecord,
        timeout: Duration,
    ) -> Result<ContainerRecord> {
        if !matches!(record.state, ContainerState::Created | ContainerState::Running { .. }) {
            return Ok(record);
        }
        let monitor = self.monitor_of(&record);
        let id = record.id.clone();
        // A created container has not run anything that could handle a signal.
        let graceful = matches!(record.state, ContainerState::Running { .. }) && !timeout.is_zero();
        let mut exited = None;
        if graceful {
            tracing::info!(container_id = %id, signal = record.stop_signal, ?timeout, "stopping container");
            let signal = Request::Signal { id: id.clone(), signal: record.stop_signal };
            match monitor.call(signal, Duration::ZERO).await {
                Ok(_) => exited = self.wait(&monitor, &id, timeout).await?,
                Err(Error::MonitorGone(_)) => return Ok(self.gone(record)),
                Err(err) => return Err(err),
            }
        }
        if exited.is_none() {
            tracing::info!(container_id = %id, "killing container");
            match monitor.call(Request::Signal { id: id.clone(), signal: 9 }, Duration::ZERO).await
            {
                Ok(_) => {}
                Err(Error::MonitorGone(_)) => return Ok(self.gone(record)),
                Err(Error::NotFound(_)) => return Ok(self.gone(record)),
                Err(err) => return Err(err),
            }
            exited = self.wait(&monitor, &id, KILL_WAIT).await?;
        }
        let mut record = record;
        match exited {
            Some(info) => record.state = ContainerState::Exited(info),
            None => {
                return Err(Error::Internal(format!(
                    "container {id} did not exit within {KILL_WAIT:?} of SIGKILL"
                )))
            }
        }
        Ok(record)
    }

    async fn wait(
        &self,
        monitor: &MonitorClient,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<ExitInfo>> {
        let request = Request::Wait { id: id.to_string(), timeout_ms: timeout.as_millis() as u64 };
        match monitor.call(request, timeout).await {
            Ok(Reply::Status(MonitorStatus::Exited(info))) => Ok(Some(info)),
            Ok(Reply::Status(_)) => Ok(None),
            Ok(other) => Err(unexpected(&other)),
            Err(err) => Err(err),
        }
    }

    /// The record of a container whose monitor cannot say anything about it: its exit file, if
    /// the monitor wrote one, else Unknown.
    fn gone(&self, mut record: ContainerRecord) -> ContainerRecord {
        record.state = match read_exit(&self.exit_file(&record.id)) {
            Some(info) => ContainerState::Exited(info),
            None => ContainerState::Unknown,
        };
        record
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let Some(entry) = self.store.find(id)? else { return Ok(()) };
        let _step = entry.step.lock().await;
        if !self.store.contains(&entry.id) {
            return Ok(());
        }
        let record = self.refreshed(&entry.record());
        let was_live = is_live(&record.state);
        let record = self.stop_record(record, Duration::ZERO).await?;
        if was_live {
            self.publish_stopped(&record, false);
        }
        let monitor = self.monitor_of(&record);
        match monitor.call(Request::Forget { id: record.id.clone() }, Duration::ZERO).await {
            Ok(_) => {}
            // Nothing is left to run the runtime's delete: its record of the container goes
            // here (the processes go with the cgroup below).
            Err(Error::MonitorGone(_)) => self.forget_runtime_state(&record)?,
            Err(err) => return Err(err),
        }
        let (layout, nest, path) = (self.cgroups.clone(), self.nest, record.cgroup.clone());
        blocking(move || match ContainerCgroup::open(&layout, &path, nest) {
            Ok(cgroup) => {
                cgroup.kill_all()?;
                cgroup.remove()
            }
            Err(Error::NotFound(_)) => Ok(()),
            Err(err) => Err(err),
        })
        .await?;
        self.images
            .release(&record.id)
            .map_err(|err| Error::Internal(format!("releasing the image's layers: {err}")))?;
        remove_bundle(&self.bundle(&record.id))?;
        self.store.delete(&record.id)?;
        self.store.forget(&record.id);
        self.store.release_name(&record.name, &record.id);
        tracing::info!(container_id = %record.id, "container removed");
        self.publish(ContainerEventKind::Deleted, &record, now_nanos(), false);
        Ok(())
    }

    async fn update_resources(&self, id: &str, requested: Resources) -> Result<()> {
        let entry = self.store.get(id)?;
        let _step = entry.step.lock().await;
        if !self.store.contains(&entry.id) {
            return Err(Error::NotFound(format!("container {id:?} not found")));
        }
        let mut record = self.refreshed(&entry.record());
        if !matches!(record.state, ContainerState::Created | ContainerState::Running { .. }) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}: only a created or running container's resources can be \
                 updated",
                record.id,
                record.state.name()
            )));
        }
        let limits = spec::limits(&requested)?;
        let merged = merge_resources(&record.config.resources, &requested);
        let spec_path = self.bundle(&record.id).join("config.json");
        record.config.resources = merged.clone();

        let (layout, nest, path) = (self.cgroups.clone(), self.nest, record.cgroup.clone());
        let spec_file = spec_path.clone();
        let (applied, old_spec) = blocking(move || {
            let old_spec = std::fs::read(&spec_file).map_err(Error::io("reading", &spec_file))?;
            let new_spec = respec(&old_spec, &merged)?;
            let cgroup = ContainerCgroup::open(&layout, &path, nest)?;
            let applied = cgroup.apply(&limits)?;
            if let Err(err) = berth_images::fsutil::atomic_write(&spec_file, &new_spec) {
                undo(&applied);
                return Err(Error::Internal(format!("writing the updated OCI spec: {err}")));
            }
            Ok((applied, old_spec))
        })
        .await?;
        if let Err(err) = self.store.save(&record) {
            // The record is the truth for ContainerStatus: without it, nothing changed.
            blocking(move || {
                undo(&applied);
                if let Err(err) = berth_images::fsutil::atomic_write(&spec_path, &old_spec) {
                    tracing::warn!(path = %spec_path.display(), error = %err, "putting the old OCI spec back");
                }
                Ok(())
            })
            .await?;
            return Err(err);
        }
        tracing::info!(container_id = %record.id, resources = ?record.config.resources, "container resources updated");
        Ok(())
    }

    /// The OCI runtime's state directory of a container (`<runtime root>/<id>`), for when its
    /// monitor cannot run the runtime's delete.
    fn forget_runtime_state(&self, record: &ContainerRecord) -> Result<()> {
        let handler = self.pods.handler_of(&record.pod_id).unwrap_or_default();
        match self.handlers.get(&handler) {
            Ok(Handler::Oci(runtime)) => remove_dir(&runtime.root.join(&record.id)),
            _ => Ok(()),
        }
    }

    fn status(&self, id: &str, verbose: bool) -> Result<ContainerDetails> {
        let entry = self.store.get(id)?;
        let record = self.refreshed(&entry.record());
        let info = verbose.then(|| self.info(&record));
        Ok(ContainerDetails { record, info })
    }

    fn info(&self, record: &ContainerRecord) -> serde_json::Value {
        let bundle = self.bundle(&record.id);
        let spec = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        let pid = match record.state {
            ContainerState::Running { pid } => Some(pid),
            _ => None,
        };
        let root = self.root_dir(&record.id);
        let handler = self.pods.handler_of(&record.pod_id).unwrap_or_default();
        let runtime_type = match self.handlers.get(&handler) {
            Ok(Handler::Oci(runtime)) => format!("berth.oci/{}", runtime.binary.display()),
            _ => "berth.embedded".to_string(),
        };
        serde_json::json!({
            "sandboxID": record.pod_id,
            "pid": pid,
            "runtimeHandler": handler,
            "runtimeType": runtime_type,
            "config": record.config,
            "runtimeSpec": spec,
            "rootfs": bundle.join("rootfs"),
            "snapshot": {
                "upper": root.join("upper"),
                "work": root.join("work"),
                "imageId": record.image.id,
            },
            "cgroup": record.cgroup,
            "stopSignal": record.stop_signal,
        })
    }

    fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let mut containers: Vec<ContainerRecord> = self
            .store
            .all()
            .into_iter()
            .map(|entry| self.refreshed(&entry.record()))
            .filter(|record| filter.matches(record))
            .collect();
        containers.sort_by_key(|c| c.created_at_nanos);
        containers
    }

    /// The record with an exit the monitor recorded since it was last saved. Saved when it
    /// changed, so that the exit is read once.
    fn refreshed(&self, record: &ContainerRecord) -> ContainerRecord {
        self.refresh(record, false)
    }

    /// `refreshed`, telling the exit found as a Stopped event (held for the first subscriber
    /// when `recovering`).
    fn refresh(&self, record: &ContainerRecord, recovering: bool) -> ContainerRecord {
        if !is_live(&record.state) {
            return record.clone();
        }
        let Some(info) = read_exit(&self.exit_file(&record.id)) else { return record.clone() };
        let mut record = record.clone();
        record.state = ContainerState::Exited(info);
        if let Err(err) = self.store.save(&record) {
            tracing::warn!(container_id = %record.id, error = %err, "saving a container's exit");
        }
        self.publish_stopped(&record, recovering);
        record
    }

    /// One look at the exit files of the live containers (see [`watch_exits`]).
    fn poll_exits(&self) {
        for entry in self.store.all() {
            // A container in the middle of a step (a stop, a remove) is left to that step,
            // which sees the exit itself: saving its record now could race its removal.
            let Ok(_step) = entry.step.try_lock() else { continue };
            if !self.store.contains(&entry.id) {
                continue;
            }
            let record = entry.record();
            if is_live(&record.state) {
                self.refreshed(&record);
            }
        }
    }

    fn publish_stopped(&self, record: &ContainerRecord, recovering: bool) {
        let at = match &record.state {
            ContainerState::Exited(info) => info.finished_at_nanos,
            _ => now_nanos(),
        };
        self.publish(ContainerEventKind::Stopped, record, at, recovering);
    }

    /// Publishes an event about `record` with its pod and the pod's containers as they are
    /// now (`record` standing for its own entry, which may not be saved yet).
    fn publish(
        &self,
        kind: ContainerEventKind,
        record: &ContainerRecord,
        at_nanos: i64,
        recovering: bool,
    ) {
        let mut containers: Vec<ContainerRecord> = self
            .store
            .all()
            .into_iter()
            .map(|entry| entry.record())
            .filter(|c| c.pod_id == record.pod_id && c.id != record.id)
            .collect();
        if kind != ContainerEventKind::Deleted {
            containers.push(record.clone());
        }
        containers.sort_by_key(|c| c.created_at_nanos);
        let event = ContainerEvent {
            container_id: record.id.clone(),
            kind,
            at_nanos,
            pod: self.pods.record(&record.pod_id),
            containers,
        };
        if recovering {
            self.events.publish_recovered(event);
        } else {
            self.events.publish(event);
        }
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("ExecSync needs a command".into()));
        }
        let record = self.running(id)?;
        let process = self.exec_process(&record, cmd.clone(), false)?;
        let limit = timeout.filter(|t| !t.is_zero());
        let request = proto::ExecRequest {
            id: record.id.clone(),
            process,
            timeout_ms: limit.map_or(0, |t| t.as_millis() as u64),
            output_limit: EXEC_OUTPUT_LIMIT,
        };
        let monitor = self.monitor_of(&record);
        match monitor
            .call(Request::Exec(Box::new(request)), limit.unwrap_or(EXEC_NO_TIMEOUT))
            .await?
        {
            Reply::Exec { timed_out: true, .. } => Err(Error::Timeout(format!(
                "command {cmd:?} timed out after {:?}",
                limit.unwrap_or_default()
            ))),
            Reply::Exec { exit_code, stdout, stderr, .. } => Ok(ExecOutput {
                stdout: proto::decode_bytes(&stdout),
                stderr: proto::decode_bytes(&stderr),
                exit_code,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// The record of `id`, which must be running.
    fn running(&self, id: &str) -> Result<ContainerRecord> {
        let entry = self.store.get(id)?;
        let record = self.refreshed(&entry.record());
        if !matches!(record.state, ContainerState::Running { .. }) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not running",
                record.id,
                record.state.name()
            )));
        }
        Ok(record)
    }

    /// The process of an exec: the container's own (user, env, cwd, capabilities…) running
    /// `cmd`.
    fn exec_process(
        &self,
        record: &ContainerRecord,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<oci_spec::runtime::Process> {
        let spec_path = self.bundle(&record.id).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path)
            .map_err(|err| Error::Internal(format!("reading {}: {err}", spec_path.display())))?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(cmd)).set_terminal(Some(tty));
        Ok(process)
    }

    async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        options: StreamOptions,
    ) -> Result<StdioSession> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("Exec needs a command".into()));
        }
        let record = self.running(id)?;
        let process = self.exec_process(&record, cmd, options.tty)?;
        stream::exec(&self.monitor_of(&record), &record.id, process, options).await
    }

    async fn attach(&self, id: &str, options: StreamOptions) -> Result<StdioSession> {
        let record = self.running(id)?;
        if options.stdin && !record.config.stdin {
            return Err(Error::InvalidArgument(format!(
                "container {} was not created with stdin",
                record.id
            )));
        }
        if options.tty != record.config.tty {
            tracing::debug!(
                container_id = %record.id,
                tty = record.config.tty,
                "attach asked for tty {}: the container's own is used",
                options.tty
            );
        }
        stream::attach(&self.monitor_of(&record), &record.id, options).await
    }

    async fn reopen_log(&self, id: &str) -> Result<()> {
        let record = self.running(id)?;
        let monitor = self.monitor_of(&record);
        match monitor.call(Request::ReopenLog { id: record.id.clone() }, Duration::ZERO).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// At start: gives back what a create cut short by a crash took before it wrote the
    /// record (the create's rollback never ran): image holds, which would keep an image
    /// volume's image from RemoveImage for good, and bundles, with their mounts.
    fn forget_unrecorded(&self) {
        let known: std::collections::HashSet<String> =
            self.store.all().iter().map(|entry| entry.id.clone()).collect();
        for owner in self.images.holders() {
            if known.contains(&owner) {
                continue;
            }
            tracing::info!(container_id = %owner, "releasing the holds of an unrecorded container");
            if let Err(err) = self.images.release(&owner) {
                tracing::warn!(container_id = %owner, error = %err, "releasing holds");
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else { return };
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            if known.contains(&id) || !entry.path().is_dir() {
                continue;
            }
            tracing::info!(container_id = %id, "removing the bundle of an unrecorded container");
            if let Err(err) = remove_bundle(&entry.path()) {
                tracing::warn!(container_id = %id, error = %err, "removing a bundle");
            }
        }
    }

    /// At start: settles containers that were created or running when berthd went down.
    fn recover(&self) {
        self.forget_unrecorded();
        let mut known: std::collections::HashMap<String, Option<Vec<(String, MonitorStatus)>>> =
            Default::default();
        for entry in self.store.all() {
            let record = entry.record();
            if !matches!(record.state, ContainerState::Created | ContainerState::Running { .. }) {
                continue;
            }
            let refreshed = self.refresh(&record, true);
            if refreshed.state != record.state {
                continue;
            }
            let statuses = known.entry(record.pod_id.clone()).or_insert_with(|| {
                crate::monitor::client::hello_blocking(&self.pods.state_dir(&record.pod_id))
            });
            let status = statuses.as_ref().and_then(|all| {
                all.iter().find(|(id, _)| *id == record.id).map(|(_, s)| s.clone())
            });
            let mut record = record;
            match status {
                Some(MonitorStatus::Exited(info)) => record.state = ContainerState::Exited(info),
                Some(MonitorStatus::Running { pid, .. }) => {
                    record.state = ContainerState::Running { pid }
                }
                Some(MonitorStatus::Created { .. }) => record.state = ContainerState::Created,
                None => {
                    tracing::warn!(container_id = %record.id, "container's monitor is gone: state unknown");
                    record.state = ContainerState::Unknown;
                }
            }
            if let Err(err) = self.store.save(&record) {
                tracing::warn!(container_id = %record.id, error = %err, "saving a recovered container");
            }
            if matches!(record.state, ContainerState::Exited(_)) {
                self.publish_stopped(&record, true);
            }
        }
    }
}

fn is_live(state: &ContainerState) -> bool {
    matches!(state, ContainerState::Created | ContainerState::Running { .. })
}

/// Notices exits that happen while nobody calls: a look at the live containers' exit files
/// every [`EXIT_POLL`]. Polling rather than a watch connection to each monitor or an inotify
/// on each container's directory: one failed `open` per live container per tick costs next to
/// nothing, needs no change to the monitor protocol (older monitors keep working), and cannot
/// miss an exit across a reconnect. Ends when the service is dropped.
async fn watch_exits(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(EXIT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(err) = tokio::task::spawn_blocking(move || inner.poll_exits()).await {
            tracing::warn!(error = %err, "looking for container exits");
        }
    }
}

/// The PID namespace a container gets: the pod's (its monitor is in it) when the pod has
/// one, a new one, the node's, or another container's. An OCI runtime of such a pod sees the
/// pod's own `/proc`, where the monitor is pid 1 (see `monitor/oci.rs`).
fn pid_namespace(config: &ContainerConfig, pod: &PodForContainer, oci: bool) -> PidNamespace {
    let pod_has_one = pod.record.config.namespaces.pid == NamespaceMode::Pod;
    match config.security.pid {
        NamespaceMode::Pod if pod_has_one && oci => {
            PidNamespace::Join(PathBuf::from("/proc/1/ns/pid"))
        }
        NamespaceMode::Pod if pod_has_one => {
            PidNamespace::Join(PathBuf::from(format!("/proc/{}/ns/pid", pod.monitor_pid)))
        }
        NamespaceMode::Node => PidNamespace::Host,
        _ => PidNamespace::New,
    }
}

/// The pod's user namespace, which the container joins; its config's `userns_options` may only
/// repeat the pod's.
fn pod_user_namespace(
    config: &ContainerConfig,
    pod: &PodForContainer,
) -> Result<Option<PodUserNamespace>> {
    let pod_ns = pod.user.clone().zip(pod.record.config.namespaces.user.clone());
    let pod_ns = pod_ns.map(|(path, mappings)| PodUserNamespace { path, mappings });
    match (&config.security.user_namespace, &pod_ns) {
        (UsernsRequest::Unspecified, _) | (UsernsRequest::Node, None) => Ok(pod_ns),
        (UsernsRequest::Node, Some(_)) => Err(Error::InvalidArgument(format!(
            "pod sandbox {} has a user namespace of its own: its containers cannot use the \
             node's",
            pod.record.id
        ))),
        (UsernsRequest::Pod { .. }, None) => Err(Error::InvalidArgument(format!(
            "the container asks for its pod's user namespace, but pod sandbox {} has none \
             (its config had no userns_options of mode POD)",
            pod.record.id
        ))),
        (UsernsRequest::Pod { uids, gids }, Some(ns)) => {
            let same =
                |list: &[crate::userns::IdMapping], mapping| list.is_empty() || list == [mapping];
            if same(uids, ns.mappings.uids) && same(gids, ns.mappings.gids) {
                Ok(pod_ns)
            } else {
                Err(Error::InvalidArgument(format!(
                    "the container's user namespace mappings (uids {uids:?}, gids {gids:?}) are \
                     not its pod's ({:?}, {:?})",
                    ns.mappings.uids, ns.mappings.gids
                )))
            }
        }
    }
}

/// Overlay takes lower dirs relative to the directory of the mount call, which keeps the option
/// string within a page for images of many layers: so every layer must share one parent.
fn split_layers(layers: &[PathBuf]) -> Result<(PathBuf, Vec<PathBuf>)> {
    let base = layers
        .first()
        .and_then(|layer| layer.parent().and_then(Path::parent))
        .ok_or_else(|| Error::InvalidArgument("the image has no layers".into()))?
        .to_path_buf();
    let mut lower = Vec::with_capacity(layers.len());
    for layer in layers {
        let relative = layer.strip_prefix(&base).map_err(|_| {
            Error::Internal(format!("layer {} is outside {}", layer.display(), base.display()))
        })?;
        lower.push(relative.to_path_buf());
    }
    Ok((base, lower))
}

/// The resources a container has after an update: each field the update sets replaces the
/// old one, as containerd applies an update to the spec. A memory limit brings its swap
/// setting along (zero: memory+swap equal to the limit), so that an old swap limit below a
/// raised memory limit is not kept. `oom_score_adj` stays.
fn merge_resources(old: &Resources, new: &Resources) -> Resources {
    let mut merged = old.clone();
    if new.memory_limit_in_bytes != 0 {
        merged.memory_limit_in_bytes = new.memory_limit_in_bytes;
        merged.memory_swap_limit_in_bytes = new.memory_swap_limit_in_bytes;
    } else if new.memory_swap_limit_in_bytes != 0 {
        merged.memory_swap_limit_in_bytes = new.memory_swap_limit_in_bytes;
    }
    for (to, from) in [
        (&mut merged.cpu_period, new.cpu_period),
        (&mut merged.cpu_quota, new.cpu_quota),
        (&mut merged.cpu_shares, new.cpu_shares),
    ] {
        if from != 0 {
            *to = from;
        }
    }
    for (to, from) in
        [(&mut merged.cpuset_cpus, &new.cpuset_cpus), (&mut merged.cpuset_mems, &new.cpuset_mems)]
    {
        if !from.is_empty() {
            to.clone_from(from);
        }
    }
    for limit in &new.hugepage_limits {
        match merged.hugepage_limits.iter_mut().find(|l| l.page_size == limit.page_size) {
            Some(old) => old.limit = limit.limit,
            None => merged.hugepage_limits.push(limit.clone()),
        }
    }
    merged.unified.extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// The OCI spec `spec` (JSON) with the limits of `resources`; its device rules (and anything
/// else of `linux.resources` the CRI does not set) stay.
fn respec(spec: &[u8], resources: &Resources) -> Result<Vec<u8>> {
    let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(spec)
        .map_err(|err| Error::Internal(format!("reading the container's OCI spec: {err}")))?;
    let built = spec::limits(resources)?;
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut current = linux.resources().clone().unwrap_or_default();
    current
        .set_memory(*built.memory())
        .set_cpu(built.cpu().clone())
        .set_hugepage_limits(built.hugepage_limits().clone())
        .set_unified(built.unified().clone());
    linux.set_resources(Some(current));
    spec.set_linux(Some(linux));
    serde_json::to_vec_pretty(&spec)
        .map_err(|err| Error::Internal(format!("encoding the OCI spec: {err}")))
}

/// Puts a cgroup's old limits back after a later step of an update failed.
fn undo(applied: &crate::container::cgroup::Applied) {
    if let Err(err) = applied.revert() {
        tracing::error!(error = %err, "putting a container's old cgroup limits back");
    }
}

fn log_path(directory: &str, path: &str) -> Result<Option<PathBuf>> {
    if path.is_empty() {
        return Ok(None);
    }
    let full = Path::new(directory).join(path);
    if !full.is_absolute() || full.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(Error::InvalidArgument(format!(
            "log path {path:?} in log directory {directory:?} is not an absolute path without \"..\""
        )));
    }
    Ok(Some(full))
}

fn read_exit(path: &Path) -> Option<ExitInfo> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(info) => Some(info),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "unreadable exit record");
            None
        }
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::Internal(format!("unexpected answer from the pod's monitor: {reply:?}"))
}

/// `HOME` from the user's passwd entry when the environment has none: runc sets it that way
/// at exec, so it is in the spec for every runtime (and for ExecSync, which takes the spec's
/// environment).
fn default_home(spec: &mut oci_spec::runtime::Spec, home: &str) {
    let Some(process) = spec.process_mut().as_mut() else { return };
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
        process.set_env(Some(env));
    }
}

/// `linux.cgroupsPath` as an OCI runtime must read it to land in the cgroup berth made:
/// absolute (from the hierarchy's root) normally; with nesting, relative, which runc takes
/// from its own cgroup, the monitor's, which is berthd's.
fn runtime_cgroup_path(path: &str, nest: bool) -> Result<String> {
    let clean = crate::cgroups::clean_cgroup_path(Path::new(path))?;
    let clean = clean.to_str().ok_or_else(|| {
        Error::InvalidArgument(format!("cgroup path {path:?} is not valid UTF-8"))
    })?;
    Ok(if nest { clean.to_string() } else { format!("/{clean}") })
}

/// Each managed hierarchy's mount, and berthd's own cgroup under it, which a runtime that
/// cannot nest is shown as the hierarchy's root; hierarchies where berthd is at the root of
/// the mount need no view.
fn cgroup_roots(layout: &CgroupLayout) -> Result<Vec<CgroupRoot>> {
    let mut roots = Vec::new();
    for (hierarchy, own) in layout.dirs(Path::new(""), true)? {
        if own != hierarchy.mountpoint {
            roots.push(CgroupRoot { mountpoint: hierarchy.mountpoint.clone(), cgroup: own });
        }
    }
    Ok(roots)
}

/// The bundle, after its rootfs and idmapped volumes, which the monitor mounts for an OCI
/// runtime: removing files through those mounts would delete the container's own, or a
/// volume's.
fn remove_bundle(bundle: &Path) -> Result<()> {
    crate::executor::unmount_rootfs(&bundle.join("rootfs"))?;
    crate::executor::unmount_idmapped(bundle)?;
    image_volume::unmount_all(bundle)?;
    remove_dir(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_share_a_base() {
        let layers = vec![PathBuf::from("/r/snapshots/bb/fs"), PathBuf::from("/r/snapshots/aa/fs")];
        let (base, lower) = split_layers(&layers).unwrap();
        assert_eq!(base, PathBuf::from("/r/snapshots"));
        assert_eq!(lower, vec![PathBuf::from("bb/fs"), PathBuf::from("aa/fs")]);
        assert!(split_layers(&[]).is_err());
        assert!(split_layers(&[PathBuf::from("/a/b/fs"), PathBuf::from("/c/d/fs")]).is_err());
    }

    #[test]
    fn updates_replace_what_they_set() {
        let old = Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 96 << 20,
            oom_score_adj: 500,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 2 << 20 }],
            unified: [("memory.high".to_string(), "1M".to_string())].into(),
        };
        // Nothing set: nothing changes.
        assert_eq!(merge_resources(&old, &Resources::default()), old);
        let new = Resources {
            cpu_quota: 20_000,
            memory_limit_in_bytes: 128 << 20,
            oom_score_adj: -1000,
            cpuset_cpus: "1".into(),
            hugepage_limits: vec![
                HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 },
                HugepageLimit { page_size: "1GB".into(), limit: 1 << 30 },
            ],
            unified: [("memory.low".to_string(), "1K".to_string())].into(),
            ..Default::default()
        };
        let merged = merge_resources(&old, &new);
        assert_eq!(
            merged,
            Resources {
                cpu_quota: 20_000,
                memory_limit_in_bytes: 128 << 20,
                // The new limit comes with its own swap setting: none, so equal to it.
                memory_swap_limit_in_bytes: 0,
                cpuset_cpus: "1".into(),
                hugepage_limits: new.hugepage_limits.clone(),
                unified: [
                    ("memory.high".to_string(), "1M".to_string()),
                    ("memory.low".to_string(), "1K".to_string())
                ]
                .into(),
                ..old.clone()
            }
        );
        assert_eq!(merged.oom_score_adj, 500);
        let swap_only = Resources { memory_swap_limit_in_bytes: -1, ..Default::default() };
        let merged = merge_resources(&old, &swap_only);
        assert_eq!(
            (merged.memory_limit_in_bytes, merged.memory_swap_limit_in_bytes),
            (64 << 20, -1)
        );
    }

    #[test]
    fn the_spec_gets_the_new_limits_and_keeps_its_devices() {
        use oci_spec::runtime::{
            LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
            SpecBuilder,
        };
        let resources = LinuxResourcesBuilder::default()
            .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).build().unwrap()])
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .linux(LinuxBuilder::default().resources(resources).build().unwrap())
            .build()
            .unwrap();
        let bytes = serde_json::to_vec(&spec).unwrap();
        let r = Resources {
            memory_limit_in_bytes: 32 << 20,
            cpu_shares: 256,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let updated: oci_spec::runtime::Spec =
            serde_json::from_slice(&respec(&bytes, &r).unwrap()).unwrap();
        let got = updated.linux().as_ref().unwrap().resources().clone().unwrap();
        let memory = got.memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(32 << 20), Some(32 << 20)));
        let cpu = got.cpu().clone().unwrap();
        assert_eq!((cpu.shares(), cpu.cpus().as_deref()), (Some(256), Some("0")));
        assert_eq!(got.devices().as_ref().unwrap().len(), 1);
        assert_eq!(got.pids().as_ref().unwrap().limit(), 10);
        // A bad value is refused before anything is written.
        let bad = Resources { cpu_shares: -2, ..Default::default() };
        assert_eq!(
            respec(&bytes, &bad).unwrap_err().kind(),
            crate::error::ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn home_is_added_only_when_unset() {
        let mut spec = oci_spec::runtime::Spec::default();
        let mut process = oci_spec::runtime::Process::default();
        process.set_env(Some(vec!["PATH=/bin".into()]));
        spec.set_process(Some(process));
        default_home(&mut spec, "/root");
        let env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap();
        assert_eq!(env, ["PATH=/bin", "HOME=/root"]);
        default_home(&mut spec, "/other");
        let env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap();
        assert_eq!(env, ["PATH=/bin", "HOME=/root"]);
    }

    #[test]
    fn cgroup_paths_for_runtimes() {
        assert_eq!(runtime_cgroup_path("/berth/p/c", false).unwrap(), "/berth/p/c");
        assert_eq!(runtime_cgroup_path("/berth/p/c", true).unwrap(), "berth/p/c");
        assert_eq!(runtime_cgroup_path("kubepods//p/c", false).unwrap(), "/kubepods/p/c");
        assert!(runtime_cgroup_path("/a/../c", true).is_err());
    }

    /// Where berthd's own cgroup differs between hierarchies (memory here), each is shown
    /// rooted at it; one where berthd is at the mount's root needs no view.
    #[test]
    fn cgroup_roots_are_berthds_own_cgroup_in_each_hierarchy() {
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
";
        let own = "9:name=systemd:/node\n4:memory:/job/7/node\n1:cpu:/\n0::/\n";
        let layout = CgroupLayout::parse(mountinfo, own).unwrap();
        let roots: Vec<(String, String)> = cgroup_roots(&layout)
            .unwrap()
            .into_iter()
            .map(|r| (r.mountpoint.display().to_string(), r.cgroup.display().to_string()))
            .collect();
        let expected = [
            ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/node"),
            ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/job/7/node"),
        ];
        let expected: Vec<(String, String)> =
            expected.iter().map(|(m, c)| (m.to_string(), c.to_string())).collect();
        assert_eq!(roots, expected);
    }

    #[test]
    fn log_paths() {
        assert_eq!(log_path("/var/log/pods/x", "").unwrap(), None);
        assert_eq!(
            log_path("/var/log/pods/x", "c/0.log").unwrap(),
            Some(PathBuf::from("/var/log/pods/x/c/0.log"))
        );
        assert!(log_path("", "c/0.log").is_err());
        assert!(log_path("/var/log/pods/x", "../../etc/passwd").is_err());
    }
}
