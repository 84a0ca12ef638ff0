//! berthd's own Prometheus metrics, served at `http://<metrics.address>/metrics` in the text
//! exposition format when the config names an address (off by default).
//!
//! What berthd itself does is counted as it happens: every RPC by method and gRPC code (count
//! and latency, from the RPC layer), every image pull (duration by outcome). What the node holds
//! is read at scrape time, so that it can never drift from the truth: pods and containers by
//! state, live pod monitors, containers the OOM killer stopped, layer bytes downloaded.
//!
//! The container metrics the kubelet shows on `/metrics/cadvisor` are not here: they go through
//! the CRI (ListPodSandboxMetrics, in `stats.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tonic::Code;

mod endpoint;

pub use endpoint::start;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PullLabels {
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metrics berthd keeps; cheap to share. Always kept (counting is a few atomics), served
/// only when configured.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: HistogramFamily<RpcLabels>,
    pull_seconds: HistogramFamily<PullLabels>,
    node: Arc<Mutex<NodeFigures>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn rpc_histogram() -> Histogram {
    // 0.5 ms to about a minute: from a cached status to a long ExecSync.
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

fn pull_histogram() -> Histogram {
    // 0.1 s to about 7 minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 13))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "berth_rpc_requests",
            "CRI calls served, by method and gRPC code",
            rpcs.clone(),
        );
        let rpc_seconds: HistogramFamily<RpcLabels> = Family::new_with_constructor(rpc_histogram);
        registry.register(
            "berth_rpc_duration_seconds",
            "Time to answer a CRI call (to its first message for a stream), by method and gRPC code",
            rpc_seconds.clone(),
        );
        let pull_seconds: HistogramFamily<PullLabels> =
            Family::new_with_constructor(pull_histogram);
        registry.register(
            "berth_image_pull_duration_seconds",
            "Time PullImage took, by outcome (success, failure)",
            pull_seconds.clone(),
        );
        let node = Arc::new(Mutex::new(NodeFigures::default()));
        registry.register_collector(Box::new(NodeCollector(node.clone())));
        Metrics { registry, rpcs, rpc_seconds, pull_seconds, node }
    }

    /// One CRI call that `path` (`/runtime.v1.RuntimeService/Version`) names, answered with
    /// `code` after `elapsed`.
    pub fn observe_rpc(&self, path: &str, code: Code, elapsed: Duration) {
        let labels =
            RpcLabels { method: method_of(path).to_string(), code: code_name(code).into() };
        self.rpcs.get_or_create(&labels).inc();
        self.rpc_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn observe_pull(&self, success: bool, elapsed: Duration) {
        let outcome = if success { "success" } else { "failure" };
        let labels = PullLabels { outcome: outcome.into() };
        self.pull_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(error = %err, "encoding metrics");
        }
        text
    }
}

/// The RPC name of a gRPC path, or `unknown` for paths outside the CRI, so that a client
/// cannot make up label values without end.
fn method_of(path: &str) -> &str {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return "unknown";
    };
    let known_service = matches!(service, "runtime.v1.RuntimeService" | "runtime.v1.ImageService");
    let plain = !method.is_empty() && method.bytes().all(|b| b.is_ascii_alphanumeric());
    if known_service && plain {
        method
    } else {
        "unknown"
    }
}

/// The code as gRPC's own Prometheus interceptors name it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// What the node holds, as of the last scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NodeFigures {
    pods: Vec<(&'static str, u64)>,
    containers: Vec<(&'static str, u64)>,
    monitors: u64,
    oom_kills: u64,
    pull_bytes: u64,
}

#[derive(Debug)]
struct NodeCollector(Arc<Mutex<NodeFigures>>);

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let figures = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        by_state(
            &mut encoder,
            "berth_pods",
            "Pod sandboxes, by state (ready, notready)",
            &figures.pods,
        )?;
        by_state(
            &mut encoder,
            "berth_containers",
            "Containers, by state (created, running, exited, unknown)",
            &figures.containers,
        )?;
        let monitors = ConstGauge::new(figures.monitors as i64);
        monitors.encode(encoder.encode_descriptor(
            "berth_monitors",
            "Pod monitor processes alive",
            None,
            MetricType::Gauge,
        )?)?;
        let oom = ConstCounter::new(figures.oom_kills);
        oom.encode(encoder.encode_descriptor(
            "berth_container_oom_events",
            "Containers stopped by the kernel's OOM killer since berthd started",
            None,
            MetricType::Counter,
        )?)?;
        let bytes = ConstCounter::new(figures.pull_bytes);
        bytes.encode(encoder.encode_descriptor(
            "berth_image_pull_bytes",
            "Image layer bytes downloaded from registries since berthd started",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}

fn by_state(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family: MetricEncoder =
        encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (state, count) in counts {
        let labels = [("state", *state)];
        ConstGauge::new(*count as i64).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes() {
        assert_eq!(method_of("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(method_of("/runtime.v1.ImageService/PullImage"), "PullImage");
        assert_eq!(method_of("/other.Service/Version"), "unknown");
        assert_eq!(method_of("/runtime.v1.RuntimeService/a b"), "unknown");
        assert_eq!(method_of("/"), "unknown");
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::NotFound), "NotFound");
    }

    #[test]
    fn exposition_has_the_families() {
        let metrics = Metrics::new();
        metrics.observe_rpc(
            "/runtime.v1.RuntimeService/Version",
            Code::Ok,
            Duration::from_millis(2),
        );
        metrics.observe_rpc(
            "/runtime.v1.RuntimeService/Version",
            Code::Ok,
            Duration::from_millis(1),
        );
        metrics.observe_rpc(
            "/runtime.v1.RuntimeService/ContainerStatus",
            Code::NotFound,
            Duration::from_millis(1),
        );
        metrics.observe_pull(true, Duration::from_millis(300));
        *metrics.node.lock().unwrap() = NodeFigures {
            pods: vec![("ready", 2), ("notready", 1)],
            containers: vec![("running", 3)],
            monitors: 2,
            oom_kills: 1,
            pull_bytes: 4096,
        };
        let text = metrics.encode();
        for line in [
            "berth_rpc_requests_total{method=\"Version\",code=\"OK\"} 2",
            "berth_rpc_requests_total{method=\"ContainerStatus\",code=\"NotFound\"} 1",
            "berth_rpc_duration_seconds_count{method=\"Version\",code=\"OK\"} 2",
            "berth_image_pull_duration_seconds_count{outcome=\"success\"} 1",
            "berth_pods{state=\"ready\"} 2",
            "berth_containers{state=\"running\"} 3",
            "berth_monitors 2",
            "berth_container_oom_events_total 1",
            "berth_image_pull_bytes_total 4096",
            "# TYPE berth_rpc_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
