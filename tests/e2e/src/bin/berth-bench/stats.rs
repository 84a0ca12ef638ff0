//! `berth-bench stats`: what the kubelet polls, over many running containers.

use super::*;

/// How long berth serves a writable layer's measured usage before walking it again (its
/// `berth_runtime::stats::LAYER_REFRESH`), and a margin.
pub(crate) const LAYER_CACHE_EXPIRY: Duration = Duration::from_millis(10_500);

pub(crate) struct StatsTimings {
    pub(crate) first: f64,
    pub(crate) container_stats: Vec<f64>,
    pub(crate) walk: f64,
    pub(crate) pod_stats: Vec<f64>,
    pub(crate) pod_metrics: Vec<f64>,
}

/// The stats bench: a berthd on a test node, the bridge network, `containers` running
/// containers of the lifecycle workload.
pub(crate) fn stats_berthd(
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
pub(crate) async fn stats_runs(
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
pub(crate) async fn timed_container_stats(cri: &mut Cri, containers: usize) -> Result<f64, Error> {
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
pub(crate) async fn stats_calls(
    cri: &mut Cri,
    args: &StatsArgs,
    pods: usize,
) -> Result<StatsTimings, Error> {
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
