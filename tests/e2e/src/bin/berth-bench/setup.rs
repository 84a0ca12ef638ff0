//! What the benches share: the berthd they start, another runtime's endpoint, the pods'
//! run label, a registry on the host's loopback.

use super::*;

/// The harness's `berthd::binary()` finds the profile from a test binary's path
/// (`target/<profile>/deps/…`); a bench binary lives one level higher, in `target/<profile>/`.
/// So build berthd here in the bench's own profile and hand it over in `BERTHD`, unless the
/// caller already set that.
pub(crate) fn prepare_berthd() -> Result<(), Error> {
    let started = Instant::now();
    // Built in the bench's own profile (a no-op when fresh); BERTHD=/path runs another.
    let binary = berth_e2e::berthd::binary();
    if !binary.exists() {
        return Err(format!("no berthd at {}", binary.display()).into());
    }
    eprintln!(
        "berth-bench: berthd {} (checked in {:.1} s)",
        binary.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The socket path of `--endpoint unix:///path`.
/// Connects to another runtime's socket and says which runtime answers.
pub(crate) async fn connect_endpoint(socket: &Path, endpoint: &str) -> Result<Cri, Error> {
    let mut cri = Cri::connect(socket)
        .await
        .map_err(|err| format!("connecting to {}: {err}", socket.display()))?;
    let version = cri.version().await?;
    eprintln!("berth-bench: {} {} on {endpoint}", version.runtime_name, version.runtime_version);
    Ok(cri)
}

pub(crate) fn endpoint_socket(endpoint: &str) -> Result<PathBuf, Error> {
    let socket = endpoint
        .strip_prefix("unix://")
        .ok_or_else(|| format!("--endpoint {endpoint:?}: only unix:///path is supported"))?;
    Ok(PathBuf::from(socket))
}

/// The label every pod of one bench run carries (value: [`run_tag`]), so that a cleanup finds
/// them all, also those whose RunPodSandbox was cut short.
pub(crate) const RUN_LABEL: &str = "berth-bench.run";
/// The Kubernetes namespace of the bench's pods.
pub(crate) const POD_NAMESPACE: &str = "berth-bench";

/// What tells this bench run's pods from any other's: the bench's pid and start time.
pub(crate) fn run_tag() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("bench-{}-{secs}", std::process::id())
}

/// Stops and removes every pod labelled with `tag`; returns how many there were.
pub(crate) async fn remove_tagged_pods(cri: &mut Cri, tag: &str) -> Result<usize, Error> {
    let filter = Some(filter_labels(&[(RUN_LABEL, tag)]));
    let pods = cri.runtime.list_pod_sandbox(ListPodSandboxRequest { filter }).await?;
    let pods = pods.into_inner().items;
    for pod in &pods {
        cri.stop_pod(&pod.id).await?;
        cri.remove_pod(&pod.id).await?;
    }
    Ok(pods.len())
}

pub(crate) fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Adds what an RPC was to its error.
pub(crate) fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| format!("{what}: {status}").into()
}

/// A test node with a registry holding the busybox test image; returns the image's reference.
pub(crate) fn node_with_image() -> Result<(Node, Registry, String), Error> {
    let node = Node::start();
    let registry = Registry::start(&node);
    check_interrupted()?;
    let image = &images::TestImages::get().oci;
    node.block_on(|| images::push_image(&registry.addr, image))?;
    let reference = image.reference_at(&registry.addr);
    Ok((node, registry, reference))
}

/// After a berthd run: no record, hold, cgroup, veth, lease or monitor of a pod or container.
pub(crate) async fn check_nothing_left(
    node: &Node,
    daemon: &Berthd,
    net: &BridgeNetwork,
    setup: &Lifecycle,
) -> Result<(), Error> {
    for (dir, what) in [
        ("pods", "pod records"),
        ("containers", "container records"),
        ("images/holds", "image holds"),
    ] {
        let left: Vec<String> = std::fs::read_dir(daemon.root.join(dir))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            return Err(format!("{} {what} left at the end: {left:?}", left.len()).into());
        }
    }
    let cgroups = node.cgroup_children();
    if !cgroups.is_empty() {
        return Err(format!("cgroups left at the end: {cgroups:?}").into());
    }
    let veths = cni::node_veths(node);
    if !veths.is_empty() {
        return Err(format!("veths left at the end: {veths:?}").into());
    }
    let leases = net.leases();
    if !leases.is_empty() {
        return Err(format!("IP leases left at the end: {leases:?}").into());
    }
    // A monitor may still be on its way out when RemovePodSandbox answers.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let monitors = per_pod_pids(&PerPod::Monitors, &setup.ids());
        if monitors.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("monitors left at the end: pids {monitors:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Debian's docker-registry on the host's loopback, for runtimes outside any test node; its
/// config and storage in a temporary directory. Dropping it kills it and removes the directory;
/// it also dies with the bench (parent-death signal).
pub(crate) struct HostRegistry {
    pub(crate) child: Child,
    pub(crate) addr: String,
    // After `child` so that the registry is gone before its storage.
    pub(crate) dir: tempfile::TempDir,
}

impl HostRegistry {
    pub(crate) fn start() -> Result<HostRegistry, Error> {
        let dir = tempfile::Builder::new().prefix("berth-bench-registry-").tempdir()?;
        // A free port: the kernel picks it, the registry binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = command.spawn().map_err(|err| {
            format!("starting docker-registry (apt-get install docker-registry): {err}")
        })?;
        let registry = HostRegistry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = berth_e2e::registry::http_get(&registry.addr, "/v2/", None);
            if matches!(answer, Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(registry.dir.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(format!(
                    "the registry on {} did not come up: {answer:?}\n{log}",
                    registry.addr
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        eprintln!("berth-bench: registry on the host's {}", registry.addr);
        Ok(registry)
    }
}

impl Drop for HostRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
