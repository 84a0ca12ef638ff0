use super::*;
use crate::error::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn is_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("skipped: needs root for namespaces and mounts");
    }
    root
}

/// A state dir prepared as berthd does, undone on drop even when the test panics.
struct StateDir {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    pods: PathBuf,
    parent_mounted: bool,
}

impl StateDir {
    fn new() -> Self {
        Self::with_parent_shared(false)
    }

    /// With the temp dir a shared mount, as / is on a systemd host.
    fn with_parent_shared(shared: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let pods = root.join("pods");
        let mut state = StateDir { _tmp: tmp, root, pods, parent_mounted: false };
        if shared {
            let root = &state.root;
            mount(Some(root), root, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
            state.parent_mounted = true;
            mount(None::<&str>, root, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
        }
        prepare_state_dir(&state.pods).unwrap();
        state
    }

    fn ns_dir(&self, pod: &str) -> PathBuf {
        self.pods.join(pod).join("ns")
    }

    /// Mount points strictly below the prepared dir.
    fn mounts_below(&self) -> Vec<PathBuf> {
        mounts_under(&self.pods).into_iter().filter(|m| *m != self.pods).collect()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Ok(pods) = fs::read_dir(&self.pods) {
            for pod in pods.flatten() {
                let pod = pod.path();
                let _ = unmount(&pod.join("shm"));
                let ns = PodNamespaces {
                    dir: pod.join("ns"),
                    net: None,
                    ipc: None,
                    uts: None,
                    user: None,
                };
                let _ = release(&ns);
            }
        }
        let _ = unmount(&self.pods);
        if self.parent_mounted {
            let _ = unmount(&self.root);
        }
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string(MOUNTINFO).unwrap();
    mountinfo
        .lines()
        .filter_map(parse_mount_line)
        .map(|m| m.mountpoint)
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn request(hostname: Option<&str>, sysctls: &[(&str, &str)]) -> NamespaceRequest {
    NamespaceRequest {
        net: true,
        ipc: true,
        uts: true,
        hostname: hostname.map(str::to_string),
        sysctls: sysctls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        user: None,
    }
}

fn read_sysctl(name: &str) -> String {
    let path = Path::new(PROC_SYS).join(sysctl_path(name).unwrap());
    fs::read_to_string(path).unwrap().trim().to_string()
}

fn ino(path: impl AsRef<Path>) -> u64 {
    fs::metadata(path).unwrap().ino()
}

#[test]
fn create_set_up_and_release() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    let host_forward = read_sysctl("net.ipv4.ip_forward");
    let host_rmid = read_sysctl("kernel.shm_rmid_forced");
    let host_keepalive = read_sysctl("net/ipv4/tcp_keepalive_time");
    let host_hostname = nix::unistd::gethostname().unwrap();
    let sysctls = [
        ("net.ipv4.ip_forward", "1"),
        ("kernel.shm_rmid_forced", "1"),
        ("net/ipv4/tcp_keepalive_time", "600"),
    ];
    let ns = create(&dir, &request(Some("web-0.example"), &sysctls)).unwrap();

    for kind in NsKind::ALL {
        let path = ns.path(kind).unwrap();
        assert_eq!(path, dir.join(kind.as_str()));
        assert!(is_held(path), "{}", path.display());
        let host = ino(Path::new("/proc/self/ns").join(kind.as_str()));
        assert_ne!(ino(path), host, "{kind} is the host's");
    }
    let held_net = ino(ns.net.as_ref().unwrap());

    let seen = in_namespaces(&ns.held(), || {
        let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
        let sock = ioctl_socket().unwrap();
        let flags = interface_flags(&sock, "lo").unwrap();
        // SAFETY: SIOCGIFFLAGS filled in ifru_flags.
        let lo_up = unsafe { flags.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0;
        // 127.0.0.1 exists only once lo is up.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Ok((
            hostname,
            lo_up,
            read_sysctl("net.ipv4.ip_forward"),
            read_sysctl("kernel.shm_rmid_forced"),
            read_sysctl("net.ipv4.tcp_keepalive_time"),
            ino("/proc/thread-self/ns/net"),
        ))
    })
    .unwrap();
    assert_eq!(seen.0, "web-0.example");
    assert!(seen.1, "lo is down");
    assert_eq!((seen.2.as_str(), seen.3.as_str(), seen.4.as_str()), ("1", "1", "600"));
    assert_eq!(seen.5, held_net);

    assert_eq!(read_sysctl("net.ipv4.ip_forward"), host_forward);
    assert_eq!(read_sysctl("kernel.shm_rmid_forced"), host_rmid);
    assert_eq!(read_sysctl("net.ipv4.tcp_keepalive_time"), host_keepalive);
    assert_eq!(nix::unistd::gethostname().unwrap(), host_hostname);

    release(&ns).unwrap();
    for (_, path) in ns.held() {
        assert!(!is_held(path));
        assert!(!path.exists(), "{}", path.display());
    }
    assert!(!dir.exists());
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
    release(&ns).unwrap();
    let err = in_namespaces(&ns.held(), || Ok(())).unwrap_err();
    assert!(err.to_string().contains(&dir.join("net").display().to_string()), "{err}");
}

/// The user namespace a namespace file's namespace belongs to (`NS_GET_USERNS`).
fn owner_ino(path: &Path) -> u64 {
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let file = File::open(path).unwrap();
    // SAFETY: an ioctl without arguments on an open nsfs file; a new descriptor back.
    let owner = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_USERNS) };
    assert!(owner >= 0, "{}: {}", path.display(), Errno::last());
    // SAFETY: the kernel returned a descriptor nothing else owns.
    let owner = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(owner) };
    owner.metadata().unwrap().ino()
}

