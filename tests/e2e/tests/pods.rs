//! Pod sandboxes over the real socket, with Debian's real CNI plugins on a bridge of the node's
//! own: what RunPodSandbox sets up (namespaces, files, /dev/shm, cgroup, network), reachability
//! between pods and through host ports, host-network pods, stop and remove, the errors, the
//! filters of ListPodSandbox, rollback of every step of a failed setup, restarts and reboots.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_cri_server::proto::{NamespaceMode, PodSandboxState, PodSandboxStatus};
use berth_e2e::berthd::{self, Options};
use berth_e2e::cni::{self, BridgeNetwork, BrokenPlugin};
use berth_e2e::cri::{filter_id, filter_labels, filter_state, pod};
use berth_e2e::{Berthd, Cri, Node};
use tonic::Code;

/// A node with a berthd whose CNI config is the bridge network. Drop order: client, daemon,
/// node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    net: BridgeNetwork,
    node: Node,
}

impl Env {
    async fn start() -> Env {
        Self::start_with(Options::default()).await
    }

    async fn start_with(options: Options) -> Env {
        let node = Node::start();
        let daemon = Berthd::start_with(&node, options).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let cri = daemon.client().await;
        Env { cri, daemon, net, node }
    }

    /// Stops berthd with SIGTERM and starts another on the same root and state. With
    /// `network`, the new one gets the same network config (and leases); without, its conf
    /// dir is empty, so only what CNI cached at ADD can tear pods' networks down.
    async fn restart(&mut self, network: bool) {
        self.daemon.stop().await;
        let options = Options {
            root: Some(self.daemon.root.clone()),
            state: Some(self.daemon.state.clone()),
            ..Default::default()
        };
        self.daemon = Berthd::start_with(&self.node, options).await;
        if network {
            self.net.install(&self.daemon);
        }
        self.cri = self.daemon.client().await;
    }

    /// `<root>/pods/<id>`: the record and the pod's files.
    fn pod_dir(&self, id: &str) -> PathBuf {
        self.daemon.root.join("pods").join(id)
    }

    /// `<state>/pods/<id>`: held namespaces and /dev/shm.
    fn state_dir(&self, id: &str) -> PathBuf {
        self.daemon.state.join("pods").join(id)
    }

    fn ns(&self, id: &str, kind: &str) -> PathBuf {
        self.state_dir(id).join("ns").join(kind)
    }

    /// Runs `argv` on the node inside the pod's namespace of `kind` (nsenter's option name).
    fn in_pod(&self, id: &str, kind: &str, argv: &[&str]) -> String {
        let ns = format!("--{kind}={}", self.ns(id, kind).display());
        let mut full = vec!["nsenter", ns.as_str()];
        full.extend_from_slice(argv);
        self.node.run(&full)
    }

    async fn status(&mut self, id: &str) -> PodSandboxStatus {
        self.cri.pod_status(id, false).await.expect("PodSandboxStatus").status.expect("a status")
    }

    async fn ip(&mut self, id: &str) -> String {
        let status = self.status(id).await;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        assert!(ip.starts_with("10.88."), "pod {id} has IP {ip:?}, not one in {}", cni::SUBNET);
        ip
    }

    async fn stop_and_remove(&mut self, id: &str) {
        self.cri.stop_pod(id).await.expect("StopPodSandbox");
        self.cri.remove_pod(id).await.expect("RemovePodSandbox");
    }

    /// Nothing of any pod is left: records, state, mounts, cgroups, veths, leases, CNI cache.
    fn assert_nothing_left(&self) {
        let entries = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let pods = self.daemon.root.join("pods");
        assert_eq!(entries(&pods), Vec::<String>::new(), "pod records left in {}", pods.display());
        let state = self.daemon.state.join("pods");
        assert_eq!(entries(&state), Vec::<String>::new(), "pod state left in {}", state.display());
        let below: Vec<String> = mounts(&self.node)
            .into_iter()
            .filter(|m| m.point.starts_with(&state) && m.point != state)
            .map(|m| m.point.display().to_string())
            .collect();
        assert_eq!(below, Vec::<String>::new(), "mounts left under {}", state.display());
        assert_eq!(self.node.cgroup_children(), Vec::<PathBuf>::new(), "cgroups left");
        assert_eq!(cni::node_veths(&self.node), Vec::<String>::new(), "veths left");
        assert_eq!(self.net.leases(), Vec::<String>::new(), "IP leases left");
        let cache = self.daemon.root.join("cni-cache");
        let cached: Vec<String> =
            entries(&cache).into_iter().filter(|n| n.ends_with(".json")).collect();
        assert_eq!(cached, Vec::<String>::new(), "CNI cache left");
        assert_eq!(berthd::monitors(&self.node), vec![], "pod monitors left");
    }
}

/// One line of the node's /proc/self/mountinfo.
struct Mount {
    point: PathBuf,
    fs_type: String,
    super_options: String,
}

