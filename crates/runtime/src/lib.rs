//! Pods and containers of berth: namespaces, cgroups, networking and processes.
//!
//! Architecture invariant: this crate knows nothing of gRPC or protobuf. cri-server translates
//! CRI messages into the plain types here and [`Error`]s back into status codes.

pub mod cdi;
pub mod cgroups;
pub mod cni;
pub mod config;
pub mod container;
pub mod error;
pub mod events;
pub mod executor;
pub mod handlers;
pub mod lsm;
pub mod monitor;
pub mod namespaces;
pub mod pod;
mod runtime;
pub mod seccomp;
pub mod security;
pub mod stats;
pub mod store;
pub mod userns;
mod util;

pub use container::{StdioSession, StreamOptions, TerminalSize};
pub use error::{Error, ErrorKind, Result};
pub use handlers::{HandlerFeatures, HandlerInfo, DEFAULT_HANDLER};
pub use runtime::{NetworkStatus, Runtime, RuntimeOptions};
