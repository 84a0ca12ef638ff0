//! Finding the CNI network configuration, the way containerd's CRI plugin and libcni do: the
//! first valid file of the configuration directory, by file name; and the plugin binaries.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// The extensions libcni's `ConfFiles` accepts.
const EXTENSIONS: [&[u8]; 3] = [b"conflist", b"conf", b"json"];

/// A network configuration list, as plugins will be given it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// Empty when the file has none; libcni allows that.
    pub cni_version: String,
    /// Each plugin's configuration object.
    pub plugins: Vec<Value>,
    pub source: PathBuf,
    /// The list as JSON; for a single-plugin file, the list wrapped around it.
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NetworkLookup {
    Found(NetworkConfigList),
    /// No usable configuration; `reason` says why, for the NetworkReady condition.
    Missing {
        reason: String,
    },
}

/// The configuration berth uses: the first valid `.conflist`, `.conf` or `.json` file of
/// `conf_dir` in lexical order of file name. Invalid files are skipped with a warning; a
/// missing directory counts as holding none.
pub fn load_default_network(conf_dir: &Path) -> Result<NetworkLookup> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(NetworkLookup::Missing {
                reason: format!("no network config found in {}", conf_dir.display()),
            })
        }
        Err(e) => return Err(Error::io("reading directory", conf_dir)(e)),
    };
    let mut candidates = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("reading directory", conf_dir))?;
        let file_type = entry.file_type().map_err(Error::io("inspecting", entry.path()))?;
        // As libcni: symlinks are candidates (read through), directories are not.
        if file_type.is_dir() || !has_config_extension(&entry.file_name()) {
            continue;
        }
        candidates.push(entry.file_name());
    }
    // Byte order, like Go's sort.Strings, so that "10-" comes before "99-" and before "a".
    candidates.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    let mut last_reason = None;
    for name in candidates {
        let path = conf_dir.join(&name);
        match load_file(&path) {
            Ok(list) => return Ok(NetworkLookup::Found(list)),
            Err(why) => {
                tracing::warn!("skipping CNI network config {}: {why}", path.display());
                last_reason = Some(format!("{}: {why}", Path::new(&name).display()));
            }
        }
    }
    let reason = match last_reason {
        Some(why) => format!("no valid network config in {}: {why}", conf_dir.display()),
        None => format!("no network config found in {}", conf_dir.display()),
    };
    Ok(NetworkLookup::Missing { reason })
}

fn has_config_extension(name: &OsStr) -> bool {
    // By the last dot, as Go's filepath.Ext, so that ".conf" alone counts too.
    let bytes = name.as_bytes();
    match bytes.iter().rposition(|b| *b == b'.') {
        Some(dot) => EXTENSIONS.contains(&&bytes[dot + 1..]),
        None => false,
    }
}

/// Loads one file; the error is the reason it is unusable, without the file name.
fn load_file(path: &Path) -> std::result::Result<NetworkConfigList, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading: {e}"))?;
    let is_list = path.as_os_str().as_bytes().ends_with(b".conflist");
    parse_config(bytes, is_list, path)
}

/// A configuration list as [`NetworkConfigList::bytes`] holds it, e.g. from the CNI cache.
pub(crate) fn parse_list(
    bytes: Vec<u8>,
    source: &Path,
) -> std::result::Result<NetworkConfigList, String> {
    parse_config(bytes, true, source)
}

