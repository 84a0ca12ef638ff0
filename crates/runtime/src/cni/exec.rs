//! Running one CNI plugin, as the spec (and libcni's `RawExec`) says: parameters in `CNI_*`
//! environment variables, the network configuration on stdin, the result or an error object on
//! stdout.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::config::{find_plugin, NetworkConfigList};
use crate::error::{Error, Result};

/// The CNI operations berth performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Add,
    Del,
    Check,
}

impl Command {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        }
    }
}

/// The parameters shared by every plugin call of one operation on one network.
pub(crate) struct Invocation<'a> {
    pub command: Command,
    pub container_id: &'a str,
    /// May be empty (DEL of a pod whose network namespace is gone).
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a [(String, String)],
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

/// Longest plugin output quoted in an error message.
const MAX_QUOTED: usize = 4096;

/// How often a spawn failing with ETXTBSY is retried: a binary just written may still be open
/// for writing in a child forked by another thread, until that child execs.
const SPAWN_ATTEMPTS: u32 = 5;

/// The stdin of one plugin of `list`, as libcni's `buildOneConfig`: the plugin's own object
/// with the list's `name` and `cniVersion`, the `prevResult` if any, and a `runtimeConfig`
/// holding those of `capability_args` that the plugin declares in its `capabilities`.
pub(crate) fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &Value,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Result<Vec<u8>> {
    let Value::Object(plugin) = plugin else {
        return Err(Error::Cni(format!("a plugin of network {:?} is not an object", list.name)));
    };
    let mut conf = plugin.clone();
    conf.insert("name".to_string(), Value::String(list.name.clone()));
    conf.insert("cniVersion".to_string(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev_result {
        conf.insert("prevResult".to_string(), prev.clone());
    }
    let mut runtime_config = Map::new();
    if let Some(Value::Object(capabilities)) = plugin.get("capabilities") {
        for (capability, declared) in capabilities {
            if declared.as_bool() != Some(true) {
                continue;
            }
            if let Some(arg) = capability_args.get(capability) {
                runtime_config.insert(capability.clone(), arg.clone());
            }
        }
    }
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".to_string(), Value::Object(runtime_config));
    }
    serde_json::to_vec(&Value::Object(conf))
        .map_err(|e| Error::Cni(format!("serializing plugin configuration: {e}")))
}

/// Runs the plugin `plugin` names with `stdin` and returns its stdout. Errors: the plugin's
/// error object (or output) as [`Error::CniPlugin`], [`Error::CniTimeout`], a missing binary
/// as [`Error::NetworkNotReady`].
pub(crate) async fn run_plugin(
    inv: &Invocation<'_>,
    plugin: &Value,
    stdin: Vec<u8>,
) -> Result<Vec<u8>> {
    let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    let command = inv.command.as_str();
    let binary = find_plugin(&plugin_type, inv.bin_dirs).map_err(|what| {
        let dirs: Vec<String> = inv.bin_dirs.iter().map(|d| d.display().to_string()).collect();
        Error::NetworkNotReady(format!("CNI plugin not found in [{}]: {what}", dirs.join(", ")))
    })?;
    let cni_args: Vec<String> = inv.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cni_path: Vec<&str> = inv.bin_dirs.iter().filter_map(|d| d.to_str()).collect();

    let mut cmd = tokio::process::Command::new(&binary);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", cni_args.join(";"))
        .env("CNI_PATH", cni_path.join(":"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills what the plugin started as well.
        .process_group(0)
        .kill_on_drop(true);

    let mut attempt = 1;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(Error::CniPlugin {
                    plugin: plugin_type,
                    command,
                    code: None,
                    msg: format!("running {}: {e}", binary.display()),
                    details: String::new(),
                })
            }
        }
    };
    let pid = child.id();
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let write = async move {
        // A plugin may exit without reading; its status says what happened.
        let _ = pipe.write_all(&stdin).await;
        drop(pipe);
    };
    let run = async { tokio::join!(write, child.wait_with_output()).1 };
    let output = match tokio::time::timeout(inv.timeout, run).await {
        Ok(output) => output.map_err(|e| Error::CniPlugin {
            plugin: plugin_type.clone(),
            command,
            code: None,
            msg: format!("waiting for {}: {e}", binary.display()),
            details: String::new(),
        })?,
        Err(_) => {
            // The child itself is killed on drop; this gets the rest of its group.
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(Error::CniTimeout { plugin: plugin_type, command, timeout: inv.timeout });
        }
    };
    if !output.stderr.is_empty() {
        tracing::debug!(
            plugin = %plugin_type,
            command,
            stderr = %quote(&output.stderr),
            "CNI plugin stderr"
        );
    }
    if output.status.success() {
        return Ok(output.stdout);
    }
    Err(plugin_error(plugin_type, command, output.status, &output.stdout, &output.stderr))
}

/// The error of a plugin that exited with `status`, as libcni's `pluginErr`: the error object
/// it printed, else what it printed at all.
fn plugin_error(
    plugin: String,
    command: &'static str,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Error {
    let parsed = serde_json::from_slice::<Value>(stdout).ok();
    if let Some(Value::Object(object)) = parsed {
        if let Some(Value::String(msg)) = object.get("msg") {
            let details = match object.get("details") {
                Some(Value::String(details)) => details.clone(),
                _ => String::new(),
            };
            let code = object.get("code").and_then(Value::as_u64);
            return Error::CniPlugin { plugin, command, code, msg: msg.clone(), details };
        }
    }
    let mut msg = format!("{status}");
    if stdout.iter().any(|b| !b.is_ascii_whitespace()) {
        msg.push_str(&format!(", stdout {:?}", quote(stdout)));
    }
    if stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        msg.push_str(&format!(", stderr {:?}", quote(stderr)));
    }
    if !msg.contains(',') {
        msg.push_str(" with no error message");
    }
    Error::CniPlugin { plugin, command, code: None, msg, details: String::new() }
}

