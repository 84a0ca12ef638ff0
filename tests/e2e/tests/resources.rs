//! Container and pod resources over the real socket: the limits of CreateContainer as the
//! cgroup files hold them, read from the host and from inside the container;
//! UpdateContainerResources raising and lowering them, refused by the kernel (and then leaving
//! every old value in place), and refused for a container that is not running;
//! UpdatePodSandboxResources on the pod's cgroup.
//!
//! These read cgroup v1 files, as this host has; v2 is covered by the unit tests on fake trees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_cri_server::proto::{ContainerState, HugepageLimit, LinuxContainerResources};
use berth_e2e::cri::{container, pod, ContainerSpec, Pod};
use berth_e2e::images;
use berth_e2e::{Berthd, Cri, Node, Registry};
use berth_runtime::cgroups::{CgroupLayout, CgroupMode};
use tonic::Code;

const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const MIB: i64 = 1 << 20;

/// Drop order: client, daemon, registry, node.
struct Env {
    cri: Cri,
    _daemon: Berthd,
    registry: Registry,
    node: Node,
}

impl Env {
    /// None on a host whose cgroups are v2 only: these tests read v1 files.
    async fn start() -> Option<Env> {
        let layout = CgroupLayout::detect().expect("the cgroup layout");
        if layout.mode == CgroupMode::Unified {
            eprintln!("this host manages cgroup v2; the v1 resource tests do not apply");
            return None;
        }
        let node = Node::start();
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        let daemon = Berthd::start(&node).await;
        let cri = daemon.client().await;
        Some(Env { cri, _daemon: daemon, registry, node })
    }

    async fn image(&mut self) -> String {
        let name = format!("{}/{}", self.registry.addr, images::OCI_REF);
        self.cri.pull(&name).await.unwrap_or_else(|err| panic!("pulling {name}: {err}"));
        name
    }

    async fn run_pod(&mut self, name: &str) -> (String, Pod) {
        let pod = pod(name).hostname("").host_network();
        let id = self.cri.run_pod(&pod).await.unwrap_or_else(|err| panic!("running {name}: {err}"));
        (id, pod)
    }

    async fn run(&mut self, pod_id: &str, pod: &Pod, spec: &ContainerSpec) -> String {
        let id = self.cri.run_container(pod_id, pod, spec).await.expect("running a container");
        assert_eq!(self.cri.container(&id).await.state(), ContainerState::ContainerRunning);
        id
    }

    /// The container's cgroup directory on the host in the hierarchy of `controller`: its
    /// cgroup as berthd names it (verbose status), under the node's cgroup, where berthd runs.
    async fn container_dir(&mut self, id: &str, controller: &str) -> PathBuf {
        let info = self.cri.container_info(id).await;
        let cgroup = info["cgroup"].as_str().expect("verbose info has the cgroup").to_string();
        let dir = self.cgroup_dir(&cgroup, controller);
        assert_eq!(dir.file_name().unwrap().to_str(), Some(id), "{dir:?}");
        dir
    }

    async fn pod_dir(&mut self, id: &str, controller: &str) -> PathBuf {
        let info = self.cri.pod_info(id).await;
        let cgroup = info["cgroup"].as_str().expect("verbose info has the cgroup").to_string();
        let dir = self.cgroup_dir(&cgroup, controller);
        let listed: Vec<PathBuf> = info["cgroupDirs"]
            .as_array()
            .expect("verbose info has the cgroup dirs")
            .iter()
            .map(|d| PathBuf::from(d.as_str().unwrap()))
            .collect();
        assert!(listed.contains(&dir), "{dir:?} is not among {listed:?}");
        dir
    }

    fn cgroup_dir(&self, cgroup: &str, controller: &str) -> PathBuf {
        let layout = CgroupLayout::detect().expect("the cgroup layout");
        let path = format!("{}/{}", self.node.name, cgroup.trim_start_matches('/'));
        let dirs = layout.dirs(Path::new(&path), true).expect("cgroup dirs");
        let (_, dir) = dirs
            .into_iter()
            .find(|(h, _)| h.controllers.iter().any(|c| c == controller))
            .unwrap_or_else(|| panic!("no managed hierarchy has {controller}"));
        assert!(dir.is_dir(), "{dir:?}");
        dir
    }

