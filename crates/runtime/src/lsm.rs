//! AppArmor and SELinux for containers: what the node has enabled, the profile or label a
//! container's security context gets, and berth's default AppArmor profile.
//!
//! The executor applies them by writing the exec attribute of the process just before it
//! becomes the container's user (`/proc/thread-self/attr/apparmor/exec`, `…/attr/exec`), so
//! that they take effect at `execve`. The decisions follow containerd:
//!
//! - AppArmor on a node without it: a Localhost profile is an error, RuntimeDefault and
//!   Unconfined are nothing. With it: RuntimeDefault is `berth-default` (loaded by berth when
//!   the kernel does not have it yet), except for a privileged container; Localhost names a
//!   profile that must be loaded already.
//! - SELinux options on a node without SELinux are ignored, as containerd and CRI-O ignore
//!   them, so that a pod written for an SELinux cluster still runs elsewhere. With SELinux the
//!   label is the node's default container context with the given parts replaced. Files are
//!   not relabelled (no mount labels): what a container may read under a label is the node
//!   policy's business.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::security::{SecurityProfile, SelinuxOptions};

/// The AppArmor profile of RuntimeDefault.
pub const DEFAULT_APPARMOR_PROFILE: &str = "berth-default";
/// The process context when the node's policy names none for containers.
const DEFAULT_SELINUX_PROCESS: &str = "system_u:system_r:container_t:s0";
const LOCALHOST_PREFIX: &str = "localhost/";

const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const APPARMOR_PROFILES: &str = "/sys/kernel/security/apparmor/profiles";
const SELINUX_CONFIG: &str = "/etc/selinux/config";

/// berth-default: everything a container normally does, less writing to the kernel's knobs in
/// /proc and /sys, mounting, and reading what leaks the host's memory or firmware. Signals and
/// ptrace only among processes under the same profile (and signals from outside).
const APPARMOR_DEFAULT_TEXT: &str = r#"#include <tunables/global>

profile berth-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=berth-default,
  ptrace (trace,read,tracedby,readby) peer=berth-default,

  deny mount,
  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
"#;

/// What the node's kernel has enabled, read once per container created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LsmHost {
    pub apparmor: bool,
    /// Names of the AppArmor profiles loaded in the kernel.
    pub apparmor_profiles: Vec<String>,
    /// selinuxfs is mounted and SELinux enforcing or permissive.
    pub selinux: bool,
    /// The node policy's process context for containers (`lxc_contexts`), when it has one.
    pub selinux_default: Option<String>,
}

impl LsmHost {
    pub fn detect() -> LsmHost {
        let apparmor = std::fs::read_to_string(APPARMOR_ENABLED)
            .is_ok_and(|text| text.trim_start().starts_with('Y'));
        let apparmor_profiles = if apparmor {
            std::fs::read_to_string(APPARMOR_PROFILES)
                .map(|text| parse_apparmor_profiles(&text))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let selinuxfs = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| selinuxfs_mount(&text));
        let selinux = selinuxfs.is_some_and(|mnt| {
            std::fs::read_to_string(mnt.join("enforce"))
                .is_ok_and(|mode| matches!(mode.trim(), "0" | "1"))
        });
        let selinux_default = if selinux { selinux_default_context() } else { None };
        LsmHost { apparmor, apparmor_profiles, selinux, selinux_default }
    }
}

/// Profile names from securityfs' `profiles` list (`name (mode)` per line).
fn parse_apparmor_profiles(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.rsplit_once(" (").map(|(name, _)| name.to_string()))
        .collect()
}

/// Where selinuxfs is mounted, from mountinfo text.
fn selinuxfs_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("selinuxfs"))
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// `process = "…"` of `/etc/selinux/<SELINUXTYPE>/contexts/lxc_contexts`.
fn selinux_default_context() -> Option<String> {
    let config = std::fs::read_to_string(SELINUX_CONFIG).ok()?;
    let policy = config.lines().find_map(|l| l.trim().strip_prefix("SELINUXTYPE="))?.trim();
    let path = Path::new("/etc/selinux").join(policy).join("contexts/lxc_contexts");
    parse_lxc_process(&std::fs::read_to_string(path).ok()?)
}

