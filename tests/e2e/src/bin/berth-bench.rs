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
//! Build and run: `cargo build --release -p berth-e2e --bin berth-bench &&
//! sudo target/release/berth-bench pull --mb 200 --layers 5 --runs 3`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_cri_server::proto::{ListPodSandboxRequest, PodSandboxState};
use berth_e2e::cni::{self, BridgeNetwork};
use berth_e2e::crafted;
use berth_e2e::cri::{filter_labels, pod, Pod};
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
        let mut cri = Cri::connect(&socket)
            .await
            .map_err(|err| format!("connecting to {}: {err}", socket.display()))?;
        let version = cri.version().await?;
        eprintln!(
            "berth-bench: {} {} on {endpoint}",
            version.runtime_name, version.runtime_version
        );
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
        let mut cri = Cri::connect(&socket)
            .await
            .map_err(|err| format!("connecting to {}: {err}", socket.display()))?;
        let version = cri.version().await?;
        eprintln!(
            "berth-bench: {} {} on {endpoint}",
            version.runtime_name, version.runtime_version
        );
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
    Line { bench, metric, unit, stats: None, n: None, value: None, image: None }
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
