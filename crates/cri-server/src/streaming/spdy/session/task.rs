//! The session's task: frames read from the socket and dispatched, frames written from the one
//! queue, and the idle timer.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use super::*;
use crate::streaming::spdy::frame::{payload_len, Frame, HEADER_LEN};
use crate::streaming::spdy::headers::{NvCompressor, NvInflater};
use crate::streaming::spdy::SpdyError;

/// Buffers the socket's bytes until a whole frame is there. Cancel-safe: bytes read are kept
/// in `buf`, so the read can race timers and stop requests.
pub(super) struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// The length of the next whole frame at the start of `buf`, or `None` at a clean EOF.
    async fn next(&mut self) -> Result<Option<usize>, SpdyError> {
        loop {
            let want = match self.buf.first_chunk::<HEADER_LEN>() {
                None => HEADER_LEN,
                Some(header) => {
                    let len = payload_len(header);
                    // Refused before buffering, so a peer cannot make us allocate 16 MiB.
                    if len > self.max_frame {
                        return Err(SpdyError::FrameTooLarge { len, limit: self.max_frame });
                    }
                    HEADER_LEN + len
                }
            };
            if self.buf.len() >= want {
                return Ok(Some(want));
            }
            self.buf.reserve(want - self.buf.len());
            if self.io.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(SpdyError::protocol("connection ended inside a frame"));
            }
        }
    }
}

pub(super) async fn drive<IO>(
    shared: Arc<Shared>,
    io: IO,
    out_rx: mpsc::Receiver<Outgoing>,
    incoming: mpsc::Sender<IncomingStream>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let writer = write_loop(&shared, write_half, out_rx);
    tokio::pin!(writer);
    let end = tokio::select! {
        end = read_loop(&shared, read_half, &incoming) => end,
        result = &mut writer => {
            debug!(?result, "spdy session writer ended");
            shared.mark_ended();
            shared.done.send_replace(true);
            return;
        }
    };
    // The application's incoming loop ends with the session.
    drop(incoming);
    match &end {
        End::Io(e) | End::Protocol(e) => debug!(error = %e, "spdy session failed"),
        end => debug!(?end, "spdy session ending"),
    }
    let last_words = match end {
        End::Abort => Vec::new(),
        ref end => shared.last_words(end),
    };
    shared.mark_ended();
    if !matches!(end, End::Abort) {
        // What was queued (the last output of streams, GOAWAY) still goes out, for a while.
        let flush = async {
            for frame in last_words {
                if shared.send(frame).await.is_err() {
                    return;
                }
            }
            let _ = shared.tx.send(Outgoing::Close).await;
        };
        let mut stop = shared.stop.subscribe();
        tokio::select! {
            _ = async { tokio::join!(flush, &mut writer) } => {}
            _ = tokio::time::sleep(LINGER) => {}
            _ = stop.wait_for(|s| *s == Stop::Abort) => {}
        }
    }
    shared.done.send_replace(true);
}

pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    io: R,
    incoming: &mpsc::Sender<IncomingStream>,
) -> End {
    let mut frames = FrameReader { io, buf: Vec::new(), max_frame: shared.limits.max_frame };
    let mut nv = NvInflater::new();
    let mut stop = shared.stop.subscribe();
    let stopped = |stop: Result<watch::Ref<'_, Stop>, _>| match stop.map(|s| *s) {
        Ok(Stop::Close) => End::Close,
        _ => End::Abort,
    };
    loop {
        let next = tokio::select! {
            biased;
            s = stop.wait_for(|s| *s != Stop::Run) => return stopped(s),
            () = released(shared, incoming) => return End::Released,
            () = idle_expired(shared) => return End::Idle,
            next = frames.next() => next,
        };
        let len = match next {
            Ok(Some(len)) => len,
            Ok(None) => return End::Eof,
            Err(e @ SpdyError::Io(_)) => return End::Io(e),
            Err(e) => {
                shared.lock().peer_seen = true;
                return End::Protocol(e);
            }
        };
        shared.lock().peer_seen = true;
        shared.touch();
        let decoded = Frame::decode(&frames.buf[..len], &mut nv, shared.limits.max_header_block);
        frames.buf.drain(..len);
        let frame = match decoded {
            Ok(frame) => frame,
            Err(e) => return End::Protocol(e),
        };
        tokio::select! {
            biased;
            s = stop.wait_for(|s| *s != Stop::Run) => return stopped(s),
            handled = shared.handle(frame, incoming) => {
                if let Err(e) = handled {
                    return End::Protocol(e);
                }
            }
        }
    }
}

/// Resolves when nothing holds the session any more.
pub(super) async fn released(shared: &Shared, incoming: &mpsc::Sender<IncomingStream>) {
    loop {
        let changed = shared.users_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let unused = shared.users.load(Ordering::SeqCst) == 0;
        if unused && incoming.is_closed() {
            return;
        }
        if incoming.is_closed() {
            changed.await;
        } else {
            tokio::select! {
                _ = changed => {}
                _ = incoming.closed() => {}
            }
        }
    }
}

/// Resolves when no frame has passed either way for the idle timeout.
pub(super) async fn idle_expired(shared: &Shared) {
    let Some(idle) = shared.limits.idle_timeout else {
        return std::future::pending().await;
    };
    loop {
        let deadline = *lock(&shared.last_activity) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    mut io: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> Result<(), SpdyError> {
    let mut nv = NvCompressor::new()?;
    let mut stop = shared.stop.subscribe();
    let mut buf = Vec::new();
    loop {
        let mut next = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s == Stop::Abort) => return Ok(()),
            msg = rx.recv() => msg,
        };
        // A closed queue cannot happen while `shared` holds a sender; treat it as Close.
        let mut closing = next.is_none();
        buf.clear();
        while let Some(msg) = next.take() {
            match msg {
                Outgoing::Frame(frame) => frame.encode(&mut nv, &mut buf)?,
                Outgoing::Close => {
                    closing = true;
                    break;
                }
            }
            if buf.len() < WRITE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let write = async {
            if !buf.is_empty() {
                io.write_all(&buf).await?;
                io.flush().await?;
            }
            if closing {
                io.shutdown().await?;
            }
            Ok::<_, io::Error>(())
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s == Stop::Abort) => return Ok(()),
            written = write => written?,
        }
        if !buf.is_empty() {
            shared.touch();
        }
        if closing {
            return Ok(());
        }
    }
}
