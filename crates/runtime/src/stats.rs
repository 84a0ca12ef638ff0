//! Container and pod stats (ContainerStats, PodSandboxStats and their list and stream forms),
//! read from the cgroup files directly (v1 for real, v2 alike), the writable layer's usage, and
//! the pod's network counters from inside its network namespace.
//!
//! CPU usage in nano-cores is a rate, so it needs two samples: the last sample of each cgroup is
//! kept between calls, and a cgroup seen for the first time is read twice, 100 ms apart (once
//! for a whole list, not per cgroup), so that the first answer is already right. The writable
//! layer's usage is a walk of its files, cached for [`LAYER_REFRESH`] so that kubelet's polling
//! of many containers costs a walk per container every few seconds at most.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cgroups::{CgroupLayout, CgroupVersion};
use crate::container::ContainerRecord;
use crate::error::{Error, Result};
use crate::namespaces::{in_namespaces, NsKind};
use crate::pod::PodRecord;
pub use crate::util::now_nanos;

/// How long a writable layer's measured usage is served before it is walked again.
pub const LAYER_REFRESH: Duration = Duration::from_secs(10);
/// The gap between the two CPU samples of a cgroup seen for the first time.
const FIRST_SAMPLE_GAP: Duration = Duration::from_millis(100);
/// Two samples closer than this give no rate worth having (two clients polling at once): the
/// last rate is served instead.
const MIN_SAMPLE_GAP: i64 = 10_000_000;
/// Samples of cgroups nobody asked about for this long are dropped (their container is gone).
const SAMPLE_TTL: Duration = Duration::from_secs(600);
/// Memory limits at or above this mean "no limit" (v1 reports a page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 60;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub timestamp: i64,
    pub usage_core_nano_seconds: u64,
    pub usage_nano_cores: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub timestamp: i64,
    /// Usage minus inactive file pages: what the kernel cannot easily take back.
    pub working_set_bytes: u64,
    /// Limit minus working set; `None` without a limit.
    pub available_bytes: Option<u64>,
    pub usage_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapStats {
    pub timestamp: i64,
    pub usage_bytes: u64,
    /// `None` without a swap limit.
    pub available_bytes: Option<u64>,
}

/// What one cgroup says; a part whose files are missing (no such controller, the cgroup is
/// gone) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub timestamp: i64,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub swap: Option<SwapStats>,
    pub process_count: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub timestamp: i64,
    /// The mountpoint of the filesystem holding the directory.
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

#[derive(Debug, Clone)]
pub struct ContainerStats {
    pub record: ContainerRecord,
    pub cgroup: CgroupStats,
    pub writable_layer: Option<FsUsage>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub timestamp: i64,
    /// Every interface but `lo`, in the kernel's order.
    pub interfaces: Vec<InterfaceStats>,
}

impl NetworkStats {
    /// `eth0` (the interface CNI makes), else the first.
    pub fn default_interface(&self) -> Option<&InterfaceStats> {
        self.interfaces.iter().find(|i| i.name == "eth0").or_else(|| self.interfaces.first())
    }
}

#[derive(Debug, Clone)]
pub struct PodStats {
    pub record: PodRecord,
    pub cgroup: CgroupStats,
    pub network: Option<NetworkStats>,
    pub containers: Vec<ContainerStats>,
}

/// A cgroup to read: a key for its CPU samples and its path (relative to each hierarchy).
#[derive(Debug, Clone)]
pub struct Target {
    pub key: String,
    pub cgroup: String,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: i64,
    usage: u64,
    rate: u64,
    seen: Instant,
}

/// The stats reader: keeps the CPU samples and the writable layers' cached usage.
pub struct Stats {
    cgroups: Arc<CgroupLayout>,
    nest: bool,
    samples: Mutex<HashMap<String, CpuSample>>,
    layers: Mutex<HashMap<PathBuf, (Instant, FsUsage)>>,
}

impl Stats {
    pub fn new(cgroups: Arc<CgroupLayout>, nest: bool) -> Stats {
        Stats { cgroups, nest, samples: Mutex::default(), layers: Mutex::default() }
    }

