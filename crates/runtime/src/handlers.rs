//! Runtime handlers: the embedded executor (`""`, also called `default`) and the external OCI
//! runtimes of `[runtimes]`, each probed once at start. A runtime whose binary is missing or
//! does not answer `--version` is logged and not offered, so that Status never lists a handler
//! whose every pod would fail.
//!
//! Features come from the runtime's own `features` command (OCI runtime-spec "features"
//! document, runc ≥ 1.1.0) where it has one; a runtime without it is assumed to have none of
//! the optional features, since the kubelet admits pods on these flags.
//!
//! User namespaces (`hostUsers: false`) need the node to idmap mounts (probed once, see
//! `userns::probe`): berth makes every idmapped mount itself (the rootfs layers, the volumes),
//! also for an OCI runtime, which then only has to join the pod's user namespace. So a runtime
//! qualifies when its `features` lists the user namespace, whether or not it could idmap mounts
//! itself (runc < 1.2 cannot; berth never asks it to).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::OciRuntimeConfig;
use crate::error::{Error, Result};

/// The name the CRI uses for "the runtime's default handler" (an empty `runtime_handler`).
pub const DEFAULT_HANDLER: &str = "";

/// The default handler answers to both the empty name and "default", as kubelet and crictl
/// users write either.
const EMBEDDED_NAMES: [&str; 2] = [DEFAULT_HANDLER, "default"];

/// Where a bare runtime name is searched when berthd has no `PATH` (as under some init systems).
const DEFAULT_SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A runtime that takes longer than this to print its version or features is broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one runtime handler can do. Every flag is true only once it really works end to end,
/// because the kubelet admits pods on these flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HandlerFeatures {
    pub recursive_read_only_mounts: bool,
    pub user_namespaces: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerInfo {
    pub name: String,
    pub features: HandlerFeatures,
}

/// An external OCI runtime that answered its probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OciRuntime {
    pub name: String,
    /// Absolute: the monitor runs it with an empty environment.
    pub binary: PathBuf,
    /// Its `--root`.
    pub root: PathBuf,
    /// The first line of `--version`.
    pub version: String,
    pub features: HandlerFeatures,
    /// Whether the runtime's `features` lists the user namespace.
    pub runtime_user_namespaces: bool,
    /// Whether it could idmap mounts itself (`mountExtensions.idmap`); berth does not need it.
    pub runtime_idmap: bool,
    /// Whether a relative `linux.cgroupsPath` is taken from the runtime's own cgroup in each
    /// hierarchy (runc), which is how a container nests under berthd's cgroup. crun 1.8 takes
    /// it from each hierarchy's root instead, so berth shows it hierarchies rooted at its own
    /// cgroup and names the cgroup absolutely (see `monitor::oci`).
    pub nests_relative_cgroups: bool,
    /// Whether it makes a mount's missing target behind a symlink of the image, inside the
    /// root (runc). crun 1.8 fails with ENOENT there, so berth makes such targets for it.
    pub makes_targets_behind_symlinks: bool,
}

/// What a pod's handler name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler<'a> {
    Embedded(&'a HandlerFeatures),
    Oci(&'a OciRuntime),
}

impl Handler<'_> {
    pub fn features(&self) -> &HandlerFeatures {
        match self {
            Handler::Embedded(features) => features,
            Handler::Oci(runtime) => &runtime.features,
        }
    }
}

/// Every handler berthd was configured with, and whether it works.
#[derive(Debug, Clone)]
pub struct Handlers {
    embedded: HandlerFeatures,
    oci: BTreeMap<String, OciRuntime>,
    /// Configured runtimes that failed their probe: why.
    unavailable: BTreeMap<String, String>,
    /// Whether this node can run pods in user namespaces, and why not.
    userns: std::result::Result<(), String>,
}

impl Handlers {
    /// Probes each configured runtime, and whether user namespaces work on this node with the
    /// image layers in `layers_dir`; `state` is berthd's state dir, under which each runtime's
    /// default root lies.
    pub fn probe(
        configs: &BTreeMap<String, OciRuntimeConfig>,
        state: &Path,
        layers_dir: &Path,
    ) -> Handlers {
        let userns = crate::userns::probe(layers_dir);
        match &userns {
            Ok(()) => tracing::info!("user namespaces with idmapped mounts work on this node"),
            Err(reason) => tracing::warn!(%reason, "no user namespaces for pods on this node"),
        }
        let mut handlers = Handlers::embedded_only(userns);
        for (name, config) in configs {
            match probe_one(name, config, state, handlers.userns.is_ok()) {
                Ok(runtime) => {
                    tracing::info!(
                        handler = %name,
                        binary = %runtime.binary.display(),
                        version = %runtime.version,
                        recursive_read_only_mounts = runtime.features.recursive_read_only_mounts,
                        user_namespaces = runtime.features.user_namespaces,
                        "OCI runtime available"
                    );
                    handlers.oci.insert(name.clone(), runtime);
                }
                Err(reason) => {
                    tracing::warn!(handler = %name, %reason, "OCI runtime not available: not offered");
                    handlers.unavailable.insert(name.clone(), reason);
                }
            }
        }
        handlers
    }

