//! `berth-bench handlers`: CreateContainer and StartContainer with each runtime handler.

use super::*;

/// The handlers bench: a berthd on a test node; for each handler, `runs` pods with one
/// container, CreateContainer and StartContainer timed. A handler whose first container fails
/// (crun refuses a hybrid cgroup layout) is reported as skipped, with the reason.
pub(crate) fn handlers_berthd(
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

/// `runs` pods with one container of `setup.handler`; returns the create and start times, ms.
/// The first container is a probe: if it cannot run, nothing is timed.
pub(crate) async fn handler_runs(
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
