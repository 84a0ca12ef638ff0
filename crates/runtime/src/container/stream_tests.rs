//! Interactive exec and attach for real (root): a monitor process started from the test (a
//! fork that runs its entry point), a busybox container made by the embedded executor or by
//! runc, and berthd's side of the streams (`container/stream.rs`) talking to it. Each case
//! runs under both.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::container::stream::{self, StdioSession, StreamOptions, TerminalSize};
use crate::executor::tests::Fixture;
use crate::monitor::proto::*;
use crate::monitor::MonitorClient;
use crate::ErrorKind as Kind;

const RUNC: &str = "/usr/sbin/runc";
const ID: &str = "c1";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Handler {
    Embedded,
    Runc,
}

/// A pod's monitor with one container, run by `handler`; dropping it forgets the container
/// and stops the monitor.
struct Pod {
    fixture: Fixture,
    handler: Handler,
    monitor_pid: u32,
    client: MonitorClient,
}

impl Pod {
    fn dir(&self) -> PathBuf {
        self.fixture.dir.path().join("pod")
    }

    fn log(&self) -> PathBuf {
        self.fixture.dir.path().join("container.log")
    }

    /// A pod whose container runs `args` (started), with `stdin`/`stdin_once`/`tty` as a
    /// CreateContainer would ask.
    async fn start(handler: Handler, args: &[&str], stdin: bool, once: bool, tty: bool) -> Pod {
        let fixture = Fixture::new();
        let base = fixture.dir.path().to_path_buf();
        std::fs::create_dir(base.join("pod")).unwrap();
        std::fs::create_dir(base.join("bundle")).unwrap();
        let monitor_pid = start_monitor(&base.join("pod"));
        let client = MonitorClient::new(&base.join("pod"));
        let pod = Pod { fixture, handler, monitor_pid, client };
        let mut spec = pod.fixture.spec(args);
        if let Some(process) = spec.process_mut() {
            process.set_terminal(Some(tty));
        }
        let spec_path = base.join("bundle/config.json");
        spec.save(&spec_path).unwrap();
        let executor = match handler {
            Handler::Embedded => Executor::Embedded,
            Handler::Runc => Executor::Oci(OciExecutor {
                handler: "runc".into(),
                binary: RUNC.into(),
                root: base.join("runc-root"),
                cgroup_roots: vec![],
                prepare_mount_targets: false,
            }),
        };
        let create = CreateRequest {
            id: ID.into(),
            spec: spec_path,
            rootfs: RootfsPlan {
                lower_base: pod.fixture.rootfs.lower_base.clone(),
                lower: pod.fixture.rootfs.lower.clone(),
                upper: pod.fixture.rootfs.upper.clone(),
                work: pod.fixture.rootfs.work.clone(),
            },
            cgroup_procs: vec![],
            cgroup_view: CgroupView::V1(vec![]),
            memory_cgroup: None,
            log_path: Some(pod.log()),
            tty,
            stdin,
            stdin_once: once,
            exit_file: base.join("exit.json"),
            executor,
        };
        let created = pod.client.call(Request::Create(Box::new(create)), Duration::ZERO).await;
        assert!(matches!(created, Ok(Reply::Created { .. })), "create: {created:?}");
        let started = pod.client.call(Request::Start { id: ID.into() }, Duration::ZERO).await;
        assert!(matches!(started, Ok(Reply::Started { .. })), "start: {started:?}");
        pod
    }

    async fn exec(&self, args: &[&str], options: StreamOptions) -> crate::Result<StdioSession> {
        let mut process = self.fixture.spec(args).process().clone().unwrap();
        process.set_terminal(Some(options.tty));
        stream::exec(&self.client, ID, process, options).await
    }

    async fn attach(&self, options: StreamOptions) -> crate::Result<StdioSession> {
        stream::attach(&self.client, ID, options).await
    }

