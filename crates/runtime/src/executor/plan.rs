//! Turns an OCI spec into a plan: everything the child will do, checked and converted in the
//! parent, where a bad spec can still be answered with a plain error instead of a dead child.
//! After clone the child only reads the plan: no parsing, no decisions left to make there.
//!
//! A container that joins its pod's user namespace is set up as root of the node and enters
//! that namespace last (see `child`): so what it is given (device nodes, the `uid=`/`gid=` of
//! its file systems, a tmpfs's root) is planned here with the node's ids its own ids map to.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::SFlag;
use oci_spec::runtime::{
    LinuxDeviceType, LinuxNamespaceType, LinuxSeccomp, PosixRlimitType, Process, Spec,
};

use super::capabilities::{self, CapsPlan};
use super::{CgroupMount, Rootfs};
use crate::error::{Error, Result};
use crate::seccomp::Filters;
use crate::userns::IdMapping;

/// The search path used when the spec's environment has no `PATH` (the one containerd and
/// Docker put in an image's environment by default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The kernel copies mount data into one page; the overlay option string must fit in it.
const MAX_MOUNT_DATA: usize = 4095;
const DEFAULT_UMASK: u32 = 0o022;
/// nix has no name for it.
pub(super) const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// What the child of [`super::create`] does, in order.
#[derive(Debug)]
pub(super) struct ContainerPlan {
    /// The namespaces clone creates (without `CLONE_NEWCGROUP`, see `new_cgroup_ns`).
    pub clone_flags: CloneFlags,
    /// A new cgroup namespace is unshared only once the child is in its cgroups, so that the
    /// namespace's root is the container's cgroup and not the monitor's.
    pub new_cgroup_ns: bool,
    /// A PID namespace to be born in (the pod's), entered by the parent around clone.
    pub pid_ns_path: Option<PathBuf>,
    /// Namespaces to join by path, except the PID namespace: (type, path).
    pub join_ns: Vec<(CloneFlags, PathBuf)>,
    /// Set only when the UTS namespace is new: a joined one is the pod's, already named.
    pub hostname: Option<CString>,
    pub domainname: Option<CString>,
    pub root: PathBuf,
    pub root_readonly: bool,
    /// `linux.rootfs_propagation`, `rslave` by default: applied to `/` before anything is
    /// mounted, and again to the new root when it is a shared kind (see `mounts`).
    pub root_propagation: MsFlags,
    pub overlay: OverlayPlan,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub process: ProcessPlan,
    /// The user namespace the process enters once the root is built (its pod's).
    pub userns: Option<UsernsPlan>,
}

#[derive(Debug)]
pub(super) struct UsernsPlan {
    pub path: PathBuf,
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

impl UsernsPlan {
    fn host_uid(&self, id: u32) -> Option<u32> {
        self.uids.iter().find_map(|m| m.to_host(id))
    }

