//! Conversions between the CRI's messages and the plain types of `berth_runtime` that more than
//! one RPC file needs: ids, maps, id mappings, and the status of a container or a pod (which
//! the events and the stats RPCs show too). RPC files use this module and never one another.

use std::collections::{BTreeMap, HashMap};

use berth_runtime::userns::IdMapping;

use crate::error::{CriError, CriResult};
use crate::proto;

pub mod container;
pub mod pod;

/// The id of an object a request acts on (start, stop, exec, update…). Ids are matched by
/// prefix below, so an empty one would name any container there is: INVALID_ARGUMENT.
pub(crate) fn required_id<'a>(id: &'a str, what: &str) -> CriResult<&'a str> {
    if id.is_empty() {
        return Err(CriError::InvalidRequest(format!("{what} is empty")));
    }
    Ok(id)
}

/// The id of an object a query looks up (its status or stats): an empty one names nothing,
/// NOT_FOUND, as any id no object has. The kubelet (PodAndContainerStatsFromCRI) calls
/// PodSandboxStats with "" at start only to learn whether it is UNIMPLEMENTED, and logs any
/// other answer as an error; containerd and CRI-O give this lookup no kind of its own (their
/// "prefix can't be empty" / "PodSandboxId should not be empty" reach the client as UNKNOWN).
pub(crate) fn lookup_id<'a>(id: &'a str, what: &str) -> CriResult<&'a str> {
    if id.is_empty() {
        return Err(CriError::NoSuchId(format!("no {what} has an empty id")));
    }
    Ok(id)
}

pub(crate) fn id_mappings(list: &[proto::IdMapping]) -> Vec<IdMapping> {
    list.iter()
        .map(|m| IdMapping { container_id: m.container_id, host_id: m.host_id, length: m.length })
        .collect()
}

pub(crate) fn proto_id_mappings(list: &[IdMapping]) -> Vec<proto::IdMapping> {
    list.iter()
        .map(|m| proto::IdMapping {
            host_id: m.host_id,
            container_id: m.container_id,
            length: m.length,
        })
        .collect()
}

pub(crate) fn to_map(map: &BTreeMap<String, String>) -> HashMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
