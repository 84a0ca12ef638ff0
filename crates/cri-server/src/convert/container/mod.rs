//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, StreamContainers, UpdateContainerResources, ReopenContainerLog:
//! translation between the CRI and `berth_runtime::container`.
//!
//! Enum values the CRI leaves open (any i32 can arrive) are checked here: prost's getters read an
//! unknown value as the default, which for a mount's propagation or a PID mode would silently
//! give the container something other than what was asked for.

use std::collections::HashMap;

use berth_runtime::container::{
    self as rt, ContainerDetails, ContainerFilter, ContainerRecord, ContainerState,
};
use berth_runtime::pod::NamespaceMode;

use super::to_map;
use crate::error::{CriError, CriResult};
use crate::proto::{
    self, Container, ContainerResources, ContainerStatus, ContainerStatusResponse, ContainerUser,
    ImageSpec, LinuxContainerUser,
};

/// ContainerStatus reasons, as the kubelet and `kubectl describe` show them.
const REASON_COMPLETED: &str = "Completed";
const REASON_ERROR: &str = "Error";
const REASON_OOM_KILLED: &str = "OOMKilled";
const REASON_UNKNOWN: &str = "Unknown";

pub(crate) fn container_config(config: proto::ContainerConfig) -> CriResult<rt::ContainerConfig> {
    let meta = config
        .metadata
        .ok_or_else(|| CriError::InvalidRequest("container config needs metadata".into()))?;
    let envs = config
        .envs
        .into_iter()
        .map(|kv| match String::from_utf8(kv.value) {
            Ok(value) => Ok((kv.key, value)),
            Err(_) => Err(CriError::InvalidRequest(format!(
                "environment variable {:?} has a value that is not UTF-8",
                kv.key
            ))),
        })
        .collect::<CriResult<Vec<_>>>()?;
    let mounts = config.mounts.into_iter().map(mount).collect::<CriResult<Vec<_>>>()?;
    let linux = config.linux.unwrap_or_default();
    Ok(rt::ContainerConfig {
        metadata: rt::ContainerMetadata { name: meta.name, attempt: meta.attempt },
        user_specified_image: config
            .image
            .as_ref()
            .map(|spec| spec.user_specified_image.clone())
            .unwrap_or_default(),
        image: config.image.map(|spec| spec.image).unwrap_or_default(),
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs,
        mounts,
        devices: config
            .devices
            .into_iter()
            .map(|d| rt::Device {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        cdi_devices: config.cdi_devices.into_iter().map(|d| d.name).collect(),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path: config.log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        resources: linux.resources.map(resources).unwrap_or_default(),
        security: security_context(linux.security_context.unwrap_or_default())?,
        stop_signal: stop_signal_name(config.stop_signal)?,
    })
}

fn mount(m: proto::Mount) -> CriResult<rt::Mount> {
    // An image volume: the runtime checks the rest (read-only, the sub path, no host path).
    let image = match m.image {
        Some(spec) if !spec.image.is_empty() => Some(rt::ImageVolume {
            image: spec.image,
            user_specified_image: spec.user_specified_image,
            sub_path: m.image_sub_path,
            image_ref: String::new(),
        }),
        _ if !m.image_sub_path.is_empty() => {
            return Err(CriError::InvalidRequest(format!(
                "mount {:?}: image_sub_path {:?} without an image",
                m.container_path, m.image_sub_path
            )))
        }
        _ => None,
    };
    let propagation = match proto::MountPropagation::try_from(m.propagation) {
        Ok(proto::MountPropagation::PropagationPrivate) => rt::Propagation::Private,
        Ok(proto::MountPropagation::PropagationHostToContainer) => rt::Propagation::HostToContainer,
        Ok(proto::MountPropagation::PropagationBidirectional) => rt::Propagation::Bidirectional,
        Err(_) => {
            return Err(CriError::InvalidRequest(format!(
                "mount {:?}: unknown propagation {}",
                m.container_path, m.propagation
            )))
        }
    };
    Ok(rt::Mount {
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        propagation,
        uid_mappings: super::id_mappings(&m.uid_mappings),
        gid_mappings: super::id_mappings(&m.gid_mappings),
        image,
        // Checked by the runtime when it builds the spec, which names a refused one.
        options: m.mount_options,
    })
}

fn proto_mount(m: &rt::Mount) -> proto::Mount {
    let propagation = match m.propagation {
        rt::Propagation::Private => proto::MountPropagation::PropagationPrivate,
        rt::Propagation::HostToContainer => proto::MountPropagation::PropagationHostToContainer,
        rt::Propagation::Bidirectional => proto::MountPropagation::PropagationBidirectional,
    };
    proto::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        propagation: propagation.into(),
        uid_mappings: super::proto_id_mappings(&m.uid_mappings),
        gid_mappings: super::proto_id_mappings(&m.gid_mappings),
        // As requested, with the image's id beside (KEP-5365's `image_ref`), as PullImage
        // answered it.
        image: m.image.as_ref().map(|volume| proto::ImageSpec {
            image: volume.image.clone(),
            user_specified_image: volume.user_specified_image.clone(),
            image_ref: volume.image_ref.clone(),
            ..Default::default()
        }),
        image_sub_path: m.image.as_ref().map(|v| v.sub_path.clone()).unwrap_or_default(),
        mount_options: m.options.clone(),
        ..Default::default()
    }
}

pub(crate) fn resources(r: proto::LinuxContainerResources) -> rt::Resources {
    rt::Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| rt::HugepageLimit { page_size: h.page_size, limit: h.limit })
            .collect(),
        unified: r.unified.into_iter().collect(),
    }
}

