//! Pod sandboxes: their records and store, and the steps that set them up and tear them down.

pub mod files;
mod forward;
mod lifecycle;
pub mod overhead;
pub mod types;

pub use crate::store::new_id;
pub use lifecycle::{PodDetails, PodForContainer, Pods};
pub use types::*;
