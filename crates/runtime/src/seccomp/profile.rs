//! Seccomp profiles as JSON files on the node, and their resolution into the OCI spec's
//! `linux.seccomp` for one container.
//!
//! The format is the OCI one (`defaultAction`, `defaultErrnoRet`, `architectures`, `flags`,
//! `syscalls` of `names`, `action`, `errnoRet`, `args`) with the additions of Docker's format
//! that containerd reads too: `archMap`, `name` for a single call, and `includes`/`excludes`
//! conditions on the container's capabilities, the node's architecture and its kernel. A
//! profile written for Docker must not silently become another one here: a conditioned rule
//! read as if unconditioned (Docker's own profile allows `mount` only with `SYS_ADMIN`) would
//! open what it meant to close. So conditions are decided, per container, and only the rules
//! whose conditions hold reach the spec. Other keys (`comment`, …) are ignored, as containerd
//! does.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSyscall,
};
use serde::Deserialize;

use super::NativeArch;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Profile {
    pub default_action: Option<LinuxSeccompAction>,
    pub default_errno_ret: Option<u32>,
    pub architectures: Option<Vec<Arch>>,
    pub arch_map: Option<Vec<ArchMap>>,
    pub flags: Option<Vec<LinuxSeccompFilterFlag>>,
    pub listener_path: Option<PathBuf>,
    pub listener_metadata: Option<String>,
    pub syscalls: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ArchMap {
    pub architecture: Arch,
    pub sub_architectures: Option<Vec<Arch>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Rule {
    pub names: Option<Vec<String>>,
    pub name: Option<String>,
    pub action: LinuxSeccompAction,
    pub errno_ret: Option<u32>,
    pub args: Option<Vec<LinuxSeccompArg>>,
    pub includes: Option<Conditions>,
    pub excludes: Option<Conditions>,
}

/// When a rule applies (`includes`: all of these hold) or does not (`excludes`: any holds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Conditions {
    /// Capabilities in the container's bounding set (`CAP_SYS_ADMIN`).
    pub caps: Option<Vec<String>>,
    /// The node's architecture, in Go's names as Docker writes them (`amd64`, `arm64`).
    pub arches: Option<Vec<String>>,
    /// The node's kernel is at least this version (`4.8`).
    pub min_kernel: Option<String>,
}

/// What conditions are decided against.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// Capability names without their `CAP_` prefix, upper case.
    pub caps: HashSet<String>,
    pub arch: NativeArch,
    /// (major, minor) of the running kernel.
    pub kernel: (u64, u64),
}

fn bare_cap(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").map(str::to_string).unwrap_or(upper)
}

impl Target {
    pub fn new(caps: &[String], arch: NativeArch, kernel: (u64, u64)) -> Target {
        Target { caps: caps.iter().map(|c| bare_cap(c)).collect(), arch, kernel }
    }
}

/// `major.minor[.patch][-anything]` as (major, minor).
pub(super) fn kernel_version(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

impl Conditions {
    fn includes(&self, target: &Target) -> Result<bool, String> {
        let caps = self.caps.iter().flatten().all(|c| target.caps.contains(&bare_cap(c)));
        let arch = self.arches.as_ref().is_none_or(|arches| arches_hold(arches, target));
        let kernel = match &self.min_kernel {
            None => true,
            Some(min) => {
                let min = kernel_version(min)
                    .ok_or_else(|| format!("includes.minKernel {min:?} is not a version"))?;
                target.kernel >= min
            }
        };
        Ok(caps && arch && kernel)
    }

    fn excludes(&self, target: &Target) -> Result<bool, String> {
        if self.min_kernel.is_some() {
            return Err("excludes.minKernel is not supported".into());
        }
        let caps = self.caps.iter().flatten().any(|c| target.caps.contains(&bare_cap(c)));
        let arch = self.arches.as_ref().is_some_and(|arches| arches_hold(arches, target));
        Ok(caps || arch)
    }
}

fn arches_hold(arches: &[String], target: &Target) -> bool {
    arches.iter().any(|a| a == target.arch.go || a == target.arch.linux)
}

impl Profile {
    /// The OCI section for a container: only rules whose conditions hold, each with its names.
    /// An error is a message about the profile, for the caller to attach its name to.
    pub fn resolve(&self, target: &Target) -> Result<LinuxSeccomp, String> {
        let default_action = self.default_action.ok_or("defaultAction is missing")?;
        let architectures = match (&self.architectures, &self.arch_map) {
            (Some(a), Some(m)) if !a.is_empty() && !m.is_empty() => {
                return Err("both architectures and archMap are given; use one".into())
            }
            (_, Some(map)) if !map.is_empty() => {
                let own = map.iter().find(|m| m.architecture == target.arch.oci);
                Some(own.map_or_else(Vec::new, |m| {
                    let mut arches = vec![m.architecture];
                    arches.extend(m.sub_architectures.iter().flatten().copied());
                    arches
                }))
            }
            (a, _) => a.clone(),
        };
        let mut syscalls = Vec::new();
        for (n, rule) in self.syscalls.iter().flatten().enumerate() {
            let names: Vec<String> = match (&rule.name, &rule.names) {
                (Some(_), Some(names)) if !names.is_empty() => {
                    return Err(format!("syscalls[{n}] has both name and names; use one"))
                }
                (Some(name), _) => vec![name.clone()],
                (None, names) => names.clone().unwrap_or_default(),
            };
            if names.is_empty() || names.iter().any(|s| s.is_empty()) {
                return Err(format!("syscalls[{n}] names no system call"));
            }
            let include = match &rule.includes {
                Some(c) => c.includes(target).map_err(|e| format!("syscalls[{n}]: {e}"))?,
                None => true,
            };
            let exclude = match &rule.excludes {
                Some(c) => c.excludes(target).map_err(|e| format!("syscalls[{n}]: {e}"))?,
                None => false,
            };
            if !include || exclude {
                continue;
            }
            let mut call = LinuxSyscall::default();
            call.set_names(names)
                .set_action(rule.action)
                .set_errno_ret(rule.errno_ret)
                .set_args(rule.args.clone().filter(|a| !a.is_empty()));
            syscalls.push(call);
        }
        let mut out = LinuxSeccomp::default();
        out.set_default_action(default_action)
            .set_default_errno_ret(self.default_errno_ret)
            .set_architectures(architectures.filter(|a| !a.is_empty()))
            .set_flags(self.flags.clone().filter(|f| !f.is_empty()))
            .set_listener_path(self.listener_path.clone())
            .set_listener_metadata(self.listener_metadata.clone())
            .set_syscalls((!syscalls.is_empty()).then_some(syscalls));
        Ok(out)
    }
}
