//! Stats and container events over the real socket, with the default handler only: each figure
//! checked against a workload of known behaviour (memory held, CPU burnt for a second, bytes
//! written to the rootfs, echo requests received by a pod on the bridge network), and the event stream:
//! a full lifecycle in order for two subscribers, an exit nobody asked about, and a subscriber
//! too slow to keep up, whose stream ends while the others go on, and an exit that happened
//! while berthd was down, told once after its restart.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_cri_server::proto::{
    ContainerEventResponse, ContainerEventType, ContainerStatsFilter, ContainerStatsRequest,
    GetEventsRequest, ListContainerStatsRequest, ListPodSandboxStatsRequest,
    PodSandboxStatsRequest, StreamContainerStatsRequest,
};
use berth_e2e::cni::{self, BridgeNetwork};
use berth_e2e::cri::{container, pod, wait_log, ContainerSpec, Pod};
use berth_e2e::images::{self, LATEST_REF};
use berth_e2e::{Berthd, Cri, Node, Registry};
use tonic::{Code, Streaming};

const TIMEOUT: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;

/// Drop order: client, daemon, registry, network, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    _registry: Registry,
    net: BridgeNetwork,
    node: Node,
    image: String,
}

impl Env {
    async fn start() -> Env {
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        let daemon = Berthd::start(&node).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        let image = format!("{addr}/{LATEST_REF}");
        cri.pull(&image).await.expect("pulling the test image");
        Env { cri, daemon, _registry: registry, net, node, image }
    }

    /// The network config again, for a restarted berthd.
    fn net_install(&self) {
        self.net.install(&self.daemon);
    }

    /// A pod on the bridge network whose log directory exists.
    fn pod(&self, name: &str) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        pod(name).log_directory(logs)
    }

    fn container(&self, name: &str, script: &str) -> ContainerSpec {
        container(name, &self.image).shell(script).log_path(&format!("{name}.log"))
    }

    fn log(&self, pod: &Pod, name: &str) -> PathBuf {
        PathBuf::from(&pod.config.log_directory).join(format!("{name}.log"))
    }

    async fn events(&mut self) -> Streaming<ContainerEventResponse> {
        self.cri.runtime.get_container_events(GetEventsRequest {}).await.unwrap().into_inner()
    }
}

fn value(v: Option<berth_cri_server::proto::UInt64Value>) -> u64 {
    v.expect("a figure").value
}