fn mounts(node: &Node) -> Vec<Mount> {
    node.run(&["cat", "/proc/self/mountinfo"])
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?.replace("\\040", " ");
            let mut right = right.split(' ');
            let fs_type = right.next()?.to_string();
            let super_options = right.nth(1)?.to_string();
            Some(Mount { point: PathBuf::from(point), fs_type, super_options })
        })
        .collect()
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn is_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn pod_ids(pods: &[berth_cri_server::proto::PodSandbox]) -> BTreeSet<String> {
    pods.iter().map(|p| p.id.clone()).collect()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

#[tokio::test]
async fn run_pod_sandbox_sets_up_a_ready_pod() {
    let mut env = Env::start().await;
    let before = now_nanos();
    let config = pod("web")
        .hostname("web-0")
        .dns(&["10.96.0.10"], &["default.svc.cluster.local", "svc.cluster.local"], &["ndots:5"])
        .label("tier", "frontend")
        .annotation("example.com/note", "hello")
        .cgroup_parent("/kubepods/besteffort/pod-uid-web");
    let id = env.cri.run_pod(&config).await.expect("RunPodSandbox");
    let after = now_nanos();
    assert!(is_id(&id), "{id}");

    // What PodSandboxStatus says.
    let status = env.status(&id).await;
    assert_eq!(status.id, id);
    assert_eq!(status.state(), PodSandboxState::SandboxReady);
    assert_eq!(status.metadata, config.config.metadata);
    assert!((before..=after).contains(&status.created_at), "created_at {}", status.created_at);
    assert_eq!(status.labels, config.config.labels);
    assert_eq!(status.labels["tier"], "frontend");
    assert_eq!(status.annotations, config.config.annotations);
    assert_eq!(status.runtime_handler, "");
    let options = status.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(
        (options.network(), options.ipc(), options.pid()),
        (NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod)
    );
    let ip = env.ip(&id).await;

    // Verbose: the netns, the cgroup dirs, the CNI result.
    let info = env.cri.pod_info(&id).await;
    assert_eq!(info["netns"], env.ns(&id, "net").display().to_string(), "{info:#}");
    let cgroup_dirs: Vec<PathBuf> = info["cgroupDirs"]
        .as_array()
        .expect("cgroupDirs")
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect();
    let node_dirs = env.node.cgroup_dirs();
    assert_eq!(cgroup_dirs.len(), node_dirs.len(), "{info:#}");
    for (dir, node_dir) in cgroup_dirs.iter().zip(&node_dirs) {
        assert_eq!(dir, &node_dir.join("kubepods/besteffort/pod-uid-web"), "nested under the node");
        assert!(dir.is_dir(), "{} exists", dir.display());
    }
    let cni_ips = info["cniResult"]["ips"].as_array().expect("a CNI result with ips");
    assert!(
        cni_ips.iter().any(|i| i["address"].as_str().unwrap().starts_with(&format!("{ip}/"))),
        "{info:#}"
    );

    // The held namespaces: a network namespace with the IP on eth0, a UTS one with the hostname.
    for kind in ["net", "ipc", "uts"] {
        assert!(env.ns(&id, kind).exists(), "{kind} namespace file");
    }
    assert_eq!(env.in_pod(&id, "uts", &["hostname"]).trim(), "web-0");
    assert_ne!(env.node.run(&["hostname"]).trim(), "web-0", "the node keeps its name");
    let addrs = env.in_pod(&id, "net", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip}/16")), "{addrs}");
    assert_eq!(cni::node_veths(&env.node).len(), 1);

    // The files containers will get.
    let pod_dir = env.pod_dir(&id);
    assert_eq!(
        std::fs::read_to_string(pod_dir.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
         options ndots:5\n"
    );
    assert_eq!(std::fs::read_to_string(pod_dir.join("hostname")).unwrap(), "web-0\n");
    let hosts = std::fs::read_to_string(pod_dir.join("hosts")).unwrap();
    assert!(hosts.contains(&format!("{ip}\tweb-0\n")), "{hosts}");

    // /dev/shm: a 64 MiB tmpfs.
    let shm = env.state_dir(&id).join("shm");
    let mount = mounts(&env.node).into_iter().find(|m| m.point == shm).expect("/dev/shm mounted");
    assert_eq!(mount.fs_type, "tmpfs");
    assert!(mount.super_options.split(',').any(|o| o == "size=65536k"), "{}", mount.super_options);

    // Stop and remove take the cgroups berth made: all three levels.
    env.stop_and_remove(&id).await;
    for dir in &cgroup_dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    env.assert_nothing_left();

    // A parent that was there before is the kubelet's and stays.
    for node_dir in &node_dirs {
        let parent = node_dir.join("kubepods");
        std::fs::create_dir(&parent).unwrap();
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(node_dir.join(file)) {
                std::fs::write(parent.join(file), value.trim()).unwrap();
            }
        }
    }
    let id = env.cri.run_pod(&pod("db").cgroup_parent("/kubepods/pod-uid-db")).await.unwrap();
    for node_dir in &node_dirs {
        assert!(node_dir.join("kubepods/pod-uid-db").is_dir());
    }
    env.stop_and_remove(&id).await;
    for node_dir in &node_dirs {
        assert!(!node_dir.join("kubepods/pod-uid-db").exists());
        assert!(node_dir.join("kubepods").is_dir(), "not berth's to remove");
        std::fs::remove_dir(node_dir.join("kubepods")).unwrap();
    }
    env.assert_nothing_left();
}

#[tokio::test]
async fn pods_get_distinct_addresses_and_reach_each_other() {
    let mut env = Env::start().await;
    let a = env.cri.run_pod(&pod("a")).await.unwrap();
    let b = env.cri.run_pod(&pod("b")).await.unwrap();
    let (ip_a, ip_b) = (env.ip(&a).await, env.ip(&b).await);
    assert_ne!(ip_a, ip_b);
    let mut leases = vec![ip_a.clone(), ip_b.clone()];
    leases.sort();
    assert_eq!(env.net.leases(), leases);
    env.in_pod(&a, "net", &["busybox", "ping", "-c1", "-W2", &ip_b]);
    env.in_pod(&b, "net", &["busybox", "ping", "-c1", "-W2", &ip_a]);
    env.in_pod(&a, "net", &["busybox", "ping", "-c1", "-W2", cni::GATEWAY]);

    // Several at once: each its own address, and the names stay unique.
    let (mut c1, mut c2, mut c3, mut c4) =
        (env.cri.clone(), env.cri.clone(), env.cri.clone(), env.cri.clone());
    let (pc, pd, pe) = (pod("c"), pod("d"), pod("e"));
    let (c, d, e, dup) =
        tokio::join!(c1.run_pod(&pc), c2.run_pod(&pd), c3.run_pod(&pe), c4.run_pod(&pe));
    let (c, d) = (c.unwrap(), d.unwrap());
    let (e, dup) = match (e, dup) {
        (Ok(e), Err(dup)) | (Err(dup), Ok(e)) => (e, dup),
        other => panic!("one of two pods of the same name runs: {other:?}"),
    };
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup:?}");
    let mut ips = BTreeSet::from([ip_a.clone(), ip_b.clone()]);
    for id in [&c, &d, &e] {
        let ip = env.ip(id).await;
        assert!(ips.insert(ip.clone()), "{ip} given twice");
        env.in_pod(id, "net", &["busybox", "ping", "-c1", "-W2", &ip_a]);
    }
    assert_eq!(env.net.leases().len(), 5);
    assert_eq!(cni::node_veths(&env.node).len(), 5);

    // Remove without a stop first does the stop's work too.
    env.cri.remove_pod(&a).await.expect("RemovePodSandbox of a ready pod");
    assert!(!env.net.leases().contains(&ip_a));
    assert_eq!(cni::node_veths(&env.node).len(), 4);
    let (r1, r2, r3, r4) =
        tokio::join!(c1.remove_pod(&b), c2.remove_pod(&c), c3.remove_pod(&d), c4.remove_pod(&e),);
    for removed in [r1, r2, r3, r4] {
        removed.expect("RemovePodSandbox");
    }
    env.assert_nothing_left();
}

