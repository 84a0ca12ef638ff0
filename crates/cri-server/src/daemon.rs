//! berthd's life: take the root's lock, open the CRI socket, serve until SIGTERM or SIGINT,
//! then stop accepting, let calls in flight finish for a moment, and leave. Containers are
//! not touched on the way out: they belong to their pod monitors, not to this process.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use std::future::Future;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::Layer;

use crate::config::{Config, ConfigError};
use crate::proto::image_service_server::ImageServiceServer;
use crate::proto::runtime_service_server::RuntimeServiceServer;
use crate::rpc_layer::RpcLayer;
use crate::service::Cri;
use crate::streaming::{StreamingError, StreamingServer};

/// How long calls in flight (a pull, an ExecSync) may go on after a stop signal. Longer than
/// systemd's patience would only get berthd SIGKILLed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Group and others may connect only through group membership; the kubelet runs as root.
const SOCKET_MODE: u32 = 0o660;
/// Others may traverse into root and state (containers' rootfs paths are under them) but
/// not list them.
const DIR_MODE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("creating directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another berthd{} already uses root {root} (it holds {lock})", pid_suffix(*.pid))]
    AlreadyRunning { root: PathBuf, lock: PathBuf, pid: Option<u32> },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {path} is in use by another process; stop it or choose another --listen")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] berth_runtime::Error),
    #[error(transparent)]
    Images(#[from] berth_images::Error),
    #[error(transparent)]
    Streaming(#[from] StreamingError),
    #[error("serving metrics on metrics.address {address}: {source}")]
    Metrics {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

fn pid_suffix(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
}

/// The binary pods' monitors run: `berth-monitor` beside berthd when it is installed, else
/// berthd itself (`/proc/self/exe`, valid even after an upgrade replaced the file), whose
/// `monitor` subcommand does the same with more memory per pod.
fn monitor_exe() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("berth-monitor")))
        .filter(|path| path.is_file());
    match sibling {
        Some(path) => path,
        None => {
            tracing::warn!(
                "berth-monitor is not installed beside berthd: pod monitors run as `berthd monitor`, \
                 which takes more memory per pod"
            );
            PathBuf::from("/proc/self/exe")
        }
    }
}

/// Runs berthd until a stop signal.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    create_dir(&config.root)?;
    create_dir(&config.state)?;
    let _lock = RootLock::acquire(&config.root, &config.lock_path())?;

    let images = berth_images::ImageService::open(berth_images::ImageServiceOptions {
        root: config.root.join("images"),
        registry: config.registry.clone(),
        pinned: config.images.pinned.clone(),
        unpack: berth_images::unpack::UnpackOptions {
            allow_devices: config.images.allow_device_nodes,
            max_entries: config.images.max_layer_entries,
            ..Default::default()
        },
    })?;
    let images = Arc::new(images);
    let runtime = berth_runtime::Runtime::new(
        berth_runtime::RuntimeOptions {
            root: config.root.clone(),
            state: config.state.clone(),
            cgroup: config.cgroup.clone(),
            cni: config.cni.clone(),
            cdi: config.cdi.clone(),
            runtimes: config.runtimes.clone(),
            monitor_exe: monitor_exe(),
        },
        images.clone(),
    )?;
    let runtime = Arc::new(runtime);
    let streaming = StreamingServer::start(&config.streaming, runtime.clone()).await?;
    let cri = Cri::new(config.clone(), runtime.clone(), images, streaming);
    let address = &config.metrics.address;
    crate::metrics::start(&cri, address)
        .await
        .map_err(|source| DaemonError::Metrics { address: address.clone(), source })?;

    let socket_path = config.socket_path().map_err(ConfigError::Invalid)?;
    let listener = bind_socket(&socket_path)?;
    tracing::info!(
        socket = %socket_path.display(),
        root = %config.root.display(),
        state = %config.state.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berthd serving the CRI"
    );

    // Before the first call can be answered: a client that signals berthd as soon as it has
    // an answer must get a clean stop, not the default action of the signal.
    let mut stop = StopSignals::install();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let routes = tonic::service::Routes::new(
        RuntimeServiceServer::new(cri.clone())
            .max_decoding_message_size(config.grpc.max_recv_message_size)
            .max_encoding_message_size(config.grpc.max_send_message_size),
    )
    .add_service(
        ImageServiceServer::new(cri.clone())
            .max_decoding_message_size(config.grpc.max_recv_message_size)
            .max_encoding_message_size(config.grpc.max_send_message_size),
    )
    .prepare();
    let service = RpcLayer::with_metrics(cri.metrics()).layer(routes);
    // Dropping the sender (on a stop signal) ends the server as well as sending does.
    let mut server = tokio::spawn(serve_grpc(listener, service, async {
        let _ = stop_rx.await;
    }));

    let outcome = tokio::select! {
        served = &mut server => Some(served),
        signal = stop.recv() => {
            tracing::info!(signal, "stopping: no new calls are accepted");
            let _ = stop_tx.send(());
            cri.stop_streams();
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(served) => Some(served),
                Err(_) => {
                    tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "calls still running after the grace period are cut off");
                    server.abort();
                    None
                }
            }
        }
    };
    remove_socket(&socket_path);
    if let Err(err) = runtime.close() {
        tracing::warn!(error = %err, "cleaning up the state directory");
    }
    match outcome {
        Some(Ok(())) | None => {
            tracing::info!("berthd stopped");
            Ok(())
        }
        Some(Err(join)) => {
            // The server task only ends this way by panicking outside any handler.
            tracing::error!(error = %join, "the CRI server task failed");
            Ok(())
        }
    }
}