    fn host_gid(&self, id: u32) -> Option<u32> {
        self.gids.iter().find_map(|m| m.to_host(id))
    }
}

/// An idmapped bind mount (`idmap`, `ridmap`).
#[derive(Debug)]
pub(super) struct IdmapPlan {
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
    /// `ridmap`: the submounts too.
    pub recursive: bool,
    /// The idmapped tree, made by the parent before the clone (see `super::idmap`), which the
    /// child attaches in place of a bind.
    pub tree: Option<RawFd>,
}

#[derive(Debug)]
pub(super) struct OverlayPlan {
    pub lower_base: PathBuf,
    pub data: CString,
}

#[derive(Debug)]
pub(super) struct MountPlan {
    /// As the spec gives it, for messages.
    pub destination: PathBuf,
    /// Relative to the container's root, lexically clean (`..` may remain: it is resolved
    /// inside the root like a symlink is).
    pub target: PathBuf,
    pub kind: MountKind,
    /// Flags for the mount call (no propagation, no `MS_REC` unless `rbind`).
    pub flags: MsFlags,
    /// Flags an option clears (`rw`, `suid`, `exec`…): a bind's remount keeps its source's
    /// other flags.
    pub cleared: MsFlags,
    pub data: Option<CString>,
    pub propagation: Vec<MsFlags>,
    /// `rro`: read-only recursively, with mount_setattr.
    pub recursive_readonly: bool,
    /// Binds only.
    pub idmap: Option<IdmapPlan>,
}

#[derive(Debug)]
pub(super) enum MountKind {
    /// A host path; whether it is a file or a directory is checked in the child, which sees
    /// the mount namespace the source is looked up in.
    Bind {
        source: PathBuf,
    },
    Fs {
        fstype: CString,
        source: CString,
    },
    /// `/sys/fs/cgroup`, shown per [`CgroupMount`].
    Cgroup,
}

#[derive(Debug)]
pub(super) struct DevicePlan {
    /// Relative to the container's root.
    pub target: PathBuf,
    pub kind: SFlag,
    pub dev: libc::dev_t,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The process of a container or of an exec.
#[derive(Debug)]
pub(super) struct ProcessPlan {
    pub args: Vec<CString>,
    /// `args[0]`, for the executable lookup and its messages.
    pub command: String,
    pub env: Vec<CString>,
    pub search_path: String,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub umask: u32,
    pub caps: Option<CapsPlan>,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
    /// Installed last, just before execve; `None` when the spec has none or it allows all.
    pub seccomp: Option<Filters>,
    /// Loading a filter without no_new_privs takes `CAP_SYS_ADMIN` in the effective set: the
    /// process keeps it past the switch to its user, and execve drops it.
    pub seccomp_needs_admin: bool,
    /// `exec <profile>`, for the AppArmor exec attribute.
    pub apparmor: Option<CString>,
    /// The SELinux label, for the exec attribute.
    pub selinux: Option<CString>,
}

/// setrlimit's resource argument: its own type in glibc, an int in musl (the static build).
#[cfg(target_env = "gnu")]
pub(super) type RlimitResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(super) type RlimitResource = libc::c_int;

#[derive(Debug, Clone, Copy)]
pub(super) struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

/// What a spec may ask for (a CDI device's edits put it there) that the embedded executor does
/// not do: refused, so that the container does not run without it. OCI runtime handlers do all
/// of it.
#[allow(deprecated)] // prestart: deprecated by the OCI spec, still checked
fn unsupported(spec: &Spec) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::FailedPrecondition(format!(
            "the embedded executor does not support {what}; run the pod with an OCI runtime \
             handler (runc or crun)"
        )))
    };
    if let Some(hooks) = spec.hooks() {
        let lists = [
            hooks.prestart(),
            hooks.create_runtime(),
            hooks.create_container(),
            hooks.start_container(),
            hooks.poststart(),
            hooks.poststop(),
        ];
        if lists.iter().any(|list| list.as_ref().is_some_and(|l| !l.is_empty())) {
            return refuse("OCI hooks");
        }
    }
    if let Some(linux) = spec.linux() {
        if linux.intel_rdt().is_some() {
            return refuse("Intel RDT (linux.intelRdt)");
        }
        if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
            return refuse("moving network devices into the container (linux.netDevices)");
        }
    }
    Ok(())
}