#[test]
fn a_pods_user_namespace_owns_its_other_namespaces() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    let range = crate::userns::IdMapping { container_id: 0, host_id: 500_000, length: 65536 };
    let req = NamespaceRequest {
        user: Some(UserNamespace::new(&[range], &[range]).unwrap()),
        ..request(Some("web-0"), &[("net.ipv4.ip_forward", "1"), ("kernel.msgmax", "9999")])
    };
    let ns = create(&dir, &req).unwrap();
    let user = ns.user.clone().unwrap();
    assert_eq!(user, dir.join("user"));
    assert!(is_held(&user));
    assert_ne!(ino(&user), ino("/proc/self/ns/user"));
    assert_eq!(ns.held().len(), 3, "the user namespace is no thread's to enter");
    for (kind, path) in ns.held() {
        assert_eq!(owner_ino(path), ino(&user), "{kind} is not the pod's user namespace's");
    }
    let seen = in_namespaces(&ns.held(), || {
        let hostname = nix::unistd::gethostname().unwrap().into_string().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Ok((hostname, read_sysctl("net.ipv4.ip_forward"), read_sysctl("kernel.msgmax")))
    })
    .unwrap();
    assert_eq!(seen, ("web-0".to_string(), "1".to_string(), "9999".to_string()));
    release(&ns).unwrap();
    assert!(!user.exists());
    assert!(!dir.exists());
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
}

#[test]
fn sysctls_applied_later_from_inside() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let ns = create(&state.ns_dir("pod1"), &request(None, &[])).unwrap();
    let later = BTreeMap::from([("net.ipv4.conf.lo.forwarding".to_string(), "1".to_string())]);
    apply_sysctls(&ns, &later).unwrap();
    let inside =
        in_namespaces(&ns.held(), || Ok(read_sysctl("net.ipv4.conf.lo.forwarding"))).unwrap();
    assert_eq!(inside, "1");
    let err = apply_sysctls(&ns, &BTreeMap::from([("vm.swappiness".into(), "1".into())]));
    assert_eq!(err.unwrap_err().kind(), ErrorKind::InvalidArgument);
    release(&ns).unwrap();
}

#[test]
fn bad_requests_fail_before_creating_anything() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    let host_net = NamespaceRequest { net: false, ..request(None, &[]) };
    let host_ipc = NamespaceRequest { ipc: false, ..request(None, &[]) };
    let cases = [
        (request(None, &[("kernel.panic", "1")]), "not namespaced"),
        (request(None, &[("vm.swappiness", "1")]), "not namespaced"),
        (request(None, &[("kernel.hostname", "x")]), "UTS"),
        (request(None, &[("net/../../etc/passwd", "x")]), "not a sysctl name"),
        (request(None, &[("net..ipv4", "x")]), "not a sysctl name"),
        (
            NamespaceRequest {
                sysctls: [("net.ipv4.ip_forward".into(), "1".into())].into(),
                ..host_net.clone()
            },
            "the pod shares the host's network namespace",
        ),
        (
            NamespaceRequest { sysctls: [("kernel.shmmax".into(), "1".into())].into(), ..host_ipc },
            "the pod shares the host's IPC namespace",
        ),
        (request(Some("bad_name"), &[]), "RFC 1123"),
        (request(Some(&"a".repeat(65)), &[]), "RFC 1123"),
        (NamespaceRequest { uts: false, ..request(Some("web-0"), &[]) }, "host's UTS namespace"),
    ];
    for (req, why) in cases {
        let err = create(&dir, &req).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(why), "{msg}");
        if let Some(name) = req.sysctls.keys().next() {
            assert!(msg.contains(name), "{msg}");
        }
        assert!(!dir.exists(), "{req:?} created {}", dir.display());
    }
    assert!(!state.pods.join("pod1").exists());
}

