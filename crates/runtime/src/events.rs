//! Container lifecycle events (GetContainerEvents): created, started, stopped, deleted, each
//! with the pod's record and its containers' records as they were when it happened.
//!
//! Any number of subscribers share one tokio broadcast channel with a bounded buffer, so that
//! publishing never waits: a subscriber that falls more than the buffer behind is told so (its
//! receiver reports `Lagged`) and cri-server ends its stream, as kubelet then relists anyway.
//!
//! Exits found while recovering at start are published before anyone can have subscribed; they
//! are held and handed out once, to the subscribers present when the first one subscribes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::container::{ContainerRecord, ContainerState};
use crate::pod::PodRecord;

/// Events a subscriber may fall behind by before its stream is ended.
pub const EVENT_BUFFER: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub kind: ContainerEventKind,
    /// When it happened (for Stopped: the exit's time).
    pub at_nanos: i64,
    /// The pod's record; `None` when it is gone.
    pub pod: Option<PodRecord>,
    /// The pod's containers at that moment (without the deleted one for Deleted).
    pub containers: Vec<ContainerRecord>,
}

/// The event bus; cheap to share behind an `Arc`.
pub struct Events {
    tx: broadcast::Sender<Arc<ContainerEvent>>,
    /// Events of the recovery at start, until the first subscriber; `None` afterwards.
    held: Mutex<Option<Vec<Arc<ContainerEvent>>>>,
    /// Containers whose Stopped event went out: an exit can be noticed by several paths (a
    /// stop, the exit watcher, a status call) and must be told once.
    stopped: Mutex<HashSet<String>>,
    /// Stopped events whose exit the OOM killer caused, since start (for berthd's metrics).
    oom_kills: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(EVENT_BUFFER)
    }
}

impl Events {
    pub fn new(capacity: usize) -> Events {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Events {
            tx,
            held: Mutex::new(Some(Vec::new())),
            stopped: Mutex::new(HashSet::new()),
            oom_kills: AtomicU64::new(0),
        }
    }

    /// A new subscriber: it sees every event published from now on (and the held recovery
    /// events, if it is the first).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ContainerEvent>> {
        let rx = self.tx.subscribe();
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        for event in held.unwrap_or_default() {
            let _ = self.tx.send(event);
        }
        rx
    }

    /// Sends `event` to the subscribers there are (none is fine). A Stopped event is sent once
    /// per container; a Deleted one forgets that.
    pub fn publish(&self, event: ContainerEvent) {
        if !self.first_of_its_kind(&event) {
            return;
        }
        tracing::debug!(container_id = %event.container_id, kind = ?event.kind, "container event");
        let _ = self.tx.send(Arc::new(event));
    }

    /// Like `publish`, for recovery at start: kept for the first subscriber when there is none
    /// yet.
    pub fn publish_recovered(&self, event: ContainerEvent) {
        if !self.first_of_its_kind(&event) {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(list) => list.push(Arc::new(event)),
            None => {
                let _ = self.tx.send(Arc::new(event));
            }
        }
    }

    /// Containers stopped by the OOM killer since start, each counted once.
    pub fn oom_kills(&self) -> u64 {
        self.oom_kills.load(Ordering::Relaxed)
    }

    fn first_of_its_kind(&self, event: &ContainerEvent) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        match event.kind {
            ContainerEventKind::Stopped => {
                let first = stopped.insert(event.container_id.clone());
                let oom = event.containers.iter().any(|c| {
                    c.id == event.container_id
                        && matches!(&c.state, ContainerState::Exited(exit) if exit.oom_killed)
                });
                if first && oom {
                    self.oom_kills.fetch_add(1, Ordering::Relaxed);
                }
                first
            }
            ContainerEventKind::Deleted => {
                stopped.remove(&event.container_id);
                true
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast::error::TryRecvError;

    fn event(id: &str, kind: ContainerEventKind) -> ContainerEvent {
        ContainerEvent {
            container_id: id.into(),
            kind,
            at_nanos: 1,
            pod: None,
            containers: Vec::new(),
        }
    }

    #[test]
    fn every_subscriber_gets_every_event_and_stopped_once() {
        let events = Events::new(16);
        let mut a = events.subscribe();
        let mut b = events.subscribe();
        for kind in [
            ContainerEventKind::Created,
            ContainerEventKind::Started,
            ContainerEventKind::Stopped,
            ContainerEventKind::Stopped,
            ContainerEventKind::Deleted,
        ] {
            events.publish(event("c1", kind));
        }
        for rx in [&mut a, &mut b] {
            let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.kind).collect();
            assert_eq!(
                kinds,
                [
                    ContainerEventKind::Created,
                    ContainerEventKind::Started,
                    ContainerEventKind::Stopped,
                    ContainerEventKind::Deleted
                ]
            );
        }
    }

    #[test]
    fn a_slow_subscriber_lags_and_publishing_never_waits() {
        let events = Events::new(4);
        let mut slow = events.subscribe();
        for i in 0..10 {
            events.publish(event(&format!("c{i}"), ContainerEventKind::Created));
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Lagged(6))));
    }

    #[test]
    fn oom_kills_are_counted_once_per_stop() {
        let record = |id: &str, oom_killed: bool| ContainerRecord {
            version: 1,
            id: id.into(),
            name: id.into(),
            pod_id: "p".into(),
            config: Default::default(),
            image: Default::default(),
            log_path: None,
            user: Default::default(),
            stop_signal: 15,
            created_at_nanos: 0,
            started_at_nanos: 0,
            state: ContainerState::Exited(crate::container::ExitInfo {
                exit_code: 137,
                oom_killed,
                ..Default::default()
            }),
            cgroup: String::new(),
        };
        let events = Events::new(16);
        let stopped = |id: &str| ContainerEvent {
            containers: vec![record("c1", true), record("c2", false)],
            ..event(id, ContainerEventKind::Stopped)
        };
        events.publish(stopped("c1"));
        events.publish(stopped("c1"));
        events.publish_recovered(stopped("c2"));
        assert_eq!(events.oom_kills(), 1);
        events.publish(event("c1", ContainerEventKind::Deleted));
        events.publish(stopped("c1"));
        assert_eq!(events.oom_kills(), 2, "a new stop after a delete is a new exit");
    }

    #[test]
    fn recovered_exits_go_to_the_first_subscribers_once() {
        let events = Events::new(16);
        events.publish_recovered(event("c1", ContainerEventKind::Stopped));
        let mut first = events.subscribe();
        assert_eq!(first.try_recv().unwrap().container_id, "c1");
        let mut second = events.subscribe();
        assert!(matches!(second.try_recv(), Err(TryRecvError::Empty)));
        // Recovery after the first subscriber publishes at once.
        events.publish_recovered(event("c2", ContainerEventKind::Stopped));
        assert_eq!(second.try_recv().unwrap().container_id, "c2");
    }
}
