//! The runtime as berthd holds it: what this node can run and whether it is ready to.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use berth_images::ImageService;

use crate::cgroups::CgroupLayout;
use crate::cni::{self, Cni, NetworkLookup};
use crate::config::{CdiConfig, CgroupConfig, CgroupDriver, CniConfig, OciRuntimeConfig};
use crate::container::{
    ContainerFilter, ContainerRecord, ContainerState, Containers, ContainersOptions,
};
use crate::error::Error;
use crate::events::Events;
use crate::handlers::{HandlerInfo, Handlers};
use crate::pod::Pods;
use crate::pod::{PodFilter, PodRecord, PodState};
use crate::stats::{self, ContainerStats, PodStats, Stats, Target};
use crate::util::blocking;
use crate::Result;

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub root: PathBuf,
    pub state: PathBuf,
    pub cgroup: CgroupConfig,
    pub cni: CniConfig,
    pub cdi: CdiConfig,
    /// The external OCI runtimes offered as handlers beside the embedded executor.
    pub runtimes: BTreeMap<String, OciRuntimeConfig>,
    /// The binary whose `monitor` subcommand runs a pod's monitor: `berth-monitor`, or berthd's
    /// own (`/proc/self/exe`, which stays valid when the file is replaced by an upgrade).
    pub monitor_exe: PathBuf,
}

/// Why the network is not ready, in the words the kubelet shows to users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkStatus {
    Ready,
    NotReady { message: String },
}

pub struct Runtime {
    options: RuntimeOptions,
    cgroups: Arc<CgroupLayout>,
    handlers: Arc<Handlers>,
    pods: Pods,
    containers: Containers,
    stats: Arc<Stats>,
}

impl Runtime {
    pub fn new(options: RuntimeOptions, images: Arc<ImageService>) -> Result<Self> {
        let cgroups = CgroupLayout::detect()?;
        tracing::info!(
            mode = ?cgroups.mode,
            hierarchies = cgroups.hierarchies.len(),
            nest_under_self = options.cgroup.nest_under_self,
            "cgroup layout detected"
        );
        let cgroups = Arc::new(cgroups);
        let cni = Cni::new(
            options.cni.conf_dir.clone(),
            options.cni.bin_dirs.clone(),
            options.root.join("cni-cache"),
        );
        // Idmapping depends on the file system, so it is probed on the root's, the layers'.
        let handlers = Arc::new(Handlers::probe(&options.runtimes, &options.state, &options.root));
        let pods = Pods::open(
            &options.root,
            &options.state,
            cgroups.clone(),
            options.cgroup.nest_under_self,
            cni,
            handlers.clone(),
            options.monitor_exe.clone(),
        )?;
        let containers = Containers::open(
            ContainersOptions {
                root: options.root.clone(),
                state: options.state.clone(),
                cgroups: cgroups.clone(),
                nest: options.cgroup.nest_under_self,
                handlers: handlers.clone(),
                events: Arc::new(Events::default()),
                cdi: options.cdi.clone(),
            },
            images,
            pods.clone(),
        )?;
        let stats = Arc::new(Stats::new(cgroups.clone(), options.cgroup.nest_under_self));
        Ok(Runtime { options, cgroups, handlers, pods, containers, stats })
    }

