//! The cgroup hierarchies of this host, and where a cgroup named by the kubelet lives in each.
//!
//! Paths in /proc/self/cgroup and the root field of /proc/self/mountinfo are both relative to
//! the cgroup namespace root of the reading process. A mount may expose only a sub-tree of its
//! hierarchy (a container without a cgroup namespace of its own, a kind node), so berthd's own
//! cgroup is reachable through a mount only when it lies under that mount's root.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};

pub mod container;
pub mod pod;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const PROC_SELF_CGROUP: &str = "/proc/self/cgroup";

/// Which cgroup versions hold the resource controllers of this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v1 only.
    Legacy,
    /// v1 controllers, plus a v2 hierarchy (systemd mounts it at /sys/fs/cgroup/unified).
    Hybrid,
    /// cgroup v2 only.
    Unified,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Legacy => "legacy",
            CgroupMode::Hybrid => "hybrid",
            CgroupMode::Unified => "unified",
        }
    }
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// One cgroup hierarchy berthd is a member of and can reach through a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Hierarchy id from /proc/self/cgroup; 0 for v2.
    pub id: u32,
    /// As listed in /proc/self/cgroup, e.g. `["cpu", "cpuacct"]` or `["name=systemd"]`; empty
    /// for v2.
    pub controllers: Vec<String>,
    pub mountpoint: PathBuf,
    /// The cgroup the mount exposes at `mountpoint` (mountinfo field 4).
    pub mount_root: PathBuf,
    pub version: CgroupVersion,
    /// berthd's own cgroup, as in /proc/self/cgroup, e.g. `/process_api/abc`.
    pub own: PathBuf,
}

impl Hierarchy {
    /// How messages and the verbose status name this hierarchy.
    pub fn name(&self) -> String {
        match self.version {
            CgroupVersion::V2 => "cgroup2".to_string(),
            CgroupVersion::V1 => self.controllers.join(","),
        }
    }

