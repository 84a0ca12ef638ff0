//! ContainerStats, ListContainerStats, StreamContainerStats, PodSandboxStats,
//! ListPodSandboxStats, StreamPodSandboxStats, and the metrics RPCs (ListMetricDescriptors,
//! ListPodSandboxMetrics, StreamPodSandboxMetrics): translation of `berth_runtime::stats`.
//!
//! The metrics are the cAdvisor names the kubelet's `/metrics/cadvisor` serves, which the
//! kubelet passes on as they come (KEP-2371): each metric's label values are in the order of its
//! descriptor's keys, `id`, `name`, `image` first (as CRI-O has them) and then the metric's own
//! (`cpu`, `interface`, `device`, …). A container's `name` is its unique name
//! (`<container>_<pod>_<namespace>_<uid>_<attempt>`); pod-level metrics (network) are
//! `id=<pod id>, name="POD", image=""`. A value is an integer, so seconds are whole seconds,
//! as CRI-O and containerd send them.

use berth_runtime::container::{ContainerFilter, Resources};
use berth_runtime::pod::PodFilter;
use berth_runtime::stats::{self as rt, CgroupStats};

use crate::clock::now_nanos;
use crate::convert::{self, container, lookup_id, pod};
use crate::cri::Cri;
use crate::error::CriResult;
use crate::proto::{
    self, ContainerAttributes, ContainerMetrics, ContainerStatsFilter, ContainerStatsRequest,
    ContainerStatsResponse, CpuUsage, FilesystemIdentifier, FilesystemUsage, IoUsage,
    LinuxPodSandboxStats, ListContainerStatsRequest, ListContainerStatsResponse,
    ListMetricDescriptorsRequest, ListMetricDescriptorsResponse, ListPodSandboxMetricsRequest,
    ListPodSandboxMetricsResponse, ListPodSandboxStatsRequest, ListPodSandboxStatsResponse,
    MemoryUsage, Metric, MetricDescriptor, MetricType, NetworkInterfaceUsage, NetworkUsage,
    PodSandboxAttributes, PodSandboxMetrics, PodSandboxStatsFilter, PodSandboxStatsRequest,
    PodSandboxStatsResponse, ProcessUsage, PsiData, PsiStats, StreamContainerStatsResponse,
    StreamPodSandboxMetricsResponse, StreamPodSandboxStatsResponse, SwapUsage, UInt64Value,
};
use crate::rpc_layer::{record_container, record_pod};

/// Entries per stream message.
const STREAM_BATCH: usize = 64;

pub async fn container_stats(
    cri: &Cri,
    request: ContainerStatsRequest,
) -> CriResult<ContainerStatsResponse> {
    let id = lookup_id(&request.container_id, "container")?;
    record_container(id);
    let stats = cri.runtime.container_stats(id).await?;
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
    let id = lookup_id(&request.pod_sandbox_id, "pod sandbox")?;
    record_pod(id);
    let stats = cri.runtime.pod_stats(id).await?;
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

/// The kernel counts stall time in microseconds; the CRI (as the kubelet's summary API) in
/// nanoseconds.
fn psi(psi: Option<&rt::Psi>) -> Option<PsiStats> {
    let data = |line: &rt::PsiLine| PsiData {
        total: line.total_usec.saturating_mul(1000),
        avg10: line.avg10,
        avg60: line.avg60,
        avg300: line.avg300,
    };
    psi.map(|p| PsiStats { full: p.full.as_ref().map(data), some: Some(data(&p.some)) })
}

fn cpu(stats: &CgroupStats) -> Option<CpuUsage> {
    stats.cpu.as_ref().map(|cpu| CpuUsage {
        timestamp: cpu.timestamp,
        usage_core_nano_seconds: value(cpu.usage_core_nano_seconds),
        usage_nano_cores: value(cpu.usage_nano_cores),
        psi: psi(stats.pressure.cpu.as_ref()),
    })
}

fn io(stats: &CgroupStats) -> Option<IoUsage> {
    stats.pressure.io.as_ref().map(|p| IoUsage { timestamp: stats.timestamp, psi: psi(Some(p)) })
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
        psi: psi(stats.pressure.memory.as_ref()),
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
            labels: convert::to_map(&record.config.labels),
            annotations: convert::to_map(&record.config.annotations),
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
        io: io(&stats.cgroup),
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

/// A pod's network figures, only with a default interface: the kubelet (1.37,
/// `addCRIPodNetworkStats`) reads the default interface of any network usage it is given without
/// a check, and panics on none. A namespace with nothing but `lo` (its interfaces being torn
/// down, or never set up) has no figures to give.
fn network_usage(n: &rt::NetworkStats) -> Option<NetworkUsage> {
    let default = n.default_interface()?;
    Some(NetworkUsage {
        timestamp: n.timestamp,
        default_interface: Some(interface(default)),
        interfaces: n.interfaces.iter().map(interface).collect(),
    })
}

fn pod_stats_of(stats: &rt::PodStats) -> proto::PodSandboxStats {
    let record = &stats.record;
    proto::PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: record.id.clone(),
            metadata: Some(pod::metadata(record)),
            labels: convert::to_map(&record.config.labels),
            annotations: convert::to_map(&record.config.annotations),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu(&stats.cgroup),
            memory: memory(&stats.cgroup),
            network: stats.network.as_ref().and_then(network_usage),
            process: stats.cgroup.process_count.map(|count| ProcessUsage {
                timestamp: stats.cgroup.timestamp,
                process_count: value(count),
            }),
            containers: stats.containers.iter().map(container_stats_of).collect(),
            io: io(&stats.cgroup),
        }),
        windows: None,
    }
}

