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
    ImageSpec { image: record.image.name.clone(), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::required_id;
    use berth_runtime::container::{ContainerImage, ExitInfo, ResolvedUser, RECORD_VERSION};
    use std::path::PathBuf;

    fn record(id: &str, pod_id: &str, state: ContainerState) -> ContainerRecord {
        ContainerRecord {
            version: RECORD_VERSION,
            id: id.into(),
            name: "app_p_ns_uid_2".into(),
            pod_id: pod_id.into(),
            config: rt::ContainerConfig {
                metadata: rt::ContainerMetadata { name: "app".into(), attempt: 2 },
                image: "registry.test/app:1".into(),
                labels: [("tier".to_string(), "web".to_string())].into(),
                annotations: [("note".to_string(), "x".to_string())].into(),
                ..Default::default()
            },
            image: ContainerImage {
                name: "registry.test/app:1".into(),
                id: "sha256:aaaa".into(),
                reference: "registry.test/app@sha256:bbbb".into(),
            },
            log_path: Some(PathBuf::from("/var/log/pods/p/app/2.log")),
            user: ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![2000, 3000] },
            stop_signal: 15,
            created_at_nanos: 10,
            started_at_nanos: 20,
            state,
            cgroup: "pod/app".into(),
        }
    }

    fn exited(exit_code: i32, oom_killed: bool) -> ContainerState {
        ContainerState::Exited(ExitInfo {
            exit_code,
            signal: None,
            finished_at_nanos: 30,
            oom_killed,
            message: String::new(),
        })
    }

    fn bad_request(result: CriResult<impl std::fmt::Debug>) -> String {
        match result {
            Err(CriError::InvalidRequest(message)) => message,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn stop_signal_names_both_ways() {
        use proto::Signal as S;
        let table = [
            (S::RuntimeDefault, ""),
            (S::Sigterm, "SIGTERM"),
            (S::Sigkill, "SIGKILL"),
            (S::Sigquit, "SIGQUIT"),
            (S::Sigint, "SIGINT"),
            (S::Sigusr1, "SIGUSR1"),
            (S::Sigwinch, "SIGWINCH"),
            (S::Sigstkflt, "SIGSTKFLT"),
            (S::Sigrtmin, "SIGRTMIN"),
            (S::Sigrtminplus1, "SIGRTMIN+1"),
            (S::Sigrtminplus15, "SIGRTMIN+15"),
            (S::Sigrtmaxminus14, "SIGRTMAX-14"),
            (S::Sigrtmaxminus1, "SIGRTMAX-1"),
            (S::Sigrtmax, "SIGRTMAX"),
        ];
        for (signal, name) in table {
            assert_eq!(stop_signal_name(signal.into()).unwrap(), name, "{signal:?}");
            assert_eq!(stop_signal_value(name), signal, "{name}");
        }
        // Aliases become the signal they stand for.
        for (alias, name, canonical) in [
            (S::Sigcld, "SIGCHLD", S::Sigchld),
            (S::Sigpoll, "SIGIO", S::Sigio),
            (S::Sigiot, "SIGABRT", S::Sigabrt),
        ] {
            assert_eq!(stop_signal_name(alias.into()).unwrap(), name);
            assert_eq!(stop_signal_value(name), canonical);
        }
        // Every value has a name that reads back as the same signal (or its canonical alias).
        for value in 0..=65 {
            let name = stop_signal_name(value).unwrap();
            let back = stop_signal_value(&name) as i32;
            assert!(back == value || [5, 12, 15].contains(&value), "{value} -> {name} -> {back}");
        }
        assert!(bad_request(stop_signal_name(66)).contains("66"));
        for odd in ["SIGRTMIN+16", "SIGRTMAX-15", "SIGRTMIN+x", "SIGNOPE", "TERM"] {
            assert_eq!(stop_signal_value(odd), S::RuntimeDefault, "{odd}");
        }
    }

    #[test]
    fn states_reasons_and_exit_codes() {
        use proto::ContainerState as P;
        let unknown_message = ending(&ContainerState::Unknown).3;
        assert!(!unknown_message.is_empty());
        let table = [
            (ContainerState::Created, P::ContainerCreated, 0, 0, ""),
            (ContainerState::Running { pid: 7 }, P::ContainerRunning, 0, 0, ""),
            (exited(0, false), P::ContainerExited, 30, 0, "Completed"),
            (exited(3, false), P::ContainerExited, 30, 3, "Error"),
            (exited(137, false), P::ContainerExited, 30, 137, "Error"),
            (exited(137, true), P::ContainerExited, 30, 137, "OOMKilled"),
            (exited(0, true), P::ContainerExited, 30, 0, "OOMKilled"),
            (ContainerState::Unknown, P::ContainerUnknown, 0, 0, "Unknown"),
        ];
        for (state, expected, finished_at, exit_code, reason) in table {
            let details = ContainerDetails { record: record("c1", "p1", state), info: None };
            let status = status_response(&details, false).status.unwrap();
            assert_eq!(status.state(), expected, "{:?}", details.record.state);
            assert_eq!(
                (status.finished_at, status.exit_code, status.reason.as_str()),
                (finished_at, exit_code, reason),
                "{:?}",
                details.record.state
            );
        }
    }

    #[test]
    fn status_reports_the_record() {
        let mut record = record("c1", "p1", exited(1, false));
        if let ContainerState::Exited(exit) = &mut record.state {
            exit.message = "failed to start: no such file".into();
        }
        record.config.mounts = vec![rt::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            recursive_read_only: true,
            propagation: rt::Propagation::HostToContainer,
            ..Default::default()
        }];
        record.config.resources.memory_limit_in_bytes = 20 << 20;
        record.config.resources.unified = [("memory.high".to_string(), "1M".to_string())].into();
        record.config.stop_signal = "SIGQUIT".into();
        let info = serde_json::json!({"pid": 42});
        let details = ContainerDetails { record, info: Some(info.clone()) };

        let response = status_response(&details, true);
        let info_text = response.info.get("info").expect("verbose info");
        assert_eq!(serde_json::from_str::<serde_json::Value>(info_text).unwrap(), info);
        assert!(status_response(&details, false).info.is_empty());

        let status = response.status.unwrap();
        assert_eq!(status.id, "c1");
        assert_eq!(
            status.metadata,
            Some(proto::ContainerMetadata { name: "app".into(), attempt: 2 })
        );
        assert_eq!((status.created_at, status.started_at), (10, 20));
        assert_eq!(status.message, "failed to start: no such file");
        assert_eq!(status.image.as_ref().unwrap().image, "registry.test/app:1");
        assert_eq!(status.image_ref, "registry.test/app@sha256:bbbb");
        assert_eq!(status.image_id, "sha256:aaaa");
        assert_eq!(status.labels["tier"], "web");
        assert_eq!(status.annotations["note"], "x");
        assert_eq!(status.log_path, "/var/log/pods/p/app/2.log");
        assert_eq!(status.stop_signal(), proto::Signal::Sigquit);
        let mount = &status.mounts[0];
        assert_eq!(
            (mount.container_path.as_str(), mount.host_path.as_str()),
            ("/data", "/srv/data")
        );
        assert!(mount.readonly && mount.recursive_read_only);
        assert_eq!(mount.propagation(), proto::MountPropagation::PropagationHostToContainer);
        let linux = status.resources.unwrap().linux.unwrap();
        assert_eq!(linux.memory_limit_in_bytes, 20 << 20);
        assert_eq!(linux.unified["memory.high"], "1M");
        let user = status.user.unwrap().linux.unwrap();
        assert_eq!((user.uid, user.gid, user.supplemental_groups), (1000, 1000, vec![2000, 3000]));

        let mut no_log = details.record.clone();
        no_log.log_path = None;
        no_log.config.stop_signal = String::new();
        let status = status_response(&ContainerDetails { record: no_log, info: None }, true);
        assert!(status.info.is_empty());
        let status = status.status.unwrap();
        assert_eq!(status.log_path, "");
        assert_eq!(status.stop_signal(), proto::Signal::RuntimeDefault);
    }

    #[test]
    fn filters() {
        use proto::ContainerState as P;
        let running = record("abc123", "pod1", ContainerState::Running { pid: 1 });
        let mut exited_db = record("abd456", "pod2", exited(0, false));
        exited_db.config.labels = [("tier".to_string(), "db".to_string())].into();
        let created = record("ff0000", "pod1", ContainerState::Created);
        let unknown = record("ee0000", "pod2", ContainerState::Unknown);
        let all = [&running, &exited_db, &created, &unknown];
        let state = |s: P| Some(proto::ContainerStateValue { state: s.into() });
        let table: Vec<(proto::ContainerFilter, Vec<&str>)> = vec![
            (Default::default(), vec!["abc123", "abd456", "ff0000", "ee0000"]),
            (
                proto::ContainerFilter { id: "ab".into(), ..Default::default() },
                vec!["abc123", "abd456"],
            ),
            (proto::ContainerFilter { id: "abc123".into(), ..Default::default() }, vec!["abc123"]),
            (
                proto::ContainerFilter { state: state(P::ContainerCreated), ..Default::default() },
                vec!["ff0000"],
            ),
            (
                proto::ContainerFilter { state: state(P::ContainerRunning), ..Default::default() },
                vec!["abc123"],
            ),
            (
                proto::ContainerFilter { state: state(P::ContainerExited), ..Default::default() },
                vec!["abd456"],
            ),
            (
                proto::ContainerFilter { state: state(P::ContainerUnknown), ..Default::default() },
                vec!["ee0000"],
            ),
            (
                proto::ContainerFilter { pod_sandbox_id: "pod1".into(), ..Default::default() },
                vec!["abc123", "ff0000"],
            ),
            (
                proto::ContainerFilter {
                    label_selector: [("tier".to_string(), "web".to_string())].into(),
                    ..Default::default()
                },
                vec!["abc123", "ff0000", "ee0000"],
            ),
            (
                proto::ContainerFilter {
                    pod_sandbox_id: "pod2".into(),
                    state: state(P::ContainerExited),
                    label_selector: [("tier".to_string(), "db".to_string())].into(),
                    ..Default::default()
                },
                vec!["abd456"],
            ),
        ];
        for (filter, expected) in table {
            let runtime_filter = container_filter(filter.clone()).expect("a filter");
            let matched: Vec<&str> =
                all.iter().filter(|r| runtime_filter.matches(r)).map(|r| r.id.as_str()).collect();
            assert_eq!(matched, expected, "{filter:?}");
        }
        let undefined = proto::ContainerFilter {
            state: Some(proto::ContainerStateValue { state: 9 }),
            ..Default::default()
        };
        assert!(container_filter(undefined).is_none());
    }

    #[test]
    fn listed_containers_carry_the_record() {
        let c = container(&record("c1", "p1", ContainerState::Running { pid: 3 }));
        assert_eq!((c.id.as_str(), c.pod_sandbox_id.as_str()), ("c1", "p1"));
        assert_eq!(c.metadata.as_ref().unwrap().name, "app");
        assert_eq!(c.image.as_ref().unwrap().image, "registry.test/app:1");
        assert_eq!(
            (c.image_ref.as_str(), c.image_id.as_str()),
            ("registry.test/app@sha256:bbbb", "sha256:aaaa")
        );
        assert_eq!(c.state(), proto::ContainerState::ContainerRunning);
        assert_eq!(c.created_at, 10);
        assert_eq!(c.labels["tier"], "web");
        assert_eq!(c.annotations["note"], "x");
    }

    fn full_config() -> proto::ContainerConfig {
        proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata { name: "app".into(), attempt: 1 }),
            image: Some(ImageSpec { image: "registry.test/app:1".into(), ..Default::default() }),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo hi".into()],
            working_dir: "/work".into(),
            envs: vec![
                proto::KeyValue { key: "B".into(), value: b"2".to_vec() },
                proto::KeyValue { key: "A".into(), value: b"1".to_vec() },
                proto::KeyValue { key: "B".into(), value: b"3".to_vec() },
            ],
            mounts: vec![
                proto::Mount {
                    container_path: "/a".into(),
                    host_path: "/host/a".into(),
                    readonly: true,
                    ..Default::default()
                },
                proto::Mount {
                    container_path: "/b".into(),
                    host_path: "/host/b".into(),
                    propagation: proto::MountPropagation::PropagationHostToContainer.into(),
                    recursive_read_only: true,
                    ..Default::default()
                },
                proto::Mount {
                    container_path: "/c".into(),
                    host_path: "/host/c".into(),
                    propagation: proto::MountPropagation::PropagationBidirectional.into(),
                    ..Default::default()
                },
            ],
            devices: vec![proto::Device {
                container_path: "/dev/fuse".into(),
                host_path: "/dev/fuse".into(),
                permissions: "rwm".into(),
            }],
            labels: [("tier".to_string(), "web".to_string())].into(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            log_path: "app/1.log".into(),
            stdin: true,
            stdin_once: true,
            tty: true,
            linux: Some(proto::LinuxContainerConfig {
                resources: Some(proto::LinuxContainerResources {
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    cpu_shares: 512,
                    memory_limit_in_bytes: 20 << 20,
                    memory_swap_limit_in_bytes: 40 << 20,
                    oom_score_adj: 100,
                    cpuset_cpus: "0-1".into(),
                    cpuset_mems: "0".into(),
                    hugepage_limits: vec![proto::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4 << 20,
                    }],
                    unified: [("memory.high".to_string(), "10M".to_string())].into(),
                }),
                security_context: Some(proto::LinuxContainerSecurityContext {
                    capabilities: Some(proto::Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        drop_capabilities: vec!["ALL".into()],
                        add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
                    }),
                    privileged: true,
                    namespace_options: Some(proto::NamespaceOption {
                        pid: proto::NamespaceMode::Target.into(),
                        target_id: "other".into(),
                        ..Default::default()
                    }),
                    run_as_user: Some(proto::Int64Value { value: 0 }),
                    run_as_group: Some(proto::Int64Value { value: 2000 }),
                    run_as_username: "berth".into(),
                    readonly_rootfs: true,
                    supplemental_groups: vec![3000, 4000],
                    no_new_privs: true,
                    masked_paths: vec!["/proc/kcore".into()],
                    readonly_paths: vec!["/proc/sys".into()],
                    seccomp: Some(proto::SecurityProfile {
                        profile_type: proto::security_profile::ProfileType::Localhost.into(),
                        localhost_ref: "/var/lib/kubelet/seccomp/p.json".into(),
                    }),
                    apparmor: Some(proto::SecurityProfile {
                        profile_type: proto::security_profile::ProfileType::Unconfined.into(),
                        localhost_ref: String::new(),
                    }),
                    selinux_options: Some(proto::SeLinuxOption {
                        user: "u".into(),
                        role: "r".into(),
                        r#type: "t".into(),
                        level: "s0".into(),
                    }),
                    supplemental_groups_policy: proto::SupplementalGroupsPolicy::Strict.into(),
                    ..Default::default()
                }),
            }),
            stop_signal: proto::Signal::Sigquit.into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_translates_the_whole_config() {
        let config = container_config(full_config()).unwrap();
        let expected = rt::ContainerConfig {
            metadata: rt::ContainerMetadata { name: "app".into(), attempt: 1 },
            image: "registry.test/app:1".into(),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "echo hi".into()],
            working_dir: "/work".into(),
            envs: vec![
                ("B".into(), "2".into()),
                ("A".into(), "1".into()),
                ("B".into(), "3".into()),
            ],
            mounts: vec![
                rt::Mount {
                    container_path: "/a".into(),
                    host_path: "/host/a".into(),
                    readonly: true,
                    recursive_read_only: false,
                    propagation: rt::Propagation::Private,
                    ..Default::default()
                },
                rt::Mount {
                    container_path: "/b".into(),
                    host_path: "/host/b".into(),
                    readonly: false,
                    recursive_read_only: true,
                    propagation: rt::Propagation::HostToContainer,
                    ..Default::default()
                },
                rt::Mount {
                    container_path: "/c".into(),
                    host_path: "/host/c".into(),
                    readonly: false,
                    recursive_read_only: false,
                    propagation: rt::Propagation::Bidirectional,
                    ..Default::default()
                },
            ],
            devices: vec![rt::Device {
                container_path: "/dev/fuse".into(),
                host_path: "/dev/fuse".into(),
                permissions: "rwm".into(),
            }],
            labels: [("tier".to_string(), "web".to_string())].into(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            log_path: "app/1.log".into(),
            stdin: true,
            stdin_once: true,
            tty: true,
            resources: rt::Resources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_in_bytes: 20 << 20,
                memory_swap_limit_in_bytes: 40 << 20,
                oom_score_adj: 100,
                cpuset_cpus: "0-1".into(),
                cpuset_mems: "0".into(),
                hugepage_limits: vec![rt::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                }],
                unified: [("memory.high".to_string(), "10M".to_string())].into(),
            },
            security: rt::SecurityContext {
                capabilities: rt::Capabilities {
                    add: vec!["NET_ADMIN".into()],
                    drop: vec!["ALL".into()],
                    add_ambient: vec!["NET_BIND_SERVICE".into()],
                },
                privileged: true,
                pid: NamespaceMode::Target,
                target_id: "other".into(),
                run_as_user: Some(0),
                run_as_group: Some(2000),
                run_as_username: "berth".into(),
                readonly_rootfs: true,
                supplemental_groups: vec![3000, 4000],
                no_new_privs: true,
                masked_paths: Some(vec!["/proc/kcore".into()]),
                readonly_paths: Some(vec!["/proc/sys".into()]),
                seccomp: rt::SecurityProfile::Localhost("/var/lib/kubelet/seccomp/p.json".into()),
                apparmor: rt::SecurityProfile::Unconfined,
                selinux: Some(rt::SelinuxOptions {
                    user: "u".into(),
                    role: "r".into(),
                    r#type: "t".into(),
                    level: "s0".into(),
                }),
                supplemental_groups_policy: rt::SupplementalGroupsPolicy::Strict,
                user_namespace: rt::UsernsRequest::Unspecified,
            },
            stop_signal: "SIGQUIT".into(),
        };
        assert_eq!(config, expected);
        // The resources read back as they came in.
        let linux = full_config().linux.unwrap().resources.unwrap();
        assert_eq!(proto_resources(&config.resources), linux);
    }

    #[test]
    fn security_context_table() {
        type Ctx = proto::LinuxContainerSecurityContext;
        let pid = |mode: proto::NamespaceMode| Ctx {
            namespace_options: Some(proto::NamespaceOption {
                pid: mode.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Nothing set: no user, the pod's PID namespace, no masked or read-only paths, no
        // seccomp, the default AppArmor profile, Merge.
        let none = rt::SecurityContext {
            masked_paths: Some(vec![]),
            readonly_paths: Some(vec![]),
            apparmor: rt::SecurityProfile::RuntimeDefault,
            ..Default::default()
        };
        let profile = |kind: proto::security_profile::ProfileType, reference: &str| {
            Some(proto::SecurityProfile {
                profile_type: kind.into(),
                localhost_ref: reference.into(),
            })
        };
        use proto::security_profile::ProfileType as P;
        use rt::SecurityProfile as R;
        let table: Vec<(Ctx, rt::SecurityContext)> = vec![
            (Ctx::default(), none.clone()),
            (
                Ctx { run_as_user: Some(proto::Int64Value { value: 0 }), ..Default::default() },
                rt::SecurityContext { run_as_user: Some(0), ..none.clone() },
            ),
            (
                Ctx {
                    run_as_username: "berth".into(),
                    run_as_group: Some(proto::Int64Value { value: 5 }),
                    ..Default::default()
                },
                rt::SecurityContext {
                    run_as_username: "berth".into(),
                    run_as_group: Some(5),
                    ..none.clone()
                },
            ),
            (
                Ctx { run_as_username: "berth".into(), ..Default::default() },
                rt::SecurityContext { run_as_username: "berth".into(), ..none.clone() },
            ),
            (pid(proto::NamespaceMode::Pod), none.clone()),
            (
                pid(proto::NamespaceMode::Container),
                rt::SecurityContext { pid: NamespaceMode::Container, ..none.clone() },
            ),
            (
                pid(proto::NamespaceMode::Node),
                rt::SecurityContext { pid: NamespaceMode::Node, ..none.clone() },
            ),
            (
                Ctx { readonly_paths: vec!["/proc/bus".into()], ..Default::default() },
                rt::SecurityContext {
                    readonly_paths: Some(vec!["/proc/bus".into()]),
                    ..none.clone()
                },
            ),
            // seccomp and AppArmor: the message, else the deprecated string.
            (
                Ctx { seccomp: profile(P::RuntimeDefault, ""), ..Default::default() },
                rt::SecurityContext { seccomp: R::RuntimeDefault, ..none.clone() },
            ),
            (
                Ctx {
                    seccomp: profile(P::Unconfined, ""),
                    seccomp_profile_path: "runtime/default".into(),
                    ..Default::default()
                },
                none.clone(),
            ),
            (
                Ctx { seccomp_profile_path: "docker/default".into(), ..Default::default() },
                rt::SecurityContext { seccomp: R::RuntimeDefault, ..none.clone() },
            ),
            (
                Ctx { seccomp_profile_path: "localhost//p.json".into(), ..Default::default() },
                rt::SecurityContext { seccomp: R::Localhost("/p.json".into()), ..none.clone() },
            ),
            (
                Ctx { apparmor: profile(P::Localhost, "custom"), ..Default::default() },
                rt::SecurityContext { apparmor: R::Localhost("custom".into()), ..none.clone() },
            ),
            (
                Ctx { apparmor_profile: "unconfined".into(), ..Default::default() },
                rt::SecurityContext { apparmor: R::Unconfined, ..none.clone() },
            ),
            (
                Ctx {
                    supplemental_groups_policy: proto::SupplementalGroupsPolicy::Strict.into(),
                    ..Default::default()
                },
                rt::SecurityContext {
                    supplemental_groups_policy: rt::SupplementalGroupsPolicy::Strict,
                    ..none.clone()
                },
            ),
            (
                Ctx {
                    namespace_options: Some(proto::NamespaceOption {
                        userns_options: Some(proto::UserNamespace {
                            mode: proto::NamespaceMode::Node.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                rt::SecurityContext { user_namespace: rt::UsernsRequest::Node, ..none.clone() },
            ),
            (
                Ctx {
                    namespace_options: Some(proto::NamespaceOption {
                        userns_options: Some(proto::UserNamespace {
                            mode: proto::NamespaceMode::Pod.into(),
                            uids: vec![proto::IdMapping {
                                host_id: 65536,
                                container_id: 0,
                                length: 65536,
                            }],
                            gids: vec![],
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                rt::SecurityContext {
                    user_namespace: rt::UsernsRequest::Pod {
                        uids: vec![rt::IdMapping {
                            container_id: 0,
                            host_id: 65536,
                            length: 65536,
                        }],
                        gids: vec![],
                    },
                    ..none.clone()
                },
            ),
        ];
        for (ctx, expected) in table {
            assert_eq!(security_context(ctx.clone()).unwrap(), expected, "{ctx:?}");
        }

        let refused: Vec<(Ctx, &str)> = vec![
            (
                Ctx {
                    namespace_options: Some(proto::NamespaceOption {
                        userns_options: Some(proto::UserNamespace {
                            mode: proto::NamespaceMode::Container.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "user namespace mode 1",
            ),
            (
                Ctx {
                    namespace_options: Some(proto::NamespaceOption {
                        pid: 17,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "17",
            ),
            (
                Ctx { run_as_group: Some(proto::Int64Value { value: 5 }), ..Default::default() },
                "run_as_group is set without run_as_user",
            ),
            (Ctx { supplemental_groups_policy: 7, ..Default::default() }, "policy 7"),
            (Ctx { seccomp: profile(P::RuntimeDefault, "x"), ..Default::default() }, "\"x\""),
            (Ctx { seccomp: profile(P::Localhost, ""), ..Default::default() }, "localhost_ref"),
            (
                Ctx {
                    apparmor: Some(proto::SecurityProfile {
                        profile_type: 9,
                        localhost_ref: String::new(),
                    }),
                    ..Default::default()
                },
                "AppArmor profile type 9",
            ),
            (Ctx { seccomp_profile_path: "bogus".into(), ..Default::default() }, "bogus"),
            (Ctx { apparmor_profile: "localhost/".into(), ..Default::default() }, "AppArmor"),
        ];
        for (ctx, words) in refused {
            let message = bad_request(security_context(ctx));
            assert!(message.contains(words), "{message}");
        }
    }

    #[test]
    fn create_refuses_what_it_cannot_honour() {
        let no_metadata = proto::ContainerConfig { metadata: None, ..full_config() };
        assert!(bad_request(container_config(no_metadata)).contains("metadata"));

        let mut binary_env = full_config();
        binary_env.envs.push(proto::KeyValue { key: "RAW".into(), value: vec![0xff, 0xfe] });
        assert!(bad_request(container_config(binary_env)).contains("RAW"));

        let mut odd_propagation = full_config();
        odd_propagation.mounts[0].propagation = 7;
        assert!(bad_request(container_config(odd_propagation)).contains("/a"));

        // Image volumes are taken, and come back with the image's id.
        let mut image_volume = full_config();
        image_volume.mounts[1].host_path = String::new();
        image_volume.mounts[1].image = Some(ImageSpec {
            image: "registry.test/data:1".into(),
            user_specified_image: "data:1".into(),
            ..Default::default()
        });
        image_volume.mounts[1].image_sub_path = "etc".into();
        let mut config = container_config(image_volume).unwrap();
        let volume = config.mounts[1].image.as_mut().unwrap();
        assert_eq!(
            (volume.image.as_str(), volume.sub_path.as_str()),
            ("registry.test/data:1", "etc")
        );
        volume.image_ref = "sha256:abc".into();
        let reported = proto_mount(&config.mounts[1]);
        let spec = reported.image.unwrap();
        assert_eq!(
            (spec.image.as_str(), spec.user_specified_image.as_str(), spec.image_ref.as_str()),
            ("registry.test/data:1", "data:1", "sha256:abc")
        );
        assert_eq!(reported.image_sub_path, "etc");
        assert_eq!(proto_mount(&config.mounts[0]).image, None);
        let mut sub_path_alone = full_config();
        sub_path_alone.mounts[1].image_sub_path = "etc".into();
        assert!(bad_request(container_config(sub_path_alone)).contains("without an image"));

        // Idmapped mounts are taken, both ways.
        let mut id_mapped = full_config();
        let mapping = proto::IdMapping { host_id: 1000, container_id: 0, length: 1 };
        id_mapped.mounts[2].uid_mappings = vec![mapping];
        id_mapped.mounts[2].gid_mappings = vec![mapping];
        let config = container_config(id_mapped).unwrap();
        let expected = rt::IdMapping { container_id: 0, host_id: 1000, length: 1 };
        assert_eq!(config.mounts[2].uid_mappings, [expected]);
        assert_eq!(proto_mount(&config.mounts[2]).gid_mappings, [mapping]);

        // Mount options are carried to the runtime (which checks them) and shown back.
        let mut options = full_config();
        options.mounts[0].mount_options = vec!["noexec".into(), "nosuid".into()];
        let config = container_config(options).unwrap();
        assert_eq!(config.mounts[0].options, ["noexec", "nosuid"]);
        assert_eq!(proto_mount(&config.mounts[0]).mount_options, ["noexec", "nosuid"]);

        let odd_signal = proto::ContainerConfig { stop_signal: 99, ..full_config() };
        assert!(bad_request(container_config(odd_signal)).contains("99"));

        assert!(bad_request(required_id("", "container id")).contains("container id"));
    }
}
