use std::collections::BTreeSet;

use super::*;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, LinuxDeviceType, LinuxNamespaceType, Spec};

use crate::container::types::{Capabilities as CriCaps, ContainerMetadata, HugepageLimit};
use crate::container::types::{
    ContainerConfig, Device, ImageRunConfig, Mount, Propagation, ResolvedUser, Resources,
    SecurityContext,
};
use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::userns::{self, UserNamespace};

type Strs = &'static [&'static str];
type Pairs<'a> = Vec<(&'a str, &'a str)>;
type Triples<'a> = Vec<(&'a str, &'a str, &'a str)>;

fn pod() -> PodContext {
    PodContext {
        hostname: "web-0".into(),
        net: Some("/run/berth/pods/p1/ns/net".into()),
        ipc: Some("/run/berth/pods/p1/ns/ipc".into()),
        uts: Some("/run/berth/pods/p1/ns/uts".into()),
        pid: PidNamespace::New,
        cgroup_ns: false,
        hosts: "/var/lib/berth/pods/p1/hosts".into(),
        resolv_conf: "/var/lib/berth/pods/p1/resolv.conf".into(),
        hostname_file: "/var/lib/berth/pods/p1/hostname".into(),
        shm: Some("/run/berth/pods/p1/shm".into()),
        sandbox_id: "p1".into(),
        user: None,
    }
}

fn config() -> ContainerConfig {
    ContainerConfig {
        metadata: ContainerMetadata { name: "app".into(), attempt: 0 },
        image: "docker.io/library/busybox:latest".into(),
        command: vec!["/bin/sh".into()],
        ..Default::default()
    }
}

fn build_for(config: &ContainerConfig, pod: &PodContext) -> Result<Spec> {
    build_full(config, &ImageRunConfig::default(), pod, 0)
}

fn build_full(
    config: &ContainerConfig,
    image: &ImageRunConfig,
    pod: &PodContext,
    floor: i64,
) -> Result<Spec> {
    let user = ResolvedUser { uid: 1000, gid: 100, additional_gids: vec![100, 10] };
    build(&SpecInputs {
        id: "c1",
        config,
        image,
        user: &user,
        pod,
        rootfs: Path::new("/run/berth/containers/c1/rootfs"),
        cgroup_path: "/kubepods/pod1/c1",
        oom_score_adj_floor: floor,
        hugetlb: true,
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T>, naming: &str) {
    match result {
        Err(err) => {
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(err.to_string().contains(naming), "{err} should name {naming}");
        }
        Ok(v) => panic!("expected InvalidArgument naming {naming}, got {v:?}"),
    }
}

#[test]
fn args() {
    // (command, args, entrypoint, cmd) → argv or None for an error.
    let cases: &[(Strs, Strs, Strs, Strs, Option<Strs>)] = &[
        (&["sh"], &["-c", "x"], &["ep"], &["cmd"], Some(&["sh", "-c", "x"])),
        (&["sh"], &[], &["ep"], &["cmd"], Some(&["sh"])),
        (&[], &["a"], &["ep", "1"], &["cmd"], Some(&["ep", "1", "a"])),
        (&[], &[], &["ep"], &["cmd", "2"], Some(&["ep", "cmd", "2"])),
        (&[], &[], &[], &["cmd"], Some(&["cmd"])),
        (&[], &["a"], &[], &["cmd"], Some(&["a"])),
        (&[], &[], &[""], &["cmd"], Some(&["cmd"])),
        (&[], &[], &[""], &[], None),
        (&[], &[], &[], &[], None),
    ];
    for (command, args, entrypoint, cmd, want) in cases {
        let config = ContainerConfig {
            command: strings(command),
            args: strings(args),
            ..Default::default()
        };
        let image = ImageRunConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            ..Default::default()
        };
        let got = process_args(&config, &image);
        match want {
            Some(want) => assert_eq!(got.unwrap(), strings(want), "{command:?} {args:?}"),
            None => assert_invalid(got, "no command specified"),
        }
    }
}

#[test]
fn env() {
    let path = format!("PATH={DEFAULT_PATH}");
    // (image env, config envs, expected)
    let cases: Vec<(Vec<&str>, Pairs, Vec<&str>)> = vec![
        (vec![], vec![], vec![&path, "HOSTNAME=web-0"]),
        (
            vec!["PATH=/bin", "A=1"],
            vec![("B", "2")],
            vec!["PATH=/bin", "HOSTNAME=web-0", "A=1", "B=2"],
        ),
        (
            vec!["A=1", "B=1"],
            vec![("A", "2"), ("HOSTNAME", "h"), ("A", "3")],
            vec![&path, "HOSTNAME=h", "A=3", "B=1"],
        ),
        (vec!["A=1", "A"], vec![], vec![&path, "HOSTNAME=web-0"]),
        (vec!["X=a=b"], vec![("Y", "")], vec![&path, "HOSTNAME=web-0", "X=a=b", "Y="]),
    ];
    for (image_env, envs, want) in cases {
        let config = ContainerConfig {
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..config()
        };
        let image = ImageRunConfig { env: strings(&image_env), ..Default::default() };
        let spec = build_full(&config, &image, &pod(), 0).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.env().as_ref().unwrap(), &strings(&want), "{image_env:?} {envs:?}");
    }
    let config = ContainerConfig { envs: vec![("A=B".into(), "1".into())], ..config() };
    assert_invalid(build_for(&config, &pod()), "A=B");
}

