use super::*;

fn write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[test]
fn v1_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (cpu, mem, pids) = (tmp.path().join("c"), tmp.path().join("m"), tmp.path().join("p"));
    write(&cpu, &[("cpuacct.usage", "1500000000\n")]);
    write(
        &mem,
        &[
            ("memory.usage_in_bytes", "1000000\n"),
            ("memory.limit_in_bytes", "4000000\n"),
            ("memory.memsw.usage_in_bytes", "1200000\n"),
            ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
            (
                "memory.stat",
                "cache 5\nrss 7\ninactive_file 1\ntotal_rss 600000\n\
                     total_inactive_file 300000\ntotal_pgfault 42\ntotal_pgmajfault 3\n",
            ),
        ],
    );
    write(&pids, &[("pids.current", "4\n")]);
    let dirs =
        V1Dirs { cpuacct: Some(&cpu), memory: Some(&mem), pids: Some(&pids), ..Default::default() };
    let s = read_v1(&dirs, false);
    assert!(s.detail.is_none(), "detail only when asked");
    assert_eq!(s.pressure, Pressure::default(), "v1 has no pressure files");
    assert_eq!(s.cpu.unwrap().usage_core_nano_seconds, 1_500_000_000);
    let m = s.memory.unwrap();
    assert_eq!(
        (m.working_set_bytes, m.available_bytes, m.usage_bytes, m.rss_bytes),
        (700_000, Some(3_300_000), 1_000_000, 600_000)
    );
    assert_eq!((m.page_faults, m.major_page_faults), (42, 3));
    let swap = s.swap.unwrap();
    assert_eq!((swap.usage_bytes, swap.available_bytes), (200_000, None));
    assert_eq!(s.process_count, Some(4));

    // No pids controller: the members; no limit: nothing available is claimed.
    write(&mem, &[("memory.limit_in_bytes", "9223372036854771712\n"), ("cgroup.procs", "1\n2\n")]);
    let s = read_v1(&V1Dirs { memory: Some(&mem), ..Default::default() }, false);
    assert!(s.cpu.is_none());
    assert_eq!(s.memory.unwrap().available_bytes, None);
    assert_eq!(s.process_count, Some(2));
}

#[test]
fn v2_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        &[
            ("cpu.stat", "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n"),
            ("memory.current", "800\n"),
            ("memory.max", "max\n"),
            ("memory.stat", "anon 300\nfile 500\ninactive_file 200\npgfault 9\npgmajfault 1\n"),
            ("memory.swap.current", "50\n"),
            ("memory.swap.max", "150\n"),
            ("cgroup.procs", "7\n"),
        ],
    );
    let s = read_v2(dir, false);
    assert_eq!(s.cpu.unwrap().usage_core_nano_seconds, 2_500_000);
    assert!(s.detail.is_none());
    assert_eq!(s.pressure, Pressure::default(), "no pressure files, no pressure");
    let m = s.memory.unwrap();
    assert_eq!((m.working_set_bytes, m.available_bytes, m.rss_bytes), (600, None, 300));
    assert_eq!((m.page_faults, m.major_page_faults), (9, 1));
    assert_eq!(s.swap.unwrap().available_bytes, Some(100));
    assert_eq!(s.process_count, Some(1));
    write(dir, &[("memory.max", "1000\n"), ("pids.current", "3\n")]);
    let s = read_v2(dir, false);
    assert_eq!(s.memory.unwrap().available_bytes, Some(400));
    assert_eq!(s.process_count, Some(3));
}

