//! RunPodSandbox, StopPodSandbox, RemovePodSandbox and the queries, over the pod store.
//!
//! Order of a pod's setup: the record is written first, as NotReady (so that a crash in the
//! middle leaves a pod that Stop and Remove can finish off), then the files, the cgroup, the
//! namespaces, /dev/shm and the network; the record turns Ready last. When a step fails, what
//! the earlier steps took is given back in reverse order and the pod is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cgroups::pod as cgroup;
use crate::cgroups::CgroupLayout;
use crate::cni::{Cni, PodNetworkRequest};
use crate::error::{Error, Result};
use crate::handlers::Handlers;
use crate::monitor::{self, client::PodPidNamespace, proto::Request, MonitorClient};
use crate::namespaces::{self, NamespaceRequest, NsKind, PodNamespaces};
use crate::pod::files;
use crate::pod::types::*;
use crate::store::{new_id, Store};
use crate::util::{blocking, now_nanos, remove_dir};

/// The size of a pod's /dev/shm, as docker and containerd default it.
const SHM_SIZE: u64 = 64 << 20;
/// The interface CNI creates in the pod.
const IFNAME: &str = "eth0";

/// The pod service. Its work runs in tasks of its own (see [`Pods::run`]), so it is a cheap
/// handle on shared state.
#[derive(Clone)]
pub struct Pods {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store<PodRecord>,
    /// `<state>/pods`: namespace handles and /dev/shm, gone on reboot.
    state_dir: PathBuf,
    cgroups: Arc<CgroupLayout>,
    nest: bool,
    cni: Cni,
    handlers: Arc<Handlers>,
    pod_cidr: Mutex<Option<String>>,
    /// The binary whose `monitor` subcommand is a pod's monitor: berthd itself.
    monitor_exe: PathBuf,
}

/// What PodSandboxStatus reports beyond the record.
pub struct PodDetails {
    pub record: PodRecord,
    pub netns: Option<PathBuf>,
    pub cgroup_dirs: Vec<PathBuf>,
}

impl Pods {
    /// Loads the pods of an earlier berthd. A pod whose namespaces are gone (the node
    /// rebooted: the state dir is empty) is NotReady from now on.
    pub fn open(
        root: &Path,
        state: &Path,
        cgroups: Arc<CgroupLayout>,
        nest: bool,
        cni: Cni,
        handlers: Arc<Handlers>,
        monitor_exe: PathBuf,
    ) -> Result<Pods> {
        let state_dir = state.join("pods");
        std::fs::create_dir_all(&state_dir).map_err(Error::io("creating", &state_dir))?;
        namespaces::prepare_state_dir(&state_dir)?;
        let store = Store::open(&root.join("pods"))?;
        let pods = Inner {
            store,
            state_dir,
            cgroups,
            nest,
            cni,
            handlers,
            pod_cidr: Mutex::new(None),
            monitor_exe,
        };
        for entry in pods.store.all() {
            let mut record = entry.record();
            if record.state == PodState::Ready && !pods.namespaces_held(&record) {
                tracing::warn!(pod_id = %record.id, "pod namespaces are gone (node reboot?): marking it NotReady");
                record.state = PodState::NotReady;
                pods.store.save(&record)?;
            }
        }
        Ok(Pods { inner: Arc::new(pods) })
    }

    /// For a clean stop: with no pod left (none recorded, so none a later berthd must find
    /// again), the state directory's own mount goes too.
    pub fn close(&self) -> Result<()> {
        if self.inner.store.all().is_empty() {
            namespaces::release_state_dir(&self.inner.state_dir)?;
        }
        Ok(())
    }

    pub fn set_pod_cidr(&self, cidr: &str) {
        self.inner.set_pod_cidr(cidr)
    }

    /// The full id a full id or unique prefix names.
    pub fn resolve_id(&self, id: &str) -> Result<String> {
        Ok(self.inner.store.get(id)?.id.clone())
    }

    /// The pod's record as it is now; `None` when there is no such pod.
    pub fn record(&self, id: &str) -> Option<PodRecord> {
        self.inner.store.find(id).ok().flatten().map(|entry| entry.record())
    }

    /// Like `resolve_id`, but an unknown pod is None.
    pub fn find_id(&self, id: &str) -> Result<Option<String>> {
        Ok(self.inner.store.find(id)?.map(|entry| entry.id.clone()))
    }