    /// A cgroup file as the container sees it (its own cgroup, mounted read-only).
    async fn inside(&mut self, id: &str, file: &str) -> String {
        let path = format!("/sys/fs/cgroup/{file}");
        let out = self.cri.exec_sync(id, &["cat", &path], 10).await.expect("ExecSync cat");
        assert_eq!(out.exit_code, 0, "{path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The container's limits as ContainerStatus reports them.
    async fn reported(&mut self, id: &str) -> LinuxContainerResources {
        let status = self.cri.container(id).await;
        status.resources.and_then(|r| r.linux).expect("ContainerStatus has the resources")
    }

    /// `linux.resources` of the OCI spec in the verbose status.
    async fn spec_resources(&mut self, id: &str) -> serde_json::Value {
        let info = self.cri.container_info(id).await;
        info["runtimeSpec"]["linux"]["resources"].clone()
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.join(file).display()))
        .trim()
        .to_string()
}

/// The CPUs this node's cgroups may use (e.g. `0-1`), and one of them other than the first
/// when there is one.
fn cpus(node_cpuset: &Path) -> (String, String) {
    let all = read(node_cpuset, "cpuset.cpus");
    let first = all.split([',', '-']).next().unwrap().to_string();
    let last = all.rsplit([',', '-']).next().unwrap().to_string();
    (first, last)
}

/// A container's limits as the host and the container itself see them.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    shares: String,
    quota: String,
    period: String,
    cpus: String,
    mems: String,
    memory: String,
    memsw: Option<String>,
}

async fn seen_from_host(env: &mut Env, id: &str) -> Seen {
    let cpu = env.container_dir(id, "cpu").await;
    let cpuset = env.container_dir(id, "cpuset").await;
    let memory = env.container_dir(id, "memory").await;
    Seen {
        shares: read(&cpu, "cpu.shares"),
        quota: read(&cpu, "cpu.cfs_quota_us"),
        period: read(&cpu, "cpu.cfs_period_us"),
        cpus: read(&cpuset, "cpuset.cpus"),
        mems: read(&cpuset, "cpuset.mems"),
        memory: read(&memory, "memory.limit_in_bytes"),
        memsw: memory
            .join("memory.memsw.limit_in_bytes")
            .exists()
            .then(|| read(&memory, "memory.memsw.limit_in_bytes")),
    }
}

async fn seen_from_inside(env: &mut Env, id: &str, swap_accounting: bool) -> Seen {
    let memsw = if swap_accounting {
        Some(env.inside(id, "memory/memory.memsw.limit_in_bytes").await)
    } else {
        None
    };
    Seen {
        shares: env.inside(id, "cpu/cpu.shares").await,
        quota: env.inside(id, "cpu/cpu.cfs_quota_us").await,
        period: env.inside(id, "cpu/cpu.cfs_period_us").await,
        cpus: env.inside(id, "cpuset/cpuset.cpus").await,
        mems: env.inside(id, "cpuset/cpuset.mems").await,
        memory: env.inside(id, "memory/memory.limit_in_bytes").await,
        memsw,
    }
}

/// Reads the limits from both sides, which must agree, and compares them with `want`
/// (`memsw` is only compared where the host accounts swap).
async fn assert_seen(env: &mut Env, id: &str, want: Seen, what: &str) {
    let host = seen_from_host(env, id).await;
    let inside = seen_from_inside(env, id, host.memsw.is_some()).await;
    assert_eq!(host, inside, "{what}: the host and the container disagree");
    let want = Seen { memsw: want.memsw.filter(|_| host.memsw.is_some()), ..want };
    assert_eq!(host, want, "{what}");
}

fn limits(
    shares: i64,
    quota: i64,
    period: i64,
    cpus: &str,
    memory: i64,
    swap: i64,
) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: period,
        cpuset_cpus: cpus.to_string(),
        cpuset_mems: "0".to_string(),
        memory_limit_in_bytes: memory,
        memory_swap_limit_in_bytes: swap,
        ..Default::default()
    }
}