    /// berthd's own cgroup as a path relative to `mountpoint`.
    fn own_under_mount(&self) -> Result<&Path> {
        let outside = || {
            Error::Cgroup(format!(
                "berthd's own cgroup {} in the {} hierarchy ({PROC_SELF_CGROUP}) is not under \
                 the sub-tree {} mounted at {} ({MOUNTINFO}); cannot nest cgroups under it",
                self.own.display(),
                self.name(),
                self.mount_root.display(),
                self.mountpoint.display(),
            ))
        };
        let rel = self.own.strip_prefix(&self.mount_root).map_err(|_| outside())?;
        // The kernel writes `/..` prefixes for cgroups outside our cgroup namespace; stripping
        // the mount root can leave them, and joining them would leave the mount.
        if rel.components().all(|c| matches!(c, Component::Normal(_))) {
            Ok(rel)
        } else {
            Err(outside())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    pub mode: CgroupMode,
    pub hierarchies: Vec<Hierarchy>,
}

impl CgroupLayout {
    /// Reads the layout of the hierarchies berthd itself is in.
    pub fn detect() -> Result<Self> {
        let mountinfo =
            std::fs::read_to_string(MOUNTINFO).map_err(Error::io("reading", MOUNTINFO))?;
        let cgroup = std::fs::read_to_string(PROC_SELF_CGROUP)
            .map_err(Error::io("reading", PROC_SELF_CGROUP))?;
        Self::parse(&mountinfo, &cgroup)
    }

    /// Builds the layout from the texts of /proc/self/mountinfo and /proc/self/cgroup.
    pub fn parse(mountinfo: &str, proc_self_cgroup: &str) -> Result<Self> {
        let mounts = parse_mountinfo(mountinfo)?;
        let mut hierarchies = Vec::new();
        for member in parse_proc_self_cgroup(proc_self_cgroup)? {
            let matches = |m: &&CgroupMount| {
                m.version == member.version
                    && member.controllers.iter().all(|c| m.options.contains(c))
            };
            // A hierarchy may be mounted several times (bind mounts of sub-trees); the mount
            // that shows our own cgroup is the one nesting can use.
            let Some(mount) = mounts
                .iter()
                .filter(matches)
                .find(|m| member.own.starts_with(&m.root))
                .or_else(|| mounts.iter().find(matches))
            else {
                tracing::debug!(
                    "cgroup hierarchy {}:{} of {PROC_SELF_CGROUP} is not mounted ({MOUNTINFO}); \
                     ignoring it",
                    member.id,
                    member.controllers.join(","),
                );
                continue;
            };
            hierarchies.push(Hierarchy {
                id: member.id,
                controllers: member.controllers,
                mountpoint: mount.mountpoint.clone(),
                mount_root: mount.root.clone(),
                version: member.version,
                own: member.own,
            });
        }

        // Named v1 hierarchies (name=systemd) hold no resources, so they do not make a host v1.
        let v1_resources = hierarchies.iter().any(|h| {
            h.version == CgroupVersion::V1 && h.controllers.iter().any(|c| !c.starts_with("name="))
        });
        let v1_any = hierarchies.iter().any(|h| h.version == CgroupVersion::V1);
        let v2 = hierarchies.iter().any(|h| h.version == CgroupVersion::V2);
        let mode = match (v1_resources, v2) {
            (true, true) => CgroupMode::Hybrid,
            (true, false) => CgroupMode::Legacy,
            (false, true) => CgroupMode::Unified,
            (false, false) if v1_any => CgroupMode::Legacy,
            (false, false) => {
                return Err(Error::Cgroup(format!(
                    "none of the cgroup hierarchies in {PROC_SELF_CGROUP} is mounted \
                     according to {MOUNTINFO}"
                )))
            }
        };
        Ok(CgroupLayout { mode, hierarchies })
    }

    /// The hierarchies holding the controllers berth manages: the v1 ones (named ones included)
    /// in Legacy and Hybrid mode, the v2 one in Unified mode.
    pub fn managed(&self) -> impl Iterator<Item = &Hierarchy> + '_ {
        let version = match self.mode {
            CgroupMode::Legacy | CgroupMode::Hybrid => CgroupVersion::V1,
            CgroupMode::Unified => CgroupVersion::V2,
        };
        self.hierarchies.iter().filter(move |h| h.version == version)
    }

    /// Whether the cgroups berth makes can hold hugepage limits: a managed v1 hierarchy has the
    /// hugetlb controller, or (unified) the v2 hierarchy offers it where berth's cgroups live
    /// (`cgroup.controllers` of the mount's root, or of berthd's own cgroup when `nest`). On a
    /// hybrid host whose hugetlb sits only on the cgroup2 mount, it does not: neither berth nor
    /// runc nor crun write limits there.
    pub fn has_hugetlb(&self, nest: bool) -> bool {
        match self.mode {
            CgroupMode::Legacy | CgroupMode::Hybrid => {
                self.managed().any(|h| h.controllers.iter().any(|c| c == "hugetlb"))
            }
            CgroupMode::Unified => self.managed().any(|h| {
                let Ok(dir) = self.dir_in(h, Path::new(""), nest) else { return false };
                std::fs::read_to_string(dir.join("cgroup.controllers"))
                    .is_ok_and(|text| text.split_whitespace().any(|c| c == "hugetlb"))
            }),
        }
    }

    /// The directory of cgroup `path` in hierarchy `h`: under the root the mount exposes, or
    /// under berthd's own cgroup when `nest`. Absolute and relative `path`s mean the same.
    pub fn dir_in(&self, h: &Hierarchy, path: &Path, nest: bool) -> Result<PathBuf> {
        let rel = clean_cgroup_path(path)?;
        let mut dir = h.mountpoint.clone();
        if nest {
            let own = h.own_under_mount()?;
            // Pushing an empty path would append a trailing separator.
            if !own.as_os_str().is_empty() {
                dir.push(own);
            }
        }
        if !rel.as_os_str().is_empty() {
            dir.push(rel);
        }
        Ok(dir)
    }

    /// The directory of cgroup `path` in every managed hierarchy.
    pub fn dirs(&self, path: &Path, nest: bool) -> Result<Vec<(&Hierarchy, PathBuf)>> {
        self.managed().map(|h| Ok((h, self.dir_in(h, path, nest)?))).collect()
    }

    /// The layout for berthd's verbose Status; `nest` as for [`CgroupLayout::has_hugetlb`].
    pub fn summary(&self, nest: bool) -> serde_json::Value {
        let hierarchies: Vec<serde_json::Value> = self
            .hierarchies
            .iter()
            .map(|h| {
                json!({
                    "id": h.id,
                    "version": h.version.as_str(),
                    "controllers": h.controllers,
                    "mountpoint": h.mountpoint.to_string_lossy(),
                    "mountRoot": h.mount_root.to_string_lossy(),
                    "own": h.own.to_string_lossy(),
                    "managed": self.managed().any(|m| std::ptr::eq(m, h)),
                })
            })
            .collect();
        json!({
            "mode": self.mode.as_str(),
            "hierarchies": hierarchies,
            "hugetlb": self.has_hugetlb(nest),
        })
    }
}

/// Checks a cgroup path from a request and makes it relative, so that joining it can only go
/// down from the directory it is joined to.
pub fn clean_cgroup_path(path: &Path) -> Result<PathBuf> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(Error::InvalidArgument(format!("cgroup path {path:?} contains a NUL byte")));
    }
    // The kernel refuses such names in mkdir; saying so here names the offending path.
    if bytes.contains(&b'\n') {
        return Err(Error::InvalidArgument(format!(
            "cgroup path {path:?} contains a newline, which cgroup names cannot"
        )));
    }
    let mut clean = PathBuf::new();
    for part in bytes.split(|b| *b == b'/') {
        match part {
            b"" => {}
            b"." | b".." => {
                return Err(Error::InvalidArgument(format!(
                    "cgroup path {path:?} has a {:?} component; only plain names are allowed",
                    OsStr::from_bytes(part)
                )))
            }
            name => clean.push(OsStr::from_bytes(name)),
        }
    }
    Ok(clean)
}

