//! `berth-bench pull`: cold pulls of a big image.

use super::*;

/// What a pull bench needs of the image once it is pushed (the image itself, as big as its
/// data, is dropped after the push).
pub(crate) struct Pushed {
    pub(crate) reference: String,
    pub(crate) config_digest: String,
    pub(crate) bytes: usize,
}

pub(crate) fn build_image(args: &PullArgs) -> images::TestImage {
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
    pub(crate) fn of(image: &images::TestImage, registry: &str) -> Pushed {
        Pushed {
            reference: image.reference_at(registry),
            config_digest: image.config.digest.clone(),
            bytes: image.layers.iter().map(|layer| layer.size()).sum(),
        }
    }
}

/// The default: a berthd on a test node, the registry on the node's loopback.
pub(crate) fn bench_berthd(
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

/// Another runtime on `endpoint`, the registry on the host's loopback.
pub(crate) fn bench_endpoint(
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
pub(crate) struct Timings {
    pub(crate) pulls: Vec<f64>,
    pub(crate) removes: Vec<f64>,
    /// The daemon's CPU time per pull, when its pid is known.
    pub(crate) cpu: Vec<f64>,
}

/// `runs` cold pulls, each followed by the removal of the image; checks that the image, and
/// with berth its snapshots, are gone before the next pull.
pub(crate) async fn pull_runs(
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
pub(crate) fn count_snapshots(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count()
        })
        .unwrap_or(0)
}

pub(crate) fn report(args: &PullArgs, image: &Pushed, timings: &Timings, rss: Option<(u64, u64)>) {
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