/// Serves gRPC (HTTP/2) on `listener` until `stop` resolves, then lets the calls in flight
/// finish. hyper directly rather than tonic's transport: that one answers a call that outlives
/// its client's deadline with CANCELLED before any layer of ours can answer DEADLINE_EXCEEDED
/// (see `rpc_layer`).
async fn serve_grpc<S>(listener: UnixListener, service: S, stop: impl Future<Output = ()>)
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, most likely: wait a moment rather than spin.
                    tracing::warn!(error = %err, "accepting a CRI connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let connection =
            http2.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "a CRI connection ended with an error");
            }
        });
    }
    // No new connections; those open get a GOAWAY and finish their calls.
    drop(listener);
    connections.shutdown().await;
}

/// How long to wait after a failed accept before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// SIGTERM and SIGINT, caught from the moment they are installed.
struct StopSignals(Option<(Signal, Signal)>);

impl StopSignals {
    fn install() -> StopSignals {
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => StopSignals(Some((term, int))),
            _ => {
                // Without signal handlers berthd still serves; systemd's SIGKILL then ends it.
                tracing::warn!("cannot install SIGTERM/SIGINT handlers");
                StopSignals(None)
            }
        }
    }

    async fn recv(&mut self) -> &'static str {
        let Some((term, int)) = &mut self.0 else { return std::future::pending().await };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

fn create_dir(path: &Path) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|source| DaemonError::Dir { path: path.to_path_buf(), source })
}

/// An exclusive flock on `<root>/berthd.lock` for the daemon's whole life. The kernel drops it
/// when the process dies, however it dies, so a crash never leaves a root locked.
struct RootLock {
    _lock: Flock<File>,
}

impl RootLock {
    fn acquire(root: &Path, path: &Path) -> Result<RootLock, DaemonError> {
        let lock_error = |source| DaemonError::Lock { path: path.to_path_buf(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(lock_error)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let pid = file.read_to_string(&mut pid).ok().and_then(|_| pid.trim().parse().ok());
                return Err(DaemonError::AlreadyRunning {
                    root: root.to_path_buf(),
                    lock: path.to_path_buf(),
                    pid,
                });
            }
            Err((_, errno)) => return Err(lock_error(errno.into())),
        };
        // The pid is for the error message of the next berthd only; the lock is the flock.
        lock.set_len(0).map_err(lock_error)?;
        lock.rewind().map_err(lock_error)?;
        writeln!(lock, "{}", std::process::id()).map_err(lock_error)?;
        Ok(RootLock { _lock: lock })
    }
}

/// Binds the CRI socket, replacing one left behind by a berthd that crashed, but never one that
/// another live process serves.
fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let socket_error = |source| DaemonError::Socket { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(DaemonError::NotASocket { path: path.to_path_buf() })
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse { path: path.to_path_buf() });
            }
            tracing::info!(socket = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path).map_err(socket_error)?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(socket_error(err)),
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(socket_error)?;
    Ok(listener)
}

fn remove_socket(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(socket = %path.display(), error = %err, "cannot remove the socket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_root_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berthd.lock");
        let _held = RootLock::acquire(dir.path(), &path).unwrap();
        let err = RootLock::acquire(dir.path(), &path).err().expect("second lock refused");
        let message = err.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_live_ones_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/berth.sock");
        let live = bind_socket(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(bind_socket(&path), Err(DaemonError::SocketInUse { .. })));
        drop(live); // the file stays behind, as after a crash
        assert!(path.exists());
        let _again = bind_socket(&path).unwrap();

        let file = dir.path().join("plain");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(bind_socket(&file), Err(DaemonError::NotASocket { .. })));
    }
}
