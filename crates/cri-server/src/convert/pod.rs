//! A pod's record in its CRI form: the status that PodSandboxStatus, ListPodSandbox and the
//! container events all show.

use berth_runtime::pod::{self, PodRecord, PodState};

use super::{proto_id_mappings, to_map};
use crate::proto::{
    self, LinuxPodSandboxStatus, Namespace, NamespaceOption, PodIp, PodSandboxMetadata,
    PodSandboxNetworkStatus, PodSandboxStatus,
};

/// The CRI status of a pod's record (also in container events).
pub(crate) fn pod_status(record: &PodRecord) -> PodSandboxStatus {
    let network = record.network.as_ref().map(|net| PodSandboxNetworkStatus {
        ip: net.ips.first().cloned().unwrap_or_default(),
        additional_ips: net.ips.iter().skip(1).map(|ip| PodIp { ip: ip.clone() }).collect(),
    });
    PodSandboxStatus {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: state(record.state).into(),
        created_at: record.created_at_nanos,
        network,
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(namespace_option(&record.config.namespaces)),
            }),
        }),
        labels: to_map(&record.config.labels),
        annotations: to_map(&record.config.annotations),
        runtime_handler: record.config.runtime_handler.clone(),
    }
}

pub(crate) fn metadata(record: &PodRecord) -> PodSandboxMetadata {
    let meta = &record.config.metadata;
    PodSandboxMetadata {
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        namespace: meta.namespace.clone(),
        attempt: meta.attempt,
    }
}

pub(crate) fn state(state: PodState) -> proto::PodSandboxState {
    match state {
        PodState::Ready => proto::PodSandboxState::SandboxReady,
        PodState::NotReady => proto::PodSandboxState::SandboxNotready,
    }
}

pub(crate) fn namespace_option(options: &pod::NamespaceOptions) -> NamespaceOption {
    NamespaceOption {
        network: proto_mode(options.network).into(),
        pid: proto_mode(options.pid).into(),
        ipc: proto_mode(options.ipc).into(),
        target_id: options.target_id.clone(),
        userns_options: options.user.as_ref().map(|user| proto::UserNamespace {
            mode: proto::NamespaceMode::Pod.into(),
            uids: proto_id_mappings(&[user.uids]),
            gids: proto_id_mappings(&[user.gids]),
        }),
    }
}

pub(crate) fn proto_mode(mode: pod::NamespaceMode) -> proto::NamespaceMode {
    match mode {
        pod::NamespaceMode::Pod => proto::NamespaceMode::Pod,
        pod::NamespaceMode::Container => proto::NamespaceMode::Container,
        pod::NamespaceMode::Node => proto::NamespaceMode::Node,
        pod::NamespaceMode::Target => proto::NamespaceMode::Target,
    }
}