pub async fn list_metric_descriptors(
    _cri: &Cri,
    _request: ListMetricDescriptorsRequest,
) -> CriResult<ListMetricDescriptorsResponse> {
    Ok(ListMetricDescriptorsResponse { descriptors: descriptors() })
}

pub async fn list_pod_metrics(
    cri: &Cri,
    _request: ListPodSandboxMetricsRequest,
) -> CriResult<ListPodSandboxMetricsResponse> {
    Ok(ListPodSandboxMetricsResponse { pod_metrics: pod_metrics(cri).await? })
}

/// One pod per message.
pub async fn stream_pod_metrics(cri: &Cri) -> CriResult<Vec<StreamPodSandboxMetricsResponse>> {
    let pods = pod_metrics(cri).await?;
    Ok(pods
        .into_iter()
        .map(|pod| StreamPodSandboxMetricsResponse { pod_sandbox_metrics: vec![pod] })
        .collect())
}

async fn pod_metrics(cri: &Cri) -> CriResult<Vec<PodSandboxMetrics>> {
    let pods = cri.runtime.pod_metrics().await?;
    Ok(pods.iter().map(pod_metrics_of).collect())
}

/// The label keys every metric starts with.
const BASE_LABELS: [&str; 3] = ["id", "name", "image"];

/// A metric berth sends: its name, help and the label keys after [`BASE_LABELS`].
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

const fn family(name: &'static str, help: &'static str) -> Family {
    Family { name, help, labels: &[] }
}

