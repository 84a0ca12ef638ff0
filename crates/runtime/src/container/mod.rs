//! Containers: their records, OCI specs, users, cgroups and lifecycle.

pub mod cgroup;
mod lifecycle;
pub mod spec;
pub mod types;
pub mod user;

pub use lifecycle::{ContainerDetails, Containers, ContainersOptions, ExecOutput};
pub use types::*;