#[test]
fn cwd() {
    let cases = [
        ("", "", Some("/")),
        ("", "/srv", Some("/srv")),
        ("/work", "/srv", Some("/work")),
        ("work", "", None),
        ("", "srv", None),
    ];
    for (config_dir, image_dir, want) in cases {
        let config = ContainerConfig { working_dir: config_dir.into(), ..config() };
        let image = ImageRunConfig { working_dir: image_dir.into(), ..Default::default() };
        let got = build_full(&config, &image, &pod(), 0);
        match want {
            Some(want) => {
                assert_eq!(got.unwrap().process().as_ref().unwrap().cwd(), Path::new(want))
            }
            None => assert_invalid(got, "not absolute"),
        }
    }
}

#[test]
fn process_basics() {
    let config = ContainerConfig {
        tty: true,
        security: SecurityContext { no_new_privs: true, ..Default::default() },
        ..config()
    };
    let spec = build_for(&config, &pod()).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.terminal(), Some(true));
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_eq!(process.user().uid(), 1000);
    assert_eq!(process.user().gid(), 100);
    assert_eq!(process.user().additional_gids().as_deref(), Some(&[100, 10][..]));
    assert_eq!(process.rlimits(), &None);
    assert_eq!(process.args().as_deref(), Some(&strings(&["/bin/sh"])[..]));
}

#[test]
fn oom_score_adj_is_clamped_to_the_floor() {
    // (requested, floor, expected); None for an error
    let cases = [
        (0, 0, Some(None)),
        (0, -500, Some(None)),
        (0, 300, Some(Some(300))),
        (-998, -999, Some(Some(-998))),
        (-998, 0, Some(Some(0))),
        (1000, -999, Some(Some(1000))),
        (500, 2000, Some(Some(1000))),
        (1001, 0, None),
        (-1001, 0, None),
    ];
    for (requested, floor, want) in cases {
        let mut config = config();
        config.resources.oom_score_adj = requested;
        let got = build_full(&config, &ImageRunConfig::default(), &pod(), floor);
        match want {
            Some(want) => assert_eq!(
                got.unwrap().process().as_ref().unwrap().oom_score_adj(),
                want,
                "{requested} {floor}"
            ),
            None => assert_invalid(got, "oom_score_adj"),
        }
    }
}

#[test]
fn stop_signals() {
    let cases = [
        ("", "", Some(15)),
        ("SIGKILL", "SIGINT", Some(9)),
        ("", "SIGINT", Some(2)),
        ("", "TERM", Some(15)),
        ("", "15", Some(15)),
        ("sigusr1", "", Some(10)),
        ("SIGRTMIN+3", "", Some(37)),
        ("RTMAX", "", Some(64)),
        ("SIGWHAT", "", None),
        ("0", "", None),
        ("65", "", None),
    ];
    for (configured, image, want) in cases {
        let config = ContainerConfig { stop_signal: configured.into(), ..Default::default() };
        let image = ImageRunConfig { stop_signal: image.into(), ..Default::default() };
        let got = stop_signal(&config, &image);
        match want {
            Some(want) => assert_eq!(got.unwrap(), want, "{configured:?}"),
            None => assert_invalid(got, "signal"),
        }
    }
}

fn cap_names(set: &Option<Capabilities>) -> BTreeSet<String> {
    let set = set.as_ref().unwrap();
    CAPABILITIES.iter().filter(|(_, c)| set.contains(c)).map(|(n, _)| n.to_string()).collect()
}

