//! The spec's mounts: containerd's defaults, the CRI's mounts and image volumes, checked against
//! the node (propagation, paths) before anything is mounted.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount as OciMount;

use super::*;
use crate::container::types::{Mount, Propagation, BIND_OPTIONS};
use crate::error::{Error, Result};
use crate::userns;

/// Checks that a mount's propagation can work, as containerd's `ensureShared` and
/// `ensureSharedOrSlave` do: the host mount holding `host_path` (from `mountinfo`, the text of
/// `/proc/self/mountinfo`) must itself receive (and, for Bidirectional, send) mount events, or
/// the container would silently see none.
pub fn check_propagation(host_path: &Path, p: Propagation, mountinfo: &str) -> Result<()> {
    if p == Propagation::Private {
        return Ok(());
    }
    let mut found: Option<(usize, PathBuf, bool, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 7 {
            continue;
        }
        let mount_point = unescape_mountinfo(fields[4]);
        if !host_path.starts_with(&mount_point) {
            continue;
        }
        let depth = mount_point.components().count();
        // A later line at the same mount point is mounted over the earlier one.
        if found.as_ref().is_some_and(|(best, ..)| depth < *best) {
            continue;
        }
        let optional = fields[6..].iter().take_while(|f| **f != "-");
        let (mut shared, mut slave) = (false, false);
        for tag in optional {
            shared |= tag.starts_with("shared:");
            slave |= tag.starts_with("master:");
        }
        found = Some((depth, mount_point, shared, slave));
    }
    let Some((_, mount_point, shared, slave)) = found else {
        return Err(Error::FailedPrecondition(format!(
            "no mount found holding {}",
            host_path.display()
        )));
    };
    let (ok, wanted) = match p {
        Propagation::Bidirectional => (shared, "a shared mount"),
        Propagation::HostToContainer => (shared || slave, "a shared or slave mount"),
        Propagation::Private => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "path {} is mounted on {} but it is not {wanted}",
            host_path.display(),
            mount_point.display()
        )))
    }
}

/// [`check_propagation`] for every mount, against this process's mount table, with each host
/// path's links resolved first (the mount that matters is where the path really is).
pub fn check_mounts(mounts: &[Mount]) -> Result<()> {
    if mounts.iter().all(|m| m.propagation == Propagation::Private) {
        return Ok(());
    }
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo =
        fs::read_to_string(mountinfo_path).map_err(Error::io("reading", mountinfo_path))?;
    for m in mounts.iter().filter(|m| m.propagation != Propagation::Private) {
        let host = Path::new(&m.host_path);
        let resolved = fs::canonicalize(host).map_err(Error::io("resolving mount source", host))?;
        check_propagation(&resolved, m.propagation, &mountinfo)?;
    }
    Ok(())
}

/// Creates each missing mount source as a directory (0755), as containerd does: a `hostPath`
/// volume without a type names a path that may not exist yet, and pods rely on getting a
/// directory there.
pub fn prepare_host_paths(mounts: &[Mount]) -> Result<()> {
    for m in mounts {
        let host = host_path(m)?;
        match fs::metadata(host) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(host)
                .map_err(Error::io("creating mount source", host))?,
            Err(err) => return Err(Error::io("inspecting mount source", host)(err)),
        }
    }
    Ok(())
}

pub(super) fn host_path(m: &Mount) -> Result<&Path> {
    let host = Path::new(&m.host_path);
    if !host.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "mount {}: host path {:?} is not absolute",
            m.container_path, m.host_path
        )));
    }
    Ok(host)
}

pub(super) fn oci_mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