fn parse_config(
    bytes: Vec<u8>,
    is_list: bool,
    path: &Path,
) -> std::result::Result<NetworkConfigList, String> {
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".to_string());
    };
    let (name, cni_version, plugins, bytes) = if is_list {
        let name = name_of(&object)?;
        let cni_version = cni_version_of(&object)?;
        let plugins = match object.get("plugins") {
            Some(Value::Array(plugins)) if !plugins.is_empty() => plugins.clone(),
            Some(Value::Array(_)) => return Err("\"plugins\" is empty".to_string()),
            Some(_) => return Err("\"plugins\" is not an array".to_string()),
            None => return Err("missing \"plugins\"".to_string()),
        };
        for (i, plugin) in plugins.iter().enumerate() {
            let Value::Object(plugin) = plugin else {
                return Err(format!("plugins[{i}] is not a JSON object"));
            };
            plugin_type_of(plugin).map_err(|e| format!("plugins[{i}]: {e}"))?;
        }
        (name, cni_version, plugins, bytes)
    } else {
        if let Err(why) = plugin_type_of(&object) {
            return Err(if object.contains_key("plugins") {
                format!("{why} (a list of plugins belongs in a .conflist file)")
            } else {
                why
            });
        }
        let name = name_of(&object)?;
        let cni_version = cni_version_of(&object)?;
        // The list libcni's ConfListFromConf builds around a single plugin.
        let list = json!({
            "cniVersion": cni_version,
            "name": name,
            "plugins": [Value::Object(object.clone())],
        });
        let bytes = serde_json::to_vec(&list).map_err(|e| format!("serializing: {e}"))?;
        (name, cni_version, vec![Value::Object(object)], bytes)
    };
    Ok(NetworkConfigList { name, cni_version, plugins, source: path.to_path_buf(), bytes })
}

fn name_of(object: &Map<String, Value>) -> std::result::Result<String, String> {
    match object.get("name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        Some(Value::String(_)) => Err("\"name\" is empty".to_string()),
        Some(_) => Err("\"name\" is not a string".to_string()),
        None => Err("missing \"name\"".to_string()),
    }
}

fn cni_version_of(object: &Map<String, Value>) -> std::result::Result<String, String> {
    match object.get("cniVersion") {
        Some(Value::String(version)) => Ok(version.clone()),
        Some(_) => Err("\"cniVersion\" is not a string".to_string()),
        None => Ok(String::new()),
    }
}

fn plugin_type_of(plugin: &Map<String, Value>) -> std::result::Result<&str, String> {
    match plugin.get("type") {
        Some(Value::String(t)) => {
            check_plugin_type(t)?;
            Ok(t)
        }
        Some(_) => Err("\"type\" is not a string".to_string()),
        None => Err("missing \"type\"".to_string()),
    }
}

/// A plugin type names a binary in the plugin directories; anything but a plain file name
/// would let a configuration run some other binary.
fn check_plugin_type(t: &str) -> std::result::Result<(), String> {
    if t.is_empty() || t == "." || t == ".." || t.contains('/') || t.contains('\0') {
        Err(format!("\"type\" {t:?} is not a plain file name"))
    } else {
        Ok(())
    }
}

/// The binary of plugin `plugin_type`: the first regular file of that name in `bin_dirs`,
/// which must be executable. The error says what is wrong, naming the directories or file.
pub fn find_plugin(
    plugin_type: &str,
    bin_dirs: &[PathBuf],
) -> std::result::Result<PathBuf, String> {
    check_plugin_type(plugin_type)?;
    for dir in bin_dirs {
        let path = dir.join(plugin_type);
        // First regular file wins even if it cannot be run, as in libcni's FindInPath; saying
        // so beats running a different binary than the one the admin sees first.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                return if meta.permissions().mode() & 0o111 != 0 {
                    Ok(path)
                } else {
                    Err(format!("{plugin_type} ({} is not executable)", path.display()))
                };
            }
            _ => continue,
        }
    }
    Err(plugin_type.to_string())
}

