//! Status, list and events: records refreshed from the exit files the monitors write, and the
//! events that announce each change.

use super::*;
use crate::error::Result;
use crate::events::{ContainerEvent, ContainerEventKind};
use crate::handlers::Handler;
use crate::util::now_nanos;

impl Inner {
    pub(super) fn status(&self, id: &str, verbose: bool) -> Result<ContainerDetails> {
        let entry = self.store.get(id)?;
        let record = self.refreshed(&entry.record());
        let info = verbose.then(|| self.info(&record));
        Ok(ContainerDetails { record, info })
    }

    pub(super) fn info(&self, record: &ContainerRecord) -> serde_json::Value {
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

    pub(super) fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
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
    pub(super) fn refreshed(&self, record: &ContainerRecord) -> ContainerRecord {
        self.refresh(record, false)
    }

    /// `refreshed`, telling the exit found as a Stopped event (held for the first subscriber
    /// when `recovering`).
    pub(super) fn refresh(&self, record: &ContainerRecord, recovering: bool) -> ContainerRecord {
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
    pub(super) fn poll_exits(&self) {
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

    pub(super) fn publish_stopped(&self, record: &ContainerRecord, recovering: bool) {
        let at = match &record.state {
            ContainerState::Exited(info) => info.finished_at_nanos,
            _ => now_nanos(),
        };
        self.publish(ContainerEventKind::Stopped, record, at, recovering);
    }

    /// Publishes an event about `record` with its pod and the pod's containers as they are
    /// now (`record` standing for its own entry, which may not be saved yet).
    pub(super) fn publish(
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
}