#[test]
fn capabilities_add_drop() {
    let default: BTreeSet<String> = [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // "All" is what this kernel knows and this process may pass on (its bounding set).
    let everything = all_capabilities();
    let all: BTreeSet<String> = CAPABILITIES
        .iter()
        .filter(|(_, c)| everything.contains(c))
        .map(|(n, _)| n.to_string())
        .collect();
    let with = |base: &BTreeSet<String>, add: &[&str], drop: &[&str]| {
        let mut set = base.clone();
        set.extend(add.iter().map(|s| s.to_string()));
        for d in drop {
            set.remove(*d);
        }
        set
    };
    let none = BTreeSet::new();
    // (add, drop, ambient, expected main set, expected ambient)
    let cases: Vec<(Strs, Strs, Strs, BTreeSet<String>, Strs)> = vec![
        (&[], &[], &[], default.clone(), &[]),
        (&["NET_ADMIN"], &["MKNOD"], &[], with(&default, &["NET_ADMIN"], &["MKNOD"]), &[]),
        (&["cap_sys_admin"], &["Cap_Kill"], &[], with(&default, &["SYS_ADMIN"], &["KILL"]), &[]),
        (&["ALL"], &[], &[], all.clone(), &[]),
        (&["all"], &["CHOWN"], &[], with(&all, &[], &["CHOWN"]), &[]),
        (&[], &["ALL"], &[], none.clone(), &[]),
        (&["NET_ADMIN"], &["ALL"], &[], with(&none, &["NET_ADMIN"], &[]), &[]),
        (&["ALL"], &["ALL"], &[], none.clone(), &[]),
        (&["SYS_TIME"], &["SYS_TIME"], &[], default.clone(), &[]),
        (
            &[],
            &["ALL"],
            &["NET_BIND_SERVICE"],
            with(&none, &["NET_BIND_SERVICE"], &[]),
            &["NET_BIND_SERVICE"],
        ),
    ];
    for (add, drop, ambient, want, want_ambient) in cases {
        let config = ContainerConfig {
            security: SecurityContext {
                capabilities: CriCaps {
                    add: strings(add),
                    drop: strings(drop),
                    add_ambient: strings(ambient),
                },
                ..Default::default()
            },
            ..config()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let caps = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        let label = format!("add {add:?} drop {drop:?} ambient {ambient:?}");
        assert_eq!(cap_names(caps.bounding()), want, "{label}");
        assert_eq!(cap_names(caps.effective()), want, "{label}");
        assert_eq!(cap_names(caps.permitted()), want, "{label}");
        let want_ambient: BTreeSet<String> = want_ambient.iter().map(|s| s.to_string()).collect();
        assert_eq!(cap_names(caps.ambient()), want_ambient, "{label}");
        assert_eq!(cap_names(caps.inheritable()), want_ambient, "{label}");
    }
    for (add, drop, ambient) in
        [(&["NOPE"][..], &[][..], &[][..]), (&[], &["CAP_"], &[]), (&[], &[], &["X"])]
    {
        let config = ContainerConfig {
            security: SecurityContext {
                capabilities: CriCaps {
                    add: strings(add),
                    drop: strings(drop),
                    add_ambient: strings(ambient),
                },
                ..Default::default()
            },
            ..config()
        };
        assert_invalid(build_for(&config, &pod()), "unknown capability");
    }
}

#[test]
fn privileged() {
    let config = ContainerConfig {
        security: SecurityContext {
            privileged: true,
            capabilities: CriCaps { drop: strings(&["ALL"]), ..Default::default() },
            masked_paths: Some(strings(&["/proc/x"])),
            ..Default::default()
        },
        ..config()
    };
    let spec = build_for(&config, &pod()).unwrap();
    let caps = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
    let all = all_capabilities().len();
    assert!(all >= 38, "{all}");
    assert_eq!(caps.bounding().as_ref().unwrap().len(), all);
    assert_eq!(caps.permitted().as_ref().unwrap().len(), all);
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths(), &None);
    assert_eq!(linux.readonly_paths(), &None);
    let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
    assert_eq!(rules[0].typ(), Some(LinuxDeviceType::A));
    assert_eq!(rules[0].access().as_deref(), Some("rwm"));
    let devices = linux.devices().as_ref().unwrap();
    let null = devices.iter().find(|d| d.path() == Path::new("/dev/null")).unwrap();
    assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
    assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts")));
    let mounts = spec.mounts().as_ref().unwrap();
    for dest in ["/sys", "/sys/fs/cgroup"] {
        let m = mounts.iter().find(|m| m.destination() == Path::new(dest)).unwrap();
        let options = m.options().as_ref().unwrap();
        assert!(options.contains(&"rw".to_string()) && !options.contains(&"ro".to_string()));
    }
}

#[test]
fn seccomp_and_lsm_in_the_spec() {
    use crate::container::types::SecurityProfile;
    let with = |seccomp: SecurityProfile, privileged: bool, add: &[&str]| ContainerConfig {
        security: SecurityContext {
            seccomp,
            privileged,
            capabilities: CriCaps { add: strings(add), ..Default::default() },
            ..Default::default()
        },
        ..config()
    };
    let seccomp_of = |config: &ContainerConfig| {
        build_for(config, &pod()).unwrap().linux().as_ref().unwrap().seccomp().clone()
    };
    let allows = |seccomp: &oci_spec::runtime::LinuxSeccomp, name: &str| {
        seccomp.syscalls().iter().flatten().any(|call| {
            call.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                && call.args().is_none()
                && call.names().iter().any(|n| n == name)
        })
    };
    assert_eq!(seccomp_of(&config()), None);
    assert_eq!(seccomp_of(&with(SecurityProfile::RuntimeDefault, true, &[])), None);
    let default = seccomp_of(&with(SecurityProfile::RuntimeDefault, false, &[])).unwrap();
    assert!(allows(&default, "read") && !allows(&default, "mount"));
    // The profile follows the capabilities the container ends up with.
    let admin = seccomp_of(&with(SecurityProfile::RuntimeDefault, false, &["SYS_ADMIN"]));
    assert!(allows(&admin.unwrap(), "mount"));
    let missing = with(SecurityProfile::Localhost("/no/such.json".into()), false, &[]);
    assert_invalid(build_for(&missing, &pod()), "/no/such.json");

    // No AppArmor or SELinux asked for: none in the spec, on any node.
    let spec = build_for(&config(), &pod()).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!((process.apparmor_profile(), process.selinux_label()), (&None, &None));
    // A profile that is not loaded (or a node without AppArmor) is refused.
    let config = ContainerConfig {
        security: SecurityContext {
            apparmor: SecurityProfile::Localhost("berth-test-not-loaded".into()),
            ..Default::default()
        },
        ..config()
    };
    assert_invalid(build_for(&config, &pod()), "berth-test-not-loaded");
}

#[test]
fn masked_and_readonly_paths() {
    let spec = build_for(&config(), &pod()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_deref(), Some(&strings(&DEFAULT_MASKED_PATHS)[..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&strings(&DEFAULT_READONLY_PATHS)[..]));
    let config = ContainerConfig {
        security: SecurityContext {
            masked_paths: Some(vec![]),
            readonly_paths: Some(strings(&["/proc/sys"])),
            ..Default::default()
        },
        ..config()
    };
    let spec = build_for(&config, &pod()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&strings(&["/proc/sys"])[..]));
}

fn mount_table(spec: &Spec) -> Vec<(String, String, String, String)> {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.typ().clone().unwrap_or_default(),
                m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
                m.options().as_ref().map(|o| o.join(",")).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn default_mounts_in_order() {
    let spec = build_for(&config(), &pod()).unwrap();
    let want = [
        ("/proc", "proc", "proc", "nosuid,noexec,nodev"),
        ("/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
        ("/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro"),
        ("/dev/pts", "devpts", "devpts", "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ("/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev"),
        ("/dev/shm", "bind", "/run/berth/pods/p1/shm", "rbind,nosuid,noexec,nodev"),
        ("/etc/hostname", "bind", "/var/lib/berth/pods/p1/hostname", "rbind,rprivate"),
        ("/etc/hosts", "bind", "/var/lib/berth/pods/p1/hosts", "rbind,rprivate"),
        ("/etc/resolv.conf", "bind", "/var/lib/berth/pods/p1/resolv.conf", "rbind,rprivate"),
        ("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid,noexec,nodev,relatime,ro"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(mount_table(&spec), want);

    // Host IPC and a read-only root.
    let pod = PodContext { shm: None, ..pod() };
    let config = ContainerConfig {
        security: SecurityContext { readonly_rootfs: true, ..Default::default() },
        ..config()
    };
    let spec = build_for(&config, &pod).unwrap();
    let table = mount_table(&spec);
    let find = |dest: &str| table.iter().find(|m| m.0 == dest).unwrap().clone();
    assert_eq!(find("/dev/shm").2, "/dev/shm");
    assert_eq!(find("/etc/hosts").3, "rbind,rprivate,ro");
    assert_eq!(find("/etc/resolv.conf").3, "rbind,rprivate,ro");
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
}

fn cri(container: &str, host: &str, readonly: bool, rro: bool, p: Propagation) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.into(),
        readonly,
        recursive_read_only: rro,
        propagation: p,
        ..Default::default()
    }
}

fn with_options(m: Mount, options: &[&str]) -> Mount {
    Mount { options: options.iter().map(|o| o.to_string()).collect(), ..m }
}

#[test]
fn cri_mounts() {
    let host = tempfile::tempdir().unwrap();
    let dir = host.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let link = host.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let d = dir.display().to_string();
    let l = link.display().to_string();
    use Propagation::*;
    // (mounts, expected (destination, source, options) of the CRI ones, rootfs propagation)
    let cases: Vec<(Vec<Mount>, Triples, Option<&str>)> = vec![
        (
            vec![cri("/data", &d, false, false, Private)],
            vec![("/data", &d, "rbind,rprivate")],
            None,
        ),
        (
            vec![cri("/data/", &l, true, false, HostToContainer)],
            vec![("/data", &d, "rbind,rslave,ro")],
            Some("rslave"),
        ),
        (
            vec![
                cri("/a/b/c", &d, true, true, Private),
                cri("/a", &d, false, false, Bidirectional),
                cri("/x/./y", &d, false, false, HostToContainer),
            ],
            vec![
                ("/a", &d, "rbind,rshared"),
                ("/x/y", &d, "rbind,rslave"),
                ("/a/b/c", &d, "rbind,rprivate,ro,rro"),
            ],
            Some("rshared"),
        ),
        // CRI mount options: added after the readonly one, each once; `ro` is readonly.
        (
            vec![with_options(
                cri("/data", &d, false, false, Private),
                &["noexec", "nosuid", "nodev", "noexec"],
            )],
            vec![("/data", &d, "rbind,rprivate,noexec,nosuid,nodev")],
            None,
        ),
        (
            vec![
                with_options(cri("/a", &d, false, false, HostToContainer), &["nodev", "ro"]),
                with_options(cri("/b", &d, false, true, Private), &["ro"]),
                with_options(cri("/c", &d, true, false, Private), &["ro", "noexec"]),
            ],
            vec![
                ("/a", &d, "rbind,rslave,ro,nodev"),
                ("/b", &d, "rbind,rprivate,ro,rro"),
                ("/c", &d, "rbind,rprivate,ro,noexec"),
            ],
            Some("rslave"),
        ),
        (
            vec![
                cri("/etc/hosts", "/k/etc-hosts", false, false, Private),
                cri("/dev/termination-log", "/k/term", false, false, Private),
            ],
            vec![
                ("/etc/hosts", "/k/etc-hosts", "rbind,rprivate"),
                ("/dev/termination-log", "/k/term", "rbind,rprivate"),
            ],
            None,
        ),
    ];
    for (mounts, want, want_propagation) in cases {
        let config = ContainerConfig { mounts: mounts.clone(), ..config() };
        let spec = build_for(&config, &pod()).unwrap();
        let table = mount_table(&spec);
        // Parents before children throughout.
        let depths: Vec<usize> = table.iter().map(|m| depth(Path::new(&m.0))).collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{table:?}");
        let got: Vec<(String, String, String)> = table
            .iter()
            .filter(|m| {
                m.1 == "bind"
                    && mounts
                        .iter()
                        .any(|c| container_path(&c.container_path, "").unwrap() == Path::new(&m.0))
            })
            .map(|m| (m.0.clone(), m.2.clone(), m.3.clone()))
            .collect();
        let want: Vec<(String, String, String)> =
            want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(got, want, "{mounts:?}");
        // Each destination once: a CRI mount replaces the default there.
        let mut dests: Vec<&String> = table.iter().map(|m| &m.0).collect();
        dests.sort();
        dests.dedup();
        assert_eq!(dests.len(), table.len(), "{table:?}");
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.rootfs_propagation().as_deref(), want_propagation, "{mounts:?}");
    }
}

#[test]
fn cri_dev_mount_replaces_everything_under_dev() {
    let config = ContainerConfig {
        mounts: vec![cri("/dev", "/dev", false, false, Propagation::Private)],
        ..config()
    };
    let spec = build_for(&config, &pod()).unwrap();
    let table = mount_table(&spec);
    let dev: Vec<_> = table.iter().filter(|m| m.0.starts_with("/dev")).collect();
    assert_eq!(dev.len(), 1, "{dev:?}");
    assert_eq!(dev[0].1, "bind");
}

#[test]
fn bad_mounts() {
    use Propagation::*;
    let cases = [
        (cri("data", "/tmp", false, false, Private), "\"data\""),
        (cri("/a/../etc", "/tmp", false, false, Private), "/a/../etc"),
        (cri("/a", "relative", false, false, Private), "relative"),
        (cri("/a", "/tmp", false, true, Private), "needs readonly"),
        (cri("/a", "/tmp", true, true, HostToContainer), "private propagation"),
    ];
    // Mount options that would loosen the node's mount, or are no bind option berth
    // applies, are refused by name, never dropped.
    let refused = ["exec", "suid", "dev", "rw", "rbind", "rshared", "idmap", "size=1k", ""];
    let options = refused.map(|option| {
        let mount = with_options(cri("/a", "/tmp", false, false, Private), &["noexec", option]);
        (mount, format!("mount option {option:?}"))
    });
    let cases = cases.map(|(mount, naming)| (mount, naming.to_string()));
    for (mount, naming) in cases.into_iter().chain(options) {
        let config = ContainerConfig { mounts: vec![mount], ..config() };
        assert_invalid(build_for(&config, &pod()), &naming);
    }
}

#[test]
fn propagation_checks() {
    let mountinfo = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /var/lib/kubelet rw,relatime - tmpfs tmpfs rw
31 30 0:26 / /var/lib/kubelet/pods rw,relatime master:7 - tmpfs tmpfs rw
32 22 0:27 / /mnt/with\\040space rw,relatime - tmpfs tmpfs rw
33 22 0:28 / /mnt/shared rw shared:9 master:3 - tmpfs tmpfs rw
34 22 0:29 / /mnt/shared rw - tmpfs tmpfs rw
35 22 0:30 / /srv rw shared:10 - tmpfs tmpfs rw
";
    use Propagation::*;
    // (host path, propagation, error naming this mount point; None = fine)
    let cases = [
        ("/data/x", Bidirectional, None),
        ("/data/x", HostToContainer, None),
        ("/var/lib/kubelet/x", Private, None),
        ("/var/lib/kubelet/x", HostToContainer, Some("/var/lib/kubelet")),
        ("/var/lib/kubelet/x", Bidirectional, Some("/var/lib/kubelet")),
        ("/var/lib/kubelet/pods/p", HostToContainer, None),
        ("/var/lib/kubelet/pods/p", Bidirectional, Some("/var/lib/kubelet/pods")),
        ("/var/lib/kubelet/podsx", HostToContainer, Some("/var/lib/kubelet")),
        ("/mnt/with space/d", HostToContainer, Some("/mnt/with space")),
        // The later mount at the same point is the one on top.
        ("/mnt/shared", Bidirectional, Some("/mnt/shared")),
        ("/srv", Bidirectional, None),
    ];
    for (path, p, want) in cases {
        let got = check_propagation(Path::new(path), p, mountinfo);
        match want {
            None => assert!(got.is_ok(), "{path} {p:?}: {got:?}"),
            Some(mount_point) => {
                let err = got.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
                let msg = err.to_string();
                assert!(msg.contains(path), "{msg}");
                assert!(msg.contains(&format!("mounted on {mount_point} ")), "{msg}");
            }
        }
    }
    let err = check_propagation(Path::new("/x"), Bidirectional, "").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn namespaces_per_pod() {
    fn kinds(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        let linux = spec.linux().as_ref().unwrap();
        linux.namespaces().as_ref().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect()
    }
    use LinuxNamespaceType::*;
    let p = |s: &str| Some(PathBuf::from(s));
    let spec = build_for(&config(), &pod()).unwrap();
    assert_eq!(
        kinds(&spec),
        vec![
            (Pid, None),
            (Network, p("/run/berth/pods/p1/ns/net")),
            (Ipc, p("/run/berth/pods/p1/ns/ipc")),
            (Uts, p("/run/berth/pods/p1/ns/uts")),
            (Mount, None),
        ]
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-0"));

    let host = PodContext {
        net: None,
        ipc: None,
        uts: None,
        pid: PidNamespace::Host,
        cgroup_ns: true,
        ..pod()
    };
    let spec = build_for(&config(), &host).unwrap();
    assert_eq!(kinds(&spec), vec![(Mount, None), (Cgroup, None)]);
    assert_eq!(spec.hostname(), &None);

    let join = PodContext { pid: PidNamespace::Join("/proc/42/ns/pid".into()), ..pod() };
    let spec = build_for(&config(), &join).unwrap();
    assert_eq!(kinds(&spec)[0], (Pid, p("/proc/42/ns/pid")));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!((linux.uid_mappings(), linux.gid_mappings()), (&None, &None));
}

fn userns_pod() -> PodContext {
    let range = |host_id| userns::IdMapping { container_id: 0, host_id, length: 65536 };
    PodContext {
        user: Some(PodUserNamespace {
            path: "/run/berth/pods/p1/ns/user".into(),
            mappings: UserNamespace { uids: range(65536), gids: range(131_072) },
        }),
        ..pod()
    }
}

#[test]
fn a_pods_user_namespace_is_joined_first_with_its_mappings() {
    let spec = build_for(&config(), &userns_pod()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let first = &linux.namespaces().as_ref().unwrap()[0];
    assert_eq!(first.typ(), LinuxNamespaceType::User);
    assert_eq!(first.path().as_deref(), Some(Path::new("/run/berth/pods/p1/ns/user")));
    let mapping = |list: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        list.as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.container_id(), m.host_id(), m.size()))
            .collect::<Vec<_>>()
    };
    assert_eq!(mapping(linux.uid_mappings()), [(0, 65536, 65536)]);
    assert_eq!(mapping(linux.gid_mappings()), [(0, 131_072, 65536)]);
    // The process's ids stay the container's own.
    let user = spec.process().as_ref().unwrap().user();
    assert_eq!((user.uid(), user.gid()), (1000, 100));

    let host = tempfile::tempdir().unwrap();
    let h = host.path().display().to_string();
    let bidirectional = ContainerConfig {
        mounts: vec![cri("/data", &h, false, false, Propagation::Bidirectional)],
        ..config()
    };
    assert_invalid(build_for(&bidirectional, &userns_pod()), "bidirectional");
    assert!(build_for(&bidirectional, &pod()).is_ok());
}

#[test]
fn image_volumes_are_read_only_binds_of_what_was_mounted() {
    let volume =
        crate::container::types::ImageVolume { image: "x.io/a:1".into(), ..Default::default() };
    let mounted = Mount {
        image: Some(volume),
        host_path: "/run/berth/containers/c/image-volumes/0/etc".into(),
        ..cri("/mnt/image", "", true, false, Propagation::Private)
    };
    // In a user namespace too: the mounted image is idmapped already.
    let spec =
        build_for(&ContainerConfig { mounts: vec![mounted.clone()], ..config() }, &userns_pod())
            .unwrap();
    let m = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/mnt/image"))
        .unwrap();
    assert_eq!(m.source().as_deref(), Some(Path::new(&mounted.host_path)));
    assert_eq!(m.options().as_ref().unwrap(), &strings(&["rbind", "rprivate", "ro"]));
    assert_eq!((m.uid_mappings(), m.gid_mappings()), (&None, &None));
    // mount_options apply to an image volume too; an unknown one is refused.
    let restricted = Mount { options: strings(&["nosuid", "ro", "nodev"]), ..mounted.clone() };
    let spec =
        build_for(&ContainerConfig { mounts: vec![restricted], ..config() }, &pod()).unwrap();
    let m =
        spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/mnt/image"));
    assert_eq!(
        m.unwrap().options().as_ref().unwrap(),
        &strings(&["rbind", "rprivate", "ro", "nosuid", "nodev"])
    );
    let odd = Mount { options: strings(&["exec"]), ..mounted.clone() };
    let err = build_for(&ContainerConfig { mounts: vec![odd], ..config() }, &pod());
    assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
    let unmounted = Mount { host_path: String::new(), ..mounted };
    let err = build_for(&ContainerConfig { mounts: vec![unmounted], ..config() }, &pod());
    assert!(matches!(err, Err(Error::Internal(_))), "{err:?}");
}

#[test]
fn idmapped_cri_mounts() {
    let host = tempfile::tempdir().unwrap();
    let h = host.path().display().to_string();
    let range = |c, h, l| userns::IdMapping { container_id: c, host_id: h, length: l };
    let idmapped = Mount {
        uid_mappings: vec![range(0, 65536, 65536)],
        gid_mappings: vec![range(0, 65536, 100), range(100, 70000, 10)],
        ..cri("/data", &h, true, false, Propagation::Private)
    };
    let spec =
        build_for(&ContainerConfig { mounts: vec![idmapped.clone()], ..config() }, &userns_pod())
            .unwrap();
    let m = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    assert_eq!(m.options().as_ref().unwrap(), &strings(&["rbind", "rprivate", "ro", "idmap"]));
    assert_eq!(m.uid_mappings().as_ref().unwrap().len(), 1);
    assert_eq!(m.gid_mappings().as_ref().unwrap()[1].host_id(), 70000);
    let plain = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/etc/hosts"))
        .unwrap();
    assert_eq!(plain.uid_mappings(), &None);

    for (bad, why) in [
        (Mount { gid_mappings: vec![], ..idmapped.clone() }, "both uid and gid mappings"),
        (Mount { uid_mappings: vec![range(0, 1, 0)], ..idmapped.clone() }, "the length is 0"),
        (
            Mount { gid_mappings: vec![range(0, 10, 10), range(5, 100, 1)], ..idmapped.clone() },
            "overlaps",
        ),
    ] {
        assert_invalid(
            build_for(&ContainerConfig { mounts: vec![bad], ..config() }, &userns_pod()),
            why,
        );
    }
}

#[test]
fn resources_memory_and_cpu() {
    // (limit, swap) → (spec limit, spec swap); None: no memory section
    let cases = [
        ((0, 0), None),
        ((1 << 20, 0), Some((Some(1 << 20), Some(1 << 20)))),
        ((1 << 20, 2 << 20), Some((Some(1 << 20), Some(2 << 20)))),
        ((1 << 20, -1), Some((Some(1 << 20), Some(-1)))),
        ((0, 2 << 20), Some((None, Some(2 << 20)))),
    ];
    for ((limit, swap), want) in cases {
        let mut config = config();
        config.resources.memory_limit_in_bytes = limit;
        config.resources.memory_swap_limit_in_bytes = swap;
        let spec = build_for(&config, &pod()).unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let got = resources.memory().map(|m| (m.limit(), m.swap()));
        assert_eq!(got, want, "{limit} {swap}");
    }
    let mut config = config();
    config.resources = Resources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 }],
        unified: [("memory.high".to_string(), "1000000".to_string())].into(),
        ..Default::default()
    };
    let spec = build_for(&config, &pod()).unwrap();
    let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    let cpu = resources.cpu().clone().unwrap();
    assert_eq!((cpu.shares(), cpu.quota(), cpu.period()), (Some(512), Some(50_000), Some(100_000)));
    assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0-1"), Some("0")));
    let huge = resources.hugepage_limits().clone().unwrap();
    assert_eq!((huge[0].page_size().as_str(), huge[0].limit()), ("2MB", 4 << 20));
    assert_eq!(resources.unified().as_ref().unwrap()["memory.high"], "1000000");
    assert!(resources.memory().is_none());

    for (field, value) in [("memory limit", -5), ("cpu shares", -1)] {
        let mut config = config.clone();
        if field == "cpu shares" {
            config.resources.cpu_shares = value;
        } else {
            config.resources.memory_limit_in_bytes = value;
        }
        assert_invalid(build_for(&config, &pod()), field);
    }
}

