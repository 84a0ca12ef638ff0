//! The spec's `linux.resources`: the CRI's limits in OCI form, for a container and for a pod.

use oci_spec::runtime::{
    LinuxCpu, LinuxDevice, LinuxDeviceType, LinuxHugepageLimit, LinuxMemory, LinuxResources,
};

use super::*;
use crate::container::types::Resources;
use crate::error::{Error, Result};

pub(super) fn non_negative(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::InvalidArgument(format!("{what} {value} is negative")))
}

/// The cgroup limits of `r` alone, without device rules: what an update of a running
/// container's (or a pod's) resources writes. `hugetlb`: whether the node's cgroups can hold
/// hugepage limits (see [`hugepage_limits`]).
pub(crate) fn limits(r: &Resources, hugetlb: bool) -> Result<LinuxResources> {
    let mut out = resources(r, false, &[], hugetlb)?;
    out.set_devices(None);
    Ok(out)
}

pub(super) fn resources(
    r: &Resources,
    privileged: bool,
    devices: &[(LinuxDevice, String)],
    hugetlb: bool,
) -> Result<LinuxResources> {
    let mut out = LinuxResources::default();

    let limit = non_negative(r.memory_limit_in_bytes, "memory limit")?;
    let swap = r.memory_swap_limit_in_bytes;
    if swap < -1 {
        return Err(Error::InvalidArgument(format!("memory swap limit {swap} is negative")));
    }
    if limit != 0 || swap != 0 {
        let mut memory = LinuxMemory::default();
        if limit != 0 {
            memory.set_limit(Some(r.memory_limit_in_bytes));
        }
        // As containerd: with a limit and no swap setting, memory+swap equals the limit, so
        // that the container does not swap.
        match swap {
            0 => memory.set_swap((limit != 0).then_some(r.memory_limit_in_bytes)),
            swap => memory.set_swap(Some(swap)),
        };
        out.set_memory(Some(memory));
    }

    let shares = non_negative(r.cpu_shares, "cpu shares")?;
    let period = non_negative(r.cpu_period, "cpu period")?;
    if shares != 0
        || period != 0
        || r.cpu_quota != 0
        || !r.cpuset_cpus.is_empty()
        || !r.cpuset_mems.is_empty()
    {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares((shares != 0).then_some(shares))
            .set_quota((r.cpu_quota != 0).then_some(r.cpu_quota))
            .set_period((period != 0).then_some(period))
            .set_cpus((!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()))
            .set_mems((!r.cpuset_mems.is_empty()).then(|| r.cpuset_mems.clone()));
        out.set_cpu(Some(cpu));
    }

    out.set_hugepage_limits(hugepage_limits(r, hugetlb)?);

    if !r.unified.is_empty() {
        out.set_unified(Some(r.unified.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    }

    let mut rules = Vec::new();
    if privileged {
        rules.push(device_rule(true, LinuxDeviceType::A, None, None, "rwm"));
    } else {
        rules.push(device_rule(false, LinuxDeviceType::A, None, None, "rwm"));
        for (typ, major, minor, access) in DEFAULT_DEVICE_RULES {
            rules.push(device_rule(true, typ, major, minor, access));
        }
        for (device, access) in devices {
            rules.push(device_rule(
                true,
                device.typ(),
                Some(device.major()),
                Some(device.minor()),
                access,
            ));
        }
    }
    out.set_devices(Some(rules));
    Ok(out)
}

/// The spec's hugepage limits. Without a hugetlb controller berth manages (this host's hybrid
/// layout keeps it on the cgroup2 mount only), no cgroup can hold them, and runc ("cannot set
/// hugetlb limit") and crun (a missing `/sys/fs/cgroup/hugetlb`) would fail every container.
/// The kubelet sends a limit for every page size the node has, 0 for those the pod did not
/// ask for; so, as containerd (`tolerate_missing_hugetlb_controller`, on by default) and CRI-O
/// (which checks for the controller) do, those are left out of the spec. A zero limit is not
/// enforced then either, but neither runtime can do better, and refusing it would refuse
/// every pod on such a node. A non-zero limit is a pod asking for hugepages: running it with
/// nothing holding it to the limit would ignore the request silently, so it is refused, where
/// containerd would only log a warning.
fn hugepage_limits(r: &Resources, hugetlb: bool) -> Result<Option<Vec<LinuxHugepageLimit>>> {
    if !hugetlb {
        if let Some(h) = r.hugepage_limits.iter().find(|h| h.limit != 0) {
            return Err(Error::FailedPrecondition(format!(
                "hugepage limit {} for page size {} cannot be held: no cgroup hierarchy berth \
                 manages on this node has the hugetlb controller",
                h.limit, h.page_size
            )));
        }
        if !r.hugepage_limits.is_empty() {
            tracing::debug!(
                limits = ?r.hugepage_limits,
                "no hugetlb controller: zero hugepage limits left out of the spec"
            );
        }
        return Ok(None);
    }
    if r.hugepage_limits.is_empty() {
        return Ok(None);
    }
    let mut limits = Vec::new();
    for h in &r.hugepage_limits {
        let limit = i64::try_from(h.limit).map_err(|_| {
            Error::InvalidArgument(format!("hugepage limit {} is too large", h.limit))
        })?;
        let mut l = LinuxHugepageLimit::default();
        l.set_page_size(h.page_size.clone()).set_limit(limit);
        limits.push(l);
    }
    Ok(Some(limits))
}