const fn labelled(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> Family {
    Family { name, help, labels }
}

const INTERFACE: &[&str] = &["interface"];
const DEVICE: &[&str] = &["device"];

/// Every metric ListPodSandboxMetrics may send, with the cAdvisor name and meaning.
const FAMILIES: &[Family] = &[
    labelled("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", &["cpu"]),
    family("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds."),
    family("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds."),
    family("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals."),
    family("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals."),
    family(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
    ),
    family(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ),
    family("container_memory_working_set_bytes", "Current working set in bytes."),
    family("container_memory_rss", "Size of RSS in bytes."),
    family("container_memory_cache", "Number of bytes of page cache memory."),
    family("container_memory_mapped_file", "Size of memory mapped files in bytes."),
    family("container_memory_swap", "Container swap usage in bytes."),
    family("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes"),
    family("container_memory_failcnt", "Number of memory usage hits limits"),
    labelled(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        &["failure_type", "scope"],
    ),
    family("container_oom_events_total", "Count of out of memory events observed for the container"),
    family("container_memory_kernel_usage", "Size of kernel memory allocated in bytes."),
    family("container_processes", "Number of processes running inside the container."),
    family("container_threads", "Number of threads running inside the container"),
    family("container_file_descriptors", "Number of open file descriptors for the container."),
    family("container_sockets", "Number of open sockets for the container."),
    family(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero",
    ),
    labelled(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        DEVICE,
    ),
    labelled(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        DEVICE,
    ),
    labelled("container_fs_inodes_total", "Number of Inodes", DEVICE),
    labelled("container_fs_inodes_free", "Number of available Inodes", DEVICE),
    labelled("container_fs_reads_bytes_total", "Cumulative count of bytes read", DEVICE),
    labelled("container_fs_writes_bytes_total", "Cumulative count of bytes written", DEVICE),
    labelled("container_fs_reads_total", "Cumulative count of reads completed", DEVICE),
    labelled("container_fs_writes_total", "Cumulative count of writes completed", DEVICE),
    labelled(
        "container_blkio_device_usage_total",
        "Blkio Device bytes usage",
        &["device", "major", "minor", "operation"],
    ),
    family(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
    ),
    family(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
    ),
    family(
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
    ),
    family(
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
    ),
    family(
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
    ),
    family(
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
    ),
    family("container_last_seen", "Last time a container was seen by the exporter"),
    family("container_start_time_seconds", "Start time of the container since unix epoch in seconds."),
    family("container_spec_cpu_period", "CPU period of the container."),
    family("container_spec_cpu_quota", "CPU quota of the container."),
    family("container_spec_cpu_shares", "CPU share of the container."),
    family("container_spec_memory_limit_bytes", "Memory limit for the container."),
    family("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container."),
    labelled("container_network_receive_bytes_total", "Cumulative count of bytes received", INTERFACE),
    labelled(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        INTERFACE,
    ),
    labelled(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        INTERFACE,
    ),
    labelled(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        INTERFACE,
    ),
    labelled(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        INTERFACE,
    ),
    labelled(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        INTERFACE,
    ),
    labelled(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        INTERFACE,
    ),
    labelled(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        INTERFACE,
    ),
];

fn descriptors() -> Vec<MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| MetricDescriptor {
            name: f.name.into(),
            help: f.help.into(),
            label_keys: BASE_LABELS.iter().chain(f.labels).map(|k| k.to_string()).collect(),
        })
        .collect()
}

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Collects one object's metrics, each with the object's base label values first.
struct Emitter {
    base: [String; 3],
    timestamp: i64,
    metrics: Vec<Metric>,
}

impl Emitter {
    fn new(base: [String; 3], timestamp: i64) -> Emitter {
        Emitter { base, timestamp, metrics: Vec::new() }
    }

    fn push(&mut self, name: &str, kind: MetricType, labels: &[&str], value: u64) {
        self.metrics.push(Metric {
            name: name.into(),
            timestamp: self.timestamp,
            metric_type: kind.into(),
            label_values: self
                .base
                .iter()
                .map(String::as_str)
                .chain(labels.iter().copied())
                .map(String::from)
                .collect(),
            value: Some(UInt64Value { value }),
        });
    }

    fn counter(&mut self, name: &str, value: u64) {
        self.push(name, MetricType::Counter, &[], value);
    }

    fn gauge(&mut self, name: &str, value: u64) {
        self.push(name, MetricType::Gauge, &[], value);
    }
}

