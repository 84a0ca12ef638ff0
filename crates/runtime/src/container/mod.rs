//! Containers: their records, OCI specs, users, cgroups and lifecycle, and their interactive
//! streams.

pub mod image_volume;
mod lifecycle;
pub mod spec;
pub(crate) mod stream;
// berthd's side of the streams against a real monitor: a test of this layer, which uses the
// monitor below it.
#[cfg(test)]
mod stream_tests;
pub mod types;
pub mod user;

pub use lifecycle::{ContainerDetails, Containers, ContainersOptions, ExecOutput};
pub use stream::{ExitFuture, StdioSession, StreamOptions, TerminalSize};
pub use types::*;
