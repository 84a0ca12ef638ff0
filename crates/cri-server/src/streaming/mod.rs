//! The streaming server of CRI Exec, Attach and PortForward.

pub mod spdy;
