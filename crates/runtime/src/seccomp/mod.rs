//! seccomp for containers: the profile a container's CRI security context asks for, turned
//! into the OCI spec's `linux.seccomp` when the container is created, and compiled to BPF for
//! the embedded executor, which installs it as the very last step before `execve`.
//!
//! As containerd: `Unconfined` and a privileged container get no filter; `RuntimeDefault` gets
//! berth's own profile ([`default`]), fitted to the container's capabilities; `Localhost` reads
//! a JSON profile from the node ([`profile`] for the format). The profile is compiled once at
//! CreateContainer already, so that a profile berth cannot enforce is refused there, with what
//! is wrong in it, rather than when the container starts.

mod compile;
mod default;
mod profile;

use std::io::Read;
use std::path::Path;

use oci_spec::runtime::{Arch, LinuxSeccomp};
use seccompiler::TargetArch;

use crate::error::{Error, Result};
use crate::security::SecurityProfile;

pub use compile::Filters;

/// A Localhost profile larger than this is not one.
const MAX_PROFILE_SIZE: u64 = 4 << 20;
/// The prefix kubelet's deprecated annotation form put before a Localhost path.
const LOCALHOST_PREFIX: &str = "localhost/";

/// The node's architecture under the names each party uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeArch {
    /// As Linux and Rust name it (`x86_64`).
    pub linux: &'static str,
    /// As Go and Docker's profiles do (`amd64`).
    pub go: &'static str,
    pub oci: Arch,
    /// `None`: seccompiler cannot build filters for it.
    pub target: Option<TargetArch>,
}

impl NativeArch {
    pub fn of_node() -> NativeArch {
        Self::named(std::env::consts::ARCH)
    }

    fn named(linux: &'static str) -> NativeArch {
        let (go, oci, target) = match linux {
            "x86_64" => ("amd64", Arch::ScmpArchX86_64, Some(TargetArch::x86_64)),
            "aarch64" => ("arm64", Arch::ScmpArchAarch64, Some(TargetArch::aarch64)),
            "riscv64" => ("riscv64", Arch::ScmpArchRiscv64, Some(TargetArch::riscv64)),
            "x86" => ("386", Arch::ScmpArchX86, None),
            "arm" => ("arm", Arch::ScmpArchArm, None),
            "s390x" => ("s390x", Arch::ScmpArchS390x, None),
            "powerpc64" => ("ppc64le", Arch::ScmpArchPpc64le, None),
            "loongarch64" => ("loong64", Arch::ScmpArchLoongarch64, None),
            other => (other, Arch::ScmpArchNative, None),
        };
        NativeArch { linux, go, oci, target }
    }
}

/// The running kernel's (major, minor); (0, 0) when it cannot be read, which only makes
/// `minKernel` conditions fail.
fn kernel_version() -> (u64, u64) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|text| profile::kernel_version(&text))
        .unwrap_or((0, 0))
}

/// The container's `linux.seccomp`, from what its security context asks for and its bounding
/// capabilities (`CAP_` prefix or not). Checked by compiling it: anything berth cannot enforce,
/// and a Localhost file that is missing or bad, is [`Error::InvalidArgument`] naming it.
pub fn for_container(
    requested: &SecurityProfile,
    privileged: bool,
    bounding: &[String],
) -> Result<Option<LinuxSeccomp>> {
    let arch = NativeArch::of_node();
    resolve(requested, privileged, bounding, arch, kernel_version())
}

fn resolve(
    requested: &SecurityProfile,
    privileged: bool,
    bounding: &[String],
    arch: NativeArch,
    kernel: (u64, u64),
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    let (profile, name) = match requested {
        SecurityProfile::Unconfined => return Ok(None),
        SecurityProfile::RuntimeDefault => {
            let mut profile = default::profile();
            profile.architectures = Some(vec![arch.oci]);
            (profile, "the runtime default".to_string())
        }
        SecurityProfile::Localhost(path) => {
            let path = path.strip_prefix(LOCALHOST_PREFIX).unwrap_or(path);
            (load(Path::new(path))?, path.to_string())
        }
    };
    let invalid = |msg: String| Error::InvalidArgument(format!("seccomp profile {name}: {msg}"));
    let target = profile::Target::new(bounding, arch, kernel);
    let seccomp = profile.resolve(&target).map_err(invalid)?;
    compile::compile(&seccomp, &arch).map_err(invalid)?;
    Ok(Some(seccomp))
}

fn load(path: &Path) -> Result<profile::Profile> {
    let invalid =
        |msg: String| Error::InvalidArgument(format!("seccomp profile {}: {msg}", path.display()));
    if !path.is_absolute() {
        return Err(invalid("a Localhost profile must be an absolute path on the node".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| invalid(format!("cannot open it: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PROFILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PROFILE_SIZE {
        return Err(invalid(format!("it is larger than {MAX_PROFILE_SIZE} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a seccomp profile: {e}")))
}

/// Compiles a spec's seccomp section for this node, for the executor.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Filters> {
    compile::compile(seccomp, &NativeArch::of_node())
        .map_err(|msg| Error::InvalidArgument(format!("seccomp profile: {msg}")))
}

#[cfg(test)]
mod tests;
