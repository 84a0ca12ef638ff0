//! An OCI `linux.seccomp` section compiled to classic BPF with seccompiler, and the filters'
//! installation in the executor's child.
//!
//! A seccompiler filter has one action for the calls it matches and one for the rest, while an
//! OCI profile gives every rule an action of its own. The kernel runs all of a process's
//! filters and takes the most severe answer (kill process, kill thread, trap, errno, trace,
//! log, allow; on a tie, the data of the filter installed last), so a profile becomes a stack:
//!
//! - a base filter, unless the default action is to allow: a call that some rule with another
//!   action than the default matches (its conditions included) is allowed, anything else gets
//!   the default action;
//! - one filter for each other action a rule has (allow aside): the calls its rules match get
//!   it, the rest are allowed.
//!
//! A call no rule matches gets the default action; a call some rules match gets the most
//! severe of their actions. That is libseccomp's answer whenever rules do not overlap, and the
//! safe one when they do (an unconditional allow and a conditional errno for the same call:
//! the errno wins where its condition holds).
//!
//! Conditions follow runc: the conditions of a rule must all hold, except when several test
//! the same argument, which can only be meant as alternatives: each is then a rule of its own.
//! Comparisons are on the whole 64-bit argument, as libseccomp's are.
//!
//! Each filter checks the architecture first and kills a process of another one (seccompiler's
//! fixed choice); on x86_64 a last filter answers `ENOSYS` to x32 calls (numbers with bit 30
//! set), which would otherwise pass a deny-list with their different numbers.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::NativeArch;

/// The kernel's limit on the instructions of all filters a call runs through, each filter
/// counting 4 more.
const MAX_TOTAL_INSNS: usize = 32768;
/// The largest errno the kernel passes back (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The compiled filters of a profile, ready to be installed in order.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    programs: Vec<Vec<libc::sock_filter>>,
    /// `SECCOMP_FILTER_FLAG_*` for each `seccomp(2)` call.
    flags: libc::c_ulong,
}

impl Filters {
    /// How many filters the profile became.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// Installs the filters on the calling thread. Allocates nothing, so it may run in a child
    /// forked from a multi-threaded process. The kernel requires no_new_privs or
    /// `CAP_SYS_ADMIN` in the effective set.
    pub fn install(&self) -> Result<(), nix::errno::Errno> {
        for program in &self.programs {
            let prog = libc::sock_fprog {
                // `compile` keeps every program well under u16::MAX instructions.
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr().cast_mut(),
            };
            // SAFETY: the kernel copies the program in; `prog` points into a live vector.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    self.flags,
                    &prog as *const libc::sock_fprog,
                )
            };
            if ret != 0 {
                return Err(nix::errno::Errno::last());
            }
        }
        Ok(())
    }
}

/// One rule as seccompiler takes it: `None` is unconditional.
type Chain = Option<Vec<SeccompRule>>;

/// Adds `rules` for `nr` to a filter's map; an unconditional rule absorbs any other.
fn add(map: &mut BTreeMap<i64, Chain>, nr: i64, rules: Chain) {
    match (map.get_mut(&nr), rules) {
        (None, rules) => {
            map.insert(nr, rules);
        }
        (Some(existing), None) => *existing = None,
        (Some(Some(existing)), Some(more)) => existing.extend(more),
        (Some(None), Some(_)) => {}
    }
}

fn errno(value: Option<u32>, what: &str) -> Result<u32, String> {
    let value = value.unwrap_or(libc::EPERM as u32);
    if value > MAX_ERRNO {
        return Err(format!("{what} {value} is not an errno (at most {MAX_ERRNO})"));
    }
    Ok(value)
}

fn action(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno(errno_ret, "errnoRet")?),
        // runc's choice: TRACE passes errnoRet (EPERM by default) to the tracer.
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno(errno_ret, "errnoRet")?),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err("SCMP_ACT_NOTIFY is not supported (berth runs no seccomp agent)".into())
        }
    })
}

