use super::*;
use crate::error::ErrorKind;
use oci_spec::runtime::LinuxDeviceType;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResourcesBuilder,
};
use std::collections::HashMap;
use std::io::Write;

const UNLIMITED: &str = "9223372036854771712\n";

/// A fake host in a temp dir: v1 hierarchies (`cpu,cpuacct` co-mounted, cpuset, memory,
/// hugetlb, pids, devices, name=systemd) or one v2 hierarchy; berthd in `/berthd` of each.
fn fake(v2: bool, v1_controllers: &[&str]) -> (tempfile::TempDir, CgroupLayout) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().display().to_string();
    let (mountinfo, cgroup) = if v2 {
        (format!("30 1 0:26 / {root}/unified rw - cgroup2 cgroup2 rw\n"), "0::/berthd\n".into())
    } else {
        let mut mountinfo = String::new();
        let mut cgroup = String::new();
        for (i, c) in v1_controllers.iter().enumerate() {
            let dir = c.replace("name=", "");
            mountinfo.push_str(&format!(
                "{} 1 0:{} / {root}/{dir} rw - cgroup cgroup rw,{c}\n",
                40 + i,
                40 + i
            ));
            cgroup.push_str(&format!("{}:{c}:/berthd\n", i + 1));
        }
        (mountinfo, cgroup)
    };
    let layout = CgroupLayout::parse(&mountinfo, &cgroup).unwrap();
    for h in &layout.hierarchies {
        std::fs::create_dir_all(h.mountpoint.join("berthd/pod1")).unwrap();
    }
    (tmp, layout)
}

const ALL_V1: &[&str] =
    &["cpu,cpuacct", "cpuset", "memory", "hugetlb", "pids", "devices", "name=systemd"];

