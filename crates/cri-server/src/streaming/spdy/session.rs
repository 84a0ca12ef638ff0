//! A SPDY session: the read and write tasks, the stream table, and the stream handles.
//!
//! One spawned task drives both directions. The read side parses frames and dispatches them; it
//! is the only place that waits on a full stream buffer, which is what pushes back on the peer
//! through TCP. The write side owns the socket's write half and the header compressor and takes
//! frames from one bounded queue, so a peer that stops reading stalls our writers instead of
//! growing a queue. Everything that cannot wait (drops) enqueues without blocking.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tracing::debug;

use super::frame::{self, payload_len, Frame, FLAG_FIN, HEADER_LEN};
use super::headers::{Headers, NvCompressor, NvInflater};
use super::{Limits, Role, SpdyError};

/// Largest DATA frame a write produces; io::copy's chunk size, as spdystream sees it.
const WRITE_CHUNK: usize = 32 << 10;
/// Frames queued for the writer at most: with WRITE_CHUNK this bounds the queue near 512 KiB.
const WRITE_QUEUE: usize = 16;
/// Streams the peer opened that the application has not taken yet.
const INCOMING_QUEUE: usize = 16;
/// Frames gathered into one socket write.
const WRITE_BATCH: usize = 64 << 10;
/// How long a closing session may spend flushing its last frames.
const LINGER: Duration = Duration::from_secs(5);
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// Mutexes here guard plain bookkeeping; a panic elsewhere does not make it unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "spdy stream closed")
}

enum Outgoing {
    Frame(Frame),
    /// Flush, shut the socket down and end the writer.
    Close,
}

/// Requests to the driver, in increasing force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Run,
    /// Streams are done and GOAWAY is queued: flush and close.
    Close,
    /// Drop the connection now.
    Abort,
}

/// Why the read side stopped.
#[derive(Debug)]
enum End {
    Eof,
    Io(SpdyError),
    Protocol(SpdyError),
    Idle,
    Close,
    /// No handle, stream or incoming receiver is left.
    Released,
    Abort,
}

struct Shared {
    role: Role,
    limits: Limits,
    tx: mpsc::Sender<Outgoing>,
    inner: Mutex<Inner>,
    stop: watch::Sender<Stop>,
    done: watch::Sender<bool>,
    /// Signalled whenever a stream leaves the table (close() waits on it).
    streams_changed: Notify,
    /// Session handles, streams and unanswered incoming streams alive.
    users: AtomicUsize,
    users_changed: Notify,
    last_activity: Mutex<Instant>,
}

struct Inner {
    streams: HashMap<u32, Entry>,
    next_local_id: u32,
    /// The lowest id a new SYN_STREAM from the peer may carry.
    next_peer_id: u32,
    /// Highest peer stream id seen: GOAWAY's last-good id.
    last_peer_id: u32,
    /// In the server role nothing is sent before the peer's first bytes: client-go can lose
    /// bytes that arrive right after the 101.
    peer_seen: bool,
    goaway_sent: bool,
    goaway_received: bool,
    ended: bool,
}

/// A stream until both sides have sent FIN, it is reset, or its handles are all dropped.
struct Entry {
    state: Arc<StreamState>,
    local_fin: bool,
    remote_fin: bool,
    /// spdystream drops DATA that arrives before the SYN_REPLY is sent.
    accepting_data: bool,
    /// The open() waiting for the SYN_REPLY.
    reply: Option<oneshot::Sender<Result<(), SpdyError>>>,
}

/// What the stream handles and the session share about one stream.
struct StreamState {
    id: u32,
    inbox: Mutex<Inbox>,
    /// Signalled when the inbox drains or stops taking data.
    space: Notify,
    write_closed: AtomicBool,
}

#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already read.
    offset: usize,
    buffered: usize,
    eof: bool,
    reader_gone: bool,
    waker: Option<Waker>,
}

impl StreamState {
    fn new(id: u32, remote_fin: bool) -> Arc<Self> {
        let inbox = Inbox { eof: remote_fin, ..Inbox::default() };
        Arc::new(StreamState {
            id,
            inbox: Mutex::new(inbox),
            space: Notify::new(),
            write_closed: AtomicBool::new(false),
        })
    }