    /// The container's exit, once it has one.
    async fn wait(&self) -> ContainerStatus {
        let request = Request::Wait { id: ID.into(), timeout_ms: 10_000 };
        match self.client.call(request, Duration::from_secs(10)).await {
            Ok(Reply::Status(status)) => status,
            other => panic!("wait: {other:?}"),
        }
    }

    async fn kill(&self) {
        let request = Request::Signal { id: ID.into(), signal: libc::SIGKILL };
        self.client.call(request, Duration::ZERO).await.unwrap();
    }

    fn monitor_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("monitor.log")).unwrap_or_default()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        call_blocking(&self.dir(), Request::Forget { id: ID.into() });
        call_blocking(&self.dir(), Request::Shutdown);
        let _ = crate::monitor::wait_gone(self.monitor_pid, Duration::from_secs(5));
        if self.handler == Handler::Runc {
            let _ = nix::mount::umount2(&self.fixture.root, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Runs the monitor's entry point in a forked child (which double-forks as berthd's child
/// does) with only its own stdio, so that it holds none of the test process's descriptors;
/// returns its pid once it listens.
fn start_monitor(dir: &Path) -> u32 {
    use std::io::BufRead;
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let log = std::fs::File::create(dir.join("monitor.log")).unwrap();
    let args: Vec<std::ffi::OsString> = vec!["--pod".into(), "test".into()];
    // The state directory comes on stdin, as berthd gives it.
    let dir_input = tempfile::tempfile().unwrap();
    std::os::unix::fs::FileExt::write_all_at(&dir_input, dir.as_os_str().as_encoded_bytes(), 0)
        .unwrap();
    // SAFETY: the child only rearranges descriptors and runs the monitor, which is single
    // threaded, and never returns into the harness.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            libc::dup2(dir_input.as_raw_fd(), 0);
            libc::dup2(writer.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let code = crate::monitor::main(&args);
            libc::_exit(code)
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(writer);
            let mut line = String::new();
            std::io::BufReader::new(std::fs::File::from(reader)).read_line(&mut line).unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
            let pid = line.strip_prefix("ready ").and_then(|p| p.trim().parse().ok());
            pid.unwrap_or_else(|| panic!("the monitor did not start: {line:?}"))
        }
    }
}

fn call_blocking(dir: &Path, request: Request) {
    use std::io::{BufRead, Write};
    let Ok(dir) = std::fs::File::open(dir) else { return };
    let socket = format!("/proc/self/fd/{}/monitor.sock", dir.as_raw_fd());
    let Ok(stream) = std::os::unix::net::UnixStream::connect(&socket) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = serde_json::to_vec(&RequestLine::new(request)).unwrap();
    line.push(b'\n');
    let _ = (&stream).write_all(&line);
    let _ = std::io::BufReader::new(&stream).read_line(&mut String::new());
}

fn options(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> StreamOptions {
    StreamOptions { stdin, stdout, stderr, tty }
}

async fn read_all(reader: &mut (impl AsyncRead + Unpin + ?Sized)) -> String {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut bytes))
        .await
        .expect("output did not end")
        .expect("reading output");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads until `want` shows up (or fails after 10 s); returns what was read.
async fn read_until(reader: &mut (impl AsyncRead + Unpin + ?Sized), want: &str) -> String {
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&text).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            other => {
                let text = String::from_utf8_lossy(&text);
                let tail = &text[text.len().saturating_sub(400)..];
                panic!("waiting for {want:?}, got …{tail:?}: {other:?}")
            }
        };
        text.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

async fn exit_of(session: StdioSession) -> crate::Result<Option<i32>> {
    tokio::time::timeout(Duration::from_secs(20), session.exit).await.expect("no exit")
}

fn runc_present() -> bool {
    Path::new(RUNC).exists()
}

macro_rules! per_handler {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Handler::Embedded).await
                }
            )*
        }
        mod runc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !super::runc_present() {
                        eprintln!("skipped: {} is not installed", super::RUNC);
                        return;
                    }
                    super::$name(super::Handler::Runc).await
                }
            )*
        }
    };
}