/// Whether the binary of every plugin of `net` is in `bin_dirs`; the error lists those that
/// are not and where they were looked for.
pub fn check_plugins(
    net: &NetworkConfigList,
    bin_dirs: &[PathBuf],
) -> std::result::Result<(), String> {
    let mut missing: Vec<String> = Vec::new();
    for (i, plugin) in net.plugins.iter().enumerate() {
        let found = match plugin.get("type") {
            Some(Value::String(t)) => find_plugin(t, bin_dirs),
            _ => Err(format!("plugins[{i}] without a \"type\"")),
        };
        if let Err(what) = found {
            if !missing.contains(&what) {
                missing.push(what);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "CNI plugins of network {:?} ({}) not found in [{}]: {}",
        net.name,
        net.source.display(),
        dirs.join(", "),
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const BRIDGE_LIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "berth-net",
  "plugins": [
    {"type": "bridge", "bridge": "berth0", "ipam": {"type": "host-local"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    const LOOPBACK_CONF: &str = r#"{"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}"#;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    fn found(lookup: NetworkLookup) -> NetworkConfigList {
        match lookup {
            NetworkLookup::Found(net) => net,
            NetworkLookup::Missing { reason } => panic!("expected a network, got: {reason}"),
        }
    }

    fn missing(lookup: NetworkLookup) -> String {
        match lookup {
            NetworkLookup::Missing { reason } => reason,
            NetworkLookup::Found(net) => panic!("expected none, got {}", net.source.display()),
        }
    }

    #[test]
    fn no_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net.d");
        let reason = missing(load_default_network(&dir).unwrap());
        assert_eq!(reason, format!("no network config found in {}", dir.display()));
    }

    #[test]
    fn empty_dir_and_unrelated_files() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(missing(load_default_network(tmp.path()).unwrap())
            .starts_with("no network config found in"));
        write(tmp.path(), "README", "not a config");
        write(tmp.path(), "10-net.conflist.bak", BRIDGE_LIST);
        fs::create_dir(tmp.path().join("00-dir.conflist")).unwrap();
        let reason = missing(load_default_network(tmp.path()).unwrap());
        assert!(reason.starts_with("no network config found in"), "{reason}");
    }

    #[test]
    fn one_conflist() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "10-berth.conflist", BRIDGE_LIST);
        let net = found(load_default_network(tmp.path()).unwrap());
        assert_eq!(net.name, "berth-net");
        assert_eq!(net.cni_version, "1.0.0");
        assert_eq!(net.plugins.len(), 2);
        assert_eq!(net.plugins[1]["type"], "portmap");
        assert_eq!(net.source, tmp.path().join("10-berth.conflist"));
        assert_eq!(net.bytes, BRIDGE_LIST.as_bytes());
    }

    #[test]
    fn single_plugin_conf_is_wrapped() {
        for name in ["99-loopback.conf", "99-loopback.json"] {
            let tmp = tempfile::tempdir().unwrap();
            write(tmp.path(), name, LOOPBACK_CONF);
            let net = found(load_default_network(tmp.path()).unwrap());
            assert_eq!(net.name, "lo");
            assert_eq!(net.cni_version, "0.4.0");
            assert_eq!(net.plugins, [serde_json::from_str::<Value>(LOOPBACK_CONF).unwrap()]);
            let list: Value = serde_json::from_slice(&net.bytes).unwrap();
            assert_eq!(
                list,
                json!({
                    "cniVersion": "0.4.0",
                    "name": "lo",
                    "plugins": [{"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}],
                })
            );
        }
    }

    #[test]
    fn lexical_order() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "99-loopback.conf", LOOPBACK_CONF);
        write(tmp.path(), "10-berth.conflist", BRIDGE_LIST);
        write(tmp.path(), "a-other.conflist", &BRIDGE_LIST.replace("berth-net", "other"));
        let net = found(load_default_network(tmp.path()).unwrap());
        assert_eq!(net.name, "berth-net");
    }

    #[test]
    fn invalid_file_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "10-broken.conflist", "{ not json");
        write(tmp.path(), "20-berth.conflist", BRIDGE_LIST);
        let net = found(load_default_network(tmp.path()).unwrap());
        assert_eq!(net.source, tmp.path().join("20-berth.conflist"));
    }

    #[test]
    fn all_invalid_gives_the_last_reason() {
        let cases = [
            ("10-x.conf", r#"{"name": "x"}"#, "10-x.conf: missing \"type\""),
            ("10-x.conf", r#"{"type": "bridge"}"#, "10-x.conf: missing \"name\""),
            (
                "10-x.conf",
                BRIDGE_LIST,
                "10-x.conf: missing \"type\" (a list of plugins belongs in a .conflist file)",
            ),
            ("10-x.conflist", r#"{"name": "x"}"#, "10-x.conflist: missing \"plugins\""),
            (
                "10-x.conflist",
                r#"{"name": "x", "plugins": []}"#,
                "10-x.conflist: \"plugins\" is empty",
            ),
            (
                "10-x.conflist",
                r#"{"plugins": [{"type": "bridge"}]}"#,
                "10-x.conflist: missing \"name\"",
            ),
            (
                "10-x.conflist",
                r#"{"name": "x", "plugins": [{"type": "bridge"}, {}]}"#,
                "10-x.conflist: plugins[1]: missing \"type\"",
            ),
            (
                "10-x.conflist",
                r#"{"name": "x", "cniVersion": 1, "plugins": [{"type": "bridge"}]}"#,
                "10-x.conflist: \"cniVersion\" is not a string",
            ),
            ("10-x.json", "[]", "10-x.json: not a JSON object"),
            ("10-x.json", "", "10-x.json: invalid JSON"),
        ];
        for (name, text, want) in cases {
            let tmp = tempfile::tempdir().unwrap();
            write(tmp.path(), "05-first.conflist", "garbage");
            write(tmp.path(), name, text);
            let reason = missing(load_default_network(tmp.path()).unwrap());
            let prefix = format!("no valid network config in {}: ", tmp.path().display());
            assert!(reason.starts_with(&format!("{prefix}{want}")), "{name} {text}: {reason}");
        }
    }

    #[test]
    fn hostile_plugin_types_are_rejected() {
        for t in ["../../usr/bin/evil", "/usr/bin/evil", "..", ".", "", "a/b"] {
            let tmp = tempfile::tempdir().unwrap();
            let conf = json!({"cniVersion": "1.0.0", "name": "x", "type": t});
            write(tmp.path(), "10-x.conf", &conf.to_string());
            let reason = missing(load_default_network(tmp.path()).unwrap());
            assert!(reason.contains("is not a plain file name"), "{t}: {reason}");
            assert!(find_plugin(t, &[tmp.path().to_path_buf()]).is_err());
        }
    }

    fn fake_plugin(dir: &Path, name: &str, mode: u32) {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn check_plugins_with_fake_executables() {
        let tmp = tempfile::tempdir().unwrap();
        let conf_dir = tmp.path().join("net.d");
        let first = tmp.path().join("bin1");
        let second = tmp.path().join("bin2");
        for dir in [&conf_dir, &first, &second] {
            fs::create_dir(dir).unwrap();
        }
        write(&conf_dir, "10-berth.conflist", BRIDGE_LIST);
        let net = found(load_default_network(&conf_dir).unwrap());
        let bin_dirs = [tmp.path().join("absent"), first.clone(), second.clone()];

        let err = check_plugins(&net, &bin_dirs).unwrap_err();
        assert!(err.contains("bridge, portmap"), "{err}");
        assert!(err.contains("10-berth.conflist") && err.contains("bin2"), "{err}");

        fake_plugin(&second, "bridge", 0o755);
        let err = check_plugins(&net, &bin_dirs).unwrap_err();
        assert!(err.ends_with(": portmap"), "{err}");

        fake_plugin(&second, "portmap", 0o755);
        check_plugins(&net, &bin_dirs).unwrap();
        assert_eq!(find_plugin("bridge", &bin_dirs).unwrap(), second.join("bridge"));

        // The first directory wins, even with a file that cannot be run.
        fake_plugin(&first, "bridge", 0o644);
        let err = check_plugins(&net, &bin_dirs).unwrap_err();
        assert!(err.contains("is not executable"), "{err}");
        fake_plugin(&first, "bridge", 0o700);
        assert_eq!(find_plugin("bridge", &bin_dirs).unwrap(), first.join("bridge"));
        check_plugins(&net, &bin_dirs).unwrap();
    }
}
