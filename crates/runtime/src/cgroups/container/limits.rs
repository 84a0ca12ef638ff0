//! The OCI spec's `linux.resources` written into a cgroup's controller files, v1 or v2, the way
//! runc maps them; refused before anything is written when no hierarchy could take them.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::{
    LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
};

use super::*;
use crate::error::{Error, Result};

/// Where the resource writes of an update go: to the files, or, for a dry run, into a list of
/// the files that would be written.
pub(super) struct Writer {
    pub(super) dry_run: bool,
    /// For a dry run: each file once, in the order of its first write.
    pub(super) planned: Vec<PathBuf>,
    /// The writes the kernel took, in order.
    pub(super) written: Vec<PathBuf>,
}

impl Writer {
    pub(super) fn plan() -> Writer {
        Writer { dry_run: true, planned: Vec::new(), written: Vec::new() }
    }

    pub(super) fn files() -> Writer {
        Writer { dry_run: false, planned: Vec::new(), written: Vec::new() }
    }

    pub(super) fn write(&mut self, dir: &Path, file: &str, value: &str) -> Result<()> {
        let path = dir.join(file);
        if self.dry_run {
            if !self.planned.contains(&path) {
                self.planned.push(path);
            }
            return Ok(());
        }
        write_raw(&path, value).map_err(|err| refused(&path, value, &err))?;
        self.written.push(path);
        Ok(())
    }
}

/// The error for a resource write the kernel refused, by what the refusal means for the
/// caller: a value this node cannot take (a CPU it does not have, a quota below 1 ms) is the
/// request's fault; a limit below what the cgroup uses now depends on the moment.
pub(super) fn refused(path: &Path, value: &str, err: &std::io::Error) -> Error {
    let what = format!("writing {value:?} to {}: {err}", path.display());
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match err.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EINVAL | Errno::ERANGE) => {
            Error::InvalidArgument(format!("the kernel refused the cgroup value: {what}"))
        }
        Some(Errno::EBUSY) => {
            let why = if file.starts_with("memory.") {
                "the cgroup uses more memory than the new limit, and the kernel could not \
                 reclaim enough"
            } else if file.starts_with("cpuset.") {
                "a child cgroup or a process of the cgroup uses CPUs or memory nodes outside \
                 the new set"
            } else {
                "the cgroup is busy"
            };
            Error::FailedPrecondition(format!("{what} ({why})"))
        }
        _ => Error::Cgroup(what),
    }
}

/// Writes `value` into a cgroup file. The file is never created: a missing one means the
/// controller is not there, which the error should say rather than hide. (cgroupfs ignores
/// O_TRUNC; a fake tree in a test needs it.)
pub(super) fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    write_raw(&path, value)
        .map_err(|err| Error::Cgroup(format!("writing {value:?} to {}: {err}", path.display())))
}

pub(super) fn write_raw(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
}

pub(super) fn read_number(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
    text.trim().parse().map_err(|_| {
        Error::Cgroup(format!("{} holds {:?}, not a number", path.display(), text.trim()))
    })
}

pub(super) fn nonzero_i64(v: Option<i64>) -> Option<i64> {
    v.filter(|v| *v != 0)
}

pub(super) fn nonzero_u64(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v != 0)
}

pub(super) fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Refuses what no hierarchy of `version` could take, before anything is written.
pub(super) fn check(r: &LinuxResources, version: CgroupVersion) -> Result<()> {
    let unified = r.unified().as_ref().filter(|u| !u.is_empty());
    match (version, unified) {
        (CgroupVersion::V1, Some(u)) => {
            let keys: BTreeSet<&String> = u.keys().collect();
            return Err(Error::InvalidArgument(format!(
                "unified cgroup resources {keys:?} need cgroup v2; this host manages v1"
            )));
        }
        (CgroupVersion::V2, Some(u)) => {
            for key in u.keys() {
                if key.is_empty() || key.contains('/') || key.contains("..") || key.contains('\0') {
                    return Err(Error::InvalidArgument(format!(
                        "unified cgroup resource {key:?} is not a file name of the cgroup"
                    )));
                }
            }
        }
        _ => {}
    }
    for limit in r.hugepage_limits().iter().flatten() {
        hugepage_size(limit.page_size())?;
    }
    if version == CgroupVersion::V1 {
        for rule in r.devices().iter().flatten() {
            device_rule(rule)?;
        }
    }
    if let (CgroupVersion::V2, Some(mem)) = (version, r.memory()) {
        v2_swap(mem)?;
    }
    Ok(())
}

/// A hugepage size as it appears in file names (`2MB`, `1GB`).
pub(super) fn hugepage_size(size: &str) -> Result<&str> {
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::InvalidArgument(format!(
            "hugepage size {size:?} is not a size such as \"2MB\""
        )));
    }
    Ok(size)
}