fn cgroup_metrics(out: &mut Emitter, stats: &CgroupStats) {
    if let Some(cpu) = &stats.cpu {
        let seconds = cpu.usage_core_nano_seconds / NANOS_PER_SECOND;
        out.push("container_cpu_usage_seconds_total", MetricType::Counter, &["total"], seconds);
    }
    let detail = stats.detail.as_ref();
    if let Some(user) = detail.and_then(|d| d.cpu_user_nanos) {
        out.counter("container_cpu_user_seconds_total", user / NANOS_PER_SECOND);
    }
    if let Some(system) = detail.and_then(|d| d.cpu_system_nanos) {
        out.counter("container_cpu_system_seconds_total", system / NANOS_PER_SECOND);
    }
    if let Some(t) = detail.and_then(|d| d.throttling) {
        out.counter("container_cpu_cfs_periods_total", t.periods);
        out.counter("container_cpu_cfs_throttled_periods_total", t.throttled_periods);
        out.counter(
            "container_cpu_cfs_throttled_seconds_total",
            t.throttled_nanos / NANOS_PER_SECOND,
        );
    }
    if let Some(m) = &stats.memory {
        out.gauge("container_memory_usage_bytes", m.usage_bytes);
        out.gauge("container_memory_working_set_bytes", m.working_set_bytes);
        out.gauge("container_memory_rss", m.rss_bytes);
        // The counters are hierarchical; for a container's leaf cgroup both scopes are the same.
        for (kind, count) in [("pgfault", m.page_faults), ("pgmajfault", m.major_page_faults)] {
            for scope in ["container", "hierarchy"] {
                out.push(
                    "container_memory_failures_total",
                    MetricType::Counter,
                    &[kind, scope],
                    count,
                );
            }
        }
    }
    if let Some(swap) = &stats.swap {
        out.gauge("container_memory_swap", swap.usage_bytes);
    }
    if let Some(m) = detail.and_then(|d| d.memory.as_ref()) {
        out.gauge("container_memory_cache", m.cache);
        out.gauge("container_memory_mapped_file", m.mapped_file);
        if let Some(max) = m.max_usage {
            out.gauge("container_memory_max_usage_bytes", max);
        }
        if let Some(failcnt) = m.failcnt {
            out.counter("container_memory_failcnt", failcnt);
        }
        if let Some(kills) = m.oom_kills {
            out.counter("container_oom_events_total", kills);
        }
        if let Some(kernel) = m.kernel {
            out.gauge("container_memory_kernel_usage", kernel);
        }
    }
    if let Some(count) = stats.process_count {
        out.gauge("container_processes", count);
    }
    if let Some(detail) = detail {
        // As cAdvisor: zero means no limit.
        out.gauge("container_threads_max", detail.pids_limit.unwrap_or(0));
        if let Some(threads) = detail.threads {
            out.gauge("container_threads", threads);
        }
        if let Some(open) = detail.open_files {
            out.gauge("container_file_descriptors", open.descriptors);
            out.gauge("container_sockets", open.sockets);
        }
    }
    for io in detail.map(|d| d.io.as_slice()).unwrap_or_default() {
        let device = [io.device.as_str()];
        out.push("container_fs_reads_bytes_total", MetricType::Counter, &device, io.read_bytes);
        out.push("container_fs_writes_bytes_total", MetricType::Counter, &device, io.write_bytes);
        out.push("container_fs_reads_total", MetricType::Counter, &device, io.reads);
        out.push("container_fs_writes_total", MetricType::Counter, &device, io.writes);
        let (major, minor) = (io.major.to_string(), io.minor.to_string());
        for (operation, bytes) in [("Read", io.read_bytes), ("Write", io.write_bytes)] {
            out.push(
                "container_blkio_device_usage_total",
                MetricType::Counter,
                &[io.device.as_str(), major.as_str(), minor.as_str(), operation],
                bytes,
            );
        }
    }
    let pressure = &stats.pressure;
    for (resource, psi) in
        [("cpu", &pressure.cpu), ("memory", &pressure.memory), ("io", &pressure.io)]
    {
        let Some(psi) = psi else { continue };
        let seconds = |line: &rt::PsiLine| line.total_usec / 1_000_000;
        out.counter(
            &format!("container_pressure_{resource}_waiting_seconds_total"),
            seconds(&psi.some),
        );
        if let Some(full) = &psi.full {
            out.counter(
                &format!("container_pressure_{resource}_stalled_seconds_total"),
                seconds(full),
            );
        }
    }
}

fn layer_metrics(out: &mut Emitter, layer: &rt::FsUsage) {
    // cAdvisor names the device; a filesystem without one (overlay, tmpfs) by its mountpoint.
    let device = if layer.device.starts_with('/') { &layer.device } else { &layer.mountpoint };
    let device = [device.as_str()];
    out.push("container_fs_usage_bytes", MetricType::Gauge, &device, layer.used_bytes);
    out.push("container_fs_limit_bytes", MetricType::Gauge, &device, layer.capacity_bytes);
    out.push("container_fs_inodes_total", MetricType::Gauge, &device, layer.inodes_total);
    out.push("container_fs_inodes_free", MetricType::Gauge, &device, layer.inodes_free);
}