    /// The embedded executor alone (no `[runtimes]`); `userns` is whether the node can run
    /// pods in user namespaces (`userns::probe`).
    pub fn embedded_only(userns: std::result::Result<(), String>) -> Handlers {
        Handlers {
            embedded: HandlerFeatures {
                recursive_read_only_mounts: kernel_has_mount_setattr(),
                user_namespaces: userns.is_ok(),
            },
            oci: BTreeMap::new(),
            unavailable: BTreeMap::new(),
            userns,
        }
    }

    /// Whether handler `name` can run a pod in a user namespace of its own; the error says why
    /// not.
    pub fn user_namespaces(&self, name: &str) -> Result<()> {
        let handler = self.get(name)?;
        if handler.features().user_namespaces {
            return Ok(());
        }
        let why = match (&self.userns, handler) {
            (Err(reason), _) => format!("this node cannot idmap mounts: {reason}"),
            (Ok(()), Handler::Oci(runtime)) => format!(
                "{} ({}) does not list the user namespace in its `features`",
                runtime.binary.display(),
                runtime.version
            ),
            (Ok(()), Handler::Embedded(_)) => "not supported".to_string(),
        };
        Err(Error::InvalidArgument(format!(
            "runtime handler {name:?} cannot run a pod in a user namespace (hostUsers: false): \
             {why}"
        )))
    }

    /// The handler a pod names. An unknown or unavailable one is an error naming it.
    pub fn get(&self, name: &str) -> Result<Handler<'_>> {
        if EMBEDDED_NAMES.contains(&name) {
            return Ok(Handler::Embedded(&self.embedded));
        }
        if let Some(runtime) = self.oci.get(name) {
            return Ok(Handler::Oci(runtime));
        }
        if let Some(reason) = self.unavailable.get(name) {
            return Err(Error::InvalidArgument(format!(
                "runtime handler {name:?} is configured but not available: {reason}"
            )));
        }
        Err(Error::InvalidArgument(format!(
            "runtime handler {name:?} is not configured (have: {})",
            self.names().iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ")
        )))
    }

    fn names(&self) -> Vec<String> {
        EMBEDDED_NAMES.iter().map(|n| n.to_string()).chain(self.oci.keys().cloned()).collect()
    }

    /// Every handler a pod may name, with its features (Status).
    pub fn list(&self) -> Vec<HandlerInfo> {
        let embedded = EMBEDDED_NAMES
            .iter()
            .map(|name| HandlerInfo { name: name.to_string(), features: self.embedded.clone() });
        let oci = self
            .oci
            .values()
            .map(|r| HandlerInfo { name: r.name.clone(), features: r.features.clone() });
        embedded.chain(oci).collect()
    }

    /// For the verbose Status: binaries, versions, and why a runtime is not offered.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "embedded": self.embedded,
            "oci": self.oci,
            "unavailable": self.unavailable,
            "userNamespaces": match &self.userns {
                Ok(()) => "supported".to_string(),
                Err(reason) => reason.clone(),
            },
        })
    }
}

fn probe_one(
    name: &str,
    config: &OciRuntimeConfig,
    state: &Path,
    node_userns: bool,
) -> std::result::Result<OciRuntime, String> {
    let binary = resolve_binary(&config.path)?;
    let (ok, version) = run_probe(&binary, &["--version"])?;
    if !ok {
        return Err(format!("{} --version failed: {}", binary.display(), version.trim()));
    }
    let version = version.lines().next().unwrap_or_default().trim().to_string();
    // No `features` command (crun 1.8, runc < 1.1): none of the optional features.
    let features = match run_probe(&binary, &["features"])? {
        (true, text) => RuntimeFeatures::parse(&text),
        (false, _) => RuntimeFeatures::default(),
    };
    let root = config.root.clone().unwrap_or_else(|| state.join("runtimes").join(name));
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    Ok(OciRuntime {
        nests_relative_cgroups: is_runc(&version),
        makes_targets_behind_symlinks: is_runc(&version),
        name: name.to_string(),
        binary,
        root,
        version,
        features: HandlerFeatures {
            // The runtime applies it with mount_setattr, which the kernel must have too.
            recursive_read_only_mounts: features.rro && kernel_has_mount_setattr(),
            user_namespaces: features.user_namespaces && node_userns,
        },
        runtime_user_namespaces: features.user_namespaces,
        runtime_idmap: features.idmap,
    })
}

