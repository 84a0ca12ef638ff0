//! A container's cgroup: a child of its pod's cgroup in every hierarchy berth manages, with the
//! OCI spec's `linux.resources` written into the controller files the way runc maps them.
//!
//! Zero means "not set" for the numeric limits (memory, swap, CPU shares/quota/period, pids),
//! as it does in the CRI and in runc, so a translated CRI config may pass zeros through.
//!
//! Here: making, joining, killing and removing it; in `limits` the resource files and how each
//! limit maps to them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::{oom_kills_in, CgroupLayout, CgroupVersion, Hierarchy};
use crate::error::{Error, Result};

mod limits;

use limits::*;

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
        cgroup.check(resources)?;
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
        self.check(resources)?;
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

    /// Refuses what these hierarchies cannot take. Hugepage limits with no hugetlb controller
    /// among the v1 hierarchies would otherwise be skipped unsaid (the spec builder leaves the
    /// kubelet's zero limits out on such a node; whatever arrives here was meant to hold).
    fn check(&self, resources: &LinuxResources) -> Result<()> {
        check(resources, self.version())?;
        let limits = resources.hugepage_limits().as_ref().filter(|l| !l.is_empty());
        if let (CgroupVersion::V1, Some(limits)) = (self.version(), limits) {
            if !self.members.iter().any(|m| m.has("hugetlb")) {
                return Err(Error::FailedPrecondition(format!(
                    "hugepage limits {:?} cannot be held: no cgroup hierarchy berth manages has \
                     the hugetlb controller",
                    limits.iter().map(|l| l.page_size().as_str()).collect::<Vec<_>>()
                )));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests;
