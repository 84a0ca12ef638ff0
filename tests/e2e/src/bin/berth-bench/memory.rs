//! Memory and CPU of processes, read from /proc.

use super::*;

/// A process's memory, KiB.
#[derive(Clone, Copy, Default)]
pub(crate) struct Memory {
    pub(crate) rss: u64,
    pub(crate) pss: u64,
}

pub(crate) fn memory_of(pid: i32) -> Result<Memory, Error> {
    Ok(Memory { rss: read_status_kib(pid, "VmRSS")?, pss: read_pss_kib(pid)? })
}

/// The memory of a set of processes, KiB.
#[derive(Default)]
pub(crate) struct GroupMemory {
    pub(crate) count: usize,
    pub(crate) rss_sum: u64,
    pub(crate) rss_max: u64,
    pub(crate) pss_sum: u64,
}

/// A process as `/proc` shows it.
pub(crate) struct Process {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) argv: Vec<String>,
}

/// Every process with a command line (kernel threads have none); those that exit during the
/// scan are left out.
pub(crate) fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name: state, then ppid.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            let mut argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            // The command line ends with a NUL.
            if argv.last().is_some_and(|arg| arg.is_empty()) {
                argv.pop();
            }
            (!argv.is_empty()).then_some(Process { pid, ppid, argv })
        })
        .collect()
}

/// The pids of the per-pod processes of `kind` that belong to the pods or containers in `ids`.
pub(crate) fn per_pod_pids(kind: &PerPod, ids: &std::collections::HashSet<String>) -> Vec<i32> {
    let all = processes();
    let matched: Vec<&Process> = match kind {
        PerPod::Monitors => all
            .iter()
            .filter(|p| p.argv.get(1).is_some_and(|arg| arg == "monitor"))
            .filter(|p| p.argv.windows(2).any(|w| w[0] == "--pod" && ids.contains(&w[1])))
            .collect(),
        PerPod::Named(name) => {
            let named: Vec<&Process> = all
                .iter()
                .filter(|p| Path::new(&p.argv[0]).file_name().is_some_and(|f| f == name.as_str()))
                .collect();
            // containerd's shims name their pod (`-id <pod>`), conmon its container; a
            // runtime whose processes name neither is measured whole.
            let ours: Vec<&Process> =
                named.iter().copied().filter(|p| p.argv.iter().any(|a| ids.contains(a))).collect();
            if ours.is_empty() {
                named
            } else {
                ours
            }
        }
    };
    // A monitor's child between its fork and its exec (a container waiting to start, an
    // ExecSync) still has the monitor's command line: it is not another monitor.
    let pids: std::collections::HashSet<i32> = matched.iter().map(|p| p.pid).collect();
    matched.iter().filter(|p| !pids.contains(&p.ppid)).map(|p| p.pid).collect()
}

/// The memory of `pids`; a process that has gone meanwhile is left out.
pub(crate) fn group_memory(pids: &[i32]) -> GroupMemory {
    let mut group = GroupMemory::default();
    for memory in pids.iter().filter_map(|pid| memory_of(*pid).ok()) {
        group.count += 1;
        group.rss_sum += memory.rss;
        group.rss_max = group.rss_max.max(memory.rss);
        group.pss_sum += memory.pss;
    }
    group
}

/// The proportional set size of `pid`, from `/proc/<pid>/smaps_rollup`, KiB.
pub(crate) fn read_pss_kib(pid: i32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|err| format!("reading {path}: {err}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("no Pss in {path}").into())
}

/// A field of `/proc/<pid>/status` given in kB (`VmRSS`, `VmHWM`), in KiB.
pub(crate) fn read_status_kib(pid: i32, field: &str) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|err| format!("reading {path}: {err}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("no {field} in {path}").into())
}

/// User plus system CPU time of `pid` so far, from `/proc/<pid>/stat`.
pub(crate) fn cpu_seconds(pid: i32) -> Result<f64, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|err| format!("reading {path}: {err}"))?;
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let fields: Vec<&str> = text.rsplit_once(')').ok_or("no comm")?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
    let ticks: u64 = fields
        .get(11..13)
        .ok_or("short stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<_, _>>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz as f64)
}