/// What runc does and crun 1.8 does not: runc joins a relative cgroups path to its own cgroup
/// (libcontainer's cgroupfs manager), and makes a missing mount target behind a symlink inside
/// the root. Other runtimes are not known to; they get an absolute cgroups path in a view
/// rooted where berth nests (which runc would misread: it subtracts the mount's root from the
/// path), and their mount targets made by berth.
fn is_runc(version: &str) -> bool {
    version.starts_with("runc ")
}

/// An absolute path as it is; a bare name from `PATH`, as a shell would find it.
fn resolve_binary(path: &Path) -> std::result::Result<PathBuf, String> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if path.is_absolute() {
        return if executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(format!("{} is not an executable file", path.display()))
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_SEARCH_PATH.into());
    std::env::split_paths(&search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(path))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            format!("{} is not found in PATH ({})", path.display(), search.to_string_lossy())
        })
}

/// Runs `binary args`; returns whether it succeeded, and its stdout (or stderr when it failed).
fn run_probe(binary: &Path, args: &[&str]) -> std::result::Result<(bool, String), String> {
    let what = || format!("{} {}", binary.display(), args.join(" "));
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", what()))?;
    // Read on threads of their own, so that the deadline holds whatever the runtime does.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(1 << 20).read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not finish within {PROBE_TIMEOUT:?}", what()));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", what())),
        }
    };
    let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Ok(if status.success() { (true, out) } else { (false, format!("{status}: {}", err.trim())) })
}

/// The parts of a runtime's `features` document berth uses.
#[derive(Debug, Default, PartialEq, Eq)]
struct RuntimeFeatures {
    rro: bool,
    user_namespaces: bool,
    idmap: bool,
}

impl RuntimeFeatures {
    fn parse(text: &str) -> RuntimeFeatures {
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(text) else {
            return RuntimeFeatures::default();
        };
        let has = |list: &serde_json::Value, item: &str| {
            list.as_array().is_some_and(|l| l.iter().any(|v| v.as_str() == Some(item)))
        };
        let linux = &doc["linux"];
        RuntimeFeatures {
            rro: has(&doc["mountOptions"], "rro"),
            user_namespaces: has(&linux["namespaces"], "user"),
            idmap: linux["mountExtensions"]["idmap"]["enabled"].as_bool() == Some(true),
        }
    }
}

