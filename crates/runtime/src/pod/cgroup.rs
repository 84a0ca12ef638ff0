//! The pod's cgroup: the kubelet's `cgroup_parent` (made if missing), or `/berth/<pod id>`
//! when none is given, in every hierarchy berth manages, nested under berthd's own cgroup
//! when configured.

use std::path::{Path, PathBuf};

use crate::cgroups::{CgroupLayout, CgroupVersion};
use crate::error::{Error, Result};

pub fn pod_cgroup(parent: &str, pod_id: &str) -> String {
    if parent.is_empty() {
        format!("/berth/{pod_id}")
    } else {
        parent.to_string()
    }
}

/// Makes `path` in every managed hierarchy; returns the paths this call created, parents
/// first, so that removal takes exactly those.
pub fn create(layout: &CgroupLayout, path: &str, nest: bool) -> Result<Vec<String>> {
    // The chain of cgroup paths from the top: "/a", "/a/b", "/a/b/c".
    let clean = crate::cgroups::clean_cgroup_path(Path::new(path))?;
    let mut chain = Vec::new();
    let mut acc = PathBuf::from("/");
    for component in clean.components() {
        acc.push(component);
        chain.push(acc.display().to_string());
    }
    let mut created = Vec::new();
    for cgroup in &chain {
        let mut made_here = false;
        for (hierarchy, dir) in layout.dirs(Path::new(cgroup), nest)? {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    made_here = true;
                    if hierarchy.version == CgroupVersion::V1
                        && hierarchy.controllers.iter().any(|c| c == "cpuset")
                    {
                        inherit_cpuset(&dir)?;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => {
                    let _ = remove(layout, &created, nest);
                    return Err(Error::io("creating cgroup", dir)(err));
                }
            }
        }
        if made_here {
            created.push(cgroup.clone());
        }
    }
    Ok(created)
}

/// Removes the cgroups `create` made, deepest first. Missing ones are fine; a cgroup that
/// still has processes or children is an error naming it.
pub fn remove(layout: &CgroupLayout, created: &[String], nest: bool) -> Result<()> {
    for cgroup in created.iter().rev() {
        for (_, dir) in layout.dirs(Path::new(cgroup), nest)? {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("removing cgroup", dir)(err)),
            }
        }
    }
    Ok(())
}

/// A new v1 cpuset cgroup has no CPUs and no memory nodes, and joining it fails until they
/// are set: give it its parent's.
fn inherit_cpuset(dir: &Path) -> Result<()> {
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