    /// RunPodSandbox. The setup runs in a task of its own: a client that gives up (a deadline,
    /// a ^C) must not leave a pod half set up, so the setup and, if it fails, its rollback
    /// always run to the end.
    pub async fn run(&self, config: PodConfig) -> Result<String> {
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.run(config).await })
            .await
            .map_err(|err| Error::Internal(format!("pod setup task failed: {err}")))?
    }

    pub async fn stop(&self, id: &str) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        tokio::spawn(async move { inner.stop(&id).await })
            .await
            .map_err(|err| Error::Internal(format!("pod stop task failed: {err}")))?
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        tokio::spawn(async move { inner.remove(&id).await })
            .await
            .map_err(|err| Error::Internal(format!("pod removal task failed: {err}")))?
    }

    /// UpdatePodSandboxResources: the pod's cgroup gets `resources` (its containers' limits,
    /// summed by the kubelet) plus `overhead`, all or nothing.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: crate::container::Resources,
        overhead: crate::container::Resources,
    ) -> Result<()> {
        let (inner, id) = (self.inner.clone(), id.to_string());
        tokio::spawn(async move { inner.update_resources(&id, &resources, &overhead).await })
            .await
            .map_err(|err| Error::Internal(format!("pod update task failed: {err}")))?
    }

    pub async fn status(&self, id: &str) -> Result<PodDetails> {
        self.inner.status(id)
    }

    pub async fn list(&self, filter: &PodFilter) -> Vec<PodRecord> {
        self.inner.list(filter)
    }

    /// The namespace files of a ready pod, for containers to join.
    pub async fn namespace_paths(&self, id: &str) -> Result<Vec<(NsKind, PathBuf)>> {
        self.inner.namespace_paths(id)
    }

    /// The runtime handler a pod was run with; None for an unknown pod.
    pub fn handler_of(&self, id: &str) -> Option<String> {
        let entry = self.inner.store.get(id).ok()?;
        Some(entry.record().config.runtime_handler)
    }

    /// What a new container of a ready pod needs of it.
    pub fn container_context(&self, id: &str) -> Result<PodForContainer> {
        self.inner.container_context(id)
    }

    /// The state directory of a pod, where its monitor listens.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.inner.state_dir.join(id)
    }
}