pub(super) fn default_mounts(
    pod: &PodContext,
    privileged: bool,
    readonly_rootfs: bool,
) -> Vec<OciMount> {
    let sys_mode = if privileged { "rw" } else { "ro" };
    let shm = pod.shm.as_deref().unwrap_or(Path::new("/dev/shm"));
    let mut pod_file = vec!["rbind", "rprivate"];
    if readonly_rootfs {
        pod_file.push("ro");
    }
    vec![
        oci_mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"]),
        oci_mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        oci_mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        oci_mount("/dev/mqueue", "mqueue", Path::new("mqueue"), &["nosuid", "noexec", "nodev"]),
        oci_mount("/sys", "sysfs", Path::new("sysfs"), &["nosuid", "noexec", "nodev", sys_mode]),
        oci_mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
        oci_mount("/dev/shm", "bind", shm, &["rbind", "nosuid", "noexec", "nodev"]),
        oci_mount("/etc/hostname", "bind", &pod.hostname_file, &pod_file),
        oci_mount("/etc/hosts", "bind", &pod.hosts, &pod_file),
        oci_mount("/etc/resolv.conf", "bind", &pod.resolv_conf, &pod_file),
    ]
}

/// An absolute container path with no `..`, cleaned of `.` and repeated slashes.
pub(super) fn container_path(path: &str, what: &str) -> Result<PathBuf> {
    if !path.starts_with('/') {
        return Err(Error::InvalidArgument(format!("{what} path {path:?} is not absolute")));
    }
    let mut clean = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => clean.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{what} path {path:?} has a \"..\" component"
                )))
            }
        }
    }
    Ok(clean)
}

pub(super) fn depth(path: &Path) -> usize {
    path.components().filter(|c| matches!(c, Component::Normal(_))).count()
}

pub(super) fn cri_mount(m: &Mount) -> Result<OciMount> {
    let destination = container_path(&m.container_path, "mount")?;
    if m.image.is_some() {
        return image_volume_mount(m, destination);
    }
    let host = host_path(m)?;
    let mut options = vec![
        "rbind",
        match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        },
    ];
    let (ro_asked, extra) = requested_options(m)?;
    let readonly = m.readonly || ro_asked;
    if readonly {
        options.push("ro");
    }
    let remounted = readonly || !extra.is_empty();
    options.extend(extra);
    // As containerd: the bind takes the link's target, resolved now rather than by the
    // runtime inside the container's mount namespace. A missing source is left for the
    // runtime to report.
    let source = fs::canonicalize(host).unwrap_or_else(|_| host.to_path_buf());
    if remounted {
        // A bind takes its flags with a remount that sets them all at once, and runc and crun
        // set only those the spec names: the restrictions of the node's mount holding the
        // source would be lifted (a nosuid volume made suid). So they are named too.
        for flag in node_mount_restrictions(&source) {
            if !options.contains(&flag) {
                options.push(flag);
            }
        }
    }
    let idmapped = !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty();
    if idmapped {
        if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "mount {}: an idmapped mount needs both uid and gid mappings",
                m.container_path
            )));
        }
        userns::check_mappings(&m.uid_mappings, &format!("mount {} uid", m.container_path))?;
        userns::check_mappings(&m.gid_mappings, &format!("mount {} gid", m.container_path))?;
        options.push("idmap");
    }
    if m.recursive_read_only {
        if !readonly {
            return Err(Error::InvalidArgument(format!(
                "mount {}: recursive read-only needs readonly",
                m.container_path
            )));
        }
        if m.propagation != Propagation::Private {
            return Err(Error::InvalidArgument(format!(
                "mount {}: recursive read-only needs private propagation",
                m.container_path
            )));
        }
        options.push("rro");
    }
    let mut mount = OciMount::default();
    mount
        .set_destination(destination)
        .set_typ(Some("bind".into()))
        .set_source(Some(source))
        .set_options(Some(options.into_iter().map(str::to_string).collect()))
        .set_uid_mappings(idmapped.then(|| m.uid_mappings.iter().map(Into::into).collect()))
        .set_gid_mappings(idmapped.then(|| m.gid_mappings.iter().map(Into::into).collect()));
    Ok(mount)
}

