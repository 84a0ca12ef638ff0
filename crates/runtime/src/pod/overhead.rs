//! The pod's limits with the runtime handler's overhead added: what its cgroup is given.

use crate::container::Resources;

/// The pod's limits: `resources` (the sum of its containers', as the kubelet computes it) with
/// `overhead` (what the runtime handler itself needs) added to each limit that is set. An
/// unset limit (zero) stays unset: there is nothing to add the overhead to. CPU sets,
/// hugepages and `unified` are the pod's own.
pub fn combine(resources: &Resources, overhead: &Resources) -> Resources {
    let plus = |limit: i64, extra: i64| {
        if limit > 0 {
            limit.saturating_add(extra.max(0))
        } else {
            limit
        }
    };
    // The overhead's quota is per its own period; the sum is per the pod's.
    let period = |p: i64| if p > 0 { p as i128 } else { DEFAULT_CFS_PERIOD };
    let overhead_quota = if overhead.cpu_quota > 0 {
        let scaled =
            overhead.cpu_quota as i128 * period(resources.cpu_period) / period(overhead.cpu_period);
        i64::try_from(scaled).unwrap_or(i64::MAX)
    } else {
        0
    };
    Resources {
        memory_limit_in_bytes: plus(
            resources.memory_limit_in_bytes,
            overhead.memory_limit_in_bytes,
        ),
        memory_swap_limit_in_bytes: plus(
            resources.memory_swap_limit_in_bytes,
            overhead.memory_limit_in_bytes,
        ),
        cpu_shares: plus(resources.cpu_shares, overhead.cpu_shares),
        cpu_quota: plus(resources.cpu_quota, overhead_quota),
        ..resources.clone()
    }
}

/// The kernel's CFS period when none is set, in microseconds.
const DEFAULT_CFS_PERIOD: i128 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_adds_to_the_limits_that_are_set() {
        let resources = Resources {
            memory_limit_in_bytes: 100 << 20,
            memory_swap_limit_in_bytes: 200 << 20,
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0".into(),
            ..Default::default()
        };
        let overhead = Resources {
            memory_limit_in_bytes: 10 << 20,
            cpu_shares: 128,
            cpu_quota: 5_000,
            cpu_period: 50_000,
            cpuset_cpus: "1".into(),
            ..Default::default()
        };
        let pod = combine(&resources, &overhead);
        assert_eq!(pod.memory_limit_in_bytes, 110 << 20);
        assert_eq!(pod.memory_swap_limit_in_bytes, 210 << 20);
        assert_eq!(pod.cpu_shares, 1152);
        // 5 ms per 50 ms is 10 ms per 100 ms.
        assert_eq!((pod.cpu_quota, pod.cpu_period), (60_000, 100_000));
        assert_eq!(pod.cpuset_cpus, "0");

        // Unset (or unlimited) limits stay so; no overhead leaves the resources as they are.
        let unset = Resources { memory_swap_limit_in_bytes: -1, ..Default::default() };
        assert_eq!(combine(&unset, &overhead), unset);
        assert_eq!(combine(&resources, &Resources::default()), resources);
        // The default period on either side.
        let one_cpu = Resources { cpu_quota: 100_000, ..Default::default() };
        let tenth = Resources { cpu_quota: 10_000, ..Default::default() };
        assert_eq!(combine(&one_cpu, &tenth).cpu_quota, 110_000);
    }
}