#[test]
fn kernel_refusal_half_way_leaves_nothing() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    let req = request(Some("web-0"), &[("net.ipv4.ip_forward", "banana")]);
    let err = create(&dir, &req).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{msg}");
    assert!(msg.contains("net.ipv4.ip_forward") && msg.contains("banana"), "{msg}");
    let missing = create(&dir, &request(None, &[("net.ipv4.conf.eth0.forwarding", "1")]));
    assert!(missing.unwrap_err().to_string().contains("no such sysctl"));
    assert!(!state.pods.join("pod1").exists());
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
}

#[test]
fn failure_after_mounting_undoes_the_mounts() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    // In the way of the last namespace file, so that net and ipc are mounted by then.
    fs::create_dir_all(dir.join("uts")).unwrap();
    let err = create(&dir, &request(Some("web-0"), &[])).unwrap_err();
    assert!(err.to_string().contains(&dir.join("uts").display().to_string()), "{err}");
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
    assert!(!dir.join("net").exists() && !dir.join("ipc").exists());
    assert!(dir.join("uts").is_dir(), "not ours to remove");
}

#[test]
fn a_held_file_is_not_mounted_over() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    let ns = create(&dir, &request(None, &[])).unwrap();
    let net = ino(ns.net.as_ref().unwrap());
    let err = create(&dir, &request(None, &[])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    // The failed attempt must not have taken the live pod's namespaces with it.
    assert!(ns.held().iter().all(|(_, path)| is_held(path)));
    assert_eq!(ino(ns.net.as_ref().unwrap()), net);
    release(&ns).unwrap();
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
}

#[test]
fn host_namespaces_are_not_held() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    let req = NamespaceRequest { net: false, ..request(None, &[("kernel.msgmax", "16384")]) };
    let ns = create(&dir, &req).unwrap();
    assert_eq!(ns.net, None);
    assert!(ns.ipc.is_some() && ns.uts.is_some());
    assert!(!dir.join("net").exists());
    let (msgmax, net) = in_namespaces(&ns.held(), || {
        Ok((read_sysctl("kernel.msgmax"), ino("/proc/thread-self/ns/net")))
    })
    .unwrap();
    assert_eq!(msgmax, "16384");
    assert_eq!(net, ino("/proc/self/ns/net"));
    release(&ns).unwrap();

    let none = NamespaceRequest::default();
    let ns = create(&dir, &none).unwrap();
    assert_eq!(ns, PodNamespaces { dir: dir.clone(), net: None, ipc: None, uts: None, user: None });
    assert!(!dir.exists());
    release(&ns).unwrap();
}

#[test]
fn release_after_a_crash_and_of_plain_files() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let dir = state.ns_dir("pod1");
    create(&dir, &request(None, &[])).unwrap();
    // A berthd that crashed knows only the directory.
    let only_dir = PodNamespaces { dir: dir.clone(), net: None, ipc: None, uts: None, user: None };
    release(&only_dir).unwrap();
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
    assert!(!dir.exists());

    // As after a reboot: the files are there, nothing is mounted on them.
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("net"), "").unwrap();
    assert!(!is_held(&dir.join("net")));
    std::os::unix::fs::symlink("/proc/self/ns/ipc", dir.join("ipc")).unwrap();
    assert!(!is_held(&dir.join("ipc")), "a symlink holds nothing");
    fs::remove_file(dir.join("ipc")).unwrap();
    let ns = create(&dir, &request(None, &[])).unwrap();
    assert!(is_held(ns.net.as_ref().unwrap()));
    release(&ns).unwrap();
    assert!(!dir.exists());
}

#[test]
fn state_dir_is_a_shared_mount_of_its_own_once() {
    if !is_root() {
        return;
    }
    let state = StateDir::with_parent_shared(true);
    prepare_state_dir(&state.pods).unwrap();
    let mountinfo = fs::read_to_string(MOUNTINFO).unwrap();
    let on_pods: Vec<MountLine> = mountinfo
        .lines()
        .filter_map(parse_mount_line)
        .filter(|m| m.mountpoint == state.pods)
        .collect();
    assert_eq!(on_pods.len(), 1, "prepared twice");
    assert!(on_pods[0].shared);
    // Not a peer of the shared parent it was bound from.
    let line = mountinfo.lines().find(|l| l.starts_with(&format!("{} ", on_pods[0].id)));
    let group = line.unwrap().split(' ').find(|f| f.starts_with("shared:")).unwrap();
    let peers = mountinfo.lines().filter(|l| l.split(' ').any(|f| f == group)).count();
    assert_eq!(peers, 1, "{group}:\n{mountinfo}");

    // So a held namespace is mounted once, not also on the hidden directory beneath.
    let ns = create(&state.ns_dir("pod1"), &request(None, &[])).unwrap();
    let net = ns.net.clone().unwrap();
    assert_eq!(mounts_under(&state.root).iter().filter(|m| **m == net).count(), 1);
    release(&ns).unwrap();
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
}