/// Pre-creates the container's directories with the files the kernel would give them.
fn precreate(layout: &CgroupLayout, path: &str, files: &[(&str, &str)]) {
    for (_, dir) in layout.dirs(Path::new(path), true).unwrap() {
        std::fs::create_dir_all(&dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

fn member_dir(cg: &ContainerCgroup, controller: &str) -> PathBuf {
    cg.members
        .iter()
        .find(|m| m.has(controller) || (controller == "v2" && m.version == CgroupVersion::V2))
        .unwrap()
        .dir
        .clone()
}

fn full_resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 << 20)
                .swap(96 << 20)
                .swappiness(10u64)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000)
                .period(100_000u64)
                .cpus("0-1")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(100).build().unwrap())
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(1 << 21)
            .build()
            .unwrap()])
        .devices(vec![
            LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1)
                .minor(3)
                .access("rwm")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

const V1_FILES: &[(&str, &str)] = &[
    ("memory.limit_in_bytes", UNLIMITED),
    ("memory.memsw.limit_in_bytes", UNLIMITED),
    ("memory.swappiness", "60\n"),
    ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
    ("cpu.shares", "1024\n"),
    ("cpu.cfs_period_us", "100000\n"),
    ("cpu.cfs_quota_us", "-1\n"),
    ("cpuset.cpus", "0-3\n"),
    ("cpuset.mems", "0\n"),
    ("hugetlb.2MB.limit_in_bytes", UNLIMITED),
    ("pids.max", "max\n"),
    ("devices.allow", ""),
    ("devices.deny", ""),
];

#[test]
fn v1_mapping() {
    let (_tmp, layout) = fake(false, ALL_V1);
    let path = "/pod1/ctr1";
    precreate(&layout, path, V1_FILES);
    let cg = ContainerCgroup::open(&layout, path, true).unwrap();
    assert_eq!(cg.version(), CgroupVersion::V1);
    cg.update(&full_resources()).unwrap();

    let memory = member_dir(&cg, "memory");
    assert_eq!(read(&memory, "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(read(&memory, "memory.memsw.limit_in_bytes"), (96u64 << 20).to_string());
    assert_eq!(read(&memory, "memory.swappiness"), "10");
    let cpu = member_dir(&cg, "cpu");
    assert!(cpu.ends_with("cpu,cpuacct/berthd/pod1/ctr1"), "{cpu:?}");
    assert_eq!(read(&cpu, "cpu.shares"), "512");
    assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
    let cpuset = member_dir(&cg, "cpuset");
    assert_eq!(read(&cpuset, "cpuset.cpus"), "0-1");
    assert_eq!(read(&cpuset, "cpuset.mems"), "0");
    assert_eq!(read(&member_dir(&cg, "hugetlb"), "hugetlb.2MB.limit_in_bytes"), "2097152");
    assert_eq!(read(&member_dir(&cg, "pids"), "pids.max"), "100");
    let devices = member_dir(&cg, "devices");
    assert_eq!(read(&devices, "devices.deny"), "a *:* rwm");
    assert_eq!(read(&devices, "devices.allow"), "c 1:3 rwm");
    // Files of controllers the spec does not touch stay as they were.
    assert_eq!(read(&memory, "cpu.shares"), "1024\n");

    assert_eq!(cg.oom_kills(), 3);
    assert_eq!(cg.memory_dir(), Some(memory.clone()));
    assert_eq!(cg.procs_files().len(), ALL_V1.len());
    assert!(cg.procs_files().contains(&memory.join("cgroup.procs")));
    let mounts = cg.v1_mounts();
    let names: Vec<&str> = mounts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cpu,cpuacct", "cpuset", "memory", "hugetlb", "pids", "devices", "systemd"]);
    assert!(mounts.iter().all(|(_, dir)| dir.ends_with("berthd/pod1/ctr1")));
    assert_eq!(cg.dirs(), mounts.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>());

    // Unlimited memory with no swap given lifts the memory+swap cap too.
    let unlimited = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
        .build()
        .unwrap();
    cg.update(&unlimited).unwrap();
    assert_eq!(read(&memory, "memory.limit_in_bytes"), "-1");
    assert_eq!(read(&memory, "memory.memsw.limit_in_bytes"), "-1");

    // Zeros are "not set"; an empty spec writes nothing.
    std::fs::write(cpu.join("cpu.shares"), "7").unwrap();
    let zeros = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(0u64).quota(0).period(0u64).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(0).build().unwrap())
        .build()
        .unwrap();
    cg.update(&zeros).unwrap();
    cg.update(&LinuxResources::default()).unwrap();
    assert_eq!(read(&cpu, "cpu.shares"), "7");
    // A negative pids limit is no limit.
    let pids = LinuxResourcesBuilder::default()
        .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
        .build()
        .unwrap();
    cg.update(&pids).unwrap();
    assert_eq!(read(&member_dir(&cg, "pids"), "pids.max"), "max");
}

#[test]
fn v1_without_swap_accounting_skips_swap() {
    let (_tmp, layout) = fake(false, &["memory"]);
    let path = "/pod1/ctr1";
    precreate(&layout, path, &[("memory.limit_in_bytes", UNLIMITED)]);
    let cg = ContainerCgroup::open(&layout, path, true).unwrap();
    let r = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(64 << 20).swap(96 << 20).build().unwrap())
        .build()
        .unwrap();
    cg.update(&r).unwrap();
    let memory = member_dir(&cg, "memory");
    assert_eq!(read(&memory, "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert!(!memory.join("memory.memsw.limit_in_bytes").exists());
}

#[test]
fn v1_memory_and_swap_write_order() {
    // Raising: memory+swap first; lowering: memory first.
    assert!(swap_first(64 << 20, 256 << 20));
    assert!(swap_first(64 << 20, 64 << 20));
    assert!(!swap_first(256 << 20, 64 << 20));
    assert!(swap_first(256 << 20, -1));
    assert!(swap_first(9223372036854771712, -1));
    assert!(!swap_first(9223372036854771712, 1 << 30));
}

#[test]
fn v1_device_rules() {
    let rule = |allow: bool, typ: Option<LinuxDeviceType>, major, minor, access: &str| {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(access);
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(n) = major {
            b = b.major(n);
        }
        if let Some(n) = minor {
            b = b.minor(n);
        }
        device_rule(&b.build().unwrap())
    };
    assert_eq!(rule(false, None, None, None, "").unwrap(), ("devices.deny", "a *:* rwm".into()));
    assert_eq!(
        rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rw").unwrap(),
        ("devices.allow", "c 1:3 rw".into())
    );
    assert_eq!(
        rule(true, Some(LinuxDeviceType::B), Some(8), None, "m").unwrap(),
        ("devices.allow", "b 8:* m".into())
    );
    assert_eq!(
        rule(true, Some(LinuxDeviceType::U), None, Some(-1), "r").unwrap(),
        ("devices.allow", "c *:* r".into())
    );
    for bad in [
        rule(true, Some(LinuxDeviceType::P), None, None, "r"),
        rule(true, Some(LinuxDeviceType::C), Some(-2), None, "r"),
        rule(true, Some(LinuxDeviceType::C), Some(1), Some(3), "rwx"),
    ] {
        assert_eq!(bad.unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
}

#[test]
fn v1_refuses_unified_and_bad_hugepage_sizes() {
    let (_tmp, layout) = fake(false, &["memory"]);
    precreate(&layout, "/pod1/ctr1", &[]);
    let cg = ContainerCgroup::open(&layout, "/pod1/ctr1", true).unwrap();
    let unified = LinuxResourcesBuilder::default()
        .unified(HashMap::from([("memory.high".to_string(), "1M".to_string())]))
        .build()
        .unwrap();
    let err = cg.update(&unified).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("memory.high"), "{err}");
    cg.update(&LinuxResourcesBuilder::default().unified(HashMap::new()).build().unwrap()).unwrap();
    let hugepages = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("../2MB")
            .limit(1)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    assert_eq!(cg.update(&hugepages).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // A good size, but no hugetlb hierarchy to hold it: refused, not skipped.
    let hugepages = LinuxResourcesBuilder::default()
        .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
            .page_size("2MB")
            .limit(0)
            .build()
            .unwrap()])
        .build()
        .unwrap();
    let err = cg.update(&hugepages).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("hugetlb"), "{err}");
}

const V2_FILES: &[(&str, &str)] = &[
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n"),
    ("cpu.weight", "100\n"),
    ("cpu.max", "max 100000\n"),
    ("cpuset.cpus", "\n"),
    ("cpuset.mems", "\n"),
    ("hugetlb.2MB.max", "max\n"),
    ("pids.max", "max\n"),
    ("memory.high", "max\n"),
    ("cgroup.procs", ""),
];

#[test]
fn v2_mapping() {
    let (_tmp, layout) = fake(true, &[]);
    let path = "/pod1/ctr1";
    precreate(&layout, path, V2_FILES);
    let cg = ContainerCgroup::open(&layout, path, true).unwrap();
    assert_eq!(cg.version(), CgroupVersion::V2);
    let mut r = full_resources();
    r.set_unified(Some(HashMap::from([("memory.high".to_string(), "48M".to_string())])));
    cg.update(&r).unwrap();
    let dir = member_dir(&cg, "v2");
    assert_eq!(read(&dir, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read(&dir, "memory.swap.max"), (32u64 << 20).to_string());
    assert_eq!(read(&dir, "cpu.weight"), "20");
    assert_eq!(read(&dir, "cpu.max"), "50000 100000");
    assert_eq!(read(&dir, "cpuset.cpus"), "0-1");
    assert_eq!(read(&dir, "cpuset.mems"), "0");
    assert_eq!(read(&dir, "hugetlb.2MB.max"), "2097152");
    assert_eq!(read(&dir, "pids.max"), "100");
    assert_eq!(read(&dir, "memory.high"), "48M");
    // Device rules need eBPF on v2: nothing was written for them.
    assert!(!dir.join("devices.allow").exists());
    assert_eq!(cg.oom_kills(), 1);
    assert_eq!(cg.memory_dir(), Some(dir.clone()));
    assert!(cg.v1_mounts().is_empty());
    assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);

    let unlimited = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(-1).build().unwrap())
        .cpu(LinuxCpuBuilder::default().quota(-1).period(50_000u64).build().unwrap())
        .build()
        .unwrap();
    cg.update(&unlimited).unwrap();
    assert_eq!(read(&dir, "memory.max"), "max");
    assert_eq!(read(&dir, "memory.swap.max"), "max");
    assert_eq!(read(&dir, "cpu.max"), "max 50000");
}

/// Every file of every member, for comparing a cgroup before and after.
fn snapshot(cg: &ContainerCgroup) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dir in cg.dirs() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            files.push((entry.path(), text.trim().to_string()));
        }
    }
    files.sort();
    files
}