/// Checks `spec` and turns it into the plan the container's init follows.
pub(super) fn container(
    spec: &Spec,
    rootfs: &Rootfs,
    cgroup: &CgroupMount,
) -> Result<ContainerPlan> {
    let root = spec.root().as_ref().ok_or_else(|| invalid("the spec has no root"))?;
    let root_path = root.path().clone();
    if !root_path.is_absolute() {
        return Err(invalid(format!("root path {} is not absolute", root_path.display())));
    }
    let process = spec.process().as_ref().ok_or_else(|| invalid("the spec has no process"))?;
    let linux = spec.linux().as_ref().ok_or_else(|| invalid("the spec has no linux section"))?;
    unsupported(spec)?;

    let mut clone_flags = CloneFlags::empty();
    let mut new_cgroup_ns = false;
    let mut pid_ns_path = None;
    let mut join_ns = Vec::new();
    let mut new_uts = false;
    let mut userns_path = None;
    for ns in linux.namespaces().iter().flatten() {
        if ns.typ() == LinuxNamespaceType::User {
            let Some(path) = ns.path() else {
                return Err(invalid(
                    "a user namespace of the container's own is not supported: it joins its \
                     pod's, by path",
                ));
            };
            userns_path = Some(path.clone());
            continue;
        }
        let flag = match ns.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            other => return Err(invalid(format!("{other} namespaces are not supported"))),
        };
        match ns.path() {
            None if flag == CloneFlags::CLONE_NEWCGROUP => new_cgroup_ns = true,
            None => {
                new_uts |= flag == CloneFlags::CLONE_NEWUTS;
                clone_flags |= flag;
            }
            Some(_) if flag == CloneFlags::CLONE_NEWNS => {
                // The root filesystem is mounted in the container's mount namespace; in a
                // joined one it would stay visible to whoever else uses it.
                return Err(invalid("joining an existing mount namespace is not supported"));
            }
            Some(path) if flag == CloneFlags::CLONE_NEWPID => pid_ns_path = Some(path.clone()),
            Some(path) => join_ns.push((flag, path.clone())),
        }
    }
    if !clone_flags.contains(CloneFlags::CLONE_NEWNS) {
        return Err(invalid("the spec must ask for a new mount namespace"));
    }
    let userns = match userns_path {
        None => None,
        Some(path) => {
            let list = |l: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMapping> {
                l.iter().flatten().map(IdMapping::from).collect()
            };
            let (uids, gids) = (list(linux.uid_mappings()), list(linux.gid_mappings()));
            if uids.is_empty() || gids.is_empty() {
                return Err(invalid(
                    "joining a user namespace needs its uid and gid mappings in the spec",
                ));
            }
            Some(UsernsPlan { path, uids, gids })
        }
    };

    let root_propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(name) => propagation_flag(name)
            .ok_or_else(|| invalid(format!("unknown rootfs propagation {name:?}")))?,
    };

    let hostname = match spec.hostname() {
        Some(name) if new_uts && !name.is_empty() => Some(cstring("hostname", name.as_bytes())?),
        _ => None,
    };
    let domainname = match spec.domainname() {
        Some(name) if new_uts && !name.is_empty() => Some(cstring("domainname", name.as_bytes())?),
        _ => None,
    };

    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        mounts.push(mount(m, cgroup, userns.as_ref())?);
    }

    Ok(ContainerPlan {
        clone_flags,
        new_cgroup_ns,
        pid_ns_path,
        join_ns,
        hostname,
        domainname,
        root: root_path,
        root_readonly: root.readonly().unwrap_or(false),
        root_propagation,
        overlay: overlay(rootfs)?,
        mounts,
        devices: devices(linux.devices().as_deref().unwrap_or_default(), userns.as_ref())?,
        masked: container_paths("masked path", linux.masked_paths())?,
        readonly: container_paths("readonly path", linux.readonly_paths())?,
        process: self::process(process, linux.seccomp().as_ref())?,
        userns,
    })
}

pub(super) fn overlay(rootfs: &Rootfs) -> Result<OverlayPlan> {
    if rootfs.lower.is_empty() {
        return Err(invalid("the root filesystem has no lower layer"));
    }
    let mut data = Vec::from(&b"lowerdir="[..]);
    for (i, lower) in rootfs.lower.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(overlay_path(lower)?);
    }
    for (key, dir) in [("upperdir", &rootfs.upper), ("workdir", &rootfs.work)] {
        if !dir.is_absolute() {
            return Err(invalid(format!("overlay {key} {} is not absolute", dir.display())));
        }
        data.extend_from_slice(format!(",{key}=").as_bytes());
        data.extend_from_slice(overlay_path(dir)?);
    }
    if data.len() > MAX_MOUNT_DATA {
        return Err(invalid(format!(
            "overlay options are {} bytes, over the kernel's limit of {MAX_MOUNT_DATA}",
            data.len()
        )));
    }
    Ok(OverlayPlan {
        lower_base: rootfs.lower_base.clone(),
        data: cstring("overlay options", &data)?,
    })
}

/// Overlayfs splits its options on `,` and its layer lists on `:`; escaping them is possible
/// but the paths berth makes never need it, so they are refused rather than half-supported.
fn overlay_path(path: &Path) -> Result<&[u8]> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\' | 0)) {
        return Err(invalid(format!("overlay layer path {:?} cannot be used", path)));
    }
    Ok(bytes)
}

/// An absolute container path made relative to the root. `..` is kept: the child resolves it
/// inside the root, where it cannot climb above `/`.
fn container_relative(what: &str, path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(invalid(format!("{what} {} is not absolute", path.display())));
    }
    let rel: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.as_os_str().as_bytes().contains(&0) {
        return Err(invalid(format!("{what} {} contains a NUL byte", path.display())));
    }
    Ok(rel)
}

