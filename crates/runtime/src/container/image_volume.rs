//! Image volumes (CRI `Mount.image`, Kubernetes' ImageVolume): an image's filesystem, read-only,
//! at a path of the container.
//!
//! berthd mounts each one on the node, at `<bundle>/image-volumes/<n>`: an overlay of the
//! image's layers with no upper dir (so read-only by construction; overlay needs two lower
//! layers without one, so a one-layer image gets an empty directory beneath it). The spec then
//! has a plain read-only bind of that directory (or of its `image_sub_path`), which every
//! handler knows how to make, so nothing of the monitor or the executors is specific to image
//! volumes. In a pod with a user namespace each layer is an idmapped copy (as the rootfs'
//! layers are), so the files have the image's owners inside the pod. The mounts live as long as
//! the container's bundle: they go when it is removed (`remove_bundle`), and a berthd restart
//! finds them in place, as it finds the monitors.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::container::types::{ImageVolume, Mount, Propagation};
use crate::error::{Error, Result};
use crate::userns::{IdMapping, UserNamespace};

/// Under the bundle: one directory per image volume, by its index among the config's mounts.
const DIR: &str = "image-volumes";
/// The empty bottom layer of a one-layer image's overlay.
const EMPTY: &str = "empty";

/// What the CRI allows of an image mount, checked before anything is taken: read-only (an
/// image is shared by every container that mounts it), no host path, no mappings but the
/// pod's, private propagation (nothing is ever mounted under it), and a sub path that stays
/// inside the image.
///
/// The kubelet puts the pod's own mappings (`pod_userns`, those of the sandbox's user
/// namespace) on every mount of a `hostUsers: false` pod, image volumes included. The layers
/// of an image volume are idmapped through the pod's user namespace already (see `prepare`),
/// which is what those mappings ask for: the image's owners inside the pod. Other mappings
/// would need the layers idmapped through a namespace the pod does not have, so they are
/// refused rather than ignored.
pub fn check(m: &Mount, volume: &ImageVolume, pod_userns: Option<&UserNamespace>) -> Result<()> {
    let at = &m.container_path;
    let refuse = |why: &str| Err(Error::InvalidArgument(format!("image volume at {at:?}: {why}")));
    if volume.image.is_empty() {
        return refuse("the image is empty");
    }
    if !m.readonly {
        return refuse("an image volume is read-only: the mount must have readonly set");
    }
    if !m.host_path.is_empty() {
        return refuse("an image volume has no host path");
    }
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        let pods = |ns: &&UserNamespace| m.uid_mappings == [ns.uids] && m.gid_mappings == [ns.gids];
        match pod_userns {
            Some(ns) if pods(&ns) => {}
            Some(ns) => {
                let list = |l: &[IdMapping]| {
                    l.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                };
                return refuse(&format!(
                    "its id mappings (uids [{}], gids [{}]) are not the pod's (uids {}, gids {}): \
                     an image volume shows the image through the pod's own mappings only",
                    list(&m.uid_mappings),
                    list(&m.gid_mappings),
                    ns.uids,
                    ns.gids
                ));
            }
            None => {
                return refuse(
                    "it has id mappings, but the pod has no user namespace of its own whose \
                     mappings they could be",
                );
            }
        }
    }
    if m.propagation != Propagation::Private {
        return refuse("an image volume only has private propagation");
    }
    sub_path(&volume.sub_path).map(drop).map_err(|why| {
        Error::InvalidArgument(format!("image volume at {at:?}: image_sub_path {why}"))
    })
}

/// The sub path as relative components; `..` and absolute paths are refused outright rather
/// than clamped at the image's root, so that a typo is an error rather than another directory.
fn sub_path(sub: &str) -> std::result::Result<PathBuf, String> {
    if sub.starts_with('/') {
        return Err(format!("{sub:?} is not a relative path"));
    }
    if sub.contains('\0') {
        return Err(format!("{sub:?} holds a NUL byte"));
    }
    let mut clean = PathBuf::new();
    for component in Path::new(sub).components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::CurDir => {}
            _ => return Err(format!("{sub:?} leaves the image's root")),
        }
    }
    Ok(clean)
}

/// Where image volume `index` of a container is mounted on the node.
pub fn mount_point(bundle: &Path, index: usize) -> PathBuf {
    bundle.join(DIR).join(index.to_string())
}