#[test]
fn v1_detail() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |name: &str| tmp.path().join(name);
    write(
        &d("cpuacct"),
        &[
            ("cpuacct.usage", "3000\n"),
            ("cpuacct.usage_user", "2000\n"),
            ("cpuacct.usage_sys", "1000\n"),
        ],
    );
    write(
        &d("cpu"),
        &[("cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\nnr_bursts 0\n")],
    );
    write(
        &d("memory"),
        &[
            ("memory.usage_in_bytes", "1000\n"),
            ("memory.limit_in_bytes", "2000\n"),
            ("memory.max_usage_in_bytes", "1500\n"),
            ("memory.failcnt", "4\n"),
            ("memory.memsw.failcnt", "3\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ("memory.stat", "total_cache 300\ntotal_mapped_file 100\ntotal_rss 600\n"),
            ("memory.kmem.usage_in_bytes", "64\n"),
        ],
    );
    // A child stands in for the cgroup's one member: a socket on its stdin, /dev/null on
    // stdout and stderr (this test process's own table changes with the tests beside it).
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut member = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(socket)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let me = format!("{}\n", member.id());
    write(
        &d("pids"),
        &[
            ("pids.current", "2\n"),
            ("pids.max", "max\n"),
            ("tasks", "1\n2\n3\n"),
            ("cgroup.procs", me.as_str()),
        ],
    );
    write(
        &d("blkio"),
        &[
            (
                "blkio.throttle.io_service_bytes_recursive",
                "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 0\n254:0 Total 12288\n\
                     7:1 Read 1\nTotal 12289\n",
            ),
            ("blkio.throttle.io_serviced_recursive", "254:0 Read 1\n254:0 Write 2\nTotal 3\n"),
        ],
    );
    let (cpuacct, cpu, memory, pids, blkio) =
        (d("cpuacct"), d("cpu"), d("memory"), d("pids"), d("blkio"));
    let dirs = V1Dirs {
        cpuacct: Some(&cpuacct),
        cpu: Some(&cpu),
        memory: Some(&memory),
        pids: Some(&pids),
        blkio: Some(&blkio),
    };
    let detail = read_v1(&dirs, true).detail.unwrap();
    assert_eq!((detail.cpu_user_nanos, detail.cpu_system_nanos), (Some(2000), Some(1000)));
    assert_eq!(
        detail.throttling,
        Some(Throttling { periods: 10, throttled_periods: 4, throttled_nanos: 5000 })
    );
    assert_eq!(
        detail.memory,
        Some(MemoryDetail {
            cache: 300,
            mapped_file: 100,
            max_usage: Some(1500),
            failcnt: Some(7),
            oom_kills: Some(2),
            limit: Some(2000),
            kernel: Some(64),
        })
    );
    assert_eq!(detail.pids_limit, None, "max is no limit");
    assert_eq!(detail.threads, Some(3));
    // The child holds its three standard descriptors, stdin a socket, and maybe what it
    // inherited from the test runner meanwhile: counted, not pinned down.
    let open = detail.open_files.unwrap();
    assert!(open.descriptors >= 3 && open.sockets >= 1, "{open:?}");
    assert!(open.sockets <= open.descriptors, "{open:?}");
    let _ = member.kill();
    let _ = member.wait();
    assert_eq!(
        detail.io,
        [
            DeviceIo {
                major: 254,
                minor: 0,
                device: String::new(),
                read_bytes: 4096,
                write_bytes: 8192,
                reads: 1,
                writes: 2
            },
            DeviceIo { major: 7, minor: 1, read_bytes: 1, ..Default::default() },
        ]
    );
}

#[test]
fn v2_detail_and_pressure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        dir,
        &[
            (
                "cpu.stat",
                "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\nnr_periods 8\n\
                     nr_throttled 3\nthrottled_usec 40\n",
            ),
            ("memory.current", "900\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "950\n"),
            ("memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"),
            (
                "memory.stat",
                "anon 300\nfile 500\nfile_mapped 20\ninactive_file 200\nkernel_stack 8\nslab 24\n",
            ),
            ("pids.max", "100\n"),
            ("cgroup.threads", "7\n8\n"),
            ("io.stat", "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
            (
                "cpu.pressure",
                "some avg10=1.50 avg60=0.25 avg300=0.00 total=1234\n\
                     full avg10=0.50 avg60=0.00 avg300=0.00 total=99\n",
            ),
            ("memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"),
        ],
    );
    let s = read_v2(dir, true);
    let cpu = s.pressure.cpu.unwrap();
    assert_eq!(cpu.some, PsiLine { avg10: 1.5, avg60: 0.25, avg300: 0.0, total_usec: 1234 });
    assert_eq!(cpu.full.unwrap().total_usec, 99);
    let memory = s.pressure.memory.unwrap();
    assert_eq!((memory.some.total_usec, memory.full), (7, None));
    assert!(s.pressure.io.is_none(), "no io.pressure file");
    let detail = s.detail.unwrap();
    assert_eq!(
        (detail.cpu_user_nanos, detail.cpu_system_nanos),
        (Some(2_000_000), Some(1_000_000))
    );
    assert_eq!(
        detail.throttling,
        Some(Throttling { periods: 8, throttled_periods: 3, throttled_nanos: 40_000 })
    );
    let memory = detail.memory.unwrap();
    assert_eq!((memory.cache, memory.mapped_file, memory.max_usage), (500, 20, Some(950)));
    assert_eq!((memory.failcnt, memory.oom_kills, memory.limit), (Some(5), Some(1), None));
    assert_eq!(memory.kernel, Some(32), "the kernel's parts, before 5.18's `kernel`");
    assert_eq!(detail.pids_limit, Some(100));
    assert_eq!(detail.threads, Some(2));
    assert_eq!(detail.open_files, None, "no cgroup.procs");
    assert_eq!(
        (
            detail.io[0].read_bytes,
            detail.io[0].write_bytes,
            detail.io[0].reads,
            detail.io[0].writes
        ),
        (10, 20, 1, 2)
    );

    // Without the cpu controller, no throttling figures are claimed.
    write(dir, &[("cpu.stat", "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\n")]);
    assert!(read_v2(dir, true).detail.unwrap().throttling.is_none());
}