struct CgroupMount {
    root: PathBuf,
    mountpoint: PathBuf,
    version: CgroupVersion,
    /// Super options; for v1 they include the controllers of the hierarchy.
    options: BTreeSet<String>,
}

fn malformed(file: &str, line: usize, why: &str) -> Error {
    Error::Cgroup(format!("{file} line {}: {why}", line + 1))
}

fn parse_mountinfo(text: &str) -> Result<Vec<CgroupMount>> {
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // Optional fields come before " - ", so only the split makes the later fields findable.
        let (before, after) = line
            .split_once(" - ")
            .ok_or_else(|| malformed(MOUNTINFO, n, "no \" - \" separator"))?;
        let before: Vec<&str> = before.split(' ').collect();
        if before.len() < 6 {
            return Err(malformed(MOUNTINFO, n, "fewer than 6 fields before \" - \""));
        }
        let mut after = after.split(' ');
        let fstype = after.next().unwrap_or_default();
        let _source = after.next();
        let super_options = after.next().unwrap_or_default();
        let version = match fstype {
            "cgroup" => CgroupVersion::V1,
            "cgroup2" => CgroupVersion::V2,
            _ => continue,
        };
        mounts.push(CgroupMount {
            root: unescape(before[3]),
            mountpoint: unescape(before[4]),
            version,
            options: super_options.split(',').map(str::to_string).collect(),
        });
    }
    Ok(mounts)
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes into mountinfo paths.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4);
        match digits {
            Some(d) if bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) => {
                let value = d.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
                // Three octal digits can exceed a byte; such a sequence is no escape.
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
                out.push(bytes[i]);
            }
            _ => out.push(bytes[i]),
        }
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

struct Membership {
    id: u32,
    controllers: Vec<String>,
    version: CgroupVersion,
    own: PathBuf,
}

