//! CreateContainer, StartContainer, StopContainer, RemoveContainer, UpdateContainerResources,
//! ExecSync, the interactive Exec and Attach (their streams: `stream.rs`) and the queries,
//! over the container store and the pods' monitors.
//!
//! Create does all the work that can be done before the process runs (the user, the spec, the
//! cgroup with its limits, the process itself set up to its last step and waiting), so that
//! Start is one message to the monitor. The record is written before the monitor is asked to
//! create anything: a crash in between leaves a record that Remove cleans up. Exits are written
//! by the monitor to `exit.json` beside the record; berthd reads it when it next looks.
//!
//! Here: the `Containers` handle and the state its steps share, and recovery at start; the steps
//! are in `create`, `stop` (with remove and resource updates), `queries` (status, list,
//! events) and `exec` (exec, attach, log reopening).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_images::ImageService;

use crate::cgroups::CgroupLayout;
use crate::config::CdiConfig;
use crate::container::stream::{StdioSession, StreamOptions};
use crate::container::types::*;
use crate::error::{Error, Result};
use crate::events::{ContainerEvent, Events};
use crate::handlers::Handlers;
use crate::monitor::proto::{ContainerStatus as MonitorStatus, Reply};
use crate::monitor::MonitorClient;
use crate::pod::Pods;
use crate::store::Store;

mod create;
mod exec;
mod queries;
mod stop;

use stop::*;

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
    pub cdi: CdiConfig,
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
    cdi: CdiConfig,
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
            cdi: options.cdi,
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

#[cfg(test)]
mod tests;