#[tokio::test]
async fn container_figures_match_the_workload() {
    let mut env = Env::start().await;
    let p = env.pod("figures");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    // Not `exec`ed away: the shell keeps the 30 MiB variable while it waits for `sleep`.
    let script = "dd if=/dev/zero of=/written bs=1M count=5 && \
                  x=$(yes | head -c 31457280) && echo ready && sleep 1000; echo ${#x}";
    let spec = env.container("work", script).label("figures", "yes");
    let id = env.cri.run_container(&pod_id, &p, &spec).await.unwrap();
    wait_log(&env.log(&p, "work"), TIMEOUT, |m| m == "ready").await;

    let request = ContainerStatsRequest { container_id: id.clone() };
    let stats = env.cri.runtime.container_stats(request.clone()).await.unwrap();
    let stats = stats.into_inner().stats.unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, id);
    let memory = stats.memory.unwrap();
    assert!(value(memory.working_set_bytes) >= 30 * MIB, "{memory:?}");
    assert!(value(memory.usage_bytes) >= value(memory.working_set_bytes));
    assert!(value(memory.rss_bytes) >= 30 * MIB, "{memory:?}");
    assert!(value(memory.page_faults) > 0);
    assert!(memory.available_bytes.is_none(), "no limit, nothing available claimed");
    let layer = stats.writable_layer.unwrap();
    assert!(value(layer.used_bytes) >= 5 * MIB, "{layer:?}");
    assert!(value(layer.inodes_used) >= 2);
    assert!(!layer.fs_id.unwrap().mountpoint.is_empty());
    let cpu = stats.cpu.unwrap();
    assert!(cpu.usage_nano_cores.is_some(), "a rate on the first call");
    let before = value(cpu.usage_core_nano_seconds);

    // A second of busy loop in the container's cgroup.
    let started = Instant::now();
    let burn = ["/bin/busybox", "timeout", "1", "/bin/sh", "-c", "while :; do :; done"];
    let out = env.cri.exec_sync(&id, &burn, 10).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "{out:?}");
    let stats = env.cri.runtime.container_stats(request).await.unwrap().into_inner().stats.unwrap();
    let burnt = value(stats.cpu.unwrap().usage_core_nano_seconds) - before;
    assert!(
        // At most the second (and a little for the shell); at least half of it, since the
        // suites' other tests compete for the CPUs.
        (500_000_000..1_500_000_000).contains(&burnt),
        "burnt {burnt} ns of CPU for a second of busy loop"
    );

    // The list and the stream, by label and by pod; another pod's filter matches nothing.
    let filter = ContainerStatsFilter {
        label_selector: [("figures".to_string(), "yes".to_string())].into(),
        ..Default::default()
    };
    let listed = env
        .cri
        .runtime
        .list_container_stats(ListContainerStatsRequest { filter: Some(filter.clone()) })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let mut stream = env
        .cri
        .runtime
        .stream_container_stats(StreamContainerStatsRequest { filter: Some(filter) })
        .await
        .unwrap()
        .into_inner();
    let mut streamed = 0;
    while let Some(batch) = stream.message().await.unwrap() {
        streamed += batch.container_stats.len();
    }
    assert_eq!(streamed, 1);
    let other = ContainerStatsFilter { pod_sandbox_id: "ffff".into(), ..Default::default() };
    let none = env
        .cri
        .runtime
        .list_container_stats(ListContainerStatsRequest { filter: Some(other) })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(none.is_empty());

    // The pod: its cgroup holds the container's memory and processes.
    let pod_stats = env
        .cri
        .runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod_stats.linux.unwrap();
    assert!(value(linux.memory.unwrap().working_set_bytes) >= 30 * MIB);
    assert!(value(linux.process.unwrap().process_count) >= 1);
    assert_eq!(linux.containers.len(), 1);
    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn pod_network_counts_what_it_receives() {
    let mut env = Env::start().await;
    let p = env.pod("net");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    let spec = env.container("idle", "sleep 1000");
    env.cri.run_container(&pod_id, &p, &spec).await.unwrap();
    let status = env.cri.pod_status(&pod_id, false).await.unwrap().status.unwrap();
    let ip = status.network.unwrap().ip;
    assert!(ip.starts_with("10.88."), "{ip} not in {}", cni::SUBNET);

    let rx = |stats: &berth_cri_server::proto::PodSandboxStats| {
        let network = stats.linux.as_ref().unwrap().network.clone().expect("network stats");
        let eth0 = network.default_interface.expect("a default interface");
        assert_eq!(eth0.name, "eth0");
        value(eth0.rx_bytes)
    };
    let request = PodSandboxStatsRequest { pod_sandbox_id: pod_id.clone() };
    let before = rx(&env
        .cri
        .runtime
        .pod_sandbox_stats(request.clone())
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap());
    // Echo requests need no listener in the pod (its kernel answers), so nothing races the
    // sending: 200 packets of 1000 data bytes, each sent once the last was answered.
    const SENT: u64 = 200 * 1000;
    env.node.run(&["busybox", "ping", "-q", "-A", "-c", "200", "-s", "1000", "-W", "2", &ip]);
    let after =
        rx(&env.cri.runtime.pod_sandbox_stats(request).await.unwrap().into_inner().stats.unwrap());
    assert!(after - before >= SENT, "received {} bytes, sent {SENT}", after - before);

    let listed = env
        .cri
        .runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod_id);
    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

/// The next event about `id` on `stream`.
async fn next_for(
    stream: &mut Streaming<ContainerEventResponse>,
    id: &str,
) -> ContainerEventResponse {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event for {id} within {TIMEOUT:?}"))
            .unwrap()
            .expect("the stream goes on");
        if event.container_id == id {
            return event;
        }
    }
}