/// A device rule in the v1 devices controller's syntax: `c 1:3 rwm`, `a *:* rwm`.
pub(super) fn device_rule(rule: &LinuxDeviceCgroup) -> Result<(&'static str, String)> {
    let typ = match rule.typ().unwrap_or_default() {
        LinuxDeviceType::A => 'a',
        LinuxDeviceType::B => 'b',
        // An unbuffered character device is a character device to the cgroup.
        LinuxDeviceType::C | LinuxDeviceType::U => 'c',
        LinuxDeviceType::P => {
            return Err(Error::InvalidArgument(
                "a device cgroup rule cannot name a FIFO (type \"p\")".to_string(),
            ))
        }
    };
    let number = |n: Option<i64>, what: &str| match n {
        None | Some(-1) => Ok("*".to_string()),
        Some(n) if n >= 0 => Ok(n.to_string()),
        Some(n) => {
            Err(Error::InvalidArgument(format!("device cgroup rule {what} {n} is negative")))
        }
    };
    let major = number(rule.major(), "major")?;
    let minor = number(rule.minor(), "minor")?;
    let access = rule.access().as_deref().unwrap_or("");
    if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(Error::InvalidArgument(format!(
            "device cgroup access {access:?} is not made of \"r\", \"w\" and \"m\""
        )));
    }
    let access = if access.is_empty() { "rwm" } else { access };
    let file = if rule.allow() { "devices.allow" } else { "devices.deny" };
    Ok((file, format!("{typ} {major}:{minor} {access}")))
}

