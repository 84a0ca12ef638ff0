//! Stop, remove and resource updates: the monitor's signal and the wait for the exit, what
//! a removal gives back, and new limits written to the cgroup and the spec all or nothing.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::cgroups::container::ContainerCgroup;
use crate::container::image_volume;
use crate::container::spec;
use crate::error::{Error, Result};
use crate::events::ContainerEventKind;
use crate::handlers::Handler;
use crate::monitor::proto::{ContainerStatus as MonitorStatus, Reply, Request};
use crate::monitor::MonitorClient;
use crate::util::{blocking, now_nanos, remove_dir};

impl Inner {
    pub(super) async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
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
    pub(super) async fn stop_record(
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

    pub(super) async fn wait(
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
    pub(super) fn gone(&self, mut record: ContainerRecord) -> ContainerRecord {
        record.state = match read_exit(&self.exit_file(&record.id)) {
            Some(info) => ContainerState::Exited(info),
            None => ContainerState::Unknown,
        };
        record
    }

    pub(super) async fn remove(&self, id: &str) -> Result<()> {
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

    pub(super) async fn update_resources(&self, id: &str, requested: Resources) -> Result<()> {
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
        let hugetlb = self.cgroups.has_hugetlb(self.nest);
        let limits = spec::limits(&requested, hugetlb)?;
        let merged = merge_resources(&record.config.resources, &requested);
        let spec_path = self.bundle(&record.id).join("config.json");
        record.config.resources = merged.clone();

        let (layout, nest, path) = (self.cgroups.clone(), self.nest, record.cgroup.clone());
        let spec_file = spec_path.clone();
        let (applied, old_spec) = blocking(move || {
            let old_spec = std::fs::read(&spec_file).map_err(Error::io("reading", &spec_file))?;
            let new_spec = respec(&old_spec, &merged, hugetlb)?;
            let cgroup = ContainerCgroup::open(&layout, &path, nest)?;
            let applied = cgroup.apply(&limits)?;
            if let Err(err) = berth_fsutil::atomic_write(&spec_file, &new_spec) {
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
                if let Err(err) = berth_fsutil::atomic_write(&spec_path, &old_spec) {
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
    pub(super) fn forget_runtime_state(&self, record: &ContainerRecord) -> Result<()> {
        let handler = self.pods.handler_of(&record.pod_id).unwrap_or_default();
        match self.handlers.get(&handler) {
            Ok(Handler::Oci(runtime)) => remove_dir(&runtime.root.join(&record.id)),
            _ => Ok(()),
        }
    }
}

/// The resources a container has after an update: each field the update sets replaces the
/// old one, as containerd applies an update to the spec. A memory limit brings its swap
/// setting along (zero: memory+swap equal to the limit), so that an old swap limit below a
/// raised memory limit is not kept. `oom_score_adj` stays.
pub(super) fn merge_resources(old: &Resources, new: &Resources) -> Resources {
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
pub(super) fn respec(spec: &[u8], resources: &Resources, hugetlb: bool) -> Result<Vec<u8>> {
    let mut spec: oci_spec::runtime::Spec = serde_json::from_slice(spec)
        .map_err(|err| Error::Internal(format!("reading the container's OCI spec: {err}")))?;
    let built = spec::limits(resources, hugetlb)?;
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
pub(super) fn undo(applied: &crate::cgroups::container::Applied) {
    if let Err(err) = applied.revert() {
        tracing::error!(error = %err, "putting a container's old cgroup limits back");
    }
}

/// The bundle, after its rootfs and idmapped volumes, which the monitor mounts for an OCI
/// runtime: removing files through those mounts would delete the container's own, or a
/// volume's.
pub(super) fn remove_bundle(bundle: &Path) -> Result<()> {
    crate::executor::unmount_rootfs(&bundle.join("rootfs"))?;
    crate::executor::unmount_idmapped(bundle)?;
    image_volume::unmount_all(bundle)?;
    remove_dir(bundle)
}
