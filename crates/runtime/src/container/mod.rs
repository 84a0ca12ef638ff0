//! Containers: their records, OCI specs, cgroups and lifecycle.

pub mod types;

pub use types::*;