#[test]
fn v1_update_is_all_or_nothing() {
    let (_tmp, layout) = fake(false, ALL_V1);
    let path = "/pod1/ctr1";
    precreate(&layout, path, V1_FILES);
    let cg = ContainerCgroup::open(&layout, path, true).unwrap();
    let mut first = full_resources();
    first.set_devices(None);
    cg.update(&first).unwrap();

    // cpu, cpuset and memory are written, then the hugetlb file is missing.
    let hugetlb = member_dir(&cg, "hugetlb");
    std::fs::remove_file(hugetlb.join("hugetlb.2MB.limit_in_bytes")).unwrap();
    let before = snapshot(&cg);
    let mut r = full_resources();
    r.set_devices(None);
    r.set_memory(Some(
        LinuxMemoryBuilder::default().limit(256 << 20).swap(512 << 20).build().unwrap(),
    ));
    r.set_cpu(Some(LinuxCpuBuilder::default().shares(2048u64).cpus("3").build().unwrap()));
    let err = cg.update(&r).unwrap_err();
    assert!(err.to_string().contains("hugetlb.2MB.limit_in_bytes"), "{err}");
    assert_eq!(snapshot(&cg), before);

    // A success can be undone by its caller.
    r.set_hugepage_limits(None);
    let applied = cg.apply(&r).unwrap();
    assert_eq!(read(&member_dir(&cg, "cpu"), "cpu.shares"), "2048");
    assert_eq!(read(&member_dir(&cg, "memory"), "memory.limit_in_bytes"), "268435456");
    applied.revert().unwrap();
    assert_eq!(snapshot(&cg), before);
}

