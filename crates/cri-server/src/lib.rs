//! The CRI v1 gRPC services of berth and the daemon that serves them.
//!
//! Architecture invariant: this is the only crate that knows tonic and protobuf. Handlers are
//! thin: they translate a request into calls on `berth_runtime` / `berth_images` and the answer
//! back; every error becomes a status code in one place, [`error`].

mod clock;
pub mod config;
mod container;
mod convert;
mod cri;
pub mod daemon;
pub mod error;
mod events;
mod exec;
mod image;
pub mod metrics;
pub mod proto;
pub mod rpc_layer;
mod runtime_info;
mod sandbox;
pub mod service;
mod stats;
pub mod streaming;

pub use runtime_info::{RUNTIME_API_VERSION, RUNTIME_NAME};