fn container_paths(what: &str, paths: &Option<Vec<String>>) -> Result<Vec<PathBuf>> {
    paths
        .iter()
        .flatten()
        .map(|p| {
            let path = PathBuf::from(p);
            container_relative(what, &path)?;
            Ok(path)
        })
        .collect()
}

fn propagation_flag(name: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

/// The fstab options that are mount flags: (name, clears the flag, flag).
const FLAG_OPTIONS: &[(&str, bool, MsFlags)] = &[
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("suid", true, MsFlags::MS_NOSUID),
    ("nodev", false, MsFlags::MS_NODEV),
    ("dev", true, MsFlags::MS_NODEV),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("atime", true, MsFlags::MS_NOATIME),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("nosymfollow", false, MS_NOSYMFOLLOW),
    ("symfollow", true, MS_NOSYMFOLLOW),
    ("bind", false, MsFlags::MS_BIND),
    ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
];

/// Options that only matter to other runtimes or to mount helpers.
const IGNORED_OPTIONS: &[&str] = &["defaults", "tmpcopyup", "rrw", "_netdev", "nofail", "auto"];

pub(super) fn mount(
    m: &oci_spec::runtime::Mount,
    cgroup: &CgroupMount,
    userns: Option<&UsernsPlan>,
) -> Result<MountPlan> {
    let destination = m.destination().clone();
    let target = container_relative("mount destination", &destination)?;
    if target.as_os_str().is_empty() {
        return Err(invalid("a mount cannot be placed on the container's root"));
    }
    let mut flags = MsFlags::empty();
    let mut cleared = MsFlags::empty();
    let mut propagation = Vec::new();
    let mut recursive_readonly = false;
    let mut idmap = None;
    let mut data = Vec::new();
    for option in m.options().iter().flatten() {
        let option = option.as_str();
        if let Some((_, clear, flag)) = FLAG_OPTIONS.iter().find(|(name, ..)| *name == option) {
            if *clear {
                flags.remove(*flag);
                cleared.insert(*flag);
            } else {
                flags.insert(*flag);
                cleared.remove(*flag);
            }
        } else if let Some(flag) = propagation_flag(option) {
            propagation.push(flag);
        } else if option == "rro" {
            recursive_readonly = true;
        } else if matches!(option, "idmap" | "ridmap") {
            idmap = Some(option == "ridmap");
        } else if IGNORED_OPTIONS.contains(&option) || option.starts_with("x-") {
        } else {
            data.push(option);
        }
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let kind = if typ == "bind" || flags.contains(MsFlags::MS_BIND) {
        flags.insert(MsFlags::MS_BIND);
        let source = m.source().clone().ok_or_else(|| {
            invalid(format!("bind mount {} has no source", destination.display()))
        })?;
        if !source.is_absolute() {
            return Err(invalid(format!(
                "bind mount {}: source {} is not absolute",
                destination.display(),
                source.display()
            )));
        }
        MountKind::Bind { source }
    } else if idmap.is_some() {
        return Err(invalid(format!(
            "mount {}: only bind mounts can be idmapped",
            destination.display()
        )));
    } else if matches!(typ, "cgroup" | "cgroup2") {
        if let CgroupMount::V1(controllers) = cgroup {
            for (name, _) in controllers {
                if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                    return Err(invalid(format!("cgroup mount name {name:?} cannot be used")));
                }
            }
        }
        MountKind::Cgroup
    } else if typ.is_empty() {
        return Err(invalid(format!("mount {} has no type", destination.display())));
    } else {
        let source = m.source().as_deref().map(|s| s.as_os_str().as_bytes()).unwrap_or(b"none");
        MountKind::Fs {
            fstype: cstring("mount type", typ.as_bytes())?,
            source: cstring("mount source", source)?,
        }
    };
    let data: Vec<String> = match (&kind, userns) {
        (MountKind::Fs { fstype, .. }, Some(userns)) => {
            owner_options(&destination, fstype.to_bytes() == b"tmpfs", &data, userns)?
        }
        _ => data.iter().map(|d| d.to_string()).collect(),
    };
    let data = match data.is_empty() {
        true => None,
        false => Some(cstring("mount options", data.join(",").as_bytes())?),
    };
    let idmap = match idmap {
        None => None,
        Some(recursive) => Some(idmap_plan(m, userns, recursive)?),
    };
    Ok(MountPlan {
        destination,
        target,
        kind,
        flags,
        cleared,
        data,
        propagation,
        recursive_readonly,
        idmap,
    })
}

/// The mappings of an idmapped bind: its own, else those of the user namespace the container
/// joins (as the runtime spec allows).
fn idmap_plan(
    m: &oci_spec::runtime::Mount,
    userns: Option<&UsernsPlan>,
    recursive: bool,
) -> Result<IdmapPlan> {
    let list = |l: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMapping> {
        l.iter().flatten().map(IdMapping::from).collect()
    };
    let (uids, gids) = match (list(m.uid_mappings()), list(m.gid_mappings()), userns) {
        (uids, gids, _) if !uids.is_empty() && !gids.is_empty() => (uids, gids),
        (uids, gids, Some(userns)) if uids.is_empty() && gids.is_empty() => {
            (userns.uids.clone(), userns.gids.clone())
        }
        _ => {
            return Err(invalid(format!(
                "mount {}: an idmapped mount needs uid and gid mappings (its own, or those of \
                 the container's user namespace)",
                m.destination().display()
            )))
        }
    };
    crate::userns::check_mappings(&uids, &format!("mount {} uid", m.destination().display()))?;
    crate::userns::check_mappings(&gids, &format!("mount {} gid", m.destination().display()))?;
    Ok(IdmapPlan { uids, gids, recursive, tree: None })
}

/// A file system's `uid=` and `gid=` options, which the kernel reads in the user namespace of
/// whoever mounts (the node's, here), as the node's ids the container's map to; a tmpfs
/// without them gets the container root's, as it would have if its root had mounted it.
fn owner_options(
    destination: &Path,
    tmpfs: bool,
    data: &[&str],
    userns: &UsernsPlan,
) -> Result<Vec<String>> {
    let unmapped = |what: &str, id: u32| {
        invalid(format!(
            "mount {}: {what} {id} is not mapped in the container's user namespace",
            destination.display()
        ))
    };
    let (mut uid_set, mut gid_set) = (false, false);
    let mut out = Vec::with_capacity(data.len() + 2);
    for option in data {
        let translated = if let Some(value) = option.strip_prefix("uid=") {
            uid_set = true;
            let id = value.parse::<u32>().map_err(|_| invalid(format!("bad option {option}")))?;
            format!("uid={}", userns.host_uid(id).ok_or_else(|| unmapped("uid", id))?)
        } else if let Some(value) = option.strip_prefix("gid=") {
            gid_set = true;
            let id = value.parse::<u32>().map_err(|_| invalid(format!("bad option {option}")))?;
            format!("gid={}", userns.host_gid(id).ok_or_else(|| unmapped("gid", id))?)
        } else {
            option.to_string()
        };
        out.push(translated);
    }
    if tmpfs {
        if let (false, Some(uid)) = (uid_set, userns.host_uid(0)) {
            out.push(format!("uid={uid}"));
        }
        if let (false, Some(gid)) = (gid_set, userns.host_gid(0)) {
            out.push(format!("gid={gid}"));
        }
    }
    Ok(out)
}

/// The devices every container has (as runc and the OCI spec list them): null, zero, full,
/// random, urandom, tty.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("dev/null", 1, 3),
    ("dev/zero", 1, 5),
    ("dev/full", 1, 7),
    ("dev/random", 1, 8),
    ("dev/urandom", 1, 9),
    ("dev/tty", 5, 0),
];

