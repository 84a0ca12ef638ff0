//! The streaming server behind the CRI's Exec, Attach and PortForward: those RPCs register
//! the request and return a single-use URL here; the client then upgrades an HTTP connection
//! on it to SPDY/3.1 or WebSocket, as the Kubernetes remote command and port forward
//! protocols specify, and this module joins the streams to the runtime's.

pub mod cache;
mod portforward;
mod remotecommand;
mod server;
pub mod spdy;
mod websocket;

pub use cache::{CacheError, StdioRequest, StreamRequest};
pub use server::{StreamingError, StreamingServer};