/// The limits the container was given (as cAdvisor reads them from the cgroup); zero is unset.
fn spec_metrics(out: &mut Emitter, resources: &Resources) {
    let positive = |v: i64| u64::try_from(v).ok().filter(|&v| v > 0);
    if let Some(quota) = positive(resources.cpu_quota) {
        out.gauge("container_spec_cpu_quota", quota);
        // The kernel's default period when none was given.
        out.gauge("container_spec_cpu_period", positive(resources.cpu_period).unwrap_or(100_000));
    }
    if let Some(shares) = positive(resources.cpu_shares) {
        out.gauge("container_spec_cpu_shares", shares);
    }
    out.gauge(
        "container_spec_memory_limit_bytes",
        positive(resources.memory_limit_in_bytes).unwrap_or(0),
    );
    if let Some(swap) = positive(resources.memory_swap_limit_in_bytes) {
        out.gauge("container_spec_memory_swap_limit_bytes", swap);
    }
}

fn network_metrics(out: &mut Emitter, network: &rt::NetworkStats) {
    for i in &network.interfaces {
        let name = [i.name.as_str()];
        for (metric, value) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            ("container_network_receive_packets_dropped_total", i.rx_dropped),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            ("container_network_transmit_packets_dropped_total", i.tx_dropped),
            ("container_network_transmit_errors_total", i.tx_errors),
        ] {
            out.push(metric, MetricType::Counter, &name, value);
        }
    }
}

fn container_metrics_of(stats: &rt::ContainerStats) -> ContainerMetrics {
    let record = &stats.record;
    let image = if record.image.name.is_empty() { &record.image.id } else { &record.image.name };
    let base = [record.id.clone(), record.name.clone(), image.clone()];
    let mut out = Emitter::new(base, stats.cgroup.timestamp);
    cgroup_metrics(&mut out, &stats.cgroup);
    if let Some(layer) = &stats.writable_layer {
        layer_metrics(&mut out, layer);
    }
    spec_metrics(&mut out, &record.config.resources);
    out.gauge("container_last_seen", seconds_of(now_nanos()));
    let started =
        if record.started_at_nanos > 0 { record.started_at_nanos } else { record.created_at_nanos };
    out.gauge("container_start_time_seconds", seconds_of(started));
    ContainerMetrics { container_id: record.id.clone(), metrics: out.metrics }
}

fn seconds_of(nanos: i64) -> u64 {
    u64::try_from(nanos).unwrap_or(0) / NANOS_PER_SECOND
}

