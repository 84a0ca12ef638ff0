//! Create and start: a container's name, directories, image holds, cgroup, record and bundle
//! taken in order and given back in reverse when a step fails; then the monitor starts it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::cdi;
use crate::cgroups::container::ContainerCgroup;
use crate::cgroups::CgroupMode;
use crate::container::image_volume;
use crate::container::spec::{self, PidNamespace, PodContext, PodUserNamespace, SpecInputs};
use crate::container::user;
use crate::error::{Error, Result};
use crate::events::ContainerEventKind;
use crate::handlers::Handler;
use crate::monitor::proto::{
    CgroupRoot, CgroupView, CreateRequest, Executor, OciExecutor, Reply, Request, RootfsPlan,
};
use crate::monitor::MonitorClient;
use crate::pod::{NamespaceMode, PodForContainer};
use crate::store::new_id;
use crate::util::{blocking, now_nanos};

impl Inner {
    pub(super) async fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
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
        let volumes = self.volume_images(&config, &pod)?;
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
    /// first (against the mappings of `pod`'s user namespace); one not on the node is
    /// NotFound, as the kubelet pulls them before it creates.
    pub(super) fn volume_images(
        &self,
        config: &ContainerConfig,
        pod: &PodForContainer,
    ) -> Result<Vec<(usize, berth_images::ContainerImage)>> {
        let pod_userns = pod.record.config.namespaces.user.as_ref();
        let mut volumes = Vec::new();
        for (index, m) in config.mounts.iter().enumerate() {
            let Some(volume) = &m.image else { continue };
            image_volume::check(m, volume, pod_userns)?;
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
    pub(super) async fn take(
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
        let cdi_devices = cdi::requested(&config.cdi_devices, &config.annotations)?;
        if !cdi_devices.is_empty() && !self.cdi.enabled {
            return Err(Error::FailedPrecondition(format!(
                "CDI devices {} asked for, and CDI is disabled in berthd's configuration \
                 ([cdi] enabled = false)",
                cdi_devices.join(", ")
            )));
        }
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
        let pid_ns = self.pid_namespace(&config, pod, oci)?;
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
            let pid = pid_ns;
            let volumes: Vec<(usize, Vec<PathBuf>)> =
                volumes.iter().map(|(index, image)| (*index, image.layers.clone())).collect();
            let (id, rootfs) = (id.to_string(), rootfs.clone());
            let (upper, work, bundle) = (upper.clone(), work.clone(), bundle.clone());
            let (layout, oom_floor, nest) = (self.cgroups.clone(), self.oom_floor, self.nest);
            let cdi_dirs = self.cdi.spec_dirs.clone();
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
                    hugetlb: layout.has_hugetlb(nest),
                })?;
                default_home(&mut spec, &user::home(user.uid, &layers)?);
                // After berth's own choices: a device's edits may replace a variable or a
                // mount of the config's, as with containerd.
                cdi::inject(&mut spec, &cdi_dirs, &cdi_devices)?;
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
                berth_fsutil::replace_volatile(&bundle.join("config.json"), &spec_json)
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
                name: shown_name(&config.image, &image.record.repo_tags),
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
    pub(super) async fn give_back(&self, id: &str, taken: Taken) {
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

    /// The PID namespace the container gets. TARGET (`kubectl debug --target`, an ephemeral
    /// container beside the one it debugs) is that of another container of the same pod,
    /// running, named by `target_id`. In a pod whose containers each have their own (what the
    /// kubelet sends TARGET in) it is joined as containerd joins it, through
    /// `/proc/<its pid>/ns/pid`, which the embedded executor (in the monitor) and runc or crun
    /// (run from the node's `/proc` in such a pod) all open as the node sees it. In a pod that
    /// shares one, a target in it means that one; a target with a namespace of its own there
    /// is refused: the kubelet never makes one, and a pod of an earlier berthd runs its OCI
    /// runtime inside the pod's namespace, whose `/proc` does not show the target's pid.
    pub(super) fn pid_namespace(
        &self,
        config: &ContainerConfig,
        pod: &PodForContainer,
        oci: bool,
    ) -> Result<PidNamespace> {
        if config.security.pid != NamespaceMode::Target {
            return Ok(pid_namespace(config, pod, oci));
        }
        let target_id = &config.security.target_id;
        if target_id.is_empty() {
            return Err(Error::InvalidArgument(
                "PID namespace mode TARGET needs the target container's id (target_id)".into(),
            ));
        }
        let entry = self.store.get(target_id).map_err(|err| match err {
            Error::NotFound(_) => Error::NotFound(format!(
                "target container {target_id:?} of PID namespace mode TARGET not found"
            )),
            other => other,
        })?;
        let target = self.refreshed(&entry.record());
        if target.pod_id != pod.record.id {
            return Err(Error::InvalidArgument(format!(
                "target container {} of PID namespace mode TARGET is in pod sandbox {}, not in \
                 {}",
                target.id, target.pod_id, pod.record.id
            )));
        }
        let ContainerState::Running { pid } = target.state else {
            return Err(Error::FailedPrecondition(format!(
                "target container {} of PID namespace mode TARGET is {}: only a running \
                 container's PID namespace can be joined",
                target.id,
                target.state.name()
            )));
        };
        if pod.record.config.namespaces.pid != NamespaceMode::Pod {
            return Ok(PidNamespace::Join(PathBuf::from(format!("/proc/{pid}/ns/pid"))));
        }
        match target.config.security.pid {
            NamespaceMode::Pod => Ok(pods_pid_namespace(pod, oci)),
            mode => Err(Error::InvalidArgument(format!(
                "target container {} of PID namespace mode TARGET has a PID namespace of its \
                 own ({mode:?}) in pod sandbox {}, which shares one: only that one can be \
                 joined there",
                target.id, pod.record.id
            ))),
        }
    }

    pub(super) async fn start(&self, id: &str) -> Result<()> {
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
}

/// The images a new container uses: its own, and those of its image volumes by the index of
/// their mount.
pub(super) struct Images {
    pub(super) own: berth_images::ContainerImage,
    pub(super) volumes: Vec<(usize, berth_images::ContainerImage)>,
}

/// The image's name as ContainerStatus shows it (the kubelet copies it into the pod's status):
/// the name asked for when it is one of the image's tags, else the image's first tag (the
/// kubelet asks by the image's id), else the name asked for. containerd answers the first tag.
pub(super) fn shown_name(requested: &str, repo_tags: &[String]) -> String {
    match repo_tags.first() {
        Some(first) if !repo_tags.iter().any(|tag| tag == requested) => first.clone(),
        _ => requested.to_string(),
    }
}

/// What a create has taken so far, for its rollback.
#[derive(Default)]
pub(super) struct Taken {
    pub(super) name: Option<String>,
    pub(super) dirs: bool,
    pub(super) hold: bool,
    pub(super) cgroup: Option<ContainerCgroup>,
    pub(super) record: bool,
    pub(super) monitor: Option<MonitorClient>,
}

/// The PID namespace of a container of mode POD, CONTAINER or NODE (TARGET:
/// [`Inner::pid_namespace`]).
pub(super) fn pid_namespace(
    config: &ContainerConfig,
    pod: &PodForContainer,
    oci: bool,
) -> PidNamespace {
    let pod_has_one = pod.record.config.namespaces.pid == NamespaceMode::Pod;
    match config.security.pid {
        NamespaceMode::Pod if pod_has_one => pods_pid_namespace(pod, oci),
        NamespaceMode::Node => PidNamespace::Host,
        _ => PidNamespace::New,
    }
}

/// The PID namespace a pod shares among its containers, by the path its runtime opens: its pod
/// init's, as the node sees it (the embedded executor and runc or crun all run in the node's
/// PID namespace, see `monitor::pod_init`). A pod of an earlier berthd has its monitor as that
/// pid 1, and runs an OCI runtime in the pod's namespace, with that namespace's `/proc`.
fn pods_pid_namespace(pod: &PodForContainer, oci: bool) -> PidNamespace {
    let path = match (pod.pod_init_pid, oci) {
        (Some(init), _) => format!("/proc/{init}/ns/pid"),
        (None, true) => "/proc/1/ns/pid".to_string(),
        (None, false) => format!("/proc/{}/ns/pid", pod.monitor_pid),
    };
    PidNamespace::Join(PathBuf::from(path))
}

/// The pod's user namespace, which the container joins; its config's `userns_options` may only
/// repeat the pod's.
pub(super) fn pod_user_namespace(
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
pub(super) fn split_layers(layers: &[PathBuf]) -> Result<(PathBuf, Vec<PathBuf>)> {
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

pub(super) fn log_path(directory: &str, path: &str) -> Result<Option<PathBuf>> {
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

/// `HOME` from the user's passwd entry when the environment has none: runc sets it that way
/// at exec, so it is in the spec for every runtime (and for ExecSync, which takes the spec's
/// environment).
pub(super) fn default_home(spec: &mut oci_spec::runtime::Spec, home: &str) {
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
pub(super) fn runtime_cgroup_path(path: &str, nest: bool) -> Result<String> {
    let clean = crate::cgroups::clean_cgroup_path(Path::new(path))?;
    let clean = clean.to_str().ok_or_else(|| {
        Error::InvalidArgument(format!("cgroup path {path:?} is not valid UTF-8"))
    })?;
    Ok(if nest { clean.to_string() } else { format!("/{clean}") })
}

/// Each managed hierarchy's mount, and berthd's own cgroup under it, which a runtime that
/// cannot nest is shown as the hierarchy's root; hierarchies where berthd is at the root of
/// the mount need no view.
pub(super) fn cgroup_roots(layout: &CgroupLayout) -> Result<Vec<CgroupRoot>> {
    let mut roots = Vec::new();
    for (hierarchy, own) in layout.dirs(Path::new(""), true)? {
        if own != hierarchy.mountpoint {
            roots.push(CgroupRoot { mountpoint: hierarchy.mountpoint.clone(), cgroup: own });
        }
    }
    Ok(roots)
}