fn proto_resources(r: &rt::Resources) -> proto::LinuxContainerResources {
    proto::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| proto::HugepageLimit { page_size: h.page_size.clone(), limit: h.limit })
            .collect(),
        unified: to_map(&r.unified),
    }
}

fn security_context(ctx: proto::LinuxContainerSecurityContext) -> CriResult<rt::SecurityContext> {
    // A group alone names no user to give it to; containerd and CRI-O refuse it too, and
    // critest checks that they do.
    if ctx.run_as_group.is_some() && ctx.run_as_user.is_none() && ctx.run_as_username.is_empty() {
        return Err(CriError::InvalidRequest(
            "run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    let options = ctx.namespace_options.unwrap_or_default();
    let user_namespace = match &options.userns_options {
        None => rt::UsernsRequest::Unspecified,
        Some(u) => match proto::NamespaceMode::try_from(u.mode) {
            Ok(proto::NamespaceMode::Node) => rt::UsernsRequest::Node,
            Ok(proto::NamespaceMode::Pod) => rt::UsernsRequest::Pod {
                uids: super::id_mappings(&u.uids),
                gids: super::id_mappings(&u.gids),
            },
            _ => {
                return Err(CriError::InvalidRequest(format!(
                    "user namespace mode {} of a container is not supported (POD or NODE)",
                    u.mode
                )))
            }
        },
    };
    let supplemental_groups_policy =
        match proto::SupplementalGroupsPolicy::try_from(ctx.supplemental_groups_policy) {
            Ok(proto::SupplementalGroupsPolicy::Merge) => rt::SupplementalGroupsPolicy::Merge,
            Ok(proto::SupplementalGroupsPolicy::Strict) => rt::SupplementalGroupsPolicy::Strict,
            Err(_) => {
                return Err(CriError::InvalidRequest(format!(
                    "unknown supplemental groups policy {}",
                    ctx.supplemental_groups_policy
                )))
            }
        };
    // As containerd: an absent seccomp profile (and no deprecated path) is none, an absent
    // AppArmor one is the runtime's default.
    let seccomp = match ctx.seccomp {
        Some(profile) => security_profile(profile, "seccomp")?,
        None if !ctx.seccomp_profile_path.is_empty() => {
            profile_path(&ctx.seccomp_profile_path, "seccomp")?
        }
        None => rt::SecurityProfile::Unconfined,
    };
    let apparmor = match ctx.apparmor {
        Some(profile) => security_profile(profile, "AppArmor")?,
        None if !ctx.apparmor_profile.is_empty() => {
            profile_path(&ctx.apparmor_profile, "AppArmor")?
        }
        None => rt::SecurityProfile::RuntimeDefault,
    };
    let selinux = ctx.selinux_options.map(|o| rt::SelinuxOptions {
        user: o.user,
        role: o.role,
        r#type: o.r#type,
        level: o.level,
    });
    let pid = match proto::NamespaceMode::try_from(options.pid) {
        Ok(proto::NamespaceMode::Pod) => NamespaceMode::Pod,
        Ok(proto::NamespaceMode::Container) => NamespaceMode::Container,
        Ok(proto::NamespaceMode::Node) => NamespaceMode::Node,
        Ok(proto::NamespaceMode::Target) => NamespaceMode::Target,
        Err(_) => {
            return Err(CriError::InvalidRequest(format!(
                "unknown PID namespace mode {}",
                options.pid
            )))
        }
    };
    let capabilities = ctx.capabilities.unwrap_or_default();
    Ok(rt::SecurityContext {
        capabilities: rt::Capabilities {
            add: capabilities.add_capabilities,
            drop: capabilities.drop_capabilities,
            add_ambient: capabilities.add_ambient_capabilities,
        },
        privileged: ctx.privileged,
        pid,
        target_id: options.target_id,
        run_as_user: ctx.run_as_user.map(|v| v.value),
        run_as_group: ctx.run_as_group.map(|v| v.value),
        run_as_username: ctx.run_as_username,
        readonly_rootfs: ctx.readonly_rootfs,
        supplemental_groups: ctx.supplemental_groups,
        no_new_privs: ctx.no_new_privs,
        // As containerd since 1.5: the kubelet always sends the lists it wants (its defaults,
        // or none for `procMount: Unmasked`), and protobuf cannot tell an empty list from an
        // absent one, so an empty list means no path.
        masked_paths: Some(ctx.masked_paths),
        readonly_paths: Some(ctx.readonly_paths),
        seccomp,
        apparmor,
        selinux,
        supplemental_groups_policy,
        user_namespace,
    })
}

/// A CRI `SecurityProfile` (`what`: seccomp or AppArmor).
fn security_profile(profile: proto::SecurityProfile, what: &str) -> CriResult<rt::SecurityProfile> {
    use proto::security_profile::ProfileType;
    let kind = ProfileType::try_from(profile.profile_type).map_err(|_| {
        CriError::InvalidRequest(format!("unknown {what} profile type {}", profile.profile_type))
    })?;
    match kind {
        ProfileType::Localhost if profile.localhost_ref.is_empty() => Err(
            CriError::InvalidRequest(format!("a Localhost {what} profile needs a localhost_ref")),
        ),
        ProfileType::Localhost => Ok(rt::SecurityProfile::Localhost(profile.localhost_ref)),
        _ if !profile.localhost_ref.is_empty() => Err(CriError::InvalidRequest(format!(
            "{what} localhost_ref {:?} is only for a Localhost profile",
            profile.localhost_ref
        ))),
        ProfileType::RuntimeDefault => Ok(rt::SecurityProfile::RuntimeDefault),
        ProfileType::Unconfined => Ok(rt::SecurityProfile::Unconfined),
    }
}

/// The deprecated string form of a profile: `runtime/default` (or `docker/default`),
/// `unconfined`, `localhost/<profile>`.
fn profile_path(path: &str, what: &str) -> CriResult<rt::SecurityProfile> {
    match path {
        "runtime/default" | "docker/default" => Ok(rt::SecurityProfile::RuntimeDefault),
        "unconfined" => Ok(rt::SecurityProfile::Unconfined),
        _ => match path.strip_prefix("localhost/") {
            Some(name) if !name.is_empty() => Ok(rt::SecurityProfile::Localhost(name.into())),
            _ => Err(CriError::InvalidRequest(format!("invalid {what} profile {path:?}"))),
        },
    }
}

/// The CRI's stop signal as the runtime (and an image's `STOPSIGNAL`) names it: the runtime
/// default is "", the aliases SIGCLD, SIGPOLL and SIGIOT become the signals they stand for, and
/// the real-time ones are written `SIGRTMIN+n` / `SIGRTMAX-n`.
fn stop_signal_name(value: i32) -> CriResult<String> {
    let signal = proto::Signal::try_from(value)
        .map_err(|_| CriError::InvalidRequest(format!("unknown stop signal {value}")))?;
    let rtmin = proto::Signal::Sigrtmin as i32;
    let rtmax = proto::Signal::Sigrtmax as i32;
    Ok(match signal {
        proto::Signal::RuntimeDefault => String::new(),
        proto::Signal::Sigcld => "SIGCHLD".into(),
        proto::Signal::Sigpoll => "SIGIO".into(),
        proto::Signal::Sigiot => "SIGABRT".into(),
        _ if value > rtmin && value <= rtmin + 15 => format!("SIGRTMIN+{}", value - rtmin),
        _ if value >= rtmax - 14 && value < rtmax => format!("SIGRTMAX-{}", rtmax - value),
        // The proto's names carry the enum's prefix since CRI v1.37 (`SIGNAL_SIGTERM`); the
        // record and the OCI runtimes speak the signal's own name.
        _ => signal.as_str_name().trim_start_matches(SIGNAL_PREFIX).to_string(),
    })
}

const SIGNAL_PREFIX: &str = "SIGNAL_";

/// The inverse of [`stop_signal_name`]; a name the CRI has no value for is the runtime default.
fn stop_signal_value(name: &str) -> proto::Signal {
    let rtmin = proto::Signal::Sigrtmin as i32;
    let rtmax = proto::Signal::Sigrtmax as i32;
    let offset = |n: &str| n.parse::<i32>().ok();
    let value = if let Some(n) = name.strip_prefix("SIGRTMIN+").and_then(offset) {
        (1..=15).contains(&n).then_some(rtmin + n)
    } else if let Some(n) = name.strip_prefix("SIGRTMAX-").and_then(offset) {
        (1..=14).contains(&n).then_some(rtmax - n)
    } else {
        None
    };
    match value {
        Some(value) => proto::Signal::try_from(value).unwrap_or(proto::Signal::RuntimeDefault),
        None if name.is_empty() => proto::Signal::RuntimeDefault,
        None => proto::Signal::from_str_name(&format!("{SIGNAL_PREFIX}{name}"))
            .unwrap_or(proto::Signal::RuntimeDefault),
    }
}

fn proto_state(state: &ContainerState) -> proto::ContainerState {
    match state {
        ContainerState::Created => proto::ContainerState::ContainerCreated,
        ContainerState::Running { .. } => proto::ContainerState::ContainerRunning,
        ContainerState::Exited(_) => proto::ContainerState::ContainerExited,
        ContainerState::Unknown => proto::ContainerState::ContainerUnknown,
    }
}

/// How a container ended, as ContainerStatus says it: finished_at, exit code, reason, message.
fn ending(state: &ContainerState) -> (i64, i32, &'static str, String) {
    match state {
        ContainerState::Exited(exit) => {
            let reason = if exit.oom_killed {
                REASON_OOM_KILLED
            } else if exit.exit_code == 0 {
                REASON_COMPLETED
            } else {
                REASON_ERROR
            };
            (exit.finished_at_nanos, exit.exit_code, reason, exit.message.clone())
        }
        ContainerState::Unknown => (
            0,
            0,
            REASON_UNKNOWN,
            "berthd lost the container's monitor and has no record of its exit".into(),
        ),
        ContainerState::Created | ContainerState::Running { .. } => (0, 0, "", String::new()),
    }
}

pub(crate) fn status_response(
    details: &ContainerDetails,
    verbose: bool,
) -> ContainerStatusResponse {
    let status = container_status(&details.record);
    let mut info = HashMap::new();
    if verbose {
        if let Some(value) = &details.info {
            info.insert("info".to_string(), value.to_string());
        }
    }
    ContainerStatusResponse { status: Some(status), info }
}

/// The CRI status of a container's record (also in container events).
pub(crate) fn container_status(record: &ContainerRecord) -> ContainerStatus {
    let (finished_at, exit_code, reason, message) = ending(&record.state);
    let config = &record.config;
    ContainerStatus {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: proto_state(&record.state).into(),
        created_at: record.created_at_nanos,
        started_at: record.started_at_nanos,
        finished_at,
        exit_code,
        image: Some(image_spec(record)),
        image_ref: record.image.reference.clone(),
        reason: reason.to_string(),
        message,
        labels: to_map(&config.labels),
        annotations: to_map(&config.annotations),
        mounts: config.mounts.iter().map(proto_mount).collect(),
        log_path: record.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        resources: Some(ContainerResources {
            linux: Some(proto_resources(&config.resources)),
            windows: None,
        }),
        image_id: record.image.id.clone(),
        user: Some(ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: record.user.uid.into(),
                gid: record.user.gid.into(),
                supplemental_groups: record
                    .user
                    .additional_gids
                    .iter()
                    .map(|&g| i64::from(g))
                    .collect(),
            }),
        }),
        stop_signal: stop_signal_value(&config.stop_signal).into(),
    }
}

