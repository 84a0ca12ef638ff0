//! A container's OCI runtime spec, built from its CRI config, its image's config, the user
//! resolved from the image's files and the pod it joins.
//!
//! The kubelet, and workloads written against it, assume containerd's CRI plugin: its default
//! capabilities, mounts, masked paths and device rules, and its precedence rules for command,
//! args, env and working dir. Every choice here follows containerd unless a comment says why
//! not; the spec is plain data, so that it can be tested without starting anything.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;
use nix::sys::stat::{major, minor};
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxHugepageLimit, LinuxMemory, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, Mount as OciMount, Process, Root, Spec, User,
};

use crate::container::types::{
    ContainerConfig, Device, ImageRunConfig, Mount, Propagation, ResolvedUser, Resources,
    SecurityContext, BIND_OPTIONS,
};
use crate::error::{Error, Result};
use crate::lsm::{self, LsmHost};
use crate::seccomp;
use crate::userns::{self, UserNamespace};

/// The `PATH` a container gets when neither its image nor its config sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability, indexed by its number (`CAP_CHOWN` is 0, `CAP_CHECKPOINT_RESTORE` 40).
const CAPABILITIES: [(&str, Capability); 41] = [
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("KILL", Capability::Kill),
    ("SETGID", Capability::Setgid),
    ("SETUID", Capability::Setuid),
    ("SETPCAP", Capability::Setpcap),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_RAW", Capability::NetRaw),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("MKNOD", Capability::Mknod),
    ("LEASE", Capability::Lease),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("SETFCAP", Capability::Setfcap),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("AUDIT_READ", Capability::AuditRead),
    ("PERFMON", Capability::Perfmon),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
];

/// containerd's default set (Docker's, without inheritable since CVE-2022-24769).
pub(crate) const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const DEFAULT_READONLY_PATHS: [&str; 5] =
    ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// runc's default device rules (mknod of anything, then the basic character devices), less
/// `/dev/net/tun`, which containerd leaves out of an unprivileged container.
const DEFAULT_DEVICE_RULES: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 11] = [
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"), // null
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"), // zero
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"), // full
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"), // tty
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"), // console
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"), // ptmx
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"), // random
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"), // urandom
    (LinuxDeviceType::C, Some(136), None, "rwm"),  // /dev/pts/*
];

/// Directories of `/dev` whose nodes are not devices to hand over (containerd's list).
const SKIPPED_DEV_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// The PID namespace a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// Its own.
    New,
    /// The node's.
    Host,
    /// The one at this path (`/proc/<pid>/ns/pid` of the pod's or the target's first process).
    Join(PathBuf),
}

/// What a container takes from its pod.
#[derive(Debug, Clone)]
pub struct PodContext {
    pub hostname: String,
    /// Namespace files to join; `None`: the node's.
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: PidNamespace,
    /// A new cgroup namespace (cgroup v2 hosts).
    pub cgroup_ns: bool,
    /// The pod's files, bound over the container's `/etc/hosts`, `/etc/resolv.conf` and
    /// `/etc/hostname`.
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    /// The pod's `/dev/shm`; `None` (host IPC): the node's.
    pub shm: Option<PathBuf>,
    pub sandbox_id: String,
    /// The pod's own user namespace, which the container joins; `None`: the node's.
    pub user: Option<PodUserNamespace>,
}

/// A pod's user namespace as its containers' specs name it.
#[derive(Debug, Clone)]
pub struct PodUserNamespace {
    /// The file holding it.
    pub path: PathBuf,
    pub mappings: UserNamespace,
}

pub struct SpecInputs<'a> {
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    pub image: &'a ImageRunConfig,
    pub user: &'a ResolvedUser,
    pub pod: &'a PodContext,
    /// `spec.root.path`.
    pub rootfs: &'a Path,
    /// `spec.linux.cgroupsPath`; informational, berth places the process itself.
    pub cgroup_path: &'a str,
    /// berthd's own `oom_score_adj`: a container may not ask for less, which only a more
    /// privileged process could grant.
    pub oom_score_adj_floor: i64,
}

/// Builds the container's spec. Reads the host only for device nodes (`config.devices`, and
/// all of `/dev` for a privileged container), to resolve links in mount sources and for the
/// flags of the node's mounts holding them.
pub fn build(inputs: &SpecInputs) -> Result<Spec> {
    let config = inputs.config;
    let security = &config.security;
    let privileged = security.privileged;

    if inputs.pod.user.is_some() {
        if let Some(m) = config.mounts.iter().find(|m| m.propagation == Propagation::Bidirectional)
        {
            // The container's mount namespace belongs to the pod's user namespace, where the
            // kernel turns every shared mount it is copied from into a slave.
            return Err(Error::InvalidArgument(format!(
                "mount {}: bidirectional propagation is not possible in a pod with a user \
                 namespace of its own",
                m.container_path
            )));
        }
    }
    let (mounts, rootfs_propagation) = mounts(inputs)?;
    let devices = devices(&config.devices, privileged)?;

    let process = process(inputs, &LsmHost::detect())?;
    let bounding: Vec<String> = process
        .capabilities()
        .as_ref()
        .and_then(|caps| caps.bounding().as_ref())
        .map(|set| set.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    let seccomp = seccomp::for_container(&security.seccomp, privileged, &bounding)?;

    let mut linux = Linux::default();
    linux
        .set_resources(Some(resources(&config.resources, privileged, &devices)?))
        .set_cgroups_path(Some(PathBuf::from(inputs.cgroup_path)))
        .set_namespaces(Some(namespaces(inputs.pod)))
        .set_devices((!devices.is_empty()).then(|| devices.into_iter().map(|d| d.0).collect()))
        .set_rootfs_propagation(rootfs_propagation.map(str::to_string))
        .set_seccomp(seccomp)
        .set_sysctl(None)
        .set_uid_mappings(inputs.pod.user.as_ref().map(|u| u.mappings.oci_uids()))
        .set_gid_mappings(inputs.pod.user.as_ref().map(|u| u.mappings.oci_gids()));
    if privileged {
        linux.set_masked_paths(None).set_readonly_paths(None);
    } else {
        linux
            .set_masked_paths(Some(paths_or(&security.masked_paths, &DEFAULT_MASKED_PATHS)))
            .set_readonly_paths(Some(paths_or(&security.readonly_paths, &DEFAULT_READONLY_PATHS)));
    }

    let mut root = Root::default();
    root.set_path(inputs.rootfs.to_path_buf()).set_readonly(Some(security.readonly_rootfs));

    let mut annotations: HashMap<String, String> =
        config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // After the config's, so that a client cannot pass for another kind of container.
    for (key, value) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.sandbox-id", inputs.pod.sandbox_id.as_str()),
        ("io.kubernetes.cri.container-name", config.metadata.name.as_str()),
        ("io.kubernetes.cri.image-name", config.image.as_str()),
    ] {
        annotations.insert(key.to_string(), value.to_string());
    }

    let mut spec = Spec::default();
    spec.set_version(oci_spec::runtime::VERSION.to_string())
        .set_root(Some(root))
        .set_mounts(Some(mounts))
        .set_process(Some(process))
        // runc refuses a hostname without a UTS namespace of the container's own; the pod's
        // already has it.
        .set_hostname(inputs.pod.uts.as_ref().map(|_| inputs.pod.hostname.clone()))
        .set_domainname(None)
        .set_hooks(None)
        .set_annotations(Some(annotations))
        .set_linux(Some(linux));
    Ok(spec)
}

/// The process's argv, as containerd derives it: the config's command replaces the image's
/// entrypoint *and* cmd; the config's args replace only the cmd.
pub fn process_args(config: &ContainerConfig, image: &ImageRunConfig) -> Result<Vec<String>> {
    let mut argv = Vec::new();
    if !config.command.is_empty() {
        argv.extend(config.command.iter().cloned());
        argv.extend(config.args.iter().cloned());
    } else {
        // `ENTRYPOINT [""]` is how a Dockerfile resets an inherited entrypoint.
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            argv.extend(image.entrypoint.iter().cloned());
        }
        let rest = if config.args.is_empty() { &image.cmd } else { &config.args };
        argv.extend(rest.iter().cloned());
    }
    if argv.is_empty() {
        return Err(Error::InvalidArgument("no command specified".into()));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::InvalidArgument("the command contains a NUL byte".into()));
    }
    Ok(argv)
}