impl Inner {
    fn ns_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id).join("ns")
    }

    fn shm_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id).join("shm")
    }

    /// The held namespaces of a pod, as far as its config asked for them.
    fn namespaces_of(&self, record: &PodRecord) -> PodNamespaces {
        let dir = self.ns_dir(&record.id);
        let ns = &record.config.namespaces;
        PodNamespaces {
            net: (ns.network != NamespaceMode::Node).then(|| dir.join("net")),
            ipc: (ns.ipc != NamespaceMode::Node).then(|| dir.join("ipc")),
            uts: (ns.network != NamespaceMode::Node).then(|| dir.join("uts")),
            user: ns.user.is_some().then(|| dir.join("user")),
            dir,
        }
    }

    /// Whether what the pod keeps in the state dir is still there: its namespace files, and
    /// the directory itself, which is all a reboot takes from a pod that shares every
    /// namespace with the node.
    fn namespaces_held(&self, record: &PodRecord) -> bool {
        let ns = self.namespaces_of(record);
        self.state_dir.join(&record.id).is_dir()
            && [ns.net, ns.ipc, ns.uts, ns.user]
                .iter()
                .flatten()
                .all(|path| namespaces::is_held(path))
    }

    fn set_pod_cidr(&self, cidr: &str) {
        let mut current = self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner());
        *current = (!cidr.is_empty()).then(|| cidr.to_string());
    }

    async fn run(&self, config: PodConfig) -> Result<String> {
        // The record keeps the name; its containers find the runtime by it.
        self.handlers.get(&config.runtime_handler)?;
        if config.namespaces.user.is_some() {
            check_user_namespace(&config, &self.handlers)?;
        }
        // Everything that can be checked before anything is taken.
        bandwidth(&config)?;
        let hostname = files::hostname(&config.hostname)?;
        let resolv = files::resolv_conf(config.dns.as_ref())?;
        let id = new_id()?;
        let key = config.metadata.key();
        self.store.reserve_name(&key, &id)?;
        let record = PodRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            cgroup: cgroup::pod_cgroup(&config.cgroup_parent, &id),
            config,
            created_at_nanos: now_nanos(),
            state: PodState::NotReady,
            network: None,
            network_pending: false,
            cgroup_created: Vec::new(),
            monitor_pid: None,
            pod_init_pid: None,
        };
        if let Err(err) = self.store.save(&record) {
            self.store.release_name(&key, &id);
            let _ = self.store.delete(&id);
            return Err(err);
        }
        // Listed (NotReady) from now on, and Stop and Remove wait for the setup to end.
        let entry = self.store.insert(record.clone());
        let _step = entry.step.lock().await;
        let mut record = record;
        let mut taken = Taken::default();
        match self.take(&mut record, &mut taken, &hostname, &resolv).await {
            Ok(()) => {
                let ips = record.network.as_ref().map(|n| &n.ips);
                tracing::info!(pod_id = %id, name = %key, ?ips, "pod sandbox ready");
                Ok(id)
            }
            Err(err) => {
                tracing::warn!(pod_id = %id, error = %err, "pod setup failed: rolling back");
                match self.give_back(&record, taken).await {
                    Ok(()) => {
                        self.store.forget(&id);
                        self.store.release_name(&key, &id);
                        if let Err(undo) = self.store.delete(&id) {
                            tracing::error!(pod_id = %id, error = %undo, "removing a failed pod's files");
                        }
                    }
                    // What could not be given back stays recorded on a NotReady pod, which
                    // the kubelet's StopPodSandbox and RemovePodSandbox finish off.
                    Err(undo) => tracing::error!(
                        pod_id = %id,
                        error = %undo,
                        "rolling back a failed pod setup; the pod stays NotReady for removal"
                    ),
                }
                Err(err)
            }
        }
    }

    async fn take(
        &self,
        record: &mut PodRecord,
        taken: &mut Taken,
        hostname: &str,
        resolv: &str,
    ) -> Result<()> {
        let id = record.id.clone();
        let pod_dir = self.store.dir_of(&id);
        let host_network = record.config.namespaces.network == NamespaceMode::Node;
        // Made for every pod, also one with nothing to hold there: its being gone tells a
        // later berthd that the node rebooted.
        let state = self.state_dir.join(&id);
        std::fs::create_dir_all(&state).map_err(Error::io("creating", &state))?;
        files::write(&pod_dir, "hostname", &format!("{hostname}\n"))?;
        files::write(&pod_dir, "resolv.conf", resolv)?;
        files::write(&pod_dir, "hosts", &files::hosts(host_network, hostname, &[])?)?;
        failpoint("pod.files")?;

        let (layout, path, nest) = (self.cgroups.clone(), record.cgroup.clone(), self.nest);
        record.cgroup_created = blocking(move || cgroup::create(&layout, &path, nest)).await?;
        taken.cgroup = true;
        self.store.save(record)?;
        failpoint("pod.cgroup")?;

        let wanted = self.namespaces_of(record);
        // Sysctls of the pod's interface can only be written once CNI has made it.
        let (after_network, before_network): (BTreeMap<_, _>, BTreeMap<_, _>) = record
            .config
            .sysctls
            .clone()
            .into_iter()
            .partition(|(name, _)| name.split(['.', '/']).any(|part| part == IFNAME));
        let request = NamespaceRequest {
            net: wanted.net.is_some(),
            ipc: wanted.ipc.is_some(),
            uts: wanted.uts.is_some(),
            hostname: wanted.uts.is_some().then(|| hostname.to_string()),
            sysctls: before_network.clone(),
            user: record.config.namespaces.user.clone(),
        };
        let dir = wanted.dir.clone();
        let held = blocking(move || namespaces::create(&dir, &request)).await?;
        taken.namespaces = Some(held.clone());
        failpoint("pod.namespaces")?;

        // A pod with a user namespace of its own has its PID namespace owned by it, so that an
        // OCI runtime, which enters the user namespace first, can join it (see `pod_init`).
        let pid_ns = match (record.config.namespaces.pid, &held.user) {
            (NamespaceMode::Pod, Some(user)) => PodPidNamespace::OwnedBy(user.clone()),
            (NamespaceMode::Pod, None) => PodPidNamespace::Own,
            _ => PodPidNamespace::None,
        };
        let spawned = monitor::spawn(&self.monitor_exe, &state, &id, pid_ns).await?;
        taken.monitor = true;
        record.monitor_pid = Some(spawned.monitor);
        record.pod_init_pid = spawned.pod_init;
        self.store.save(record)?;
        failpoint("pod.monitor")?;

        if record.config.namespaces.ipc != NamespaceMode::Node {
            let shm = self.shm_dir(&id);
            blocking(move || {
                std::fs::create_dir_all(&shm).map_err(Error::io("creating", &shm))?;
                namespaces::mount_shm(&shm, SHM_SIZE)
            })
            .await?;
            taken.shm = true;
        }
        failpoint("pod.shm")?;

        if let Some(netns) = &held.net {
            let request = self.network_request(record, netns)?;
            record.network_pending = true;
            self.store.save(record)?;
            // A failed ADD has already run DEL for itself.
            let result = self.cni.add(&request).await?;
            taken.network = true;
            let ips: Vec<String> = result.ips.iter().map(|ip| ip.to_string()).collect();
            files::write(&pod_dir, "hosts", &files::hosts(false, hostname, &ips)?)?;
            record.network = Some(PodNetwork { ips, cni_result: result.raw });
        }
        if !after_network.is_empty() {
            let ns = held.clone();
            blocking(move || namespaces::apply_sysctls(&ns, &after_network)).await?;
        }
        failpoint("pod.network")?;

        record.state = PodState::Ready;
        self.store.save(record)
    }

    fn network_request(&self, record: &PodRecord, netns: &Path) -> Result<PodNetworkRequest> {
        let meta = &record.config.metadata;
        Ok(PodNetworkRequest {
            container_id: record.id.clone(),
            netns: netns.to_path_buf(),
            ifname: IFNAME.into(),
            pod_namespace: meta.namespace.clone(),
            pod_name: meta.name.clone(),
            pod_uid: meta.uid.clone(),
            port_mappings: record.config.port_mappings.clone(),
            bandwidth: bandwidth(&record.config)?,
            pod_cidr: self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }

    /// Undoes the steps of a failed setup, in reverse.
    async fn give_back(&self, record: &PodRecord, taken: Taken) -> Result<()> {
        let mut first_error = None;
        let mut note = |result: Result<()>| {
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        };
        if taken.network {
            if let Some(ns) = &taken.namespaces {
                note(self.cni.del(&record.id, ns.net.as_deref(), IFNAME).await);
            }
        }
        if taken.monitor {
            note(self.stop_monitor(record).await);
        }
        if taken.shm {
            let shm = self.shm_dir(&record.id);
            note(blocking(move || namespaces::unmount(&shm)).await);
        }
        if let Some(ns) = taken.namespaces {
            note(blocking(move || namespaces::release(&ns)).await);
        }
        if taken.cgroup {
            let (layout, created, nest) =
                (self.cgroups.clone(), record.cgroup_created.clone(), self.nest);
            note(blocking(move || cgroup::remove(&layout, &created, nest)).await);
        }
        let state = self.state_dir.join(&record.id);
        note(remove_dir(&state));
        first_error.map_or(Ok(()), Err)
    }

    /// StopPodSandbox: the network goes, then /dev/shm and the namespaces. Every step is
    /// idempotent, so a stop that failed half way is finished by the next one.
    async fn stop(&self, id: &str) -> Result<()> {
        let entry = self.store.get(id)?;
        let _step = entry.step.lock().await;
        // Removed while this call waited for its turn: nothing of it may be written again.
        if !self.store.contains(&entry.id) {
            return Err(Error::NotFound(format!("pod sandbox {id:?} not found")));
        }
        let mut record = entry.record();
        if record.state == PodState::Ready {
            record.state = PodState::NotReady;
            self.store.save(&record)?;
        }
        self.tear_down(&mut record).await?;
        tracing::info!(pod_id = %record.id, "pod sandbox stopped");
        Ok(())
    }

    async fn tear_down(&self, record: &mut PodRecord) -> Result<()> {
        let held = self.namespaces_of(record);
        if held.net.is_some() && (record.network_pending || record.network.is_some()) {
            let netns = held.net.clone().filter(|path| namespaces::is_held(path));
            self.cni.del(&record.id, netns.as_deref(), IFNAME).await?;
            record.network = None;
            record.network_pending = false;
            self.store.save(record)?;
        }
        self.stop_monitor(record).await?;
        if record.monitor_pid.take().is_some() {
            record.pod_init_pid = None;
            self.store.save(record)?;
        }
        let shm = self.shm_dir(&record.id);
        blocking(move || namespaces::unmount(&shm)).await?;
        blocking(move || namespaces::release(&held)).await?;
        Ok(())
    }

    /// Asks the monitor to exit (it kills what is left of the pod's containers), and makes sure
    /// it has, and its pod init too: a pod-wide PID namespace lives exactly as long as its
    /// monitor (the pod init exits when the monitor is gone, and the kernel kills the rest).
    async fn stop_monitor(&self, record: &PodRecord) -> Result<()> {
        let Some(pid) = record.monitor_pid else { return Ok(()) };
        let client = MonitorClient::new(&self.state_dir.join(&record.id));
        match client.call(Request::Shutdown, Duration::ZERO).await {
            Ok(_) | Err(Error::MonitorGone(_)) => {}
            Err(err) => {
                tracing::warn!(pod_id = %record.id, error = %err, "monitor refused to shut down; killing it")
            }
        }
        let init = record.pod_init_pid;
        blocking(move || {
            monitor::wait_gone(pid, Duration::from_secs(5))?;
            match init {
                Some(init) => monitor::wait_gone(init, Duration::from_secs(5)),
                None => Ok(()),
            }
        })
        .await
    }

    /// RemovePodSandbox: stops it if needed, then removes everything of it. An unknown pod is
    /// fine: removing twice is not an error.
    async fn remove(&self, id: &str) -> Result<()> {
        let Some(entry) = self.store.find(id)? else { return Ok(()) };
        let _step = entry.step.lock().await;
        if !self.store.contains(&entry.id) {
            return Ok(());
        }
        let mut record = entry.record();
        if record.state == PodState::Ready {
            record.state = PodState::NotReady;
            self.store.save(&record)?;
        }
        self.tear_down(&mut record).await?;
        let (layout, created, nest) =
            (self.cgroups.clone(), record.cgroup_created.clone(), self.nest);
        blocking(move || cgroup::remove(&layout, &created, nest)).await?;
        remove_dir(&self.state_dir.join(&record.id))?;
        self.store.delete(&record.id)?;
        self.store.forget(&record.id);
        self.store.release_name(&record.config.metadata.key(), &record.id);
        tracing::info!(pod_id = %record.id, "pod sandbox removed");
        Ok(())
    }

    async fn update_resources(
        &self,
        id: &str,
        resources: &crate::container::Resources,
        overhead: &crate::container::Resources,
    ) -> Result<()> {
        let entry = self.store.get(id)?;
        let _step = entry.step.lock().await;
        if !self.store.contains(&entry.id) {
            return Err(Error::NotFound(format!("pod sandbox {id:?} not found")));
        }
        let record = entry.record();
        if record.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: its resources cannot be updated",
                record.id
            )));
        }
        let limits = crate::container::spec::limits(
            &crate::pod::overhead::combine(resources, overhead),
            self.cgroups.has_hugetlb(self.nest),
        )?;
        let (layout, path, nest) = (self.cgroups.clone(), record.cgroup.clone(), self.nest);
        blocking(move || cgroup::update(&layout, &path, nest, &limits)).await?;
        tracing::info!(pod_id = %record.id, ?resources, ?overhead, "pod sandbox resources updated");
        Ok(())
    }

    fn status(&self, id: &str) -> Result<PodDetails> {
        let entry = self.store.get(id)?;
        let record = entry.record();
        let netns = self.namespaces_of(&record).net.filter(|path| namespaces::is_held(path));
        let cgroup_dirs = self
            .cgroups
            .dirs(Path::new(&record.cgroup), self.nest)?
            .into_iter()
            .map(|(_, dir)| dir)
            .collect();
        Ok(PodDetails { record, netns, cgroup_dirs })
    }

    fn list(&self, filter: &PodFilter) -> Vec<PodRecord> {
        let mut pods = Vec::new();
        for entry in self.store.all() {
            let record = entry.record();
            if filter.matches(&record) {
                pods.push(record);
            }
        }
        pods.sort_by_key(|pod| pod.created_at_nanos);
        pods
    }

    fn container_context(&self, id: &str) -> Result<PodForContainer> {
        let entry = self.store.get(id)?;
        let record = entry.record();
        if record.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                record.id
            )));
        }
        let Some(monitor_pid) = record.monitor_pid else {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} has no monitor (created by an earlier berthd?)",
                record.id
            )));
        };
        let ns = self.namespaces_of(&record);
        let files = self.store.dir_of(&record.id);
        Ok(PodForContainer {
            net: ns.net,
            ipc: ns.ipc,
            uts: ns.uts,
            user: ns.user,
            shm: (record.config.namespaces.ipc != NamespaceMode::Node)
                .then(|| self.shm_dir(&record.id)),
            hosts: files.join("hosts"),
            resolv_conf: files.join("resolv.conf"),
            hostname_file: files.join("hostname"),
            hostname: std::fs::read_to_string(files.join("hostname"))
                .map(|h| h.trim_end().to_string())
                .map_err(Error::io("reading", files.join("hostname")))?,
            state_dir: self.state_dir.join(&record.id),
            monitor_pid,
            pod_init_pid: record.pod_init_pid,
            record,
        })
    }

    fn namespace_paths(&self, id: &str) -> Result<Vec<(NsKind, PathBuf)>> {
        let entry = self.store.get(id)?;
        let record = entry.record();
        if record.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                record.id
            )));
        }
        let ns = self.namespaces_of(&record);
        Ok([(NsKind::Net, ns.net), (NsKind::Ipc, ns.ipc), (NsKind::Uts, ns.uts)]
            .into_iter()
            .filter_map(|(kind, path)| path.map(|p| (kind, p)))
            .collect())
    }
}

