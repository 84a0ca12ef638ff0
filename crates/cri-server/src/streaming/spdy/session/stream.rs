//! The stream handles users hold: a stream the peer opened and is waiting to be accepted, an
//! open stream, and its read and write halves, with what dropping each tells the peer.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::mpsc::OwnedPermit;

use super::*;
use crate::streaming::spdy::frame::{self, Frame, FLAG_FIN};
use crate::streaming::spdy::headers::Headers;
use crate::streaming::spdy::SpdyError;

/// A stream the peer opened; answer it with [`accept`](Self::accept) or
/// [`reject`](Self::reject). Dropping it rejects it.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    pub(super) state: Arc<StreamState>,
    pub(super) user: UserRef,
    pub(super) answered: bool,
}

impl fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl IncomingStream {
    /// Sends SYN_REPLY (empty header block) and returns the stream. Fails if the peer reset
    /// the stream meanwhile or the session ended.
    pub async fn accept(mut self) -> Result<Stream, SpdyError> {
        let shared = self.user.0.clone();
        let permit = shared.tx.reserve().await.map_err(|_| SpdyError::SessionClosed)?;
        {
            let mut inner = shared.lock();
            if inner.ended {
                return Err(SpdyError::SessionClosed);
            }
            let Some(entry) = Shared::entry(&mut inner, &self.state) else {
                return Err(SpdyError::StreamReset { id: self.id, status: frame::RST_CANCEL });
            };
            entry.accepting_data = true;
            let reply = Frame::SynReply { id: self.id, flags: 0, headers: Headers::new() };
            permit.send(Outgoing::Frame(reply));
        }
        self.answered = true;
        Ok(Stream::new(self.user.clone(), self.state.clone()))
    }

    /// Answers with RST_STREAM CANCEL, as the reference server rejects streams.
    pub fn reject(self) {
        drop(self)
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        let shared = &self.user.0;
        if !self.answered && shared.drop_stream(&self.state) {
            shared.send_detached(Frame::RstStream { id: self.id, status: frame::RST_CANCEL });
        }
    }
}

/// Forgets the stream once both halves are gone (the writer's drop has sent FIN by then).
pub(super) struct StreamGuard {
    user: UserRef,
    state: Arc<StreamState>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let shared = &self.user.0;
        let mut inner = shared.lock();
        if Shared::entry(&mut inner, &self.state).is_some() {
            shared.remove(&mut inner, self.state.id);
        }
    }
}

/// An open stream; [`split`](Self::split) it to read and write from different tasks.
pub struct Stream {
    reader: StreamReader,
    writer: StreamWriter,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream").field("id", &self.id()).finish()
    }
}

impl Stream {
    pub(super) fn new(user: UserRef, state: Arc<StreamState>) -> Stream {
        let limit = user.0.limits.stream_buffer;
        let tx = user.0.tx.clone();
        let guard = Arc::new(StreamGuard { user, state: state.clone() });
        Stream {
            reader: StreamReader { state: state.clone(), limit, _guard: guard.clone() },
            writer: StreamWriter { state, guard, tx, reserving: None, fin_sent: false },
        }
    }

    pub fn id(&self) -> u32 {
        self.reader.state.id
    }

    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    /// See [`StreamWriter::reset`].
    pub fn reset(self) {
        self.writer.reset()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// The peer's DATA on one stream. EOF comes with the peer's FIN, a reset, or the session's end
/// (after what was already buffered).
pub struct StreamReader {
    state: Arc<StreamState>,
    limit: usize,
    _guard: Arc<StreamGuard>,
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.state.id
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = lock(&self.state.inbox);
        let inbox = &mut *guard;
        if inbox.buffered == 0 {
            if !inbox.eof {
                inbox.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            return Poll::Ready(Ok(()));
        }
        let was_full = inbox.buffered >= self.limit;
        while buf.remaining() > 0 {
            let Some(front) = inbox.chunks.front() else { break };
            let rest = &front[inbox.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            inbox.buffered -= n;
            if n == rest.len() {
                inbox.chunks.pop_front();
                inbox.offset = 0;
            } else {
                inbox.offset += n;
            }
        }
        drop(guard);
        if was_full {
            self.state.space.notify_waiters();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let mut inbox = lock(&self.state.inbox);
        inbox.reader_gone = true;
        inbox.chunks.clear();
        inbox.buffered = 0;
        drop(inbox);
        self.state.space.notify_waiters();
    }
}

type Reserve = Pin<Box<dyn Future<Output = Result<OwnedPermit<Outgoing>, SendError<()>>> + Send>>;

/// Writes DATA on one stream: one frame per write of at most 32 KiB. `shutdown` sends FIN;
/// dropping the writer does too. Writes fail with BrokenPipe after a reset or the session's
/// end. `flush` has nothing to do: frames leave in queue order.
pub struct StreamWriter {
    state: Arc<StreamState>,
    guard: Arc<StreamGuard>,
    tx: mpsc::Sender<Outgoing>,
    /// A queue slot being waited for; kept across polls so the wait keeps its place.
    reserving: Option<Reserve>,
    fin_sent: bool,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.state.id
    }

    fn shared(&self) -> &Shared {
        &self.guard.user.0
    }

    /// Resets the stream (RST_STREAM CANCEL), ending both directions. Sends nothing when FIN
    /// was already sent, as spdystream.
    pub fn reset(mut self) {
        if self.fin_sent || self.state.write_closed() {
            return;
        }
        self.fin_sent = true;
        let shared = self.shared();
        if shared.drop_stream(&self.state) {
            shared.send_detached(Frame::RstStream { id: self.state.id, status: frame::RST_CANCEL });
        }
    }

    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<OwnedPermit<Outgoing>>> {
        let tx = &self.tx;
        let reserve = self.reserving.get_or_insert_with(|| Box::pin(tx.clone().reserve_owned()));
        let result = ready!(reserve.as_mut().poll(cx));
        self.reserving = None;
        Poll::Ready(result.map_err(|_| broken_pipe()))
    }

    fn check_open(&self) -> io::Result<()> {
        if self.fin_sent || self.state.write_closed() {
            return Err(broken_pipe());
        }
        Ok(())
    }
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_open()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let permit = ready!(this.poll_permit(cx))?;
        this.check_open()?;
        let n = buf.len().min(WRITE_CHUNK);
        let data = Frame::Data { id: this.state.id, flags: 0, data: buf[..n].to_vec() };
        permit.send(Outgoing::Frame(data));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fin_sent {
            return Poll::Ready(Ok(()));
        }
        this.check_open()?;
        let permit = ready!(this.poll_permit(cx))?;
        this.check_open()?;
        this.fin_sent = true;
        permit.send(Outgoing::Frame(Frame::Data {
            id: this.state.id,
            flags: FLAG_FIN,
            data: Vec::new(),
        }));
        this.shared().local_fin(&this.state);
        Poll::Ready(Ok(()))
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if self.fin_sent || self.state.write_closed() {
            return;
        }
        let shared = self.shared();
        let fin = Frame::Data { id: self.state.id, flags: FLAG_FIN, data: Vec::new() };
        shared.send_detached(fin);
        shared.local_fin(&self.state);
    }
}