/// An image volume: a read-only bind of what CreateContainer mounted on the node for it
/// (`container::image_volume`), whose path it puts in `host_path` of the config the spec is
/// built from. Its files are already idmapped for a pod's user namespace; the bind is not, and
/// the mappings a kubelet puts on it (the pod's own, `image_volume::check`) are what that
/// idmapping already gives.
pub(super) fn image_volume_mount(m: &Mount, destination: PathBuf) -> Result<OciMount> {
    if m.host_path.is_empty() {
        return Err(Error::Internal(format!(
            "image volume at {}: not mounted before the spec was built",
            m.container_path
        )));
    }
    let mut options = vec!["rbind", "rprivate", "ro"];
    if m.recursive_read_only {
        options.push("rro");
    }
    // An image volume is read-only whatever is asked; the other restrictions are added.
    options.extend(requested_options(m)?.1);
    let mut mount = OciMount::default();
    mount
        .set_destination(destination)
        .set_typ(Some("bind".into()))
        .set_source(Some(PathBuf::from(&m.host_path)))
        .set_options(Some(options.into_iter().map(str::to_string).collect()));
    Ok(mount)
}

/// A CRI mount's `mount_options`: whether `ro` is among them, and the other restrictions, each
/// once. One berth does not take is refused by name, never dropped.
fn requested_options(m: &Mount) -> Result<(bool, Vec<&'static str>)> {
    let (mut readonly, mut extra) = (false, Vec::new());
    for option in &m.options {
        let Some(known) = BIND_OPTIONS.iter().find(|known| **known == option.as_str()) else {
            return Err(Error::InvalidArgument(format!(
                "mount {}: mount option {option:?} is not supported (only {})",
                m.container_path,
                BIND_OPTIONS.join(", ")
            )));
        };
        match *known {
            "ro" => readonly = true,
            known if !extra.contains(&known) => extra.push(known),
            _ => {}
        }
    }
    Ok((readonly, extra))
}

/// The restricting flags (`ro`, `nosuid`, `nodev`, `noexec`) of the node's mount holding
/// `path`, as OCI options; none when it cannot be looked at (the runtime reports a missing
/// source).
pub(super) fn node_mount_restrictions(path: &Path) -> Vec<&'static str> {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else { return Vec::new() };
    [
        (FsFlags::ST_RDONLY, "ro"),
        (FsFlags::ST_NOSUID, "nosuid"),
        (FsFlags::ST_NODEV, "nodev"),
        (FsFlags::ST_NOEXEC, "noexec"),
    ]
    .into_iter()
    .filter(|(flag, _)| st.flags().contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// The defaults, less those a CRI mount replaces (all of `/dev`'s when `/dev` itself is
/// mounted), then the CRI mounts; parents before children, otherwise in that order. Also the
/// root's propagation the CRI mounts need.
pub(super) fn mounts(inputs: &SpecInputs) -> Result<(Vec<OciMount>, Option<&'static str>)> {
    let security = &inputs.config.security;
    let cri = inputs.config.mounts.iter().map(cri_mount).collect::<Result<Vec<_>>>()?;
    let replaced: HashSet<&Path> = cri.iter().map(|m| m.destination().as_path()).collect();
    // A CRI `/dev` takes the place of every default mount under it too.
    let dev_replaced = replaced.contains(Path::new("/dev"));
    let mut all: Vec<OciMount> =
        default_mounts(inputs.pod, security.privileged, security.readonly_rootfs)
            .into_iter()
            .filter(|m| {
                let dest = m.destination().as_path();
                let under_dev = dest.starts_with("/dev") && dest != Path::new("/dev");
                let shadowed = replaced.contains(dest) || (dev_replaced && under_dev);
                !shadowed
            })
            .collect();
    all.extend(cri);
    all.sort_by_key(|m| depth(m.destination()));

    let propagations = inputs.config.mounts.iter().map(|m| m.propagation);
    let rootfs_propagation = if propagations.clone().any(|p| p == Propagation::Bidirectional) {
        Some("rshared")
    } else if propagations.into_iter().any(|p| p == Propagation::HostToContainer) {
        Some("rslave")
    } else {
        None
    };
    Ok((all, rootfs_propagation))
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes in mountinfo paths.
pub(super) fn unescape_mountinfo(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