fn condition(arg: &LinuxSeccompArg) -> Result<SeccompCondition, String> {
    let index = u8::try_from(arg.index()).ok().filter(|i| *i < 6).ok_or_else(|| {
        format!("argument index {} is out of range (a call has 6 arguments)", arg.index())
    })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // OCI: `value` is the mask, `valueTwo` what the masked argument must equal.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (SeccompCmpOp::MaskedEq(arg.value()), arg.value_two().unwrap_or(0))
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

/// A rule's conditions as seccompiler rules (alternatives): one with all of them, or one each
/// when several test the same argument.
fn chain(args: Option<&Vec<LinuxSeccompArg>>) -> Result<Chain, String> {
    let args = match args {
        Some(args) if !args.is_empty() => args,
        _ => return Ok(None),
    };
    let conditions = args.iter().map(condition).collect::<Result<Vec<_>, _>>()?;
    let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indexes.sort_unstable();
    let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
    let rules = if repeated {
        conditions.into_iter().map(|c| SeccompRule::new(vec![c])).collect::<Result<Vec<_>, _>>()
    } else {
        SeccompRule::new(conditions).map(|r| vec![r])
    };
    rules.map(Some).map_err(|e| e.to_string())
}

fn flags(list: &[LinuxSeccompFilterFlag]) -> Result<libc::c_ulong, String> {
    let mut flags = 0;
    for flag in list {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The filters are installed by a single-threaded process just before execve.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a seccomp agent, \
                            which berth does not run"
                    .into())
            }
        };
    }
    Ok(flags)
}

fn to_libc(program: BpfProgram) -> Vec<libc::sock_filter> {
    program
        .into_iter()
        .map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k })
        .collect()
}

/// `ld arch; jne x86_64 → allow; ld nr; jge X32 bit → ENOSYS; allow`.
fn x32_guard() -> Vec<libc::sock_filter> {
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        insn(LD_ABS_W, 0, 0, 4), // seccomp_data.arch
        insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(LD_ABS_W, 0, 0, 0), // seccomp_data.nr
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Compiles `profile` for this node's architecture. Calls this architecture does not have are
/// left out, as runc does (a profile names calls of many); anything that cannot be expressed
/// is an error naming it.
pub fn compile(profile: &LinuxSeccomp, arch: &NativeArch) -> Result<Filters, String> {
    if profile.listener_path().is_some() {
        return Err("listenerPath is not supported (berth runs no seccomp agent)".into());
    }
    let target = arch
        .target
        .ok_or_else(|| format!("seccomp filters are not supported on {} by berth", arch.linux))?;
    if let Some(arches) = profile.architectures() {
        if !arches.is_empty()
            && !arches
                .iter()
                .any(|a| *a == arch.oci || *a == oci_spec::runtime::Arch::ScmpArchNative)
        {
            return Err(format!(
                "the profile's architectures do not include this node's ({})",
                arch.linux
            ));
        }
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let flags = flags(profile.flags().as_deref().unwrap_or_default())?;

    let mut base: BTreeMap<i64, Chain> = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Chain>)> = Vec::new();
    for (n, call) in profile.syscalls().iter().flatten().enumerate() {
        let what = |e: String| format!("syscalls[{n}] ({}): {e}", call.names().join(","));
        let act = action(call.action(), call.errno_ret()).map_err(what)?;
        let rules = chain(call.args().as_ref()).map_err(what)?;
        let numbers: Vec<i64> = call
            .names()
            .iter()
            .filter_map(|name| syscalls::Sysno::from_str(name).ok())
            .map(|nr| i64::from(nr.id()))
            .collect();
        if act != default {
            for nr in &numbers {
                add(&mut base, *nr, rules.clone());
            }
        }
        if act == SeccompAction::Allow {
            continue;
        }
        let index = match by_action.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                by_action.push((act.clone(), BTreeMap::new()));
                by_action.len() - 1
            }
        };
        for nr in numbers {
            add(&mut by_action[index].1, nr, rules.clone());
        }
    }

    let mut filters: Vec<SeccompFilter> = Vec::new();
    let to_rules = |map: BTreeMap<i64, Chain>| -> BTreeMap<i64, Vec<SeccompRule>> {
        map.into_iter().map(|(nr, chain)| (nr, chain.unwrap_or_default())).collect()
    };
    let built = |e: seccompiler::BackendError| e.to_string();
    if default != SeccompAction::Allow {
        filters.push(
            SeccompFilter::new(to_rules(base), default.clone(), SeccompAction::Allow, target)
                .map_err(built)?,
        );
    }
    for (act, map) in by_action {
        if map.is_empty() {
            continue;
        }
        filters.push(
            SeccompFilter::new(to_rules(map), SeccompAction::Allow, act, target).map_err(built)?,
        );
    }
    if filters.is_empty() {
        // Everything is allowed: nothing to install.
        return Ok(Filters::default());
    }
    let mut programs = Vec::new();
    for filter in filters {
        let program: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| {
            format!("the profile is too large for a seccomp filter: {e}")
        })?;
        programs.push(to_libc(program));
    }
    if arch.linux == "x86_64" {
        programs.push(x32_guard());
    }
    let total: usize = programs.iter().map(|p| p.len() + 4).sum();
    if total > MAX_TOTAL_INSNS {
        return Err(format!(
            "the profile needs {total} BPF instructions, over the kernel's {MAX_TOTAL_INSNS}"
        ));
    }
    Ok(Filters { programs, flags })
}
