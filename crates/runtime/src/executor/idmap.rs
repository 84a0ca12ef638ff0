//! Idmapped mounts: the image's layers of a container in a user namespace, and the binds its
//! spec marks `idmap`/`ridmap`. They are made by the caller (the monitor) before the container's
//! process exists, as detached mount trees (`open_tree`, then `mount_setattr` with a user
//! namespace of the mappings), so that a host that cannot idmap is an error of the create call
//! itself, never a silent fallback: the shared layers are never chowned.
//!
//! - Layers: overlayfs cannot itself be idmapped, but its lower layers can (Linux 5.19): the
//!   overlay is mounted with each layer's detached tree as `lowerdir`, named by
//!   `/proc/self/fd/<n>`, and the upper layer plain (berthd hands its root to the pod's root;
//!   it is the container's alone). A file of a layer owned by 0 on disk is then owned by the
//!   pod's root, and a copy-up keeps that owner.
//! - Binds, for the embedded executor: the child attaches each tree where the bind would go.
//! - Binds, for an OCI runtime, which may not idmap itself (runc < 1.2): the monitor attaches
//!   each tree under `<bundle>/idmap/<n>` in its own mount namespace, and the spec it hands the
//!   runtime binds that directory instead.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::plan::{self, ContainerPlan, OverlayPlan};
use super::Rootfs;
use crate::error::{Error, Result};
use crate::userns::{self, IdMapping};

/// Under the bundle: where the monitor attaches an OCI runtime's idmapped binds.
pub(super) const BUNDLE_DIR: &str = "idmap";

/// The container's user namespace, or the namespaces made for mounts with other mappings.
pub(super) struct Namespaces<'a> {
    container: Option<(BorrowedFd<'a>, &'a [IdMapping], &'a [IdMapping])>,
    made: Vec<(Vec<IdMapping>, Vec<IdMapping>, File)>,
}

impl<'a> Namespaces<'a> {
    pub fn new(container: Option<(BorrowedFd<'a>, &'a [IdMapping], &'a [IdMapping])>) -> Self {
        Namespaces { container, made: Vec::new() }
    }

    /// A user namespace with exactly these mappings: the container's when they are its own,
    /// else one made (once) for them.
    fn with(&mut self, uids: &[IdMapping], gids: &[IdMapping]) -> Result<BorrowedFd<'_>> {
        if let Some((fd, c_uids, c_gids)) = self.container {
            if c_uids == uids && c_gids == gids {
                return Ok(fd);
            }
        }
        let at = match self.made.iter().position(|(u, g, _)| u == uids && g == gids) {
            Some(at) => at,
            None => {
                let made = userns::create(uids, gids, CloneFlags::empty())?;
                self.made.push((uids.to_vec(), gids.to_vec(), made.user));
                self.made.len() - 1
            }
        };
        Ok(self.made[at].2.as_fd())
    }
}

fn idmap_error(what: &str, path: &Path, errno: nix::errno::Errno) -> Error {
    let why = match errno {
        nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM => {
            " (its file system, or this kernel, cannot idmap mounts)"
        }
        _ => "",
    };
    Error::Internal(format!("idmapping {what} {}: {errno}{why}", path.display()))
}