/// Mounts the image whose layer directories are `layers` (top first) read-only at image
/// volume `index` of `bundle`, idmapped through the user namespace at `userns` when given, and
/// returns what to bind into the container: the mount point, or `sub_path` resolved inside it.
/// Blocking. What it mounted is unmounted by [`unmount_all`], also after a failure.
pub fn prepare(
    bundle: &Path,
    index: usize,
    layers: &[PathBuf],
    userns: Option<&Path>,
    sub: &str,
) -> Result<PathBuf> {
    if layers.is_empty() {
        return Err(Error::InvalidArgument("the image of an image volume has no layers".into()));
    }
    let target = mount_point(bundle, index);
    std::fs::create_dir_all(&target).map_err(Error::io("creating", &target))?;
    let mut lowers: Vec<PathBuf> = layers.to_vec();
    if lowers.len() == 1 {
        let empty = bundle.join(DIR).join(EMPTY);
        std::fs::create_dir_all(&empty).map_err(Error::io("creating", &empty))?;
        lowers.push(empty);
    }
    let userns = match userns {
        Some(path) => {
            Some(std::fs::File::open(path).map_err(Error::io("opening user namespace", path))?)
        }
        None => None,
    };
    // Each layer by a descriptor, as `/proc/thread-self/fd/N`: short whatever the layers'
    // paths, so that no image has too many layers for a page of mount options, and, for a
    // user namespace, the only way to name a detached idmapped copy.
    let mut held: Vec<OwnedFd> = Vec::with_capacity(lowers.len());
    for layer in &lowers {
        let fd = match &userns {
            Some(ns) => {
                crate::userns::idmapped_tree(layer, ns.as_fd(), false, false).map_err(|e| {
                    Error::Internal(format!("idmapping image layer {}: {e}", layer.display()))
                })?
            }
            None => nix::fcntl::open(
                layer,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("opening image layer", layer)(e.into()))?,
        };
        held.push(fd);
    }
    let lowerdir: Vec<String> =
        held.iter().map(|fd| format!("/proc/thread-self/fd/{}", fd.as_raw_fd())).collect();
    let data = format!("lowerdir={}", lowerdir.join(":"));
    // No nodev/noexec: binaries of the image run from it, as from the image's own root.
    mount(Some("overlay"), &target, Some("overlay"), MsFlags::MS_RDONLY, Some(data.as_str()))
        .map_err(|e| {
            Error::Internal(format!("mounting the image volume at {}: {e}", target.display()))
        })?;
    drop(held);
    resolve(&target, sub)
}

/// `sub` inside the mounted image at `root`, links followed as the image would see them (an
/// absolute one from the image's root), never out of it. A sub path that is not there is an
/// error: the kubelet's user named something of the image that it does not have.
fn resolve(root: &Path, sub: &str) -> Result<PathBuf> {
    let clean =
        sub_path(sub).map_err(|why| Error::InvalidArgument(format!("image_sub_path {why}")))?;
    if clean.as_os_str().is_empty() {
        return Ok(root.to_path_buf());
    }
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening", root)(e.into()))?;
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_IN_ROOT
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    let found = match openat2(&dir, &clean, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {
            return Err(Error::InvalidArgument(format!(
                "image_sub_path {sub:?} does not exist in the image"
            )))
        }
        Err(e) => return Err(Error::InvalidArgument(format!("image_sub_path {sub:?}: {e}"))),
    };
    let real_path = |fd: &OwnedFd| {
        let link = PathBuf::from(format!("/proc/thread-self/fd/{}", fd.as_raw_fd()));
        std::fs::read_link(&link).map_err(Error::io("resolving", &link))
    };
    let (real, real_root) = (real_path(&found)?, real_path(&dir)?);
    // The kernel's own answer; checked all the same, as the bind takes this path by name.
    if !real.starts_with(&real_root) {
        return Err(Error::InvalidArgument(format!(
            "image_sub_path {sub:?} resolves to {} outside the image",
            real.display()
        )));
    }
    Ok(real)
}

