//! The endpoint: `/metrics` over HTTP, each scrape reading the node's figures through the CRI
//! state first. Kept apart from the counters in `mod.rs`, which the CRI state holds, so that
//! the counters depend on nothing of that state.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use berth_runtime::container::{ContainerFilter, ContainerState};
use berth_runtime::pod::{PodFilter, PodState};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::*;
use crate::cri::Cri;

impl Metrics {
    /// The exposition: the node's figures read now, then everything encoded.
    pub async fn render(&self, cri: &Cri) -> String {
        let figures = NodeFigures::read(cri).await;
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = figures;
        self.encode()
    }
}

/// A client that sends no request line within this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl NodeFigures {
    async fn read(cri: &Cri) -> NodeFigures {
        let pods = cri.runtime.pods().list(&PodFilter::default()).await;
        let ready = pods.iter().filter(|p| p.state == PodState::Ready).count() as u64;
        let containers = cri.runtime.containers().list(&ContainerFilter::default()).await;
        let mut by_state = [("created", 0), ("running", 0), ("exited", 0), ("unknown", 0)];
        for record in &containers {
            let state = match record.state {
                ContainerState::Created => 0,
                ContainerState::Running { .. } => 1,
                ContainerState::Exited(_) => 2,
                ContainerState::Unknown => 3,
            };
            by_state[state].1 += 1;
        }
        NodeFigures {
            pods: vec![("ready", ready), ("notready", pods.len() as u64 - ready)],
            containers: by_state.to_vec(),
            monitors: cri.runtime.live_monitors().await as u64,
            oom_kills: cri.runtime.containers().oom_kills(),
            pull_bytes: cri.images.downloaded_bytes(),
        }
    }
}

/// Binds `address` and serves `/metrics` from then on; `None` when the address is empty (off).
pub async fn start(cri: &Cri, address: &str) -> std::io::Result<Option<SocketAddr>> {
    if address.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "serving berthd's metrics at /metrics");
    tokio::spawn(serve(listener, cri.clone()));
    Ok(Some(local))
}

async fn serve(listener: TcpListener, cri: Cri) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %err, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cri = cri.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let cri = cri.clone();
                async move { Ok::<_, Infallible>(respond(&cri, request).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(error = %err, "metrics connection");
            }
        });
    }
}

async fn respond(cri: &Cri, request: Request<Incoming>) -> Response<String> {
    let reply = |status: StatusCode, text: &str| {
        let mut response = Response::new(text.to_string());
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found; try /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(cri.metrics.render(cri).await);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    response
}
