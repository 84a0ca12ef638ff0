//! Images of berth: pulls from registries, a content-addressed store that verifies every
//! digest, and the layered overlay snapshots containers run on.
//!
//! Architecture invariant: this crate knows nothing of gRPC or protobuf; cri-server translates.

pub mod config;
pub mod digest;
pub mod error;
pub mod fsutil;

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
