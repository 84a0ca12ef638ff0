//! `berth-bench`: berth's benchmark binary (never run by the test suite). It drives a CRI
//! runtime through the CRI gRPC API and prints one JSON object per line on stdout (progress
//! goes to stderr); speed and memory targets are read from that output, see
//! `/work/shared/benchmarks.md`. Needs root.
//!
//! `berth-bench pull [--mb 200] [--layers 5] [--runs 3] [--seed 1]` starts a private test node
//! with a registry on it, pushes `crafted::big_image(mb, layers, seed)` there, starts a berthd
//! (the release build when the bench is a release build, else the debug one; `BERTHD=/path`
//! runs another) and pulls the image `runs` times, each one cold: after each pull the image is
//! removed and its snapshots must be gone. It prints the `cold_pull` times (p50 and p90 by
//! nearest rank, min, max, seconds), the daemon's CPU time per pull (`daemon_cpu`), the
//! `image_remove` times, berthd's VmRSS right after it started (`idle`/`daemon_rss`) and its
//! VmHWM after the runs (`daemon_peak_rss`, the peak over the daemon's whole life).
//! `--save-log FILE` keeps berthd's log, which is otherwise deleted with the node.
//!
//! `--endpoint unix:///run/containerd/containerd.sock` measures another CRI runtime instead:
//! the registry then runs on the host's loopback (127.0.0.1, a free port, plain HTTP) so that
//! the runtime can reach it, and RSS and CPU are reported only for `--daemon-pid PID`.
//! Everything the bench starts (node, registry, daemon, temporary directories) goes when it
//! exits, also on SIGINT/SIGTERM.
//!
//! `berth-bench pods [--runs 50] [--parallel 50]` starts a test node and a berthd whose CNI
//! config is the bridge network of the harness (bridge + host-local + portmap + loopback, all
//! inside the node), runs one untimed warm-up pod (the first ADD creates the bridge), then
//! `runs` RunPodSandbox calls one after the other, each a new pod, and `runs` StopPodSandbox +
//! RemovePodSandbox pairs; it prints their times (`run_pod_sandbox`,
//! `stop_remove_pod_sandbox`, ms). Then it starts `parallel` pods at once (concurrent
//! RunPodSandbox calls) and prints the wall time until the last is up (`parallel_run`, s), the
//! daemon's VmRSS with them up (`daemon_rss_with_pods`) and right after it started
//! (`idle`/`daemon_rss`), and removes them. Every pod is checked Ready with an IP; with
//! berthd, no veth, lease or pod record may be left at the end. `--save-log FILE` as for pull.
//! `--endpoint unix:///…` measures another runtime (whose own CNI config is its business), its
//! RSS only with `--daemon-pid PID`; its pods live in the namespace `berth-bench`, labelled
//! with the bench run, and are stopped and removed even when the bench fails or is
//! interrupted.
//!
//! `berth-bench lifecycle [--runs 50] [--parallel 50]` runs containers of the harness's busybox
//! test image (pushed to a registry on the node and pulled once, untimed) in pods on the bridge
//! network, as the kubelet would: each pod a log directory, each container its own PID
//! namespace and a CRI log, running `sh -c 'trap "exit 0" TERM; echo ready; sleep 3600 & wait'`
//! so that it exits on SIGTERM. After an untimed warm-up it prints, over `runs` fresh pods each
//! run untimed, the times of CreateContainer (`create_container`), StartContainer
//! (`start_container`) and StopContainer (grace period 10 s, once the container logged `ready`)
//! plus RemoveContainer (`stop_remove_container`); over `runs` more, RunPodSandbox +
//! CreateContainer + StartContainer (`pod_to_running`); `runs` ExecSync of `/bin/true` in one
//! running container (`exec_sync`); all in ms. Then it starts `parallel` pods with one container
//! each at once and prints the wall time until the last container is started
//! (`parallel_pods_with_container`, s), and with them all running: the daemon's VmRSS
//! (`daemon_rss_with_pods`), the largest and the sum of the VmRSS of the pods' monitors
//! (`berth-monitor monitor --pod <id>`; `monitor_rss_max`, `monitor_rss_sum`) and the sum of
//! their PSS (`monitor_pss_sum`), and per pod what the pods added to the idle daemon, daemon
//! plus monitors (`rss_per_pod`, and `pss_per_pod` by PSS), in MiB. No pod, container, hold, cgroup, veth,
//! lease or monitor may be left at the end. `--save-log FILE` as for pull. With `--endpoint
//! unix:///…`, the image is `--image REF` (it needs `/bin/sh`, `sleep` and `/bin/true`), or the
//! same test image from a registry on the host's loopback; the daemon is measured only with
//! `--daemon-pid PID`, and `--shim-name NAME` (`containerd-shim-runc-v2`, `conmon`) measures the
//! processes of that name in place of monitors (those whose arguments name a pod or container
//! of the run, or else all of them). Its pods are labelled and removed as for pods.
//!
//! `berth-bench handlers [--runs 20] [--handlers default,runc,crun]` times CreateContainer and
//! StartContainer of the same container with each runtime handler (default: every handler
//! berthd's Status lists), one line per handler and metric with a `handler` field; a handler
//! that cannot run here gets a line with `skipped` and the reason instead of figures.
//!
//! `berth-bench stats [--containers 100] [--per-pod 1] [--runs 50]` runs `containers` containers
//! of the lifecycle workload (in pods of `per-pod` containers on the bridge network) and times
//! what the kubelet polls: ListContainerStats over all of them (`list_container_stats`,
//! back to back, the writable layers' usage served from berth's cache), the very first such
//! call (`list_container_stats_first`: every cgroup sampled twice for its CPU rate, every layer
//! walked), one call once the layer cache has expired (`list_container_stats_walk`, after
//! waiting out berth's refresh period), ListPodSandboxStats (`list_pod_sandbox_stats`) and
//! ListPodSandboxMetrics (`list_pod_sandbox_metrics`), all in ms, each checked to answer for
//! every container. Nothing may be left at the end. `--save-log FILE` as for pull.
//!
//! Build and run: `cargo build --release -p berth-e2e --bin berth-bench &&
//! sudo target/release/berth-bench pull --mb 200 --layers 5 --runs 3`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cri_server::proto::{
    ContainerState, ListPodSandboxRequest, NamespaceMode, PodSandboxState,
};
use berth_e2e::cni::{self, BridgeNetwork};
use berth_e2e::crafted;
use berth_e2e::cri::{container, filter_labels, pod, ContainerSpec, Pod};
use berth_e2e::images;
use berth_e2e::{Berthd, Cri, Node, Registry};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::sync::Notify;

#[derive(Parser)]
#[command(name = "berth-bench", about = "Benchmarks a CRI runtime; one JSON object per line")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Cold pulls of a big image of random data from a loopback registry.
    Pull(PullArgs),
    /// Pod sandboxes with a CNI bridge network: run, stop + remove, many at once.
    Pods(PodsArgs),
    /// CreateContainer and StartContainer with each runtime handler berthd offers (the embedded
    /// executor, runc, crun), side by side.
    Handlers(HandlersArgs),
    /// Containers: create, start, stop + remove, exec, pods to running, many at once, memory.
    Lifecycle(LifecycleArgs),
    /// The streaming server: exec round trips over SPDY, port-forward throughput.
    Streaming(StreamingArgs),
    /// What the kubelet polls: container and pod stats and metrics of many running containers.
    Stats(StatsArgs),
}

#[derive(clap::Args)]
struct StreamingArgs {
    /// Exec round trips (`true`, from the Exec call to the exit status), one after the other.
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    runs: usize,
    /// MiB fetched through a port forward, per transfer.
    #[arg(long, default_value_t = 64, value_parser = at_least_one())]
    mb: usize,
    /// Transfers timed.
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    transfers: usize,
}

