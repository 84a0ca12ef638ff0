use super::create::*;
use super::stop::*;
use super::*;

#[test]
fn layers_share_a_base() {
    let layers = vec![PathBuf::from("/r/snapshots/bb/fs"), PathBuf::from("/r/snapshots/aa/fs")];
    let (base, lower) = split_layers(&layers).unwrap();
    assert_eq!(base, PathBuf::from("/r/snapshots"));
    assert_eq!(lower, vec![PathBuf::from("bb/fs"), PathBuf::from("aa/fs")]);
    assert!(split_layers(&[]).is_err());
    assert!(split_layers(&[PathBuf::from("/a/b/fs"), PathBuf::from("/c/d/fs")]).is_err());
}

#[test]
fn updates_replace_what_they_set() {
    let old = Resources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 96 << 20,
        oom_score_adj: 500,
        cpuset_cpus: "0".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 2 << 20 }],
        unified: [("memory.high".to_string(), "1M".to_string())].into(),
    };
    // Nothing set: nothing changes.
    assert_eq!(merge_resources(&old, &Resources::default()), old);
    let new = Resources {
        cpu_quota: 20_000,
        memory_limit_in_bytes: 128 << 20,
        oom_score_adj: -1000,
        cpuset_cpus: "1".into(),
        hugepage_limits: vec![
            HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 },
            HugepageLimit { page_size: "1GB".into(), limit: 1 << 30 },
        ],
        unified: [("memory.low".to_string(), "1K".to_string())].into(),
        ..Default::default()
    };
    let merged = merge_resources(&old, &new);
    assert_eq!(
        merged,
        Resources {
            cpu_quota: 20_000,
            memory_limit_in_bytes: 128 << 20,
            // The new limit comes with its own swap setting: none, so equal to it.
            memory_swap_limit_in_bytes: 0,
            cpuset_cpus: "1".into(),
            hugepage_limits: new.hugepage_limits.clone(),
            unified: [
                ("memory.high".to_string(), "1M".to_string()),
                ("memory.low".to_string(), "1K".to_string())
            ]
            .into(),
            ..old.clone()
        }
    );
    assert_eq!(merged.oom_score_adj, 500);
    let swap_only = Resources { memory_swap_limit_in_bytes: -1, ..Default::default() };
    let merged = merge_resources(&old, &swap_only);
    assert_eq!((merged.memory_limit_in_bytes, merged.memory_swap_limit_in_bytes), (64 << 20, -1));
}

#[test]
fn the_spec_gets_the_new_limits_and_keeps_its_devices() {
    use oci_spec::runtime::{
        LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
        SpecBuilder,
    };
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).build().unwrap()])
        .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
        .build()
        .unwrap();
    let spec = SpecBuilder::default()
        .linux(LinuxBuilder::default().resources(resources).build().unwrap())
        .build()
        .unwrap();
    let bytes = serde_json::to_vec(&spec).unwrap();
    let r = Resources {
        memory_limit_in_bytes: 32 << 20,
        cpu_shares: 256,
        cpuset_cpus: "0".into(),
        ..Default::default()
    };
    let updated: oci_spec::runtime::Spec =
        serde_json::from_slice(&respec(&bytes, &r, true).unwrap()).unwrap();
    let got = updated.linux().as_ref().unwrap().resources().clone().unwrap();
    let memory = got.memory().unwrap();
    assert_eq!((memory.limit(), memory.swap()), (Some(32 << 20), Some(32 << 20)));
    let cpu = got.cpu().clone().unwrap();
    assert_eq!((cpu.shares(), cpu.cpus().as_deref()), (Some(256), Some("0")));
    assert_eq!(got.devices().as_ref().unwrap().len(), 1);
    assert_eq!(got.pids().as_ref().unwrap().limit(), 10);
    // A bad value is refused before anything is written.
    let bad = Resources { cpu_shares: -2, ..Default::default() };
    assert_eq!(
        respec(&bytes, &bad, true).unwrap_err().kind(),
        crate::error::ErrorKind::InvalidArgument
    );
    // Without a hugetlb controller the kubelet's zero limits stay out of the spec, and a limit
    // that nothing could hold is refused.
    let zeros = Resources {
        hugepage_limits: vec![
            HugepageLimit { page_size: "2MB".into(), limit: 0 },
            HugepageLimit { page_size: "1GB".into(), limit: 0 },
        ],
        ..r.clone()
    };
    let updated: oci_spec::runtime::Spec =
        serde_json::from_slice(&respec(&bytes, &zeros, false).unwrap()).unwrap();
    let got = updated.linux().as_ref().unwrap().resources().clone().unwrap();
    assert_eq!(got.hugepage_limits(), &None);
    let mut asked = zeros.clone();
    asked.hugepage_limits[0].limit = 2 << 20;
    let err = respec(&bytes, &asked, false).unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("hugetlb"), "{err}");
}

