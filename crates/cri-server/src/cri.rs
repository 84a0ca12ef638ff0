//! The state every RPC file shares, below them all and below `service.rs`, which delegates to
//! them.

use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::streaming::StreamingServer;

/// The state the CRI services share; cheap to clone into each tonic service.
#[derive(Clone)]
pub struct Cri {
    pub(crate) config: Arc<Config>,
    pub(crate) runtime: Arc<berth_runtime::Runtime>,
    pub(crate) images: Arc<berth_images::ImageService>,
    pub(crate) streaming: Arc<StreamingServer>,
    pub(crate) metrics: Arc<Metrics>,
    /// Turns true when berthd stops: calls that would otherwise never end (the container event
    /// stream) end then, so that a stop does not wait out its grace period for them.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Cri {
    pub fn new(
        config: Arc<Config>,
        runtime: Arc<berth_runtime::Runtime>,
        images: Arc<berth_images::ImageService>,
        streaming: Arc<StreamingServer>,
    ) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        Cri {
            config,
            runtime,
            images,
            streaming,
            metrics: Arc::new(Metrics::new()),
            stopping,
            stop: Arc::new(stop),
        }
    }

    /// Ends the calls that only end with berthd (see `stopping`).
    pub fn stop_streams(&self) {
        self.stop.send_replace(true);
    }

    /// berthd's own metrics, which the RPC layer feeds.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}