/// What a container needs of its pod.
#[derive(Debug, Clone)]
pub struct PodForContainer {
    pub record: PodRecord,
    /// Held namespaces; None: the node's.
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's own user namespace (`record.config.namespaces.user` has its mappings).
    pub user: Option<PathBuf>,
    /// The pod's /dev/shm; None with the node's IPC namespace.
    pub shm: Option<PathBuf>,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    pub hostname: String,
    /// Where the pod's monitor listens.
    pub state_dir: PathBuf,
    pub monitor_pid: u32,
    /// The pid 1 of the pod's PID namespace (see [`PodRecord::pod_init_pid`]).
    pub pod_init_pid: Option<u32>,
}

/// What a setup has taken so far, for its rollback.
#[derive(Default)]
struct Taken {
    cgroup: bool,
    namespaces: Option<PodNamespaces>,
    shm: bool,
    network: bool,
    monitor: bool,
}

/// What a pod with a user namespace of its own needs: a handler that can run its containers
/// there, and namespaces of its own for the user namespace to own (the kubelet refuses
/// `hostNetwork`, `hostIPC` and `hostPID` with `hostUsers: false` too).
fn check_user_namespace(config: &PodConfig, handlers: &Handlers) -> Result<()> {
    handlers.user_namespaces(&config.runtime_handler)?;
    let ns = &config.namespaces;
    for (mode, what) in [(ns.network, "network"), (ns.ipc, "IPC"), (ns.pid, "PID")] {
        if mode == NamespaceMode::Node {
            return Err(Error::InvalidArgument(format!(
                "a pod with a user namespace of its own cannot share the node's {what} namespace"
            )));
        }
    }
    Ok(())
}

/// The pod's bandwidth limits, from kubelet's annotations.
fn bandwidth(config: &PodConfig) -> Result<Option<crate::cni::Bandwidth>> {
    let annotations: std::collections::HashMap<String, String> =
        config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::cni::Bandwidth::from_annotations(&annotations)
}

/// Failure injection for the rollback tests: in debug builds, `BERTH_FAILPOINTS=pod.cgroup,…`
/// makes the named steps fail. Release builds have no failpoints.
fn failpoint(name: &str) -> Result<()> {
    #[cfg(debug_assertions)]
    {
        static POINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let points = POINTS.get_or_init(|| {
            std::env::var("BERTH_FAILPOINTS")
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        });
        if points.iter().any(|p| p == name) {
            return Err(Error::Internal(format!("failpoint {name}")));
        }
    }
    let _ = name;
    Ok(())
}
