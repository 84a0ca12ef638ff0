//! Container and pod stats (ContainerStats, PodSandboxStats and their list and stream forms),
//! read from the cgroup files directly (v1 for real, v2 alike), the writable layer's usage, and
//! the pod's network counters from inside its network namespace.
//!
//! CPU usage in nano-cores is a rate, so it needs two samples: the last sample of each cgroup is
//! kept between calls, and a cgroup seen for the first time is read twice, 100 ms apart (once
//! for a whole list, not per cgroup), so that the first answer is already right. The writable
//! layer's usage is a walk of its files, cached for [`LAYER_REFRESH`] so that kubelet's polling
//! of many containers costs a walk per container every few seconds at most.
//!
//! Pressure (PSI) is read where the cgroup has it: the `*.pressure` files of a v2 cgroup. A v1
//! hierarchy has none, so on a v1 or hybrid host it stays unset. The figures only the
//! cAdvisor-style metrics need (CPU user/system split and throttling, cache, failcnt, OOM kills,
//! block I/O per device) are read only when asked for ([`Stats::cgroups`] with `detail`), so
//! that the kubelet's stats polling reads no more files than it uses.

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

/// One line of a pressure file: the share of time (percent) some or all tasks stalled over 10,
/// 60 and 300 s, and the total stall time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_usec: u64,
}

/// A pressure file: `some` always, `full` where the kernel reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Psi {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// The cgroup's pressure figures; each `None` where the kernel does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    pub cpu: Option<Psi>,
    pub memory: Option<Psi>,
    pub io: Option<Psi>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttling {
    /// Enforcement periods that elapsed with runnable tasks.
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_nanos: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryDetail {
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache: u64,
    pub mapped_file: u64,
    /// The highest usage seen (v1 `max_usage_in_bytes`, v2 `memory.peak` where it exists).
    pub max_usage: Option<u64>,
    /// Times usage hit the limit (v1 `failcnt` of memory and of memory+swap, v2 `memory.events`
    /// `max`).
    pub failcnt: Option<u64>,
    /// Processes the OOM killer killed in the cgroup (`oom_kill`, kernel 4.13 and later).
    pub oom_kills: Option<u64>,
    /// `None` without a limit.
    pub limit: Option<u64>,
    /// Kernel memory charged to the cgroup (v1 `memory.kmem.usage_in_bytes`, v2 `memory.stat`
    /// `kernel`, or its parts on kernels before 5.18).
    pub kernel: Option<u64>,
}

/// Block I/O of a cgroup on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIo {
    pub major: u64,
    pub minor: u64,
    /// `/dev/<name>` from sysfs, else `major:minor`; empty until [`Stats`] names it.
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// The figures only metrics read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDetail {
    pub cpu_user_nanos: Option<u64>,
    pub cpu_system_nanos: Option<u64>,
    /// `None` where the CPU controller's `cpu.stat` is not there.
    pub throttling: Option<Throttling>,
    pub memory: Option<MemoryDetail>,
    /// `None` without a limit.
    pub pids_limit: Option<u64>,
    pub io: Vec<DeviceIo>,
    /// Threads in the cgroup (v1 `tasks`, v2 `cgroup.threads`).
    pub threads: Option<u64>,
    /// What the cgroup's processes hold open, from `/proc/<pid>/fd`.
    pub open_files: Option<OpenFiles>,
}

/// The descriptors a cgroup's processes hold, as cAdvisor counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenFiles {
    pub descriptors: u64,
    pub sockets: u64,
}

/// What one cgroup says; a part whose files are missing (no such controller, the cgroup is
/// gone) is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupStats {
    pub timestamp: i64,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub swap: Option<SwapStats>,
    pub process_count: Option<u64>,
    pub pressure: Pressure,
    /// Only when asked for.
    pub detail: Option<CgroupDetail>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub timestamp: i64,
    /// The mountpoint of the filesystem holding the directory.
    pub mountpoint: String,
    /// That filesystem's source as mounted (`/dev/vda1`, `overlay`).
    pub device: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// The filesystem's size and inodes, all of them and the free ones.
    pub capacity_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
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
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
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

/// The stats reader: keeps the CPU samples, the writable layers' cached usage and the block
/// devices' names.
pub struct Stats {
    cgroups: Arc<CgroupLayout>,
    nest: bool,
    samples: Mutex<HashMap<String, CpuSample>>,
    layers: Mutex<HashMap<PathBuf, (Instant, FsUsage)>>,
    devices: Mutex<HashMap<(u64, u64), String>>,
}

impl Stats {
    pub fn new(cgroups: Arc<CgroupLayout>, nest: bool) -> Stats {
        Stats {
            cgroups,
            nest,
            samples: Mutex::default(),
            layers: Mutex::default(),
            devices: Mutex::default(),
        }
    }