#[test]
fn psi_lines() {
    assert!(parse_psi("").is_none());
    assert!(parse_psi("some avg10=x total=1\n").is_none());
    let psi = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
    assert_eq!((psi.some.total_usec, psi.full), (5, None));
}

#[test]
fn device_names_from_sysfs_or_numbers() {
    let layout = CgroupLayout { mode: crate::cgroups::CgroupMode::Unified, hierarchies: vec![] };
    let stats = Stats::new(Arc::new(layout), false);
    // Major 0 is never a block device.
    assert_eq!(stats.device_name(0, 77), "0:77");
    for entry in std::fs::read_dir("/sys/dev/block").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (major, minor) = major_minor(&name).unwrap();
        assert!(stats.device_name(major, minor).starts_with("/dev/"), "{name}");
    }
}

#[test]
fn rates() {
    let prev = CpuSample { at: 0, usage: 1_000, rate: 0, seen: Instant::now() };
    let cpu = CpuStats {
        timestamp: 100_000_000,
        usage_core_nano_seconds: 50_001_000,
        usage_nano_cores: 0,
    };
    // 50 ms of CPU in 100 ms: half a core.
    assert_eq!(rate(&prev, &cpu), 500_000_000);
}

#[test]
fn usage_of_a_directory_and_its_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("upper");
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    std::fs::write(dir.join("a/b/file"), vec![1u8; 1 << 20]).unwrap();
    std::fs::hard_link(dir.join("a/b/file"), dir.join("a/link")).unwrap();
    let usage = dir_usage(&dir).unwrap();
    assert!(usage.used_bytes >= 1 << 20 && usage.used_bytes < 2 << 20, "{usage:?}");
    // upper, a, b, file (the hard link counted once).
    assert_eq!(usage.inodes_used, 4);
    assert!(dir.starts_with(&usage.mountpoint));
    assert!(usage.capacity_bytes >= usage.used_bytes && usage.inodes_total > 0, "{usage:?}");
    assert!(usage.inodes_free <= usage.inodes_total);

    let layout = CgroupLayout { mode: crate::cgroups::CgroupMode::Unified, hierarchies: vec![] };
    let stats = Stats::new(Arc::new(layout), false);
    let first = stats.layer(&dir).unwrap();
    std::fs::write(dir.join("more"), vec![1u8; 1 << 20]).unwrap();
    assert_eq!(stats.layer(&dir).unwrap(), first, "served from the cache");
    assert!(stats.layer(&tmp.path().join("missing")).is_none());
}

#[test]
fn mountpoints() {
    let mountinfo = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                         30 22 0:5 / /var/lib rw shared:3 - ext4 /dev/sdb rw\n\
                         31 22 0:6 / /var/lib\\040x rw - tmpfs t rw\n";
    let at = |p: &str| mount_of(mountinfo, Path::new(p)).unwrap();
    assert_eq!(at("/var/lib/berth/containers/x/upper"), ("/var/lib".into(), "/dev/sdb".into()));
    assert_eq!(at("/var/lib x/y"), ("/var/lib x".into(), "t".into()));
    assert_eq!(at("/var/libx"), ("/".into(), "/dev/sda1".into()));
}

#[test]
fn net_dev() {
    let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
            eth0:    5000      10    2    0    0     0          0         0     3000       8    1    0    0     0       0          0\n";
    let ifaces = parse_net_dev(text);
    assert_eq!(
        ifaces,
        [InterfaceStats {
            name: "eth0".into(),
            rx_bytes: 5000,
            rx_packets: 10,
            rx_errors: 2,
            rx_dropped: 0,
            tx_bytes: 3000,
            tx_packets: 8,
            tx_errors: 1,
            tx_dropped: 0,
        }]
    );
}

#[test]
fn network_of_this_namespace() {
    let stats = network(Path::new("/proc/self/ns/net")).unwrap();
    assert!(stats.timestamp > 0);
}