fn parse_proc_self_cgroup(text: &str) -> Result<Vec<Membership>> {
    let mut members = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // Cgroup names may contain ':', so the path is everything after the second one.
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(own)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed(PROC_SELF_CGROUP, n, "expected \"ID:controllers:path\""));
        };
        let id: u32 = id
            .parse()
            .map_err(|_| malformed(PROC_SELF_CGROUP, n, "hierarchy id is not a number"))?;
        let controllers: Vec<String> =
            controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
        let version = match (id, controllers.is_empty()) {
            (0, true) => CgroupVersion::V2,
            (_, false) => CgroupVersion::V1,
            (_, true) => {
                // Would match every v1 mount; no kernel writes this.
                tracing::debug!(
                    "{PROC_SELF_CGROUP} line {}: v1 hierarchy {id} without controllers; ignoring it",
                    n + 1
                );
                continue;
            }
        };
        members.push(Membership { id, controllers, version, own: PathBuf::from(own) });
    }
    Ok(members)
}

/// OOM kills counted in a memory cgroup directory, v1 or v2 (the monitor knows only the
/// directory); 0 when the kernel does not say.
pub fn oom_kills_in(dir: &Path) -> u64 {
    ["memory.oom_control", "memory.events"]
        .iter()
        .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        .and_then(|text| oom_kill_count(&text))
        .unwrap_or(0)
}

/// The `oom_kill N` line of memory.oom_control (v1) or memory.events (v2).
fn oom_kill_count(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok())
}

