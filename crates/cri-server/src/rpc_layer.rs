//! One tower layer around every RPC: its tracing span (with the ids handlers record into it),
//! its latency and outcome in the log and in berthd's metrics, a panic turned into INTERNAL
//! for that call alone, and the client's deadline (`grpc-timeout`): a call that outlives it is
//! dropped and answered DEADLINE_EXCEEDED, as a Go gRPC server's handler would answer. (tonic's
//! own transport answers CANCELLED there, which critest and the kubelet do not expect; berthd
//! serves with hyper directly, so this layer is the only one that reads the header.) Handlers
//! stay free of logging boilerplate.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{field, Instrument, Span};

use crate::metrics::Metrics;

/// RPCs that change state: logged at INFO. The rest are queries the kubelet repeats every few
/// seconds, logged at DEBUG so that a node's log is not all polling.
const MUTATING: &[&str] = &[
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "UpdateRuntimeConfig",
    "CheckpointContainer",
    "UpdatePodSandboxResources",
    "PullImage",
    "RemoveImage",
];

#[derive(Debug, Clone, Default)]
pub struct RpcLayer {
    metrics: Option<Arc<Metrics>>,
}

impl RpcLayer {
    /// Also counts every call, by method and code, in `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> RpcLayer {
        RpcLayer { metrics: Some(metrics) }
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<http::Request<B>> for RpcService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let rpc = rpc_name(&path).to_string();
        let deadline = request.headers().get(GRPC_TIMEOUT).and_then(grpc_timeout);
        let metrics = self.metrics.clone();
        // Handlers fill the ids in with `Span::current().record(..)`.
        let span = tracing::info_span!(
            "rpc",
            rpc = %rpc,
            pod_id = field::Empty,
            container_id = field::Empty,
            image = field::Empty,
        );
        // The service that was polled ready is the one to call; keep a fresh clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        Box::pin(
            async move {
                let call = AssertUnwindSafe(async move { inner.call(request).await });
                let call = async move {
                    match deadline {
                        Some(deadline) => tokio::time::timeout(deadline, call.catch_unwind())
                            .await
                            .map_err(|_| deadline),
                        None => Ok(call.catch_unwind().await),
                    }
                };
                let response = match call.await {
                    Err(deadline) => tonic::Status::deadline_exceeded(format!(
                        "berthd: {rpc}: the client's deadline ({deadline:?}) passed"
                    ))
                    .into_http(),
                    Ok(Ok(response)) => response?,
                    Ok(Err(panic)) => {
                        let reason = panic_message(panic.as_ref());
                        tracing::error!(panic = %reason, "rpc handler panicked");
                        tonic::Status::internal(format!(
                            "berthd: {rpc} failed: internal error: {reason}"
                        ))
                        .into_http()
                    }
                };
                if let Some(metrics) = metrics {
                    metrics.observe_rpc(&path, response_code(&response), started.elapsed());
                }
                log_outcome(&rpc, &response, started);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The gRPC `grpc-timeout` header: at most eight digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). A malformed one is no deadline, as in other gRPC servers.
fn grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// "/runtime.v1.RuntimeService/Version" → "Version".
fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().filter(|name| !name.is_empty()).unwrap_or(path)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic".to_string()
    }
}

/// An error is sent "trailers-only": its status is in the headers. A success carries its status
/// in trailers that are not written yet, so no grpc-status header means OK.
fn response_code(response: &http::Response<tonic::body::Body>) -> Code {
    tonic::Status::from_header_map(response.headers()).map_or(Code::Ok, |status| status.code())
}

fn log_outcome(rpc: &str, response: &http::Response<tonic::body::Body>, started: Instant) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    // An error is sent "trailers-only": its status is in the headers. A success carries its
    // status in trailers that are not written yet, so no grpc-status header means OK.
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        if MUTATING.contains(&rpc) {
            tracing::info!(latency_ms, "rpc ok");
        } else {
            tracing::debug!(latency_ms, "rpc ok");
        }
        return;
    };
    let code = status.code();
    let message = status.message();
    match code {
        Code::Ok if MUTATING.contains(&rpc) => tracing::info!(latency_ms, "rpc ok"),
        Code::Ok => tracing::debug!(latency_ms, "rpc ok"),
        // Asking after something that is gone is routine for the kubelet.
        Code::NotFound | Code::Unimplemented => {
            tracing::debug!(latency_ms, ?code, message, "rpc failed")
        }
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(latency_ms, ?code, message, "rpc failed")
        }
        _ => tracing::warn!(latency_ms, ?code, message, "rpc failed"),
    }
}

/// Records the ids of a request on the current RPC span, so every log line of the call has them.
pub fn record_pod(id: &str) {
    Span::current().record("pod_id", id);
}

pub fn record_container(id: &str) {
    Span::current().record("container_id", id);
}

pub fn record_image(reference: &str) {
    Span::current().record("image", reference);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test]
    async fn a_panicking_handler_becomes_internal_and_the_service_lives_on() {
        let handler = tower::service_fn(|request: http::Request<()>| async move {
            if request.uri().path().ends_with("/Boom") {
                panic!("handler exploded");
            }
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let metrics = Arc::new(Metrics::new());
        let mut service = RpcLayer::with_metrics(metrics.clone()).layer(handler);

        let request =
            http::Request::builder().uri("/runtime.v1.RuntimeService/Boom").body(()).unwrap();
        let response = service.call(request).await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a grpc status");
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("Boom"), "{}", status.message());
        assert!(status.message().contains("handler exploded"), "{}", status.message());

        let request =
            http::Request::builder().uri("/runtime.v1.RuntimeService/Version").body(()).unwrap();
        let response = service.call(request).await.unwrap();
        assert!(tonic::Status::from_header_map(response.headers()).is_none());
        let text = metrics.encode();
        for line in [
            "berth_rpc_requests_total{method=\"Boom\",code=\"Internal\"} 1",
            "berth_rpc_requests_total{method=\"Version\",code=\"OK\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_call_past_the_clients_deadline_is_deadline_exceeded() {
        let handler = tower::service_fn(|_request: http::Request<()>| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut service = RpcLayer::default().layer(handler);
        let request = http::Request::builder()
            .uri("/runtime.v1.ImageService/PullImage")
            .header(GRPC_TIMEOUT, "1m")
            .body(())
            .unwrap();
        let started = Instant::now();
        let response = service.call(request).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let status = tonic::Status::from_header_map(response.headers()).expect("a grpc status");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("PullImage"), "{}", status.message());
    }

    #[test]
    fn grpc_timeouts() {
        let parse = |text: &str| grpc_timeout(&http::HeaderValue::from_str(text).unwrap());
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("995u"), Some(Duration::from_micros(995)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None, "nine digits");
        assert_eq!(parse("5"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("-5S"), None);
    }

    #[test]
    fn rpc_names() {
        assert_eq!(rpc_name("/runtime.v1.RuntimeService/Version"), "Version");
        assert_eq!(rpc_name("/"), "/");
    }
}
