//! Session tests over in-memory pipes: a client and a server session talking to each other,
//! and a hand-driven peer for wire-level behaviour and abuse.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;

use super::frame::{
    FLAG_FIN, GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, RST_CANCEL, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM,
};
use super::headers::{NvCompressor, NvInflater};
use super::*;

const WAIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    timeout(WAIT, f).await.expect("timed out")
}

fn pair(
    client: Limits,
    server: Limits,
) -> (Session, Receiver<IncomingStream>, Session, Receiver<IncomingStream>) {
    let (a, b) = duplex(64 << 10);
    let (c, c_in) = Session::new(a, Role::Client, client);
    let (s, s_in) = Session::new(b, Role::Server, server);
    (c, c_in, s, s_in)
}

fn kind(name: &str) -> Headers {
    Headers::new().with("streamType", name)
}

/// A peer that speaks frames by hand.
struct RawPeer {
    io: DuplexStream,
    nv: NvCompressor,
    inflater: NvInflater,
}

impl RawPeer {
    fn new(io: DuplexStream) -> Self {
        RawPeer { io, nv: NvCompressor::new().unwrap(), inflater: NvInflater::new() }
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = Vec::new();
        frame.encode(&mut self.nv, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    async fn syn(&mut self, id: u32, headers: Headers) {
        self.send(Frame::SynStream { id, associated: 0, priority: 0, flags: 0, headers }).await;
    }

    /// The next frame, or `None` at EOF.
    async fn recv(&mut self) -> Option<Frame> {
        let mut header = [0u8; 8];
        match within(self.io.read_exact(&mut header)).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("{e}"),
        }
        let mut frame = header.to_vec();
        frame.resize(8 + frame::payload_len(&header), 0);
        within(self.io.read_exact(&mut frame[8..])).await.unwrap();
        Some(Frame::decode(&frame, &mut self.inflater, 1 << 20).unwrap())
    }

    /// Asserts the session sends nothing for a while.
    async fn silent(&mut self) {
        let mut byte = [0u8; 1];
        assert!(timeout(Duration::from_millis(150), self.io.read(&mut byte)).await.is_err());
    }

    /// A ping round trip: every frame sent before it has been handled.
    async fn sync(&mut self, id: u32) {
        self.send(Frame::Ping { id }).await;
        assert_eq!(self.recv().await, Some(Frame::Ping { id }));
    }
}

fn server_with_peer(limits: Limits, buffer: usize) -> (Session, Receiver<IncomingStream>, RawPeer) {
    let (a, b) = duplex(buffer);
    let (s, s_in) = Session::new(b, Role::Server, limits);
    (s, s_in, RawPeer::new(a))
}

/// Ends with GOAWAY PROTOCOL_ERROR, then EOF, and the session reports it ended.
async fn expect_protocol_failure(session: Session, mut peer: RawPeer) {
    loop {
        match peer.recv().await {
            Some(Frame::GoAway { status, .. }) => {
                assert_eq!(status, GOAWAY_PROTOCOL_ERROR);
                break;
            }
            Some(_) => continue,
            None => panic!("no GOAWAY before EOF"),
        }
    }
    assert_eq!(peer.recv().await, None);
    within(session.closed()).await;
}

#[tokio::test]
async fn open_accept_and_half_close_both_ways() {
    let (client, _c_in, _server, mut s_in) = pair(Limits::default(), Limits::default());
    let server_side = tokio::spawn(async move {
        let incoming = s_in.recv().await.unwrap();
        assert_eq!(incoming.id, 1);
        assert_eq!(incoming.headers.get("streamtype"), Some("stdin"));
        let (mut r, mut w) = incoming.accept().await.unwrap().split();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        // Our write side is still open after the peer's FIN.
        w.write_all(b"world").await.unwrap();
        w.shutdown().await.unwrap();
        got
    });
    let mut stream = within(client.open(kind("stdin"))).await.unwrap();
    assert_eq!(stream.id(), 1);
    stream.write_all(b"hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"world");
    assert_eq!(within(server_side).await.unwrap(), b"hello");
    // Ids grow by two per stream.
    let (client2, _c, _s, mut s_in2) = pair(Limits::default(), Limits::default());
    tokio::spawn(async move {
        while let Some(s) = s_in2.recv().await {
            let _ = s.accept().await;
        }
    });
    assert_eq!(within(client2.open(kind("a"))).await.unwrap().id(), 1);
    assert_eq!(within(client2.open(kind("b"))).await.unwrap().id(), 3);
}

#[tokio::test]
async fn rejected_open_fails_with_cancel() {
    let (client, _c_in, _server, mut s_in) = pair(Limits::default(), Limits::default());
    tokio::spawn(async move { s_in.recv().await.unwrap().reject() });
    match within(client.open(kind("bogus"))).await {
        Err(SpdyError::StreamReset { id: 1, status: RST_CANCEL }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reset_ends_reads_and_fails_writes() {
    let (client, _c_in, _server, mut s_in) = pair(Limits::default(), Limits::default());
    let accepted = tokio::spawn(async move { s_in.recv().await.unwrap().accept().await.unwrap() });
    let (mut r, mut w) = within(client.open(kind("data"))).await.unwrap().split();
    let server_stream = within(accepted).await.unwrap();
    server_stream.reset();
    let mut got = Vec::new();
    within(r.read_to_end(&mut got)).await.unwrap();
    assert!(got.is_empty());
    let err = w.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn server_speaks_second_echoes_pings_and_ignores_flow_control() {
    let (_server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.silent().await;
    peer.sync(1).await;
    // Our own parity would be the reply to a ping of the server's: not echoed.
    peer.send(Frame::Ping { id: 2 }).await;
    peer.send(Frame::Settings { flags: 0, entries: vec![(0, 7, 1 << 20)] }).await;
    peer.send(Frame::WindowUpdate { id: 0, delta: 1000 }).await;
    peer.sync(3).await;
}

#[tokio::test]
async fn data_before_accept_is_dropped_and_headers_fin_is_honoured() {
    let (_server, mut s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.syn(1, kind("stdin")).await;
    peer.send(Frame::Data { id: 1, flags: 0, data: b"early".to_vec() }).await;
    peer.sync(1).await;
    let mut stream = within(s_in.recv()).await.unwrap().accept().await.unwrap();
    assert_eq!(
        peer.recv().await,
        Some(Frame::SynReply { id: 1, flags: 0, headers: Headers::new() })
    );
    peer.send(Frame::Data { id: 1, flags: 0, data: b"late".to_vec() }).await;
    peer.send(Frame::Headers { id: 1, flags: FLAG_FIN, headers: Headers::new() }).await;
    let mut got = Vec::new();
    within(stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"late");
    // DATA for a stream that never existed is ignored.
    peer.send(Frame::Data { id: 99, flags: FLAG_FIN, data: b"x".to_vec() }).await;
    peer.sync(3).await;
    stream.write_all(b"out").await.unwrap();
    drop(stream);
    assert_eq!(peer.recv().await, Some(Frame::Data { id: 1, flags: 0, data: b"out".to_vec() }));
    assert_eq!(peer.recv().await, Some(Frame::Data { id: 1, flags: FLAG_FIN, data: vec![] }));
}

#[tokio::test]
async fn stream_ids_must_grow() {
    let (_server, mut s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.syn(3, kind("a")).await;
    let held = within(s_in.recv()).await.unwrap();
    assert_eq!(held.id, 3);
    peer.syn(1, kind("b")).await;
    assert_eq!(peer.recv().await, Some(Frame::RstStream { id: 1, status: RST_PROTOCOL_ERROR }));
    peer.syn(3, kind("c")).await;
    assert_eq!(peer.recv().await, Some(Frame::RstStream { id: 3, status: RST_PROTOCOL_ERROR }));
    // The session goes on.
    peer.syn(5, kind("d")).await;
    assert_eq!(within(s_in.recv()).await.unwrap().id, 5);
}

#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    let server_limits = Limits { max_streams: 2, ..Limits::default() };
    let (client, _c_in, _server, mut s_in) = pair(Limits::default(), server_limits);
    let accepted = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Some(incoming) = s_in.recv().await {
            streams.push(incoming.accept().await.unwrap());
            if streams.len() == 2 {
                return (streams, s_in);
            }
        }
        panic!("session ended");
    });
    let first = within(client.open(kind("a"))).await.unwrap();
    let _second = within(client.open(kind("b"))).await.unwrap();
    match within(client.open(kind("c"))).await {
        Err(SpdyError::StreamReset { id: 5, status: RST_REFUSED_STREAM }) => {}
        other => panic!("{other:?}"),
    }
    // Finishing a stream frees its slot.
    let (mut streams, mut s_in) = within(accepted).await.unwrap();
    drop(streams.remove(0));
    drop(first);
    let next = tokio::spawn(async move { s_in.recv().await.unwrap().accept().await.unwrap() });
    let mut opened = None;
    for _ in 0..50 {
        match within(client.open(kind("d"))).await {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            // The server may not have seen our FIN yet.
            Err(SpdyError::StreamReset { status: RST_REFUSED_STREAM, .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(opened.is_some());
    within(next).await.unwrap();
    // The client's own limit applies to open().
    let tight = Limits { max_streams: 1, ..Limits::default() };
    let (client, _c_in, _server, mut s_in) = pair(tight, Limits::default());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(s) = s_in.recv().await {
            held.push(s.accept().await);
        }
    });
    let _one = within(client.open(kind("a"))).await.unwrap();
    assert!(matches!(client.open(kind("b")).await, Err(SpdyError::TooManyStreams(1))));
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_on_concurrent_streams() {
    const STREAMS: u64 = 4;
    const LEN: usize = 3 << 20;
    let (client, _c_in, _server, mut s_in) = pair(Limits::default(), Limits::default());
    // The server echoes every stream.
    tokio::spawn(async move {
        while let Some(incoming) = s_in.recv().await {
            tokio::spawn(async move {
                let (mut r, mut w) = incoming.accept().await.unwrap().split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for i in 0..STREAMS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(i, LEN);
            let sent = Sha256::digest(&data);
            let (mut r, mut w) = client.open(kind("data")).await.unwrap().split();
            let writer = tokio::spawn(async move {
                // Uneven writes: the stream cuts them into frames of at most 32 KiB.
                for chunk in data.chunks(100_000) {
                    w.write_all(chunk).await.unwrap();
                }
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), LEN);
            assert_eq!(Sha256::digest(&got), sent);
        }));
    }
    for task in tasks {
        timeout(Duration::from_secs(120), task).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn oversize_frame_ends_the_session() {
    let (server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.syn(1, kind("a")).await;
    peer.io.write_all(&[0, 0, 0, 1, 0, 0x20, 0, 0]).await.unwrap();
    expect_protocol_failure(server, peer).await;
}

#[tokio::test]
async fn huge_header_block_ends_the_session() {
    let (server, mut s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    // Small on the wire, 100 KB inflated.
    peer.syn(1, Headers::new().with("x", "y".repeat(100_000))).await;
    expect_protocol_failure(server, peer).await;
    assert!(within(s_in.recv()).await.is_none());
}

#[tokio::test]
async fn garbage_ends_the_session() {
    // Not SPDY at all: read as a DATA frame of 3 MB.
    let (server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    expect_protocol_failure(server, peer).await;
    // An unknown control frame type.
    let (server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.io.write_all(&[0x80, 3, 0, 5, 0, 0, 0, 0]).await.unwrap();
    expect_protocol_failure(server, peer).await;
    // A header block that is not zlib.
    let (server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.io.write_all(&[0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.unwrap();
    peer.io.write_all(b"junk").await.unwrap();
    expect_protocol_failure(server, peer).await;
    // Stream id 0.
    let (server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.io.write_all(&[0, 0, 0, 0, 0, 0, 0, 1, b'x']).await.unwrap();
    expect_protocol_failure(server, peer).await;
    // EOF in the middle of a frame.
    let (server, _s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.io.write_all(&[0, 0, 0, 1, 0, 0, 0, 10, b'x']).await.unwrap();
    peer.io.shutdown().await.unwrap();
    expect_protocol_failure(server, peer).await;
}

#[tokio::test]
async fn writes_stall_when_the_peer_never_reads() {
    let (server, mut s_in, mut peer) = server_with_peer(Limits::default(), 16 << 10);
    peer.syn(1, kind("stdout")).await;
    let (_r, mut w) = within(s_in.recv()).await.unwrap().accept().await.unwrap().split();
    let chunk = vec![7u8; 32 << 10];
    let mut written = 0usize;
    loop {
        match timeout(Duration::from_millis(300), w.write(&chunk)).await {
            Ok(n) => written += n.unwrap(),
            Err(_) => break,
        }
        assert!(written < 8 << 20, "writes never stalled");
    }
    // The queue (16 frames of 32 KiB), a batch being written and the pipe.
    assert!(written <= 1 << 20, "{written} bytes accepted");
    server.abort();
    within(server.closed()).await;
    assert_eq!(w.write(b"x").await.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn reading_stops_while_a_stream_buffer_is_full() {
    let server_limits = Limits { stream_buffer: 64 << 10, ..Limits::default() };
    let (client, _c_in, _server, mut s_in) = pair(Limits::default(), server_limits);
    let accepted = tokio::spawn(async move { s_in.recv().await.unwrap().accept().await.unwrap() });
    let (_cr, mut w) = within(client.open(kind("stdin"))).await.unwrap().split();
    let mut server_stream = within(accepted).await.unwrap();
    let chunk = vec![1u8; 32 << 10];
    let mut written = 0usize;
    loop {
        match timeout(Duration::from_millis(300), w.write(&chunk)).await {
            Ok(n) => written += n.unwrap(),
            Err(_) => break,
        }
        assert!(written < 8 << 20, "writes never stalled");
    }
    // Client queue + pipe + the server's stream buffer and read buffer.
    assert!(written <= 2 << 20, "{written} bytes accepted");
    // Reading drains the backlog and the writer moves again.
    let reader = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = server_stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    within(w.write_all(&chunk)).await.unwrap();
    w.shutdown().await.unwrap();
    assert_eq!(within(reader).await.unwrap(), written + chunk.len());
}

#[tokio::test]
async fn dropping_everything_ends_the_tasks() {
    // The peer never spoke: the server closes without a word.
    let (server, s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    drop((server, s_in));
    assert_eq!(peer.recv().await, None);

    // It did: GOAWAY, then EOF; a stream keeps the session alive until it goes too.
    let (server, mut s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.syn(1, kind("stdout")).await;
    let stream = within(s_in.recv()).await.unwrap().accept().await.unwrap();
    assert!(matches!(peer.recv().await, Some(Frame::SynReply { id: 1, .. })));
    drop((server, s_in));
    peer.sync(1).await;
    drop(stream);
    assert_eq!(peer.recv().await, Some(Frame::Data { id: 1, flags: FLAG_FIN, data: vec![] }));
    assert_eq!(peer.recv().await, Some(Frame::GoAway { last_good: 1, status: GOAWAY_OK }));
    assert_eq!(peer.recv().await, None);

    // A client pair: dropping one side ends the other.
    let (client, c_in, server, _s_in) = pair(Limits::default(), Limits::default());
    drop((client, c_in));
    within(server.closed()).await;
}

#[tokio::test]
async fn idle_sessions_reset_streams_and_go_away() {
    let limits = Limits { idle_timeout: Some(Duration::from_millis(200)), ..Limits::default() };
    let (server, mut s_in, mut peer) = server_with_peer(limits, 64 << 10);
    peer.syn(1, kind("stdout")).await;
    let mut stream = within(s_in.recv()).await.unwrap().accept().await.unwrap();
    assert!(matches!(peer.recv().await, Some(Frame::SynReply { id: 1, .. })));
    assert_eq!(peer.recv().await, Some(Frame::RstStream { id: 1, status: RST_CANCEL }));
    assert_eq!(peer.recv().await, Some(Frame::GoAway { last_good: 1, status: GOAWAY_OK }));
    assert_eq!(peer.recv().await, None);
    within(server.closed()).await;
    let mut got = Vec::new();
    within(stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(stream.write(b"x").await.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn pings_keep_a_session_from_idling_out() {
    let limits = Limits { idle_timeout: Some(Duration::from_millis(300)), ..Limits::default() };
    let (server, _s_in, mut peer) = server_with_peer(limits, 64 << 10);
    for id in (1..12).step_by(2) {
        peer.sync(id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peer.sync(13).await;
    drop(server);
}

#[tokio::test]
async fn close_goes_away_and_waits_for_streams() {
    let (client, _c_in, server, mut s_in) = pair(Limits::default(), Limits::default());
    let accepted = tokio::spawn(async move { s_in.recv().await.unwrap().accept().await.unwrap() });
    let mut client_stream = within(client.open(kind("stdout"))).await.unwrap();
    let mut server_stream = within(accepted).await.unwrap();
    let closing = tokio::spawn({
        let server = server.clone();
        async move { server.close().await }
    });
    // Once the GOAWAY has arrived the client may not open streams.
    let mut refused = false;
    for _ in 0..100 {
        if matches!(client.open(kind("late")).await, Err(SpdyError::GoingAway)) {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused);
    assert!(!closing.is_finished());
    server_stream.write_all(b"bye").await.unwrap();
    server_stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(client_stream.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"bye");
    client_stream.shutdown().await.unwrap();
    within(closing).await.unwrap();
    within(client.closed()).await;
    within(server.closed()).await;
}

#[tokio::test]
async fn peer_going_away_ends_streams_at_eof() {
    let (server, mut s_in, mut peer) = server_with_peer(Limits::default(), 64 << 10);
    peer.syn(1, kind("stdin")).await;
    let mut stream = within(s_in.recv()).await.unwrap().accept().await.unwrap();
    assert!(matches!(peer.recv().await, Some(Frame::SynReply { id: 1, .. })));
    peer.send(Frame::GoAway { last_good: 0, status: GOAWAY_OK }).await;
    // No new streams after GOAWAY, but the open one still works.
    peer.syn(3, kind("late")).await;
    peer.send(Frame::Data { id: 1, flags: 0, data: b"still".to_vec() }).await;
    peer.sync(1).await;
    let mut buf = [0u8; 5];
    within(stream.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"still");
    drop(peer);
    let mut rest = Vec::new();
    within(stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    within(server.closed()).await;
    assert!(within(s_in.recv()).await.is_none());
    assert_eq!(stream.write(b"x").await.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn abort_ends_everything_at_once() {
    let (client, _c_in, server, mut s_in) = pair(Limits::default(), Limits::default());
    let accepted = tokio::spawn(async move { s_in.recv().await.unwrap().accept().await.unwrap() });
    let mut stream = within(client.open(kind("stdout"))).await.unwrap();
    let _server_stream = within(accepted).await.unwrap();
    client.abort();
    within(client.closed()).await;
    within(server.closed()).await;
    assert_eq!(stream.write(b"x").await.unwrap_err().kind(), std::io::ErrorKind::BrokenPipe);
    assert!(matches!(client.open(kind("x")).await, Err(SpdyError::SessionClosed)));
}

#[tokio::test]
async fn client_role_echoes_even_pings_and_cancels_abandoned_opens() {
    let (a, b) = duplex(64 << 10);
    let (client, _c_in) = Session::new(a, Role::Client, Limits::default());
    let mut peer = RawPeer::new(b);
    peer.sync(2).await;
    // An open() given up before the reply resets its stream.
    assert!(timeout(Duration::from_millis(50), client.open(kind("error"))).await.is_err());
    assert!(matches!(peer.recv().await, Some(Frame::SynStream { id: 1, .. })));
    assert_eq!(peer.recv().await, Some(Frame::RstStream { id: 1, status: RST_CANCEL }));
    // A late reply for it is ignored; the next stream works.
    peer.send(Frame::SynReply { id: 1, flags: 0, headers: Headers::new() }).await;
    let opening = tokio::spawn({
        let client = client.clone();
        async move { client.open(kind("stdout")).await }
    });
    let Some(Frame::SynStream { id: 3, headers, .. }) = peer.recv().await else { panic!() };
    assert_eq!(headers.get("streamtype"), Some("stdout"));
    peer.send(Frame::SynReply { id: 3, flags: FLAG_FIN, headers: Headers::new() }).await;
    let mut stream = within(opening).await.unwrap().unwrap();
    let mut got = Vec::new();
    within(stream.read_to_end(&mut got)).await.unwrap();
    assert!(got.is_empty());
}