/// The kubelet's limits for every page size of the node: zero ones are left out where no
/// hugetlb controller can hold them, a non-zero one is refused there; kept where one can.
#[test]
fn hugepage_limits_follow_the_hugetlb_controller() {
    let user = ResolvedUser { uid: 0, gid: 0, additional_gids: vec![] };
    let build_with = |limits: &[(&str, u64)], hugetlb: bool| {
        let mut config = config();
        config.resources.hugepage_limits = limits
            .iter()
            .map(|(size, limit)| HugepageLimit { page_size: size.to_string(), limit: *limit })
            .collect();
        build(&SpecInputs {
            id: "c1",
            config: &config,
            image: &ImageRunConfig::default(),
            user: &user,
            pod: &pod(),
            rootfs: Path::new("/rootfs"),
            cgroup_path: "/kubepods/pod1/c1",
            oom_score_adj_floor: 0,
            hugetlb,
        })
        .map(|spec| spec.linux().as_ref().unwrap().resources().clone().unwrap())
    };
    let kubelet = [("2MB", 0), ("1GB", 0)];
    assert_eq!(build_with(&kubelet, false).unwrap().hugepage_limits(), &None);
    let kept = build_with(&kubelet, true).unwrap().hugepage_limits().clone().unwrap();
    let kept: Vec<(&str, i64)> = kept.iter().map(|l| (l.page_size().as_str(), l.limit())).collect();
    assert_eq!(kept, [("2MB", 0), ("1GB", 0)]);
    let err = build_with(&[("2MB", 0), ("1GB", 1 << 30)], false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("1GB") && err.to_string().contains("hugetlb"), "{err}");
    assert!(build_with(&[("1GB", 1 << 30)], true).is_ok());
}