fn parse_lxc_process(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "process").then(|| value.trim().trim_matches('"').to_string())
    })
}

fn bad_text(text: &str) -> bool {
    text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The AppArmor profile a container runs under; `None`: it is left as the executor is.
pub fn apparmor_profile(
    requested: &SecurityProfile,
    privileged: bool,
    host: &LsmHost,
) -> Result<Option<String>> {
    match requested {
        SecurityProfile::Unconfined => Ok(None),
        SecurityProfile::RuntimeDefault if !host.apparmor || privileged => Ok(None),
        SecurityProfile::RuntimeDefault => Ok(Some(DEFAULT_APPARMOR_PROFILE.to_string())),
        SecurityProfile::Localhost(name) => {
            let name = name.strip_prefix(LOCALHOST_PREFIX).unwrap_or(name);
            if bad_text(name) {
                return Err(Error::InvalidArgument(format!(
                    "AppArmor profile name {name:?} is not valid"
                )));
            }
            if !host.apparmor {
                return Err(Error::InvalidArgument(format!(
                    "AppArmor profile {name} was asked for, but AppArmor is not enabled on this \
                     node"
                )));
            }
            if !host.apparmor_profiles.iter().any(|p| p == name) {
                return Err(Error::InvalidArgument(format!(
                    "AppArmor profile {name} is not loaded on this node"
                )));
            }
            Ok(Some(name.to_string()))
        }
    }
}

/// Loads `berth-default` into the kernel unless it is there already (`apparmor_parser`, as
/// containerd loads its own).
pub fn ensure_default_apparmor_profile(host: &LsmHost) -> Result<()> {
    if host.apparmor_profiles.iter().any(|p| p == DEFAULT_APPARMOR_PROFILE) {
        return Ok(());
    }
    let failed = |msg: String| {
        Error::FailedPrecondition(format!(
            "loading the AppArmor profile {DEFAULT_APPARMOR_PROFILE}: {msg}"
        ))
    };
    let mut child = Command::new("apparmor_parser")
        .args(["-Kr"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("running apparmor_parser: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(APPARMOR_DEFAULT_TEXT.as_bytes())
            .map_err(|e| failed(format!("writing to apparmor_parser: {e}")))?;
    }
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "apparmor_parser {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// The SELinux label a container's process gets; `None`: the executor's own transition.
pub fn selinux_label(options: Option<&SelinuxOptions>, host: &LsmHost) -> Result<Option<String>> {
    let Some(options) = options else { return Ok(None) };
    let given = [&options.user, &options.role, &options.r#type, &options.level];
    if given.iter().all(|part| part.is_empty()) || !host.selinux {
        return Ok(None);
    }
    let default = host.selinux_default.as_deref().unwrap_or(DEFAULT_SELINUX_PROCESS);
    let mut parts: Vec<String> = default.splitn(4, ':').map(str::to_string).collect();
    parts.resize(4, String::new());
    for (n, part) in given.into_iter().enumerate() {
        if !part.is_empty() {
            parts[n] = part.clone();
        }
    }
    for (n, part) in parts.iter().enumerate() {
        // The level may have its own colons (`s0:c1,c2`); the others may not.
        if bad_text(part) || (n < 3 && part.contains(':')) {
            return Err(Error::InvalidArgument(format!(
                "SELinux label part {part:?} is not valid"
            )));
        }
    }
    Ok(Some(parts.join(":")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn apparmor_host(profiles: &[&str]) -> LsmHost {
        LsmHost {
            apparmor: true,
            apparmor_profiles: profiles.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn selinux_host(default: Option<&str>) -> LsmHost {
        LsmHost {
            selinux: true,
            selinux_default: default.map(str::to_string),
            ..Default::default()
        }
    }

    fn invalid<T: std::fmt::Debug>(result: Result<T>, naming: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains(naming), "{err} should name {naming}");
    }

    #[test]
    fn apparmor_decisions() {
        use SecurityProfile::*;
        let none = LsmHost::default();
        let host = apparmor_host(&["berth-default", "custom", "docker-default"]);
        let local = |name: &str| Localhost(name.to_string());
        // (requested, privileged, host, expected profile)
        let cases = [
            (Unconfined, false, &none, None),
            (RuntimeDefault, false, &none, None),
            (RuntimeDefault, true, &none, None),
            (Unconfined, false, &host, None),
            (RuntimeDefault, false, &host, Some("berth-default")),
            (RuntimeDefault, true, &host, None),
            (local("custom"), false, &host, Some("custom")),
            (local("localhost/custom"), true, &host, Some("custom")),
        ];
        for (requested, privileged, host, want) in cases {
            let got = apparmor_profile(&requested, privileged, host).unwrap();
            assert_eq!(got.as_deref(), want, "{requested:?} {privileged} {host:?}");
        }
        invalid(apparmor_profile(&local("custom"), false, &none), "not enabled");
        invalid(apparmor_profile(&local("missing"), false, &host), "missing");
        invalid(apparmor_profile(&local("two words"), false, &host), "two words");
        invalid(apparmor_profile(&local(""), false, &host), "not valid");
    }

    #[test]
    fn selinux_labels() {
        let options = |user: &str, role: &str, typ: &str, level: &str| SelinuxOptions {
            user: user.into(),
            role: role.into(),
            r#type: typ.into(),
            level: level.into(),
        };
        let host = selinux_host(Some("system_u:system_r:container_t:s0:c1,c2"));
        let cases = [
            (None, &host, None),
            (Some(options("", "", "", "")), &host, None),
            (Some(options("", "", "spc_t", "")), &host, Some("system_u:system_r:spc_t:s0:c1,c2")),
            (Some(options("u", "r", "t", "s0:c3,c4")), &host, Some("u:r:t:s0:c3,c4")),
            // Ignored on a node without SELinux, as containerd does.
            (Some(options("", "", "spc_t", "")), &LsmHost::default(), None),
        ];
        for (given, host, want) in &cases {
            let got = selinux_label(given.as_ref(), host).unwrap();
            assert_eq!(got.as_deref(), *want, "{given:?}");
        }
        let bare = selinux_host(None);
        assert_eq!(
            selinux_label(Some(&options("", "", "", "s0:c5,c6")), &bare).unwrap().as_deref(),
            Some("system_u:system_r:container_t:s0:c5,c6")
        );
        invalid(selinux_label(Some(&options("", "", "a:b", "")), &host), "a:b");
        invalid(selinux_label(Some(&options("", "", "x y", "")), &host), "x y");
    }

    #[test]
    fn host_files_are_parsed() {
        let profiles = "berth-default (enforce)\n/usr/bin/man (enforce)\nweird (name) (complain)\n";
        assert_eq!(
            parse_apparmor_profiles(profiles),
            vec!["berth-default", "/usr/bin/man", "weird (name)"]
        );
        let mountinfo = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:21 / /sys/fs/selinux rw,relatime shared:5 - selinuxfs selinuxfs rw
";
        assert_eq!(selinuxfs_mount(mountinfo), Some(PathBuf::from("/sys/fs/selinux")));
        assert_eq!(selinuxfs_mount("22 1 252:1 / / rw - ext4 /dev/vda rw\n"), None);
        let lxc = "process = \"system_u:system_r:container_t:s0\"\nfile = \"x\"\n";
        assert_eq!(parse_lxc_process(lxc).as_deref(), Some("system_u:system_r:container_t:s0"));
        assert!(APPARMOR_DEFAULT_TEXT.contains(&format!("profile {DEFAULT_APPARMOR_PROFILE} ")));
    }
}