    /// Reads every target's cgroup, with a CPU rate for each (blocking: up to 100 ms when one
    /// is new).
    pub fn cgroups(&self, targets: &[Target]) -> Vec<CgroupStats> {
        let mut read: Vec<CgroupStats> = targets.iter().map(|t| self.read(&t.cgroup)).collect();
        let new: Vec<usize> = {
            let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            (0..targets.len())
                .filter(|&i| read[i].cpu.is_some() && !samples.contains_key(&targets[i].key))
                .collect()
        };
        if !new.is_empty() {
            {
                let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
                for &i in &new {
                    if let Some(cpu) = &read[i].cpu {
                        samples.insert(targets[i].key.clone(), sample(cpu, 0));
                    }
                }
            }
            std::thread::sleep(FIRST_SAMPLE_GAP);
            for &i in &new {
                let again = self.read(&targets[i].cgroup);
                if again.cpu.is_some() {
                    read[i].cpu = again.cpu;
                }
            }
        }
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for (target, stats) in targets.iter().zip(read.iter_mut()) {
            let Some(cpu) = stats.cpu.as_mut() else { continue };
            let rate = match samples.get(&target.key) {
                Some(prev) if cpu.timestamp - prev.at < MIN_SAMPLE_GAP => {
                    cpu.usage_nano_cores = prev.rate;
                    continue;
                }
                Some(prev) => rate(prev, cpu),
                None => 0,
            };
            cpu.usage_nano_cores = rate;
            samples.insert(target.key.clone(), sample(cpu, rate));
        }
        samples.retain(|_, s| s.seen.elapsed() < SAMPLE_TTL);
        read
    }

    fn read(&self, path: &str) -> CgroupStats {
        let dirs = match self.cgroups.dirs(Path::new(path), self.nest) {
            Ok(dirs) => dirs,
            Err(err) => {
                tracing::debug!(cgroup = path, error = %err, "cgroup for stats");
                return CgroupStats { timestamp: now_nanos(), ..Default::default() };
            }
        };
        let find = |controller: &str| {
            dirs.iter()
                .find(|(h, _)| {
                    h.version == CgroupVersion::V2 || h.controllers.iter().any(|c| c == controller)
                })
                .map(|(_, dir)| dir.as_path())
        };
        match dirs.first() {
            Some((h, dir)) if h.version == CgroupVersion::V2 => read_v2(dir),
            _ => read_v1(find("cpuacct"), find("memory"), find("pids")),
        }
    }

    /// The usage of a writable layer, walked at most every [`LAYER_REFRESH`].
    pub fn layer(&self, dir: &Path) -> Option<FsUsage> {
        if let Some((at, usage)) =
            self.layers.lock().unwrap_or_else(|p| p.into_inner()).get(dir).cloned()
        {
            if at.elapsed() < LAYER_REFRESH {
                return Some(usage);
            }
        }
        let usage = match dir_usage(dir) {
            Ok(usage) => usage,
            Err(err) => {
                tracing::debug!(dir = %dir.display(), error = %err, "writable layer usage");
                self.layers.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
                return None;
            }
        };
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        layers.retain(|_, (at, _)| at.elapsed() < SAMPLE_TTL);
        layers.insert(dir.to_path_buf(), (Instant::now(), usage.clone()));
        Some(usage)
    }
}

fn sample(cpu: &CpuStats, rate: u64) -> CpuSample {
    CpuSample { at: cpu.timestamp, usage: cpu.usage_core_nano_seconds, rate, seen: Instant::now() }
}

fn rate(prev: &CpuSample, cpu: &CpuStats) -> u64 {
    let dt = (cpu.timestamp - prev.at).max(1) as u128;
    let used = u128::from(cpu.usage_core_nano_seconds.saturating_sub(prev.usage));
    u64::try_from(used * 1_000_000_000 / dt).unwrap_or(u64::MAX)
}

