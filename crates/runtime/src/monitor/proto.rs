//! The protocol between berthd and a pod's monitor: one JSON request per line on a fresh
//! connection to `<pod state>/monitor.sock`, answered by one JSON line. Every request carries
//! the protocol version, so that a berthd of a later version, restarted over monitors of an
//! earlier one, is told plainly what they do not understand.
//!
//! A request is sent with the lowest version that understands it ([`RequestLine::new`]), and
//! a monitor answers every version from [`MIN_VERSION`] to [`VERSION`]: so a monitor of an
//! earlier berthd still takes what it always took, and refuses (rather than misreads) what it
//! cannot do. Version 2 added [`Executor::Oci`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::ExitInfo;

/// The newest version this side speaks.
pub const VERSION: u32 = 2;
/// The oldest version a monitor still answers.
pub const MIN_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl RequestLine {
    /// The request, marked with the lowest version that has everything it uses.
    pub fn new(request: Request) -> RequestLine {
        let v = match &request {
            Request::Create(create) if create.executor != Executor::Embedded => 2,
            _ => 1,
        };
        RequestLine { v, request }
    }
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

/// What makes the container's processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Executor {
    /// berth's own (`executor/`): the monitor clones the container itself.
    #[default]
    Embedded,
    /// An OCI runtime's CLI (runc, crun), run by the monitor on the bundle.
    Oci(OciExecutor),
}

impl Executor {
    fn is_embedded(&self) -> bool {
        *self == Executor::Embedded
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciExecutor {
    /// The handler's name, for messages.
    pub handler: String,
    /// Absolute.
    pub binary: PathBuf,
    /// The runtime's `--root`.
    pub root: PathBuf,
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
    /// Absent (version 1): the embedded executor. With an OCI runtime, the bundle is the
    /// spec's directory and the monitor mounts the rootfs at `spec.root.path` itself, in the
    /// host's mount namespace, since the runtime expects a mounted root.
    #[serde(default, skip_serializing_if = "Executor::is_embedded")]
    pub executor: Executor,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn create(executor: Executor) -> Request {
        Request::Create(Box::new(CreateRequest {
            id: "c".into(),
            spec: "/b/config.json".into(),
            rootfs: RootfsPlan {
                lower_base: "/l".into(),
                lower: vec!["a".into()],
                upper: "/u".into(),
                work: "/w".into(),
            },
            cgroup_procs: vec![],
            cgroup_view: CgroupView::V2,
            memory_cgroup: None,
            log_path: None,
            tty: false,
            stdin: false,
            stdin_once: false,
            exit_file: "/e".into(),
            executor,
        }))
    }

    #[test]
    fn requests_carry_the_lowest_version_that_has_them() {
        let embedded = serde_json::to_value(RequestLine::new(create(Executor::Embedded))).unwrap();
        assert_eq!(embedded["v"], 1);
        // Exactly what a version 1 monitor always read: no new field.
        assert!(embedded.get("executor").is_none(), "{embedded}");
        let oci = Executor::Oci(OciExecutor {
            handler: "runc".into(),
            binary: "/usr/sbin/runc".into(),
            root: "/run/berth/runtimes/runc".into(),
        });
        let line = serde_json::to_string(&RequestLine::new(create(oci.clone()))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["v"], 2);
        assert_eq!(value["executor"]["kind"], "oci");
        let back: RequestLine = serde_json::from_str(&line).unwrap();
        let Request::Create(back) = back.request else { panic!("not a create") };
        assert_eq!(back.executor, oci);
        assert_eq!(RequestLine::new(Request::Hello).v, 1);
    }

    #[test]
    fn a_version_1_create_reads_as_embedded() {
        let line = r#"{"v":1,"op":"create","id":"c","spec":"/b/config.json",
            "rootfs":{"lower_base":"/l","lower":["a"],"upper":"/u","work":"/w"},
            "cgroup_procs":[],"cgroup_view":"V2","memory_cgroup":null,"log_path":null,
            "tty":false,"stdin":false,"stdin_once":false,"exit_file":"/e"}"#;
        let request: RequestLine = serde_json::from_str(line).unwrap();
        let Request::Create(create) = request.request else { panic!("not a create") };
        assert_eq!(create.executor, Executor::Embedded);
    }
}