/// The signal that stops the container: the config's, else the image's `STOPSIGNAL`, else
/// SIGTERM. A name may lack the `SIG` prefix, and a number is taken as it is.
pub fn stop_signal(config: &ContainerConfig, image: &ImageRunConfig) -> Result<i32> {
    let name = [&config.stop_signal, &image.stop_signal].into_iter().find(|s| !s.is_empty());
    match name {
        Some(name) => parse_signal(name),
        None => Ok(Signal::SIGTERM as i32),
    }
}

fn parse_signal(raw: &str) -> Result<i32> {
    let invalid = || Error::InvalidArgument(format!("unknown stop signal {raw:?}"));
    let trimmed = raw.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&number) { Ok(number) } else { Err(invalid()) };
    }
    let upper = trimmed.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let realtime = |base: i32, offset: &str, sign: i32| -> Result<i32> {
        let offset: i32 =
            if offset.is_empty() { 0 } else { offset.parse().map_err(|_| invalid())? };
        let number = base + sign * offset;
        if (SIGRTMIN..=SIGRTMAX).contains(&number) {
            Ok(number)
        } else {
            Err(invalid())
        }
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return realtime(SIGRTMIN, rest.strip_prefix('+').unwrap_or(rest), 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return realtime(SIGRTMAX, rest.strip_prefix('-').unwrap_or(rest), -1);
    }
    Signal::from_str(&format!("SIG{bare}")).map(|s| s as i32).map_err(|_| invalid())
}

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

fn host_path(m: &Mount) -> Result<&Path> {
    let host = Path::new(&m.host_path);
    if !host.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "mount {}: host path {:?} is not absolute",
            m.container_path, m.host_path
        )));
    }
    Ok(host)
}

fn process(inputs: &SpecInputs, lsm: &LsmHost) -> Result<Process> {
    let config = inputs.config;
    let security = &config.security;
    let apparmor = lsm::apparmor_profile(&security.apparmor, security.privileged, lsm)?;
    if apparmor.as_deref() == Some(lsm::DEFAULT_APPARMOR_PROFILE) {
        lsm::ensure_default_apparmor_profile(lsm)?;
    }
    let selinux = lsm::selinux_label(security.selinux.as_ref(), lsm)?;

    let mut user = User::default();
    user.set_uid(inputs.user.uid)
        .set_gid(inputs.user.gid)
        .set_umask(None)
        .set_username(None)
        .set_additional_gids(
            (!inputs.user.additional_gids.is_empty()).then(|| inputs.user.additional_gids.clone()),
        );

    let mut process = Process::default();
    process
        .set_terminal(Some(config.tty))
        .set_console_size(None)
        .set_user(user)
        .set_args(Some(process_args(config, inputs.image)?))
        .set_env(Some(process_env(config, inputs.image, &inputs.pod.hostname)?))
        .set_cwd(process_cwd(config, inputs.image)?)
        .set_capabilities(Some(capabilities(security)?))
        // As containerd's CRI plugin (which removed the default spec's RLIMIT_NOFILE 1024 so
        // as not to differ from Docker): no rlimits of our own. A container inherits those of
        // its pod's monitor, which are berthd's when the monitor was started.
        .set_rlimits(None)
        .set_no_new_privileges(Some(security.no_new_privs))
        .set_apparmor_profile(apparmor)
        .set_selinux_label(selinux)
        .set_oom_score_adj(oom_score_adj(
            config.resources.oom_score_adj,
            inputs.oom_score_adj_floor,
        )?);
    Ok(process)
}

/// containerd's order: the default `PATH`, `HOSTNAME`, the image's env, the config's; a later
/// entry replaces an earlier one of the same key in place, and an image entry without `=`
/// unsets the key.
fn process_env(
    config: &ContainerConfig,
    image: &ImageRunConfig,
    hostname: &str,
) -> Result<Vec<String>> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}")];
    for entry in &image.env {
        set_env(&mut env, entry.clone());
    }
    for (key, value) in &config.envs {
        if key.is_empty() || key.contains('=') {
            return Err(Error::InvalidArgument(format!(
                "invalid environment variable name {key:?}"
            )));
        }
        set_env(&mut env, format!("{key}={value}"));
    }
    if env.iter().any(|e| e.contains('\0')) {
        return Err(Error::InvalidArgument("the environment contains a NUL byte".into()));
    }
    Ok(env)
}

fn set_env(env: &mut Vec<String>, entry: String) {
    fn key(entry: &str) -> &str {
        entry.split_once('=').map_or(entry, |(k, _)| k)
    }
    if !entry.contains('=') {
        env.retain(|e| key(e) != entry);
        return;
    }
    match env.iter().position(|e| key(e) == key(&entry)) {
        Some(i) => env[i] = entry,
        None => env.push(entry),
    }
}

fn process_cwd(config: &ContainerConfig, image: &ImageRunConfig) -> Result<PathBuf> {
    let cwd = [&config.working_dir, &image.working_dir]
        .into_iter()
        .find(|d| !d.is_empty())
        .map_or("/", |d| d.as_str());
    if !cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!("working dir {cwd:?} is not absolute")));
    }
    Ok(PathBuf::from(cwd))
}

fn oom_score_adj(requested: i64, floor: i64) -> Result<Option<i32>> {
    const RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;
    if !RANGE.contains(&requested) {
        return Err(Error::InvalidArgument(format!(
            "oom_score_adj {requested} is outside -1000..=1000"
        )));
    }
    let floor = floor.clamp(*RANGE.start(), *RANGE.end());
    if requested == 0 && floor <= 0 {
        return Ok(None);
    }
    // In range after the checks above, so the conversion cannot fail.
    Ok(i32::try_from(requested.max(floor)).ok())
}

fn capability(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, c)| *c)
        .ok_or_else(|| Error::InvalidArgument(format!("unknown capability {name:?}")))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// "All" capabilities: every one this kernel knows (up to `cap_last_cap`) that berthd itself
/// may pass on (its bounding set), as containerd takes its own: a capability berthd lacks
/// cannot be given, and asking the kernel for it fails the container.
fn all_capabilities() -> Capabilities {
    let last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(CAPABILITIES.len() - 1);
    let bounding = fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let mask = status.lines().find_map(|line| line.strip_prefix("CapBnd:"))?;
        u64::from_str_radix(mask.trim(), 16).ok()
    });
    CAPABILITIES
        .iter()
        .enumerate()
        .take(last + 1)
        .filter(|(number, _)| bounding.is_none_or(|mask| mask & (1u64 << number) != 0))
        .map(|(_, (_, c))| *c)
        .collect()
}

