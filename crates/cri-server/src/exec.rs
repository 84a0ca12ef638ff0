//! ExecSync, Exec, Attach, PortForward. ExecSync runs to completion in the call; the other
//! three only check the request and return a single-use URL on the streaming server, where
//! the client then connects (see `streaming`).

use std::time::Duration;

use berth_runtime::container::ContainerState;

use crate::convert::required_id;
use crate::cri::Cri;
use crate::error::{CriError, CriResult};
use crate::proto::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, ExecSyncRequest, ExecSyncResponse,
    PortForwardRequest, PortForwardResponse,
};
use crate::rpc_layer::{record_container, record_pod};
use crate::streaming::{StdioRequest, StreamRequest};

pub async fn exec_sync(cri: &Cri, request: ExecSyncRequest) -> CriResult<ExecSyncResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    if request.cmd.is_empty() {
        return Err(CriError::InvalidRequest("ExecSync needs a command".into()));
    }
    let output =
        cri.runtime.containers().exec_sync(id, request.cmd, exec_timeout(request.timeout)).await?;
    Ok(ExecSyncResponse {
        stdout: output.stdout,
        stderr: output.stderr,
        exit_code: output.exit_code,
    })
}

pub async fn exec(cri: &Cri, request: ExecRequest) -> CriResult<ExecResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    if request.cmd.is_empty() {
        return Err(CriError::InvalidRequest("Exec needs a command".into()));
    }
    let io = stdio(request.stdin, request.stdout, request.stderr, request.tty)?;
    let container_id = running(cri, id)?;
    let url = cri.streaming.register(StreamRequest::Exec { container_id, cmd: request.cmd, io })?;
    Ok(ExecResponse { url })
}

pub async fn attach(cri: &Cri, request: AttachRequest) -> CriResult<AttachResponse> {
    let id = required_id(&request.container_id, "container id")?;
    record_container(id);
    let io = stdio(request.stdin, request.stdout, request.stderr, request.tty)?;
    let container_id = running(cri, id)?;
    let url = cri.streaming.register(StreamRequest::Attach { container_id, io })?;
    Ok(AttachResponse { url })
}

pub async fn port_forward(
    cri: &Cri,
    request: PortForwardRequest,
) -> CriResult<PortForwardResponse> {
    let id = required_id(&request.pod_sandbox_id, "pod sandbox id")?;
    record_pod(id);
    let ports = request
        .port
        .iter()
        .map(|&port| {
            u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
                CriError::InvalidRequest(format!("port {port} is not a TCP port (1-65535)"))
            })
        })
        .collect::<CriResult<Vec<u16>>>()?;
    let pod_id = cri.runtime.pods().resolve_id(id)?;
    let url = cri.streaming.register(StreamRequest::PortForward { pod_id, ports })?;
    Ok(PortForwardResponse { url })
}

/// The streams asked for, checked as the kubelet's streaming library checks them.
fn stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> CriResult<StdioRequest> {
    if tty && stderr {
        // A terminal has one output; the kubelet never asks for both.
        return Err(CriError::InvalidRequest("tty and stderr cannot both be true".into()));
    }
    if !(stdin || stdout || stderr) {
        return Err(CriError::InvalidRequest("one of stdin, stdout, or stderr must be set".into()));
    }
    Ok(StdioRequest { stdin, stdout, stderr, tty })
}

/// The full id of `id`, which must be running: a URL for a container that cannot take a
/// stream would only fail later, where the client learns less.
fn running(cri: &Cri, id: &str) -> CriResult<String> {
    let record = cri.runtime.containers().record(id)?;
    match record.state {
        ContainerState::Running { .. } => Ok(record.id),
        _ => Err(CriError::Runtime(berth_runtime::Error::FailedPrecondition(format!(
            "container {} is not running",
            record.id
        )))),
    }
}

/// ExecSync's timeout in seconds; zero (or less) means none, as the kubelet's probes without a
/// timeout send.
fn exec_timeout(seconds: i64) -> Option<Duration> {
    u64::try_from(seconds).ok().filter(|&s| s > 0).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(exec_timeout(3), Some(Duration::from_secs(3)));
        assert_eq!(exec_timeout(0), None);
        assert_eq!(exec_timeout(-1), None);
    }

    #[test]
    fn streams_are_checked_as_the_kubelet_checks_them() {
        assert!(stdio(false, true, true, true).is_err());
        assert!(stdio(false, false, false, false).is_err());
        let io = stdio(true, true, false, true).unwrap();
        assert!(io.stdin && io.stdout && !io.stderr && io.tty);
    }
}