/// cgroup v1: `cpuacct.usage`, `memory.usage_in_bytes` and `memory.stat`'s hierarchical
/// (`total_*`) counters, `pids.current` (else the members of `cgroup.procs`).
pub fn read_v1(cpuacct: Option<&Path>, memory: Option<&Path>, pids: Option<&Path>) -> CgroupStats {
    let timestamp = now_nanos();
    let cpu = cpuacct.and_then(|dir| number(&dir.join("cpuacct.usage"))).map(|usage| CpuStats {
        timestamp,
        usage_core_nano_seconds: usage,
        usage_nano_cores: 0,
    });
    let (memory_stats, swap) = match memory {
        Some(dir) => {
            let stat = keyed(&dir.join("memory.stat"));
            let usage = number(&dir.join("memory.usage_in_bytes"));
            let limit = number(&dir.join("memory.limit_in_bytes")).filter(|&l| l < UNLIMITED);
            let memory = usage.map(|usage| {
                let inactive = stat.get("total_inactive_file").copied().unwrap_or(0);
                let working_set = usage.saturating_sub(inactive);
                MemoryStats {
                    timestamp,
                    working_set_bytes: working_set,
                    available_bytes: limit.map(|l| l.saturating_sub(working_set)),
                    usage_bytes: usage,
                    rss_bytes: stat.get("total_rss").copied().unwrap_or(0),
                    page_faults: stat.get("total_pgfault").copied().unwrap_or(0),
                    major_page_faults: stat.get("total_pgmajfault").copied().unwrap_or(0),
                }
            });
            // memsw counts memory and swap together; it exists only with swap accounting on.
            let swap = match (number(&dir.join("memory.memsw.usage_in_bytes")), usage) {
                (Some(both), Some(usage)) => {
                    let both_limit =
                        number(&dir.join("memory.memsw.limit_in_bytes")).filter(|&l| l < UNLIMITED);
                    Some(SwapStats {
                        timestamp,
                        usage_bytes: both.saturating_sub(usage),
                        available_bytes: both_limit.map(|l| l.saturating_sub(both)),
                    })
                }
                _ => None,
            };
            (memory, swap)
        }
        None => (None, None),
    };
    let process_count = pids
        .and_then(|dir| number(&dir.join("pids.current")))
        .or_else(|| memory.or(cpuacct).and_then(count_procs));
    CgroupStats { timestamp, cpu, memory: memory_stats, swap, process_count }
}

/// cgroup v2: `cpu.stat`'s `usage_usec`, `memory.current`, `memory.stat`, `memory.max`,
/// `memory.swap.*`, `pids.current` (else `cgroup.procs`).
pub fn read_v2(dir: &Path) -> CgroupStats {
    let timestamp = now_nanos();
    let cpu = keyed(&dir.join("cpu.stat")).get("usage_usec").map(|usec| CpuStats {
        timestamp,
        usage_core_nano_seconds: usec.saturating_mul(1000),
        usage_nano_cores: 0,
    });
    let stat = keyed(&dir.join("memory.stat"));
    let limit = number(&dir.join("memory.max")).filter(|&l| l < UNLIMITED);
    let memory = number(&dir.join("memory.current")).map(|usage| {
        let working_set = usage.saturating_sub(stat.get("inactive_file").copied().unwrap_or(0));
        MemoryStats {
            timestamp,
            working_set_bytes: working_set,
            available_bytes: limit.map(|l| l.saturating_sub(working_set)),
            usage_bytes: usage,
            rss_bytes: stat.get("anon").copied().unwrap_or(0),
            page_faults: stat.get("pgfault").copied().unwrap_or(0),
            major_page_faults: stat.get("pgmajfault").copied().unwrap_or(0),
        }
    });
    let swap = number(&dir.join("memory.swap.current")).map(|usage| SwapStats {
        timestamp,
        usage_bytes: usage,
        available_bytes: number(&dir.join("memory.swap.max"))
            .filter(|&l| l < UNLIMITED)
            .map(|l| l.saturating_sub(usage)),
    });
    let process_count = number(&dir.join("pids.current")).or_else(|| count_procs(dir));
    CgroupStats { timestamp, cpu, memory, swap, process_count }
}