    /// Reads every target's cgroup, with a CPU rate for each (blocking: up to 100 ms when one
    /// is new), and with `detail` the figures only metrics need.
    pub fn cgroups(&self, targets: &[Target], detail: bool) -> Vec<CgroupStats> {
        let mut read: Vec<CgroupStats> =
            targets.iter().map(|t| self.read(&t.cgroup, detail)).collect();
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
                let again = self.read(&targets[i].cgroup, false);
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
        drop(samples);
        for detail in read.iter_mut().filter_map(|s| s.detail.as_mut()) {
            for io in &mut detail.io {
                io.device = self.device_name(io.major, io.minor);
            }
        }
        read
    }

    /// `/dev/<name>` of a block device, as cAdvisor labels it; `major:minor` when sysfs does
    /// not know it.
    fn device_name(&self, major: u64, minor: u64) -> String {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices
            .entry((major, minor))
            .or_insert_with(|| {
                let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
                std::fs::read_to_string(uevent)
                    .ok()
                    .and_then(|text| {
                        text.lines()
                            .find_map(|l| l.strip_prefix("DEVNAME="))
                            .map(|name| format!("/dev/{}", name.trim()))
                    })
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }

    fn read(&self, path: &str, detail: bool) -> CgroupStats {
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
            Some((h, dir)) if h.version == CgroupVersion::V2 => read_v2(dir, detail),
            _ => {
                let v1 = V1Dirs {
                    cpuacct: find("cpuacct"),
                    cpu: find("cpu"),
                    memory: find("memory"),
                    pids: find("pids"),
                    blkio: find("blkio"),
                };
                read_v1(&v1, detail)
            }
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

/// The directories of one cgroup in the v1 hierarchies that have its controllers.
#[derive(Debug, Clone, Copy, Default)]
pub struct V1Dirs<'a> {
    pub cpuacct: Option<&'a Path>,
    pub cpu: Option<&'a Path>,
    pub memory: Option<&'a Path>,
    pub pids: Option<&'a Path>,
    pub blkio: Option<&'a Path>,
}

/// cgroup v1: `cpuacct.usage`, `memory.usage_in_bytes` and `memory.stat`'s hierarchical
/// (`total_*`) counters, `pids.current` (else the members of `cgroup.procs`). v1 has no
/// pressure files.
pub fn read_v1(dirs: &V1Dirs, detail: bool) -> CgroupStats {
    let timestamp = now_nanos();
    let cpu = dirs
        .cpuacct
        .and_then(|dir| number(&dir.join("cpuacct.usage")))
        .map(|usage| CpuStats { timestamp, usage_core_nano_seconds: usage, usage_nano_cores: 0 });
    let stat = dirs.memory.map(|dir| keyed(&dir.join("memory.stat"))).unwrap_or_default();
    let limit = dirs
        .memory
        .and_then(|dir| number(&dir.join("memory.limit_in_bytes")))
        .filter(|&l| l < UNLIMITED);
    let (memory, swap) = match dirs.memory {
        Some(dir) => {
            let usage = number(&dir.join("memory.usage_in_bytes"));
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
    let process_count = dirs
        .pids
        .and_then(|dir| number(&dir.join("pids.current")))
        .or_else(|| dirs.memory.or(dirs.cpuacct).and_then(count_procs));
    let detail = detail.then(|| CgroupDetail {
        cpu_user_nanos: dirs.cpuacct.and_then(|dir| number(&dir.join("cpuacct.usage_user"))),
        cpu_system_nanos: dirs.cpuacct.and_then(|dir| number(&dir.join("cpuacct.usage_sys"))),
        throttling: dirs.cpu.and_then(|dir| {
            let stat = keyed_file(&dir.join("cpu.stat"))?;
            Some(Throttling {
                periods: stat.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: stat.get("nr_throttled").copied().unwrap_or(0),
                throttled_nanos: stat.get("throttled_time").copied().unwrap_or(0),
            })
        }),
        memory: dirs.memory.map(|dir| MemoryDetail {
            cache: stat.get("total_cache").copied().unwrap_or(0),
            mapped_file: stat.get("total_mapped_file").copied().unwrap_or(0),
            max_usage: number(&dir.join("memory.max_usage_in_bytes")),
            // A charge that fails is counted by the counter that refused it: memory+swap (when
            // swap is accounted, it is tried first) or memory.
            failcnt: number(&dir.join("memory.failcnt"))
                .map(|memory| memory + number(&dir.join("memory.memsw.failcnt")).unwrap_or(0)),
            oom_kills: keyed(&dir.join("memory.oom_control")).get("oom_kill").copied(),
            limit,
            kernel: number(&dir.join("memory.kmem.usage_in_bytes")),
        }),
        pids_limit: dirs
            .pids
            .and_then(|dir| number(&dir.join("pids.max")))
            .filter(|&l| l != u64::MAX),
        io: dirs.blkio.map(blkio_v1).unwrap_or_default(),
        threads: dirs
            .pids
            .or(dirs.memory)
            .or(dirs.cpuacct)
            .and_then(|dir| count_lines(dir, "tasks")),
        open_files: dirs.pids.or(dirs.memory).or(dirs.cpuacct).and_then(open_files),
    });
    CgroupStats {
        timestamp,
        cpu,
        memory,
        swap,
        process_count,
        pressure: Pressure::default(),
        detail,
    }
}

/// `blkio.throttle.io_service_bytes_recursive` and `…io_serviced_recursive` (the throttle
/// files count every I/O whatever the scheduler; the plain ones only CFQ/BFQ's): lines of
/// `major:minor Read|Write|… value`.
fn blkio_v1(dir: &Path) -> Vec<DeviceIo> {
    let mut devices: Vec<DeviceIo> = Vec::new();
    for (file, bytes) in [
        ("blkio.throttle.io_service_bytes_recursive", true),
        ("blkio.throttle.io_serviced_recursive", false),
    ] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else { continue };
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(dev), Some(op), Some(value)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Some((major, minor)), Ok(value)) = (major_minor(dev), value.parse::<u64>()) else {
                continue;
            };
            let io = device_entry(&mut devices, major, minor);
            match (op, bytes) {
                ("Read", true) => io.read_bytes = value,
                ("Write", true) => io.write_bytes = value,
                ("Read", false) => io.reads = value,
                ("Write", false) => io.writes = value,
                _ => {}
            }
        }
    }
    devices
}

/// v2 `io.stat`: `major:minor rbytes=… wbytes=… rios=… wios=… dbytes=… dios=…`.
fn io_v2(dir: &Path) -> Vec<DeviceIo> {
    let Ok(text) = std::fs::read_to_string(dir.join("io.stat")) else { return Vec::new() };
    let mut devices = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(major_minor) else { continue };
        let io = device_entry(&mut devices, major, minor);
        for field in fields {
            let Some((key, value)) = field.split_once('=') else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            match key {
                "rbytes" => io.read_bytes = value,
                "wbytes" => io.write_bytes = value,
                "rios" => io.reads = value,
                "wios" => io.writes = value,
                _ => {}
            }
        }
    }
    devices
}

fn major_minor(dev: &str) -> Option<(u64, u64)> {
    let (major, minor) = dev.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn device_entry(devices: &mut Vec<DeviceIo>, major: u64, minor: u64) -> &mut DeviceIo {
    let at = match devices.iter().position(|d| d.major == major && d.minor == minor) {
        Some(at) => at,
        None => {
            devices.push(DeviceIo { major, minor, ..Default::default() });
            devices.len() - 1
        }
    };
    &mut devices[at]
}

/// A pressure file: `some avg10=… avg60=… avg300=… total=…` and, since 5.13 for CPU, `full …`.
pub fn parse_psi(text: &str) -> Option<Psi> {
    let line = |kind: &str| {
        let rest = text.lines().find_map(|l| l.strip_prefix(kind))?;
        let mut psi = PsiLine::default();
        for field in rest.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "avg10" => psi.avg10 = value.parse().ok()?,
                "avg60" => psi.avg60 = value.parse().ok()?,
                "avg300" => psi.avg300 = value.parse().ok()?,
                "total" => psi.total_usec = value.parse().ok()?,
                _ => {}
            }
        }
        Some(psi)
    };
    Some(Psi { some: line("some ")?, full: line("full ") })
}

