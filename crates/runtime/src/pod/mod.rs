//! Pod sandboxes: their records and store, and the steps that set them up and tear them down.

pub mod cgroup;
pub mod files;
mod lifecycle;
pub mod store;
pub mod types;

pub use lifecycle::{PodDetails, Pods};
pub use store::{new_id, PodEntry, PodStore};
pub use types::*;