per_handler!(
    exec_cat_echoes_stdin_until_eof,
    exec_streams_stay_apart_and_exit_code_comes,
    exec_with_a_terminal,
    exec_terminal_resizes,
    exec_refusals,
    attachers_all_see_the_output_and_the_end,
    attach_stdin_once_closes_the_containers_stdin,
    attach_to_a_terminal,
    a_slow_attacher_is_cut_off_and_the_log_goes_on,
);

async fn exec_cat_echoes_stdin_until_eof(handler: Handler) {
    let pod = Pod::start(handler, &["sleep", "1000"], false, false, false).await;
    let mut session = pod.exec(&["cat"], options(true, true, false, false)).await.unwrap();
    assert!(session.stderr.is_none() && session.resize.is_none());
    let mut stdin = session.stdin.take().unwrap();
    let mut stdout = session.stdout.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    assert_eq!(read_until(&mut stdout, "hello\n").await, "hello\n");
    stdin.write_all(b"world\n").await.unwrap();
    stdin.shutdown().await.unwrap();
    assert_eq!(read_all(&mut stdout).await, "world\n");
    assert_eq!(exit_of(session).await.unwrap(), Some(0));
}

async fn exec_streams_stay_apart_and_exit_code_comes(handler: Handler) {
    let pod = Pod::start(handler, &["sleep", "1000"], false, false, false).await;
    let script = "echo out; echo err >&2; echo more out; exit 3";
    let mut session =
        pod.exec(&["sh", "-c", script], options(false, true, true, false)).await.unwrap();
    assert!(session.stdin.is_none());
    let (mut stdout, mut stderr) = (session.stdout.take().unwrap(), session.stderr.take().unwrap());
    let (out, err) = tokio::join!(read_all(&mut stdout), read_all(&mut stderr));
    assert_eq!((out.as_str(), err.as_str()), ("out\nmore out\n", "err\n"));
    assert_eq!(exit_of(session).await.unwrap(), Some(3));
    // Killed: 128 + the signal.
    let session = pod.exec(&["sh", "-c", "kill -9 $$"], options(false, false, false, false));
    assert_eq!(exit_of(session.await.unwrap()).await.unwrap(), Some(137));
}

async fn exec_with_a_terminal(handler: Handler) {
    let pod = Pod::start(handler, &["sleep", "1000"], false, false, false).await;
    // stderr is not given with a terminal: everything is on it.
    let script = "tty; echo to-stderr >&2; test -t 0 && test -t 1 && test -t 2 && echo all-tty";
    let mut session =
        pod.exec(&["sh", "-c", script], options(false, true, true, true)).await.unwrap();
    assert!(session.stderr.is_none() && session.resize.is_some() && session.stdin.is_none());
    let out = read_all(session.stdout.as_mut().unwrap()).await;
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("/dev/pts/")), "output {out:?}");
    assert_eq!(lines[1..], ["to-stderr", "all-tty"], "output {out:?}");
    assert_eq!(exit_of(session).await.unwrap(), Some(0));

    // Its stdin is the terminal: a shell reads lines, and shutdown is the terminal's EOF.
    let mut session = pod.exec(&["cat"], options(true, true, false, true)).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let mut stdout = session.stdout.take().unwrap();
    stdin.write_all(b"typed\n").await.unwrap();
    // The terminal echoes it, then cat writes it.
    let seen = read_until(&mut stdout, "typed\r\ntyped\r\n").await;
    assert_eq!(seen, "typed\r\ntyped\r\n");
    stdin.shutdown().await.unwrap();
    read_all(&mut stdout).await;
    assert_eq!(exit_of(session).await.unwrap(), Some(0));
}