    /// The reader gets what is buffered, then EOF.
    fn finish_receiving(&self) {
        let mut inbox = lock(&self.inbox);
        inbox.eof = true;
        if let Some(waker) = inbox.waker.take() {
            waker.wake();
        }
        drop(inbox);
        self.space.notify_waiters();
    }

    /// Reset or session end: reads end, writes fail.
    fn kill(&self) {
        self.write_closed.store(true, Ordering::SeqCst);
        self.finish_receiving();
    }

    fn write_closed(&self) -> bool {
        self.write_closed.load(Ordering::SeqCst)
    }

    /// Queues peer data, waiting while the inbox holds `limit` bytes or more (one frame may
    /// overshoot it). Data for a finished or abandoned reader is dropped.
    async fn deliver(&self, data: Vec<u8>, limit: usize) {
        let mut data = Some(data);
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut inbox = lock(&self.inbox);
                if inbox.reader_gone || inbox.eof {
                    return;
                }
                if inbox.buffered < limit {
                    if let Some(data) = data.take() {
                        inbox.buffered += data.len();
                        inbox.chunks.push_back(data);
                    }
                    if let Some(waker) = inbox.waker.take() {
                        waker.wake();
                    }
                    return;
                }
            }
            space.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
    }

    fn may_speak(&self, inner: &Inner) -> bool {
        self.role == Role::Client || inner.peer_seen
    }

    fn request_stop(&self, stop: Stop) {
        self.stop.send_if_modified(|current| {
            let raise = *current < stop;
            if raise {
                *current = stop;
            }
            raise
        });
    }

    async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        self.tx.send(Outgoing::Frame(frame)).await.map_err(|_| SpdyError::SessionClosed)
    }

    /// For paths that cannot wait (drops): a task keeps the frame's place in the queue when it
    /// is full. Frames of the dropped stream were all queued before, so order holds.
    fn send_detached(&self, frame: Frame) {
        if let Err(TrySendError::Full(msg)) = self.tx.try_send(Outgoing::Frame(frame)) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let tx = self.tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }

    /// The table entry of `state`, if it is still there (ids are never reused, but a peer may
    /// send a SYN_STREAM with an id we use, which is refused; the pointer check is cheap).
    fn entry<'a>(inner: &'a mut Inner, state: &StreamState) -> Option<&'a mut Entry> {
        inner.streams.get_mut(&state.id).filter(|e| std::ptr::eq(Arc::as_ptr(&e.state), state))
    }

    fn remove(&self, inner: &mut Inner, id: u32) -> Option<Entry> {
        let entry = inner.streams.remove(&id);
        if entry.is_some() {
            self.streams_changed.notify_waiters();
        }
        entry
    }

    /// The peer's FIN (on DATA, SYN_REPLY or HEADERS); a stream finished both ways leaves the
    /// table.
    fn remote_fin(&self, id: u32) {
        let mut inner = self.lock();
        let Some(entry) = inner.streams.get_mut(&id) else { return };
        entry.remote_fin = true;
        entry.state.finish_receiving();
        if entry.local_fin {
            self.remove(&mut inner, id);
        }
    }

    /// Our FIN, queued by the stream's writer.
    fn local_fin(&self, state: &StreamState) {
        let mut inner = self.lock();
        let Some(entry) = Self::entry(&mut inner, state) else { return };
        entry.local_fin = true;
        if entry.remote_fin {
            self.remove(&mut inner, state.id);
        }
    }

    /// Removes the stream of `state` and ends both its directions; whether it was there.
    fn drop_stream(&self, state: &StreamState) -> bool {
        let mut inner = self.lock();
        let present = Self::entry(&mut inner, state).is_some();
        if present {
            self.remove(&mut inner, state.id);
        }
        drop(inner);
        state.kill();
        present
    }

    /// Ends every stream: reads see EOF after their buffers, writes and opens fail.
    fn mark_ended(&self) {
        let entries: Vec<Entry> = {
            let mut inner = self.lock();
            inner.ended = true;
            inner.streams.drain().map(|(_, e)| e).collect()
        };
        for entry in entries {
            entry.state.kill();
            if let Some(reply) = entry.reply {
                let _ = reply.send(Err(SpdyError::SessionClosed));
            }
        }
        self.streams_changed.notify_waiters();
    }

    /// The frames a session ending for `end` still sends.
    fn last_words(&self, end: &End) -> Vec<Frame> {
        let inner = self.lock();
        if !self.may_speak(&inner) {
            return Vec::new();
        }
        let goaway = |status| Frame::GoAway { last_good: inner.last_peer_id, status };
        match end {
            End::Protocol(_) => vec![goaway(frame::GOAWAY_PROTOCOL_ERROR)],
            End::Idle => inner
                .streams
                .keys()
                .map(|&id| Frame::RstStream { id, status: frame::RST_CANCEL })
                .chain((!inner.goaway_sent).then(|| goaway(frame::GOAWAY_OK)))
                .collect(),
            End::Released if !inner.goaway_sent => vec![goaway(frame::GOAWAY_OK)],
            _ => Vec::new(),
        }
    }

    async fn handle(
        self: &Arc<Self>,
        frame: Frame,
        incoming: &mpsc::Sender<IncomingStream>,
    ) -> Result<(), SpdyError> {
        match frame {
            Frame::SynStream { id, flags, headers, .. } => {
                self.syn_stream(id, flags & FLAG_FIN != 0, headers, incoming).await?
            }
            Frame::SynReply { id, flags, .. } => {
                if let Some(entry) = self.lock().streams.get_mut(&id) {
                    if let Some(reply) = entry.reply.take() {
                        // A cancelled open() removes its entry itself (PendingOpen).
                        let _ = reply.send(Ok(()));
                    }
                }
                if flags & FLAG_FIN != 0 {
                    self.remote_fin(id);
                }
            }
            Frame::RstStream { id, status } => {
                let entry = self.remove(&mut self.lock(), id);
                if let Some(entry) = entry {
                    entry.state.kill();
                    if let Some(reply) = entry.reply {
                        let _ = reply.send(Err(SpdyError::StreamReset { id, status }));
                    }
                }
            }
            Frame::Data { id, flags, data } => {
                let target = {
                    let inner = self.lock();
                    match inner.streams.get(&id) {
                        None => return Ok(()),
                        Some(e) => (e.accepting_data && !e.remote_fin).then(|| e.state.clone()),
                    }
                };
                if let Some(state) = target.filter(|_| !data.is_empty()) {
                    state.deliver(data, self.limits.stream_buffer).await;
                }
                // Even when the payload was dropped (not accepted yet), the FIN still ends
                // the peer's side: otherwise the stream could never finish.
                if flags & FLAG_FIN != 0 {
                    self.remote_fin(id);
                }
            }
            Frame::Headers { id, flags, .. } => {
                if flags & FLAG_FIN != 0 {
                    self.remote_fin(id);
                }
            }
            Frame::Ping { id } => {
                // Ids of the other parity answer pings we sent (we send none).
                let peers = (id % 2 == 1) == (self.role == Role::Server);
                if peers {
                    self.send(Frame::Ping { id }).await?;
                }
            }
            Frame::GoAway { last_good, .. } => {
                // Streams we opened past last_good will never be answered.
                let unanswered: Vec<Entry> = {
                    let mut inner = self.lock();
                    inner.goaway_received = true;
                    let ids: Vec<u32> = inner
                        .streams
                        .iter()
                        .filter(|(&id, e)| id > last_good && e.reply.is_some())
                        .map(|(&id, _)| id)
                        .collect();
                    ids.into_iter().filter_map(|id| self.remove(&mut inner, id)).collect()
                };
                for entry in unanswered {
                    entry.state.kill();
                    if let Some(reply) = entry.reply {
                        let _ = reply.send(Err(SpdyError::GoingAway));
                    }
                }
            }
            // No flow control, as in spdystream.
            Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
        }
        Ok(())
    }

    async fn syn_stream(
        self: &Arc<Self>,
        id: u32,
        fin: bool,
        headers: Headers,
        incoming: &mpsc::Sender<IncomingStream>,
    ) -> Result<(), SpdyError> {
        let verdict = {
            let mut inner = self.lock();
            if inner.goaway_sent || inner.goaway_received || inner.ended {
                // Ignored, as spdystream does after a GOAWAY either way.
                return Ok(());
            }
            if id < inner.next_peer_id || id > MAX_STREAM_ID || inner.streams.contains_key(&id) {
                Err(frame::RST_PROTOCOL_ERROR)
            } else {
                inner.next_peer_id = id + 1;
                inner.last_peer_id = id;
                if inner.streams.len() >= self.limits.max_streams {
                    Err(frame::RST_REFUSED_STREAM)
                } else {
                    let state = StreamState::new(id, fin);
                    let entry = Entry {
                        state: state.clone(),
                        local_fin: false,
                        remote_fin: fin,
                        accepting_data: false,
                        reply: None,
                    };
                    inner.streams.insert(id, entry);
                    Ok(state)
                }
            }
        };
        match verdict {
            Ok(state) => {
                let user = UserRef::new(self.clone());
                let stream = IncomingStream { id, headers, state, user, answered: false };
                // Without a receiver the stream is dropped, which rejects it.
                let _ = incoming.send(stream).await;
            }
            Err(status) => {
                debug!(stream = id, status, "spdy stream refused");
                self.send(Frame::RstStream { id, status }).await?;
            }
        }
        Ok(())
    }
}