pub(super) fn apply_v1(m: &Member, r: &LinuxResources, w: &mut Writer) -> Result<()> {
    if let (true, Some(mem)) = (m.has("memory"), r.memory()) {
        apply_v1_memory(&m.dir, mem, w)?;
    }
    if let (true, Some(cpu)) = (m.has("cpu"), r.cpu()) {
        apply_v1_cpu(&m.dir, cpu, w)?;
    }
    if let (true, Some(cpu)) = (m.has("cpuset"), r.cpu()) {
        // cpus first: the kernel checks mems against nothing, but a cpuset with neither set
        // cannot take tasks, and cpus is what callers set.
        if let Some(cpus) = non_empty(cpu.cpus()) {
            w.write(&m.dir, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = non_empty(cpu.mems()) {
            w.write(&m.dir, "cpuset.mems", mems)?;
        }
    }
    if m.has("hugetlb") {
        for limit in r.hugepage_limits().iter().flatten() {
            let file = format!("hugetlb.{}.limit_in_bytes", hugepage_size(limit.page_size())?);
            w.write(&m.dir, &file, &limit.limit().to_string())?;
        }
    }
    if let (true, Some(pids)) = (m.has("pids"), r.pids()) {
        if let Some(value) = pids_max(pids.limit()) {
            w.write(&m.dir, "pids.max", &value)?;
        }
    }
    if m.has("devices") {
        for rule in r.devices().iter().flatten() {
            let (file, value) = device_rule(rule)?;
            w.write(&m.dir, file, &value)?;
        }
    }
    Ok(())
}

pub(super) fn pids_max(limit: i64) -> Option<String> {
    match limit {
        0 => None,
        l if l < 0 => Some("max".to_string()),
        l => Some(l.to_string()),
    }
}

pub(super) fn apply_v1_memory(dir: &Path, mem: &LinuxMemory, w: &mut Writer) -> Result<()> {
    let limit = nonzero_i64(mem.limit());
    let mut swap = nonzero_i64(mem.swap());
    let memsw = "memory.memsw.limit_in_bytes";
    let swap_accounting = dir.join(memsw).exists();
    // Unlimited memory with swap left alone would keep the old memory+swap cap in force.
    if limit == Some(-1) && swap.is_none() && swap_accounting {
        swap = Some(-1);
    }
    if swap.is_some() && !swap_accounting {
        tracing::debug!("{} has no swap accounting; the swap limit is not applied", dir.display());
        swap = None;
    }
    let limit_file = "memory.limit_in_bytes";
    match (limit, swap) {
        (Some(limit), Some(swap)) => {
            // The kernel keeps memory <= memory+swap at every moment, so which file goes
            // first depends on whether the limits rise or fall.
            let current = read_number(&dir.join(limit_file))?;
            if swap_first(current, swap) {
                w.write(dir, memsw, &swap.to_string())?;
                w.write(dir, limit_file, &limit.to_string())?;
            } else {
                w.write(dir, limit_file, &limit.to_string())?;
                w.write(dir, memsw, &swap.to_string())?;
            }
        }
        (Some(limit), None) => w.write(dir, limit_file, &limit.to_string())?,
        (None, Some(swap)) => w.write(dir, memsw, &swap.to_string())?,
        (None, None) => {}
    }
    if let Some(reservation) = nonzero_i64(mem.reservation()) {
        w.write(dir, "memory.soft_limit_in_bytes", &reservation.to_string())?;
    }
    if let Some(swappiness) = mem.swappiness() {
        w.write(dir, "memory.swappiness", &swappiness.to_string())?;
    }
    Ok(())
}

/// Whether the new memory+swap limit can be written before the new memory limit: only when
/// it is not below the memory limit in force.
pub(super) fn swap_first(current_memory_limit: u64, new_swap: i64) -> bool {
    new_swap == -1 || u64::try_from(new_swap).is_ok_and(|s| s >= current_memory_limit)
}

pub(super) fn apply_v1_cpu(dir: &Path, cpu: &LinuxCpu, w: &mut Writer) -> Result<()> {
    if let Some(shares) = nonzero_u64(cpu.shares()) {
        w.write(dir, "cpu.shares", &shares.to_string())?;
    }
    let quota = nonzero_i64(cpu.quota());
    match nonzero_u64(cpu.period()) {
        Some(period) => {
            let period = period.to_string();
            // A new period may make the quota in force exceed what the parent allows; the
            // new quota first then makes it fit.
            if let Err(err) = w.write(dir, "cpu.cfs_period_us", &period) {
                let Some(quota) = quota else { return Err(err) };
                w.write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
                w.write(dir, "cpu.cfs_period_us", &period)?;
                return Ok(());
            }
            if let Some(quota) = quota {
                w.write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        None => {
            if let Some(quota) = quota {
                w.write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
    }
    Ok(())
}

pub(super) fn apply_v2(m: &Member, r: &LinuxResources, w: &mut Writer) -> Result<()> {
    let dir = &m.dir;
    if let Some(mem) = r.memory() {
        if let Some(limit) = nonzero_i64(mem.limit()) {
            w.write(dir, "memory.max", &max_or(limit))?;
        }
        if let Some(swap) = v2_swap(mem)? {
            if dir.join("memory.swap.max").exists() {
                w.write(dir, "memory.swap.max", &swap)?;
            } else {
                tracing::debug!(
                    "{} has no memory.swap.max; the swap limit is not applied",
                    dir.display()
                );
            }
        }
        if let Some(reservation) = nonzero_i64(mem.reservation()) {
            w.write(dir, "memory.low", &max_or(reservation))?;
        }
        if mem.swappiness().is_some() {
            tracing::debug!("cgroup v2 has no memory.swappiness; ignoring it");
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = nonzero_u64(cpu.shares()) {
            w.write(dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if let Some(value) = cpu_max(nonzero_i64(cpu.quota()), nonzero_u64(cpu.period())) {
            w.write(dir, "cpu.max", &value)?;
        }
        if let Some(cpus) = non_empty(cpu.cpus()) {
            w.write(dir, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = non_empty(cpu.mems()) {
            w.write(dir, "cpuset.mems", mems)?;
        }
    }
    for limit in r.hugepage_limits().iter().flatten() {
        let file = format!("hugetlb.{}.max", hugepage_size(limit.page_size())?);
        w.write(dir, &file, &max_or(limit.limit()))?;
    }
    if let Some(value) = r.pids().and_then(|p| pids_max(p.limit())) {
        w.write(dir, "pids.max", &value)?;
    }
    if r.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        // v2 device control is an eBPF program attached to the cgroup, which berth does not
        // load.
        tracing::debug!("cgroup v2: device rules for {} are not applied", dir.display());
    }
    if let Some(unified) = r.unified() {
        // Sorted, so that the same spec always writes in the same order.
        let sorted: std::collections::BTreeMap<&String, &String> = unified.iter().collect();
        for (key, value) in sorted {
            w.write(dir, key, value)?;
        }
    }
    Ok(())
}

/// -1 is "no limit", which v2 files spell `max`.
pub(super) fn max_or(value: i64) -> String {
    if value == -1 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// memory.swap.max from the OCI memory+swap total: v2 limits swap alone.
pub(super) fn v2_swap(mem: &LinuxMemory) -> Result<Option<String>> {
    let limit = nonzero_i64(mem.limit());
    match (limit, nonzero_i64(mem.swap())) {
        // Unlimited memory with swap left alone means both unlimited, as on v1.
        (Some(-1), None) => Ok(Some("max".to_string())),
        (_, None) => Ok(None),
        (_, Some(-1)) => Ok(Some("max".to_string())),
        (Some(limit), Some(swap)) if limit > 0 => {
            if swap < limit {
                return Err(Error::InvalidArgument(format!(
                    "memory+swap limit {swap} is below the memory limit {limit}"
                )));
            }
            Ok(Some((swap - limit).to_string()))
        }
        (Some(limit), Some(swap)) if limit < -1 => Err(Error::InvalidArgument(format!(
            "memory limit {limit} (with memory+swap limit {swap}) is negative"
        ))),
        (_, Some(swap)) => {
            Err(Error::InvalidArgument(format!("memory+swap limit {swap} needs a memory limit")))
        }
    }
}

/// cpu.weight (1..=10000) from cpu.shares (2..=262144), mapping the ends onto each other.
pub(super) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// cpu.max: `<quota|max> <period>`; with no period, the quota alone keeps the one in force.
pub(super) fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    if quota.is_none() && period.is_none() {
        return None;
    }
    let quota = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_string(),
    };
    Some(match period {
        Some(period) => format!("{quota} {period}"),
        None => quota,
    })
}
