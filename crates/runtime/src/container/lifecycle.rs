//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ExecSync and the queries.

use std::sync::Arc;
use std::time::Duration;

use crate::container::types::*;
use crate::error::{Error, Result};

/// What ContainerStatus reports beyond the record.
#[derive(Debug, Clone)]
pub struct ContainerDetails {
    pub record: ContainerRecord,
    /// For `verbose`: pid, the OCI spec, rootfs and snapshot paths.
    pub info: Option<serde_json::Value>,
}

/// What ExecSync returns.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The container service: a cheap handle on shared state.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

struct Inner {}

impl Containers {
    pub async fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<String> {
        let _ = (pod_id, config, &self.inner);
        Err(Error::Internal("not built yet".into()))
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(Error::Internal("not built yet".into()))
    }

    /// Sends the stop signal, then SIGKILL after `timeout` (zero: at once).
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<()> {
        let _ = (id, timeout);
        Err(Error::Internal("not built yet".into()))
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(Error::Internal("not built yet".into()))
    }

    pub async fn status(&self, id: &str, verbose: bool) -> Result<ContainerDetails> {
        let _ = (id, verbose);
        Err(Error::Internal("not built yet".into()))
    }

    pub async fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        let _ = filter;
        Vec::new()
    }

    /// Runs `cmd` in the container; `timeout` (None: no limit) kills it and fails with
    /// [`Error::Timeout`].
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        let _ = (id, cmd, timeout);
        Err(Error::Internal("not built yet".into()))
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(Error::Internal("not built yet".into()))
    }
}
