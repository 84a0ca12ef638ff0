//! A container's cgroup: a child of its pod's cgroup in every hierarchy berth manages, with the
//! OCI spec's `linux.resources` written into the controller files the way runc maps them.
//!
//! Zero means "not set" for the numeric limits (memory, swap, CPU shares/quota/period, pids),
//! as it does in the CRI and in runc, so a translated CRI config may pass zeros through.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxResources,
};

use super::{oom_kills_in, CgroupLayout, CgroupVersion, Hierarchy};
use crate::error::{Error, Result};

/// How long `kill_all` keeps killing before it gives up on a cgroup that keeps processes.
const KILL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `remove` retries a cgroup the kernel still calls busy: the last killed processes
/// may not have left it yet.
const REMOVE_TIMEOUT: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(10);

/// The container's directory in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// As in /proc/self/cgroup (`["cpu", "cpuacct"]`); empty for v2.
    controllers: Vec<String>,
    version: CgroupVersion,
    /// The name of the hierarchy's mount directory (`cpu,cpuacct`, `systemd`), so that the
    /// container's view can lay its hierarchies out as the host does.
    mount_name: String,
    dir: PathBuf,
}

impl Member {
    fn new(h: &Hierarchy, dir: PathBuf) -> Member {
        let mount_name = h
            .mountpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| h.controllers.join(",").replace("name=", ""));
        Member { controllers: h.controllers.clone(), version: h.version, mount_name, dir }
    }

    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// A container's cgroup in every managed hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    members: Vec<Member>,
}

impl ContainerCgroup {
    /// Makes the cgroup `path` (a child of the pod's) in every managed hierarchy and applies
    /// `resources`. A directory that exists already is used as it is; on failure, the
    /// directories this call made are removed again.
    pub fn create(
        layout: &CgroupLayout,
        path: &str,
        nest: bool,
        resources: &LinuxResources,
    ) -> Result<ContainerCgroup> {
        let cgroup = Self::open(layout, path, nest)?;
        // Refusing a bad spec before anything is made leaves nothing to undo.
        check(resources, cgroup.version())?;
        let mut made = Vec::new();
        let result = cgroup.make(&mut made).and_then(|()| cgroup.update(resources));
        if let Err(err) = result {
            for dir in made.iter().rev() {
                if let Err(rm) = remove_dir(dir) {
                    tracing::debug!(
                        "removing cgroup {} after a failed create: {rm}",
                        dir.display()
                    );
                }
            }
            return Err(err);
        }
        Ok(cgroup)
    }

    /// The cgroup `path` as made by an earlier `create` (after berthd restarted). It is not
    /// required to exist: removing a cgroup that is gone already is fine.
    pub fn open(layout: &CgroupLayout, path: &str, nest: bool) -> Result<ContainerCgroup> {
        let members = layout
            .dirs(Path::new(path), nest)?
            .into_iter()
            .map(|(h, dir)| Member::new(h, dir))
            .collect();
        Ok(ContainerCgroup { members })
    }

    fn make(&self, made: &mut Vec<PathBuf>) -> Result<()> {
        for m in &self.members {
            if m.version == CgroupVersion::V2 {
                enable_controllers_in_parent(&m.dir);
            }
            match std::fs::create_dir(&m.dir) {
                Ok(()) => made.push(m.dir.clone()),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(Error::io("creating cgroup", &m.dir)(err)),
            }
            if m.version == CgroupVersion::V1 && m.has("cpuset") {
                super::inherit_cpuset(&m.dir)?;
            }
        }
        Ok(())
    }

    /// The version of the managed hierarchies (all share one).
    pub fn version(&self) -> CgroupVersion {
        self.members.first().map_or(CgroupVersion::V2, |m| m.version)
    }