#[tokio::test]
async fn a_host_port_reaches_a_server_in_the_pod() {
    let mut env = Env::start().await;
    let server = env.cri.run_pod(&pod("server").port(18080, 8080)).await.unwrap();
    let client = env.cri.run_pod(&pod("client")).await.unwrap();
    let server_ip = env.ip(&server).await;

    let www = env.node.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "hi from the server pod\n").unwrap();
    let netns = format!("--net={}", env.ns(&server, "net").display());
    let www_arg = www.display().to_string();
    let mut httpd = env
        .node
        .command("nsenter")
        .args([netns.as_str(), "busybox", "httpd", "-f", "-p", "8080", "-h", &www_arg])
        .spawn()
        .expect("starting httpd in the server pod");

    // Up once it answers in its own pod.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http_get(&env.node, Some(&env.ns(&server, "net")), "127.0.0.1", 8080).is_none() {
        assert!(std::time::Instant::now() < deadline, "httpd did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = Some("hi from the server pod\n".to_string());
    assert_eq!(http_get(&env.node, Some(&env.ns(&client, "net")), &server_ip, 8080), body);
    assert_eq!(http_get(&env.node, Some(&env.ns(&client, "net")), &server_ip, 18080), None);

    // From the other pod, through the node's address on the bridge and portmap's DNAT.
    let through_gateway = http_get(&env.node, Some(&env.ns(&client, "net")), cni::GATEWAY, 18080);
    assert_eq!(through_gateway, body, "pod → {}:18080", cni::GATEWAY);
    // And from the node itself.
    assert_eq!(http_get(&env.node, None, cni::GATEWAY, 18080), body, "node → gateway:18080");
    assert!(env.node.run(&["iptables", "-t", "nat", "-S"]).contains("18080"));

    httpd.kill().unwrap();
    httpd.wait().unwrap();
    env.stop_and_remove(&server).await;
    env.stop_and_remove(&client).await;
    // portmap's rules went with the pod.
    assert!(!env.node.run(&["iptables", "-t", "nat", "-S"]).contains("18080"));
    env.assert_nothing_left();
}

