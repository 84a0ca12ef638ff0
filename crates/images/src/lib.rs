//! Images of berth: pulls from registries, a content-addressed store that verifies every
//! digest, and the layered overlay snapshots containers run on.
//!
//! Architecture invariant: this crate knows nothing of gRPC or protobuf; cri-server translates.

pub mod auth;
pub mod config;
pub mod content;
pub mod digest;
mod direct;
pub mod error;
mod holds;
pub mod hosts;
mod keyed;
pub mod manifest;
pub mod metadata;
pub mod reference;
pub mod remote;
mod service;
pub mod snapshot;
pub mod unpack;

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use holds::Hold;
pub use service::{ContainerImage, FsUsage, ImageDetails, ImageService, ImageServiceOptions};
