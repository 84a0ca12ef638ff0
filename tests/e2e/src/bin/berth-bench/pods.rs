//! `berth-bench pods`: pod sandboxes on the bridge network.

use super::*;

/// The default pods bench: a berthd on a test node, with the harness's bridge network.
pub(crate) fn pods_berthd(
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
pub(crate) fn pods_endpoint(
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

pub(crate) struct PodTimings {
    /// Each sequential RunPodSandbox, ms.
    pub(crate) runs: Vec<f64>,
    /// Each sequential StopPodSandbox + RemovePodSandbox, ms.
    pub(crate) stop_removes: Vec<f64>,
    /// From the first of the concurrent RunPodSandbox calls to the end of the last, s.
    pub(crate) parallel_wall: f64,
    /// The daemon's VmRSS with the concurrent pods up, KiB.
    pub(crate) rss_with_pods: Option<u64>,
}

/// The warm-up pod, the sequential runs, stops and removals, then the concurrent pods.
pub(crate) async fn pod_runs(
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
pub(crate) async fn check_ready(cri: &mut Cri, id: &str) -> Result<(), Error> {
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

pub(crate) fn report_pods(args: &PodsArgs, timings: &PodTimings, idle: Option<u64>) {
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