fn rules(spec: &Spec) -> Vec<String> {
    let linux = spec.linux().as_ref().unwrap();
    let devices = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
    devices.iter().map(|d| format!("{} {}", if d.allow() { "allow" } else { "deny" }, d)).collect()
}

#[test]
fn devices_rules() {
    let defaults = [
        "deny a *:* rwm",
        "allow c *:* m",
        "allow b *:* m",
        "allow c 1:3 rwm",
        "allow c 1:5 rwm",
        "allow c 1:7 rwm",
        "allow c 5:0 rwm",
        "allow c 5:1 rwm",
        "allow c 5:2 rwm",
        "allow c 1:8 rwm",
        "allow c 1:9 rwm",
        "allow c 136:* rwm",
    ];
    let spec = build_for(&config(), &pod()).unwrap();
    assert_eq!(rules(&spec), defaults);
    assert_eq!(spec.linux().as_ref().unwrap().devices(), &None);

    let device = |host: &str, container: &str, permissions: &str| Device {
        host_path: host.into(),
        container_path: container.into(),
        permissions: permissions.into(),
    };
    let with_devices = ContainerConfig {
        devices: vec![device("/dev/null", "/dev/mynull", "rw"), device("/dev/zero", "/dev/z", "")],
        ..config()
    };
    let spec = build_for(&with_devices, &pod()).unwrap();
    let mut want: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
    want.extend(["allow c 1:3 rw".to_string(), "allow c 1:5 rwm".to_string()]);
    assert_eq!(rules(&spec), want);
    let devices = spec.linux().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].path(), Path::new("/dev/mynull"));
    assert_eq!(
        (devices[0].typ(), devices[0].major(), devices[0].minor()),
        (LinuxDeviceType::C, 1, 3)
    );
    assert_eq!(devices[0].file_mode(), Some(0o666));

    let file = tempfile::NamedTempFile::new().unwrap();
    let file = file.path().display().to_string();
    let cases = [
        (device("/dev/no-such-device", "/dev/x", "rwm"), "/dev/no-such-device"),
        (device(&file, "/dev/x", "rwm"), "not a device"),
        (device("/dev/null", "/dev/x", "rwx"), "permissions"),
        (device("/dev/null", "dev/x", "rwm"), "not absolute"),
    ];
    for (device, naming) in cases {
        let config = ContainerConfig { devices: vec![device], ..config() };
        assert_invalid(build_for(&config, &pod()), naming);
    }
}

