//! Exec (collected or streamed), attach and log reopening: requests passed to the container's
//! monitor once the container is known to run.

use std::time::Duration;

use super::*;
use crate::container::stream::{self, StdioSession, StreamOptions};
use crate::error::{Error, Result};
use crate::monitor::proto::{self, Reply, Request};

impl Inner {
    pub(super) async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("ExecSync needs a command".into()));
        }
        let record = self.running(id)?;
        let process = self.exec_process(&record, cmd.clone(), false)?;
        let limit = timeout.filter(|t| !t.is_zero());
        let request = proto::ExecRequest {
            id: record.id.clone(),
            process,
            timeout_ms: limit.map_or(0, |t| t.as_millis() as u64),
            output_limit: EXEC_OUTPUT_LIMIT,
        };
        let monitor = self.monitor_of(&record);
        match monitor
            .call(Request::Exec(Box::new(request)), limit.unwrap_or(EXEC_NO_TIMEOUT))
            .await?
        {
            Reply::Exec { timed_out: true, .. } => Err(Error::Timeout(format!(
                "command {cmd:?} timed out after {:?}",
                limit.unwrap_or_default()
            ))),
            Reply::Exec { exit_code, stdout, stderr, .. } => Ok(ExecOutput {
                stdout: proto::decode_bytes(&stdout),
                stderr: proto::decode_bytes(&stderr),
                exit_code,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// The record of `id`, which must be running.
    pub(super) fn running(&self, id: &str) -> Result<ContainerRecord> {
        let entry = self.store.get(id)?;
        let record = self.refreshed(&entry.record());
        if !matches!(record.state, ContainerState::Running { .. }) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not running",
                record.id,
                record.state.name()
            )));
        }
        Ok(record)
    }

    /// The process of an exec: the container's own (user, env, cwd, capabilities…) running
    /// `cmd`.
    pub(super) fn exec_process(
        &self,
        record: &ContainerRecord,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<oci_spec::runtime::Process> {
        let spec_path = self.bundle(&record.id).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path)
            .map_err(|err| Error::Internal(format!("reading {}: {err}", spec_path.display())))?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(cmd)).set_terminal(Some(tty));
        Ok(process)
    }

    pub(super) async fn exec_stream(
        &self,
        id: &str,
        cmd: Vec<String>,
        options: StreamOptions,
    ) -> Result<StdioSession> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("Exec needs a command".into()));
        }
        let record = self.running(id)?;
        let process = self.exec_process(&record, cmd, options.tty)?;
        stream::exec(&self.monitor_of(&record), &record.id, process, options).await
    }

    pub(super) async fn attach(&self, id: &str, options: StreamOptions) -> Result<StdioSession> {
        let record = self.running(id)?;
        if options.stdin && !record.config.stdin {
            return Err(Error::InvalidArgument(format!(
                "container {} was not created with stdin",
                record.id
            )));
        }
        if options.tty != record.config.tty {
            tracing::debug!(
                container_id = %record.id,
                tty = record.config.tty,
                "attach asked for tty {}: the container's own is used",
                options.tty
            );
        }
        stream::attach(&self.monitor_of(&record), &record.id, options).await
    }

    pub(super) async fn reopen_log(&self, id: &str) -> Result<()> {
        let record = self.running(id)?;
        let monitor = self.monitor_of(&record);
        match monitor.call(Request::ReopenLog { id: record.id.clone() }, Duration::ZERO).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