/// containerd's rules: `ALL` in add gives every capability and `ALL` in drop takes every one,
/// both before the named ones, which are then added and, last, dropped; so add ALL + drop X is
/// all but X, and drop ALL + add X is just X.
fn capabilities(security: &SecurityContext) -> Result<LinuxCapabilities> {
    let requested = &security.capabilities;
    let mut set: Capabilities;
    let mut ambient = Capabilities::new();
    if security.privileged {
        // As containerd: a privileged container gets everything, whatever it asked for.
        set = all_capabilities();
    } else {
        set = DEFAULT_CAPABILITIES.into_iter().collect();
        if requested.add.iter().any(|c| is_all(c)) {
            set = all_capabilities();
        }
        if requested.drop.iter().any(|c| is_all(c)) {
            set.clear();
        }
        for name in requested.add.iter().filter(|c| !is_all(c)) {
            set.insert(capability(name)?);
        }
        for name in requested.drop.iter().filter(|c| !is_all(c)) {
            set.remove(&capability(name)?);
        }
        for name in requested.add_ambient.iter().filter(|c| !is_all(c)) {
            ambient.insert(capability(name)?);
        }
        // The kernel keeps an ambient capability only while it is also permitted (and
        // bounding, for the exec); one that was asked for is wanted there too.
        set.extend(ambient.iter().copied());
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(Some(ambient.clone()))
        .set_ambient(Some(ambient));
    Ok(caps)
}

fn paths_or(requested: &Option<Vec<String>>, defaults: &[&str]) -> Vec<String> {
    match requested {
        Some(paths) => paths.clone(),
        None => defaults.iter().map(|p| p.to_string()).collect(),
    }
}

fn namespaces(pod: &PodContext) -> Vec<LinuxNamespace> {
    fn namespace(typ: LinuxNamespaceType, path: Option<&PathBuf>) -> LinuxNamespace {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ).set_path(path.cloned());
        ns
    }
    let mut list = Vec::new();
    // First: runtimes join in this order, and the user namespace gives the rights to the rest.
    if let Some(user) = &pod.user {
        list.push(namespace(LinuxNamespaceType::User, Some(&user.path)));
    }
    match &pod.pid {
        PidNamespace::New => list.push(namespace(LinuxNamespaceType::Pid, None)),
        PidNamespace::Join(path) => list.push(namespace(LinuxNamespaceType::Pid, Some(path))),
        PidNamespace::Host => {}
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &pod.net),
        (LinuxNamespaceType::Ipc, &pod.ipc),
        (LinuxNamespaceType::Uts, &pod.uts),
    ] {
        if let Some(path) = path {
            list.push(namespace(typ, Some(path)));
        }
    }
    list.push(namespace(LinuxNamespaceType::Mount, None));
    if pod.cgroup_ns {
        list.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    list
}

fn oci_mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_string()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn default_mounts(pod: &PodContext, privileged: bool, readonly_rootfs: bool) -> Vec<OciMount> {
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
fn container_path(path: &str, what: &str) -> Result<PathBuf> {
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

fn depth(path: &Path) -> usize {
    path.components().filter(|c| matches!(c, Component::Normal(_))).count()
}

fn cri_mount(m: &Mount) -> Result<OciMount> {
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
/// built from. Its files are already idmapped for a pod's user namespace; the bind is not.
fn image_volume_mount(m: &Mount, destination: PathBuf) -> Result<OciMount> {
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
fn node_mount_restrictions(path: &Path) -> Vec<&'static str> {
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
fn mounts(inputs: &SpecInputs) -> Result<(Vec<OciMount>, Option<&'static str>)> {
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

/// A device node of the host, as a spec device at `container` path; `None` if not a device.
fn device_node(host: &Path, container: PathBuf) -> io::Result<Option<LinuxDevice>> {
    let meta = fs::symlink_metadata(host)?;
    let file_type = meta.file_type();
    let typ = if file_type.is_char_device() {
        LinuxDeviceType::C
    } else if file_type.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let mut device = LinuxDevice::default();
    device
        .set_path(container)
        .set_typ(typ)
        .set_major(major(rdev) as i64)
        .set_minor(minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Ok(Some(device))
}

/// Every device under a host directory, at the same relative path under `container`; links
/// are not followed and containerd's list of non-device directories is skipped.
fn devices_under(host: &Path, container: &Path, out: &mut Vec<LinuxDevice>) -> Result<()> {
    let entries = fs::read_dir(host).map_err(Error::io("listing devices in", host))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing devices in", host))?;
        let name = entry.file_name();
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io("inspecting", path)(err)),
        };
        if file_type.is_dir() {
            if !SKIPPED_DEV_DIRS.iter().any(|s| name == *s) {
                devices_under(&path, &container.join(&name), out)?;
            }
            continue;
        }
        // The console is the runtime's to set up (a pty when the container has a terminal).
        if name == "console" {
            continue;
        }
        match device_node(&path, container.join(&name)) {
            Ok(Some(device)) => out.push(device),
            Ok(None) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("inspecting", path)(err)),
        }
    }
    Ok(())
}

/// The config's devices (a directory stands for every device under it), with the access each
/// is allowed; for a privileged container all of the host's `/dev` first, as containerd does.
fn devices(requested: &[Device], privileged: bool) -> Result<Vec<(LinuxDevice, String)>> {
    let mut out: Vec<(LinuxDevice, String)> = Vec::new();
    if privileged {
        let mut host = Vec::new();
        devices_under(Path::new("/dev"), Path::new("/dev"), &mut host)?;
        out.extend(host.into_iter().map(|d| (d, "rwm".to_string())));
    }
    for d in requested {
        let container = container_path(&d.container_path, "device")?;
        let access = if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::InvalidArgument(format!(
                "device {}: invalid permissions {:?}",
                d.host_path, d.permissions
            )));
        }
        let host = fs::canonicalize(&d.host_path).map_err(|err| {
            Error::InvalidArgument(format!("device {:?} not found: {err}", d.host_path))
        })?;
        let mut found = Vec::new();
        if host.is_dir() {
            devices_under(&host, &container, &mut found)?;
        } else {
            match device_node(&host, container) {
                Ok(Some(device)) => found.push(device),
                Ok(None) => {
                    return Err(Error::InvalidArgument(format!(
                        "device {:?} is not a device node",
                        d.host_path
                    )))
                }
                Err(err) => {
                    return Err(Error::InvalidArgument(format!(
                        "device {:?} not found: {err}",
                        d.host_path
                    )))
                }
            }
        }
        for device in found {
            // A requested device takes the place of a host device at the same path.
            out.retain(|(d, _)| d.path() != device.path());
            out.push((device, access.to_string()));
        }
    }
    Ok(out)
}

fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    rule
}

fn non_negative(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::InvalidArgument(format!("{what} {value} is negative")))
}

/// The cgroup limits of `r` alone, without device rules: what an update of a running
/// container's (or a pod's) resources writes.
pub(crate) fn limits(r: &Resources) -> Result<LinuxResources> {
    let mut out = resources(r, false, &[])?;
    out.set_devices(None);
    Ok(out)
}