async fn exec_terminal_resizes(handler: Handler) {
    let pod = Pod::start(handler, &["sleep", "1000"], false, false, false).await;
    let script = "read line; stty size";
    let mut session =
        pod.exec(&["sh", "-c", script], options(true, true, false, true)).await.unwrap();
    let mut stdout = session.stdout.take().unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let resize = session.resize.take().unwrap();
    // A size with a zero is ignored, the next one applies.
    resize.send(TerminalSize { width: 0, height: 50 }).await.unwrap();
    resize.send(TerminalSize { width: 123, height: 45 }).await.unwrap();
    // The resize is applied by a task of the session; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stdin.write_all(b"go\n").await.unwrap();
    let rest = read_all(&mut stdout).await;
    assert!(rest.contains("45 123"), "output {rest:?}");
    assert_eq!(exit_of(session).await.unwrap(), Some(0));
}

async fn exec_refusals(handler: Handler) {
    let pod = Pod::start(handler, &["sleep", "1000"], false, false, false).await;
    // An unknown container; then one that has exited.
    let process = pod.fixture.spec(&["true"]).process().clone().unwrap();
    let err = stream::exec(&pod.client, "nope", process.clone(), StreamOptions::default()).await;
    assert_eq!(err.unwrap_err().kind(), Kind::NotFound);
    let err = stream::attach(&pod.client, "nope", options(false, true, false, false)).await;
    assert_eq!(err.unwrap_err().kind(), Kind::NotFound);
    // stdin of a container created without one.
    let err = pod.attach(options(true, true, false, false)).await;
    assert_eq!(err.unwrap_err().kind(), Kind::InvalidArgument);
    pod.kill().await;
    assert!(matches!(pod.wait().await, ContainerStatus::Exited(_)));
    let err = stream::exec(&pod.client, ID, process, StreamOptions::default()).await;
    assert_eq!(err.unwrap_err().kind(), Kind::FailedPrecondition);
    let err = pod.attach(options(false, true, false, false)).await;
    assert_eq!(err.unwrap_err().kind(), Kind::FailedPrecondition);
}

async fn attachers_all_see_the_output_and_the_end(handler: Handler) {
    let script = "i=0; while [ $i -lt 1000 ]; do echo line $i; echo err $i >&2; i=$((i+1)); \
                  sleep 0.05; done";
    let pod = Pod::start(handler, &["sh", "-c", script], false, false, false).await;
    let mut first = pod.attach(options(false, true, true, false)).await.unwrap();
    let mut second = pod.attach(options(false, true, false, false)).await.unwrap();
    assert!(first.stdin.is_none() && first.resize.is_none() && second.stderr.is_none());
    let (mut out1, mut err1) = (first.stdout.take().unwrap(), first.stderr.take().unwrap());
    let mut out2 = second.stdout.take().unwrap();
    // Both see the same lines from the moment they attached.
    let seen1 = read_until(&mut out1, "\n").await;
    let seen2 = read_until(&mut out2, "\n").await;
    let number = |text: &str| -> u32 {
        text.lines().next().unwrap().trim_start_matches("line ").parse().unwrap()
    };
    let (n1, n2) = (number(&seen1), number(&seen2));
    let later = format!("line {}\n", n1.max(n2) + 3);
    let seen1 = read_until(&mut out1, &later).await;
    let seen2 = read_until(&mut out2, &later).await;
    assert!(seen1.ends_with(&later) && seen2.ends_with(&later), "{seen1:?} {seen2:?}");
    assert!(read_until(&mut err1, "\n").await.starts_with("err "));
    pod.kill().await;
    // The end: output ends and the exit resolves, for each.
    read_all(&mut out1).await;
    read_all(&mut out2).await;
    drop(err1);
    assert_eq!(exit_of(first).await.unwrap(), None);
    assert_eq!(exit_of(second).await.unwrap(), None);
}