/// Unmounts every image volume of `bundle` (idempotent: what is not mounted is fine).
pub fn unmount_all(bundle: &Path) -> Result<()> {
    let dir = bundle.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(Error::io("reading", &dir)(err)),
    };
    for entry in entries.flatten() {
        if entry.file_name() == EMPTY {
            continue;
        }
        let target = entry.path();
        // A mount made twice over (a retried create) is taken off to the bottom.
        let mut gone = false;
        for _ in 0..8 {
            match umount2(&target, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => {
                    gone = true;
                    break;
                }
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "unmounting image volume {}: {e}",
                        target.display()
                    )))
                }
            }
        }
        if !gone {
            return Err(Error::Internal(format!("{} stays mounted", target.display())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_mount(readonly: bool, sub: &str) -> (Mount, ImageVolume) {
        let volume =
            ImageVolume { image: "x.io/a:1".into(), sub_path: sub.into(), ..Default::default() };
        let m = Mount {
            container_path: "/mnt/image".into(),
            readonly,
            image: Some(volume.clone()),
            ..Default::default()
        };
        (m, volume)
    }

    #[test]
    fn checks_what_an_image_mount_may_ask() {
        let ok = |readonly, sub| {
            let (m, v) = image_mount(readonly, sub);
            check(&m, &v, None)
        };
        ok(true, "").unwrap();
        ok(true, "etc").unwrap();
        ok(true, "./usr//bin/").unwrap();
        for (readonly, sub) in
            [(false, ""), (true, "../etc"), (true, "etc/../../x"), (true, "/etc")]
        {
            let err = ok(readonly, sub).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{readonly} {sub}: {err}");
        }
        let (mut m, v) = image_mount(true, "");
        m.host_path = "/x".into();
        assert!(check(&m, &v, None).is_err());
        let (mut m, v) = image_mount(true, "");
        m.propagation = Propagation::HostToContainer;
        assert!(check(&m, &v, None).is_err());
        assert_eq!(sub_path("./a//b/").unwrap(), PathBuf::from("a/b"));
    }

    /// The kubelet's `hostUsers: false` pods put the pod's mappings on every mount: an image
    /// volume takes exactly those, and refuses others, or any without a pod user namespace.
    #[test]
    fn mappings_are_the_pods_or_refused() {
        let range = |host_id| IdMapping { container_id: 0, host_id, length: 65536 };
        let pod = UserNamespace::new(&[range(1 << 20)], &[range(1 << 20)]).unwrap();
        let with = |uids: Vec<IdMapping>, gids: Vec<IdMapping>| {
            let (m, v) = image_mount(true, "");
            (Mount { uid_mappings: uids, gid_mappings: gids, ..m }, v)
        };
        let (m, v) = with(vec![range(1 << 20)], vec![range(1 << 20)]);
        check(&m, &v, Some(&pod)).unwrap();
        let refused = |m: &Mount, v: &ImageVolume, ns: Option<&UserNamespace>, why: &str| {
            let err = check(m, v, ns).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
            assert!(err.to_string().contains(why), "{why}: {err}");
        };
        refused(&m, &v, None, "no user namespace");
        for (uids, gids) in [
            (vec![range(2 << 20)], vec![range(2 << 20)]),
            (vec![range(1 << 20)], vec![]),
            (vec![range(1 << 20), range(2 << 20)], vec![range(1 << 20)]),
        ] {
            let (m, v) = with(uids, gids);
            refused(&m, &v, Some(&pod), "not the pod's");
        }
    }

    /// Mounts in a private mount namespace of a thread of its own, so that nothing reaches the
    /// node's table (root only; skipped otherwise).
    fn in_private_namespace(f: impl FnOnce() + Send) {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .unwrap();
                    f()
                })
                .join()
                .unwrap()
        });
    }

    #[test]
    fn mounts_layers_read_only_and_resolves_sub_paths_inside() {
        let dir = tempfile::tempdir().unwrap();
        let (base, top) = (dir.path().join("base/fs"), dir.path().join("top/fs"));
        for d in [base.join("etc"), base.join("bin"), top.join("etc")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(base.join("etc/passwd"), "base\n").unwrap();
        std::fs::write(top.join("etc/passwd"), "top\n").unwrap();
        // Links that would leave the image if followed on the node.
        std::os::unix::fs::symlink("/etc", base.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc", base.join("bin/rel")).unwrap();
        let bundle = dir.path().join("bundle");
        in_private_namespace(|| {
            let root = prepare(&bundle, 0, &[top.clone(), base.clone()], None, "").unwrap();
            assert_eq!(root, mount_point(&bundle, 0));
            assert_eq!(std::fs::read_to_string(root.join("etc/passwd")).unwrap(), "top\n");
            let err = std::fs::write(root.join("new"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS));

            let etc = prepare(&bundle, 1, std::slice::from_ref(&base), None, "etc").unwrap();
            assert_eq!(etc, mount_point(&bundle, 1).join("etc"));
            assert_eq!(std::fs::read_to_string(etc.join("passwd")).unwrap(), "base\n");
            for link in ["abs", "bin/rel"] {
                let inside = prepare(&bundle, 2, std::slice::from_ref(&base), None, link).unwrap();
                assert_eq!(inside, mount_point(&bundle, 2).join("etc"), "{link}");
                unmount_all(&bundle).unwrap();
            }
            let err = prepare(&bundle, 3, std::slice::from_ref(&base), None, "nothing");
            assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");

            unmount_all(&bundle).unwrap();
            unmount_all(&bundle).unwrap();
            assert!(!mount_point(&bundle, 0).join("etc").exists());
            std::fs::remove_dir_all(&bundle).unwrap();
        });
    }
}
