//! ContainerStats, ListContainerStats, StreamContainerStats, PodSandboxStats,
//! ListPodSandboxStats, StreamPodSandboxStats: translation of `berth_runtime::stats`.

use berth_runtime::container::ContainerFilter;
use berth_runtime::pod::PodFilter;
use berth_runtime::stats::{self as rt, CgroupStats};

use crate::error::CriResult;
use crate::proto::{
    self, ContainerAttributes, ContainerStatsFilter, ContainerStatsRequest, ContainerStatsResponse,
    CpuUsage, FilesystemIdentifier, FilesystemUsage, LinuxPodSandboxStats,
    ListContainerStatsRequest, ListContainerStatsResponse, ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse, MemoryUsage, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxStatsFilter, PodSandboxStatsRequest, PodSandboxStatsResponse,
    ProcessUsage, StreamContainerStatsResponse, StreamPodSandboxStatsResponse, SwapUsage,
    UInt64Value,
};
use crate::rpc_layer::{record_container, record_pod};
use crate::service::Cri;
use crate::{container, sandbox};

/// Entries per stream message.
const STREAM_BATCH: usize = 64;

pub async fn container_stats(
    cri: &Cri,
    request: ContainerStatsRequest,
) -> CriResult<ContainerStatsResponse> {
    record_container(&request.container_id);
    let stats = cri.runtime.container_stats(&request.container_id).await?;
    Ok(ContainerStatsResponse { stats: Some(container_stats_of(&stats)) })
}

pub async fn list_container_stats(
    cri: &Cri,
    request: ListContainerStatsRequest,
) -> CriResult<ListContainerStatsResponse> {
    Ok(ListContainerStatsResponse { stats: listed_containers(cri, request.filter).await? })
}

pub async fn stream_container_stats(
    cri: &Cri,
    filter: Option<ContainerStatsFilter>,
) -> CriResult<Vec<StreamContainerStatsResponse>> {
    let stats = listed_containers(cri, filter).await?;
    Ok(stats
        .chunks(STREAM_BATCH)
        .map(|batch| StreamContainerStatsResponse { container_stats: batch.to_vec() })
        .collect())
}

pub async fn pod_stats(
    cri: &Cri,
    request: PodSandboxStatsRequest,
) -> CriResult<PodSandboxStatsResponse> {
    record_pod(&request.pod_sandbox_id);
    let stats = cri.runtime.pod_stats(&request.pod_sandbox_id).await?;
    Ok(PodSandboxStatsResponse { stats: Some(pod_stats_of(&stats)) })
}

pub async fn list_pod_stats(
    cri: &Cri,
    request: ListPodSandboxStatsRequest,
) -> CriResult<ListPodSandboxStatsResponse> {
    Ok(ListPodSandboxStatsResponse { stats: listed_pods(cri, request.filter).await? })
}

pub async fn stream_pod_stats(
    cri: &Cri,
    filter: Option<PodSandboxStatsFilter>,
) -> CriResult<Vec<StreamPodSandboxStatsResponse>> {
    let stats = listed_pods(cri, filter).await?;
    Ok(stats
        .chunks(STREAM_BATCH)
        .map(|batch| StreamPodSandboxStatsResponse { pod_sandbox_stats: batch.to_vec() })
        .collect())
}

async fn listed_containers(
    cri: &Cri,
    filter: Option<ContainerStatsFilter>,
) -> CriResult<Vec<proto::ContainerStats>> {
    let filter = filter.map(container_filter).unwrap_or_default();
    let stats = cri.runtime.list_container_stats(&filter).await?;
    Ok(stats.iter().map(container_stats_of).collect())
}

async fn listed_pods(
    cri: &Cri,
    filter: Option<PodSandboxStatsFilter>,
) -> CriResult<Vec<proto::PodSandboxStats>> {
    let filter = filter.map(pod_filter).unwrap_or_default();
    let stats = cri.runtime.list_pod_stats(&filter).await?;
    Ok(stats.iter().map(pod_stats_of).collect())
}

fn container_filter(f: ContainerStatsFilter) -> ContainerFilter {
    ContainerFilter {
        id: Some(f.id).filter(|id| !id.is_empty()),
        state: None,
        pod_id: Some(f.pod_sandbox_id).filter(|id| !id.is_empty()),
        labels: f.label_selector.into_iter().collect(),
    }
}