fn pressure_v2(dir: &Path) -> Pressure {
    let read =
        |file: &str| std::fs::read_to_string(dir.join(file)).ok().and_then(|text| parse_psi(&text));
    Pressure { cpu: read("cpu.pressure"), memory: read("memory.pressure"), io: read("io.pressure") }
}

/// cgroup v2: `cpu.stat`'s `usage_usec`, `memory.current`, `memory.stat`, `memory.max`,
/// `memory.swap.*`, `pids.current` (else `cgroup.procs`), the `*.pressure` files.
pub fn read_v2(dir: &Path, detail: bool) -> CgroupStats {
    let timestamp = now_nanos();
    let cpu_stat = keyed(&dir.join("cpu.stat"));
    let cpu = cpu_stat.get("usage_usec").map(|usec| CpuStats {
        timestamp,
        usage_core_nano_seconds: usec.saturating_mul(1000),
        usage_nano_cores: 0,
    });
    let stat = keyed(&dir.join("memory.stat"));
    let limit = number(&dir.join("memory.max")).filter(|&l| l < UNLIMITED);
    let current = number(&dir.join("memory.current"));
    let memory = current.map(|usage| {
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
    let detail = detail.then(|| {
        let usec = |key: &str| cpu_stat.get(key).map(|v| v.saturating_mul(1000));
        let events = keyed(&dir.join("memory.events"));
        CgroupDetail {
            cpu_user_nanos: usec("user_usec"),
            cpu_system_nanos: usec("system_usec"),
            // Without the cpu controller enabled, cpu.stat has only the usage lines.
            throttling: cpu_stat.get("nr_periods").map(|&periods| Throttling {
                periods,
                throttled_periods: cpu_stat.get("nr_throttled").copied().unwrap_or(0),
                throttled_nanos: usec("throttled_usec").unwrap_or(0),
            }),
            memory: current.map(|_| MemoryDetail {
                cache: stat.get("file").copied().unwrap_or(0),
                mapped_file: stat.get("file_mapped").copied().unwrap_or(0),
                max_usage: number(&dir.join("memory.peak")),
                failcnt: events.get("max").copied(),
                oom_kills: events.get("oom_kill").copied(),
                limit,
                kernel: kernel_v2(&stat),
            }),
            pids_limit: number(&dir.join("pids.max")).filter(|&l| l != u64::MAX),
            io: io_v2(dir),
            threads: count_lines(dir, "cgroup.threads"),
            open_files: open_files(dir),
        }
    });
    CgroupStats { timestamp, cpu, memory, swap, process_count, pressure: pressure_v2(dir), detail }
}

/// A file holding one number; `max` (v2's "no limit") is `u64::MAX`.
fn number(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// A file of `key value` lines (`memory.stat`, `cpu.stat`); empty when it is missing.
fn keyed(path: &Path) -> HashMap<String, u64> {
    keyed_file(path).unwrap_or_default()
}

fn keyed_file(path: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

fn count_procs(dir: &Path) -> Option<u64> {
    count_lines(dir, "cgroup.procs")
}

/// The entries of a cgroup's list file (`cgroup.procs`, `tasks`, `cgroup.threads`).
fn count_lines(dir: &Path, file: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    Some(text.lines().filter(|l| !l.trim().is_empty()).count() as u64)
}

/// v2 `memory.stat`: `kernel` since 5.18; before, the sum of the kernel's parts it has.
fn kernel_v2(stat: &HashMap<String, u64>) -> Option<u64> {
    if let Some(kernel) = stat.get("kernel") {
        return Some(*kernel);
    }
    let parts = ["kernel_stack", "pagetables", "percpu", "sock", "slab", "vmalloc"];
    let present: Vec<u64> = parts.iter().filter_map(|part| stat.get(*part).copied()).collect();
    (!present.is_empty()).then(|| present.iter().sum())
}

/// The descriptors the processes of cgroup `dir` hold open, and how many are sockets. A
/// process that exits meanwhile, or whose table cannot be read, counts for nothing.
fn open_files(dir: &Path) -> Option<OpenFiles> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    let mut open = OpenFiles::default();
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for entry in entries.flatten() {
            open.descriptors += 1;
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            if target.as_os_str().as_encoded_bytes().starts_with(b"socket:") {
                open.sockets += 1;
            }
        }
    }
    Some(open)
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
    let (mountpoint, device) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|text| mount_of(&text, dir))
        .unwrap_or_else(|| ("/".to_string(), String::new()));
    let fs = nix::sys::statvfs::statvfs(dir).ok();
    let capacity_bytes = fs.as_ref().map_or(0, |fs| fs.blocks() * fs.fragment_size());
    Ok(FsUsage {
        timestamp,
        mountpoint,
        device,
        used_bytes,
        inodes_used,
        capacity_bytes,
        inodes_total: fs.as_ref().map_or(0, |fs| fs.files()),
        inodes_free: fs.as_ref().map_or(0, |fs| fs.files_free()),
    })
}

/// The mount in `mountinfo` that holds `path` (the longest mountpoint it is under): its
/// mountpoint and its source.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mountpoint = unescape(line.split(' ').nth(4)?);
            // After the optional fields and their ` - ` separator: fstype, source, options.
            let source = line.split_once(" - ").and_then(|(_, rest)| rest.split(' ').nth(1));
            Some((mountpoint, unescape(source.unwrap_or_default())))
        })
        .filter(|(mp, _)| path.starts_with(mp))
        .max_by_key(|(mp, _)| mp.len())
}

fn unescape(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        // It exists, but is not ours to signal.
        Err(errno) => errno == nix::errno::Errno::EPERM,
    }
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
/// compressed multicast tx_bytes packets errs drop …`.
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
            if n.len() < 12 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