/// A file holding one number; `max` (v2's "no limit") is `u64::MAX`.
fn number(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// A file of `key value` lines (`memory.stat`, `cpu.stat`).
fn keyed(path: &Path) -> HashMap<String, u64> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn count_procs(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    Some(text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

/// Bytes (allocated blocks, as `du` counts) and inodes under `dir`, on its own filesystem only,
/// each hard-linked file once.
pub fn dir_usage(dir: &Path) -> Result<FsUsage> {
    let timestamp = now_nanos();
    let top = std::fs::symlink_metadata(dir).map_err(Error::io("reading", dir))?;
    let mut used_bytes = top.blocks() * 512;
    let mut inodes_used = 1;
    let mut linked = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            // Files come and go while the container runs.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io("listing", &current)(err)),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != top.dev() {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !linked.insert(meta.ino()) {
                continue;
            }
            used_bytes += meta.blocks() * 512;
            inodes_used += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    let mountpoint = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| mountpoint_of(&text, dir))
        .unwrap_or_else(|| "/".to_string());
    Ok(FsUsage { timestamp, mountpoint, used_bytes, inodes_used })
}

/// The mountpoint in `mountinfo` that holds `path`: the longest one it is under.
pub fn mountpoint_of(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.len())
}

fn unescape(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// The counters of `/proc/net/dev` inside the network namespace held at `netns`.
pub fn network(netns: &Path) -> Result<NetworkStats> {
    // /proc/net follows the thread group leader's namespace; thread-self follows this thread.
    let text = in_namespaces(&[(NsKind::Net, netns)], || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(Error::io("reading", "/proc/thread-self/net/dev"))
    })?;
    Ok(NetworkStats { timestamp: now_nanos(), interfaces: parse_net_dev(&text) })
}

/// `/proc/net/dev`: after two header lines, `name: rx_bytes packets errs drop fifo frame
/// compressed multicast tx_bytes packets errs …`.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let n: Vec<u64> = counters.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
            if n.len() < 11 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
        let s = read_v1(Some(&cpu), Some(&mem), Some(&pids));
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
        write(
            &mem,
            &[("memory.limit_in_bytes", "9223372036854771712\n"), ("cgroup.procs", "1\n2\n")],
        );
        let s = read_v1(None, Some(&mem), None);
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
        let s = read_v2(dir);
        assert_eq!(s.cpu.unwrap().usage_core_nano_seconds, 2_500_000);
        let m = s.memory.unwrap();
        assert_eq!((m.working_set_bytes, m.available_bytes, m.rss_bytes), (600, None, 300));
        assert_eq!((m.page_faults, m.major_page_faults), (9, 1));
        assert_eq!(s.swap.unwrap().available_bytes, Some(100));
        assert_eq!(s.process_count, Some(1));
        write(dir, &[("memory.max", "1000\n"), ("pids.current", "3\n")]);
        let s = read_v2(dir);
        assert_eq!(s.memory.unwrap().available_bytes, Some(400));
        assert_eq!(s.process_count, Some(3));
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

        let layout =
            CgroupLayout { mode: crate::cgroups::CgroupMode::Unified, hierarchies: vec![] };
        let stats = Stats::new(Arc::new(layout), false);
        let first = stats.layer(&dir).unwrap();
        std::fs::write(dir.join("more"), vec![1u8; 1 << 20]).unwrap();
        assert_eq!(stats.layer(&dir).unwrap(), first, "served from the cache");
        assert!(stats.layer(&tmp.path().join("missing")).is_none());
    }

    #[test]
    fn mountpoints() {
        let mountinfo = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                         30 22 0:5 / /var/lib rw - ext4 /dev/sdb rw\n\
                         31 22 0:6 / /var/lib\\040x rw - tmpfs t rw\n";
        let at = |p: &str| mountpoint_of(mountinfo, Path::new(p)).unwrap();
        assert_eq!(at("/var/lib/berth/containers/x/upper"), "/var/lib");
        assert_eq!(at("/var/lib x/y"), "/var/lib x");
        assert_eq!(at("/var/libx"), "/");
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
                rx_errors: 2,
                tx_bytes: 3000,
                tx_errors: 1
            }]
        );
    }

    #[test]
    fn network_of_this_namespace() {
        let stats = network(Path::new("/proc/self/ns/net")).unwrap();
        assert!(stats.timestamp > 0);
    }
}