fn pod_metrics_of(stats: &rt::PodStats) -> PodSandboxMetrics {
    let record = &stats.record;
    let mut out =
        Emitter::new([record.id.clone(), "POD".into(), String::new()], stats.cgroup.timestamp);
    // As CRI-O: the pod level has the network, which its containers share; CPU, memory and
    // the rest are the containers'.
    if let Some(network) = &stats.network {
        out.timestamp = network.timestamp;
        network_metrics(&mut out, network);
    }
    PodSandboxMetrics {
        pod_sandbox_id: record.id.clone(),
        metrics: out.metrics,
        container_metrics: stats.containers.iter().map(container_metrics_of).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::stats::{CpuStats, MemoryStats};

    #[test]
    fn network_usage_only_with_a_default_interface() {
        let none = rt::NetworkStats { timestamp: 1, interfaces: Vec::new() };
        assert!(network_usage(&none).is_none());
        let eth0 = rt::InterfaceStats {
            name: "eth0".into(),
            rx_bytes: 3,
            rx_packets: 0,
            rx_errors: 0,
            rx_dropped: 0,
            tx_bytes: 4,
            tx_packets: 0,
            tx_errors: 0,
            tx_dropped: 0,
        };
        let some = rt::NetworkStats { timestamp: 1, interfaces: vec![eth0] };
        let usage = network_usage(&some).expect("figures with eth0");
        assert_eq!(usage.default_interface.map(|i| i.name), Some("eth0".to_string()));
    }

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
            ..Default::default()
        };
        let c = cpu(&stats).unwrap();
        assert!(c.psi.is_none() && io(&stats).is_none(), "no pressure, no PSI");
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

    fn full_cgroup() -> CgroupStats {
        let line = |total_usec| rt::PsiLine { avg10: 1.0, avg60: 0.5, avg300: 0.25, total_usec };
        CgroupStats {
            timestamp: 7,
            cpu: Some(CpuStats {
                timestamp: 7,
                usage_core_nano_seconds: 3_500_000_000,
                usage_nano_cores: 1,
            }),
            memory: Some(MemoryStats {
                timestamp: 7,
                working_set_bytes: 100,
                usage_bytes: 150,
                rss_bytes: 80,
                page_faults: 9,
                major_page_faults: 1,
                ..Default::default()
            }),
            swap: Some(rt::SwapStats { timestamp: 7, usage_bytes: 5, available_bytes: None }),
            process_count: Some(2),
            pressure: rt::Pressure {
                cpu: Some(rt::Psi { some: line(2_000_000), full: Some(line(1_000_000)) }),
                memory: Some(rt::Psi { some: line(3), full: Some(line(6)) }),
                io: Some(rt::Psi { some: line(4), full: Some(line(5)) }),
            },
            detail: Some(rt::CgroupDetail {
                cpu_user_nanos: Some(2_000_000_000),
                cpu_system_nanos: Some(1_000_000_000),
                throttling: Some(rt::Throttling {
                    periods: 10,
                    throttled_periods: 2,
                    throttled_nanos: 3_000_000_000,
                }),
                memory: Some(rt::MemoryDetail {
                    cache: 40,
                    mapped_file: 10,
                    max_usage: Some(200),
                    failcnt: Some(3),
                    oom_kills: Some(1),
                    limit: Some(1000),
                    kernel: Some(16),
                }),
                pids_limit: Some(64),
                threads: Some(3),
                open_files: Some(rt::OpenFiles { descriptors: 5, sockets: 1 }),
                io: vec![rt::DeviceIo {
                    major: 254,
                    minor: 0,
                    device: "/dev/vda".into(),
                    read_bytes: 4096,
                    write_bytes: 8192,
                    reads: 1,
                    writes: 2,
                }],
            }),
        }
    }

    #[test]
    fn pressure_becomes_psi_in_nanoseconds() {
        let stats = full_cgroup();
        let cpu = cpu(&stats).unwrap().psi.unwrap();
        assert_eq!(cpu.some.unwrap().total, 2_000_000_000);
        assert_eq!(cpu.full.unwrap().avg10, 1.0);
        assert_eq!(memory(&stats).unwrap().psi.unwrap().some.unwrap().total, 3000);
        let some_only = rt::Psi { some: rt::PsiLine::default(), full: None };
        assert!(psi(Some(&some_only)).unwrap().full.is_none());
        assert_eq!(io(&stats).unwrap().psi.unwrap().full.unwrap().total, 5000);
    }

    /// Descriptors by name, for checking what is sent against what is declared.
    fn descriptor_map() -> std::collections::HashMap<String, MetricDescriptor> {
        descriptors().into_iter().map(|d| (d.name.clone(), d)).collect()
    }

    /// Everything an object can send, checked against the descriptors: a declared name, as many
    /// label values as keys, and each name sent once per label set.
    #[test]
    fn every_metric_matches_its_descriptor() {
        let mut out = Emitter::new(["c1".into(), "web_pod_ns_uid_0".into(), "busybox".into()], 7);
        cgroup_metrics(&mut out, &full_cgroup());
        layer_metrics(
            &mut out,
            &rt::FsUsage {
                timestamp: 7,
                mountpoint: "/var/lib".into(),
                device: "/dev/vda".into(),
                used_bytes: 10,
                inodes_used: 2,
                capacity_bytes: 100,
                inodes_total: 50,
                inodes_free: 40,
            },
        );
        let resources = Resources {
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 20,
            memory_swap_limit_in_bytes: 2 << 20,
            ..Default::default()
        };
        spec_metrics(&mut out, &resources);
        let eth0 = rt::InterfaceStats { name: "eth0".into(), rx_bytes: 5, ..Default::default() };
        network_metrics(&mut out, &rt::NetworkStats { timestamp: 7, interfaces: vec![eth0] });
        let descriptors = descriptor_map();
        assert_eq!(descriptors.len(), FAMILIES.len(), "no name declared twice");
        let mut seen = std::collections::HashSet::new();
        for metric in &out.metrics {
            let descriptor = descriptors.get(&metric.name).unwrap_or_else(|| panic!("{metric:?}"));
            assert_eq!(metric.label_values.len(), descriptor.label_keys.len(), "{metric:?}");
            assert!(seen.insert((&metric.name, &metric.label_values)), "twice: {metric:?}");
            assert_eq!(metric.timestamp, 7);
        }
        // Every family is sent by an object that has everything.
        let sent: std::collections::HashSet<&str> =
            out.metrics.iter().map(|m| m.name.as_str()).collect();
        let unsent: Vec<&str> = FAMILIES
            .iter()
            .map(|f| f.name)
            .filter(|name| !sent.contains(name))
            .filter(|name| !matches!(*name, "container_last_seen" | "container_start_time_seconds"))
            .collect();
        assert!(unsent.is_empty(), "never sent: {unsent:?}");

        let find = |name: &str, labels: &[&str]| {
            out.metrics
                .iter()
                .find(|m| m.name == name && m.label_values[3..] == *labels)
                .map(|m| (m.value.unwrap().value, m.metric_type()))
        };
        assert_eq!(
            find("container_cpu_usage_seconds_total", &["total"]),
            Some((3, MetricType::Counter))
        );
        assert_eq!(
            find("container_cpu_cfs_throttled_seconds_total", &[]),
            Some((3, MetricType::Counter))
        );
        assert_eq!(find("container_memory_working_set_bytes", &[]), Some((100, MetricType::Gauge)));
        assert_eq!(find("container_oom_events_total", &[]), Some((1, MetricType::Counter)));
        assert_eq!(
            find("container_fs_writes_bytes_total", &["/dev/vda"]),
            Some((8192, MetricType::Counter))
        );
        assert_eq!(find("container_fs_usage_bytes", &["/dev/vda"]), Some((10, MetricType::Gauge)));
        assert_eq!(find("container_spec_cpu_period", &[]), Some((100_000, MetricType::Gauge)));
        assert_eq!(
            find("container_pressure_cpu_waiting_seconds_total", &[]),
            Some((2, MetricType::Counter))
        );
        assert_eq!(
            find("container_network_receive_bytes_total", &["eth0"]),
            Some((5, MetricType::Counter))
        );
        assert_eq!(
            find("container_memory_failures_total", &["pgmajfault", "hierarchy"]),
            Some((1, MetricType::Counter))
        );
        assert_eq!(
            find("container_blkio_device_usage_total", &["/dev/vda", "254", "0", "Write"]),
            Some((8192, MetricType::Counter))
        );
        assert_eq!(find("container_threads", &[]), Some((3, MetricType::Gauge)));
        assert_eq!(find("container_sockets", &[]), Some((1, MetricType::Gauge)));
        assert_eq!(find("container_file_descriptors", &[]), Some((5, MetricType::Gauge)));
        assert_eq!(find("container_memory_kernel_usage", &[]), Some((16, MetricType::Gauge)));
        let first = &out.metrics[0];
        assert_eq!(first.label_values[..3], ["c1", "web_pod_ns_uid_0", "busybox"]);

        // No pids limit is sent as zero, which means none.
        let mut unlimited = full_cgroup();
        if let Some(detail) = unlimited.detail.as_mut() {
            detail.pids_limit = None;
        }
        let mut out = Emitter::new(["c1".into(), "p".into(), "i".into()], 7);
        cgroup_metrics(&mut out, &unlimited);
        let max = out.metrics.iter().find(|m| m.name == "container_threads_max");
        assert_eq!(max.and_then(|m| m.value).map(|v| v.value), Some(0));
    }

    #[test]
    fn descriptors_start_with_the_base_labels() {
        for d in descriptors() {
            assert_eq!(d.label_keys[..3], BASE_LABELS, "{}", d.name);
            assert!(d.name.starts_with("container_") && !d.help.is_empty(), "{}", d.name);
        }
    }
}
