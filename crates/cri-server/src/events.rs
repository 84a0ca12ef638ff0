//! GetContainerEvents: the runtime's container events, each with the pod's status and its
//! containers' statuses, streamed to the caller.
//!
//! Each subscriber has a task that turns the runtime's events into CRI messages and hands them
//! on through a small channel. A client that reads too slowly first fills that channel, then
//! falls behind the runtime's bounded broadcast buffer: its stream then ends with
//! RESOURCE_EXHAUSTED (kubelet relists and subscribes again); the runtime never waits for it.

use std::sync::Arc;

use berth_runtime::events::{ContainerEvent, ContainerEventKind};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::convert::{container, pod};
use crate::cri::Cri;
use crate::proto::{ContainerEventResponse, ContainerEventType};

/// Messages converted ahead of a slow reader.
const CHANNEL: usize = 16;

pub fn subscribe(cri: &Cri) -> ReceiverStream<Result<ContainerEventResponse, Status>> {
    let mut events = cri.runtime.containers().subscribe();
    let stopping = cri.stopping.clone();
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let stop = stopped(stopping);
        tokio::pin!(stop);
        loop {
            let received = tokio::select! {
                received = events.recv() => received,
                // UNAVAILABLE: the kubelet subscribes again, to the next berthd.
                () = &mut stop => {
                    let _ = tx.send(Err(Status::unavailable("berthd is stopping"))).await;
                    return;
                }
            };
            let message = match received {
                Ok(event) => Ok(response(&event)),
                Err(RecvError::Closed) => return,
                Err(RecvError::Lagged(missed)) => Err(Status::resource_exhausted(format!(
                    "the container event stream fell {missed} events behind; subscribe again"
                ))),
            };
            let last = message.is_err();
            if tx.send(message).await.is_err() || last {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Resolves once berthd is stopping.
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    loop {
        let now = *stopping.borrow_and_update();
        if now {
            return;
        }
        if stopping.changed().await.is_err() {
            // The sender is gone with the daemon: nothing will stop this stream but its reader.
            std::future::pending::<()>().await;
        }
    }
}

fn response(event: &Arc<ContainerEvent>) -> ContainerEventResponse {
    let kind = match event.kind {
        ContainerEventKind::Created => ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: kind.into(),
        created_at: event.at_nanos,
        pod_sandbox_status: event.pod.as_ref().map(pod::pod_status),
        containers_statuses: event.containers.iter().map(container::container_status).collect(),
    }
}