/// Recursive read-only mounts need `mount_setattr(2)` (Linux 5.12); the kubelet refuses such
/// mounts on a handler that does not claim them.
pub fn kernel_has_mount_setattr() -> bool {
    // SAFETY: invalid arguments on purpose: the kernel answers EBADF/EINVAL when the call
    // exists and ENOSYS when it does not, and touches nothing.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    result == -1 && nix::errno::Errno::last() != nix::errno::Errno::ENOSYS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(path: &str) -> OciRuntimeConfig {
        OciRuntimeConfig { path: PathBuf::from(path), root: None }
    }

    #[test]
    fn features_documents() {
        let runc = r#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","rbind"],
            "linux":{"namespaces":["mount","user"],"mountExtensions":{"idmap":{"enabled":true}}}}"#;
        assert_eq!(
            RuntimeFeatures::parse(runc),
            RuntimeFeatures { rro: true, user_namespaces: true, idmap: true }
        );
        // runc 1.1: a user namespace to join, no idmapped mounts of its own (berth makes them).
        let old = r#"{"mountOptions":["ro"],"linux":{"namespaces":["mount","user"]}}"#;
        assert_eq!(
            RuntimeFeatures::parse(old),
            RuntimeFeatures { rro: false, user_namespaces: true, idmap: false }
        );
        let no_user = r#"{"mountOptions":["rro"],"linux":{"namespaces":["mount"]}}"#;
        assert!(!RuntimeFeatures::parse(no_user).user_namespaces);
        assert_eq!(RuntimeFeatures::parse("unknown command features"), RuntimeFeatures::default());
    }

    #[test]
    fn a_missing_binary_is_not_offered_and_named() {
        let state = tempfile::tempdir().unwrap();
        let configs = [
            ("nope".to_string(), runtime("berth-no-such-runtime")),
            ("abs".to_string(), runtime("/no/such/runtime")),
        ]
        .into();
        let handlers = Handlers::probe(&configs, state.path(), state.path());
        let names: Vec<String> = handlers.list().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["", "default"]);
        let err = handlers.get("nope").unwrap_err().to_string();
        assert!(err.contains("\"nope\"") && err.contains("berth-no-such-runtime"), "{err}");
        let err = handlers.get("gvisor").unwrap_err().to_string();
        assert!(err.contains("gvisor") && err.contains("not configured"), "{err}");
        assert!(matches!(handlers.get("").unwrap(), Handler::Embedded(_)));
        assert!(matches!(handlers.get("default").unwrap(), Handler::Embedded(_)));
    }

    #[test]
    fn a_binary_that_fails_is_not_offered() {
        let state = tempfile::tempdir().unwrap();
        let script = state.path().join("broken-runtime");
        std::fs::write(&script, "#!/bin/sh\necho broken >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let configs = [("broken".to_string(), runtime(script.to_str().unwrap()))].into();
        let handlers = Handlers::probe(&configs, state.path(), state.path());
        let err = handlers.get("broken").unwrap_err().to_string();
        assert!(err.contains("broken") && err.contains("--version failed"), "{err}");
    }

    #[test]
    fn a_runtime_without_features_has_none() {
        let state = tempfile::tempdir().unwrap();
        let script = state.path().join("old-runtime");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'old 0.1'; exit 0; }\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let configs = [("old".to_string(), runtime(script.to_str().unwrap()))].into();
        let handlers = Handlers::probe(&configs, state.path(), state.path());
        let Handler::Oci(old) = handlers.get("old").unwrap() else { panic!("not an OCI runtime") };
        assert_eq!(old.version, "old 0.1");
        assert_eq!(old.features, HandlerFeatures::default());
        // Not runc: shown its hierarchies rooted where berth nests, as crun must be.
        assert!(!old.nests_relative_cgroups && !old.makes_targets_behind_symlinks);
        assert_eq!(old.root, state.path().join("runtimes/old"));
        assert!(old.root.is_dir());
        let listed = handlers.list();
        assert_eq!(listed.last().map(|h| h.name.as_str()), Some("old"));
    }

    /// The runc of this host (Debian's, ≥ 1.1) claims rro and joins user namespaces, which
    /// berth offers where the node can idmap mounts.
    #[test]
    fn runc_is_probed_with_its_features() {
        if resolve_binary(Path::new("runc")).is_err() {
            eprintln!("runc is not installed: skipped");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let configs = [("runc".to_string(), runtime("runc"))].into();
        let handlers = Handlers::probe(&configs, state.path(), state.path());
        let Handler::Oci(runc) = handlers.get("runc").unwrap() else { panic!("runc not offered") };
        assert!(runc.binary.is_absolute());
        assert!(runc.version.starts_with("runc version"), "{}", runc.version);
        assert!(runc.features.recursive_read_only_mounts);
        assert!(runc.runtime_user_namespaces);
        assert!(runc.nests_relative_cgroups && runc.makes_targets_behind_symlinks);
        let node = crate::userns::probe(state.path()).is_ok();
        assert_eq!(runc.features.user_namespaces, node);
        assert_eq!(handlers.user_namespaces("runc").is_ok(), node);
    }

    #[test]
    fn user_namespaces_follow_the_node_and_the_runtime() {
        let state = tempfile::tempdir().unwrap();
        let script = state.path().join("no-user-runtime");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in --version) echo 'nouser 1.0';; features) echo \
             '{\"linux\":{\"namespaces\":[\"mount\"]}}';; esac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let configs = [("nouser".to_string(), runtime(script.to_str().unwrap()))].into();
        let handlers = Handlers::probe(&configs, state.path(), state.path());
        if nix::unistd::geteuid().is_root() {
            handlers.user_namespaces("").unwrap();
            assert!(handlers
                .list()
                .iter()
                .any(|h| h.name == "default" && h.features.user_namespaces));
        }
        let err = handlers.user_namespaces("nouser").unwrap_err().to_string();
        assert!(err.contains("\"nouser\"") && err.contains("user namespace"), "{err}");

        let no_idmap = Handlers::embedded_only(Err("idmapping: not supported".into()));
        let err = no_idmap.user_namespaces("").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("cannot idmap mounts: idmapping: not supported"), "{err}");
        assert!(!no_idmap.list()[0].features.user_namespaces);
    }
}
