//! A SPDY session: the read and write tasks, the stream table, and the stream handles.
//!
//! One spawned task drives both directions. The read side parses frames and dispatches them; it
//! is the only place that waits on a full stream buffer, which is what pushes back on the peer
//! through TCP. The write side owns the socket's write half and the header compressor and takes
//! frames from one bounded queue, so a peer that stops reading stalls our writers instead of
//! growing a queue. Everything that cannot wait (drops) enqueues without blocking.
//!
//! Here: the shared state and the `Session` handle; in `task` the task that reads and writes
//! the socket; in `stream` the stream handles.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tracing::debug;

use super::frame::{self, Frame, FLAG_FIN};
use super::headers::Headers;
use super::{Limits, Role, SpdyError};

mod stream;
mod task;

pub use stream::{IncomingStream, Stream, StreamReader, StreamWriter};
use task::*;
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