#[test]
fn v2_update_is_all_or_nothing() {
    let (_tmp, layout) = fake(true, &[]);
    let path = "/pod1/ctr1";
    precreate(&layout, path, V2_FILES);
    let cg = ContainerCgroup::open(&layout, path, true).unwrap();
    let dir = member_dir(&cg, "v2");
    let before = snapshot(&cg);
    let mut r = full_resources();
    // Sorted last: the unified files; this one does not exist.
    r.set_unified(Some(HashMap::from([("io.weight".to_string(), "200".to_string())])));
    let err = cg.update(&r).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert!(err.to_string().contains("io.weight"), "{err}");
    assert_eq!(snapshot(&cg), before);
    // The empty cpuset is written back as the kernel takes it.
    assert_eq!(read(&dir, "cpuset.cpus"), "\n");

    // A file that held several lines gets them back one write each (cgroupfs takes one
    // line per write; the fake keeps the last).
    std::fs::write(dir.join("io.weight"), "default 100\n8:0 50\n").unwrap();
    std::fs::write(dir.join("io.max"), "").unwrap();
    let mut r = LinuxResources::default();
    r.set_unified(Some(HashMap::from([
        ("io.weight".to_string(), "default 300".to_string()),
        ("io.max".to_string(), "8:0 rbps=1".to_string()),
        ("memory.max".to_string(), "1M".to_string()),
    ])));
    std::fs::remove_file(dir.join("memory.max")).unwrap();
    assert!(cg.update(&r).is_err());
    assert_eq!(read(&dir, "io.max"), "\n");
    assert_eq!(read(&dir, "io.weight"), "8:0 50");
}

#[test]
fn v2_conversions() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(1), 1);
    assert_eq!(shares_to_weight(1 << 40), 10_000);
    assert_eq!(cpu_max(Some(50_000), Some(100_000)).as_deref(), Some("50000 100000"));
    assert_eq!(cpu_max(None, Some(100_000)).as_deref(), Some("max 100000"));
    assert_eq!(cpu_max(Some(20_000), None).as_deref(), Some("20000"));
    assert_eq!(cpu_max(None, None), None);
    let swap = |limit: Option<i64>, swap: Option<i64>| {
        let mut b = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            b = b.limit(l);
        }
        if let Some(s) = swap {
            b = b.swap(s);
        }
        v2_swap(&b.build().unwrap())
    };
    assert_eq!(swap(Some(100), Some(300)).unwrap().as_deref(), Some("200"));
    assert_eq!(swap(Some(100), Some(100)).unwrap().as_deref(), Some("0"));
    assert_eq!(swap(Some(100), Some(-1)).unwrap().as_deref(), Some("max"));
    assert_eq!(swap(Some(-1), None).unwrap().as_deref(), Some("max"));
    assert_eq!(swap(Some(100), None).unwrap(), None);
    assert_eq!(swap(Some(100), Some(0)).unwrap(), None);
    for (limit, s) in [(Some(100), Some(50)), (None, Some(50)), (Some(-1), Some(50))] {
        assert_eq!(swap(limit, s).unwrap_err().kind(), ErrorKind::InvalidArgument);
    }
}

