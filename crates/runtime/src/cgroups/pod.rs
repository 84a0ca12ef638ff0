//! The pod's cgroup: the kubelet's `cgroup_parent` (made if missing), or `/berth/<pod id>`
//! when none is given, in every hierarchy berth manages, nested under berthd's own cgroup
//! when configured.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use super::container::ContainerCgroup;
use super::{inherit_cpuset, CgroupLayout, CgroupVersion, Hierarchy};
use crate::error::{Error, Result};

/// The parent of the pods that have no `cgroup_parent`: berth's own, shared by those pods.
const DEFAULT_PARENT: &str = "/berth";

pub fn pod_cgroup(parent: &str, pod_id: &str) -> String {
    if parent.is_empty() {
        format!("{DEFAULT_PARENT}/{pod_id}")
    } else {
        parent.to_string()
    }
}

/// Makes `path` in every managed hierarchy; returns the paths this call created, parents
/// first, so that removal takes exactly those. On failure, what it made is removed again.
pub fn create(layout: &CgroupLayout, path: &str, nest: bool) -> Result<Vec<String>> {
    // The last pod under berth's own parent may be removing it at this very moment: the
    // chain is then made again from the top.
    match try_create(layout, path, nest) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            try_create(layout, path, nest)
        }
        other => other,
    }
}

fn try_create(layout: &CgroupLayout, path: &str, nest: bool) -> Result<Vec<String>> {
    // The chain of cgroup paths from the top: "/a", "/a/b", "/a/b/c".
    let clean = super::clean_cgroup_path(Path::new(path))?;
    let mut chain = Vec::new();
    let mut acc = PathBuf::from("/");
    for component in clean.components() {
        acc.push(component);
        chain.push(acc.display().to_string());
    }
    let mut created = Vec::new();
    for cgroup in &chain {
        // Recorded before it is made, so that a failure part way through this level (in
        // another hierarchy, or copying cpuset) removes it too.
        let record = cgroup == DEFAULT_PARENT || !exists_everywhere(layout, cgroup, nest)?;
        if record {
            created.push(cgroup.clone());
        }
        if let Err(err) = make(layout, cgroup, nest) {
            let _ = remove(layout, &created, nest);
            return Err(err);
        }
    }
    // berth's own parent counts as made for every pod under it, so that whichever of them
    // goes last takes it along (see `remove`).
    Ok(created)
}

fn exists_everywhere(layout: &CgroupLayout, cgroup: &str, nest: bool) -> Result<bool> {
    Ok(layout.dirs(Path::new(cgroup), nest)?.iter().all(|(_, dir)| dir.is_dir()))
}

fn make(layout: &CgroupLayout, cgroup: &str, nest: bool) -> Result<()> {
    for (hierarchy, dir) in layout.dirs(Path::new(cgroup), nest)? {
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                if hierarchy.version == CgroupVersion::V1
                    && hierarchy.controllers.iter().any(|c| c == "cpuset")
                {
                    inherit_cpuset(&dir)?;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(Error::io("creating cgroup", dir)(err)),
        }
    }
    Ok(())
}

/// Removes the cgroups `create` made, deepest first. Missing ones are fine; a pod cgroup
/// that still has processes or children is an error naming it. A parent made along with it
/// may hold other pods' cgroups by now: it stays, for the last of them.
pub fn remove(layout: &CgroupLayout, created: &[String], nest: bool) -> Result<()> {
    for (i, cgroup) in created.iter().enumerate().rev() {
        let parent = i + 1 < created.len();
        for (_, dir) in layout.dirs(Path::new(cgroup), nest)? {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err)
                    if parent
                        && matches!(
                            err.kind(),
                            std::io::ErrorKind::ResourceBusy
                                | std::io::ErrorKind::DirectoryNotEmpty
                        ) => {}
                Err(err) => return Err(Error::io("removing cgroup", dir)(err)),
            }
        }
        // An OCI runtime puts its containers in every hierarchy it knows, also those berth
        // does not manage (runc: the v2 one of a hybrid host), and its delete leaves the
        // parents there: they go with the pod, where they are empty.
        let managed: Vec<&Hierarchy> = layout.managed().collect();
        for h in layout.hierarchies.iter().filter(|h| !managed.contains(h)) {
            if let Ok(dir) = layout.dir_in(h, Path::new(cgroup), nest) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    Ok(())
}

/// Writes `resources` into the pod's cgroup `path`, all or nothing. A pod's cgroup has the
/// same files as a container's, so the container's writer does the work.
pub fn update(
    layout: &CgroupLayout,
    path: &str,
    nest: bool,
    resources: &LinuxResources,
) -> Result<()> {
    let cgroup = ContainerCgroup::open(layout, path, nest)?;
    if let Some(dir) = cgroup.dirs().iter().find(|dir| !dir.is_dir()) {
        return Err(Error::NotFound(format!("the pod's cgroup {} is gone", dir.display())));
    }
    cgroup.update(resources)
}

#[cfg(test)]
mod tests {
    use super::*;
    // The limits as the lifecycle computes them from the CRI's resources.
    use crate::container::Resources;