    /// StopPodSandbox: the pod's containers, then the pod.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        // Idempotent as the CRI asks: a pod that is gone is as stopped as it gets (containerd
        // and CRI-O answer OK too; the kubelet retries stops of pods it half forgot).
        let Some(id) = self.pods.find_id(id)? else { return Ok(()) };
        self.containers.stop_pod(&id).await?;
        self.pods.stop(&id).await
    }

    /// RemovePodSandbox: the pod's containers, then the pod. An unknown pod is fine.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let Some(id) = self.pods.find_id(id)? else { return Ok(()) };
        self.containers.remove_pod(&id).await?;
        self.pods.remove(&id).await
    }

    /// ContainerStats: any container, from whatever its cgroup still holds.
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let record = self.containers.record(id)?;
        let mut all = self.containers_stats(vec![record], false).await?;
        all.pop().ok_or_else(|| Error::Internal("no stats read".into()))
    }

    /// ListContainerStats: the created and running containers `filter` matches.
    pub async fn list_container_stats(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStats>> {
        let records = self.containers.list(filter).await;
        let live = records.into_iter().filter(|r| is_live(&r.state)).collect();
        self.containers_stats(live, false).await
    }

    /// PodSandboxStats: the pod's cgroup, network and live containers.
    pub async fn pod_stats(&self, id: &str) -> Result<PodStats> {
        let id = self.pods.resolve_id(id)?;
        let record = self
            .pods
            .record(&id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))?;
        let mut all = self.pods_stats(vec![record], false).await?;
        all.pop().ok_or_else(|| Error::Internal("no stats read".into()))
    }

    /// ListPodSandboxStats: the ready pods `filter` matches.
    pub async fn list_pod_stats(&self, filter: &PodFilter) -> Result<Vec<PodStats>> {
        let pods = self.pods.list(filter).await;
        self.pods_stats(pods.into_iter().filter(|p| p.state == PodState::Ready).collect(), false)
            .await
    }

    /// ListPodSandboxMetrics: every ready pod and its live containers, the containers with the
    /// figures only metrics use (see [`crate::stats::CgroupDetail`]).
    pub async fn pod_metrics(&self) -> Result<Vec<PodStats>> {
        let pods = self.pods.list(&PodFilter::default()).await;
        self.pods_stats(pods.into_iter().filter(|p| p.state == PodState::Ready).collect(), true)
            .await
    }

    /// How many pod monitors are alive.
    pub async fn live_monitors(&self) -> usize {
        self.pods
            .list(&PodFilter::default())
            .await
            .iter()
            .filter_map(|p| p.monitor_pid)
            .filter(|&pid| stats::process_alive(pid))
            .count()
    }

    async fn containers_stats(
        &self,
        records: Vec<ContainerRecord>,
        detail: bool,
    ) -> Result<Vec<ContainerStats>> {
        let stats = self.stats.clone();
        let uppers: Vec<PathBuf> =
            records.iter().map(|r| self.containers.upper_dir(&r.id)).collect();
        blocking(move || {
            let targets: Vec<Target> = records
                .iter()
                .map(|r| Target { key: format!("container/{}", r.id), cgroup: r.cgroup.clone() })
                .collect();
            let cgroups = stats.cgroups(&targets, detail);
            Ok(records
                .into_iter()
                .zip(cgroups)
                .zip(uppers)
                .map(|((record, cgroup), upper)| ContainerStats {
                    record,
                    cgroup,
                    writable_layer: stats.layer(&upper),
                })
                .collect())
        })
        .await
    }

    async fn pods_stats(&self, pods: Vec<PodRecord>, detail: bool) -> Result<Vec<PodStats>> {
        let mut netns = Vec::with_capacity(pods.len());
        let mut containers = Vec::with_capacity(pods.len());
        let mut all_records = Vec::new();
        for pod in &pods {
            netns.push(self.pods.status(&pod.id).await.ok().and_then(|d| d.netns));
            let filter = ContainerFilter { pod_id: Some(pod.id.clone()), ..Default::default() };
            let live: Vec<ContainerRecord> = self
                .containers
                .list(&filter)
                .await
                .into_iter()
                .filter(|r| r.pod_id == pod.id && is_live(&r.state))
                .collect();
            containers.push(live.len());
            all_records.extend(live);
        }
        let mut container_stats = self.containers_stats(all_records, detail).await?.into_iter();
        let stats = self.stats.clone();
        let read = blocking(move || {
            let targets: Vec<Target> = pods
                .iter()
                .map(|p| Target { key: format!("pod/{}", p.id), cgroup: p.cgroup.clone() })
                .collect();
            // Metrics of a pod are its network's; only its containers' detail is used.
            let cgroups = stats.cgroups(&targets, false);
            Ok(pods
                .into_iter()
                .zip(cgroups)
                .zip(netns)
                .map(|((record, cgroup), netns)| {
                    let network = netns.and_then(|path| match stats::network(&path) {
                        Ok(network) => Some(network),
                        Err(err) => {
                            tracing::debug!(pod_id = %record.id, error = %err, "pod network stats");
                            None
                        }
                    });
                    (record, cgroup, network)
                })
                .collect::<Vec<_>>())
        })
        .await?;
        Ok(read
            .into_iter()
            .zip(containers)
            .map(|((record, cgroup, network), n)| PodStats {
                record,
                cgroup,
                network,
                containers: container_stats.by_ref().take(n).collect(),
            })
            .collect())
    }

    /// What a clean stop leaves behind: nothing of berth's own when no pod is left.
    pub fn close(&self) -> Result<()> {
        self.pods.close()
    }

    pub fn pods(&self) -> &Pods {
        &self.pods
    }

    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    pub fn cgroup_layout(&self) -> &CgroupLayout {
        &self.cgroups
    }

    pub fn cgroup_driver(&self) -> CgroupDriver {
        self.options.cgroup.driver
    }

    /// Read afresh on every call: an operator (or a CNI daemonset) may install the config
    /// at any time after berthd started, and the kubelet polls Status every few seconds.
    pub fn network_status(&self) -> NetworkStatus {
        let cni = &self.options.cni;
        match cni::load_default_network(&cni.conf_dir) {
            Ok(NetworkLookup::Found(net)) => match cni::check_plugins(&net, &cni.bin_dirs) {
                Ok(()) => NetworkStatus::Ready,
                Err(message) => NetworkStatus::NotReady { message },
            },
            Ok(NetworkLookup::Missing { reason }) => NetworkStatus::NotReady { message: reason },
            Err(err) => NetworkStatus::NotReady { message: err.to_string() },
        }
    }

    /// The handlers a pod may name in `runtime_handler`, with their features.
    pub fn handlers(&self) -> Vec<HandlerInfo> {
        self.handlers.list()
    }

    /// The handlers' binaries, versions, and why a configured one is not offered.
    pub fn handlers_summary(&self) -> serde_json::Value {
        self.handlers.summary()
    }
}

fn is_live(state: &ContainerState) -> bool {
    matches!(state, ContainerState::Created | ContainerState::Running { .. })
}