fn pod_filter(f: PodSandboxStatsFilter) -> PodFilter {
    PodFilter {
        id: Some(f.id).filter(|id| !id.is_empty()),
        state: None,
        labels: f.label_selector.into_iter().collect(),
    }
}

fn value(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

fn cpu(stats: &CgroupStats) -> Option<CpuUsage> {
    stats.cpu.as_ref().map(|cpu| CpuUsage {
        timestamp: cpu.timestamp,
        usage_core_nano_seconds: value(cpu.usage_core_nano_seconds),
        usage_nano_cores: value(cpu.usage_nano_cores),
        psi: None,
    })
}

fn memory(stats: &CgroupStats) -> Option<MemoryUsage> {
    stats.memory.as_ref().map(|m| MemoryUsage {
        timestamp: m.timestamp,
        working_set_bytes: value(m.working_set_bytes),
        available_bytes: m.available_bytes.and_then(value),
        usage_bytes: value(m.usage_bytes),
        rss_bytes: value(m.rss_bytes),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
        psi: None,
    })
}

fn swap(stats: &CgroupStats) -> Option<SwapUsage> {
    stats.swap.as_ref().map(|s| SwapUsage {
        timestamp: s.timestamp,
        swap_available_bytes: s.available_bytes.and_then(value),
        swap_usage_bytes: value(s.usage_bytes),
    })
}

fn container_stats_of(stats: &rt::ContainerStats) -> proto::ContainerStats {
    let record = &stats.record;
    proto::ContainerStats {
        attributes: Some(ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(container::metadata(record)),
            labels: sandbox::to_map(&record.config.labels),
            annotations: sandbox::to_map(&record.config.annotations),
        }),
        cpu: cpu(&stats.cgroup),
        memory: memory(&stats.cgroup),
        writable_layer: stats.writable_layer.as_ref().map(|fs| FilesystemUsage {
            timestamp: fs.timestamp,
            fs_id: Some(FilesystemIdentifier { mountpoint: fs.mountpoint.clone() }),
            used_bytes: value(fs.used_bytes),
            inodes_used: value(fs.inodes_used),
        }),
        swap: swap(&stats.cgroup),
        io: None,
    }
}

fn interface(i: &rt::InterfaceStats) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    }
}

fn pod_stats_of(stats: &rt::PodStats) -> proto::PodSandboxStats {
    let record = &stats.record;
    proto::PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: record.id.clone(),
            metadata: Some(sandbox::metadata(record)),
            labels: sandbox::to_map(&record.config.labels),
            annotations: sandbox::to_map(&record.config.annotations),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu(&stats.cgroup),
            memory: memory(&stats.cgroup),
            network: stats.network.as_ref().map(|n| NetworkUsage {
                timestamp: n.timestamp,
                default_interface: n.default_interface().map(interface),
                interfaces: n.interfaces.iter().map(interface).collect(),
            }),
            process: stats.cgroup.process_count.map(|count| ProcessUsage {
                timestamp: stats.cgroup.timestamp,
                process_count: value(count),
            }),
            containers: stats.containers.iter().map(container_stats_of).collect(),
            io: None,
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::stats::{CpuStats, MemoryStats};

    #[test]
    fn figures_and_unset_ones() {
        let stats = CgroupStats {
            timestamp: 5,
            cpu: Some(CpuStats { timestamp: 5, usage_core_nano_seconds: 10, usage_nano_cores: 2 }),
            memory: Some(MemoryStats {
                timestamp: 5,
                working_set_bytes: 7,
                available_bytes: None,
                usage_bytes: 9,
                ..Default::default()
            }),
            swap: None,
            process_count: Some(1),
        };
        let c = cpu(&stats).unwrap();
        assert_eq!(c.usage_core_nano_seconds.unwrap().value, 10);
        assert_eq!(c.usage_nano_cores.unwrap().value, 2);
        let m = memory(&stats).unwrap();
        assert_eq!(m.working_set_bytes.unwrap().value, 7);
        assert!(m.available_bytes.is_none());
        assert!(swap(&stats).is_none());
        let f = container_filter(ContainerStatsFilter {
            id: String::new(),
            pod_sandbox_id: "p".into(),
            label_selector: [("a".to_string(), "b".to_string())].into(),
        });
        assert_eq!((f.id, f.pod_id.as_deref(), f.labels.len()), (None, Some("p"), 1));
    }
}