    /// A fake host: a v1 cpuset and memory hierarchy, or a v2 one, mounted in a temp dir, with
    /// berthd in `/berthd` of each.
    fn fake(v2: bool) -> (tempfile::TempDir, CgroupLayout) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        let (mountinfo, cgroup) = if v2 {
            (
                format!("30 1 0:26 / {root}/unified rw - cgroup2 cgroup2 rw\n"),
                "0::/berthd\n".to_string(),
            )
        } else {
            (
                format!(
                    "31 1 0:27 / {root}/cpuset rw - cgroup cgroup rw,cpuset\n\
                     32 1 0:28 / {root}/memory rw - cgroup cgroup rw,memory\n"
                ),
                "3:cpuset:/berthd\n4:memory:/berthd\n".to_string(),
            )
        };
        let layout = CgroupLayout::parse(&mountinfo, &cgroup).unwrap();
        for h in &layout.hierarchies {
            let own = h.mountpoint.join("berthd");
            std::fs::create_dir_all(&own).unwrap();
            // A v1 cpuset cgroup has these from the kernel; the fake gives them by hand.
            if h.controllers.iter().any(|c| c == "cpuset") {
                std::fs::write(own.join("cpuset.cpus"), "0-1\n").unwrap();
                std::fs::write(own.join("cpuset.mems"), "0\n").unwrap();
            }
        }
        (dir, layout)
    }

    #[test]
    fn creates_the_missing_part_nested_and_removes_only_that() {
        for v2 in [false, true] {
            let (_dir, layout) = fake(v2);
            // The kubelet made /kubepods already; berth makes the rest.
            for (_, dir) in layout.dirs(Path::new("/kubepods"), true).unwrap() {
                std::fs::create_dir_all(&dir).unwrap();
                if dir.starts_with(layout.hierarchies[0].mountpoint.clone()) && !v2 {
                    std::fs::write(dir.join("cpuset.cpus"), "0-1").unwrap();
                    std::fs::write(dir.join("cpuset.mems"), "0").unwrap();
                }
            }
            let path = "/kubepods/burstable/pod-1";
            let created = create(&layout, path, true).unwrap();
            assert_eq!(created, vec!["/kubepods/burstable", "/kubepods/burstable/pod-1"]);
            for (h, dir) in layout.dirs(Path::new(path), true).unwrap() {
                assert!(dir.starts_with(h.mountpoint.join("berthd/kubepods")), "{dir:?}");
                assert!(dir.is_dir());
                if h.controllers.iter().any(|c| c == "cpuset") {
                    assert_eq!(std::fs::read_to_string(dir.join("cpuset.cpus")).unwrap(), "0-1");
                }
            }
            // Again: nothing new is made.
            assert!(create(&layout, path, true).unwrap().is_empty());
            // On cgroupfs a directory's control files go with it; plain files in the fake
            // tree would stop rmdir.
            for (_, dir) in layout.dirs(Path::new("/kubepods/burstable"), true).unwrap() {
                for file in ["cpuset.cpus", "cpuset.mems", "pod-1/cpuset.cpus", "pod-1/cpuset.mems"]
                {
                    let _ = std::fs::remove_file(dir.join(file));
                }
            }
            remove(&layout, &created, true).unwrap();
            for (_, dir) in layout.dirs(Path::new("/kubepods"), true).unwrap() {
                assert!(dir.is_dir(), "the kubelet's cgroup stays");
                assert!(!dir.join("burstable").exists());
            }
            remove(&layout, &created, true).unwrap();
        }
    }

    /// What a v1 memory limit file holds when there is no limit.
    const UNLIMITED: &str = "9223372036854771712\n";

    #[test]
    fn update_writes_the_pod_cgroup_or_nothing() {
        for v2 in [false, true] {
            let (_dir, layout) = fake(v2);
            let path = "/berth/pod-1";
            let limits = |r: Resources| crate::container::spec::limits(&r, true).unwrap();
            let memory =
                |bytes: i64| Resources { memory_limit_in_bytes: bytes, ..Default::default() };
            let err = update(&layout, path, true, &limits(memory(1 << 20))).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::NotFound, "{err}");
            create(&layout, path, true).unwrap();
            let dirs = layout.dirs(Path::new(path), true).unwrap();
            let dir_of = |controller: &str| {
                dirs.iter().find(|(h, _)| v2 || h.controllers[0] == controller).unwrap().1.clone()
            };
            let (mem_dir, cpu_dir) = (dir_of("memory"), dir_of("cpuset"));
            let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
            let files: &[(&str, &str)] = if v2 {
                &[("memory.max", "max\n"), ("memory.swap.max", "max\n")]
            } else {
                &[("memory.limit_in_bytes", UNLIMITED), ("memory.memsw.limit_in_bytes", UNLIMITED)]
            };
            for (file, value) in files {
                std::fs::write(mem_dir.join(file), value).unwrap();
            }
            update(&layout, path, true, &limits(memory(64 << 20))).unwrap();
            assert_eq!(read(&mem_dir, files[0].0), (64u64 << 20).to_string());

            // A write that fails after others were made: those get their old values back.
            let err = if v2 {
                // memory.max is written, then cpu.max is missing.
                let r = Resources { cpu_quota: 20_000, ..memory(128 << 20) };
                update(&layout, path, true, &limits(r)).unwrap_err()
            } else {
                // cpuset.cpus (its hierarchy comes first) is written, then the memory
                // controller's files are missing.
                for (file, _) in files {
                    std::fs::remove_file(mem_dir.join(file)).unwrap();
                }
                let r = Resources { cpuset_cpus: "1".into(), ..memory(128 << 20) };
                update(&layout, path, true, &limits(r)).unwrap_err()
            };
            let missing = if v2 { "cpu.max" } else { "memory.limit_in_bytes" };
            assert!(err.to_string().contains(missing), "{err}");
            if v2 {
                assert_eq!(read(&mem_dir, "memory.max"), (64u64 << 20).to_string());
            } else {
                assert_eq!(read(&cpu_dir, "cpuset.cpus"), "0-1");
            }
        }
    }

    #[test]
    fn default_path_and_bad_paths() {
        assert_eq!(pod_cgroup("", "abc"), "/berth/abc");
        assert_eq!(pod_cgroup("/kubepods/pod1", "abc"), "/kubepods/pod1");
        let (_dir, layout) = fake(true);
        assert!(create(&layout, "/../escape", true).is_err());
    }
}