fn devices(
    spec_devices: &[oci_spec::runtime::LinuxDevice],
    userns: Option<&UsernsPlan>,
) -> Result<Vec<DevicePlan>> {
    let mut plans: Vec<DevicePlan> = DEFAULT_DEVICES
        .iter()
        .map(|(path, major, minor)| DevicePlan {
            target: PathBuf::from(path),
            kind: SFlag::S_IFCHR,
            dev: libc::makedev(*major as u32, *minor as u32),
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    for d in spec_devices {
        let target = container_relative("device path", d.path())?;
        if target.file_name().is_none() || target.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(format!("device path {} cannot be used", d.path().display())));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(invalid(format!("device {}: type a", d.path().display())))
            }
        };
        let (major, minor) = (u32::try_from(d.major()), u32::try_from(d.minor()));
        let (Ok(major), Ok(minor)) = (major, minor) else {
            return Err(invalid(format!("device {}: bad major/minor", d.path().display())));
        };
        plans.retain(|p| p.target != target);
        plans.push(DevicePlan {
            target,
            kind,
            dev: libc::makedev(major, minor),
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    if let Some(userns) = userns {
        for device in &mut plans {
            let unmapped = |what: &str, id: u32| {
                invalid(format!(
                    "device /{}: its {what} {id} is not mapped in the container's user namespace",
                    device.target.display()
                ))
            };
            device.uid = userns.host_uid(device.uid).ok_or_else(|| unmapped("uid", device.uid))?;
            device.gid = userns.host_gid(device.gid).ok_or_else(|| unmapped("gid", device.gid))?;
        }
    }
    Ok(plans)
}

/// Checks a process (a container's or an exec's) and converts it for the child, with the
/// container's seccomp profile compiled.
pub(super) fn process(process: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<ProcessPlan> {
    let args_in = process.args().as_deref().unwrap_or_default();
    let Some(command) = args_in.first().filter(|a| !a.is_empty()) else {
        return Err(invalid("the process has no command"));
    };
    let args =
        args_in.iter().map(|a| cstring("an argument", a.as_bytes())).collect::<Result<_>>()?;
    let env_in = process.env().as_deref().unwrap_or_default();
    let env = env_in.iter().map(|e| cstring("an environment variable", e.as_bytes()));
    let search_path = env_in
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let cwd = process.cwd().clone();
    if !cwd.is_absolute() {
        return Err(invalid(format!("working directory {} is not absolute", cwd.display())));
    }
    container_relative("working directory", &cwd)?;
    let user = process.user();
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit { resource: rlimit_resource(r.typ()), soft: r.soft(), hard: r.hard() })
        .collect();
    let caps = process.capabilities().as_ref().map(capabilities::plan).transpose()?;
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let seccomp = seccomp.map(crate::seccomp::compile).transpose()?.filter(|f| !f.is_empty());
    let seccomp_needs_admin = seccomp.is_some()
        && !no_new_privs
        && caps.as_ref().is_some_and(|c| !c.effective.contains(&caps::Capability::CAP_SYS_ADMIN));
    if seccomp.is_some() && !no_new_privs && caps.is_none() && user.uid() != 0 {
        return Err(invalid(
            "a seccomp filter for a process that is not root needs no_new_privileges or \
             capabilities",
        ));
    }
    let attr = |what: &str, value: Option<String>| {
        value.filter(|v| !v.is_empty()).map(|v| cstring(what, v.as_bytes())).transpose()
    };
    let apparmor =
        attr("AppArmor profile", process.apparmor_profile().as_ref().map(|p| format!("exec {p}")))?;
    let selinux = attr("SELinux label", process.selinux_label().clone())?;
    Ok(ProcessPlan {
        args,
        command: command.clone(),
        env: env.collect::<Result<_>>()?,
        search_path,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask().unwrap_or(DEFAULT_UMASK) & 0o777,
        caps,
        no_new_privs,
        rlimits,
        oom_score_adj: process.oom_score_adj(),
        terminal: process.terminal().unwrap_or(false),
        seccomp,
        seccomp_needs_admin,
        apparmor,
        selinux,
    })
}

fn rlimit_resource(typ: PosixRlimitType) -> RlimitResource {
    match typ {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn plan_of(typ: &str, options: &[&str]) -> Result<MountPlan> {
        let m = MountBuilder::default()
            .destination("/data")
            .typ(typ)
            .source("/src")
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        mount(&m, &CgroupMount::V2, None)
    }

    #[test]
    fn mount_options_become_flags_data_and_propagation() {
        let p = plan_of("tmpfs", &["nosuid", "ro", "rw", "mode=755", "size=1k", "rslave"]).unwrap();
        assert_eq!(p.flags, MsFlags::MS_NOSUID);
        assert_eq!(p.cleared, MsFlags::MS_RDONLY, "the last of ro and rw wins");
        assert_eq!(p.data.unwrap().to_str().unwrap(), "mode=755,size=1k");
        assert_eq!(p.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(p.target, PathBuf::from("data"));

        let p = plan_of("none", &["rbind", "ro", "rro"]).unwrap();
        assert!(matches!(p.kind, MountKind::Bind { .. }));
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert!(p.recursive_readonly);
        // A CRI mount's options: flags the remount sets, and none it clears.
        let p = plan_of("bind", &["rbind", "rprivate", "ro", "noexec", "nosuid", "nodev"]).unwrap();
        let wanted =
            MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC | wanted);
        assert_eq!(p.cleared, MsFlags::empty());
        let p = plan_of("bind", &["rbind", "exec", "dev"]).unwrap();
        assert_eq!(p.cleared, MsFlags::MS_NOEXEC | MsFlags::MS_NODEV);
        // No mappings of its own and no user namespace to take them from.
        assert!(plan_of("none", &["bind", "idmap"]).is_err());
        assert!(plan_of("tmpfs", &["idmap"]).is_err());
    }

    fn userns() -> UsernsPlan {
        let m = |container_id, host_id, length| IdMapping { container_id, host_id, length };
        UsernsPlan {
            path: "/ns/user".into(),
            uids: vec![m(0, 65536, 65536)],
            gids: vec![m(0, 131_072, 10)],
        }
    }

    #[test]
    fn in_a_user_namespace_owners_are_the_nodes_ids_of_the_containers() {
        let tmpfs = MountBuilder::default()
            .destination("/dev")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_string(), "mode=755".to_string()])
            .build()
            .unwrap();
        let p = mount(&tmpfs, &CgroupMount::V2, Some(&userns())).unwrap();
        assert_eq!(p.data.unwrap().to_str().unwrap(), "mode=755,uid=65536,gid=131072");
        let devpts = MountBuilder::default()
            .destination("/dev/pts")
            .typ("devpts")
            .source("devpts")
            .options(vec!["newinstance".to_string(), "gid=5".to_string()])
            .build()
            .unwrap();
        let p = mount(&devpts, &CgroupMount::V2, Some(&userns())).unwrap();
        assert_eq!(p.data.unwrap().to_str().unwrap(), "newinstance,gid=131077");
        let unmapped = MountBuilder::default()
            .destination("/x")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["gid=10".to_string()])
            .build()
            .unwrap();
        let err = mount(&unmapped, &CgroupMount::V2, Some(&userns())).unwrap_err();
        assert!(err.to_string().contains("gid 10 is not mapped"), "{err}");
        // Outside a user namespace, options stay as they are.
        let p = mount(&devpts, &CgroupMount::V2, None).unwrap();
        assert_eq!(p.data.unwrap().to_str().unwrap(), "newinstance,gid=5");

        let nodes = devices(&[], Some(&userns())).unwrap();
        assert!(nodes.iter().all(|d| (d.uid, d.gid) == (65536, 131_072)), "{nodes:?}");
        assert!(devices(&[], None).unwrap().iter().all(|d| (d.uid, d.gid) == (0, 0)));

        // An idmapped bind takes the container's mappings when it has none of its own.
        let bind = MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/src")
            .options(vec!["rbind".to_string(), "ridmap".to_string()])
            .build()
            .unwrap();
        let p = mount(&bind, &CgroupMount::V2, Some(&userns())).unwrap();
        let idmap = p.idmap.unwrap();
        assert!(idmap.recursive);
        assert_eq!(idmap.uids, userns().uids);
        assert!(mount(&bind, &CgroupMount::V2, None).is_err());
    }

    #[test]
    fn overlay_options_are_checked() {
        let rootfs = Rootfs {
            lower_base: "/s".into(),
            lower: vec!["a/fs".into(), "b/fs".into()],
            upper: "/u".into(),
            work: "/w".into(),
        };
        let o = overlay(&rootfs).unwrap();
        assert_eq!(o.data.to_str().unwrap(), "lowerdir=a/fs:b/fs,upperdir=/u,workdir=/w");
        let bad = Rootfs { lower: vec!["a:b".into()], ..rootfs.clone() };
        assert!(overlay(&bad).is_err());
        let many = Rootfs { lower: vec![PathBuf::from("x".repeat(100)); 50], ..rootfs };
        assert!(overlay(&many).is_err());
    }
}
