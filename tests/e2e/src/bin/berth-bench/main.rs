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

mod handlers;
mod lifecycle;
mod memory;
mod pods;
mod pull;
mod report;
mod setup;
mod stats;
mod streaming;

// The benches share one namespace: each module takes what it needs of the others through
// `use super::*`.
use handlers::*;
use lifecycle::*;
use memory::*;
use pods::*;
use pull::*;
use report::*;
use setup::*;
use stats::*;
use streaming::*;

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