#[tokio::test]
async fn container_limits_are_in_its_cgroup_and_updates_change_them() {
    let Some(mut env) = Env::start().await else { return };
    let image = env.image().await;
    let (pod_id, pod) = env.run_pod("limits").await;
    let (first, last) = cpus(&env.pod_dir(&pod_id, "cpuset").await);

    let created = limits(512, 50_000, 100_000, &first, 64 * MIB, 96 * MIB);
    let spec = container("limited", &image).command(&["sleep", "3600"]).resources(created.clone());
    let id = env.run(&pod_id, &pod, &spec).await;
    let want =
        |shares: &str, quota: &str, period: &str, cpus: &str, memory: i64, memsw: i64| Seen {
            shares: shares.into(),
            quota: quota.into(),
            period: period.into(),
            cpus: cpus.into(),
            mems: "0".into(),
            memory: memory.to_string(),
            memsw: Some(memsw.to_string()),
        };
    assert_seen(
        &mut env,
        &id,
        want("512", "50000", "100000", &first, 64 * MIB, 96 * MIB),
        "created",
    )
    .await;
    assert_eq!(env.reported(&id).await, created);

    // Raised: more memory and swap, more shares, a shorter period, another CPU.
    let raised = limits(1024, 20_000, 50_000, &last, 128 * MIB, 256 * MIB);
    env.cri.update_container_resources(&id, raised.clone()).await.expect("raising the limits");
    assert_seen(
        &mut env,
        &id,
        want("1024", "20000", "50000", &last, 128 * MIB, 256 * MIB),
        "raised",
    )
    .await;
    assert_eq!(env.reported(&id).await, raised);
    let spec_resources = env.spec_resources(&id).await;
    assert_eq!(spec_resources["memory"]["limit"], 128 * MIB, "{spec_resources}");
    assert_eq!(spec_resources["cpu"]["cpus"], last.as_str(), "{spec_resources}");
    // The device rules of the spec stay.
    assert!(spec_resources["devices"].as_array().is_some_and(|d| !d.is_empty()));

    // Lowered, with only some fields set: the others keep their values, and a memory limit
    // without swap caps memory+swap at the same value.
    let lowered = LinuxContainerResources {
        cpu_shares: 256,
        memory_limit_in_bytes: 32 * MIB,
        cpuset_cpus: first.clone(),
        ..Default::default()
    };
    env.cri.update_container_resources(&id, lowered).await.expect("lowering the limits");
    assert_seen(
        &mut env,
        &id,
        want("256", "20000", "50000", &first, 32 * MIB, 32 * MIB),
        "lowered",
    )
    .await;
    let reported = env.reported(&id).await;
    assert_eq!(
        reported,
        LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 32 * MIB,
            memory_swap_limit_in_bytes: 0,
            cpuset_cpus: first.clone(),
            ..raised.clone()
        }
    );

    // oom_score_adj cannot change under a running process: it is ignored, and reported as
    // it was.
    let oom = LinuxContainerResources { oom_score_adj: 999, ..Default::default() };
    env.cri.update_container_resources(&id, oom).await.expect("an oom_score_adj update");
    assert_eq!(env.reported(&id).await, reported);

    // Requests refused before anything is written: as at create.
    let before = seen_from_host(&mut env, &id).await;
    let unified = LinuxContainerResources {
        unified: [("memory.high".to_string(), "1M".to_string())].into(),
        ..Default::default()
    };
    let negative = LinuxContainerResources { cpu_shares: -5, ..Default::default() };
    for (bad, naming) in [(unified, "memory.high"), (negative, "cpu shares")] {
        let err = env.cri.update_container_resources(&id, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(naming), "{err:?}");
    }
    assert_eq!(seen_from_host(&mut env, &id).await, before);
    assert_eq!(env.reported(&id).await, reported);

    // Hugepages, where the host has the controller.
    if Path::new("/sys/fs/cgroup/hugetlb").is_dir() {
        let huge = LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 4 * MIB as u64 }],
            ..Default::default()
        };
        let spec = container("huge", &image).command(&["sleep", "3600"]).resources(huge);
        let huge_id = env.run(&pod_id, &pod, &spec).await;
        let dir = env.container_dir(&huge_id, "hugetlb").await;
        assert_eq!(read(&dir, "hugetlb.2MB.limit_in_bytes"), (4 * MIB).to_string());
        let inside = env.inside(&huge_id, "hugetlb/hugetlb.2MB.limit_in_bytes").await;
        assert_eq!(inside, (4 * MIB).to_string());
        let more = LinuxContainerResources {
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 8 * MIB as u64 }],
            ..Default::default()
        };
        env.cri.update_container_resources(&huge_id, more).await.expect("more hugepages");
        assert_eq!(read(&dir, "hugetlb.2MB.limit_in_bytes"), (8 * MIB).to_string());
    } else {
        eprintln!("this host has no hugetlb cgroup controller; hugepage limits not tested");
    }

    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn an_update_the_kernel_refuses_leaves_every_old_value() {
    let Some(mut env) = Env::start().await else { return };
    let image = env.image().await;
    let (pod_id, pod) = env.run_pod("refused").await;
    let (first, _) = cpus(&env.pod_dir(&pod_id, "cpuset").await);

    // dd fills a 30 MiB buffer and then blocks writing it to a pipe nobody reads: the memory
    // stays in use, and without swap the kernel cannot reclaim it.
    let created = limits(512, 50_000, 100_000, &first, 64 * MIB, 64 * MIB);
    let spec = container("holder", &image)
        .shell("dd if=/dev/zero bs=30M count=1 2>/dev/null | sleep 3600")
        .resources(created.clone());
    let id = env.run(&pod_id, &pod, &spec).await;
    let memory = env.container_dir(&id, "memory").await;
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while read(&memory, "memory.usage_in_bytes").parse::<i64>().unwrap() < 30 * MIB {
        assert!(Instant::now() < deadline, "the container never held 30 MiB");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = seen_from_host(&mut env, &id).await;
    let spec_before = env.spec_resources(&id).await;

    // Each update changes the CPU shares first (the cpu hierarchy comes before the others
    // here), then asks for something the kernel refuses: the shares must go back.
    let below_usage = LinuxContainerResources {
        cpu_shares: 2048,
        memory_limit_in_bytes: 16 * MIB,
        ..Default::default()
    };
    let err = env.cri.update_container_resources(&id, below_usage).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("memory.limit_in_bytes"), "{err:?}");
    assert!(err.message().contains("uses more memory than the new limit"), "{err:?}");
    assert_eq!(seen_from_host(&mut env, &id).await, before, "after a refused memory limit");

    let no_such_cpu = LinuxContainerResources {
        cpu_shares: 2048,
        cpuset_cpus: "1000".into(),
        ..Default::default()
    };
    let err = env.cri.update_container_resources(&id, no_such_cpu).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cpuset.cpus"), "{err:?}");
    assert!(err.message().contains("1000"), "{err:?}");

    assert_eq!(seen_from_host(&mut env, &id).await, before, "after a refused cpuset");
    assert_eq!(env.reported(&id).await, created);
    assert_eq!(env.spec_resources(&id).await, spec_before);
    // The container is unharmed and still holds its memory.
    assert_eq!(env.cri.container(&id).await.state(), ContainerState::ContainerRunning);
    assert!(read(&memory, "memory.usage_in_bytes").parse::<i64>().unwrap() >= 30 * MIB);

    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn only_created_and_running_containers_can_be_updated() {
    let Some(mut env) = Env::start().await else { return };
    let image = env.image().await;
    let (pod_id, pod) = env.run_pod("states").await;
    let memory = LinuxContainerResources { memory_limit_in_bytes: 64 * MIB, ..Default::default() };

    // Created, not started yet: its cgroup exists and takes the limits.
    let spec = container("created", &image).command(&["sleep", "3600"]);
    let created = env.cri.create_container(&pod_id, &pod, &spec).await.unwrap();
    env.cri.update_container_resources(&created, memory.clone()).await.expect("created");
    let dir = env.container_dir(&created, "memory").await;
    assert_eq!(read(&dir, "memory.limit_in_bytes"), (64 * MIB).to_string());
    env.cri.start_container(&created).await.unwrap();
    assert_eq!(env.inside(&created, "memory/memory.limit_in_bytes").await, (64 * MIB).to_string());

    // Exited: as containerd, an error.
    let spec = container("exited", &image).shell("exit 0");
    let exited = env.cri.run_container(&pod_id, &pod, &spec).await.unwrap();
    env.cri.wait_exited(&exited, EXIT_TIMEOUT).await;
    let err = env.cri.update_container_resources(&exited, memory.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("exited"), "{err:?}");
    // Stopped: the same.
    env.cri.stop_container(&created, 0).await.unwrap();
    let err = env.cri.update_container_resources(&created, memory.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let err = env.cri.update_container_resources("nosuchcontainer", memory).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    env.cri.stop_pod(&pod_id).await.unwrap();
    env.cri.remove_pod(&pod_id).await.unwrap();
}

#[tokio::test]
async fn pod_sandbox_resources_go_into_the_pod_cgroup() {
    let Some(mut env) = Env::start().await else { return };
    let image = env.image().await;
    let (pod_id, pod) = env.run_pod("podres").await;
    // A container with its own limits inside.
    let spec =
        container("inner", &image).command(&["sleep", "3600"]).resources(LinuxContainerResources {
            memory_limit_in_bytes: 32 * MIB,
            ..Default::default()
        });
    env.run(&pod_id, &pod, &spec).await;
    let cpu = env.pod_dir(&pod_id, "cpu").await;
    let memory = env.pod_dir(&pod_id, "memory").await;
    let swap_accounting = memory.join("memory.memsw.limit_in_bytes").exists();

    // The pod's resources plus its overhead.
    let resources = LinuxContainerResources {
        cpu_shares: 1024,
        cpu_quota: 100_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 256 * MIB,
        ..Default::default()
    };
    let overhead = LinuxContainerResources {
        cpu_shares: 100,
        cpu_quota: 10_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 16 * MIB,
        ..Default::default()
    };
    env.cri
        .update_pod_resources(&pod_id, resources.clone(), overhead.clone())
        .await
        .expect("UpdatePodSandboxResources");
    assert_eq!(read(&cpu, "cpu.shares"), "1124");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "110000");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&memory, "memory.limit_in_bytes"), (272 * MIB).to_string());
    if swap_accounting {
        assert_eq!(read(&memory, "memory.memsw.limit_in_bytes"), (272 * MIB).to_string());
    }

    // Lowered.
    let lowered = LinuxContainerResources { memory_limit_in_bytes: 128 * MIB, ..resources.clone() };
    env.cri.update_pod_resources(&pod_id, lowered, overhead.clone()).await.expect("lowering");
    assert_eq!(read(&memory, "memory.limit_in_bytes"), (144 * MIB).to_string());

    // Refused by the kernel after the shares were written: they go back.
    let bad = LinuxContainerResources {
        cpu_shares: 4096,
        cpuset_cpus: "1000".into(),
        ..Default::default()
    };
    let err = env.cri.update_pod_resources(&pod_id, bad, overhead).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cpuset.cpus"), "{err:?}");
    assert_eq!(read(&cpu, "cpu.shares"), "1124");
    assert_eq!(read(&memory, "memory.limit_in_bytes"), (144 * MIB).to_string());

    // A stopped pod, and no pod at all.
    env.cri.stop_pod(&pod_id).await.unwrap();
    let none = LinuxContainerResources::default();
    let err = env.cri.update_pod_resources(&pod_id, resources.clone(), none.clone()).await;
    assert_eq!(err.unwrap_err().code(), Code::FailedPrecondition);
    let err = env.cri.update_pod_resources("nosuchpod", resources, none).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    env.cri.remove_pod(&pod_id).await.unwrap();
}
