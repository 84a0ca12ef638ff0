//! Containers: their records, OCI specs, cgroups and lifecycle.

mod lifecycle;
pub mod types;

pub use lifecycle::{ContainerDetails, Containers, ExecOutput};
pub use types::*;