#[tokio::test]
async fn events_of_a_lifecycle_reach_two_subscribers_in_order() {
    let mut env = Env::start().await;
    let (mut a, mut b) = (env.events().await, env.events().await);
    let p = env.pod("events");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    let spec = env.container("life", "sleep 1000");
    let id = env.cri.run_container(&pod_id, &p, &spec).await.unwrap();
    env.cri.stop_container(&id, 0).await.unwrap();
    env.cri.remove_container(&id).await.unwrap();
    for stream in [&mut a, &mut b] {
        let mut last = 0;
        for expected in [
            ContainerEventType::ContainerCreatedEvent,
            ContainerEventType::ContainerStartedEvent,
            ContainerEventType::ContainerStoppedEvent,
            ContainerEventType::ContainerDeletedEvent,
        ] {
            let event = next_for(stream, &id).await;
            assert_eq!(event.container_event_type(), expected);
            assert!(event.created_at >= last, "timestamps in order");
            last = event.created_at;
            assert_eq!(event.pod_sandbox_status.as_ref().unwrap().id, pod_id);
            let listed = event.containers_statuses.iter().any(|c| c.id == id);
            assert_eq!(listed, expected != ContainerEventType::ContainerDeletedEvent);
        }
    }
    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn an_exit_nobody_asked_about_is_an_event() {
    let mut env = Env::start().await;
    let mut events = env.events().await;
    let p = env.pod("exit");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    let id = env
        .cri
        .run_container(&pod_id, &p, &env.container("quits", "sleep 1; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        next_for(&mut events, &id).await.container_event_type(),
        ContainerEventType::ContainerCreatedEvent
    );
    assert_eq!(
        next_for(&mut events, &id).await.container_event_type(),
        ContainerEventType::ContainerStartedEvent
    );
    let stopped = next_for(&mut events, &id).await;
    assert_eq!(stopped.container_event_type(), ContainerEventType::ContainerStoppedEvent);
    let status = stopped.containers_statuses.iter().find(|c| c.id == id).unwrap();
    assert_eq!(status.exit_code, 3);
    assert_eq!(stopped.created_at, status.finished_at);
    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_and_the_others_go_on() {
    let mut env = Env::start().await;
    // A connection of its own: its unread messages must not hold up the others' calls.
    let mut slow_client = env.daemon.client().await;
    let mut slow =
        slow_client.runtime.get_container_events(GetEventsRequest {}).await.unwrap().into_inner();
    let p = env.pod("slow");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    // Ballast: every event carries the statuses of the pod's containers, so that the slow
    // stream's transport buffers fill after a few dozen events.
    const BALLAST: usize = 40;
    for i in 0..BALLAST {
        let spec = env.container(&format!("ballast{i}"), "sleep 1000");
        env.cri.create_container(&pod_id, &p, &spec).await.unwrap();
    }
    let mut fast = env.events().await;
    let spec = env.container("many", "sleep 1000");
    const ROUNDS: usize = 400;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < 2 * ROUNDS {
            match tokio::time::timeout(TIMEOUT, fast.message()).await {
                Ok(Ok(Some(_))) => seen += 1,
                other => panic!("the fast subscriber's stream broke after {seen}: {other:?}"),
            }
        }
        seen
    });
    for _ in 0..ROUNDS {
        let id = env.cri.create_container(&pod_id, &p, &spec).await.unwrap();
        env.cri.remove_container(&id).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 2 * ROUNDS);
    let mut got = 0;
    let end = loop {
        match slow.message().await {
            Ok(Some(_)) => got += 1,
            other => break other,
        }
    };
    assert!(got < BALLAST + 2 * ROUNDS, "the slow subscriber got every event");
    assert_eq!(end.unwrap_err().code(), Code::ResourceExhausted);
    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn an_exit_while_berthd_was_down_is_told_once_after_a_restart() {
    let mut env = Env::start().await;
    let p = env.pod("down");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    let spec = env.container("quits", "echo up; sleep 2; exit 4");
    let id = env.cri.run_container(&pod_id, &p, &spec).await.unwrap();
    wait_log(&env.log(&p, "quits"), TIMEOUT, |m| m == "up").await;
    env.daemon.stop().await;
    // The monitor records the exit while no berthd runs.
    let exit_file = env.daemon.root.join("containers").join(&id).join("exit.json");
    let deadline = Instant::now() + TIMEOUT;
    while !exit_file.exists() {
        assert!(Instant::now() < deadline, "no exit recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let options = berth_e2e::berthd::Options {
        root: Some(env.daemon.root.clone()),
        state: Some(env.daemon.state.clone()),
        ..Default::default()
    };
    env.daemon = Berthd::start_with(&env.node, options).await;
    env.net_install();
    env.cri = env.daemon.client().await;
    let mut first = env.events().await;
    let stopped = next_for(&mut first, &id).await;
    assert_eq!(stopped.container_event_type(), ContainerEventType::ContainerStoppedEvent);
    let status = stopped.containers_statuses.iter().find(|c| c.id == id).unwrap();
    assert_eq!(status.exit_code, 4);
    // Told once: a later subscriber does not get it again, only what happens next.
    let mut second = env.events().await;
    env.cri.remove_container(&id).await.unwrap();
    let next = next_for(&mut second, &id).await;
    assert_eq!(next.container_event_type(), ContainerEventType::ContainerDeletedEvent);
    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}