async fn attach_stdin_once_closes_the_containers_stdin(handler: Handler) {
    let pod = Pod::start(handler, &["cat"], true, true, false).await;
    // An attacher without stdin first: its end closes nothing.
    let watcher = pod.attach(options(false, true, false, false)).await.unwrap();
    drop(watcher);
    let mut session = pod.attach(options(true, true, false, false)).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    let mut stdout = session.stdout.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    assert_eq!(read_until(&mut stdout, "ping\n").await, "ping\n");
    stdin.shutdown().await.unwrap();
    // cat sees EOF and exits: the attach ends.
    assert_eq!(read_all(&mut stdout).await, "");
    assert_eq!(exit_of(session).await.unwrap(), None);
    match pod.wait().await {
        ContainerStatus::Exited(info) => assert_eq!(info.exit_code, 0),
        other => panic!("status {other:?}"),
    }
    let log = std::fs::read_to_string(pod.log()).unwrap();
    assert!(log.contains(" stdout F ping"), "log {log:?}");
}

async fn attach_to_a_terminal(handler: Handler) {
    // Without stdin_once: an attacher's end leaves the container's stdin open.
    let pod = Pod::start(handler, &["sh"], true, false, true).await;
    let mut session = pod.attach(options(true, true, true, true)).await.unwrap();
    assert!(session.stderr.is_none() && session.resize.is_some());
    let mut stdin = session.stdin.take().unwrap();
    let mut stdout = session.stdout.take().unwrap();
    let resize = session.resize.take().unwrap();
    resize.send(TerminalSize { width: 77, height: 22 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stdin.write_all(b"stty size; echo err >&2\n").await.unwrap();
    // The terminal echoes the line, then stty and stderr write on it.
    let seen = read_until(&mut stdout, "22 77\r\nerr\r\n").await;
    assert!(seen.contains("stty size; echo err >&2\r\n"), "no echo: {seen:?}");
    // The end of its input detaches the attacher: its session ends, the shell runs on.
    stdin.shutdown().await.unwrap();
    read_all(&mut stdout).await;
    drop((stdout, stdin, resize));
    assert_eq!(exit_of(session).await.unwrap(), None);
    // The shell still runs, and a new attacher drives it.
    let mut again = pod.attach(options(true, true, false, true)).await.unwrap();
    let mut stdin = again.stdin.take().unwrap();
    stdin.write_all(b"exit 4\n").await.unwrap();
    read_all(again.stdout.as_mut().unwrap()).await;
    assert_eq!(exit_of(again).await.unwrap(), None);
    match pod.wait().await {
        ContainerStatus::Exited(info) => assert_eq!(info.exit_code, 4),
        other => panic!("status {other:?}"),
    }
}

async fn a_slow_attacher_is_cut_off_and_the_log_goes_on(handler: Handler) {
    let line = "x".repeat(4000);
    let pod = Pod::start(handler, &["yes", &line], false, false, false).await;
    let mut slow = pod.attach(options(false, true, false, false)).await.unwrap();
    // It reads nothing: the monitor gives up on it, and goes on writing the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pod.monitor_log().contains("too far behind") {
        assert!(Instant::now() < deadline, "not cut off: {}", pod.monitor_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let size = || std::fs::metadata(pod.log()).map(|m| m.len()).unwrap_or(0);
    let at_cut = size();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(size() > at_cut + (1 << 20), "the log stalled at {at_cut}");
    // What it got before ends in an error, and so does the session.
    let mut stdout = slow.stdout.take().unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stdout.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the cut-off session's output did not end");
    assert!(!sink.is_empty(), "it had output queued");
    let exit = exit_of(slow).await;
    assert_eq!(exit.unwrap_err().kind(), Kind::Unavailable);
    // A new attacher still gets output.
    let mut fresh = pod.attach(options(false, true, false, false)).await.unwrap();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        fresh.stdout.as_mut().unwrap().read(&mut buf),
    );
    let n = read.await.expect("no output").expect("reading output");
    assert!(n > 0 && buf[..n].iter().all(|b| *b == b'x' || *b == b'\n'), "{:?}", &buf[..n]);
    pod.kill().await;
}
