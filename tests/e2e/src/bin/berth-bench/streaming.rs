//! `berth-bench streaming`: exec round trips and port-forward throughput.

use super::*;

/// The streaming bench: a berthd on a test node, one pod whose container serves a file of
/// `mb` MiB with busybox httpd on the pod's loopback; exec round trips and port-forward
/// transfers through the streaming server, as kubectl's SPDY client makes them.
pub(crate) fn streaming_berthd(
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
