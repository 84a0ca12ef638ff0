//! Containers: their records, OCI specs, users, cgroups and lifecycle, and their interactive
//! streams.

pub mod cgroup;
pub mod image_volume;
mod lifecycle;
pub mod spec;
pub(crate) mod stream;
pub mod types;
pub mod user;

pub use lifecycle::{ContainerDetails, Containers, ContainersOptions, ExecOutput};
pub use stream::{ExitFuture, StdioSession, StreamOptions, TerminalSize};
pub use types::*;