/// The runtime's filter; `None` when it can match nothing (a state value the CRI does not
/// define).
pub(crate) fn container_filter(f: proto::ContainerFilter) -> Option<ContainerFilter> {
    let state = match f.state {
        None => None,
        Some(value) => Some(match proto::ContainerState::try_from(value.state).ok()? {
            proto::ContainerState::ContainerCreated => ContainerState::Created.name(),
            proto::ContainerState::ContainerRunning => ContainerState::Running { pid: 0 }.name(),
            proto::ContainerState::ContainerExited => {
                ContainerState::Exited(Default::default()).name()
            }
            proto::ContainerState::ContainerUnknown => ContainerState::Unknown.name(),
        }),
    };
    Some(ContainerFilter {
        id: Some(f.id).filter(|id| !id.is_empty()),
        state,
        pod_id: Some(f.pod_sandbox_id).filter(|id| !id.is_empty()),
        labels: f.label_selector.into_iter().collect(),
    })
}

pub(crate) fn container(record: &ContainerRecord) -> Container {
    Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        metadata: Some(metadata(record)),
        image: Some(image_spec(record)),
        image_ref: record.image.reference.clone(),
        state: proto_state(&record.state).into(),
        created_at: record.created_at_nanos,
        labels: to_map(&record.config.labels),
        annotations: to_map(&record.config.annotations),
        image_id: record.image.id.clone(),
    }
}

pub(crate) fn metadata(record: &ContainerRecord) -> proto::ContainerMetadata {
    let meta = &record.config.metadata;
    proto::ContainerMetadata { name: meta.name.clone(), attempt: meta.attempt }
}

fn image_spec(record: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: record.image.name.clone(),
        user_specified_image: record.config.user_specified_image.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
