//! Capabilities and the switch to the process's user.
//!
//! The order matters and is the kernel's, not a preference: the bounding set can only be
//! lowered while the process still has `CAP_SETPCAP` in effect (before setuid clears the
//! effective set); setuid keeps the permitted set only under `PR_SET_KEEPCAPS`; and each
//! capset must keep effective ⊆ permitted, so inheritable and effective are set while the
//! permitted set is still whole, permitted then, ambient (⊆ permitted ∩ inheritable) last.
//!
//! A seccomp filter goes on after all this, right before execve. Without no_new_privs the
//! kernel wants `CAP_SYS_ADMIN` in effect for that, so a process that is not to have it keeps
//! it in its effective and permitted sets only, never in the bounding, inheritable or ambient
//! ones. execve then takes it away by itself: the new permitted set is made of the bounding
//! set (for root), the inheritable set (with the file's) and the ambient set, never of the old
//! permitted set. So execve is the only call the filter sees from the executor, and a profile
//! need not allow `capset` for the container to start.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use oci_spec::runtime::LinuxCapabilities;

use super::child::{Failure, Step};
use super::plan::ProcessPlan;
use crate::error::{Error, Result};

/// The five capability sets of a process, in the caps crate's terms.
#[derive(Debug, Clone, Default)]
pub(super) struct CapsPlan {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// Converts the spec's sets; an absent set is an empty one, as the OCI spec has it.
pub(super) fn plan(spec: &LinuxCapabilities) -> Result<CapsPlan> {
    let convert = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<CapsHashSet> {
        set.iter()
            .flatten()
            .map(|cap| {
                // oci-spec prints a capability without its prefix ("SYS_ADMIN").
                let name = format!("CAP_{cap}");
                Capability::from_str(&name)
                    .map_err(|_| Error::InvalidArgument(format!("unknown capability {name}")))
            })
            .collect()
    };
    Ok(CapsPlan {
        bounding: convert(spec.bounding())?,
        effective: convert(spec.effective())?,
        permitted: convert(spec.permitted())?,
        inheritable: convert(spec.inheritable())?,
        ambient: convert(spec.ambient())?,
    })
}

fn caps_failure(what: &str) -> impl FnOnce(caps::errors::CapsError) -> Failure + '_ {
    move |err| Failure::internal(format!("{what}: {err}"))
}

/// Lowers the bounding set to the plan's; must run while the process is still root.
pub(super) fn drop_bounding(plan: &CapsPlan) -> Step<()> {
    for cap in caps::all() {
        // A capability this kernel does not know reads as an error: nothing to drop.
        let held = caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false);
        if held && !plan.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_failure("dropping a bounding capability"))?;
        }
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &str) -> Step<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong)
    };
    if ret == -1 {
        return Err(Failure::internal_errno(what, Errno::last()));
    }
    Ok(())
}

/// Sets no_new_privs when asked, the groups, gid and uid, then the capability sets.
pub(super) fn become_user(process: &ProcessPlan) -> Step<()> {
    if process.no_new_privs {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "setting no_new_privs")?;
    }
    if let Some(plan) = &process.caps {
        drop_bounding(plan)?;
        prctl(libc::PR_SET_KEEPCAPS, 1, "setting keep-caps")?;
    }
    // SAFETY: the pointer and length describe the plan's vector.
    let ret = unsafe { libc::setgroups(process.groups.len(), process.groups.as_ptr()) };
    if ret == -1 {
        return Err(Failure::internal_errno("setting the additional groups", Errno::last()));
    }
    let gid = nix::unistd::Gid::from_raw(process.gid);
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| Failure::internal_errno(format!("setting gid {}", process.gid), e))?;
    let uid = nix::unistd::Uid::from_raw(process.uid);
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| Failure::internal_errno(format!("setting uid {}", process.uid), e))?;
    if let Some(plan) = &process.caps {
        prctl(libc::PR_SET_KEEPCAPS, 0, "clearing keep-caps")?;
        let (mut effective, mut permitted) = (plan.effective.clone(), plan.permitted.clone());
        if process.seccomp_needs_admin {
            effective.insert(Capability::CAP_SYS_ADMIN);
            permitted.insert(Capability::CAP_SYS_ADMIN);
        }
        caps::set(None, CapSet::Inheritable, &plan.inheritable)
            .map_err(caps_failure("setting the inheritable capabilities"))?;
        caps::set(None, CapSet::Effective, &effective)
            .map_err(caps_failure("setting the effective capabilities"))?;
        caps::set(None, CapSet::Permitted, &permitted)
            .map_err(caps_failure("setting the permitted capabilities"))?;
        caps::set(None, CapSet::Ambient, &plan.ambient)
            .map_err(caps_failure("setting the ambient capabilities"))?;
    }
    Ok(())
}
