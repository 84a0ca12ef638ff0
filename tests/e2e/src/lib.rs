//! The e2e harness: test nodes (private namespaces and cgroup), a real registry with test
//! images built from busybox-static, the berthd under test, and a CRI client. Every piece
//! cleans up on drop, also when a test fails.

pub mod berthd;
pub mod cni;
pub mod crafted;
pub mod cri;
pub mod critest_images;
pub mod handlers;
pub mod images;
pub mod node;
pub mod registry;
pub mod stall;
pub mod streaming;
pub mod terminal;
pub mod upstream;

pub use berthd::Berthd;
pub use cri::Cri;
pub use node::Node;
pub use registry::Registry;
