//! A container's OCI runtime spec, built from its CRI config, its image's config, the user
//! resolved from the image's files and the pod it joins.
//!
//! The kubelet, and workloads written against it, assume containerd's CRI plugin: its default
//! capabilities, mounts, masked paths and device rules, and its precedence rules for command,
//! args, env and working dir. Every choice here follows containerd unless a comment says why
//! not; the spec is plain data, so that it can be tested without starting anything.
//!
//! Here: the process, namespaces and capabilities; in `mounts`, `devices` and `resources` the
//! spec's parts of those names; the cases are in `tests`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType,
    Process, Root, Spec, User,
};

use crate::container::types::{
    ContainerConfig, ImageRunConfig, Propagation, ResolvedUser, SecurityContext,
};
use crate::error::{Error, Result};
use crate::lsm::{self, LsmHost};
use crate::seccomp;
use crate::userns::UserNamespace;

mod devices;
mod mounts;
mod resources;

use devices::*;
use mounts::*;
pub use mounts::{check_mounts, check_propagation, prepare_host_paths};
pub(crate) use resources::limits;
use resources::*;

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
    /// The node's cgroups can hold hugepage limits (a hugetlb controller in a hierarchy berth
    /// manages); without, the limits are left out or refused (`resources::hugepage_limits`).
    pub hugetlb: bool,
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
        .set_resources(Some(resources(&config.resources, privileged, &devices, inputs.hugetlb)?))
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

#[cfg(test)]
mod tests;