#[test]
fn shm_size_limit_and_unmount() {
    if !is_root() {
        return;
    }
    let state = StateDir::new();
    let shm = state.pods.join("pod1").join("shm");
    let size = 1_000_000;
    mount_shm(&shm, size).unwrap();
    let fs_stat = statfs(&shm).unwrap();
    assert_eq!(fs_stat.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    let bytes = fs_stat.blocks() * u64::try_from(fs_stat.block_size()).unwrap();
    let page = 4096 * 16;
    assert!((size..size + page).contains(&bytes), "{bytes}");
    let mode = fs::metadata(&shm).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777);
    let flags = nix::sys::statvfs::statvfs(&shm).unwrap().flags();
    use nix::sys::statvfs::FsFlags;
    assert!(flags.contains(FsFlags::ST_NOSUID | FsFlags::ST_NODEV | FsFlags::ST_NOEXEC));
    assert_eq!(mount_shm(&shm, 0).unwrap_err().kind(), ErrorKind::InvalidArgument);

    unmount(&shm).unwrap();
    assert_ne!(statfs(&shm).unwrap().filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
    unmount(&shm).unwrap();
    unmount(&state.pods.join("missing")).unwrap();
    assert!(state.mounts_below().is_empty(), "{:?}", state.mounts_below());
}

#[test]
fn sysctl_names_to_paths() {
    let cases = [
        ("net.ipv4.ip_forward", Some("net/ipv4/ip_forward")),
        ("net/ipv4/ip_forward", Some("net/ipv4/ip_forward")),
        ("net.ipv4.conf.eth0/100.forwarding", Some("net/ipv4/conf/eth0.100/forwarding")),
        ("net/ipv4/conf/eth0.100/forwarding", Some("net/ipv4/conf/eth0.100/forwarding")),
        ("kernel.sem", Some("kernel/sem")),
        ("kernel", Some("kernel")),
        ("", None),
        ("net.", None),
        ("/net/ipv4", None),
        ("net/../x", None),
        ("net.ipv4/../x", None),
        ("net\0x.y", None),
    ];
    for (name, want) in cases {
        assert_eq!(sysctl_path(name), want.map(PathBuf::from), "{name:?}");
    }
}

#[test]
fn sysctl_namespaces() {
    let kind_of = |name: &str| check_sysctl(name, "1", true, true).map(|s| s.path);
    for name in [
        "kernel.shmmax",
        "kernel.shm_rmid_forced",
        "kernel.msgmnb",
        "kernel.sem",
        "fs.mqueue.msg_max",
        "net.core.somaxconn",
        "net.ipv4.conf.all.rp_filter",
    ] {
        assert!(kind_of(name).is_ok(), "{name}");
    }
    for name in ["kernel.semx", "kernel.pid_max", "fs.mqueue", "net", "kernel.domainname"] {
        assert!(kind_of(name).is_err(), "{name}");
    }
    assert!(check_sysctl("kernel.sem", "1\0", true, true).is_err());
}

#[test]
fn hostnames() {
    for ok in ["web-0", "a", "a.b-c.d9", &"a".repeat(63), &format!("{}.b", "a".repeat(62))] {
        assert!(check_hostname(ok).is_ok(), "{ok}");
    }
    let long = format!("{}.{}", "a".repeat(32), "b".repeat(32));
    for bad in ["", "-a", "a-", "a..b", "a_b", "a b", ".a", &"a".repeat(64), &long] {
        assert!(check_hostname(bad).is_err(), "{bad}");
    }
}

#[test]
fn mountinfo_parsing() {
    let mountinfo = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
90 27 254:0 /st /run/my\\040state rw shared:5 - ext4 /dev/vda rw
91 90 254:0 /st /run/my\\040state rw master:3 - ext4 /dev/vda rw
";
    let top = top_mount_at(mountinfo, Path::new("/run/my state")).unwrap();
    assert_eq!((top.id, top.shared), (91, false));
    assert!(top_mount_at(mountinfo, Path::new("/run")).is_none());
    assert!(top_mount_at(mountinfo, Path::new("/")).is_some_and(|m| !m.shared));
    assert_eq!(unescape("a\\134b\\999\\7"), Path::new("a\\b\\999\\7"));
}