/// A new v1 cpuset cgroup has no CPUs and no memory nodes, and joining it fails until they
/// are set: give it its parent's.
pub(crate) fn inherit_cpuset(dir: &Path) -> Result<()> {
    let parent =
        dir.parent().ok_or_else(|| Error::Cgroup(format!("{} has no parent", dir.display())))?;
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let from = parent.join(file);
        let value = std::fs::read_to_string(&from).map_err(Error::io("reading", &from))?;
        let to = dir.join(file);
        std::fs::write(&to, value.trim()).map_err(Error::io("writing", &to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// The hybrid host these tests were written on.
    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/61d7c7e29b43de5d71f2b0bd20896f36
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    /// A systemd host booted with cgroup v1 only; its kernel still lists the unmounted v2
    /// hierarchy.
    const LEGACY_MOUNTINFO: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,net_cls,net_prio
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpuset,clone_children
";
    const LEGACY_CGROUP: &str = "\
5:cpuset:/
4:memory:/system.slice/berth.service
3:net_cls,net_prio:/
2:cpu,cpuacct:/system.slice/berth.service
1:name=systemd:/system.slice/berth.service
0::/system.slice/berth.service
";

    const UNIFIED_MOUNTINFO: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const UNIFIED_CGROUP: &str = "0::/system.slice/berth.service\n";

    /// A kind node on a v1 host: each hierarchy shows only the node container's sub-tree.
    const KIND_MOUNTINFO: &str = "\
1200 1190 0:31 /docker/xyz /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime master:14 - cgroup cgroup rw,memory
1201 1190 0:29 /docker/xyz /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime master:12 - cgroup cgroup rw,cpu,cpuacct
1202 1190 0:23 /docker/xyz /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime master:10 - cgroup cgroup rw,xattr,name=systemd
";
    const KIND_CGROUP: &str = "\
4:memory:/docker/xyz/system.slice/berth.service
3:cpu,cpuacct:/docker/xyz/system.slice/berth.service
1:name=systemd:/docker/xyz/system.slice/berth.service
0::/docker/xyz/system.slice/berth.service
";

    fn layout(mountinfo: &str, cgroup: &str) -> CgroupLayout {
        CgroupLayout::parse(mountinfo, cgroup).unwrap()
    }

    fn hierarchy<'a>(l: &'a CgroupLayout, name: &str) -> &'a Hierarchy {
        l.hierarchies.iter().find(|h| h.name() == name).unwrap()
    }

    fn managed_names(l: &CgroupLayout) -> Vec<String> {
        l.managed().map(Hierarchy::name).collect()
    }

    #[test]
    fn modes() {
        let cases = [
            ("hybrid", HYBRID_MOUNTINFO, HYBRID_CGROUP, CgroupMode::Hybrid, 10),
            ("legacy", LEGACY_MOUNTINFO, LEGACY_CGROUP, CgroupMode::Legacy, 5),
            ("unified", UNIFIED_MOUNTINFO, UNIFIED_CGROUP, CgroupMode::Unified, 1),
            ("kind", KIND_MOUNTINFO, KIND_CGROUP, CgroupMode::Legacy, 3),
        ];
        for (name, mountinfo, cgroup, mode, count) in cases {
            let l = layout(mountinfo, cgroup);
            assert_eq!(l.mode, mode, "{name}");
            assert_eq!(l.hierarchies.len(), count, "{name}: {:?}", l.hierarchies);
        }
    }

    #[test]
    fn hybrid_host() {
        let l = layout(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        let memory = hierarchy(&l, "memory");
        assert_eq!(memory.id, 4);
        assert_eq!(memory.version, CgroupVersion::V1);
        assert_eq!(memory.mountpoint, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(memory.own, Path::new("/process_api/61d7c7e29b43de5d71f2b0bd20896f36"));
        let v2 = hierarchy(&l, "cgroup2");
        assert_eq!(v2.mountpoint, Path::new("/sys/fs/cgroup/unified"));
        assert!(v2.controllers.is_empty());

        let managed = managed_names(&l);
        assert_eq!(managed.len(), 9);
        assert!(managed.contains(&"name=systemd".to_string()));
        assert!(!managed.contains(&"cgroup2".to_string()));

        let pod = Path::new("/kubepods/burstable/pod1234");
        assert_eq!(
            l.dir_in(memory, pod, true).unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/61d7c7e29b43de5d71f2b0bd20896f36/kubepods/burstable/pod1234")
        );
        assert_eq!(
            l.dir_in(memory, pod, false).unwrap(),
            Path::new("/sys/fs/cgroup/memory/kubepods/burstable/pod1234")
        );
        let cpu = hierarchy(&l, "cpu");
        assert_eq!(
            l.dir_in(cpu, pod, true).unwrap(),
            Path::new("/sys/fs/cgroup/cpu/kubepods/burstable/pod1234")
        );
        let dirs = l.dirs(pod, true).unwrap();
        assert_eq!(dirs.len(), 9);
        assert!(dirs.iter().any(|(h, d)| h.name() == "name=systemd"
            && d == Path::new("/sys/fs/cgroup/systemd/kubepods/burstable/pod1234")));
    }

    #[test]
    fn legacy_host_skips_unmounted_v2_and_joins_controllers() {
        let l = layout(LEGACY_MOUNTINFO, LEGACY_CGROUP);
        assert!(l.hierarchies.iter().all(|h| h.version == CgroupVersion::V1));
        let cpu = hierarchy(&l, "cpu,cpuacct");
        assert_eq!(cpu.mountpoint, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            l.dir_in(cpu, Path::new("kubepods"), true).unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/system.slice/berth.service/kubepods")
        );
        assert_eq!(hierarchy(&l, "name=systemd").mountpoint, Path::new("/sys/fs/cgroup/systemd"));
        assert_eq!(hierarchy(&l, "cpuset").id, 5);
    }

    #[test]
    fn unified_host() {
        let l = layout(UNIFIED_MOUNTINFO, UNIFIED_CGROUP);
        assert_eq!(managed_names(&l), ["cgroup2"]);
        let dirs = l.dirs(Path::new("kubepods.slice/pod1"), true).unwrap();
        assert_eq!(
            dirs[0].1,
            Path::new("/sys/fs/cgroup/system.slice/berth.service/kubepods.slice/pod1")
        );
        let dirs = l.dirs(Path::new("kubepods.slice/pod1"), false).unwrap();
        assert_eq!(dirs[0].1, Path::new("/sys/fs/cgroup/kubepods.slice/pod1"));
    }

    #[test]
    fn hugetlb_only_where_a_managed_hierarchy_has_it() {
        // This host: hugetlb is on the cgroup2 mount of the hybrid layout only.
        assert!(!layout(HYBRID_MOUNTINFO, HYBRID_CGROUP).has_hugetlb(false));
        assert!(!layout(LEGACY_MOUNTINFO, LEGACY_CGROUP).has_hugetlb(true));
        let with_hugetlb = layout(
            &format!("{LEGACY_MOUNTINFO}33 25 0:30 / /sys/fs/cgroup/hugetlb rw - cgroup cgroup rw,hugetlb\n"),
            &format!("6:hugetlb:/\n{LEGACY_CGROUP}"),
        );
        assert!(with_hugetlb.has_hugetlb(false));

        // v2: what cgroup.controllers offers where the cgroups are made.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let l = layout(&format!("30 1 0:26 / {root} rw - cgroup2 cgroup2 rw\n"), "0::/berthd\n");
        assert!(!l.has_hugetlb(false), "no cgroup.controllers to read");
        std::fs::create_dir(dir.path().join("berthd")).unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory hugetlb pids\n").unwrap();
        std::fs::write(dir.path().join("berthd/cgroup.controllers"), "cpu memory\n").unwrap();
        assert!(l.has_hugetlb(false));
        assert!(!l.has_hugetlb(true), "not offered to berthd's own cgroup");
    }

    #[test]
    fn kind_node_mount_of_a_sub_tree() {
        let l = layout(KIND_MOUNTINFO, KIND_CGROUP);
        let memory = hierarchy(&l, "memory");
        assert_eq!(memory.mount_root, Path::new("/docker/xyz"));
        let pod = Path::new("/kubepods/pod1");
        assert_eq!(
            l.dir_in(memory, pod, true).unwrap(),
            Path::new("/sys/fs/cgroup/memory/system.slice/berth.service/kubepods/pod1")
        );
        assert_eq!(
            l.dir_in(memory, pod, false).unwrap(),
            Path::new("/sys/fs/cgroup/memory/kubepods/pod1")
        );
    }

    #[test]
    fn own_cgroup_outside_the_mounted_sub_tree_cannot_be_nested_under() {
        // Inside a cgroup namespace at the namespace root, with a mount of a deeper sub-tree.
        let l = layout(
            "50 40 0:32 /kubelet/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            "4:memory:/\n",
        );
        let memory = hierarchy(&l, "memory");
        assert_eq!(
            l.dir_in(memory, Path::new("pod1"), false).unwrap(),
            Path::new("/sys/fs/cgroup/memory/pod1")
        );
        let err = l.dir_in(memory, Path::new("pod1"), true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Internal);
        let msg = err.to_string();
        assert!(msg.contains("/kubelet/abc") && msg.contains("/proc/self/cgroup"), "{msg}");
    }

    #[test]
    fn own_cgroup_outside_the_namespace_does_not_escape_the_mount() {
        let l = layout(
            "50 40 0:32 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "0::/../../elsewhere\n",
        );
        let v2 = hierarchy(&l, "cgroup2");
        assert!(l.dir_in(v2, Path::new("pod1"), true).is_err());
        assert_eq!(
            l.dir_in(v2, Path::new("pod1"), false).unwrap(),
            Path::new("/sys/fs/cgroup/pod1")
        );
    }

    #[test]
    fn cgroup_namespace_root() {
        let l = layout("50 40 0:32 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n", "0::/\n");
        let v2 = hierarchy(&l, "cgroup2");
        assert_eq!(l.dir_in(v2, Path::new("/"), true).unwrap(), Path::new("/sys/fs/cgroup"));
        assert_eq!(
            l.dir_in(v2, Path::new("/kubepods"), true).unwrap(),
            Path::new("/sys/fs/cgroup/kubepods")
        );
    }

    #[test]
    fn duplicate_mounts_prefer_the_one_showing_our_cgroup() {
        let mountinfo = "\
60 40 0:32 /other /mnt/other rw - cgroup cgroup rw,memory
61 40 0:32 /docker/xyz /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
62 40 0:32 / /mnt/all rw - cgroup cgroup rw,memory
";
        let l = layout(mountinfo, "4:memory:/docker/xyz/berth\n");
        assert_eq!(hierarchy(&l, "memory").mountpoint, Path::new("/sys/fs/cgroup/memory"));
        let l = layout(mountinfo, "4:memory:/nowhere\n");
        // Only the whole-hierarchy mount shows /nowhere.
        assert_eq!(hierarchy(&l, "memory").mountpoint, Path::new("/mnt/all"));
        let l = layout(
            "60 40 0:32 /other /mnt/other rw - cgroup cgroup rw,memory\n",
            "4:memory:/nowhere\n",
        );
        assert_eq!(hierarchy(&l, "memory").mountpoint, Path::new("/mnt/other"));
    }

    #[test]
    fn escaped_mountpoint() {
        let l =
            layout("50 40 0:32 / /run/my\\040cgroups\\134x rw - cgroup2 cgroup2 rw\n", "0::/\n");
        assert_eq!(hierarchy(&l, "cgroup2").mountpoint, Path::new("/run/my cgroups\\x"));
        assert_eq!(unescape("a\\999b\\7"), Path::new("a\\999b\\7"));
    }

    #[test]
    fn paths_relative_and_absolute_are_the_same() {
        let l = layout(UNIFIED_MOUNTINFO, UNIFIED_CGROUP);
        let h = hierarchy(&l, "cgroup2");
        let want = Path::new("/sys/fs/cgroup/system.slice/berth.service/kubepods/pod1");
        for path in ["kubepods/pod1", "/kubepods/pod1", "/kubepods/pod1/", "//kubepods//pod1"] {
            assert_eq!(l.dir_in(h, Path::new(path), true).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn rejected_paths() {
        let l = layout(UNIFIED_MOUNTINFO, UNIFIED_CGROUP);
        let h = hierarchy(&l, "cgroup2");
        for path in [
            "..",
            "../x",
            "/kubepods/../../etc",
            "kubepods/./pod1",
            "./kubepods",
            "kube\0pods",
            "kube\npods",
        ] {
            for nest in [true, false] {
                let err = l.dir_in(h, Path::new(path), nest).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{path:?}");
                assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
            }
            assert!(l.dirs(Path::new(path), true).is_err());
        }
    }

    #[test]
    fn malformed_and_empty_inputs() {
        let err = CgroupLayout::parse("garbage\n", UNIFIED_CGROUP).unwrap_err();
        assert!(err.to_string().contains("/proc/self/mountinfo line 1"), "{err}");
        let err = CgroupLayout::parse(UNIFIED_MOUNTINFO, "0::/\nx:memory:/\n").unwrap_err();
        assert!(err.to_string().contains("/proc/self/cgroup line 2"), "{err}");
        let err = CgroupLayout::parse(UNIFIED_MOUNTINFO, "nope\n").unwrap_err();
        assert!(err.to_string().contains("/proc/self/cgroup line 1"), "{err}");
        // No cgroup mounted at all.
        let err =
            CgroupLayout::parse("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n", HYBRID_CGROUP)
                .unwrap_err();
        assert!(err.to_string().contains("/proc/self/mountinfo"), "{err}");
    }

    #[test]
    fn summary_lists_mode_and_hierarchies() {
        let s = layout(HYBRID_MOUNTINFO, HYBRID_CGROUP).summary(false);
        assert_eq!(s["mode"], "hybrid");
        let hierarchies = s["hierarchies"].as_array().unwrap();
        assert_eq!(hierarchies.len(), 10);
        let memory = hierarchies.iter().find(|h| h["controllers"] == json!(["memory"])).unwrap();
        assert_eq!(memory["mountpoint"], "/sys/fs/cgroup/memory");
        assert_eq!(memory["own"], "/process_api/61d7c7e29b43de5d71f2b0bd20896f36");
        assert_eq!(memory["managed"], true);
        let v2 = hierarchies.iter().find(|h| h["version"] == "v2").unwrap();
        assert_eq!(v2["managed"], false);
        assert_eq!(s["hugetlb"], false);
    }

    #[test]
    fn detect_on_this_machine() {
        let l = CgroupLayout::detect().unwrap();
        assert!(!l.hierarchies.is_empty());
        assert!(l.managed().next().is_some());
        for h in &l.hierarchies {
            let dir = l.dir_in(h, Path::new("/"), true).unwrap();
            assert!(dir.is_dir(), "{} of {} is missing", dir.display(), h.name());
        }
    }

    #[test]
    fn oom_kill_lines() {
        assert_eq!(oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 12\n"), Some(12));
        assert_eq!(oom_kill_count("oom_kill_disable 1\nunder_oom 0\n"), None);
        assert_eq!(oom_kill_count("low 0\noom 2\noom_kill 2\noom_group_kill 1\n"), Some(2));
    }
}