#[test]
fn v2_refuses_unified_keys_outside_the_cgroup() {
    let (_tmp, layout) = fake(true, &[]);
    for key in ["../memory.max", "a/b", "..", ""] {
        let r = LinuxResourcesBuilder::default()
            .unified(HashMap::from([(key.to_string(), "1".to_string())]))
            .build()
            .unwrap();
        let err = ContainerCgroup::create(&layout, "/pod1/ctr1", true, &r).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{key:?}");
        // Refused before anything was made.
        assert!(layout.dirs(Path::new("/pod1/ctr1"), true).unwrap()[0]
            .1
            .parent()
            .unwrap()
            .is_dir());
        assert!(!layout.dirs(Path::new("/pod1/ctr1"), true).unwrap()[0].1.exists());
    }
}

#[test]
fn failed_create_removes_what_it_made() {
    let memory = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(1 << 20).build().unwrap())
        .build()
        .unwrap();
    for v2 in [false, true] {
        let (_tmp, layout) = fake(v2, &["memory", "pids"]);
        // The fake's new directories have no control files: the write fails as it would
        // without the memory controller.
        let err = ContainerCgroup::create(&layout, "/pod1/ctr1", true, &memory).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        assert!(err.to_string().contains(file), "{err}");
        assert!(err.to_string().contains("1048576"), "{err}");
        for (_, dir) in layout.dirs(Path::new("/pod1/ctr1"), true).unwrap() {
            assert!(!dir.exists(), "{dir:?}");
            assert!(dir.parent().unwrap().is_dir());
        }
        // The pod's cgroup must exist: the container's is never made without it.
        let err = ContainerCgroup::create(&layout, "/nopod/ctr1", true, &memory).unwrap_err();
        assert!(err.to_string().contains("nopod"), "{err}");
        // Without resources it is made, then removed; removing twice is fine.
        let cg = ContainerCgroup::create(&layout, "/pod1/ctr1", true, &LinuxResources::default())
            .unwrap();
        assert!(cg.dirs().iter().all(|d| d.is_dir()));
        assert_eq!(cg.oom_kills(), 0);
        cg.remove().unwrap();
        assert!(cg.dirs().iter().all(|d| !d.exists()));
        cg.remove().unwrap();
        cg.kill_all().unwrap();
    }
}

#[test]
fn v2_create_enables_the_parents_controllers() {
    assert_eq!(
        not_enabled("cpuset cpu io memory pids\n", "cpu memory\n"),
        ["cpuset", "io", "pids"]
    );
    assert!(not_enabled("cpu memory\n", "cpu memory\n").is_empty());
    assert_eq!(not_enabled("memory\n", ""), ["memory"]);
    let (_tmp, layout) = fake(true, &[]);
    let pod = layout.dirs(Path::new("/pod1"), true).unwrap()[0].1.clone();
    std::fs::write(pod.join("cgroup.controllers"), "memory pids\n").unwrap();
    std::fs::write(pod.join("cgroup.subtree_control"), "memory\n").unwrap();
    ContainerCgroup::create(&layout, "/pod1/ctr1", true, &LinuxResources::default()).unwrap();
    // A regular file keeps only the last write; cgroupfs would have taken each.
    assert_eq!(read(&pod, "cgroup.subtree_control"), "+pids");
}

/// Removes what the real-host test made even when it fails half way.
struct Cleanup {
    layout: CgroupLayout,
    pod_created: Vec<String>,
    container: Option<ContainerCgroup>,
    child: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(cg) = &self.container {
            let _ = cg.kill_all();
            let _ = cg.remove();
        }
        let _ = crate::cgroups::pod::remove(&self.layout, &self.pod_created, true);
    }
}

