//! The protocol between berthd and a pod's monitor: one JSON request per line on a fresh
//! connection to `<pod state>/monitor.sock`, answered by one JSON line. Every request carries
//! the protocol version, so that a berthd of a later version, restarted over monitors of an
//! earlier one, is told plainly what they do not understand.
//!
//! A request is sent with the lowest version that understands it ([`RequestLine::new`]), and
//! a monitor answers every version from [`MIN_VERSION`] to [`VERSION`]: so a monitor of an
//! earlier berthd still takes what it always took, and refuses (rather than misreads) what it
//! cannot do. Version 2 added [`Executor::Oci`]; version 3 the interactive streams,
//! [`Request::ExecStream`] and [`Request::Attach`]; version 4
//! [`OciExecutor::cgroup_roots`] and [`OciExecutor::prepare_mount_targets`].
//!
//! Those two keep their connection after the answer:
//! - `ExecStream` is answered by [`Reply::ExecStarted`] in one `sendmsg` that carries berthd's
//!   ends of the process's stdio as `SCM_RIGHTS`, in this order: the write end of stdin, the
//!   read end of stdout, the read end of stderr, each only when asked for; with a tty, the pty
//!   master alone. When the process has been reaped, [`Reply::ExecExited`] follows.
//! - `Attach` is answered by [`Reply::Attached`], after which the connection carries
//!   [`frame`]s both ways, until the container's end ([`frame::END`]) or either side closes.
//!
//! berthd sends nothing after such a request until it has the answer line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The newest version this side speaks.
pub const VERSION: u32 = 4;
/// The oldest version a monitor still answers.
pub const MIN_VERSION: u32 = 1;