/// Counts what keeps a session wanted: when the last one goes and nobody holds the incoming
/// receiver, the session closes itself.
struct UserRef(Arc<Shared>);

impl UserRef {
    fn new(shared: Arc<Shared>) -> Self {
        shared.users.fetch_add(1, Ordering::SeqCst);
        UserRef(shared)
    }
}

impl Clone for UserRef {
    fn clone(&self) -> Self {
        UserRef::new(self.0.clone())
    }
}

impl Drop for UserRef {
    fn drop(&mut self) {
        if self.0.users.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.users_changed.notify_waiters();
        }
    }
}

/// A handle on one SPDY session; clones share it.
#[derive(Clone)]
pub struct Session {
    user: UserRef,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("role", &self.user.0.role).finish()
    }
}

impl Session {
    /// Spawns the task that drives `io` (so it must be called inside a tokio runtime); returns
    /// the handle and the streams the peer opens. The receiver yields `None` once the session
    /// has ended. The session ends by itself once the handles, the streams and the receiver
    /// are all dropped.
    pub fn new<IO>(io: IO, role: Role, limits: Limits) -> (Session, mpsc::Receiver<IncomingStream>)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, out_rx) = mpsc::channel(WRITE_QUEUE);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let inner = Inner {
            streams: HashMap::new(),
            next_local_id: if role == Role::Client { 1 } else { 2 },
            next_peer_id: 1,
            last_peer_id: 0,
            peer_seen: false,
            goaway_sent: false,
            goaway_received: false,
            ended: false,
        };
        let shared = Arc::new(Shared {
            role,
            limits,
            tx,
            inner: Mutex::new(inner),
            stop: watch::Sender::new(Stop::Run),
            done: watch::Sender::new(false),
            streams_changed: Notify::new(),
            users: AtomicUsize::new(0),
            users_changed: Notify::new(),
            last_activity: Mutex::new(Instant::now()),
        });
        let session = Session { user: UserRef::new(shared.clone()) };
        tokio::spawn(drive(shared, io, out_rx, incoming_tx));
        (session, incoming_rx)
    }

    pub fn role(&self) -> Role {
        self.user.0.role
    }

    /// Opens a stream (SYN_STREAM with `headers`) and waits for the peer's SYN_REPLY; a
    /// RST_STREAM instead fails with [`SpdyError::StreamReset`]. There is no timeout here:
    /// client-go waits 30 s, callers add their own.
    pub async fn open(&self, headers: Headers) -> Result<Stream, SpdyError> {
        let shared = &self.user.0;
        if headers.encode_block().len() > shared.limits.max_header_block {
            return Err(SpdyError::HeaderBlockTooLarge(shared.limits.max_header_block));
        }
        let permit = shared.tx.reserve().await.map_err(|_| SpdyError::SessionClosed)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let state = {
            let mut inner = shared.lock();
            if inner.ended {
                return Err(SpdyError::SessionClosed);
            }
            if inner.goaway_sent || inner.goaway_received {
                return Err(SpdyError::GoingAway);
            }
            if inner.streams.len() >= shared.limits.max_streams {
                return Err(SpdyError::TooManyStreams(shared.limits.max_streams));
            }
            let id = inner.next_local_id;
            if id > MAX_STREAM_ID {
                return Err(SpdyError::StreamIdsExhausted);
            }
            inner.next_local_id += 2;
            let state = StreamState::new(id, false);
            let entry = Entry {
                state: state.clone(),
                local_fin: false,
                remote_fin: false,
                accepting_data: true,
                reply: Some(reply_tx),
            };
            inner.streams.insert(id, entry);
            // Sent under the lock so that SYN_STREAMs leave in id order: the peer resets an id
            // lower than one it has seen.
            permit.send(Outgoing::Frame(Frame::SynStream {
                id,
                associated: 0,
                priority: 0,
                flags: 0,
                headers,
            }));
            state
        };
        let mut pending = PendingOpen { shared, state: Some(state) };
        match reply_rx.await {
            Ok(Ok(())) => {
                let state = pending.state.take().ok_or(SpdyError::SessionClosed)?;
                Ok(Stream::new(self.user.clone(), state))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SpdyError::SessionClosed),
        }
    }

    /// Sends GOAWAY (no new streams either way), waits until every stream has finished, then
    /// flushes and closes the connection. Like spdystream it waits without a timeout: wrap it
    /// in one and call [`Session::abort`] to bound it.
    pub async fn close(&self) {
        let shared = &self.user.0;
        let mut done = shared.done.subscribe();
        let goaway = {
            let mut inner = shared.lock();
            let first = !inner.goaway_sent && !inner.ended;
            inner.goaway_sent = true;
            (first && shared.may_speak(&inner))
                .then(|| Frame::GoAway { last_good: inner.last_peer_id, status: frame::GOAWAY_OK })
        };
        if let Some(goaway) = goaway {
            tokio::select! {
                _ = shared.send(goaway) => {}
                _ = done.wait_for(|d| *d) => {}
            }
        }
        loop {
            let changed = shared.streams_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if shared.lock().streams.is_empty() {
                break;
            }
            tokio::select! {
                _ = changed => {}
                _ = done.wait_for(|d| *d) => break,
            }
        }
        shared.request_stop(Stop::Close);
        let _ = done.wait_for(|d| *d).await;
    }

    /// Drops the connection now: queued frames are lost, streams see EOF, writes fail.
    pub fn abort(&self) {
        self.user.0.request_stop(Stop::Abort);
    }

    /// Resolves once the session has ended, for whatever reason.
    pub async fn closed(&self) {
        let _ = self.user.0.done.subscribe().wait_for(|d| *d).await;
    }
}

/// Removes the entry of an open() that was cancelled before it returned a stream.
struct PendingOpen<'a> {
    shared: &'a Shared,
    state: Option<Arc<StreamState>>,
}

impl Drop for PendingOpen<'_> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            if self.shared.drop_stream(&state) {
                self.shared
                    .send_detached(Frame::RstStream { id: state.id, status: frame::RST_CANCEL });
            }
        }
    }
}

/// A stream the peer opened; answer it with [`accept`](Self::accept) or
/// [`reject`](Self::reject). Dropping it rejects it.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    state: Arc<StreamState>,
    user: UserRef,
    answered: bool,
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
struct StreamGuard {
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
    fn new(user: UserRef, state: Arc<StreamState>) -> Stream {
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

/// Buffers the socket's bytes until a whole frame is there. Cancel-safe: bytes read are kept
/// in `buf`, so the read can race timers and stop requests.
struct FrameReader<R> {
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

async fn drive<IO>(
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

async fn read_loop<R: AsyncRead + Unpin>(
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
async fn released(shared: &Shared, incoming: &mpsc::Sender<IncomingStream>) {
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
async fn idle_expired(shared: &Shared) {
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

async fn write_loop<W: AsyncWrite + Unpin>(
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