/// GET / over HTTP/1.0 with busybox nc (busybox wget crashes in this static build), from the
/// node or from inside the network namespace `netns`: the body of a 200 answer.
fn http_get(node: &Node, netns: Option<&Path>, host: &str, port: u16) -> Option<String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {host} {port}");
    let mut command = node.command("nsenter");
    if let Some(netns) = netns {
        command.arg(format!("--net={}", netns.display()));
    }
    let output = command.args(["sh", "-c", &script]).output().expect("running busybox nc");
    let answer = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[tokio::test]
async fn a_host_network_pod_has_no_network_of_its_own() {
    let mut env = Env::start().await;
    let id = env.cri.run_pod(&pod("host").hostname("").host_network()).await.unwrap();
    let status = env.status(&id).await;
    assert_eq!(status.state(), PodSandboxState::SandboxReady);
    assert_eq!(status.network.map(|n| n.ip).unwrap_or_default(), "", "no IP");
    let options = status.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(options.network(), NamespaceMode::Node);

    assert!(!env.ns(&id, "net").exists(), "no network namespace held");
    assert!(!env.ns(&id, "uts").exists(), "no UTS namespace held");
    assert!(env.ns(&id, "ipc").exists(), "its own IPC namespace");
    let info = env.cri.pod_info(&id).await;
    assert!(info["netns"].is_null(), "{info:#}");
    assert!(info["cniResult"].is_null(), "{info:#}");
    // No CNI call: no cached result, no lease, no veth.
    assert!(!env.daemon.root.join("cni-cache").join(format!("{id}.json")).exists());
    assert_eq!(env.net.leases(), Vec::<String>::new());
    assert_eq!(cni::node_veths(&env.node), Vec::<String>::new());
    // The node's name.
    let hostname = std::fs::read_to_string(env.pod_dir(&id).join("hostname")).unwrap();
    assert_eq!(hostname, env.node.run(&["hostname"]));
    let shm = env.state_dir(&id).join("shm");
    assert!(mounts(&env.node).iter().any(|m| m.point == shm), "its own /dev/shm");

    // With the node's IPC namespace too, the pod holds no namespace and no /dev/shm at all.
    let node_ns = pod("node").hostname("").host_network().host_ipc();
    let all_node = env.cri.run_pod(&node_ns).await.unwrap();
    assert_eq!(env.status(&all_node).await.state(), PodSandboxState::SandboxReady);
    assert!(!env.state_dir(&all_node).join("ns").exists());
    let shm = env.state_dir(&all_node).join("shm");
    assert!(!mounts(&env.node).iter().any(|m| m.point == shm), "no /dev/shm of its own");

    env.stop_and_remove(&id).await;
    env.stop_and_remove(&all_node).await;
    env.assert_nothing_left();
}

