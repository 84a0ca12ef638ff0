//! A proxy in front of a registry that stops sending a chosen blob part way, and then holds
//! the connection open without a byte more: the wedged registry a pull must give up on.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::node::Node;

/// How much of the blob gets through before the stall.
const BYTES_BEFORE_STALL: usize = 64 * 1024;

pub struct StallingProxy {
    pub addr: String,
}

impl StallingProxy {
    /// Listens on `addr` on the node and forwards to `upstream`; a response to a GET of
    /// `/blobs/<digest>` stalls after [`BYTES_BEFORE_STALL`] bytes.
    pub fn start(node: &Node, addr: &str, upstream: &str, digest: &str) -> StallingProxy {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (addr_owned, upstream, needle) =
            (addr.to_string(), upstream.to_string(), format!("/blobs/{digest}"));
        node.spawn_in_netns(move || {
            let listener = TcpListener::bind(&addr_owned).expect("binding the stalling proxy");
            let _ = ready_tx.send(());
            for client in listener.incoming().flatten() {
                let (upstream, needle) = (upstream.clone(), needle.clone());
                std::thread::spawn(move || proxy(client, &upstream, &needle));
            }
        });
        ready_rx.recv().expect("the stalling proxy started");
        StallingProxy { addr: addr.to_string() }
    }
}

fn proxy(mut client: TcpStream, upstream: &str, needle: &str) {
    let Ok(mut server) = TcpStream::connect(upstream) else { return };
    let stall = Arc::new(AtomicBool::new(false));
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let seen = stall.clone();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Requests are small and sent whole: the request line is in one read.
            if String::from_utf8_lossy(&buf[..n]).contains(&needle) {
                seen.store(true, Ordering::SeqCst);
            }
            if server_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut sent_while_stalling = 0usize;
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = server.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut n = n;
        if stall.load(Ordering::SeqCst) {
            let room = BYTES_BEFORE_STALL.saturating_sub(sent_while_stalling);
            n = n.min(room);
            sent_while_stalling += n;
        }
        if n > 0 && client.write_all(&buf[..n]).is_err() {
            break;
        }
        if stall.load(Ordering::SeqCst) && sent_while_stalling >= BYTES_BEFORE_STALL {
            // Hold the connection open and silent until the client gives up.
            let _ = client.read(&mut [0u8; 1]);
            break;
        }
    }
}
