//! SPDY/3.1 sessions as Kubernetes' moby/spdystream speaks them (kubectl, crictl, client-go).
//!
//! One [`Session`] runs over one upgraded connection, driven by one spawned task: its read half
//! parses frames and hands each stream its data; its write half owns the socket's write side and
//! the header compressor, so every frame of every stream leaves through one bounded queue in
//! order. The library is symmetric: berthd uses the [`Role::Server`] side, the e2e tests the
//! [`Role::Client`] side.
//!
//! Like spdystream there is no flow control (SETTINGS and WINDOW_UPDATE are ignored, never sent):
//! backpressure comes from TCP alone. Memory stays bounded because the outgoing queue is bounded
//! and each stream buffers at most [`Limits::stream_buffer`] bytes (plus one frame) before the read
//! task stops reading the socket.

pub mod frame;
pub mod headers;
mod session;

use std::time::Duration;

pub use frame::Frame;
pub use headers::Headers;
pub use session::{IncomingStream, Session, Stream, StreamReader, StreamWriter};

/// Which end of the connection this session is; it decides stream id and ping id parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts the peer's streams (odd ids); opens even ones; never speaks first.
    Server,
    /// Opens odd stream ids, as client-go does.
    Client,
}

/// Bounds on what one peer can make a session hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Streams open at once; a SYN_STREAM beyond this gets RST_STREAM REFUSED_STREAM.
    pub max_streams: usize,
    /// Largest frame payload accepted (data or control); a larger frame ends the session.
    pub max_frame: usize,
    /// Largest decompressed header block accepted; a larger one ends the session.
    pub max_header_block: usize,
    /// Bytes buffered per stream before the read task stops reading the socket.
    pub stream_buffer: usize,
    /// End the session when no frame passed in either direction for this long.
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 128,
            max_frame: 1 << 20,
            max_header_block: 64 << 10,
            stream_buffer: 256 << 10,
            idle_timeout: None,
        }
    }
}

/// Errors of a SPDY session or stream.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("spdy protocol error: {0}")]
    Protocol(String),
    #[error("spdy frame of {len} bytes is over the limit of {limit}")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("spdy header block is over the limit of {0} bytes")]
    HeaderBlockTooLarge(usize),
    #[error("spdy header compression: {0}")]
    Compression(String),
    #[error("spdy stream {id} reset (status {status})")]
    StreamReset { id: u32, status: u32 },
    #[error("spdy session is going away")]
    GoingAway,
    #[error("spdy session closed")]
    SessionClosed,
    #[error("too many open spdy streams (limit {0})")]
    TooManyStreams(usize),
    #[error("spdy stream ids exhausted")]
    StreamIdsExhausted,
}

impl SpdyError {
    fn protocol(what: impl Into<String>) -> Self {
        SpdyError::Protocol(what.into())
    }
}

#[cfg(test)]
mod tests;