    /// Writes `resources` into the cgroup's files; what `resources` leaves unset is left as it
    /// is. All or nothing: see [`ContainerCgroup::apply`].
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        self.apply(resources).map(drop)
    }

    /// Writes `resources` into the cgroup's files, all or nothing: the files it will write are
    /// read first, and when the kernel refuses a write, those written before it get their old
    /// values back and the refusal is returned. The result can undo a successful update too,
    /// for a caller whose own next step fails.
    ///
    /// Device rules cannot be undone (their files are write-only, and a rule is an addition,
    /// not a value); an update leaves them out.
    pub fn apply(&self, resources: &LinuxResources) -> Result<Applied> {
        check(resources, self.version())?;
        // A dry run first names every file the update will write, so that all of them are
        // read before the first write.
        let mut plan = Writer::plan();
        self.write_all(resources, &mut plan)?;
        let mut old = Vec::new();
        for path in plan.planned {
            match std::fs::read_to_string(&path) {
                Ok(value) => old.push((path, value)),
                // A missing file fails its write below with a message naming it; a write-only
                // one has nothing to put back.
                Err(err) => tracing::debug!("reading {} before an update: {err}", path.display()),
            }
        }
        let mut writer = Writer::files();
        let result = self.write_all(resources, &mut writer);
        let applied = Applied { old, written: writer.written };
        match result {
            Ok(()) => Ok(applied),
            Err(err) => match applied.revert() {
                Ok(()) => Err(err),
                Err(undo) => Err(Error::Cgroup(format!(
                    "{err}; putting the old values back failed too, the cgroup is left \
                     half updated: {undo}"
                ))),
            },
        }
    }

    fn write_all(&self, resources: &LinuxResources, w: &mut Writer) -> Result<()> {
        for m in &self.members {
            match m.version {
                CgroupVersion::V1 => apply_v1(m, resources, w)?,
                CgroupVersion::V2 => apply_v2(m, resources, w)?,
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of each hierarchy: a process joins the container's cgroup by writing its
    /// pid to each of them.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.dir.join("cgroup.procs")).collect()
    }

    /// For each v1 hierarchy, its mount directory's name on the host (`cpu,cpuacct`) and the
    /// container's directory in it; empty on v2.
    pub fn v1_mounts(&self) -> Vec<(String, PathBuf)> {
        self.members
            .iter()
            .filter(|m| m.version == CgroupVersion::V1)
            .map(|m| (m.mount_name.clone(), m.dir.clone()))
            .collect()
    }

    /// How many times the kernel's OOM killer killed a process of the cgroup; 0 when the
    /// kernel does not say.
    pub fn oom_kills(&self) -> u64 {
        self.memory_member().map_or(0, |m| oom_kills_in(&m.dir))
    }

    /// The directory holding the memory controller's files, if memory is managed.
    pub fn memory_dir(&self) -> Option<PathBuf> {
        self.memory_member().map(|m| m.dir.clone())
    }

    fn memory_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.version == CgroupVersion::V2 || m.has("memory"))
    }

    /// SIGKILLs every process in the cgroup until none is left, for about a second at most.
    pub fn kill_all(&self) -> Result<()> {
        for m in self.members.iter().filter(|m| m.version == CgroupVersion::V2) {
            // Since 5.14 the kernel kills the whole cgroup at once, forks in flight included.
            let file = m.dir.join("cgroup.kill");
            if file.exists() {
                write_file(&m.dir, "cgroup.kill", "1")?;
            }
        }
        // On v1 a process may fork between our reading cgroup.procs and the kill; freezing
        // the cgroup first stops that, and the frozen processes die once thawed.
        let freezer =
            self.members.iter().find(|m| m.version == CgroupVersion::V1 && m.has("freezer"));
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let frozen = freezer.is_some_and(|f| freeze(&f.dir));
            let pids = self.pids();
            for pid in &pids {
                match kill(Pid::from_raw(*pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(err) => tracing::debug!("SIGKILL to {pid} of a container cgroup: {err}"),
                }
            }
            if let (true, Some(f)) = (frozen, freezer) {
                if let Err(err) = write_file(&f.dir, "freezer.state", "THAWED") {
                    tracing::warn!("{err}");
                }
            }
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let dirs: Vec<String> =
                    self.dirs().iter().map(|d| d.display().to_string()).collect();
                return Err(Error::Cgroup(format!(
                    "processes {pids:?} are still in cgroup {} after SIGKILL for {KILL_TIMEOUT:?}",
                    dirs.join(", ")
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The pids in any of the cgroup's hierarchies; a hierarchy where it is gone has none.
    fn pids(&self) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for file in self.procs_files() {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            // Pid 0 stands for processes in another pid namespace; no signal reaches them by it.
            pids.extend(
                text.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0),
            );
        }
        pids
    }

    /// Removes the cgroup from every hierarchy. One that is gone already is fine; one that
    /// stays busy is an error naming it.
    pub fn remove(&self) -> Result<()> {
        let mut first_err = None;
        for m in &self.members {
            if let Err(err) = remove_dir(&m.dir) {
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The cgroup's directory in each managed hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.members.iter().map(|m| m.dir.clone()).collect()
    }
}

/// The files an update wrote and what they held before, to put back.
#[derive(Debug, Default)]
pub struct Applied {
    old: Vec<(PathBuf, String)>,
    /// In the order written; a file may come twice.
    written: Vec<PathBuf>,
}

impl Applied {
    /// Puts the old values back, last write first: each state the update passed through was
    /// one the kernel accepted (memory below memory+swap, a quota the parent allows), so going
    /// back through them in reverse is accepted too. Every file is tried; the first failure is
    /// returned.
    pub fn revert(&self) -> Result<()> {
        let mut first_err = None;
        let mut done: Vec<&PathBuf> = Vec::new();
        for path in self.written.iter().rev() {
            if done.contains(&path) {
                continue;
            }
            done.push(path);
            let Some((_, value)) = self.old.iter().find(|(p, _)| p == path) else {
                tracing::warn!("{} was written but its old value is unknown", path.display());
                continue;
            };
            if let Err(err) = restore(path, value) {
                tracing::warn!("{err}");
                first_err.get_or_insert(err);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Writes back a value read from a cgroup file. Files that hold several lines (`io.max`) take
/// one line per write; an empty one (a v2 `cpuset.cpus`) takes a bare newline.
fn restore(path: &Path, value: &str) -> Result<()> {
    let lines: Vec<&str> = value.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let lines = if lines.is_empty() { vec!["\n"] } else { lines };
    for line in lines {
        write_raw(path, line).map_err(|err| {
            Error::Cgroup(format!("restoring {line:?} to {}: {err}", path.display()))
        })?;
    }
    Ok(())
}

/// Where the resource writes of an update go: to the files, or, for a dry run, into a list of
/// the files that would be written.
struct Writer {
    dry_run: bool,
    /// For a dry run: each file once, in the order of its first write.
    planned: Vec<PathBuf>,
    /// The writes the kernel took, in order.
    written: Vec<PathBuf>,
}

impl Writer {
    fn plan() -> Writer {
        Writer { dry_run: true, planned: Vec::new(), written: Vec::new() }
    }

    fn files() -> Writer {
        Writer { dry_run: false, planned: Vec::new(), written: Vec::new() }
    }

    fn write(&mut self, dir: &Path, file: &str, value: &str) -> Result<()> {
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
fn refused(path: &Path, value: &str, err: &std::io::Error) -> Error {
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

/// rmdir, retrying while the kernel still counts exiting processes in the cgroup.
fn remove_dir(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err)
                if err.kind() == std::io::ErrorKind::ResourceBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(POLL);
            }
            Err(err) => return Err(Error::io("removing cgroup", dir)(err)),
        }
    }
}

/// Freezes a v1 freezer cgroup, waiting briefly for the kernel to finish; true when it needs
/// thawing again.
fn freeze(dir: &Path) -> bool {
    if write_file(dir, "freezer.state", "FROZEN").is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        match std::fs::read_to_string(dir.join("freezer.state")) {
            Ok(state) if state.trim() == "FROZEN" => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => break,
        }
    }
    // Still freezing: the kill goes ahead, and thawing undoes the half-done freeze.
    true
}

/// On v2 a child has only the controllers its parent enables for its children. The pod's
/// cgroup holds no processes, so it can enable all it has; what cannot be enabled shows up as
/// a missing file when a resource needs it.
fn enable_controllers_in_parent(dir: &Path) {
    let Some(parent) = dir.parent() else { return };
    let Ok(available) = std::fs::read_to_string(parent.join("cgroup.controllers")) else {
        return;
    };
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    // One at a time: a write naming several fails as a whole when one of them cannot be had.
    for controller in not_enabled(&available, &enabled) {
        if let Err(err) = write_file(parent, "cgroup.subtree_control", &format!("+{controller}")) {
            tracing::debug!("enabling {controller} for container cgroups: {err}");
        }
    }
}

/// The controllers of `cgroup.controllers` missing from `cgroup.subtree_control`.
fn not_enabled<'a>(available: &'a str, enabled: &str) -> Vec<&'a str> {
    let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
    available.split_whitespace().filter(|c| !enabled.contains(c)).collect()
}

/// Writes `value` into a cgroup file. The file is never created: a missing one means the
/// controller is not there, which the error should say rather than hide. (cgroupfs ignores
/// O_TRUNC; a fake tree in a test needs it.)
fn write_file(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    write_raw(&path, value)
        .map_err(|err| Error::Cgroup(format!("writing {value:?} to {}: {err}", path.display())))
}

fn write_raw(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
}

fn read_number(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(Error::io("reading", path))?;
    text.trim().parse().map_err(|_| {
        Error::Cgroup(format!("{} holds {:?}, not a number", path.display(), text.trim()))
    })
}

fn nonzero_i64(v: Option<i64>) -> Option<i64> {
    v.filter(|v| *v != 0)
}

fn nonzero_u64(v: Option<u64>) -> Option<u64> {
    v.filter(|v| *v != 0)
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Refuses what no hierarchy of `version` could take, before anything is written.
fn check(r: &LinuxResources, version: CgroupVersion) -> Result<()> {
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
fn hugepage_size(size: &str) -> Result<&str> {
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::InvalidArgument(format!(
            "hugepage size {size:?} is not a size such as \"2MB\""
        )));
    }
    Ok(size)
}

/// A device rule in the v1 devices controller's syntax: `c 1:3 rwm`, `a *:* rwm`.
fn device_rule(rule: &LinuxDeviceCgroup) -> Result<(&'static str, String)> {
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

fn apply_v1(m: &Member, r: &LinuxResources, w: &mut Writer) -> Result<()> {
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

fn pids_max(limit: i64) -> Option<String> {
    match limit {
        0 => None,
        l if l < 0 => Some("max".to_string()),
        l => Some(l.to_string()),
    }
}

fn apply_v1_memory(dir: &Path, mem: &LinuxMemory, w: &mut Writer) -> Result<()> {
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
fn swap_first(current_memory_limit: u64, new_swap: i64) -> bool {
    new_swap == -1 || u64::try_from(new_swap).is_ok_and(|s| s >= current_memory_limit)
}

fn apply_v1_cpu(dir: &Path, cpu: &LinuxCpu, w: &mut Writer) -> Result<()> {
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

fn apply_v2(m: &Member, r: &LinuxResources, w: &mut Writer) -> Result<()> {
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
fn max_or(value: i64) -> String {
    if value == -1 {
        "max".to_string()
    } else {
        value.to_string()
    }
}

/// memory.swap.max from the OCI memory+swap total: v2 limits swap alone.
fn v2_swap(mem: &LinuxMemory) -> Result<Option<String>> {
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
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// cpu.max: `<quota|max> <period>`; with no period, the quota alone keeps the one in force.
fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::collections::HashMap;

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
        assert_eq!(
            names,
            ["cpu,cpuacct", "cpuset", "memory", "hugetlb", "pids", "devices", "systemd"]
        );
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
        assert_eq!(
            rule(false, None, None, None, "").unwrap(),
            ("devices.deny", "a *:* rwm".into())
        );
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
        cg.update(&LinuxResourcesBuilder::default().unified(HashMap::new()).build().unwrap())
            .unwrap();
        let hugepages = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![LinuxHugepageLimitBuilder::default()
                .page_size("../2MB")
                .limit(1)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        assert_eq!(cg.update(&hugepages).unwrap_err().kind(), ErrorKind::InvalidArgument);
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
            let cg =
                ContainerCgroup::create(&layout, "/pod1/ctr1", true, &LinuxResources::default())
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
        let mut cleanup =
            Cleanup { layout: layout.clone(), pod_created, container: None, child: None };

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
}