/// The rootfs's lower layers as idmapped trees, and the overlay options that name them.
pub(super) fn layers(rootfs: &Rootfs, userns: BorrowedFd) -> Result<(Vec<OwnedFd>, OverlayPlan)> {
    let trees = rootfs
        .lower
        .iter()
        .map(|lower| {
            let path = rootfs.lower_base.join(lower);
            userns::idmapped_tree(&path, userns, false, false)
                .map_err(|e| idmap_error("image layer", &path, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let named = Rootfs {
        lower_base: rootfs.lower_base.clone(),
        lower: trees
            .iter()
            .map(|t| PathBuf::from(format!("/proc/self/fd/{}", t.as_raw_fd())))
            .collect(),
        upper: rootfs.upper.clone(),
        work: rootfs.work.clone(),
    };
    Ok((trees, plan::overlay(&named)?))
}

/// Makes the tree of each idmapped bind of `plan` and records its descriptor there for the
/// child; the trees must stay open until the child has attached them.
pub(super) fn binds(plan: &mut ContainerPlan, namespaces: &mut Namespaces) -> Result<Vec<OwnedFd>> {
    let mut trees = Vec::new();
    for m in &mut plan.mounts {
        let (Some(idmap), plan::MountKind::Bind { source }) = (&mut m.idmap, &m.kind) else {
            continue;
        };
        let userns = namespaces.with(&idmap.uids, &idmap.gids)?;
        let recursive_clone = m.flags.contains(nix::mount::MsFlags::MS_REC);
        let tree = userns::idmapped_tree(source, userns, recursive_clone, idmap.recursive)
            .map_err(|e| match e {
                nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => {
                    Error::InvalidArgument(format!(
                        "mounting {}: source {}: {e}",
                        m.destination.display(),
                        source.display()
                    ))
                }
                e => idmap_error(&format!("the mount {} of", m.destination.display()), source, e),
            })?;
        idmap.tree = Some(tree.as_raw_fd());
        trees.push(tree);
    }
    Ok(trees)
}

/// For an OCI runtime: attaches the tree of each idmapped bind of `spec` under
/// `<bundle>/idmap/<n>` and rewrites `spec_path` so that the runtime binds those instead, with
/// no idmap of its own to do. Nothing to do leaves the file as it is.
pub(super) fn bundle_binds(spec: &Spec, spec_path: &Path) -> Result<()> {
    let Some(mounts) = spec.mounts().as_ref() else { return Ok(()) };
    let idmapped = |m: &oci_spec::runtime::Mount| {
        m.options().iter().flatten().any(|o| o == "idmap" || o == "ridmap")
    };
    if !mounts.iter().any(idmapped) {
        return Ok(());
    }
    let bundle = spec_path
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no directory", spec_path.display())))?;
    let linux = spec.linux().as_ref();
    let list = |l: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMapping> {
        l.into_iter().flatten().map(IdMapping::from).collect()
    };
    let (c_uids, c_gids) = (
        list(linux.and_then(|l| l.uid_mappings().as_ref())),
        list(linux.and_then(|l| l.gid_mappings().as_ref())),
    );
    let userns_path = linux
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|list| list.iter().find(|n| n.typ() == LinuxNamespaceType::User))
        .and_then(|n| n.path().clone());
    let userns_file = userns_path
        .as_ref()
        .map(|p| File::open(p).map_err(Error::io("opening user namespace", p)))
        .transpose()?;
    let mut namespaces = Namespaces::new(
        userns_file.as_ref().map(|f| (f.as_fd(), c_uids.as_slice(), c_gids.as_slice())),
    );
    let dir = bundle.join(BUNDLE_DIR);
    let mut rewritten = spec.clone();
    let mut out = Vec::with_capacity(mounts.len());
    for (n, m) in mounts.iter().enumerate() {
        if !idmapped(m) {
            out.push(m.clone());
            continue;
        }
        // Checked and converted as the embedded executor does: the same rules either way.
        let cgroup = super::CgroupMount::V2;
        let userns_plan = userns_path.as_ref().map(|path| plan::UsernsPlan {
            path: path.clone(),
            uids: c_uids.clone(),
            gids: c_gids.clone(),
        });
        let planned = plan::mount(m, &cgroup, userns_plan.as_ref())?;
        let (Some(idmap), plan::MountKind::Bind { source }) = (&planned.idmap, &planned.kind)
        else {
            continue;
        };
        let userns = namespaces.with(&idmap.uids, &idmap.gids)?;
        let rbind = planned.flags.contains(nix::mount::MsFlags::MS_REC);
        let tree = userns::idmapped_tree(source, userns, rbind, idmap.recursive).map_err(|e| {
            idmap_error(&format!("the mount {} of", m.destination().display()), source, e)
        })?;
        let target = dir.join(n.to_string());
        attach_at(&tree, &target)?;
        let mut bind = m.clone();
        let options: Vec<String> = m
            .options()
            .iter()
            .flatten()
            .filter(|o| !matches!(o.as_str(), "idmap" | "ridmap"))
            .cloned()
            .collect();
        bind.set_source(Some(target))
            .set_options(Some(options))
            .set_uid_mappings(None)
            .set_gid_mappings(None);
        out.push(bind);
    }
    rewritten.set_mounts(Some(out));
    let json = serde_json::to_vec_pretty(&rewritten)
        .map_err(|e| Error::Internal(format!("encoding the OCI spec: {e}")))?;
    berth_fsutil::replace_volatile(spec_path, &json).map_err(|e| Error::Internal(e.to_string()))
}

/// Attaches a detached tree on `target`, created as a file or a directory like its root.
fn attach_at(tree: &OwnedFd, target: &Path) -> Result<()> {
    let is_dir = nix::sys::stat::fstat(tree)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| Error::Internal(format!("inspecting an idmapped mount: {e}")))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
    }
    if is_dir {
        std::fs::create_dir(target).map_err(Error::io("creating", target))?;
    } else {
        File::create(target).map_err(Error::io("creating", target))?;
    }
    let opened = nix::fcntl::open(
        target,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Internal(format!("opening {}: {e}", target.display())))?;
    userns::attach(tree.as_fd(), opened.as_fd()).map_err(|e| {
        Error::Internal(format!("attaching an idmapped mount on {}: {e}", target.display()))
    })
}

/// Detaches and removes what [`bundle_binds`] attached. Missing is fine.
pub(super) fn unmount_bundle_binds(bundle: &Path) -> Result<()> {
    let dir = bundle.join(BUNDLE_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("reading", &dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(Error::io("reading", &dir))?.path();
        crate::namespaces::unmount(&path)?;
        // Only once nothing is mounted there: never through a mount into a volume.
        let removed =
            if path.is_dir() { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(Error::io("removing", &path))?;
    }
    std::fs::remove_dir(&dir).map_err(Error::io("removing", &dir))
}
