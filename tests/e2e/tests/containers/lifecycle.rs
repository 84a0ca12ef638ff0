//! A container's life: exit codes and reasons, stop with its grace period, what a listed
//! container says, what StopPodSandbox and RemovePodSandbox do to containers, bad input that
//! must leave nothing behind, an image removed under a container, and containers that outlive
//! a killed berthd.

use super::*;

pub(super) async fn exit_codes_and_reasons(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("exits").await;

    let oom = container("oom", &image).memory_limit(20 << 20).command(&[
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    ]);
    let cases = [
        (container("zero", &image).shell("exit 0"), 0, "Completed"),
        (container("three", &image).shell("exit 3"), 3, "Error"),
        (oom, 137, "OOMKilled"),
    ];
    for (spec, exit_code, reason) in cases {
        let before = now_nanos();
        let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
        let status = env.cri.wait_exited(&id, EXIT_TIMEOUT).await;
        assert_eq!((status.exit_code, status.reason.as_str()), (exit_code, reason), "{status:?}");
        assert!(before <= status.created_at, "{status:?}");
        assert!(status.created_at <= status.started_at, "{status:?}");
        assert!(status.started_at <= status.finished_at, "{status:?}");
        assert!(status.finished_at <= now_nanos(), "{status:?}");
        // The memory limit is reported as given.
        let limit = status.resources.and_then(|r| r.linux).map(|l| l.memory_limit_in_bytes);
        let expected = spec.config.linux.as_ref().and_then(|l| l.resources.as_ref());
        assert_eq!(limit, expected.map(|r| r.memory_limit_in_bytes));
    }

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn an_image_removed_under_a_container_keeps_its_layers_until_the_container_goes(
    handler: &'static str,
) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("held").await;
    let spec = container("c", &image).command(&["sleep", "3600"]);
    let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    let snapshots = env.daemon.root.join("images/snapshots");
    let layers = entries(&snapshots).len();
    assert!(layers > 0);

    // RemoveImage collects garbage, but not what a container runs on.
    env.cri.remove_image(&image).await.expect("RemoveImage");
    assert_eq!(entries(&snapshots).len(), layers, "layers of a running container collected");
    let out = env.cri.exec_sync(&id, &["ls", "/bin/busybox"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));

    // Once the container is gone, the next collection takes them.
    env.cri.stop_container(&id, 0).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    env.cri.remove_image(&image).await.expect("RemoveImage of an absent image");
    assert_eq!(entries(&snapshots), Vec::<String>::new(), "layers left after the container");
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn stop_signals_waits_the_grace_period_and_kills(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("stops").await;

    // Ignores SIGTERM: killed once the 2 s are up.
    let stubborn = container("stubborn", &image)
        .log_path("stubborn.log")
        .shell("trap '' TERM; echo ready; while true; do sleep 0.1; done");
    // Exits on SIGTERM within the grace period.
    let polite = container("polite", &image)
        .log_path("polite.log")
        .shell("trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done");
    // Its own stop signal.
    let usr1 = container("usr1", &image)
        .log_path("usr1.log")
        .stop_signal(Signal::Sigusr1)
        .shell("trap 'exit 4' USR1; trap '' TERM; echo ready; while true; do sleep 0.1; done");
    let sleeper =
        container("sleeper", &image).log_path("sleeper.log").shell("echo ready; exec sleep 1000");

    // (spec, grace period, at least, at most, exit code)
    let secs = Duration::from_secs;
    let cases = [
        (stubborn, 2, secs(2), secs(8), 137),
        (polite, 10, Duration::ZERO, secs(5), 0),
        (usr1, 10, Duration::ZERO, secs(5), 4),
        (sleeper, 0, Duration::ZERO, secs(2), 137),
    ];
    for (spec, timeout, at_least, at_most, exit_code) in cases {
        let id = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
        wait_log(&env.log(&pod, &spec), EXIT_TIMEOUT, |m| m == "ready").await;
        let started = Instant::now();
        env.cri.stop_container(&id, timeout).await.expect("StopContainer");
        let took = started.elapsed();
        let name = &spec.config.metadata.as_ref().unwrap().name;
        assert!(at_least <= took && took <= at_most, "{name}: stop took {took:?}");
        let status = env.cri.container(&id).await;
        assert_eq!(status.state(), ContainerState::ContainerExited, "{name}: {status:?}");
        assert_eq!(status.exit_code, exit_code, "{name}: {status:?}");
        // Stopping a stopped container is fine, and changes nothing.
        env.cri.stop_container(&id, timeout).await.expect("StopContainer again");
        assert_eq!(env.cri.container(&id).await.finished_at, status.finished_at);
    }

    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

pub(super) async fn list_filters_stream_and_what_a_listed_container_says(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_a, a) = env.run_pod("a").await;
    let (pod_b, b) = env.run_pod("b").await;
    let sleeper = |name: &str| container(name, &image).command(&["sleep", "1000"]);

    let running = env
        .cri
        .run_container(&pod_a, &a, &sleeper("running").label("tier", "web").annotation("n", "1"))
        .await
        .unwrap();
    let created =
        env.cri.create_container(&pod_a, &a, &sleeper("created").label("tier", "db")).await;
    let created = created.unwrap();
    let exited = container("exited", &image).label("tier", "web").command(&["true"]);
    let exited = env.cri.run_container(&pod_b, &b, &exited).await.unwrap();
    env.cri.wait_exited(&exited, EXIT_TIMEOUT).await;

    let missing = format!("{}{}", &running[..63], if running.ends_with('0') { '1' } else { '0' });
    let cases = [
        (None, set(&[&running, &created, &exited])),
        (Some(containers_by_id(&running)), set(&[&running])),
        (Some(containers_by_id(&created[..20])), set(&[&created])),
        (Some(containers_by_id(&missing)), set(&[])),
        (Some(containers_by_state(ContainerState::ContainerRunning)), set(&[&running])),
        (Some(containers_by_state(ContainerState::ContainerCreated)), set(&[&created])),
        (Some(containers_by_state(ContainerState::ContainerExited)), set(&[&exited])),
        (Some(containers_by_state(ContainerState::ContainerUnknown)), set(&[])),
        (Some(containers_by_pod(&pod_a)), set(&[&running, &created])),
        (Some(containers_by_pod(&pod_b)), set(&[&exited])),
        (Some(containers_by_labels(&[("tier", "web")])), set(&[&running, &exited])),
        (Some(containers_by_labels(&[("tier", "web"), ("app", "exited")])), set(&[&exited])),
        (Some(containers_by_labels(&[("tier", "cache")])), set(&[])),
        (
            Some(berth_cri_server::proto::ContainerFilter {
                label_selector: containers_by_labels(&[("tier", "web")]).label_selector,
                ..containers_by_pod(&pod_a)
            }),
            set(&[&running]),
        ),
    ];
    for (filter, want) in cases {
        let listed = env.cri.list_containers(filter.clone()).await;
        assert_eq!(ids(&listed), want, "ListContainers {filter:?}");
        let streamed = env.cri.stream_containers(filter.clone()).await;
        assert_eq!(ids(&streamed), want, "StreamContainers {filter:?}");
    }

    let listed = env.cri.list_containers(Some(containers_by_id(&running))).await;
    let c = &listed[0];
    let oci = &TestImages::get().oci;
    let repository = format!("{}/berth-test/busybox", env.registry.addr);
    assert_eq!(c.pod_sandbox_id, pod_a);
    assert_eq!(c.metadata.as_ref().map(|m| (m.name.as_str(), m.attempt)), Some(("running", 0)));
    assert_eq!(c.image.as_ref().map(|i| i.image.as_str()), Some(image.as_str()));
    assert_eq!(c.image_id, oci.config.digest);
    assert_eq!(c.image_ref, format!("{repository}@{}", oci.digest()));
    assert_eq!(c.state(), ContainerState::ContainerRunning);
    assert!(c.created_at > 0);
    assert_eq!(c.labels["tier"], "web");
    assert_eq!(c.annotations["n"], "1");
    // ContainerStatus by a unique prefix names the same container.
    assert_eq!(env.cri.container(&running[..12]).await.id, running);
    // A lookup of no id finds nothing (the kubelet probes stats support that way).
    let err = env.cri.container_status("", false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    env.stop_and_remove_pod(&pod_a).await;
    env.stop_and_remove_pod(&pod_b).await;
    env.assert_no_containers().await;
}

pub(super) async fn stop_pod_sandbox_stops_its_containers_and_remove_removes_them(
    handler: &'static str,
) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("web").await;
    let (other_id, other) = env.run_pod("other").await;
    let sleeper = |name: &str| container(name, &image).command(&["sleep", "1000"]);
    let one = env.cri.run_container(&pod_id, &pod, &sleeper("one")).await.unwrap();
    let two = env.cri.run_container(&pod_id, &pod, &sleeper("two")).await.unwrap();
    let created = env.cri.create_container(&pod_id, &pod, &sleeper("created")).await.unwrap();
    let elsewhere = env.cri.run_container(&other_id, &other, &sleeper("elsewhere")).await.unwrap();

    env.cri.stop_pod(&pod_id).await.expect("StopPodSandbox");
    for id in [&one, &two] {
        let status = env.cri.container(id).await;
        assert_eq!(status.state(), ContainerState::ContainerExited, "{status:?}");
        assert!(status.finished_at > 0, "{status:?}");
    }
    // The other pod's container runs on.
    assert_eq!(env.cri.container(&elsewhere).await.state(), ContainerState::ContainerRunning);
    // A stopped pod takes no new containers.
    let err = env.cri.create_container(&pod_id, &pod, &sleeper("late")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    env.cri.remove_pod(&pod_id).await.expect("RemovePodSandbox");
    for id in [&one, &two, &created] {
        let err = env.cri.container_status(id, false).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        // Stopping and removing what is gone is fine, as the CRI asks.
        env.cri.stop_container(id, 0).await.expect("StopContainer of a removed container");
        env.cri.remove_container(id).await.expect("RemoveContainer of a removed container");
    }
    let listed = env.cri.list_containers(None).await;
    assert_eq!(ids(&listed), set(&[&elsewhere]));
    assert_eq!(env.container_dirs(), vec![elsewhere.clone()]);

    env.stop_and_remove_pod(&other_id).await;
    env.assert_no_containers().await;
    // Removing a removed container is fine.
    env.cri.remove_container(&one).await.expect("RemoveContainer of a removed container");
}

pub(super) async fn bad_input_fails_and_leaves_nothing(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let (pod_id, pod) = env.run_pod("bad").await;
    let cgroups_before = env.node.cgroup_children();
    let not_pulled = format!("{}/berth-test/busybox:never-pushed", env.registry.addr);

    // (what, container, a word the error must name)
    let cases = [
        ("an image not pulled", container("c", &not_pulled), "never-pushed".to_string()),
        (
            "a relative mount source",
            container("c", &image).mount(bind("relative/dir", "/data")),
            "relative/dir".to_string(),
        ),
        (
            "an unknown user name",
            container("c", &image).run_as_username("no-such-user"),
            "no-such-user".to_string(),
        ),
        (
            "a missing executable",
            container("c", &image).command(&["/no/such/binary"]),
            "/no/such/binary".to_string(),
        ),
        (
            "no metadata",
            ContainerSpec {
                config: berth_cri_server::proto::ContainerConfig {
                    metadata: None,
                    ..container("c", &image).config
                },
            },
            "metadata".to_string(),
        ),
    ];
    for (what, spec, word) in cases {
        let err = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap_err();
        assert!(err.message().contains(&word), "{what}: {err:?}");
        assert_eq!(env.cri.list_containers(None).await, Vec::<Container>::new(), "{what}");
        assert_eq!(env.container_dirs(), Vec::<String>::new(), "{what}");
        assert_eq!(env.node.cgroup_children(), cgroups_before, "{what}: cgroups left");
    }
    // An unknown pod: this one's id, but for the last character.
    let flip = if pod_id.ends_with('0') { '1' } else { '0' };
    let unknown = format!("{}{flip}", &pod_id[..63]);
    let err = env.cri.create_container(&unknown, &pod, &container("c", &image)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // The name was never taken: the same container can be made now.
    let id = env.cri.create_container(&pod_id, &pod, &container("c", &image)).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    env.stop_and_remove_pod(&pod_id).await;
    env.assert_no_containers().await;
}

/// What must survive a berthd that is killed and started again.
#[derive(Debug, PartialEq)]
pub(super) struct Kept {
    pub(super) id: String,
    pub(super) state: ContainerState,
    pub(super) created_at: i64,
    pub(super) started_at: i64,
}

pub(super) async fn kept(cri: &mut Cri, ids: &[String]) -> Vec<Kept> {
    let mut all = Vec::new();
    for id in ids {
        let status = cri.container(id).await;
        all.push(Kept {
            id: status.id.clone(),
            state: status.state(),
            created_at: status.created_at,
            started_at: status.started_at,
        });
    }
    all
}

pub(super) fn log_sizes(paths: &[PathBuf]) -> Vec<u64> {
    paths.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).collect()
}

pub(super) async fn containers_outlive_a_killed_berthd(handler: &'static str) {
    let mut env = Env::start(handler).await;
    let image = env.image(images::OCI_REF).await;
    let pods = [env.run_pod("left").await, env.run_pod("right").await];
    let trigger = env.dir("trigger");
    let tick = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";
    // The first one ends by itself once the trigger file appears: while berthd is down.
    let until_trigger =
        "i=0; while [ ! -e /trigger/go ]; do echo tick $i; i=$((i+1)); sleep 0.1; done; exit 7";

    let mut ids = Vec::new();
    let mut logs = Vec::new();
    for n in 0..10 {
        let (pod_id, pod) = &pods[n % 2];
        let mut spec =
            container(&format!("ticker-{n}"), &image).log_path(&format!("ticker-{n}.log"));
        spec = if n == 0 {
            spec.mount(Mount { readonly: true, ..bind(&trigger, "/trigger") }).shell(until_trigger)
        } else {
            spec.shell(tick)
        };
        ids.push(env.cri.run_container(pod_id, pod, &spec).await.unwrap());
        logs.push(env.log(pod, &spec));
    }
    for log in &logs {
        wait_log(log, EXIT_TIMEOUT, |m| m == "tick 1").await;
    }
    let before = kept(&mut env.cri, &ids).await;
    assert!(before.iter().all(|k| k.state == ContainerState::ContainerRunning), "{before:?}");

    env.kill_daemon().await;
    let down = log_sizes(&logs);
    let triggered_at = now_nanos();
    std::fs::write(trigger.join("go"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = log_sizes(&logs);
    for n in 1..10 {
        assert!(later[n] > down[n], "ticker-{n}'s log stopped growing while berthd was down");
    }

    env.start_daemon_again().await;
    let listed = ids_sorted(&env.cri.list_containers(None).await);
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected);
    let after = kept(&mut env.cri, &ids).await;
    assert_eq!(after[1..], before[1..], "the running ones are as they were");
    assert_eq!((&after[0].id, after[0].created_at), (&before[0].id, before[0].created_at));
    let first = env.cri.container(&ids[0]).await;
    assert_eq!(first.state(), ContainerState::ContainerExited, "{first:?}");
    assert_eq!((first.exit_code, first.reason.as_str()), (7, "Error"), "{first:?}");
    assert!(triggered_at <= first.finished_at && first.finished_at <= now_nanos(), "{first:?}");
    // The logs go on.
    let restarted = log_sizes(&logs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = log_sizes(&logs);
    for n in 1..10 {
        assert!(now[n] > restarted[n], "ticker-{n}'s log stopped after the restart");
    }

    for (pod_id, _) in &pods {
        env.cri.stop_pod(pod_id).await.expect("StopPodSandbox");
    }
    for id in &ids {
        assert_eq!(env.cri.container(id).await.state(), ContainerState::ContainerExited, "{id}");
    }
    for (pod_id, _) in &pods {
        env.cri.remove_pod(pod_id).await.expect("RemovePodSandbox");
    }
    env.assert_no_containers().await;
}

pub(super) fn ids_sorted(containers: &[Container]) -> Vec<String> {
    ids(containers).into_iter().collect()
}