#[derive(clap::Args)]
struct PullArgs {
    /// Size of the image, MiB (compressed and uncompressed alike: the data is random).
    #[arg(long, default_value_t = 200, value_parser = at_least_one())]
    mb: usize,
    /// Number of layers.
    #[arg(long, default_value_t = 5, value_parser = at_least_one())]
    layers: usize,
    /// Number of cold pulls.
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    runs: usize,
    /// Seed of the image's data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CRI socket of another runtime (`unix:///path`); without it, a berthd on a test node.
    #[arg(long)]
    endpoint: Option<String>,
    /// With --endpoint: the daemon's pid, to report its RSS.
    #[arg(long, requires = "endpoint")]
    daemon_pid: Option<i32>,
    /// Copy berthd's log here before it is deleted with the node.
    #[arg(long, conflicts_with = "endpoint")]
    save_log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PodsArgs {
    /// Pods run one after the other (then stopped and removed one after the other).
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    runs: usize,
    /// Pods started at once.
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    parallel: usize,
    /// CRI socket of another runtime (`unix:///path`); without it, a berthd on a test node.
    #[arg(long)]
    endpoint: Option<String>,
    /// With --endpoint: the daemon's pid, to report its RSS.
    #[arg(long, requires = "endpoint")]
    daemon_pid: Option<i32>,
    /// Copy berthd's log here before it is deleted with the node.
    #[arg(long, conflicts_with = "endpoint")]
    save_log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct LifecycleArgs {
    /// Pods (and containers, and ExecSync calls) timed one after the other, for each metric.
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    runs: usize,
    /// Pods with one container each started at once.
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    parallel: usize,
    /// CRI socket of another runtime (`unix:///path`); without it, a berthd on a test node.
    #[arg(long)]
    endpoint: Option<String>,
    /// With --endpoint: the daemon's pid, to report its RSS.
    #[arg(long, requires = "endpoint")]
    daemon_pid: Option<i32>,
    /// With --endpoint: the name of the runtime's per-pod processes (containerd-shim-runc-v2,
    /// conmon), measured in place of berth's monitors.
    #[arg(long, requires = "endpoint")]
    shim_name: Option<String>,
    /// With --endpoint: the image to run (with /bin/sh, sleep and /bin/true); without it, the
    /// harness's busybox test image from a registry on the host's loopback.
    #[arg(long, requires = "endpoint")]
    image: Option<String>,
    /// Copy berthd's log here before it is deleted with the node.
    #[arg(long, conflicts_with = "endpoint")]
    save_log: Option<PathBuf>,
}

#[derive(clap::Args)]
struct HandlersArgs {
    /// Containers created and started one after the other, per handler.
    #[arg(long, default_value_t = 20, value_parser = at_least_one())]
    runs: usize,
    /// Handlers to measure ("default" is the embedded executor); default: every handler
    /// berthd's Status lists.
    #[arg(long, value_delimiter = ',')]
    handlers: Vec<String>,
}

#[derive(clap::Args)]
struct StatsArgs {
    /// Running containers the stats are about.
    #[arg(long, default_value_t = 100, value_parser = at_least_one())]
    containers: usize,
    /// Containers per pod.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    per_pod: usize,
    /// Timed calls of each RPC.
    #[arg(long, default_value_t = 50, value_parser = at_least_one())]
    runs: usize,
    /// Copy berthd's log here before it is deleted with the node.
    #[arg(long)]
    save_log: Option<PathBuf>,
}

fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Set by SIGINT/SIGTERM: the bench stops at the next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() {
    let cli = Cli::parse();
    let endpoint = match &cli.command {
        Bench::Pull(args) => &args.endpoint,
        Bench::Pods(args) => &args.endpoint,
        Bench::Lifecycle(args) => &args.endpoint,
        Bench::Handlers(_) | Bench::Streaming(_) | Bench::Stats(_) => &None,
    };
    if endpoint.is_none() {
        if let Err(err) = prepare_berthd() {
            eprintln!("berth-bench: {err}");
            std::process::exit(1);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let interrupt = Arc::new(Notify::new());
    if let Err(err) = runtime.block_on(watch_signals(interrupt.clone())) {
        eprintln!("berth-bench: installing signal handlers: {err}");
        std::process::exit(1);
    }
    let started = Instant::now();
    let result = match &cli.command {
        Bench::Pull(args) => match &args.endpoint {
            None => bench_berthd(&runtime, &interrupt, args),
            Some(endpoint) => bench_endpoint(&runtime, &interrupt, args, endpoint),
        },
        Bench::Pods(args) => match &args.endpoint {
            None => pods_berthd(&runtime, &interrupt, args),
            Some(endpoint) => pods_endpoint(&runtime, &interrupt, args, endpoint),
        },
        Bench::Lifecycle(args) => match &args.endpoint {
            None => lifecycle_berthd(&runtime, &interrupt, args),
            Some(endpoint) => lifecycle_endpoint(&runtime, &interrupt, args, endpoint),
        },
        Bench::Handlers(args) => handlers_berthd(&runtime, &interrupt, args),
        Bench::Streaming(args) => streaming_berthd(&runtime, &interrupt, args),
        Bench::Stats(args) => stats_berthd(&runtime, &interrupt, args),
    };
    // Every guard has dropped by now.
    drop(runtime);
    eprintln!("berth-bench: done in {:.1} s", started.elapsed().as_secs_f64());
    if let Err(err) = result {
        eprintln!("berth-bench: {err}");
        std::process::exit(if INTERRUPTED.load(Ordering::SeqCst) { 130 } else { 1 });
    }
}

/// From now on SIGINT and SIGTERM no longer kill the bench: they set [`INTERRUPTED`] and wake
/// `interrupt`, so that the bench unwinds through its drop guards.
async fn watch_signals(interrupt: Arc<Notify>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("berth-bench: interrupted, cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
        interrupt.notify_one();
    });
    Ok(())
}

fn check_interrupted() -> Result<(), Error> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    Ok(())
}

/// Runs `work` unless a signal comes first, in which case `work` is dropped (and with it
/// whatever it started).
async fn interruptible<T>(
    interrupt: &Notify,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    check_interrupted()?;
    tokio::select! {
        result = work => result,
        _ = interrupt.notified() => Err("interrupted".into()),
    }
}

/// The harness's `berthd::binary()` finds the profile from a test binary's path
/// (`target/<profile>/deps/…`); a bench binary lives one level higher, in `target/<profile>/`.
/// So build berthd here in the bench's own profile and hand it over in `BERTHD`, unless the
/// caller already set that.
fn prepare_berthd() -> Result<(), Error> {
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

/// What a pull bench needs of the image once it is pushed (the image itself, as big as its
/// data, is dropped after the push).
struct Pushed {
    reference: String,
    config_digest: String,
    bytes: usize,
}

fn build_image(args: &PullArgs) -> images::TestImage {
    let started = Instant::now();
    let image = crafted::big_image(args.mb, args.layers, args.seed);
    eprintln!(
        "berth-bench: image {} built in {:.1} s",
        image.reference,
        started.elapsed().as_secs_f64()
    );
    image
}

impl Pushed {
    fn of(image: &images::TestImage, registry: &str) -> Pushed {
        Pushed {
            reference: image.reference_at(registry),
            config_digest: image.config.digest.clone(),
            bytes: image.layers.iter().map(|layer| layer.size()).sum(),
        }
    }
}

/// The default: a berthd on a test node, the registry on the node's loopback.
fn bench_berthd(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &PullArgs,
) -> Result<(), Error> {
    // Drops in reverse order: the daemon (inside the async part), the registry, the node.
    let node = Node::start();
    let registry = Registry::start(&node);
    check_interrupted()?;
    let image = build_image(args);
    check_interrupted()?;
    let started = Instant::now();
    node.block_on(|| images::push_image(&registry.addr, &image))?;
    eprintln!("berth-bench: pushed in {:.1} s", started.elapsed().as_secs_f64());
    let pushed = Pushed::of(&image, &registry.addr);
    drop(image);

    let result = runtime.block_on(interruptible(interrupt, async {
        let started = Instant::now();
        let daemon = Berthd::start(&node).await;
        let pid = daemon.pid().as_raw();
        eprintln!(
            "berth-bench: berthd (pid {pid}) serving in {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        let idle = read_status_kib(pid, "VmRSS")?;
        let mut cri = daemon.client().await;
        let snapshots = daemon.root.join("images/snapshots");
        let result = pull_runs(&mut cri, &pushed, args, Some(&snapshots), Some(pid)).await;
        if let Some(path) = &args.save_log {
            std::fs::copy(&daemon.log, path)
                .map_err(|err| format!("copying the log to {}: {err}", path.display()))?;
        }
        let timings = result?;
        let peak = read_status_kib(pid, "VmHWM")?;
        Ok((timings, Some((idle, peak))))
    }));
    let (timings, rss) = result?;
    report(args, &pushed, &timings, rss);
    drop(registry);
    drop(node);
    Ok(())
}

/// The socket path of `--endpoint unix:///path`.
/// Connects to another runtime's socket and says which runtime answers.
async fn connect_endpoint(socket: &Path, endpoint: &str) -> Result<Cri, Error> {
    let mut cri = Cri::connect(socket)
        .await
        .map_err(|err| format!("connecting to {}: {err}", socket.display()))?;
    let version = cri.version().await?;
    eprintln!("berth-bench: {} {} on {endpoint}", version.runtime_name, version.runtime_version);
    Ok(cri)
}

fn endpoint_socket(endpoint: &str) -> Result<PathBuf, Error> {
    let socket = endpoint
        .strip_prefix("unix://")
        .ok_or_else(|| format!("--endpoint {endpoint:?}: only unix:///path is supported"))?;
    Ok(PathBuf::from(socket))
}

/// Another runtime on `endpoint`, the registry on the host's loopback.
fn bench_endpoint(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &PullArgs,
    endpoint: &str,
) -> Result<(), Error> {
    let socket = endpoint_socket(endpoint)?;
    let registry = HostRegistry::start()?;
    check_interrupted()?;
    let image = build_image(args);
    let pushed = Pushed::of(&image, &registry.addr);
    runtime.block_on(interruptible(interrupt, async {
        let started = Instant::now();
        images::push_image(&registry.addr, &image).await?;
        eprintln!("berth-bench: pushed in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }))?;
    drop(image);

    let (timings, rss) = runtime.block_on(interruptible(interrupt, async {
        let mut cri = connect_endpoint(&socket, endpoint).await?;
        let idle = args.daemon_pid.map(|pid| read_status_kib(pid, "VmRSS")).transpose()?;
        let timings = pull_runs(&mut cri, &pushed, args, None, args.daemon_pid).await?;
        let peak = args.daemon_pid.map(|pid| read_status_kib(pid, "VmHWM")).transpose()?;
        Ok((timings, idle.zip(peak)))
    }))?;
    report(args, &pushed, &timings, rss);
    drop(registry);
    Ok(())
}

#[derive(Default)]
struct Timings {
    pulls: Vec<f64>,
    removes: Vec<f64>,
    /// The daemon's CPU time per pull, when its pid is known.
    cpu: Vec<f64>,
}

/// `runs` cold pulls, each followed by the removal of the image; checks that the image, and
/// with berth its snapshots, are gone before the next pull.
async fn pull_runs(
    cri: &mut Cri,
    image: &Pushed,
    args: &PullArgs,
    snapshots: Option<&Path>,
    pid: Option<i32>,
) -> Result<Timings, Error> {
    let mut timings = Timings::default();
    if cri.image_status(&image.reference, false).await?.image.is_some() {
        eprintln!("berth-bench: {} is already present: removing it first", image.reference);
        cri.remove_image(&image.reference).await?;
    }
    for run in 1..=args.runs {
        let cpu_before = pid.map(cpu_seconds).transpose()?;
        let started = Instant::now();
        let id = cri.pull(&image.reference).await?;
        let pull = started.elapsed().as_secs_f64();
        if let (Some(pid), Some(before)) = (pid, cpu_before) {
            timings.cpu.push(cpu_seconds(pid)? - before);
        }
        if snapshots.is_some() && id != image.config_digest {
            return Err(format!("pulled image id {id}, expected {}", image.config_digest).into());
        }
        let left = snapshots.map(count_snapshots).unwrap_or(0);
        let started = Instant::now();
        cri.remove_image(&id).await?;
        let remove = started.elapsed().as_secs_f64();
        if cri.image_status(&image.reference, false).await?.image.is_some() {
            return Err(format!("{} is still there after RemoveImage", image.reference).into());
        }
        if let Some(dir) = snapshots {
            if left != args.layers {
                return Err(format!("{left} snapshots after the pull, not {}", args.layers).into());
            }
            let after = count_snapshots(dir);
            if after != 0 {
                return Err(format!("{after} snapshots left after RemoveImage").into());
            }
        }
        eprintln!("berth-bench: run {run}/{}: pull {pull:.3} s, remove {remove:.3} s", args.runs);
        timings.pulls.push(pull);
        timings.removes.push(remove);
    }
    Ok(timings)
}

/// Snapshots in berth's store, not counting the hidden ones (`.tmp…` while unpacking).
fn count_snapshots(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count()
        })
        .unwrap_or(0)
}

/// The label every pod of one bench run carries (value: [`run_tag`]), so that a cleanup finds
/// them all, also those whose RunPodSandbox was cut short.
const RUN_LABEL: &str = "berth-bench.run";
/// The Kubernetes namespace of the bench's pods.
const POD_NAMESPACE: &str = "berth-bench";

/// What tells this bench run's pods from any other's: the bench's pid and start time.
fn run_tag() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("bench-{}-{secs}", std::process::id())
}

/// The default pods bench: a berthd on a test node, with the harness's bridge network.
fn pods_berthd(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &PodsArgs,
) -> Result<(), Error> {
    // Drops after the daemon (inside the async part): kills and removes all that is left.
    let node = Node::start();
    check_interrupted()?;
    let tag = run_tag();
    let (timings, idle) = runtime.block_on(interruptible(interrupt, async {
        let started = Instant::now();
        let daemon = Berthd::start(&node).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let pid = daemon.pid().as_raw();
        eprintln!(
            "berth-bench: berthd (pid {pid}) serving in {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        let idle = read_status_kib(pid, "VmRSS")?;
        let mut cri = daemon.client().await;
        let result = pod_runs(&mut cri, args, &tag, Some(pid)).await;
        if let Some(path) = &args.save_log {
            std::fs::copy(&daemon.log, path)
                .map_err(|err| format!("copying the log to {}: {err}", path.display()))?;
        }
        let timings = result?;
        // Nothing of the pods may be left: records, veths, leases.
        let records = std::fs::read_dir(daemon.root.join("pods")).map(|d| d.count()).unwrap_or(0);
        if records != 0 {
            return Err(format!("{records} pod records left after RemovePodSandbox").into());
        }
        let veths = cni::node_veths(&node);
        if !veths.is_empty() {
            return Err(format!("veths left after RemovePodSandbox: {veths:?}").into());
        }
        let leases = net.leases();
        if !leases.is_empty() {
            return Err(format!("IP leases left after RemovePodSandbox: {leases:?}").into());
        }
        Ok((timings, Some(idle)))
    }))?;
    report_pods(args, &timings, idle);
    drop(node);
    Ok(())
}

/// Another runtime on `endpoint`, with whatever network it is configured for.
fn pods_endpoint(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &PodsArgs,
    endpoint: &str,
) -> Result<(), Error> {
    let socket = endpoint_socket(endpoint)?;
    let tag = run_tag();
    let cri = runtime.block_on(interruptible(interrupt, async {
        let cri = connect_endpoint(&socket, endpoint).await?;
        Ok(cri)
    }))?;
    let result = runtime.block_on(interruptible(interrupt, async {
        let mut cri = cri.clone();
        let idle = args.daemon_pid.map(|pid| read_status_kib(pid, "VmRSS")).transpose()?;
        let timings = pod_runs(&mut cri, args, &tag, args.daemon_pid).await?;
        Ok((timings, idle))
    }));
    // Whatever happened, no pod of this run stays on the other runtime.
    let cleanup = runtime.block_on(async {
        let mut cri = cri.clone();
        tokio::time::timeout(Duration::from_secs(120), remove_tagged_pods(&mut cri, &tag)).await
    });
    match cleanup {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => eprintln!("berth-bench: removed {n} pods left by this run"),
        Ok(Err(err)) => eprintln!("berth-bench: removing the pods of this run ({tag}): {err}"),
        Err(_) => eprintln!("berth-bench: removing the pods of this run ({tag}) timed out"),
    }
    let (timings, idle) = result?;
    report_pods(args, &timings, idle);
    Ok(())
}

/// Stops and removes every pod labelled with `tag`; returns how many there were.
async fn remove_tagged_pods(cri: &mut Cri, tag: &str) -> Result<usize, Error> {
    let filter = Some(filter_labels(&[(RUN_LABEL, tag)]));
    let pods = cri.runtime.list_pod_sandbox(ListPodSandboxRequest { filter }).await?;
    let pods = pods.into_inner().items;
    for pod in &pods {
        cri.stop_pod(&pod.id).await?;
        cri.remove_pod(&pod.id).await?;
    }
    Ok(pods.len())
}

struct PodTimings {
    /// Each sequential RunPodSandbox, ms.
    runs: Vec<f64>,
    /// Each sequential StopPodSandbox + RemovePodSandbox, ms.
    stop_removes: Vec<f64>,
    /// From the first of the concurrent RunPodSandbox calls to the end of the last, s.
    parallel_wall: f64,
    /// The daemon's VmRSS with the concurrent pods up, KiB.
    rss_with_pods: Option<u64>,
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// The warm-up pod, the sequential runs, stops and removals, then the concurrent pods.
async fn pod_runs(
    cri: &mut Cri,
    args: &PodsArgs,
    tag: &str,
    pid: Option<i32>,
) -> Result<PodTimings, Error> {
    let new_pod =
        |name: &str| pod(&format!("{tag}-{name}")).namespace(POD_NAMESPACE).label(RUN_LABEL, tag);

    // The first pod on a node creates the bridge, and another runtime may pull its pause image.
    let started = Instant::now();
    let id = cri.run_pod(&new_pod("warmup")).await?;
    let run = millis(started);
    check_ready(cri, &id).await?;
    let started = Instant::now();
    cri.stop_pod(&id).await?;
    cri.remove_pod(&id).await?;
    eprintln!("berth-bench: warm-up pod: run {run:.1} ms, stop + remove {:.1} ms", millis(started));

    let mut runs = Vec::with_capacity(args.runs);
    let mut ids = Vec::with_capacity(args.runs);
    for n in 1..=args.runs {
        check_interrupted()?;
        let pod = new_pod(&format!("seq-{n}"));
        let started = Instant::now();
        let id = cri.run_pod(&pod).await?;
        runs.push(millis(started));
        // Untimed, as the kubelet's own PodSandboxStatus after a run.
        check_ready(cri, &id).await?;
        ids.push(id);
    }
    eprintln!("berth-bench: {} pods run, p50 {:.1} ms", args.runs, percentile(&runs, 0.5));
    let mut stop_removes = Vec::with_capacity(args.runs);
    for id in &ids {
        check_interrupted()?;
        let started = Instant::now();
        cri.stop_pod(id).await?;
        cri.remove_pod(id).await?;
        stop_removes.push(millis(started));
    }
    eprintln!(
        "berth-bench: {} pods stopped and removed, p50 {:.1} ms",
        args.runs,
        percentile(&stop_removes, 0.5)
    );

    check_interrupted()?;
    let pods: Vec<Pod> = (1..=args.parallel).map(|n| new_pod(&format!("par-{n}"))).collect();
    // Dropped (on an interrupt) it aborts the calls still running.
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    for pod in pods {
        let mut cri = cri.clone();
        calls.spawn(async move {
            let started = Instant::now();
            let result = cri.run_pod(&pod).await;
            (result, millis(started))
        });
    }
    let mut ids = Vec::with_capacity(args.parallel);
    let mut latencies = Vec::with_capacity(args.parallel);
    let mut failure = None;
    while let Some(joined) = calls.join_next().await {
        let (result, latency) = joined?;
        match result {
            Ok(id) => {
                ids.push(id);
                latencies.push(latency);
            }
            Err(status) => {
                failure.get_or_insert(status);
            }
        }
    }
    let parallel_wall = started.elapsed().as_secs_f64();
    if let Some(status) = failure {
        let failed = args.parallel - ids.len();
        return Err(format!(
            "{failed} of {} concurrent RunPodSandbox failed: {status}",
            args.parallel
        )
        .into());
    }
    eprintln!(
        "berth-bench: {} pods at once in {parallel_wall:.3} s (each call p50 {:.0} ms, max {:.0} ms)",
        args.parallel,
        percentile(&latencies, 0.5),
        percentile(&latencies, 1.0)
    );
    for id in &ids {
        check_ready(cri, id).await?;
    }
    let rss_with_pods = pid.map(|pid| read_status_kib(pid, "VmRSS")).transpose()?;

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for id in ids {
        let mut cri = cri.clone();
        calls.spawn(async move {
            cri.stop_pod(&id).await?;
            cri.remove_pod(&id).await
        });
    }
    while let Some(joined) = calls.join_next().await {
        joined??;
    }
    eprintln!(
        "berth-bench: {} pods stopped and removed at once in {:.3} s",
        args.parallel,
        started.elapsed().as_secs_f64()
    );
    if let Some(pid) = pid {
        let rss = read_status_kib(pid, "VmRSS")?;
        eprintln!("berth-bench: daemon RSS after the removals {:.1} MiB", rss as f64 / 1024.0);
    }
    Ok(PodTimings { runs, stop_removes, parallel_wall, rss_with_pods })
}

/// The pod is Ready and has an address.
async fn check_ready(cri: &mut Cri, id: &str) -> Result<(), Error> {
    let status = cri.pod_status(id, false).await?.status.ok_or("PodSandboxStatus: no status")?;
    if status.state != PodSandboxState::SandboxReady as i32 {
        return Err(format!("pod {id} is not ready after RunPodSandbox").into());
    }
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    if ip.is_empty() {
        return Err(format!("pod {id} has no IP after RunPodSandbox").into());
    }
    Ok(())
}

fn report_pods(args: &PodsArgs, timings: &PodTimings, idle: Option<u64>) {
    print(&Line { stats: Some(Stats::of(&timings.runs)), ..line("pods", "run_pod_sandbox", "ms") });
    print(&Line {
        stats: Some(Stats::of(&timings.stop_removes)),
        ..line("pods", "stop_remove_pod_sandbox", "ms")
    });
    print(&Line {
        n: Some(args.parallel),
        value: Some(round(timings.parallel_wall, 4)),
        ..line("pods", "parallel_run", "s")
    });
    let mib = |kib: u64| Some(round(kib as f64 / 1024.0, 1));
    if let Some(rss) = timings.rss_with_pods {
        print(&Line {
            n: Some(args.parallel),
            value: mib(rss),
            ..line("pods", "daemon_rss_with_pods", "MiB")
        });
    }
    if let Some(idle) = idle {
        print(&Line { value: mib(idle), ..line("idle", "daemon_rss", "MiB") });
    }
}

/// What every container of the lifecycle bench runs: it says when its trap is set (before
/// that, a SIGTERM to a PID namespace's init would be ignored, and every stop would take the
/// whole grace period) and exits at once on SIGTERM.
const WORKLOAD: &str = "trap 'exit 0' TERM; echo ready; sleep 3600 & wait";
/// How long a started container may take to log `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The grace period of the timed StopContainer calls.
const STOP_TIMEOUT: i64 = 10;

/// The processes that hold a runtime's pods, measured with the pods up.
enum PerPod {
    /// berth's pod monitors (`… monitor --pod <id>`).
    Monitors,
    /// Another runtime's shims or conmons, by the file name of their `argv[0]`.
    Named(String),
}

impl PerPod {
    fn describe(&self) -> &str {
        match self {
            PerPod::Monitors => "berth monitors",
            PerPod::Named(name) => name,
        }
    }
}

/// What a lifecycle run needs besides its CRI client.
struct Lifecycle {
    image: String,
    tag: String,
    /// Where each pod's log directory is made (the kubelet makes them before RunPodSandbox).
    logs: PathBuf,
    daemon_pid: Option<i32>,
    per_pod: Option<PerPod>,
    /// Every pod and container id this run got back, for finding its processes and leftovers.
    ids: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The pods' `runtime_handler` ("" is the runtime's default).
    handler: String,
}

/// A process's memory, KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    pss: u64,
}

fn memory_of(pid: i32) -> Result<Memory, Error> {
    Ok(Memory { rss: read_status_kib(pid, "VmRSS")?, pss: read_pss_kib(pid)? })
}

/// The memory of a set of processes, KiB.
#[derive(Default)]
struct GroupMemory {
    count: usize,
    rss_sum: u64,
    rss_max: u64,
    pss_sum: u64,
}

struct LifecycleTimings {
    creates: Vec<f64>,
    starts: Vec<f64>,
    stop_removes: Vec<f64>,
    pod_to_running: Vec<f64>,
    execs: Vec<f64>,
    parallel_wall: f64,
    /// With the concurrent pods running.
    daemon: Option<Memory>,
    per_pod: Option<GroupMemory>,
}

/// Adds what an RPC was to its error.
fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| format!("{what}: {status}").into()
}

/// The default lifecycle bench: a berthd on a test node, the bridge network, the busybox test
/// image from the node's registry.
fn lifecycle_berthd(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &LifecycleArgs,
) -> Result<(), Error> {
    // Drops after the daemon (inside the async part): kills and removes all that is left,
    // monitors and containers included (they live in the node's cgroup).
    let (node, registry, image) = node_with_image()?;
    let setup = Lifecycle::on_node(&node, image, Some(PerPod::Monitors));
    let (timings, idle) = runtime.block_on(interruptible(interrupt, async {
        let started = Instant::now();
        let daemon = Berthd::start(&node).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let pid = daemon.pid().as_raw();
        eprintln!(
            "berth-bench: berthd (pid {pid}) serving in {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
        let idle = memory_of(pid)?;
        let setup = Lifecycle { daemon_pid: Some(pid), ..setup };
        let mut cri = daemon.client().await;
        let result = lifecycle_runs(&mut cri, args, &setup).await;
        if let Some(path) = &args.save_log {
            std::fs::copy(&daemon.log, path)
                .map_err(|err| format!("copying the log to {}: {err}", path.display()))?;
        }
        let timings = result?;
        check_nothing_left(&node, &daemon, &net, &setup).await?;
        Ok((timings, idle))
    }))?;
    report_lifecycle(args, &timings, Some(idle), Some(&PerPod::Monitors));
    drop(registry);
    drop(node);
    Ok(())
}

/// A test node with a registry holding the busybox test image; returns the image's reference.
fn node_with_image() -> Result<(Node, Registry, String), Error> {
    let node = Node::start();
    let registry = Registry::start(&node);
    check_interrupted()?;
    let image = &images::TestImages::get().oci;
    node.block_on(|| images::push_image(&registry.addr, image))?;
    let reference = image.reference_at(&registry.addr);
    Ok((node, registry, reference))
}

/// The handlers bench: a berthd on a test node; for each handler, `runs` pods with one
/// container, CreateContainer and StartContainer timed. A handler whose first container fails
/// (crun refuses a hybrid cgroup layout) is reported as skipped, with the reason.
fn handlers_berthd(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &HandlersArgs,
) -> Result<(), Error> {
    let (node, registry, image) = node_with_image()?;
    let template = Lifecycle::on_node(&node, image, None);
    let results = runtime.block_on(interruptible(interrupt, async {
        let daemon = Berthd::start(&node).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        cri.pull(&template.image).await.map_err(rpc("PullImage"))?;
        let handlers = match args.handlers.is_empty() {
            false => args.handlers.clone(),
            true => {
                let request = berth_cri_server::proto::StatusRequest { verbose: false };
                let status = cri.runtime.status(request).await.map_err(rpc("Status"))?;
                let mut names: Vec<String> =
                    status.into_inner().runtime_handlers.into_iter().map(|h| h.name).collect();
                names.retain(|name| !name.is_empty());
                names
            }
        };
        let mut results = Vec::new();
        for handler in handlers {
            check_interrupted()?;
            let setup = Lifecycle {
                handler: if handler == "default" { String::new() } else { handler.clone() },
                tag: format!("{}-{handler}", template.tag),
                ..Lifecycle::on_node(&node, template.image.clone(), None)
            };
            let outcome = handler_runs(&mut cri, args.runs, &setup).await;
            if let Err(err) = &outcome {
                eprintln!("berth-bench: skipping handler {handler}: {err}");
            }
            results.push((handler, outcome.map_err(|err| err.to_string())));
        }
        check_nothing_left(&node, &daemon, &net, &template).await?;
        Ok(results)
    }))?;
    for (handler, outcome) in &results {
        for (metric, index) in [("create_container", 0), ("start_container", 1)] {
            let mut line = Line { handler: Some(handler), ..line("handlers", metric, "ms") };
            match outcome {
                Ok(timings) => line.stats = Some(Stats::of(&timings[index])),
                Err(reason) => line.skipped = Some(reason),
            }
            print(&line);
        }
    }
    drop(registry);
    drop(node);
    Ok(())
}

/// The streaming bench: a berthd on a test node, one pod whose container serves a file of
/// `mb` MiB with busybox httpd on the pod's loopback; exec round trips and port-forward
/// transfers through the streaming server, as kubectl's SPDY client makes them.
fn streaming_berthd(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &StreamingArgs,
) -> Result<(), Error> {
    use berth_e2e::streaming::{self as client, Input, PORT_FORWARD, SPDY_OFFER};
    let (node, registry, image) = node_with_image()?;
    let setup = Lifecycle::on_node(&node, image, None);
    let (execs, rates) = runtime.block_on(interruptible(interrupt, async {
        let daemon = Berthd::start(&node).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        cri.pull(&setup.image).await.map_err(rpc("PullImage"))?;
        let (pod_id, pod) = setup.run_pod(&mut cri, "streaming").await?;
        let script = format!(
            "mkdir -p /www && head -c {}m /dev/zero > /www/big && echo ready && \
             exec busybox httpd -f -p 127.0.0.1:8080 -h /www",
            args.mb
        );
        let spec = container("work", &setup.image).shell(&script).log_path("work.log");
        let id = cri.run_container(&pod_id, &pod, &spec).await.map_err(rpc("RunContainer"))?;
        setup.remember(&id);
        wait_ready(&mut cri, &pod, &id).await?;

        let input = Input { stdout: true, stderr: true, ..Input::default() };
        let mut execs = Vec::with_capacity(args.runs);
        for n in 0..=args.runs {
            check_interrupted()?;
            let started = Instant::now();
            let request = berth_cri_server::proto::ExecRequest {
                container_id: id.clone(),
                cmd: vec!["true".into()],
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let url = cri.runtime.exec(request).await.map_err(rpc("Exec"))?.into_inner().url;
            let output = client::spdy_run(&node, &url, &SPDY_OFFER, input.clone()).await;
            if output.exit_code() != Some(0) {
                return Err(format!("exec failed: {:?}", output.error).into());
            }
            if n > 0 {
                execs.push(millis(started));
            }
        }

        let mut rates = Vec::with_capacity(args.transfers);
        for n in 0..args.transfers {
            check_interrupted()?;
            let request = berth_cri_server::proto::PortForwardRequest {
                pod_sandbox_id: pod_id.clone(),
                port: vec![],
            };
            let url = cri
                .runtime
                .port_forward(request)
                .await
                .map_err(rpc("PortForward"))?
                .into_inner()
                .url;
            let (session, _) = client::spdy_session(&node, &url, &[PORT_FORWARD]).await;
            let started = Instant::now();
            let forward = client::spdy_forward(&session, 8080, n as u32).await;
            let (response, error) = client::http_get(forward, "/big").await;
            let seconds = started.elapsed().as_secs_f64();
            session.abort();
            let got = client::body(&response).len();
            if got != args.mb << 20 {
                return Err(format!("port forward gave {got} bytes ({error})").into());
            }
            rates.push(got as f64 / 1e6 / seconds);
        }
        setup.remove_pod(&mut cri, &pod_id, &id).await?;
        check_nothing_left(&node, &daemon, &net, &setup).await?;
        Ok((execs, rates))
    }))?;
    print(&Line { stats: Some(Stats::of(&execs)), ..line("streaming", "exec_round_trip", "ms") });
    print(&Line {
        stats: Some(Stats::of(&rates)),
        ..line("streaming", "port_forward_throughput", "MB/s")
    });
    drop(registry);
    drop(node);
    Ok(())
}

/// `runs` pods with one container of `setup.handler`; returns the create and start times, ms.
/// The first container is a probe: if it cannot run, nothing is timed.
async fn handler_runs(
    cri: &mut Cri,
    runs: usize,
    setup: &Lifecycle,
) -> Result<[Vec<f64>; 2], Error> {
    let spec = setup.container();
    let (mut creates, mut starts) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for n in 0..=runs {
        check_interrupted()?;
        let (pod_id, pod) = setup.run_pod(cri, &format!("h-{n}")).await?;
        let result = async {
            let started = Instant::now();
            let id =
                cri.create_container(&pod_id, &pod, &spec).await.map_err(rpc("CreateContainer"))?;
            let create = millis(started);
            setup.remember(&id);
            let started = Instant::now();
            cri.start_container(&id).await.map_err(rpc("StartContainer"))?;
            let start = millis(started);
            wait_ready(cri, &pod, &id).await?;
            Ok::<_, Error>((id, create, start))
        }
        .await;
        let removed = async {
            cri.stop_pod(&pod_id).await.map_err(rpc("StopPodSandbox"))?;
            cri.remove_pod(&pod_id).await.map_err(rpc("RemovePodSandbox"))
        }
        .await;
        let (_, create, start) = result?;
        removed?;
        // The first one warms the caches up.
        if n > 0 {
            creates.push(create);
            starts.push(start);
        }
    }
    eprintln!(
        "berth-bench: handler {:?}: create p50 {:.1} ms, start p50 {:.1} ms",
        setup.handler,
        percentile(&creates, 0.5),
        percentile(&starts, 0.5)
    );
    Ok([creates, starts])
}

/// After a berthd run: no record, hold, cgroup, veth, lease or monitor of a pod or container.
async fn check_nothing_left(
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

/// Another runtime on `endpoint`: `--image`, or the test image from a registry on the host's
/// loopback.
fn lifecycle_endpoint(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &LifecycleArgs,
    endpoint: &str,
) -> Result<(), Error> {
    let socket = endpoint_socket(endpoint)?;
    let registry = match &args.image {
        Some(_) => None,
        None => Some(HostRegistry::start()?),
    };
    check_interrupted()?;
    let image = match (&args.image, &registry) {
        (Some(image), _) => image.clone(),
        (None, Some(registry)) => {
            let image = &images::TestImages::get().oci;
            runtime.block_on(interruptible(interrupt, async {
                images::push_image(&registry.addr, image).await?;
                Ok(())
            }))?;
            image.reference_at(&registry.addr)
        }
        (None, None) => unreachable!("a registry is started when there is no --image"),
    };
    let logs = tempfile::Builder::new().prefix("berth-bench-logs-").tempdir()?;
    let setup = Lifecycle {
        image,
        tag: run_tag(),
        logs: logs.path().to_path_buf(),
        daemon_pid: args.daemon_pid,
        per_pod: args.shim_name.clone().map(PerPod::Named),
        ids: Default::default(),
        handler: String::new(),
    };
    let cri = runtime.block_on(interruptible(interrupt, async {
        let cri = connect_endpoint(&socket, endpoint).await?;
        Ok(cri)
    }))?;
    let result = runtime.block_on(interruptible(interrupt, async {
        let mut cri = cri.clone();
        let idle = args.daemon_pid.map(memory_of).transpose()?;
        let timings = lifecycle_runs(&mut cri, args, &setup).await?;
        Ok((timings, idle))
    }));
    // Whatever happened, no pod of this run stays on the other runtime (its containers go
    // with it), nor the image when it came from the bench's own registry.
    let cleanup = runtime.block_on(async {
        let mut cri = cri.clone();
        tokio::time::timeout(Duration::from_secs(120), async {
            let removed = remove_tagged_pods(&mut cri, &setup.tag).await?;
            if registry.is_some() {
                cri.remove_image(&setup.image).await?;
            }
            Ok::<_, Error>(removed)
        })
        .await
    });
    match cleanup {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => eprintln!("berth-bench: removed {n} pods left by this run"),
        Ok(Err(err)) => eprintln!("berth-bench: cleaning up after this run ({}): {err}", setup.tag),
        Err(_) => eprintln!("berth-bench: cleaning up after this run ({}) timed out", setup.tag),
    }
    let (timings, idle) = result?;
    report_lifecycle(args, &timings, idle, setup.per_pod.as_ref());
    drop(logs);
    drop(registry);
    Ok(())
}

impl Lifecycle {
    /// A run on a harness node: pod log directories under the node's scratch dir.
    fn on_node(node: &Node, image: String, per_pod: Option<PerPod>) -> Lifecycle {
        Lifecycle {
            image,
            tag: run_tag(),
            logs: node.dir().join("pod-logs"),
            daemon_pid: None,
            per_pod,
            ids: Default::default(),
            handler: String::new(),
        }
    }

    /// A pod of this run, named `<tag>-<name>`, with its log directory made, and a PID
    /// namespace per container as the kubelet asks by default.
    fn pod(&self, name: &str) -> Result<Pod, Error> {
        let logs = self.logs.join(name);
        std::fs::create_dir_all(&logs)
            .map_err(|err| format!("creating {}: {err}", logs.display()))?;
        let pod = pod(&format!("{}-{name}", self.tag))
            .namespace(POD_NAMESPACE)
            .label(RUN_LABEL, &self.tag)
            .log_directory(logs)
            .pid(NamespaceMode::Container);
        Ok(pod.runtime_handler(&self.handler))
    }

    fn container(&self) -> ContainerSpec {
        container("work", &self.image)
            .shell(WORKLOAD)
            .log_path("work.log")
            .pid_mode(NamespaceMode::Container)
    }

    fn remember(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(id.to_string());
        }
    }

    fn ids(&self) -> std::collections::HashSet<String> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }

    /// RunPodSandbox of a new pod `name`; returns its id and config.
    async fn run_pod(&self, cri: &mut Cri, name: &str) -> Result<(String, Pod), Error> {
        let pod = self.pod(name)?;
        let id = cri.run_pod(&pod).await.map_err(rpc("RunPodSandbox"))?;
        self.remember(&id);
        Ok((id, pod))
    }

    /// Untimed: the container goes at once (SIGKILL), then its pod.
    async fn remove_pod(&self, cri: &mut Cri, pod_id: &str, container: &str) -> Result<(), Error> {
        cri.stop_container(container, 0).await.map_err(rpc("StopContainer"))?;
        cri.stop_pod(pod_id).await.map_err(rpc("StopPodSandbox"))?;
        cri.remove_pod(pod_id).await.map_err(rpc("RemovePodSandbox"))?;
        Ok(())
    }
}

/// Waits until the container has logged `ready` (its SIGTERM trap is set).
async fn wait_ready(cri: &mut Cri, pod: &Pod, id: &str) -> Result<(), Error> {
    let path = Path::new(&pod.config.log_directory).join("work.log");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        // A CRI log line: `<time> stdout F ready`.
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().any(|line| line.ends_with(" F ready")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let status = cri.container_status(id, false).await.ok().and_then(|r| r.status);
            return Err(format!(
                "container {id} did not log \"ready\" in {} within {READY_TIMEOUT:?}: {status:?}",
                path.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The warm-up, the timed sequential steps, then the concurrent pods and the memory they take.
async fn lifecycle_runs(
    cri: &mut Cri,
    args: &LifecycleArgs,
    setup: &Lifecycle,
) -> Result<LifecycleTimings, Error> {
    let started = Instant::now();
    cri.pull(&setup.image).await.map_err(rpc("PullImage"))?;
    eprintln!("berth-bench: {} pulled in {:.0} ms (untimed)", setup.image, millis(started));
    let spec = setup.container();

    // The first pod on a node creates the bridge, another runtime may pull its pause image, and
    // the first container of an image may cost more than the rest.
    let started = Instant::now();
    let (pod_id, pod) = setup.run_pod(cri, "warmup").await?;
    check_ready(cri, &pod_id).await?;
    let id = cri.run_container(&pod_id, &pod, &spec).await.map_err(rpc("Create/Start"))?;
    setup.remember(&id);
    wait_ready(cri, &pod, &id).await?;
    let ready = millis(started);
    let started = Instant::now();
    cri.stop_container(&id, STOP_TIMEOUT).await.map_err(rpc("StopContainer"))?;
    cri.remove_container(&id).await.map_err(rpc("RemoveContainer"))?;
    cri.stop_pod(&pod_id).await.map_err(rpc("StopPodSandbox"))?;
    cri.remove_pod(&pod_id).await.map_err(rpc("RemovePodSandbox"))?;
    eprintln!(
        "berth-bench: warm-up: pod and container ready in {ready:.1} ms, gone in {:.1} ms",
        millis(started)
    );

    let (mut creates, mut starts, mut stops, mut removes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 1..=args.runs {
        check_interrupted()?;
        let (pod_id, pod) = setup.run_pod(cri, &format!("ctr-{n}")).await?;
        let started = Instant::now();
        let id =
            cri.create_container(&pod_id, &pod, &spec).await.map_err(rpc("CreateContainer"))?;
        creates.push(millis(started));
        setup.remember(&id);
        let started = Instant::now();
        cri.start_container(&id).await.map_err(rpc("StartContainer"))?;
        starts.push(millis(started));
        wait_ready(cri, &pod, &id).await?;
        let started = Instant::now();
        cri.stop_container(&id, STOP_TIMEOUT).await.map_err(rpc("StopContainer"))?;
        stops.push(millis(started));
        // Untimed: it must have exited on the SIGTERM, not been killed.
        let status = cri.container_status(&id, false).await.map_err(rpc("ContainerStatus"))?;
        let status = status.status.ok_or("ContainerStatus: no status")?;
        if status.state() != ContainerState::ContainerExited || status.exit_code != 0 {
            return Err(format!("container {id} did not exit 0 on SIGTERM: {status:?}").into());
        }
        let started = Instant::now();
        cri.remove_container(&id).await.map_err(rpc("RemoveContainer"))?;
        removes.push(millis(started));
        cri.stop_pod(&pod_id).await.map_err(rpc("StopPodSandbox"))?;
        cri.remove_pod(&pod_id).await.map_err(rpc("RemovePodSandbox"))?;
    }
    let stop_removes: Vec<f64> = stops.iter().zip(&removes).map(|(s, r)| s + r).collect();
    eprintln!(
        "berth-bench: {} containers: create p50 {:.1} ms, start {:.1} ms, stop {:.1} ms, \
         remove {:.1} ms",
        args.runs,
        percentile(&creates, 0.5),
        percentile(&starts, 0.5),
        percentile(&stops, 0.5),
        percentile(&removes, 0.5)
    );

    let mut pod_to_running = Vec::with_capacity(args.runs);
    for n in 1..=args.runs {
        check_interrupted()?;
        let started = Instant::now();
        let (pod_id, pod) = setup.run_pod(cri, &format!("run-{n}")).await?;
        let id =
            cri.create_container(&pod_id, &pod, &spec).await.map_err(rpc("CreateContainer"))?;
        cri.start_container(&id).await.map_err(rpc("StartContainer"))?;
        pod_to_running.push(millis(started));
        setup.remember(&id);
        check_ready(cri, &pod_id).await?;
        wait_ready(cri, &pod, &id).await?;
        setup.remove_pod(cri, &pod_id, &id).await?;
    }
    eprintln!(
        "berth-bench: {} pods to running, p50 {:.1} ms",
        args.runs,
        percentile(&pod_to_running, 0.5)
    );

    check_interrupted()?;
    let (pod_id, pod) = setup.run_pod(cri, "exec").await?;
    let id = cri.run_container(&pod_id, &pod, &spec).await.map_err(rpc("Create/Start"))?;
    setup.remember(&id);
    wait_ready(cri, &pod, &id).await?;
    let mut execs = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        check_interrupted()?;
        let started = Instant::now();
        let out = cri.exec_sync(&id, &["/bin/true"], 10).await.map_err(rpc("ExecSync"))?;
        execs.push(millis(started));
        if out.exit_code != 0 {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!("ExecSync /bin/true exited {}: {stderr}", out.exit_code).into());
        }
    }
    setup.remove_pod(cri, &pod_id, &id).await?;
    eprintln!("berth-bench: {} ExecSync, p50 {:.2} ms", args.runs, percentile(&execs, 0.5));

    check_interrupted()?;
    if let Some(pid) = setup.daemon_pid {
        // What the runs so far left in the daemon, to tell from what the pods add.
        let rss = read_status_kib(pid, "VmRSS")?;
        eprintln!("berth-bench: daemon RSS before the pods {:.1} MiB", rss as f64 / 1024.0);
    }
    let (parallel_wall, running) = parallel_pods(cri, args, setup).await?;
    for (pod_id, pod, id) in &running {
        check_ready(cri, pod_id).await?;
        wait_ready(cri, pod, id).await?;
    }
    let daemon = setup.daemon_pid.map(memory_of).transpose()?;
    let per_pod = setup.per_pod.as_ref().map(|kind| {
        let group = group_memory(&per_pod_pids(kind, &setup.ids()));
        if group.count != args.parallel {
            eprintln!(
                "berth-bench: {} {} processes for {} pods",
                group.count,
                kind.describe(),
                args.parallel
            );
        }
        group
    });

    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for (pod_id, _, id) in running {
        let mut cri = cri.clone();
        calls.spawn(async move {
            cri.stop_container(&id, 0).await.map_err(rpc("StopContainer"))?;
            cri.stop_pod(&pod_id).await.map_err(rpc("StopPodSandbox"))?;
            cri.remove_pod(&pod_id).await.map_err(rpc("RemovePodSandbox"))
        });
    }
    while let Some(joined) = calls.join_next().await {
        joined??;
    }
    eprintln!(
        "berth-bench: {} pods removed at once in {:.3} s",
        args.parallel,
        started.elapsed().as_secs_f64()
    );
    if let Some(pid) = setup.daemon_pid {
        let rss = read_status_kib(pid, "VmRSS")?;
        eprintln!("berth-bench: daemon RSS after the removals {:.1} MiB", rss as f64 / 1024.0);
    }
    Ok(LifecycleTimings {
        creates,
        starts,
        stop_removes,
        pod_to_running,
        execs,
        parallel_wall,
        daemon,
        per_pod,
    })
}

/// `parallel` pods, each with one container, run and started at once; returns the wall time
/// until the last container was started, s, and the pods' ids, configs and container ids.
async fn parallel_pods(
    cri: &mut Cri,
    args: &LifecycleArgs,
    setup: &Lifecycle,
) -> Result<(f64, Vec<(String, Pod, String)>), Error> {
    let pods: Vec<Pod> =
        (1..=args.parallel).map(|n| setup.pod(&format!("par-{n}"))).collect::<Result<_, _>>()?;
    let spec = setup.container();
    // Dropped (on an interrupt) it aborts the calls still running.
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    for pod in pods {
        let (mut cri, spec) = (cri.clone(), spec.clone());
        calls.spawn(async move {
            let started = Instant::now();
            let pod_id = match cri.run_pod(&pod).await {
                Ok(pod_id) => pod_id,
                Err(status) => return Err((None, rpc("RunPodSandbox")(status))),
            };
            match cri.run_container(&pod_id, &pod, &spec).await {
                Ok(id) => Ok((pod_id, pod, id, millis(started))),
                Err(status) => Err((Some(pod_id), rpc("Create/Start")(status))),
            }
        });
    }
    let mut running = Vec::with_capacity(args.parallel);
    let mut latencies = Vec::with_capacity(args.parallel);
    let mut failure = None;
    while let Some(joined) = calls.join_next().await {
        match joined? {
            Ok((pod_id, pod, id, latency)) => {
                setup.remember(&pod_id);
                setup.remember(&id);
                running.push((pod_id, pod, id));
                latencies.push(latency);
            }
            Err((pod_id, err)) => {
                if let Some(pod_id) = pod_id {
                    setup.remember(&pod_id);
                }
                failure.get_or_insert(err);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if let Some(err) = failure {
        let failed = args.parallel - running.len();
        return Err(format!("{failed} of {} concurrent pods failed: {err}", args.parallel).into());
    }
    eprintln!(
        "berth-bench: {} pods with a container at once in {wall:.3} s (each p50 {:.0} ms, max \
         {:.0} ms)",
        args.parallel,
        percentile(&latencies, 0.5),
        percentile(&latencies, 1.0)
    );
    Ok((wall, running))
}

/// How long berth serves a writable layer's measured usage before walking it again (its
/// `berth_runtime::stats::LAYER_REFRESH`), and a margin.
const LAYER_CACHE_EXPIRY: Duration = Duration::from_millis(10_500);

struct StatsTimings {
    first: f64,
    container_stats: Vec<f64>,
    walk: f64,
    pod_stats: Vec<f64>,
    pod_metrics: Vec<f64>,
}

/// The stats bench: a berthd on a test node, the bridge network, `containers` running
/// containers of the lifecycle workload.
fn stats_berthd(
    runtime: &tokio::runtime::Runtime,
    interrupt: &Notify,
    args: &StatsArgs,
) -> Result<(), Error> {
    let (node, registry, image) = node_with_image()?;
    let setup = Lifecycle::on_node(&node, image, None);
    let timings = runtime.block_on(interruptible(interrupt, async {
        let daemon = Berthd::start(&node).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        cri.pull(&setup.image).await.map_err(rpc("PullImage"))?;
        let result = stats_runs(&mut cri, args, &setup).await;
        if let Some(path) = &args.save_log {
            std::fs::copy(&daemon.log, path)
                .map_err(|err| format!("copying the log to {}: {err}", path.display()))?;
        }
        let timings = result?;
        check_nothing_left(&node, &daemon, &net, &setup).await?;
        Ok(timings)
    }))?;
    let containers = Some(args.containers);
    for (metric, values) in [
        ("list_container_stats", &timings.container_stats),
        ("list_pod_sandbox_stats", &timings.pod_stats),
        ("list_pod_sandbox_metrics", &timings.pod_metrics),
    ] {
        print(&Line { stats: Some(Stats::of(values)), containers, ..line("stats", metric, "ms") });
    }
    for (metric, value) in
        [("list_container_stats_first", timings.first), ("list_container_stats_walk", timings.walk)]
    {
        print(&Line { value: Some(round(value, 4)), containers, ..line("stats", metric, "ms") });
    }
    drop(registry);
    drop(node);
    Ok(())
}

/// Starts the containers, times the calls, and removes the pods whatever happened.
async fn stats_runs(
    cri: &mut Cri,
    args: &StatsArgs,
    setup: &Lifecycle,
) -> Result<StatsTimings, Error> {
    let mut pods = Vec::new();
    let result = async {
        let started = Instant::now();
        let mut running = 0;
        while running < args.containers {
            check_interrupted()?;
            let (pod_id, pod) = setup.run_pod(cri, &format!("s-{}", pods.len())).await?;
            pods.push(pod_id.clone());
            for n in 0..args.per_pod.min(args.containers - running) {
                let spec = container(&format!("work{n}"), &setup.image)
                    .shell(WORKLOAD)
                    .log_path(&format!("work{n}.log"))
                    .pid_mode(NamespaceMode::Container);
                let id =
                    cri.run_container(&pod_id, &pod, &spec).await.map_err(rpc("Create/Start"))?;
                setup.remember(&id);
                running += 1;
            }
        }
        eprintln!(
            "berth-bench: {running} containers in {} pods running in {:.1} s",
            pods.len(),
            started.elapsed().as_secs_f64()
        );
        stats_calls(cri, args, pods.len()).await
    }
    .await;
    for pod_id in &pods {
        cri.stop_pod(pod_id).await.map_err(rpc("StopPodSandbox"))?;
        cri.remove_pod(pod_id).await.map_err(rpc("RemovePodSandbox"))?;
    }
    result
}

/// One ListContainerStats, ms, checked to answer for every container with CPU and memory.
async fn timed_container_stats(cri: &mut Cri, containers: usize) -> Result<f64, Error> {
    let started = Instant::now();
    let request = berth_cri_server::proto::ListContainerStatsRequest { filter: None };
    let stats =
        cri.runtime.list_container_stats(request).await.map_err(rpc("ListContainerStats"))?;
    let elapsed = millis(started);
    let stats = stats.into_inner().stats;
    let whole = stats.iter().all(|s| s.cpu.is_some() && s.memory.is_some());
    if stats.len() != containers || !whole {
        return Err(format!(
            "ListContainerStats: {} answers for {containers} containers, or some without CPU or \
             memory",
            stats.len()
        )
        .into());
    }
    Ok(elapsed)
}

/// The timed calls, each checked to answer for every container (and pod).
async fn stats_calls(cri: &mut Cri, args: &StatsArgs, pods: usize) -> Result<StatsTimings, Error> {
    use berth_cri_server::proto::{ListPodSandboxMetricsRequest, ListPodSandboxStatsRequest};
    let containers = args.containers;
    let first = timed_container_stats(cri, containers).await?;
    eprintln!("berth-bench: first ListContainerStats {first:.1} ms");
    let mut container_stats = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        check_interrupted()?;
        container_stats.push(timed_container_stats(cri, containers).await?);
    }
    eprintln!(
        "berth-bench: ListContainerStats p50 {:.1} ms; waiting out the layer cache",
        percentile(&container_stats, 0.5)
    );
    tokio::time::sleep(LAYER_CACHE_EXPIRY).await;
    let walk = timed_container_stats(cri, containers).await?;
    let mut pod_stats = Vec::with_capacity(args.runs);
    let mut pod_metrics = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        check_interrupted()?;
        let started = Instant::now();
        let request = ListPodSandboxStatsRequest { filter: None };
        let stats = cri
            .runtime
            .list_pod_sandbox_stats(request)
            .await
            .map_err(rpc("ListPodSandboxStats"))?;
        pod_stats.push(millis(started));
        let stats = stats.into_inner().stats;
        let listed: usize =
            stats.iter().filter_map(|s| s.linux.as_ref()).map(|l| l.containers.len()).sum();
        if stats.len() != pods || listed != containers {
            return Err(
                format!("ListPodSandboxStats: {} pods, {listed} containers", stats.len()).into()
            );
        }
        let started = Instant::now();
        let metrics = cri
            .runtime
            .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
            .await
            .map_err(rpc("ListPodSandboxMetrics"))?;
        pod_metrics.push(millis(started));
        let metrics = metrics.into_inner().pod_metrics;
        let listed: usize = metrics.iter().map(|p| p.container_metrics.len()).sum();
        if metrics.len() != pods || listed != containers {
            return Err(format!(
                "ListPodSandboxMetrics: {} pods, {listed} containers",
                metrics.len()
            )
            .into());
        }
    }
    Ok(StatsTimings { first, container_stats, walk, pod_stats, pod_metrics })
}

/// A process as `/proc` shows it.
struct Process {
    pid: i32,
    ppid: i32,
    argv: Vec<String>,
}

/// Every process with a command line (kernel threads have none); those that exit during the
/// scan are left out.
fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name: state, then ppid.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            let mut argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            // The command line ends with a NUL.
            if argv.last().is_some_and(|arg| arg.is_empty()) {
                argv.pop();
            }
            (!argv.is_empty()).then_some(Process { pid, ppid, argv })
        })
        .collect()
}

/// The pids of the per-pod processes of `kind` that belong to the pods or containers in `ids`.
fn per_pod_pids(kind: &PerPod, ids: &std::collections::HashSet<String>) -> Vec<i32> {
    let all = processes();
    let matched: Vec<&Process> = match kind {
        PerPod::Monitors => all
            .iter()
            .filter(|p| p.argv.get(1).is_some_and(|arg| arg == "monitor"))
            .filter(|p| p.argv.windows(2).any(|w| w[0] == "--pod" && ids.contains(&w[1])))
            .collect(),
        PerPod::Named(name) => {
            let named: Vec<&Process> = all
                .iter()
                .filter(|p| Path::new(&p.argv[0]).file_name().is_some_and(|f| f == name.as_str()))
                .collect();
            // containerd's shims name their pod (`-id <pod>`), conmon its container; a
            // runtime whose processes name neither is measured whole.
            let ours: Vec<&Process> =
                named.iter().copied().filter(|p| p.argv.iter().any(|a| ids.contains(a))).collect();
            if ours.is_empty() {
                named
            } else {
                ours
            }
        }
    };
    // A monitor's child between its fork and its exec (a container waiting to start, an
    // ExecSync) still has the monitor's command line: it is not another monitor.
    let pids: std::collections::HashSet<i32> = matched.iter().map(|p| p.pid).collect();
    matched.iter().filter(|p| !pids.contains(&p.ppid)).map(|p| p.pid).collect()
}

/// The memory of `pids`; a process that has gone meanwhile is left out.
fn group_memory(pids: &[i32]) -> GroupMemory {
    let mut group = GroupMemory::default();
    for memory in pids.iter().filter_map(|pid| memory_of(*pid).ok()) {
        group.count += 1;
        group.rss_sum += memory.rss;
        group.rss_max = group.rss_max.max(memory.rss);
        group.pss_sum += memory.pss;
    }
    group
}

/// The proportional set size of `pid`, from `/proc/<pid>/smaps_rollup`, KiB.
fn read_pss_kib(pid: i32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|err| format!("reading {path}: {err}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("no Pss in {path}").into())
}

fn report_lifecycle(
    args: &LifecycleArgs,
    timings: &LifecycleTimings,
    idle: Option<Memory>,
    per_pod: Option<&PerPod>,
) {
    let stats = |metric, values: &[f64]| {
        print(&Line { stats: Some(Stats::of(values)), ..line("lifecycle", metric, "ms") });
    };
    stats("create_container", &timings.creates);
    stats("start_container", &timings.starts);
    stats("stop_remove_container", &timings.stop_removes);
    stats("pod_to_running", &timings.pod_to_running);
    stats("exec_sync", &timings.execs);
    let pods = Some(args.parallel);
    print(&Line {
        n: pods,
        value: Some(round(timings.parallel_wall, 4)),
        ..line("lifecycle", "parallel_pods_with_container", "s")
    });
    let mib = |kib: u64| Some(round(kib as f64 / 1024.0, 2));
    let per_pod_mib = |kib: i64| Some(round(kib as f64 / 1024.0 / args.parallel as f64, 3));
    if let Some(daemon) = timings.daemon {
        print(&Line {
            n: pods,
            value: mib(daemon.rss),
            ..line("lifecycle", "daemon_rss_with_pods", "MiB")
        });
    }
    if let (Some(group), Some(kind)) = (&timings.per_pod, per_pod) {
        let processes = Some(kind.describe());
        let n = Some(group.count);
        for (metric, kib) in [
            ("monitor_rss_max", group.rss_max),
            ("monitor_rss_sum", group.rss_sum),
            ("monitor_pss_sum", group.pss_sum),
        ] {
            print(&Line { n, value: mib(kib), processes, ..line("lifecycle", metric, "MiB") });
        }
    }
    if let (Some(daemon), Some(idle)) = (timings.daemon, idle) {
        let group = timings.per_pod.as_ref();
        let added = |with: u64, group: u64, idle: u64| with as i64 + group as i64 - idle as i64;
        let rss = added(daemon.rss, group.map_or(0, |g| g.rss_sum), idle.rss);
        let pss = added(daemon.pss, group.map_or(0, |g| g.pss_sum), idle.pss);
        print(&Line {
            n: pods,
            value: per_pod_mib(rss),
            ..line("lifecycle", "rss_per_pod", "MiB")
        });
        print(&Line {
            n: pods,
            value: per_pod_mib(pss),
            ..line("lifecycle", "pss_per_pod", "MiB")
        });
    }
    if let Some(idle) = idle {
        print(&Line { value: mib(idle.rss), ..line("idle", "daemon_rss", "MiB") });
    }
}

/// One line of output. Fields in the order of the contract's example: what, then numbers.
#[derive(Serialize)]
struct Line<'a> {
    bench: &'a str,
    metric: &'a str,
    unit: &'a str,
    #[serde(flatten)]
    stats: Option<Stats>,
    /// How many things `value` is about, when it is one figure (pods started at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(flatten)]
    image: Option<ImageFields>,
    /// Which processes a memory figure is about, when not the daemon's.
    #[serde(skip_serializing_if = "Option::is_none")]
    processes: Option<&'a str>,
    /// The runtime handler a figure is about (the `handlers` bench).
    #[serde(skip_serializing_if = "Option::is_none")]
    handler: Option<&'a str>,
    /// Why there is no figure: the handler cannot run containers on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'a str>,
    /// How many running containers a stats figure is about (the `stats` bench).
    #[serde(skip_serializing_if = "Option::is_none")]
    containers: Option<usize>,
}

#[derive(Serialize)]
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    min: f64,
    max: f64,
}

#[derive(Serialize)]
struct ImageFields {
    mb: usize,
    layers: usize,
    mb_per_s: f64,
    compressed_bytes: usize,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Stats {
            n: values.len(),
            p50: round(percentile(values, 0.5), 4),
            p90: round(percentile(values, 0.9), 4),
            min: round(min, 4),
            max: round(max, 4),
        }
    }
}

/// A line with only what it is about; fill in the rest with `..line(…)`.
fn line<'a>(bench: &'a str, metric: &'a str, unit: &'a str) -> Line<'a> {
    Line {
        bench,
        metric,
        unit,
        stats: None,
        n: None,
        value: None,
        image: None,
        processes: None,
        handler: None,
        skipped: None,
        containers: None,
    }
}

fn print(line: &Line) {
    println!("{}", serde_json::to_string(line).expect("a line serialises"));
}

fn report(args: &PullArgs, image: &Pushed, timings: &Timings, rss: Option<(u64, u64)>) {
    print(&Line {
        stats: Some(Stats::of(&timings.pulls)),
        image: Some(ImageFields {
            mb: args.mb,
            layers: args.layers,
            mb_per_s: round(args.mb as f64 / percentile(&timings.pulls, 0.5), 1),
            compressed_bytes: image.bytes,
        }),
        ..line("pull", "cold_pull", "s")
    });
    if !timings.cpu.is_empty() {
        // CPU time (user + system) the daemon spent on each pull.
        print(&Line { stats: Some(Stats::of(&timings.cpu)), ..line("pull", "daemon_cpu", "s") });
    }
    print(&Line { stats: Some(Stats::of(&timings.removes)), ..line("pull", "image_remove", "s") });
    if let Some((idle, peak)) = rss {
        let mib = |kib: u64| Some(round(kib as f64 / 1024.0, 1));
        print(&Line { value: mib(peak), ..line("pull", "daemon_peak_rss", "MiB") });
        print(&Line { value: mib(idle), ..line("idle", "daemon_rss", "MiB") });
    }
}

/// Nearest rank: the smallest value with at least `p` of the values at or below it.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in KiB.
fn read_status_kib(pid: i32, field: &str) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|err| format!("reading {path}: {err}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("no {field} in {path}").into())
}

/// User plus system CPU time of `pid` so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: i32) -> Result<f64, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|err| format!("reading {path}: {err}"))?;
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let fields: Vec<&str> = text.rsplit_once(')').ok_or("no comm")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or("short stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<_, _>>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz as f64)
}

/// Debian's docker-registry on the host's loopback, for runtimes outside any test node; its
/// config and storage in a temporary directory. Dropping it kills it and removes the directory;
/// it also dies with the bench (parent-death signal).
struct HostRegistry {
    child: Child,
    addr: String,
    // After `child` so that the registry is gone before its storage.
    dir: tempfile::TempDir,
}

impl HostRegistry {
    fn start() -> Result<HostRegistry, Error> {
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
