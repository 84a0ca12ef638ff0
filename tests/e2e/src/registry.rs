//! A real registry on a node: Debian's `docker-registry` (the CNCF distribution registry),
//! plain HTTP on the node's loopback, with its storage in the node's scratch directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::node::Node;

/// Inside the node's own network namespace the port is free whatever other nodes use.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5000";

pub struct Registry {
    child: Child,
    /// host:port, as it goes into image references.
    pub addr: String,
}

impl Registry {
    pub fn start(node: &Node) -> Registry {
        let dir = node.dir().join("registry");
        std::fs::create_dir_all(&dir).expect("creating the registry directory");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {REGISTRY_ADDR}\n",
                dir.join("data").display()
            ),
        )
        .expect("writing the registry config");
        let log =
            std::fs::File::create(node.dir().join("registry.log")).expect("creating registry.log");
        let child = node
            .command("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        let registry = Registry { child, addr: REGISTRY_ADDR.to_string() };
        node.in_netns(|| wait_until_serving(REGISTRY_ADDR, Duration::from_secs(20)));
        registry
    }
}

/// Waits for `GET /v2/` to answer 200, as the distribution API's version check does.
fn wait_until_serving(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(status) = get_status(addr, "/v2/") {
            if status == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the registry on {addr} did not come up in {timeout:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn get_status(addr: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
