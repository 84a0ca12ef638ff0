//! `berth-bench lifecycle`: containers created, started, stopped and removed as the kubelet
//! would, and the memory of many running at once.

use super::*;

/// What every container of the lifecycle bench runs: it says when its trap is set (before
/// that, a SIGTERM to a PID namespace's init would be ignored, and every stop would take the
/// whole grace period) and exits at once on SIGTERM.
pub(crate) const WORKLOAD: &str = "trap 'exit 0' TERM; echo ready; sleep 3600 & wait";
/// How long a started container may take to log `ready`.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The grace period of the timed StopContainer calls.
pub(crate) const STOP_TIMEOUT: i64 = 10;

/// The processes that hold a runtime's pods, measured with the pods up.
pub(crate) enum PerPod {
    /// berth's pod monitors (`… monitor --pod <id>`).
    Monitors,
    /// Another runtime's shims or conmons, by the file name of their `argv[0]`.
    Named(String),
}

impl PerPod {
    pub(crate) fn describe(&self) -> &str {
        match self {
            PerPod::Monitors => "berth monitors",
            PerPod::Named(name) => name,
        }
    }
}

/// What a lifecycle run needs besides its CRI client.
pub(crate) struct Lifecycle {
    pub(crate) image: String,
    pub(crate) tag: String,
    /// Where each pod's log directory is made (the kubelet makes them before RunPodSandbox).
    pub(crate) logs: PathBuf,
    pub(crate) daemon_pid: Option<i32>,
    pub(crate) per_pod: Option<PerPod>,
    /// Every pod and container id this run got back, for finding its processes and leftovers.
    pub(crate) ids: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The pods' `runtime_handler` ("" is the runtime's default).
    pub(crate) handler: String,
}

pub(crate) struct LifecycleTimings {
    pub(crate) creates: Vec<f64>,
    pub(crate) starts: Vec<f64>,
    pub(crate) stop_removes: Vec<f64>,
    pub(crate) pod_to_running: Vec<f64>,
    pub(crate) execs: Vec<f64>,
    pub(crate) parallel_wall: f64,
    /// With the concurrent pods running.
    pub(crate) daemon: Option<Memory>,
    pub(crate) per_pod: Option<GroupMemory>,
}

/// The default lifecycle bench: a berthd on a test node, the bridge network, the busybox test
/// image from the node's registry.
pub(crate) fn lifecycle_berthd(
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

/// Another runtime on `endpoint`: `--image`, or the test image from a registry on the host's
/// loopback.
pub(crate) fn lifecycle_endpoint(
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
    pub(crate) fn on_node(node: &Node, image: String, per_pod: Option<PerPod>) -> Lifecycle {
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
    pub(crate) fn pod(&self, name: &str) -> Result<Pod, Error> {
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

    pub(crate) fn container(&self) -> ContainerSpec {
        container("work", &self.image)
            .shell(WORKLOAD)
            .log_path("work.log")
            .pid_mode(NamespaceMode::Container)
    }

    pub(crate) fn remember(&self, id: &str) {
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(id.to_string());
        }
    }

    pub(crate) fn ids(&self) -> std::collections::HashSet<String> {
        self.ids.lock().map(|ids| ids.clone()).unwrap_or_default()
    }

    /// RunPodSandbox of a new pod `name`; returns its id and config.
    pub(crate) async fn run_pod(&self, cri: &mut Cri, name: &str) -> Result<(String, Pod), Error> {
        let pod = self.pod(name)?;
        let id = cri.run_pod(&pod).await.map_err(rpc("RunPodSandbox"))?;
        self.remember(&id);
        Ok((id, pod))
    }

    /// Untimed: the container goes at once (SIGKILL), then its pod.
    pub(crate) async fn remove_pod(
        &self,
        cri: &mut Cri,
        pod_id: &str,
        container: &str,
    ) -> Result<(), Error> {
        cri.stop_container(container, 0).await.map_err(rpc("StopContainer"))?;
        cri.stop_pod(pod_id).await.map_err(rpc("StopPodSandbox"))?;
        cri.remove_pod(pod_id).await.map_err(rpc("RemovePodSandbox"))?;
        Ok(())
    }
}

/// Waits until the container has logged `ready` (its SIGTERM trap is set).
pub(crate) async fn wait_ready(cri: &mut Cri, pod: &Pod, id: &str) -> Result<(), Error> {
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
pub(crate) async fn lifecycle_runs(
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
pub(crate) async fn parallel_pods(
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

pub(crate) fn report_lifecycle(
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