#[test]
fn home_is_added_only_when_unset() {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = oci_spec::runtime::Process::default();
    process.set_env(Some(vec!["PATH=/bin".into()]));
    spec.set_process(Some(process));
    default_home(&mut spec, "/root");
    let env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap();
    assert_eq!(env, ["PATH=/bin", "HOME=/root"]);
    default_home(&mut spec, "/other");
    let env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap();
    assert_eq!(env, ["PATH=/bin", "HOME=/root"]);
}

#[test]
fn cgroup_paths_for_runtimes() {
    assert_eq!(runtime_cgroup_path("/berth/p/c", false).unwrap(), "/berth/p/c");
    assert_eq!(runtime_cgroup_path("/berth/p/c", true).unwrap(), "berth/p/c");
    assert_eq!(runtime_cgroup_path("kubepods//p/c", false).unwrap(), "/kubepods/p/c");
    assert!(runtime_cgroup_path("/a/../c", true).is_err());
}

/// Where berthd's own cgroup differs between hierarchies (memory here), each is shown
/// rooted at it; one where berthd is at the mount's root needs no view.
#[test]
fn cgroup_roots_are_berthds_own_cgroup_in_each_hierarchy() {
    let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
";
    let own = "9:name=systemd:/node\n4:memory:/job/7/node\n1:cpu:/\n0::/\n";
    let layout = CgroupLayout::parse(mountinfo, own).unwrap();
    let roots: Vec<(String, String)> = cgroup_roots(&layout)
        .unwrap()
        .into_iter()
        .map(|r| (r.mountpoint.display().to_string(), r.cgroup.display().to_string()))
        .collect();
    let expected = [
        ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/node"),
        ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/memory/job/7/node"),
    ];
    let expected: Vec<(String, String)> =
        expected.iter().map(|(m, c)| (m.to_string(), c.to_string())).collect();
    assert_eq!(roots, expected);
}

#[test]
fn the_shown_name_is_a_tag_of_the_image() {
    let tags = ["docker.io/library/busybox:latest".to_string(), "x.io/b:1".to_string()];
    assert_eq!(shown_name("x.io/b:1", &tags), "x.io/b:1", "the tag asked for");
    assert_eq!(shown_name("sha256:abc", &tags), "docker.io/library/busybox:latest", "by id");
    assert_eq!(shown_name("busybox", &tags), "docker.io/library/busybox:latest", "short form");
    assert_eq!(shown_name("sha256:abc", &[]), "sha256:abc", "an image with no tag");
}

#[test]
fn log_paths() {
    assert_eq!(log_path("/var/log/pods/x", "").unwrap(), None);
    assert_eq!(
        log_path("/var/log/pods/x", "c/0.log").unwrap(),
        Some(PathBuf::from("/var/log/pods/x/c/0.log"))
    );
    assert!(log_path("", "c/0.log").is_err());
    assert!(log_path("/var/log/pods/x", "../../etc/passwd").is_err());
}