/// Output as text for messages: lossy UTF-8, trimmed, at most [`MAX_QUOTED`] bytes.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.len() <= MAX_QUOTED {
        return text.to_string();
    }
    let mut end = MAX_QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn list(plugins: Value) -> NetworkConfigList {
        let bytes = serde_json::to_vec(&json!({
            "cniVersion": "1.0.0", "name": "test-net", "plugins": plugins,
        }))
        .unwrap();
        super::super::config::parse_list(bytes, Path::new("/x.conflist")).unwrap()
    }

    async fn run(dir: &Path, plugin: &str, timeout: Duration) -> Result<Vec<u8>> {
        let bin_dirs = [dir.to_path_buf()];
        let inv = Invocation {
            command: Command::Add,
            container_id: "c1",
            netns: "/run/netns/x",
            ifname: "eth0",
            args: &[],
            bin_dirs: &bin_dirs,
            timeout,
        };
        run_plugin(&inv, &json!({"type": plugin}), b"{}".to_vec()).await
    }

    #[test]
    fn stdin_composition() {
        let net = list(json!([
            {"type": "a", "name": "ignored", "cniVersion": "0.1.0", "x": 1,
             "capabilities": {"portMappings": true, "bandwidth": false, "ipRanges": true}},
        ]));
        let caps = json!({"portMappings": [{"hostPort": 80}], "bandwidth": {"ingressRate": 1}});
        let caps = caps.as_object().unwrap();
        let prev = json!({"cniVersion": "1.0.0"});
        let stdin = plugin_stdin(&net, &net.plugins[0], Some(&prev), caps).unwrap();
        let stdin: Value = serde_json::from_slice(&stdin).unwrap();
        assert_eq!(
            stdin,
            json!({
                "type": "a", "name": "test-net", "cniVersion": "1.0.0", "x": 1,
                "capabilities": {"portMappings": true, "bandwidth": false, "ipRanges": true},
                "prevResult": {"cniVersion": "1.0.0"},
                "runtimeConfig": {"portMappings": [{"hostPort": 80}]},
            })
        );
        let stdin = plugin_stdin(&net, &json!({"type": "b"}), None, caps).unwrap();
        let stdin: Value = serde_json::from_slice(&stdin).unwrap();
        assert_eq!(stdin, json!({"type": "b", "name": "test-net", "cniVersion": "1.0.0"}));
    }

    #[tokio::test]
    async fn errors() {
        let tmp = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(20);
        script(
            tmp.path(),
            "json-error",
            concat!(
                "cat >/dev/null\n",
                r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad conf","details":"no bridge"}'"#,
                "\nexit 1",
            ),
        );
        match run(tmp.path(), "json-error", timeout).await.unwrap_err() {
            Error::CniPlugin { plugin, command, code, msg, details } => {
                assert_eq!((plugin.as_str(), command, code), ("json-error", "ADD", Some(7)));
                assert_eq!((msg.as_str(), details.as_str()), ("bad conf", "no bridge"));
            }
            other => panic!("{other:?}"),
        }

        script(tmp.path(), "garbage", "echo 'not json'; echo oops >&2; exit 3");
        let err = run(tmp.path(), "garbage", timeout).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "CNI plugin garbage failed on ADD: exit status: 3, stdout \"not json\", \
             stderr \"oops\""
        );

        script(tmp.path(), "silent", "exit 2");
        let err = run(tmp.path(), "silent", timeout).await.unwrap_err().to_string();
        assert!(err.ends_with("exit status: 2 with no error message"), "{err}");

        let err = run(tmp.path(), "absent", timeout).await.unwrap_err();
        assert!(matches!(err, Error::NetworkNotReady(_)), "{err:?}");
        assert!(err.to_string().contains("absent"), "{err}");

        script(tmp.path(), "ok", "cat; echo >&2 chatter");
        assert_eq!(run(tmp.path(), "ok", timeout).await.unwrap(), b"{}");
    }

    #[tokio::test]
    async fn timeout_kills_the_plugin_group() {
        let tmp = tempfile::tempdir().unwrap();
        let pid_file = tmp.path().join("pid");
        script(tmp.path(), "slow", &format!("sleep 30 & echo $! > {}; wait", pid_file.display()));
        let start = std::time::Instant::now();
        let err = run(tmp.path(), "slow", Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, Error::CniTimeout { .. }), "{err:?}");
        assert_eq!(err.kind(), crate::ErrorKind::DeadlineExceeded);
        assert!(start.elapsed() < Duration::from_secs(10));
        // The plugin's own child was killed too.
        let pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its (killed) parent's reaper.
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "sleep {pid} still runs: {stat}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn quote_truncates() {
        let long = "é".repeat(MAX_QUOTED);
        let quoted = quote(long.as_bytes());
        assert!(quoted.len() <= MAX_QUOTED + '…'.len_utf8());
        assert!(quoted.ends_with('…'));
        assert_eq!(quote(b"  x \n"), "x");
    }
}
