//! Port forwarding's runtime half: a TCP connection to a port on the pod's own loopback,
//! opened from inside the pod's network namespace. A socket stays in the namespace it was
//! made in, so only the connect needs the namespace; the copying is then ordinary I/O.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::namespaces::{in_namespaces, NsKind};
use crate::pod::{PodState, Pods};
use crate::util::blocking;

/// A forward to a port nothing listens on fails at once; one to a pod that drops packets on
/// its loopback (a firewall in the pod) should not hang a client forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Pods {
    /// Connects to `localhost:<port>` in pod `id`'s network (the node's for a pod on the host
    /// network), trying IPv4 and then IPv6, as a pod's servers may bind either.
    pub async fn connect_port(&self, id: &str, port: u16) -> Result<tokio::net::TcpStream> {
        if port == 0 {
            return Err(Error::InvalidArgument("port 0 cannot be forwarded".into()));
        }
        let details = self.status(id).await?;
        if details.record.state != PodState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: its ports cannot be forwarded",
                details.record.id
            )));
        }
        let netns = details.netns;
        let stream = blocking(move || match &netns {
            Some(path) => in_namespaces(&[(NsKind::Net, path)], || connect_loopback(port)),
            None => connect_loopback(port),
        })
        .await?;
        stream.set_nonblocking(true).map_err(|err| forward_error(port, err))?;
        tokio::net::TcpStream::from_std(stream).map_err(|err| forward_error(port, err))
    }
}

fn connect_loopback(port: u16) -> Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(stream) => Ok(stream),
        Err(v4_err) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
                .map_err(|_| forward_error(port, v4_err))
        }
    }
}

fn forward_error(port: u16, err: std::io::Error) -> Error {
    Error::Internal(format!("connecting to localhost:{port} in the pod: {err}"))
}
