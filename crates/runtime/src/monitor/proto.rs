//! The protocol between berthd and a pod's monitor: one JSON request per line on a fresh
//! connection to `<pod state>/monitor.sock`, answered by one JSON line. Every request carries
//! the protocol version, so that a berthd of a later version, restarted over monitors of an
//! earlier one, is told plainly what they do not understand.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::ExitInfo;

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who are you and what do you run.
    Hello,
    Create(Box<CreateRequest>),
    Start {
        id: String,
    },
    Signal {
        id: String,
        signal: i32,
    },
    /// Answered when the container has exited, or with `Running` after `timeout_ms`.
    Wait {
        id: String,
        timeout_ms: u64,
    },
    Exec(Box<ExecRequest>),
    ReopenLog {
        id: String,
    },
    /// Kills what is left of the container and drops it from the monitor's memory.
    Forget {
        id: String,
    },
    /// Kills every container left and exits.
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsPlan {
    /// Lower dirs are relative to it (top first).
    pub lower_base: PathBuf,
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CgroupView {
    /// (name under /sys/fs/cgroup, host dir of the container's cgroup) per hierarchy.
    V1(Vec<(String, PathBuf)>),
    V2,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    /// The OCI runtime spec (`config.json`).
    pub spec: PathBuf,
    pub rootfs: RootfsPlan,
    pub cgroup_procs: Vec<PathBuf>,
    pub cgroup_view: CgroupView,
    /// The container's memory cgroup directory, where OOM kills are counted.
    pub memory_cgroup: Option<PathBuf>,
    pub log_path: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    /// Where the exit is recorded (atomically), for a berthd that was down when it happened.
    pub exit_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: String,
    /// The process to run (args, env, cwd, user, capabilities), from the container's spec.
    pub process: oci_spec::runtime::Process,
    /// Zero: no limit.
    pub timeout_ms: u64,
    /// Output beyond this many bytes per stream is dropped.
    pub output_limit: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ContainerStatus {
    Created { pid: u32 },
    Running { pid: u32, started_at_nanos: i64 },
    Exited(ExitInfo),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello { version: u32, pid: u32, containers: Vec<(String, ContainerStatus)> },
    Created { pid: u32 },
    Started { pid: u32, started_at_nanos: i64 },
    Status(ContainerStatus),
    Exec { exit_code: i32, stdout: String, stderr: String, timed_out: bool },
    Done,
    Error { kind: ErrorKind, message: String },
}

/// How berthd should report a monitor's error to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request cannot work (a missing executable, a bad mount): the client's fault.
    Invalid,
    NotFound,
    /// The container is not in a state that allows it.
    State,
    Internal,
}

/// Exec output travels as base64: it is bytes, not text.
pub fn encode_bytes(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_bytes(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default()
}