#[tokio::test]
async fn stop_releases_the_network_and_remove_everything_else_both_twice() {
    let mut env = Env::start().await;
    let id = env.cri.run_pod(&pod("web")).await.unwrap();
    let ip = env.ip(&id).await;
    assert_eq!(env.net.leases(), vec![ip]);
    assert_eq!(cni::node_veths(&env.node).len(), 1);
    let cgroups: Vec<PathBuf> = env.cri.pod_info(&id).await["cgroupDirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect();
    assert!(cgroups.iter().all(|d| d.is_dir()));

    for _ in 0..2 {
        env.cri.stop_pod(&id).await.expect("StopPodSandbox");
        assert_eq!(env.net.leases(), Vec::<String>::new(), "the IP is released");
        assert_eq!(cni::node_veths(&env.node), Vec::<String>::new(), "the veth is gone");
        let status = env.status(&id).await;
        assert_eq!(status.state(), PodSandboxState::SandboxNotready);
        assert!(status.network.is_none_or(|n| n.ip.is_empty()));
    }
    assert!(!env.ns(&id, "net").exists(), "the namespaces are released on stop");
    // A prefix names the pod too.
    env.cri.stop_pod(&id[..12]).await.expect("StopPodSandbox by prefix");

    for _ in 0..2 {
        env.cri.remove_pod(&id).await.expect("RemovePodSandbox");
        assert!(!env.pod_dir(&id).exists());
        assert!(!env.state_dir(&id).exists());
        assert!(cgroups.iter().all(|d| !d.exists()));
    }
    let err = env.cri.pod_status(&id, false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // Stopping a pod that is gone is fine, as the CRI asks (critest checks it too).
    env.cri.stop_pod(&id).await.expect("StopPodSandbox of a removed pod");
    assert!(env.cri.list_pods(None).await.is_empty());
    env.assert_nothing_left();
}

#[tokio::test]
async fn refusals_name_what_is_wrong_and_sysctls_stay_in_the_pod() {
    let mut env = Env::start().await;
    let first = env.cri.run_pod(&pod("web")).await.unwrap();

    // The same metadata again: refused, naming the pod that has it.
    let err = env.cri.run_pod(&pod("web")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&first), "{}", err.message());
    // Another attempt is another pod.
    let second = env.cri.run_pod(&pod("web").attempt(1)).await.unwrap();

    let err = env.cri.run_pod(&pod("other").runtime_handler("gvisor")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("gvisor"), "{}", err.message());
    let via_default = env.cri.run_pod(&pod("named").runtime_handler("default")).await.unwrap();
    assert_eq!(env.status(&via_default).await.runtime_handler, "default");

    let bad_bandwidth = pod("shaped").annotation("kubernetes.io/ingress-bandwidth", "lots");
    let err = env.cri.run_pod(&bad_bandwidth).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kubernetes.io/ingress-bandwidth"), "{}", err.message());
    let err = env.cri.run_pod(&pod("ported").port(70000, 80)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("70000"), "{}", err.message());

    let err = env.cri.run_pod(&pod("unsafe").sysctl("kernel.panic", "10")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("kernel.panic"), "{}", err.message());
    assert_eq!(env.node.run(&["cat", "/proc/sys/kernel/panic"]), read_host("kernel/panic"));

    // Namespaced ones land in the pod's namespaces, not on the node.
    let node_port = env.node.run(&["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    let node_rmid = env.node.run(&["cat", "/proc/sys/kernel/shm_rmid_forced"]);
    assert_ne!(node_port.trim(), "2000");
    assert_ne!(node_rmid.trim(), "1");
    let tuned = pod("tuned")
        .sysctl("net.ipv4.ip_unprivileged_port_start", "2000")
        .sysctl("kernel.shm_rmid_forced", "1");
    let tuned = env.cri.run_pod(&tuned).await.unwrap();
    let port = env.in_pod(&tuned, "net", &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    assert_eq!(port.trim(), "2000");
    assert_eq!(env.in_pod(&tuned, "ipc", &["cat", "/proc/sys/kernel/shm_rmid_forced"]).trim(), "1");
    assert_eq!(env.node.run(&["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]), node_port);
    assert_eq!(env.node.run(&["cat", "/proc/sys/kernel/shm_rmid_forced"]), node_rmid);

    // The refused ones left nothing: only the four pods that ran are there.
    let listed = pod_ids(&env.cri.list_pods(None).await);
    assert_eq!(listed, set(&[&first, &second, &via_default, &tuned]));
    for id in [&first, &second, &via_default, &tuned] {
        env.stop_and_remove(id).await;
    }
    env.assert_nothing_left();
}

fn read_host(sysctl: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(sysctl)).unwrap()
}

#[tokio::test]
async fn list_filters_stream_and_prefixes() {
    let mut env = Env::start().await;
    // Host-network pods: quick, and the filters do not care about the network.
    let run = |name: &str| pod(name).hostname("").host_network();
    let a = env.cri.run_pod(&run("a").label("tier", "web")).await.unwrap();
    let b = env.cri.run_pod(&run("b").label("tier", "web")).await.unwrap();
    let c = env.cri.run_pod(&run("c").label("tier", "db")).await.unwrap();
    env.cri.stop_pod(&c).await.unwrap();

    // An id no pod has: a's, but for the last character.
    let missing = format!("{}{}", &a[..63], if a.ends_with('0') { '1' } else { '0' });
    let cases = [
        (None, set(&[&a, &b, &c])),
        (Some(filter_id(&a)), set(&[&a])),
        (Some(filter_id(&b[..20])), set(&[&b])),
        (Some(filter_state(PodSandboxState::SandboxReady)), set(&[&a, &b])),
        (Some(filter_state(PodSandboxState::SandboxNotready)), set(&[&c])),
        (Some(filter_labels(&[("tier", "web")])), set(&[&a, &b])),
        (Some(filter_labels(&[("tier", "web"), ("app", "a")])), set(&[&a])),
        (Some(filter_labels(&[("tier", "cache")])), set(&[])),
        (Some(filter_id(&missing)), set(&[])),
        (
            Some(berth_cri_server::proto::PodSandboxFilter {
                label_selector: filter_labels(&[("tier", "db")]).label_selector,
                ..filter_state(PodSandboxState::SandboxReady)
            }),
            set(&[]),
        ),
    ];
    for (filter, want) in cases {
        let listed = env.cri.list_pods(filter.clone()).await;
        assert_eq!(pod_ids(&listed), want, "ListPodSandbox {filter:?}");
        let streamed = env.cri.stream_pods(filter.clone()).await;
        assert_eq!(pod_ids(&streamed), want, "StreamPodSandboxes {filter:?}");
        assert_eq!(listed, streamed, "{filter:?}");
    }
    let listed = env.cri.list_pods(Some(filter_id(&a))).await;
    assert_eq!(listed[0].metadata.as_ref().unwrap().name, "a");
    assert_eq!(listed[0].state(), PodSandboxState::SandboxReady);
    assert_eq!(listed[0].labels["tier"], "web");

    // Prefixes in PodSandboxStatus: a unique one names its pod, an unknown one nothing.
    assert_eq!(env.status(&a[..6]).await.id, a);
    let used: BTreeSet<char> = [&a, &b, &c].iter().map(|id| id.chars().next().unwrap()).collect();
    let unused = "0123456789abcdef".chars().find(|ch| !used.contains(ch)).unwrap();
    let err = env.cri.pod_status(&unused.to_string(), false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // The empty id names no pod (the kubelet's stats probe, see kubelet_configs.rs).
    let err = env.cri.pod_status("", false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // An ambiguous one: more pods until two ids share a first character.
    let mut all = vec![a.clone(), b.clone(), c.clone()];
    let shared = loop {
        let firsts: Vec<char> = all.iter().map(|id| id.chars().next().unwrap()).collect();
        if let Some(ch) = firsts.iter().find(|ch| firsts.iter().filter(|x| x == ch).count() > 1) {
            break ch.to_string();
        }
        let n = all.len();
        all.push(env.cri.run_pod(&run(&format!("extra-{n}"))).await.unwrap());
    };
    let err = env.cri.pod_status(&shared, false).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ambiguous"), "{}", err.message());
    let err = env.cri.remove_pod(&shared).await.unwrap_err();
    assert!(err.message().contains("ambiguous"), "{}", err.message());
    assert_eq!(env.cri.list_pods(None).await.len(), all.len(), "nothing removed");

    for id in &all {
        env.stop_and_remove(id).await;
    }
    env.assert_nothing_left();
}

#[tokio::test]
async fn a_broken_cni_plugin_fails_the_pod_with_its_message_and_leaks_nothing() {
    let node = Node::start();
    let broken = BrokenPlugin::new(&node);
    let options = Options { cni_bin_dirs: vec![broken.bin_dir.clone()], ..Default::default() };
    let daemon = Berthd::start_with(&node, options).await;
    broken.install(&daemon);
    let net = BridgeNetwork::for_daemon(&daemon);
    let cri = daemon.client().await;
    let mut env = Env { cri, daemon, net, node };

    let web = pod("web").port(18080, 8080);
    let err = env.cri.run_pod(&web).await.unwrap_err();
    assert!(err.message().contains(BrokenPlugin::MESSAGE), "{}", err.message());
    assert!(err.message().contains(BrokenPlugin::TYPE), "names the plugin: {}", err.message());
    env.assert_nothing_left();
    assert!(env.cri.list_pods(None).await.is_empty());

    // The name was given back: with a working network the same pod runs.
    env.net.install(&env.daemon);
    let id = env.cri.run_pod(&web).await.expect("RunPodSandbox after the network was fixed");
    env.ip(&id).await;
    env.stop_and_remove(&id).await;
    env.assert_nothing_left();
}

/// A daemon whose setup fails at `failpoint`: RunPodSandbox fails, nothing is left, and the
/// same pod runs once the failpoint is gone.
async fn rolls_back_at(failpoint: &str) {
    let env_var = ("BERTH_FAILPOINTS".to_string(), failpoint.to_string());
    let mut env = Env::start_with(Options { env: vec![env_var], ..Default::default() }).await;
    let web = pod("web").port(18080, 8080).cgroup_parent("/kubepods/pod-uid-web");
    let err = env.cri.run_pod(&web).await.unwrap_err();
    assert!(err.message().contains(&format!("failpoint {failpoint}")), "{}", err.message());
    env.assert_nothing_left();
    assert!(env.cri.list_pods(None).await.is_empty());
    if failpoint == "pod.network" {
        // The network was set up, and CNI DEL took it down again.
        assert!(env.daemon.log_text().contains("CNI DEL"), "{}", env.daemon.log_text());
        assert!(!env.node.run(&["iptables", "-t", "nat", "-S"]).contains("18080"));
    }
    // The name is free again.
    env.restart(true).await;
    let id = env.cri.run_pod(&web).await.expect("RunPodSandbox without the failpoint");
    env.stop_and_remove(&id).await;
    env.assert_nothing_left();
}

#[tokio::test]
async fn rollback_after_files() {
    rolls_back_at("pod.files").await;
}

#[tokio::test]
async fn rollback_after_cgroup() {
    rolls_back_at("pod.cgroup").await;
}

#[tokio::test]
async fn rollback_after_namespaces() {
    rolls_back_at("pod.namespaces").await;
}

#[tokio::test]
async fn rollback_after_monitor() {
    rolls_back_at("pod.monitor").await;
}

#[tokio::test]
async fn rollback_after_shm() {
    rolls_back_at("pod.shm").await;
}

#[tokio::test]
async fn rollback_after_network() {
    rolls_back_at("pod.network").await;
}

/// What should survive a restart of a pod.
#[derive(Debug, PartialEq)]
struct Kept {
    id: String,
    state: PodSandboxState,
    ip: String,
    created_at: i64,
}

async fn kept(cri: &mut Cri, ids: &[&String]) -> Vec<Kept> {
    let mut all = Vec::new();
    for id in ids {
        let status = cri.pod_status(id, false).await.unwrap().status.unwrap();
        all.push(Kept {
            id: status.id.clone(),
            state: status.state(),
            ip: status.network.map(|n| n.ip).unwrap_or_default(),
            created_at: status.created_at,
        });
    }
    all
}

#[tokio::test]
async fn pods_survive_a_berthd_restart() {
    let mut env = Env::start().await;
    let ready = env.cri.run_pod(&pod("ready")).await.unwrap();
    let stopped = env.cri.run_pod(&pod("stopped")).await.unwrap();
    env.cri.stop_pod(&stopped).await.unwrap();
    let host = env.cri.run_pod(&pod("host").hostname("").host_network()).await.unwrap();
    let node = env.cri.run_pod(&pod("node").hostname("").host_network().host_ipc()).await.unwrap();
    let ids = [&ready, &stopped, &host, &node];
    let before = kept(&mut env.cri, &ids).await;
    let states: Vec<PodSandboxState> = before.iter().map(|k| k.state).collect();
    use PodSandboxState::{SandboxNotready as NotReady, SandboxReady as Ready};
    assert_eq!(states, [Ready, NotReady, Ready, Ready]);
    assert!(!before[0].ip.is_empty());

    // The new berthd has no network config: the cached one must do for the teardown.
    env.restart(false).await;
    assert_eq!(pod_ids(&env.cri.list_pods(None).await), set(&ids));
    assert_eq!(kept(&mut env.cri, &ids).await, before);
    // The ready pod's network is still there, and its name is still taken.
    env.in_pod(&ready, "net", &["busybox", "ping", "-c1", "-W2", cni::GATEWAY]);
    let err = env.cri.run_pod(&pod("ready")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    for id in ids {
        env.stop_and_remove(id).await;
    }
    env.assert_nothing_left();
}

#[tokio::test]
async fn after_a_reboot_pods_are_not_ready_and_can_be_removed() {
    let mut env = Env::start().await;
    let web = env.cri.run_pod(&pod("web")).await.unwrap();
    let host = env.cri.run_pod(&pod("host").hostname("").host_network()).await.unwrap();
    let node = env.cri.run_pod(&pod("node").hostname("").host_network().host_ipc()).await.unwrap();
    let ids = [&web, &host, &node];
    let before = kept(&mut env.cri, &ids).await;
    env.daemon.stop().await;

    // A reboot: every process is gone, the mounts under the state dir are gone, and so is the
    // state dir.
    berthd::kill_monitors(&env.node).await;
    let state = env.daemon.state.clone();
    env.node.run(&["umount", "--recursive", &state.join("pods").display().to_string()]);
    std::fs::remove_dir_all(&state).unwrap();
    // Nothing holds the network namespace any more: its veth goes with it (the kernel cleans
    // up dead network namespaces in the background).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cni::node_veths(&env.node).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the veth outlived its namespace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    env.restart(false).await;
    let after = kept(&mut env.cri, &ids).await;
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(after.state, PodSandboxState::SandboxNotready, "{after:?}");
        assert_eq!((&after.id, after.created_at), (&before.id, before.created_at));
    }
    let listed = env.cri.list_pods(Some(filter_state(PodSandboxState::SandboxNotready))).await;
    assert_eq!(pod_ids(&listed), set(&ids));

    for id in ids {
        env.stop_and_remove(id).await;
    }
    // Stop released the lease with the cached CNI result, though the namespace was gone.
    env.assert_nothing_left();
}

#[tokio::test]
async fn update_runtime_config_hands_the_pod_cidr_to_cni() {
    let mut env = Env::start().await;
    // A network with no range of its own: only the pod CIDR gives pods addresses. (No pod
    // fails before one ran: a bridge that the plugin made but could not give its gateway
    // address is refused by the next ADD, "could not set bridge's mac", with plugins 1.1.1.)
    cni::install(&env.daemon, &env.net.conflist_from_pod_cidr());
    env.cri.update_pod_cidr("10.88.7.0/24").await.expect("UpdateRuntimeConfig");
    let id = env.cri.run_pod(&pod("web")).await.unwrap();
    let ip = env.ip(&id).await;
    assert!(ip.starts_with("10.88.7."), "{ip} is not in the pod CIDR 10.88.7.0/24");
    // An empty request changes nothing.
    env.cri
        .runtime
        .update_runtime_config(berth_cri_server::proto::UpdateRuntimeConfigRequest::default())
        .await
        .expect("an empty UpdateRuntimeConfig");
    let other = env.cri.run_pod(&pod("other")).await.unwrap();
    assert!(env.ip(&other).await.starts_with("10.88.7."));
    env.stop_and_remove(&id).await;
    env.stop_and_remove(&other).await;

    // An empty pod CIDR takes it back: this network has no addresses without one.
    env.cri.update_pod_cidr("").await.expect("UpdateRuntimeConfig without a CIDR");
    let err = env.cri.run_pod(&pod("late")).await.unwrap_err();
    assert!(err.message().contains("no IP ranges"), "{}", err.message());
    env.assert_nothing_left();
}

#[tokio::test]
async fn a_dual_stack_pod_reports_its_ipv4_first_and_its_ipv6_as_additional() {
    let mut env = Env::start().await;
    env.node.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"]);
    berth_e2e::cni::install(&env.daemon, &env.net.conflist_dual_stack());
    let id = env.cri.run_pod(&pod("dual")).await.expect("RunPodSandbox");
    let status = env.status(&id).await;
    let network = status.network.expect("a pod network");
    let v4: std::net::Ipv4Addr = network.ip.parse().expect("the primary address is IPv4");
    assert_eq!(v4.octets()[..2], [10, 88]);
    assert_eq!(network.additional_ips.len(), 1, "{:?}", network.additional_ips);
    let v6: std::net::Ipv6Addr = network.additional_ips[0].ip.parse().expect("an IPv6 address");
    assert_eq!(v6.segments()[..2], [0xfd00, 0x88]);
    env.cri.stop_pod(&id).await.unwrap();
    env.cri.remove_pod(&id).await.unwrap();
    assert!(env.net.leases().is_empty(), "both leases released: {:?}", env.net.leases());
}

#[tokio::test]
async fn sysctls_of_the_pod_interface_apply_once_cni_made_it() {
    let mut env = Env::start().await;
    let config = pod("iface").sysctl("net.ipv4.conf.eth0.accept_local", "1");
    let id = env.cri.run_pod(&config).await.expect("RunPodSandbox");
    let value = env.in_pod(&id, "net", &["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"]);
    assert_eq!(value.trim(), "1");
    env.cri.stop_pod(&id).await.unwrap();
    env.cri.remove_pod(&id).await.unwrap();
}

/// A plugin placed last in the chain that takes its time on ADD and passes the result on.
fn slow_plugin(node: &Node) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = node.dir().join("slow-cni-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let script = "#!/usr/bin/env python3\n\
        import json, os, sys, time\n\
        conf = json.load(sys.stdin)\n\
        if os.environ.get('CNI_COMMAND') == 'ADD':\n    time.sleep(2)\n\
        print(json.dumps(conf.get('prevResult') or {'cniVersion': conf['cniVersion']}))\n";
    let path = dir.join("berth-e2e-slow");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn a_client_that_gives_up_does_not_leave_a_half_built_pod() {
    let node = Node::start();
    let bin = slow_plugin(&node);
    let options = Options { cni_bin_dirs: vec![bin], ..Default::default() };
    let daemon = Berthd::start_with(&node, options).await;
    let net = BridgeNetwork::for_daemon(&daemon);
    let mut conflist: serde_json::Value = serde_json::from_str(&net.conflist()).unwrap();
    conflist["plugins"].as_array_mut().unwrap().push(serde_json::json!({"type": "berth-e2e-slow"}));
    cni::install(&daemon, &conflist.to_string());
    let cri = daemon.client().await;
    let mut env = Env { cri, daemon, net, node };

    // The kubelet's deadline passes while CNI is still at work.
    let web = pod("web");
    let mut request = tonic::Request::new(berth_cri_server::proto::RunPodSandboxRequest {
        config: Some(web.config.clone()),
        runtime_handler: String::new(),
    });
    request.set_timeout(Duration::from_millis(300));
    let err = env.cri.runtime.run_pod_sandbox(request).await.unwrap_err();
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err}");

    // The setup still runs to the end: the pod is there, Ready, and owns its name.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        let pods = env.cri.list_pods(None).await;
        if let Some(pod) = pods.iter().find(|p| p.state() == PodSandboxState::SandboxReady) {
            break pod.id.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the pod never became ready: {pods:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    env.ip(&id).await;
    let err = env.cri.run_pod(&web).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(err.message().contains(&id), "{err}");
    env.stop_and_remove(&id).await;
    env.assert_nothing_left();
}