#[test]
fn real_v1_cgroup_on_this_host() {
    use std::os::unix::process::ExitStatusExt;

    let layout = CgroupLayout::detect().unwrap();
    if layout.mode == crate::cgroups::CgroupMode::Unified {
        eprintln!("this host manages cgroup v2; the v1 test does not apply");
        return;
    }
    let pod = format!("/berth-test-ctr-cgroup-{}/pod", std::process::id());
    let pod_created = crate::cgroups::pod::create(&layout, &pod, true).unwrap();
    let mut cleanup = Cleanup { layout: layout.clone(), pod_created, container: None, child: None };

    let mut r = full_resources();
    r.set_hugepage_limits(None);
    // A cpuset the host surely has.
    r.set_cpu(Some(
        LinuxCpuBuilder::default()
            .shares(512u64)
            .quota(50_000)
            .period(100_000u64)
            .cpus("0")
            .build()
            .unwrap(),
    ));
    let path = format!("{pod}/ctr");
    let cg = ContainerCgroup::create(&layout, &path, true, &r).unwrap();
    cleanup.container = Some(cg.clone());
    let memory = cg.memory_dir().unwrap();
    let number = |file: &str| read(&memory, file).trim().parse::<u64>().unwrap();
    assert_eq!(number("memory.limit_in_bytes"), 64 << 20);
    let swap_accounting = memory.join("memory.memsw.limit_in_bytes").exists();
    if swap_accounting {
        assert_eq!(number("memory.memsw.limit_in_bytes"), 96 << 20);
    }
    for (name, dir) in cg.v1_mounts() {
        assert!(dir.is_dir(), "{name}: {dir:?}");
        match name.as_str() {
            "cpu" | "cpu,cpuacct" => {
                assert_eq!(read(&dir, "cpu.shares").trim(), "512");
                assert_eq!(read(&dir, "cpu.cfs_quota_us").trim(), "50000");
            }
            "cpuset" => assert_eq!(read(&dir, "cpuset.cpus").trim(), "0"),
            "pids" => assert_eq!(read(&dir, "pids.max").trim(), "100"),
            "devices" => assert_eq!(read(&dir, "devices.list").trim(), "c 1:3 rwm"),
            _ => {}
        }
    }

    // Raising both limits, then lowering both: the writes must come in the right order.
    let set = |limit: i64, swap: i64| {
        LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(limit).swap(swap).build().unwrap())
            .build()
            .unwrap()
    };
    cg.update(&set(256 << 20, 512 << 20)).unwrap();
    assert_eq!(number("memory.limit_in_bytes"), 256 << 20);
    cg.update(&set(32 << 20, 32 << 20)).unwrap();
    assert_eq!(number("memory.limit_in_bytes"), 32 << 20);
    if swap_accounting {
        assert_eq!(number("memory.memsw.limit_in_bytes"), 32 << 20);
        let err = cg.update(&set(64 << 20, 48 << 20)).unwrap_err();
        assert!(err.to_string().contains("memory."), "{err}");
    }
    assert_eq!(cg.oom_kills(), 0);

    // The kernel refuses the last write (swappiness above 200): the limits written before
    // it go back, in the order the kernel accepts, whether they were rising or falling.
    let cpu = cg.v1_mounts().into_iter().find(|(n, _)| n == "cpu" || n == "cpu,cpuacct");
    let shares = |cpu: &Option<(String, PathBuf)>| {
        cpu.as_ref().map(|(_, dir)| read(dir, "cpu.shares").trim().to_string())
    };
    let shares_before = shares(&cpu);
    let (limit, memsw) = (
        number("memory.limit_in_bytes"),
        swap_accounting.then(|| number("memory.memsw.limit_in_bytes")),
    );
    for (new_limit, new_swap) in [(256 << 20, 512 << 20), (16 << 20, 16 << 20)] {
        let mut bad = set(new_limit, new_swap);
        bad.set_cpu(Some(LinuxCpuBuilder::default().shares(1000u64).build().unwrap()));
        let mut memory = bad.memory().unwrap();
        memory.set_swappiness(Some(1000));
        bad.set_memory(Some(memory));
        let err = cg.update(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("memory.swappiness"), "{err}");
        assert_eq!(number("memory.limit_in_bytes"), limit);
        if let Some(memsw) = memsw {
            assert_eq!(number("memory.memsw.limit_in_bytes"), memsw);
        }
        assert_eq!(shares(&cpu), shares_before);
    }

    // A shell that keeps forking once it is in the cgroup (stdin tells it when).
    let mut child = std::process::Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            "read x; while :; do /bin/busybox sleep 100 & /bin/busybox sleep 0.01; done",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    cleanup.child = Some(child);
    for file in cg.procs_files() {
        std::fs::write(&file, pid.to_string()).unwrap();
        let procs = read(file.parent().unwrap(), "cgroup.procs");
        assert!(procs.lines().any(|l| l == pid.to_string()));
    }
    stdin.write_all(b"go\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let memory_procs = read(&memory, "cgroup.procs");
    assert!(memory_procs.lines().count() > 2, "{memory_procs}");
    cg.kill_all().unwrap();
    let status = cleanup.child.take().unwrap().wait().unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    assert!(cg.procs_files().iter().all(|f| std::fs::read_to_string(f).unwrap().is_empty()));
    cg.remove().unwrap();
    assert!(cg.dirs().iter().all(|d| !d.exists()));
    cleanup.container = None;
}