/// How a container ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit status, or 128 + the signal that killed it.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub finished_at_nanos: i64,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    /// Why it ended when not by itself ("the monitor is gone", "failed to start: …").
    pub message: String,
}

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
            Request::Create(create) if create.executor.needs_version_4() => 4,
            Request::ExecStream(_) | Request::Attach { .. } => 3,
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
    /// An interactive exec (version 3): see the module doc.
    ExecStream(Box<ExecStreamRequest>),
    /// Attaches to the container's own stdio (version 3): see the module doc.
    Attach {
        id: String,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
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

    fn needs_version_4(&self) -> bool {
        matches!(self, Executor::Oci(oci) if !oci.cgroup_roots.is_empty() || oci.prepare_mount_targets)
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
    /// Hierarchies the runtime is to see rooted at another of their cgroups (version 4): for
    /// a runtime that takes `linux.cgroupsPath` from a hierarchy's root (crun), when berth
    /// nests its cgroups under its own, which may lie at a different path in each hierarchy.
    /// Each runtime command runs in a mount namespace of its own where `cgroup` is bound over
    /// `mountpoint`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_roots: Vec<CgroupRoot>,
    /// Whether the monitor makes the mounts' targets in the root before `create` (version 4),
    /// for a runtime that cannot make one behind a symlink of the image (crun).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prepare_mount_targets: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRoot {
    /// Where the hierarchy is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mountpoint: PathBuf,
    /// The directory under it that the runtime sees as the hierarchy's root.
    pub cgroup: PathBuf,
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
pub struct ExecStreamRequest {
    pub id: String,
    /// The process to run; its `terminal` is set by the monitor from `tty`.
    pub process: oci_spec::runtime::Process,
    pub stdin: bool,
    pub stdout: bool,
    /// Ignored with `tty`: the terminal is all three.
    pub stderr: bool,
    pub tty: bool,
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
    Hello {
        version: u32,
        pid: u32,
        containers: Vec<(String, ContainerStatus)>,
    },
    Created {
        pid: u32,
    },
    Started {
        pid: u32,
        started_at_nanos: i64,
    },
    Status(ContainerStatus),
    Exec {
        exit_code: i32,
        stdout: String,
        stderr: String,
        timed_out: bool,
    },
    /// The stream exec runs; `pid` is the monitor's child as the host sees it (the command
    /// itself, or the OCI runtime's `exec`). Carries the stdio descriptors.
    ExecStarted {
        pid: u32,
    },
    /// The stream exec was reaped: its exit status, or 128 + the signal that killed it.
    ExecExited {
        exit_code: i32,
    },
    /// Frames follow; `tty` is the container's (its output is then all stdout).
    Attached {
        tty: bool,
    },
    Done,
    Error {
        kind: ErrorKind,
        message: String,
    },
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

/// The frames of an attach connection: `[kind u8][len u32 BE][payload]`.
pub mod frame {
    /// berthd → monitor: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// monitor → berthd: the container's stdout (all of a tty's output).
    pub const STDOUT: u8 = 1;
    /// monitor → berthd: the container's stderr.
    pub const STDERR: u8 = 2;
    /// monitor → berthd: the container exited and its output is all sent; the monitor closes.
    pub const END: u8 = 3;
    /// berthd → monitor: a terminal size, width then height, u16 BE each.
    pub const RESIZE: u8 = 4;
    /// berthd → monitor: this attacher's stdin ended (empty payload).
    pub const STDIN_EOF: u8 = 5;
    /// A longer payload ends the connection: no side needs more.
    pub const MAX_PAYLOAD: usize = 64 << 10;
    pub const HEADER: usize = 5;

    /// Appends one frame to `out`.
    pub fn encode(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    pub fn resize(width: u16, height: u16) -> [u8; 4] {
        let [w0, w1] = width.to_be_bytes();
        let [h0, h1] = height.to_be_bytes();
        [w0, w1, h0, h1]
    }

    /// (width, height) of a resize payload.
    pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
        match payload {
            [w0, w1, h0, h1] => {
                Some((u16::from_be_bytes([*w0, *w1]), u16::from_be_bytes([*h0, *h1])))
            }
            _ => None,
        }
    }

    /// A frame no side sends: the connection is broken or hostile.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BadFrame(pub String);

    /// Cuts frames out of bytes as they come; `kinds` are the ones this side accepts.
    #[derive(Debug)]
    pub struct Decoder {
        buf: Vec<u8>,
        start: usize,
        kinds: &'static [u8],
    }

    impl Decoder {
        pub fn new(kinds: &'static [u8]) -> Decoder {
            Decoder { buf: Vec::new(), start: 0, kinds }
        }

        pub fn push(&mut self, bytes: &[u8]) {
            if self.start > 0 && self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            self.buf.extend_from_slice(bytes);
        }

        /// Bytes received and not yet returned as frames.
        pub fn pending(&self) -> usize {
            self.buf.len() - self.start
        }

        /// The next whole frame, if there is one.
        pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, BadFrame> {
            let rest = &self.buf[self.start..];
            let Some(header) = rest.get(..HEADER) else { return Ok(None) };
            let kind = header[0];
            if !self.kinds.contains(&kind) {
                return Err(BadFrame(format!("unexpected frame kind {kind}")));
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(BadFrame(format!("frame of {len} bytes")));
            }
            let Some(payload) = rest.get(HEADER..HEADER + len) else { return Ok(None) };
            let payload = payload.to_vec();
            self.start += HEADER + len;
            // Keeps the buffer from growing with what was already taken.
            if self.start >= MAX_PAYLOAD {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            Ok(Some((kind, payload)))
        }
    }
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
            cgroup_roots: vec![],
            prepare_mount_targets: false,
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

    #[test]
    fn a_runtime_with_cgroup_roots_is_version_4() {
        let oci = OciExecutor {
            handler: "crun".into(),
            binary: "/usr/bin/crun".into(),
            root: "/run/berth/runtimes/crun".into(),
            cgroup_roots: vec![CgroupRoot {
                mountpoint: "/sys/fs/cgroup/memory".into(),
                cgroup: "/sys/fs/cgroup/memory/berthd".into(),
            }],
            prepare_mount_targets: false,
        };
        let targets =
            OciExecutor { cgroup_roots: vec![], prepare_mount_targets: true, ..oci.clone() };
        assert_eq!(RequestLine::new(create(Executor::Oci(targets))).v, 4);
        let line = RequestLine::new(create(Executor::Oci(oci.clone())));
        assert_eq!(line.v, 4);
        let back: RequestLine =
            serde_json::from_str(&serde_json::to_string(&line).unwrap()).unwrap();
        let Request::Create(back) = back.request else { panic!("not a create") };
        assert_eq!(back.executor, Executor::Oci(oci));
    }

    #[test]
    fn streams_are_version_3() {
        let process = oci_spec::runtime::Process::default();
        let exec = Request::ExecStream(Box::new(ExecStreamRequest {
            id: "c".into(),
            process,
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        }));
        let line = serde_json::to_string(&RequestLine::new(exec)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!((value["v"].as_u64(), value["op"].as_str()), (Some(3), Some("exec_stream")));
        let back: RequestLine = serde_json::from_str(&line).unwrap();
        assert!(matches!(back.request, Request::ExecStream(e) if e.tty && e.stdin && !e.stderr));
        let attach = Request::Attach { id: "c".into(), stdin: false, stdout: true, stderr: true };
        let line = RequestLine::new(attach);
        assert_eq!(line.v, 3);
        assert!((MIN_VERSION..=VERSION).contains(&line.v));
        // What a version 2 monitor checks: it refuses these rather than misreading them.
        assert!(!(MIN_VERSION..=2).contains(&line.v));
        for reply in [
            Reply::ExecStarted { pid: 7 },
            Reply::ExecExited { exit_code: 137 },
            Reply::Attached { tty: true },
        ] {
            let text = serde_json::to_string(&reply).unwrap();
            let back: Reply = serde_json::from_str(&text).unwrap();
            assert_eq!(format!("{back:?}"), format!("{reply:?}"), "{text}");
        }
    }

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut bytes = Vec::new();
        frame::encode(frame::STDOUT, b"hello", &mut bytes);
        frame::encode(frame::END, b"", &mut bytes);
        frame::encode(frame::RESIZE, &frame::resize(80, 24), &mut bytes);
        assert_eq!(&bytes[..5], &[1, 0, 0, 0, 5]);
        let mut decoder =
            frame::Decoder::new(&[frame::STDOUT, frame::END, frame::RESIZE, frame::STDIN]);
        let mut frames = Vec::new();
        // A byte at a time: a frame comes out only when it is whole.
        for byte in &bytes {
            decoder.push(std::slice::from_ref(byte));
            while let Some(frame) = decoder.next_frame().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(decoder.pending(), 0);
        assert_eq!(
            frames,
            vec![
                (frame::STDOUT, b"hello".to_vec()),
                (frame::END, vec![]),
                (frame::RESIZE, vec![0, 80, 0, 24])
            ]
        );
        assert_eq!(frame::parse_resize(&frames[2].1), Some((80, 24)));
        assert_eq!(frame::parse_resize(&[1, 2, 3]), None);
        // Large frames, many of them: the buffer does not keep what was taken.
        let big = vec![7u8; frame::MAX_PAYLOAD];
        for _ in 0..10 {
            let mut one = Vec::new();
            frame::encode(frame::STDIN, &big, &mut one);
            decoder.push(&one);
            assert_eq!(decoder.next_frame().unwrap(), Some((frame::STDIN, big.clone())));
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut decoder = frame::Decoder::new(&[frame::STDIN, frame::STDIN_EOF]);
        decoder.push(&[frame::STDOUT, 0, 0, 0, 1, b'x']);
        assert!(decoder.next_frame().is_err(), "a kind this side does not take");
        let mut decoder = frame::Decoder::new(&[frame::STDIN]);
        let len = (frame::MAX_PAYLOAD as u32 + 1).to_be_bytes();
        decoder.push(&[frame::STDIN, len[0], len[1], len[2], len[3]]);
        assert!(decoder.next_frame().is_err(), "a payload over the limit");
    }
}