fn resources(
    r: &Resources,
    privileged: bool,
    devices: &[(LinuxDevice, String)],
) -> Result<LinuxResources> {
    let mut out = LinuxResources::default();

    let limit = non_negative(r.memory_limit_in_bytes, "memory limit")?;
    let swap = r.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(Error::InvalidArgument(format!("memory swap limit {swap} is negative")));
    }
    if limit != 0 || swap != 0 {
        let mut memory = LinuxMemory::default();
        if limit != 0 {
            memory.set_limit(Some(r.memory_limit_in_bytes));
        }
        // As containerd: with a limit and no swap setting, memory+swap equals the limit, so
        // that the container does not swap.
        match swap {
            0 => memory.set_swap((limit != 0).then_some(r.memory_limit_in_bytes)),
            swap => memory.set_swap(Some(swap)),
        };
        out.set_memory(Some(memory));
    }

    let shares = non_negative(r.cpu_shares, "cpu shares")?;
    let period = non_negative(r.cpu_period, "cpu period")?;
    if shares != 0
        || period != 0
        || r.cpu_quota != 0
        || !r.cpuset_cpus.is_empty()
        || !r.cpuset_mems.is_empty()
    {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares((shares != 0).then_some(shares))
            .set_quota((r.cpu_quota != 0).then_some(r.cpu_quota))
            .set_period((period != 0).then_some(period))
            .set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()))
            .set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
        out.set_cpu(Some(cpu));
    }

    if !r.hugepage_limits.is_empty() {
        let mut limits = Vec::new();
        for h in &r.hugepage_limits {
            let limit = i64::try_from(h.limit).map_err(|_| {
                Error::InvalidArgument(format!("hugepage limit {} is too large", h.limit))
            })?;
            let mut l = LinuxHugepageLimit::default();
            l.set_page_size(h.page_size.clone()).set_limit(limit);
            limits.push(l);
        }
        out.set_hugepage_limits(Some(limits));
    }

    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    }

    let mut rules = Vec::new();
    if privileged {
        rules.push(device_rule(true, LinuxDeviceType::A, None, None, "rwm"));
    } else {
        rules.push(device_rule(false, LinuxDeviceType::A, None, None, "rwm"));
        for (typ, major, minor, access) in DEFAULT_DEVICE_RULES {
            rules.push(device_rule(true, typ, major, minor, access));
        }
        for (device, access) in devices {
            rules.push(device_rule(
                true,
                device.typ(),
                Some(device.major()),
                Some(device.minor()),
                access,
            ));
        }
    }
    out.set_devices(Some(rules));
    Ok(out)
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes in mountinfo paths.
fn unescape_mountinfo(field: &str) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::container::types::{Capabilities as CriCaps, ContainerMetadata, HugepageLimit};
    use crate::error::ErrorKind;

    type Strs = &'static [&'static str];
    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    type Triples<'a> = Vec<(&'a str, &'a str, &'a str)>;

    fn pod() -> PodContext {
        PodContext {
            hostname: "web-0".into(),
            net: Some("/run/berth/pods/p1/ns/net".into()),
            ipc: Some("/run/berth/pods/p1/ns/ipc".into()),
            uts: Some("/run/berth/pods/p1/ns/uts".into()),
            pid: PidNamespace::New,
            cgroup_ns: false,
            hosts: "/var/lib/berth/pods/p1/hosts".into(),
            resolv_conf: "/var/lib/berth/pods/p1/resolv.conf".into(),
            hostname_file: "/var/lib/berth/pods/p1/hostname".into(),
            shm: Some("/run/berth/pods/p1/shm".into()),
            sandbox_id: "p1".into(),
            user: None,
        }
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            metadata: ContainerMetadata { name: "app".into(), attempt: 0 },
            image: "docker.io/library/busybox:latest".into(),
            command: vec!["/bin/sh".into()],
            ..Default::default()
        }
    }

    fn build_for(config: &ContainerConfig, pod: &PodContext) -> Result<Spec> {
        build_full(config, &ImageRunConfig::default(), pod, 0)
    }

    fn build_full(
        config: &ContainerConfig,
        image: &ImageRunConfig,
        pod: &PodContext,
        floor: i64,
    ) -> Result<Spec> {
        let user = ResolvedUser { uid: 1000, gid: 100, additional_gids: vec![100, 10] };
        build(&SpecInputs {
            id: "c1",
            config,
            image,
            user: &user,
            pod,
            rootfs: Path::new("/run/berth/containers/c1/rootfs"),
            cgroup_path: "/kubepods/pod1/c1",
            oom_score_adj_floor: floor,
        })
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn assert_invalid<T: std::fmt::Debug>(result: Result<T>, naming: &str) {
        match result {
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
                assert!(err.to_string().contains(naming), "{err} should name {naming}");
            }
            Ok(v) => panic!("expected InvalidArgument naming {naming}, got {v:?}"),
        }
    }

    #[test]
    fn args() {
        // (command, args, entrypoint, cmd) → argv or None for an error.
        let cases: &[(Strs, Strs, Strs, Strs, Option<Strs>)] = &[
            (&["sh"], &["-c", "x"], &["ep"], &["cmd"], Some(&["sh", "-c", "x"])),
            (&["sh"], &[], &["ep"], &["cmd"], Some(&["sh"])),
            (&[], &["a"], &["ep", "1"], &["cmd"], Some(&["ep", "1", "a"])),
            (&[], &[], &["ep"], &["cmd", "2"], Some(&["ep", "cmd", "2"])),
            (&[], &[], &[], &["cmd"], Some(&["cmd"])),
            (&[], &["a"], &[], &["cmd"], Some(&["a"])),
            (&[], &[], &[""], &["cmd"], Some(&["cmd"])),
            (&[], &[], &[""], &[], None),
            (&[], &[], &[], &[], None),
        ];
        for (command, args, entrypoint, cmd, want) in cases {
            let config = ContainerConfig {
                command: strings(command),
                args: strings(args),
                ..Default::default()
            };
            let image = ImageRunConfig {
                entrypoint: strings(entrypoint),
                cmd: strings(cmd),
                ..Default::default()
            };
            let got = process_args(&config, &image);
            match want {
                Some(want) => assert_eq!(got.unwrap(), strings(want), "{command:?} {args:?}"),
                None => assert_invalid(got, "no command specified"),
            }
        }
    }

    #[test]
    fn env() {
        let path = format!("PATH={DEFAULT_PATH}");
        // (image env, config envs, expected)
        let cases: Vec<(Vec<&str>, Pairs, Vec<&str>)> = vec![
            (vec![], vec![], vec![&path, "HOSTNAME=web-0"]),
            (
                vec!["PATH=/bin", "A=1"],
                vec![("B", "2")],
                vec!["PATH=/bin", "HOSTNAME=web-0", "A=1", "B=2"],
            ),
            (
                vec!["A=1", "B=1"],
                vec![("A", "2"), ("HOSTNAME", "h"), ("A", "3")],
                vec![&path, "HOSTNAME=h", "A=3", "B=1"],
            ),
            (vec!["A=1", "A"], vec![], vec![&path, "HOSTNAME=web-0"]),
            (vec!["X=a=b"], vec![("Y", "")], vec![&path, "HOSTNAME=web-0", "X=a=b", "Y="]),
        ];
        for (image_env, envs, want) in cases {
            let config = ContainerConfig {
                envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..config()
            };
            let image = ImageRunConfig { env: strings(&image_env), ..Default::default() };
            let spec = build_full(&config, &image, &pod(), 0).unwrap();
            let process = spec.process().as_ref().unwrap();
            assert_eq!(process.env().as_ref().unwrap(), &strings(&want), "{image_env:?} {envs:?}");
        }
        let config = ContainerConfig { envs: vec![("A=B".into(), "1".into())], ..config() };
        assert_invalid(build_for(&config, &pod()), "A=B");
    }

    #[test]
    fn cwd() {
        let cases = [
            ("", "", Some("/")),
            ("", "/srv", Some("/srv")),
            ("/work", "/srv", Some("/work")),
            ("work", "", None),
            ("", "srv", None),
        ];
        for (config_dir, image_dir, want) in cases {
            let config = ContainerConfig { working_dir: config_dir.into(), ..config() };
            let image = ImageRunConfig { working_dir: image_dir.into(), ..Default::default() };
            let got = build_full(&config, &image, &pod(), 0);
            match want {
                Some(want) => {
                    assert_eq!(got.unwrap().process().as_ref().unwrap().cwd(), Path::new(want))
                }
                None => assert_invalid(got, "not absolute"),
            }
        }
    }

    #[test]
    fn process_basics() {
        let config = ContainerConfig {
            tty: true,
            security: SecurityContext { no_new_privs: true, ..Default::default() },
            ..config()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.user().gid(), 100);
        assert_eq!(process.user().additional_gids().as_deref(), Some(&[100, 10][..]));
        assert_eq!(process.rlimits(), &None);
        assert_eq!(process.args().as_deref(), Some(&strings(&["/bin/sh"])[..]));
    }

    #[test]
    fn oom_score_adj_is_clamped_to_the_floor() {
        // (requested, floor, expected); None for an error
        let cases = [
            (0, 0, Some(None)),
            (0, -500, Some(None)),
            (0, 300, Some(Some(300))),
            (-998, -999, Some(Some(-998))),
            (-998, 0, Some(Some(0))),
            (1000, -999, Some(Some(1000))),
            (500, 2000, Some(Some(1000))),
            (1001, 0, None),
            (-1001, 0, None),
        ];
        for (requested, floor, want) in cases {
            let mut config = config();
            config.resources.oom_score_adj = requested;
            let got = build_full(&config, &ImageRunConfig::default(), &pod(), floor);
            match want {
                Some(want) => assert_eq!(
                    got.unwrap().process().as_ref().unwrap().oom_score_adj(),
                    want,
                    "{requested} {floor}"
                ),
                None => assert_invalid(got, "oom_score_adj"),
            }
        }
    }

    #[test]
    fn stop_signals() {
        let cases = [
            ("", "", Some(15)),
            ("SIGKILL", "SIGINT", Some(9)),
            ("", "SIGINT", Some(2)),
            ("", "TERM", Some(15)),
            ("", "15", Some(15)),
            ("sigusr1", "", Some(10)),
            ("SIGRTMIN+3", "", Some(37)),
            ("RTMAX", "", Some(64)),
            ("SIGWHAT", "", None),
            ("0", "", None),
            ("65", "", None),
        ];
        for (configured, image, want) in cases {
            let config = ContainerConfig { stop_signal: configured.into(), ..Default::default() };
            let image = ImageRunConfig { stop_signal: image.into(), ..Default::default() };
            let got = stop_signal(&config, &image);
            match want {
                Some(want) => assert_eq!(got.unwrap(), want, "{configured:?}"),
                None => assert_invalid(got, "signal"),
            }
        }
    }

    fn cap_names(set: &Option<Capabilities>) -> BTreeSet<String> {
        let set = set.as_ref().unwrap();
        CAPABILITIES.iter().filter(|(_, c)| set.contains(c)).map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn capabilities_add_drop() {
        let default: BTreeSet<String> = [
            "CHOWN",
            "DAC_OVERRIDE",
            "FSETID",
            "FOWNER",
            "MKNOD",
            "NET_RAW",
            "SETGID",
            "SETUID",
            "SETFCAP",
            "SETPCAP",
            "NET_BIND_SERVICE",
            "SYS_CHROOT",
            "KILL",
            "AUDIT_WRITE",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        // "All" is what this kernel knows and this process may pass on (its bounding set).
        let everything = all_capabilities();
        let all: BTreeSet<String> = CAPABILITIES
            .iter()
            .filter(|(_, c)| everything.contains(c))
            .map(|(n, _)| n.to_string())
            .collect();
        let with = |base: &BTreeSet<String>, add: &[&str], drop: &[&str]| {
            let mut set = base.clone();
            set.extend(add.iter().map(|s| s.to_string()));
            for d in drop {
                set.remove(*d);
            }
            set
        };
        let none = BTreeSet::new();
        // (add, drop, ambient, expected main set, expected ambient)
        let cases: Vec<(Strs, Strs, Strs, BTreeSet<String>, Strs)> = vec![
            (&[], &[], &[], default.clone(), &[]),
            (&["NET_ADMIN"], &["MKNOD"], &[], with(&default, &["NET_ADMIN"], &["MKNOD"]), &[]),
            (
                &["cap_sys_admin"],
                &["Cap_Kill"],
                &[],
                with(&default, &["SYS_ADMIN"], &["KILL"]),
                &[],
            ),
            (&["ALL"], &[], &[], all.clone(), &[]),
            (&["all"], &["CHOWN"], &[], with(&all, &[], &["CHOWN"]), &[]),
            (&[], &["ALL"], &[], none.clone(), &[]),
            (&["NET_ADMIN"], &["ALL"], &[], with(&none, &["NET_ADMIN"], &[]), &[]),
            (&["ALL"], &["ALL"], &[], none.clone(), &[]),
            (&["SYS_TIME"], &["SYS_TIME"], &[], default.clone(), &[]),
            (
                &[],
                &["ALL"],
                &["NET_BIND_SERVICE"],
                with(&none, &["NET_BIND_SERVICE"], &[]),
                &["NET_BIND_SERVICE"],
            ),
        ];
        for (add, drop, ambient, want, want_ambient) in cases {
            let config = ContainerConfig {
                security: SecurityContext {
                    capabilities: CriCaps {
                        add: strings(add),
                        drop: strings(drop),
                        add_ambient: strings(ambient),
                    },
                    ..Default::default()
                },
                ..config()
            };
            let spec = build_for(&config, &pod()).unwrap();
            let caps = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
            let label = format!("add {add:?} drop {drop:?} ambient {ambient:?}");
            assert_eq!(cap_names(caps.bounding()), want, "{label}");
            assert_eq!(cap_names(caps.effective()), want, "{label}");
            assert_eq!(cap_names(caps.permitted()), want, "{label}");
            let want_ambient: BTreeSet<String> =
                want_ambient.iter().map(|s| s.to_string()).collect();
            assert_eq!(cap_names(caps.ambient()), want_ambient, "{label}");
            assert_eq!(cap_names(caps.inheritable()), want_ambient, "{label}");
        }
        for (add, drop, ambient) in
            [(&["NOPE"][..], &[][..], &[][..]), (&[], &["CAP_"], &[]), (&[], &[], &["X"])]
        {
            let config = ContainerConfig {
                security: SecurityContext {
                    capabilities: CriCaps {
                        add: strings(add),
                        drop: strings(drop),
                        add_ambient: strings(ambient),
                    },
                    ..Default::default()
                },
                ..config()
            };
            assert_invalid(build_for(&config, &pod()), "unknown capability");
        }
    }

    #[test]
    fn privileged() {
        let config = ContainerConfig {
            security: SecurityContext {
                privileged: true,
                capabilities: CriCaps { drop: strings(&["ALL"]), ..Default::default() },
                masked_paths: Some(strings(&["/proc/x"])),
                ..Default::default()
            },
            ..config()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let caps = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        let all = all_capabilities().len();
        assert!(all >= 38, "{all}");
        assert_eq!(caps.bounding().as_ref().unwrap().len(), all);
        assert_eq!(caps.permitted().as_ref().unwrap().len(), all);
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths(), &None);
        assert_eq!(linux.readonly_paths(), &None);
        let rules = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
        assert_eq!(rules[0].typ(), Some(LinuxDeviceType::A));
        assert_eq!(rules[0].access().as_deref(), Some("rwm"));
        let devices = linux.devices().as_ref().unwrap();
        let null = devices.iter().find(|d| d.path() == Path::new("/dev/null")).unwrap();
        assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
        assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts")));
        let mounts = spec.mounts().as_ref().unwrap();
        for dest in ["/sys", "/sys/fs/cgroup"] {
            let m = mounts.iter().find(|m| m.destination() == Path::new(dest)).unwrap();
            let options = m.options().as_ref().unwrap();
            assert!(options.contains(&"rw".to_string()) && !options.contains(&"ro".to_string()));
        }
    }

    #[test]
    fn seccomp_and_lsm_in_the_spec() {
        use crate::container::types::SecurityProfile;
        let with = |seccomp: SecurityProfile, privileged: bool, add: &[&str]| ContainerConfig {
            security: SecurityContext {
                seccomp,
                privileged,
                capabilities: CriCaps { add: strings(add), ..Default::default() },
                ..Default::default()
            },
            ..config()
        };
        let seccomp_of = |config: &ContainerConfig| {
            build_for(config, &pod()).unwrap().linux().as_ref().unwrap().seccomp().clone()
        };
        let allows = |seccomp: &oci_spec::runtime::LinuxSeccomp, name: &str| {
            seccomp.syscalls().iter().flatten().any(|call| {
                call.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                    && call.args().is_none()
                    && call.names().iter().any(|n| n == name)
            })
        };
        assert_eq!(seccomp_of(&config()), None);
        assert_eq!(seccomp_of(&with(SecurityProfile::RuntimeDefault, true, &[])), None);
        let default = seccomp_of(&with(SecurityProfile::RuntimeDefault, false, &[])).unwrap();
        assert!(allows(&default, "read") && !allows(&default, "mount"));
        // The profile follows the capabilities the container ends up with.
        let admin = seccomp_of(&with(SecurityProfile::RuntimeDefault, false, &["SYS_ADMIN"]));
        assert!(allows(&admin.unwrap(), "mount"));
        let missing = with(SecurityProfile::Localhost("/no/such.json".into()), false, &[]);
        assert_invalid(build_for(&missing, &pod()), "/no/such.json");

        // No AppArmor or SELinux asked for: none in the spec, on any node.
        let spec = build_for(&config(), &pod()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!((process.apparmor_profile(), process.selinux_label()), (&None, &None));
        // A profile that is not loaded (or a node without AppArmor) is refused.
        let config = ContainerConfig {
            security: SecurityContext {
                apparmor: SecurityProfile::Localhost("berth-test-not-loaded".into()),
                ..Default::default()
            },
            ..config()
        };
        assert_invalid(build_for(&config, &pod()), "berth-test-not-loaded");
    }

    #[test]
    fn masked_and_readonly_paths() {
        let spec = build_for(&config(), &pod()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_deref(), Some(&strings(&DEFAULT_MASKED_PATHS)[..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&strings(&DEFAULT_READONLY_PATHS)[..]));
        let config = ContainerConfig {
            security: SecurityContext {
                masked_paths: Some(vec![]),
                readonly_paths: Some(strings(&["/proc/sys"])),
                ..Default::default()
            },
            ..config()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&strings(&["/proc/sys"])[..]));
    }

    fn mount_table(spec: &Spec) -> Vec<(String, String, String, String)> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
                    m.options().as_ref().map(|o| o.join(",")).unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn default_mounts_in_order() {
        let spec = build_for(&config(), &pod()).unwrap();
        let want = [
            ("/proc", "proc", "proc", "nosuid,noexec,nodev"),
            ("/dev", "tmpfs", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
            ("/sys", "sysfs", "sysfs", "nosuid,noexec,nodev,ro"),
            (
                "/dev/pts",
                "devpts",
                "devpts",
                "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
            ),
            ("/dev/mqueue", "mqueue", "mqueue", "nosuid,noexec,nodev"),
            ("/dev/shm", "bind", "/run/berth/pods/p1/shm", "rbind,nosuid,noexec,nodev"),
            ("/etc/hostname", "bind", "/var/lib/berth/pods/p1/hostname", "rbind,rprivate"),
            ("/etc/hosts", "bind", "/var/lib/berth/pods/p1/hosts", "rbind,rprivate"),
            ("/etc/resolv.conf", "bind", "/var/lib/berth/pods/p1/resolv.conf", "rbind,rprivate"),
            ("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid,noexec,nodev,relatime,ro"),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
            .collect();
        assert_eq!(mount_table(&spec), want);

        // Host IPC and a read-only root.
        let pod = PodContext { shm: None, ..pod() };
        let config = ContainerConfig {
            security: SecurityContext { readonly_rootfs: true, ..Default::default() },
            ..config()
        };
        let spec = build_for(&config, &pod).unwrap();
        let table = mount_table(&spec);
        let find = |dest: &str| table.iter().find(|m| m.0 == dest).unwrap().clone();
        assert_eq!(find("/dev/shm").2, "/dev/shm");
        assert_eq!(find("/etc/hosts").3, "rbind,rprivate,ro");
        assert_eq!(find("/etc/resolv.conf").3, "rbind,rprivate,ro");
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    }

    fn cri(container: &str, host: &str, readonly: bool, rro: bool, p: Propagation) -> Mount {
        Mount {
            container_path: container.into(),
            host_path: host.into(),
            readonly,
            recursive_read_only: rro,
            propagation: p,
            ..Default::default()
        }
    }

    fn with_options(m: Mount, options: &[&str]) -> Mount {
        Mount { options: options.iter().map(|o| o.to_string()).collect(), ..m }
    }

    #[test]
    fn cri_mounts() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let link = host.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let d = dir.display().to_string();
        let l = link.display().to_string();
        use Propagation::*;
        // (mounts, expected (destination, source, options) of the CRI ones, rootfs propagation)
        let cases: Vec<(Vec<Mount>, Triples, Option<&str>)> = vec![
            (
                vec![cri("/data", &d, false, false, Private)],
                vec![("/data", &d, "rbind,rprivate")],
                None,
            ),
            (
                vec![cri("/data/", &l, true, false, HostToContainer)],
                vec![("/data", &d, "rbind,rslave,ro")],
                Some("rslave"),
            ),
            (
                vec![
                    cri("/a/b/c", &d, true, true, Private),
                    cri("/a", &d, false, false, Bidirectional),
                    cri("/x/./y", &d, false, false, HostToContainer),
                ],
                vec![
                    ("/a", &d, "rbind,rshared"),
                    ("/x/y", &d, "rbind,rslave"),
                    ("/a/b/c", &d, "rbind,rprivate,ro,rro"),
                ],
                Some("rshared"),
            ),
            // CRI mount options: added after the readonly one, each once; `ro` is readonly.
            (
                vec![with_options(
                    cri("/data", &d, false, false, Private),
                    &["noexec", "nosuid", "nodev", "noexec"],
                )],
                vec![("/data", &d, "rbind,rprivate,noexec,nosuid,nodev")],
                None,
            ),
            (
                vec![
                    with_options(cri("/a", &d, false, false, HostToContainer), &["nodev", "ro"]),
                    with_options(cri("/b", &d, false, true, Private), &["ro"]),
                    with_options(cri("/c", &d, true, false, Private), &["ro", "noexec"]),
                ],
                vec![
                    ("/a", &d, "rbind,rslave,ro,nodev"),
                    ("/b", &d, "rbind,rprivate,ro,rro"),
                    ("/c", &d, "rbind,rprivate,ro,noexec"),
                ],
                Some("rslave"),
            ),
            (
                vec![
                    cri("/etc/hosts", "/k/etc-hosts", false, false, Private),
                    cri("/dev/termination-log", "/k/term", false, false, Private),
                ],
                vec![
                    ("/etc/hosts", "/k/etc-hosts", "rbind,rprivate"),
                    ("/dev/termination-log", "/k/term", "rbind,rprivate"),
                ],
                None,
            ),
        ];
        for (mounts, want, want_propagation) in cases {
            let config = ContainerConfig { mounts: mounts.clone(), ..config() };
            let spec = build_for(&config, &pod()).unwrap();
            let table = mount_table(&spec);
            // Parents before children throughout.
            let depths: Vec<usize> = table.iter().map(|m| depth(Path::new(&m.0))).collect();
            assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{table:?}");
            let got: Vec<(String, String, String)> = table
                .iter()
                .filter(|m| {
                    m.1 == "bind"
                        && mounts.iter().any(|c| {
                            container_path(&c.container_path, "").unwrap() == Path::new(&m.0)
                        })
                })
                .map(|m| (m.0.clone(), m.2.clone(), m.3.clone()))
                .collect();
            let want: Vec<(String, String, String)> = want
                .iter()
                .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
                .collect();
            assert_eq!(got, want, "{mounts:?}");
            // Each destination once: a CRI mount replaces the default there.
            let mut dests: Vec<&String> = table.iter().map(|m| &m.0).collect();
            dests.sort();
            dests.dedup();
            assert_eq!(dests.len(), table.len(), "{table:?}");
            let linux = spec.linux().as_ref().unwrap();
            assert_eq!(linux.rootfs_propagation().as_deref(), want_propagation, "{mounts:?}");
        }
    }

    #[test]
    fn cri_dev_mount_replaces_everything_under_dev() {
        let config = ContainerConfig {
            mounts: vec![cri("/dev", "/dev", false, false, Propagation::Private)],
            ..config()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let table = mount_table(&spec);
        let dev: Vec<_> = table.iter().filter(|m| m.0.starts_with("/dev")).collect();
        assert_eq!(dev.len(), 1, "{dev:?}");
        assert_eq!(dev[0].1, "bind");
    }

    #[test]
    fn bad_mounts() {
        use Propagation::*;
        let cases = [
            (cri("data", "/tmp", false, false, Private), "\"data\""),
            (cri("/a/../etc", "/tmp", false, false, Private), "/a/../etc"),
            (cri("/a", "relative", false, false, Private), "relative"),
            (cri("/a", "/tmp", false, true, Private), "needs readonly"),
            (cri("/a", "/tmp", true, true, HostToContainer), "private propagation"),
        ];
        // Mount options that would loosen the node's mount, or are no bind option berth
        // applies, are refused by name, never dropped.
        let refused = ["exec", "suid", "dev", "rw", "rbind", "rshared", "idmap", "size=1k", ""];
        let options = refused.map(|option| {
            let mount = with_options(cri("/a", "/tmp", false, false, Private), &["noexec", option]);
            (mount, format!("mount option {option:?}"))
        });
        let cases = cases.map(|(mount, naming)| (mount, naming.to_string()));
        for (mount, naming) in cases.into_iter().chain(options) {
            let config = ContainerConfig { mounts: vec![mount], ..config() };
            assert_invalid(build_for(&config, &pod()), &naming);
        }
    }

    #[test]
    fn propagation_checks() {
        let mountinfo = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:25 / /var/lib/kubelet rw,relatime - tmpfs tmpfs rw
31 30 0:26 / /var/lib/kubelet/pods rw,relatime master:7 - tmpfs tmpfs rw
32 22 0:27 / /mnt/with\\040space rw,relatime - tmpfs tmpfs rw
33 22 0:28 / /mnt/shared rw shared:9 master:3 - tmpfs tmpfs rw
34 22 0:29 / /mnt/shared rw - tmpfs tmpfs rw
35 22 0:30 / /srv rw shared:10 - tmpfs tmpfs rw
";
        use Propagation::*;
        // (host path, propagation, error naming this mount point; None = fine)
        let cases = [
            ("/data/x", Bidirectional, None),
            ("/data/x", HostToContainer, None),
            ("/var/lib/kubelet/x", Private, None),
            ("/var/lib/kubelet/x", HostToContainer, Some("/var/lib/kubelet")),
            ("/var/lib/kubelet/x", Bidirectional, Some("/var/lib/kubelet")),
            ("/var/lib/kubelet/pods/p", HostToContainer, None),
            ("/var/lib/kubelet/pods/p", Bidirectional, Some("/var/lib/kubelet/pods")),
            ("/var/lib/kubelet/podsx", HostToContainer, Some("/var/lib/kubelet")),
            ("/mnt/with space/d", HostToContainer, Some("/mnt/with space")),
            // The later mount at the same point is the one on top.
            ("/mnt/shared", Bidirectional, Some("/mnt/shared")),
            ("/srv", Bidirectional, None),
        ];
        for (path, p, want) in cases {
            let got = check_propagation(Path::new(path), p, mountinfo);
            match want {
                None => assert!(got.is_ok(), "{path} {p:?}: {got:?}"),
                Some(mount_point) => {
                    let err = got.unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
                    let msg = err.to_string();
                    assert!(msg.contains(path), "{msg}");
                    assert!(msg.contains(&format!("mounted on {mount_point} ")), "{msg}");
                }
            }
        }
        let err = check_propagation(Path::new("/x"), Bidirectional, "").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    }

    #[test]
    fn namespaces_per_pod() {
        fn kinds(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
            let linux = spec.linux().as_ref().unwrap();
            linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .map(|n| (n.typ(), n.path().clone()))
                .collect()
        }
        use LinuxNamespaceType::*;
        let p = |s: &str| Some(PathBuf::from(s));
        let spec = build_for(&config(), &pod()).unwrap();
        assert_eq!(
            kinds(&spec),
            vec![
                (Pid, None),
                (Network, p("/run/berth/pods/p1/ns/net")),
                (Ipc, p("/run/berth/pods/p1/ns/ipc")),
                (Uts, p("/run/berth/pods/p1/ns/uts")),
                (Mount, None),
            ]
        );
        assert_eq!(spec.hostname().as_deref(), Some("web-0"));

        let host = PodContext {
            net: None,
            ipc: None,
            uts: None,
            pid: PidNamespace::Host,
            cgroup_ns: true,
            ..pod()
        };
        let spec = build_for(&config(), &host).unwrap();
        assert_eq!(kinds(&spec), vec![(Mount, None), (Cgroup, None)]);
        assert_eq!(spec.hostname(), &None);

        let join = PodContext { pid: PidNamespace::Join("/proc/42/ns/pid".into()), ..pod() };
        let spec = build_for(&config(), &join).unwrap();
        assert_eq!(kinds(&spec)[0], (Pid, p("/proc/42/ns/pid")));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!((linux.uid_mappings(), linux.gid_mappings()), (&None, &None));
    }

    fn userns_pod() -> PodContext {
        let range = |host_id| userns::IdMapping { container_id: 0, host_id, length: 65536 };
        PodContext {
            user: Some(PodUserNamespace {
                path: "/run/berth/pods/p1/ns/user".into(),
                mappings: UserNamespace { uids: range(65536), gids: range(131_072) },
            }),
            ..pod()
        }
    }

    #[test]
    fn a_pods_user_namespace_is_joined_first_with_its_mappings() {
        let spec = build_for(&config(), &userns_pod()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let first = &linux.namespaces().as_ref().unwrap()[0];
        assert_eq!(first.typ(), LinuxNamespaceType::User);
        assert_eq!(first.path().as_deref(), Some(Path::new("/run/berth/pods/p1/ns/user")));
        let mapping = |list: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
            list.as_ref()
                .unwrap()
                .iter()
                .map(|m| (m.container_id(), m.host_id(), m.size()))
                .collect::<Vec<_>>()
        };
        assert_eq!(mapping(linux.uid_mappings()), [(0, 65536, 65536)]);
        assert_eq!(mapping(linux.gid_mappings()), [(0, 131_072, 65536)]);
        // The process's ids stay the container's own.
        let user = spec.process().as_ref().unwrap().user();
        assert_eq!((user.uid(), user.gid()), (1000, 100));

        let host = tempfile::tempdir().unwrap();
        let h = host.path().display().to_string();
        let bidirectional = ContainerConfig {
            mounts: vec![cri("/data", &h, false, false, Propagation::Bidirectional)],
            ..config()
        };
        assert_invalid(build_for(&bidirectional, &userns_pod()), "bidirectional");
        assert!(build_for(&bidirectional, &pod()).is_ok());
    }

    #[test]
    fn image_volumes_are_read_only_binds_of_what_was_mounted() {
        let volume =
            crate::container::types::ImageVolume { image: "x.io/a:1".into(), ..Default::default() };
        let mounted = Mount {
            image: Some(volume),
            host_path: "/run/berth/containers/c/image-volumes/0/etc".into(),
            ..cri("/mnt/image", "", true, false, Propagation::Private)
        };
        // In a user namespace too: the mounted image is idmapped already.
        let spec = build_for(
            &ContainerConfig { mounts: vec![mounted.clone()], ..config() },
            &userns_pod(),
        )
        .unwrap();
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/mnt/image"))
            .unwrap();
        assert_eq!(m.source().as_deref(), Some(Path::new(&mounted.host_path)));
        assert_eq!(m.options().as_ref().unwrap(), &strings(&["rbind", "rprivate", "ro"]));
        assert_eq!((m.uid_mappings(), m.gid_mappings()), (&None, &None));
        // mount_options apply to an image volume too; an unknown one is refused.
        let restricted = Mount { options: strings(&["nosuid", "ro", "nodev"]), ..mounted.clone() };
        let spec =
            build_for(&ContainerConfig { mounts: vec![restricted], ..config() }, &pod()).unwrap();
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/mnt/image"));
        assert_eq!(
            m.unwrap().options().as_ref().unwrap(),
            &strings(&["rbind", "rprivate", "ro", "nosuid", "nodev"])
        );
        let odd = Mount { options: strings(&["exec"]), ..mounted.clone() };
        let err = build_for(&ContainerConfig { mounts: vec![odd], ..config() }, &pod());
        assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
        let unmounted = Mount { host_path: String::new(), ..mounted };
        let err = build_for(&ContainerConfig { mounts: vec![unmounted], ..config() }, &pod());
        assert!(matches!(err, Err(Error::Internal(_))), "{err:?}");
    }

    #[test]
    fn idmapped_cri_mounts() {
        let host = tempfile::tempdir().unwrap();
        let h = host.path().display().to_string();
        let range = |c, h, l| userns::IdMapping { container_id: c, host_id: h, length: l };
        let idmapped = Mount {
            uid_mappings: vec![range(0, 65536, 65536)],
            gid_mappings: vec![range(0, 65536, 100), range(100, 70000, 10)],
            ..cri("/data", &h, true, false, Propagation::Private)
        };
        let spec = build_for(
            &ContainerConfig { mounts: vec![idmapped.clone()], ..config() },
            &userns_pod(),
        )
        .unwrap();
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert_eq!(m.options().as_ref().unwrap(), &strings(&["rbind", "rprivate", "ro", "idmap"]));
        assert_eq!(m.uid_mappings().as_ref().unwrap().len(), 1);
        assert_eq!(m.gid_mappings().as_ref().unwrap()[1].host_id(), 70000);
        let plain = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/etc/hosts"))
            .unwrap();
        assert_eq!(plain.uid_mappings(), &None);

        for (bad, why) in [
            (Mount { gid_mappings: vec![], ..idmapped.clone() }, "both uid and gid mappings"),
            (Mount { uid_mappings: vec![range(0, 1, 0)], ..idmapped.clone() }, "the length is 0"),
            (
                Mount {
                    gid_mappings: vec![range(0, 10, 10), range(5, 100, 1)],
                    ..idmapped.clone()
                },
                "overlaps",
            ),
        ] {
            assert_invalid(
                build_for(&ContainerConfig { mounts: vec![bad], ..config() }, &userns_pod()),
                why,
            );
        }
    }

    #[test]
    fn resources_memory_and_cpu() {
        // (limit, swap) → (spec limit, spec swap); None: no memory section
        let cases = [
            ((0, 0), None),
            ((1 << 20, 0), Some((Some(1 << 20), Some(1 << 20)))),
            ((1 << 20, 2 << 20), Some((Some(1 << 20), Some(2 << 20)))),
            ((1 << 20, -1), Some((Some(1 << 20), Some(-1)))),
            ((0, 2 << 20), Some((None, Some(2 << 20)))),
        ];
        for ((limit, swap), want) in cases {
            let mut config = config();
            config.resources.memory_limit_in_bytes = limit;
            config.resources.memory_swap_limit_in_bytes = swap;
            let spec = build_for(&config, &pod()).unwrap();
            let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
            let got = resources.memory().map(|m| (m.limit(), m.swap()));
            assert_eq!(got, want, "{limit} {swap}");
        }
        let mut config = config();
        config.resources = Resources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![HugepageLimit { page_size: "2MB".into(), limit: 4 << 20 }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            ..Default::default()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let cpu = resources.cpu().clone().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!((cpu.cpus().as_deref(), cpu.mems().as_deref()), (Some("0-1"), Some("0")));
        let huge = resources.hugepage_limits().clone().unwrap();
        assert_eq!((huge[0].page_size().as_str(), huge[0].limit()), ("2MB", 4 << 20));
        assert_eq!(resources.unified().as_ref().unwrap()["memory.high"], "1000000");
        assert!(resources.memory().is_none());

        for (field, value) in [("memory limit", -5), ("cpu shares", -1)] {
            let mut config = config.clone();
            if field == "cpu shares" {
                config.resources.cpu_shares = value;
            } else {
                config.resources.memory_limit_in_bytes = value;
            }
            assert_invalid(build_for(&config, &pod()), field);
        }
    }

    fn rules(spec: &Spec) -> Vec<String> {
        let linux = spec.linux().as_ref().unwrap();
        let devices = linux.resources().as_ref().unwrap().devices().as_ref().unwrap();
        devices
            .iter()
            .map(|d| format!("{} {}", if d.allow() { "allow" } else { "deny" }, d))
            .collect()
    }

    #[test]
    fn devices_rules() {
        let defaults = [
            "deny a *:* rwm",
            "allow c *:* m",
            "allow b *:* m",
            "allow c 1:3 rwm",
            "allow c 1:5 rwm",
            "allow c 1:7 rwm",
            "allow c 5:0 rwm",
            "allow c 5:1 rwm",
            "allow c 5:2 rwm",
            "allow c 1:8 rwm",
            "allow c 1:9 rwm",
            "allow c 136:* rwm",
        ];
        let spec = build_for(&config(), &pod()).unwrap();
        assert_eq!(rules(&spec), defaults);
        assert_eq!(spec.linux().as_ref().unwrap().devices(), &None);

        let device = |host: &str, container: &str, permissions: &str| Device {
            host_path: host.into(),
            container_path: container.into(),
            permissions: permissions.into(),
        };
        let with_devices = ContainerConfig {
            devices: vec![
                device("/dev/null", "/dev/mynull", "rw"),
                device("/dev/zero", "/dev/z", ""),
            ],
            ..config()
        };
        let spec = build_for(&with_devices, &pod()).unwrap();
        let mut want: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
        want.extend(["allow c 1:3 rw".to_string(), "allow c 1:5 rwm".to_string()]);
        assert_eq!(rules(&spec), want);
        let devices = spec.linux().as_ref().unwrap().devices().clone().unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].path(), Path::new("/dev/mynull"));
        assert_eq!(
            (devices[0].typ(), devices[0].major(), devices[0].minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(devices[0].file_mode(), Some(0o666));

        let file = tempfile::NamedTempFile::new().unwrap();
        let file = file.path().display().to_string();
        let cases = [
            (device("/dev/no-such-device", "/dev/x", "rwm"), "/dev/no-such-device"),
            (device(&file, "/dev/x", "rwm"), "not a device"),
            (device("/dev/null", "/dev/x", "rwx"), "permissions"),
            (device("/dev/null", "dev/x", "rwm"), "not absolute"),
        ];
        for (device, naming) in cases {
            let config = ContainerConfig { devices: vec![device], ..config() };
            assert_invalid(build_for(&config, &pod()), naming);
        }
    }

    #[test]
    fn root_annotations_and_cgroup() {
        let config = ContainerConfig {
            annotations: [
                ("team".to_string(), "a".to_string()),
                ("io.kubernetes.cri.container-type".to_string(), "sandbox".to_string()),
            ]
            .into(),
            ..config()
        };
        let spec = build_for(&config, &pod()).unwrap();
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/berth/containers/c1/rootfs"));
        assert_eq!(root.readonly(), Some(false));
        let annotations = spec.annotations().as_ref().unwrap();
        assert_eq!(annotations["io.kubernetes.cri.container-type"], "container");
        assert_eq!(annotations["io.kubernetes.cri.sandbox-id"], "p1");
        assert_eq!(annotations["io.kubernetes.cri.container-name"], "app");
        assert_eq!(annotations["io.kubernetes.cri.image-name"], "docker.io/library/busybox:latest");
        assert_eq!(annotations["team"], "a");
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/kubepods/pod1/c1")));
        // The spec is what a runtime reads: it must survive JSON.
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn host_paths_are_created() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b");
        let existing = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let mounts = [
            cri("/x", &missing.display().to_string(), false, false, Propagation::Private),
            cri("/y", &existing.path().display().to_string(), false, false, Propagation::Private),
        ];
        prepare_host_paths(&mounts).unwrap();
        let meta = std::fs::metadata(&missing).unwrap();
        assert!(meta.is_dir());
        // 0755 less the umask, which may only take bits away.
        assert_eq!(meta.permissions().mode() & 0o7777 & !0o755, 0);
        assert!(std::fs::metadata(existing.path()).unwrap().is_file());
        assert_invalid(
            prepare_host_paths(&[cri("/x", "rel", false, false, Propagation::Private)]),
            "rel",
        );
    }
}