#[test]
fn root_annotations_and_cgroup() {
    let config = ContainerConfig {
        annotations: [
            ("team".to_string(), "a".to_string()),
            ("io.kubernetes.cri.container-type".to_string(), "sandbox".to_string()),
        ]
        .into(),
        ..config()
    };
    let spec = build_for(&config, &pod()).unwrap();
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("/run/berth/containers/c1/rootfs"));
    assert_eq!(root.readonly(), Some(false));
    let annotations = spec.annotations().as_ref().unwrap();
    assert_eq!(annotations["io.kubernetes.cri.container-type"], "container");
    assert_eq!(annotations["io.kubernetes.cri.sandbox-id"], "p1");
    assert_eq!(annotations["io.kubernetes.cri.container-name"], "app");
    assert_eq!(annotations["io.kubernetes.cri.image-name"], "docker.io/library/busybox:latest");
    assert_eq!(annotations["team"], "a");
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/kubepods/pod1/c1")));
    // The spec is what a runtime reads: it must survive JSON.
    let json = serde_json::to_string(&spec).unwrap();
    let back: Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn host_paths_are_created() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("a/b");
    let existing = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    let mounts = [
        cri("/x", &missing.display().to_string(), false, false, Propagation::Private),
        cri("/y", &existing.path().display().to_string(), false, false, Propagation::Private),
    ];
    prepare_host_paths(&mounts).unwrap();
    let meta = std::fs::metadata(&missing).unwrap();
    assert!(meta.is_dir());
    // 0755 less the umask, which may only take bits away.
    assert_eq!(meta.permissions().mode() & 0o7777 & !0o755, 0);
    assert!(std::fs::metadata(existing.path()).unwrap().is_file());
    assert_invalid(
        prepare_host_paths(&[cri("/x", "rel", false, false, Propagation::Private)]),
        "rel",
    );
}
