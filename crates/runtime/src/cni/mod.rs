//! Pod networking through CNI: finding the network configuration ([`load_default_network`]),
//! and running its plugins for a pod sandbox ([`Cni`]) as the CNI spec 1.0 says and libcni and
//! containerd's CRI plugin do it.
//!
//! Every successful ADD is cached under the cache directory, with the configuration it used, so
//! that DEL and CHECK run the same plugins with the same arguments even after the
//! configuration directory changed. Callers serialize operations on one sandbox.

mod config;
mod exec;
pub mod result;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

pub use config::{
    check_plugins, find_plugin, load_default_network, NetworkConfigList, NetworkLookup,
};
pub use result::CniResult;

use crate::error::{Error, Result};
use exec::{Command, Invocation};

/// How long one plugin call may take before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The pod annotations kubelet's bandwidth shaping reads.
pub const INGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// What ADD needs to know about the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodNetworkRequest {
    /// The pod sandbox id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The network namespace (`CNI_NETNS`), a bind-mounted netns file.
    pub netns: PathBuf,
    /// The interface to create in it (`CNI_IFNAME`), normally `eth0`.
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// The `portMappings` capability; those without a host port are left out, as containerd does.
    pub port_mappings: Vec<PortMapping>,
    /// The `bandwidth` capability; see [`Bandwidth::from_annotations`].
    pub bandwidth: Option<Bandwidth>,
    /// The node's pod CIDR from UpdateRuntimeConfig, given as the `ipRanges` capability.
    pub pod_cidr: Option<String>,
}

/// One entry of the `portMappings` capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: Protocol,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// The `bandwidth` capability, in bits per second (rates) and bits (bursts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Bandwidth {
    /// The limits of the `kubernetes.io/ingress-bandwidth` and `kubernetes.io/egress-bandwidth`
    /// annotations, as kubelet parses them (quantities such as `10M` or `1Gi`, between 1k and
    /// 1P), with containerd's burst of 2^32-1 bits; `None` when neither is set.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<Option<Bandwidth>> {
        let parse = |key: &str| -> Result<Option<u64>> {
            match annotations.get(key) {
                None => Ok(None),
                Some(text) => parse_bandwidth(text)
                    .map(Some)
                    .map_err(|why| Error::InvalidArgument(format!("{key} {text:?}: {why}"))),
            }
        };
        let ingress = parse(INGRESS_BANDWIDTH_ANNOTATION)?;
        let egress = parse(EGRESS_BANDWIDTH_ANNOTATION)?;
        if ingress.is_none() && egress.is_none() {
            return Ok(None);
        }
        let burst = |rate: Option<u64>| if rate.is_some() { u64::from(u32::MAX) } else { 0 };
        Ok(Some(Bandwidth {
            ingress_rate: ingress.unwrap_or(0),
            ingress_burst: burst(ingress),
            egress_rate: egress.unwrap_or(0),
            egress_burst: burst(egress),
        }))
    }
}

/// A bandwidth quantity in bits per second, within kubelet's bounds.
pub fn parse_bandwidth(text: &str) -> std::result::Result<u64, String> {
    const MIN: i128 = 1_000;
    const MAX: i128 = 1_000_000_000_000_000;
    let value = parse_quantity(text)?;
    if value < MIN {
        Err("resource is unreasonably small (< 1kbit)".to_string())
    } else if value > MAX {
        Err("resource is unreasonably large (> 1Pbit)".to_string())
    } else {
        Ok(value as u64)
    }
}

/// A Kubernetes resource quantity (`<sign><number><suffix>`, the suffix binary SI such as `Ki`,
/// decimal SI such as `k`, `M` or `m`, or an exponent such as `e3`), rounded up to an integer
/// as `Quantity.Value()` does. Values beyond 10^30 are refused as out of range.
fn parse_quantity(text: &str) -> std::result::Result<i128, String> {
    let invalid = || {
        "quantities must match the regular expression \
         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            .to_string()
    };
    let out_of_range = || "quantity out of range".to_string();
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // value = mantissa * 10^scale * 2^binary
    let fraction = fraction.trim_end_matches('0');
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(out_of_range());
    }
    let mantissa: u128 =
        if digits.is_empty() { 0 } else { digits.parse().map_err(|_| invalid())? };
    let mut scale = -(fraction.len() as i32);
    let mut binary = 0;
    match suffix {
        "" => {}
        "n" => scale -= 9,
        "u" => scale -= 6,
        "m" => scale -= 3,
        "k" => scale += 3,
        "M" => scale += 6,
        "G" => scale += 9,
        "T" => scale += 12,
        "P" => scale += 15,
        "E" => scale += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E']).ok_or_else(invalid)?;
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let exponent: i32 = exponent.parse().map_err(|_| out_of_range())?;
            scale = scale.checked_add(exponent).ok_or_else(out_of_range)?;
        }
    }
    if mantissa == 0 {
        return Ok(0);
    }
    let numerator = mantissa.checked_mul(1 << binary).ok_or_else(out_of_range)?;
    let value = if scale >= 0 {
        let factor = 10u128.checked_pow(scale.unsigned_abs()).ok_or_else(out_of_range)?;
        numerator.checked_mul(factor).ok_or_else(out_of_range)?
    } else {
        match 10u128.checked_pow(scale.unsigned_abs()) {
            // Rounded up, as Value() does.
            Some(denominator) => numerator.div_ceil(denominator),
            // Beyond 10^38, while the numerator is below that: less than 1, so 1.
            None => 1,
        }
    };
    if value > 10u128.pow(30) {
        return Err(out_of_range());
    }
    // Fits: at most 10^30.
    let value = value as i128;
    Ok(if negative { -value } else { value })
}

/// The outcome of ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetworkResult {
    /// The pod's addresses on its interface, the primary (first IPv4, else IPv6) first.
    pub ips: Vec<IpAddr>,
    /// The result of the last plugin, in the list's CNI version.
    pub raw: Value,
}

/// The format of the cache files.
const CACHE_KIND: &str = "berthCniCacheV1";

/// What a successful ADD leaves in `<cache_dir>/<container_id>.json` for DEL and CHECK.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    kind: String,
    container_id: String,
    if_name: String,
    network_name: String,
    /// Where the configuration was read from, for messages.
    source: PathBuf,
    /// The configuration list, as [`NetworkConfigList::bytes`].
    config: String,
    cni_args: Vec<(String, String)>,
    capability_args: Map<String, Value>,
    result: Value,
}

/// Runs CNI plugins for pod sandboxes.
#[derive(Debug, Clone)]
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
}

impl Cni {
    /// `cache_dir` is berth's own (`<root>/cni-cache`); it is created when first needed.
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Cni { conf_dir, bin_dirs, cache_dir, timeout: PLUGIN_TIMEOUT }
    }

    /// Replaces [`PLUGIN_TIMEOUT`] as the limit of each plugin call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    pub fn bin_dirs(&self) -> &[PathBuf] {
        &self.bin_dirs
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Sets up the pod's network: every plugin of the default network in order, each given the
    /// result of the one before. If one fails, or the result cannot be cached, the whole list
    /// is deleted again (best effort) and the error returned.
    pub async fn add(&self, req: &PodNetworkRequest) -> Result<PodNetworkResult> {
        let cache_path = self.cache_path(&req.container_id)?;
        if req.ifname.is_empty() {
            return Err(Error::InvalidArgument("empty interface name".to_string()));
        }
        let netns = req.netns.to_str().filter(|p| !p.is_empty()).ok_or_else(|| {
            Error::InvalidArgument(format!("network namespace path {:?}", req.netns))
        })?;
        let args = cni_args(req)?;
        let capability_args = capability_args(req)?;
        let net = match load_default_network(&self.conf_dir)? {
            NetworkLookup::Found(net) => net,
            NetworkLookup::Missing { reason } => return Err(Error::NetworkNotReady(reason)),
        };
        check_plugins(&net, &self.bin_dirs).map_err(Error::NetworkNotReady)?;
        let inv = Invocation {
            command: Command::Add,
            container_id: &req.container_id,
            netns,
            ifname: &req.ifname,
            args: &args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        };
        tracing::info!(
            container_id = %req.container_id,
            network = %net.name,
            config = %net.source.display(),
            "CNI ADD"
        );
        let outcome = async {
            let result = add_list(&inv, &net, &capability_args).await?;
            let parsed = CniResult::parse(&result)
                .map_err(|why| Error::Cni(format!("result of network {:?}: {why}", net.name)))?;
            let entry = CacheEntry {
                kind: CACHE_KIND.to_string(),
                container_id: req.container_id.clone(),
                if_name: req.ifname.clone(),
                network_name: net.name.clone(),
                source: net.source.clone(),
                config: String::from_utf8_lossy(&net.bytes).into_owned(),
                cni_args: args.clone(),
                capability_args: capability_args.clone(),
                result: result.clone(),
            };
            write_cache(&self.cache_dir, &cache_path, &entry).await?;
            Ok(PodNetworkResult { ips: parsed.pod_ips(&req.ifname), raw: result })
        }
        .await;
        if let Err(err) = &outcome {
            tracing::warn!(
                container_id = %req.container_id,
                "CNI ADD failed, deleting the network again: {err}"
            );
            let inv = Invocation { command: Command::Del, ..inv };
            if let Err(del_err) = del_list(&inv, &net, &capability_args, None).await {
                tracing::warn!(
                    container_id = %req.container_id,
                    "CNI DEL after failed ADD: {del_err}"
                );
            }
        }
        outcome
    }

    /// Tears the pod's network down: every plugin in reverse order, with the configuration and
    /// result cached by ADD, or the current configuration (and no result) if there is no cache.
    /// A missing `netns` is fine. Without cache or configuration there is nothing to run, and
    /// that is success too, so DEL may be repeated. The cache is removed when every plugin
    /// succeeded; otherwise the first error is returned (after running the others).
    pub async fn del(&self, container_id: &str, netns: Option<&Path>, ifname: &str) -> Result<()> {
        let cache_path = self.cache_path(container_id)?;
        // A cache that cannot be used must not keep the pod from being deleted: the current
        // configuration is the next best thing, as without any cache.
        let cached = match read_cache(&cache_path).await {
            Ok(entry) => entry.and_then(|entry| {
                match config::parse_list(entry.config.clone().into_bytes(), &entry.source) {
                    Ok(net) => Some((net, entry)),
                    Err(why) => {
                        tracing::warn!("cached configuration {}: {why}", cache_path.display());
                        None
                    }
                }
            }),
            Err(err) => {
                tracing::warn!(container_id, "{err}");
                None
            }
        };
        let (net, args, capability_args, prev_result) = match cached {
            Some((net, entry)) => (net, entry.cni_args, entry.capability_args, Some(entry.result)),
            None => match load_default_network(&self.conf_dir)? {
                NetworkLookup::Found(net) => {
                    let args = vec![
                        ("IgnoreUnknown".to_string(), "1".to_string()),
                        ("K8S_POD_INFRA_CONTAINER_ID".to_string(), container_id.to_string()),
                    ];
                    (net, args, Map::new(), None)
                }
                NetworkLookup::Missing { reason } => {
                    tracing::info!(container_id, "CNI DEL: nothing cached and {reason}");
                    return Ok(());
                }
            },
        };
        let netns = netns_for_del(netns);
        let inv = Invocation {
            command: Command::Del,
            container_id,
            netns: &netns,
            ifname,
            args: &args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        };
        tracing::info!(
            container_id,
            network = %net.name,
            cached = prev_result.is_some(),
            "CNI DEL"
        );
        del_list(&inv, &net, &capability_args, prev_result.as_ref()).await?;
        match tokio::fs::remove_file(&cache_path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", &cache_path)(e)),
        }
    }

    /// Checks the pod's network is as ADD left it: every plugin in order with the cached
    /// configuration and result. Needs CNI 0.4.0 or later, and a cached ADD.
    pub async fn check(&self, container_id: &str, netns: &Path, ifname: &str) -> Result<()> {
        let cache_path = self.cache_path(container_id)?;
        let Some(entry) = read_cache(&cache_path).await? else {
            return Err(Error::Cni(format!("no cached network for {container_id} to CHECK")));
        };
        let net = config::parse_list(entry.config.into_bytes(), &entry.source).map_err(|why| {
            Error::Cni(format!("cached configuration {}: {why}", cache_path.display()))
        })?;
        match result::parse_version(&net.cni_version) {
            Some(version) if version >= (0, 4, 0) => {}
            _ => {
                return Err(Error::Cni(format!(
                    "network {:?} has CNI version {:?}, CHECK needs 0.4.0 or later",
                    net.name, net.cni_version
                )))
            }
        }
        let list: Value = serde_json::from_slice(&net.bytes).unwrap_or_default();
        if list.get("disableCheck").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let netns = netns
            .to_str()
            .ok_or_else(|| Error::InvalidArgument(format!("network namespace path {netns:?}")))?;
        let inv = Invocation {
            command: Command::Check,
            container_id,
            netns,
            ifname,
            args: &entry.cni_args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        };
        for plugin in &net.plugins {
            let stdin =
                exec::plugin_stdin(&net, plugin, Some(&entry.result), &entry.capability_args)?;
            exec::run_plugin(&inv, plugin, stdin).await?;
        }
        Ok(())
    }

    /// The cache file of a sandbox; the id becomes a file name, so it must be a plain one.
    fn cache_path(&self, container_id: &str) -> Result<PathBuf> {
        let plain = !container_id.is_empty()
            && container_id.len() <= 200
            && !container_id.starts_with('.')
            && !container_id.contains(['/', '\0']);
        if !plain {
            return Err(Error::InvalidArgument(format!("container id {container_id:?}")));
        }
        Ok(self.cache_dir.join(format!("{container_id}.json")))
    }
}

/// ADD for each plugin in order, each one's result (in the list's version) the next one's
/// `prevResult`; the last result.
async fn add_list(
    inv: &Invocation<'_>,
    net: &NetworkConfigList,
    capability_args: &Map<String, Value>,
) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for plugin in &net.plugins {
        let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
        let stdin = exec::plugin_stdin(net, plugin, prev.as_ref(), capability_args)?;
        let stdout = exec::run_plugin(inv, plugin, stdin).await?;
        let mut result: Value = serde_json::from_slice(&stdout).map_err(|e| {
            Error::Cni(format!(
                "plugin {plugin_type} printed no valid result on ADD: {e}: {:?}",
                String::from_utf8_lossy(&stdout[..stdout.len().min(1024)])
            ))
        })?;
        result::convert(&mut result, &net.cni_version)
            .map_err(|why| Error::Cni(format!("result of plugin {plugin_type}: {why}")))?;
        prev = Some(result);
    }
    prev.ok_or_else(|| Error::Cni(format!("network {:?} has no plugins", net.name)))
}

/// DEL for each plugin in reverse order, all with the same `prevResult`. Every plugin is run;
/// the first error is returned.
async fn del_list(
    inv: &Invocation<'_>,
    net: &NetworkConfigList,
    capability_args: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Result<()> {
    let mut first_error = None;
    for plugin in net.plugins.iter().rev() {
        let outcome = match exec::plugin_stdin(net, plugin, prev_result, capability_args) {
            Ok(stdin) => exec::run_plugin(inv, plugin, stdin).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(err) = outcome {
            tracing::warn!(container_id = inv.container_id, "{err}");
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `CNI_ARGS` for a pod, as containerd sets them.
fn cni_args(req: &PodNetworkRequest) -> Result<Vec<(String, String)>> {
    let args = [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", req.pod_namespace.as_str()),
        ("K8S_POD_NAME", req.pod_name.as_str()),
        ("K8S_POD_INFRA_CONTAINER_ID", req.container_id.as_str()),
        ("K8S_POD_UID", req.pod_uid.as_str()),
    ];
    args.iter()
        .map(|(k, v)| {
            if v.contains([';', '\0']) {
                Err(Error::InvalidArgument(format!("{k} {v:?} cannot be passed in CNI_ARGS")))
            } else {
                Ok((k.to_string(), v.to_string()))
            }
        })
        .collect()
}

/// The capability arguments of a pod; plugins get those they declare.
fn capability_args(req: &PodNetworkRequest) -> Result<Map<String, Value>> {
    let mut args = Map::new();
    let ports: Vec<&PortMapping> = req.port_mappings.iter().filter(|p| p.host_port > 0).collect();
    if !ports.is_empty() {
        args.insert("portMappings".to_string(), to_json(&ports)?);
    }
    if let Some(bandwidth) = &req.bandwidth {
        args.insert("bandwidth".to_string(), to_json(bandwidth)?);
    }
    if let Some(cidr) = req.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
        args.insert("ipRanges".to_string(), serde_json::json!([[{"subnet": cidr}]]));
    }
    Ok(args)
}

fn to_json<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Cni(format!("serializing: {e}")))
}

/// `CNI_NETNS` for DEL: the path if it still is a network namespace, else empty, which tells
/// plugins to clean up what lives outside of it only.
fn netns_for_del(netns: Option<&Path>) -> String {
    let Some(path) = netns else { return String::new() };
    match nix::sys::statfs::statfs(path) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {
            path.to_str().unwrap_or_default().to_string()
        }
        Ok(_) => {
            tracing::debug!("{} is no longer a network namespace", path.display());
            String::new()
        }
        Err(e) => {
            tracing::debug!("network namespace {}: {e}", path.display());
            String::new()
        }
    }
}

async fn read_cache(path: &Path) -> Result<Option<CacheEntry>> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", path)(e)),
    };
    match serde_json::from_slice::<CacheEntry>(&bytes) {
        Ok(entry) if entry.kind == CACHE_KIND => Ok(Some(entry)),
        Ok(entry) => Err(Error::Cni(format!(
            "CNI cache {} is of unknown kind {:?}",
            path.display(),
            entry.kind
        ))),
        Err(e) => Err(Error::Cni(format!("CNI cache {}: {e}", path.display()))),
    }
}

/// Writes the cache file atomically: a temporary file, fsync, rename, fsync of the directory.
async fn write_cache(dir: &Path, path: &Path, entry: &CacheEntry) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(entry)
        .map_err(|e| Error::Cni(format!("serializing the CNI cache: {e}")))?;
    tokio::fs::create_dir_all(dir).await.map_err(Error::io("creating", dir))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let write = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(&bytes).await?;
        file.sync_all().await
    };
    if let Err(e) = write.await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(Error::io("writing", &tmp)(e));
    }
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(Error::io("renaming to", path)(e));
    }
    let dir_file = tokio::fs::File::open(dir).await.map_err(Error::io("opening", dir))?;
    dir_file.sync_all().await.map_err(Error::io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// A configuration directory, plugin directory and cache of their own, with fake plugins
    /// that log each call (`<type> <command>` in `log/calls`, stdin and `CNI_*` environment
    /// in `log/<n>.stdin` and `log/<n>.env`).
    struct Harness {
        tmp: tempfile::TempDir,
        cni: Cni,
    }

    impl Harness {
        fn new() -> Harness {
            let tmp = tempfile::tempdir().unwrap();
            for dir in ["net.d", "bin", "log"] {
                fs::create_dir(tmp.path().join(dir)).unwrap();
            }
            fs::write(tmp.path().join("log/calls"), "").unwrap();
            let cni = Cni::new(
                tmp.path().join("net.d"),
                vec![tmp.path().join("absent-bin"), tmp.path().join("bin")],
                tmp.path().join("cache"),
            );
            Harness { tmp, cni }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }

        fn conflist(&self, list: &Value) -> String {
            let text = serde_json::to_string_pretty(list).unwrap();
            fs::write(self.path("net.d/10-test.conflist"), &text).unwrap();
            text
        }

        /// A plugin that logs its call, then runs `body`.
        fn plugin(&self, name: &str, body: &str) {
            let log = self.path("log");
            let log = log.display();
            let script = format!(
                "#!/bin/sh\n\
                 n=$(( $(wc -l < {log}/calls) + 1 ))\n\
                 echo \"{name} $CNI_COMMAND\" >> {log}/calls\n\
                 cat > {log}/$n.stdin\n\
                 env | grep '^CNI_' > {log}/$n.env\n\
                 {body}\n"
            );
            let path = self.path("bin").join(name);
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }

        /// A plugin printing `result` on ADD and nothing otherwise.
        fn plugin_with_result(&self, name: &str, result: &Value) {
            self.plugin(name, &format!("[ \"$CNI_COMMAND\" = ADD ] && echo '{result}'\nexit 0"));
        }

        fn calls(&self) -> Vec<String> {
            let calls = fs::read_to_string(self.path("log/calls")).unwrap();
            calls.lines().map(str::to_string).collect()
        }

        /// The stdin of call `n` (from 1).
        fn stdin(&self, n: usize) -> Value {
            serde_json::from_slice(&fs::read(self.path(&format!("log/{n}.stdin"))).unwrap())
                .unwrap()
        }

        fn env(&self, n: usize) -> HashMap<String, String> {
            let env = fs::read_to_string(self.path(&format!("log/{n}.env"))).unwrap();
            env.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }

        fn cache_file(&self, id: &str) -> PathBuf {
            self.path("cache").join(format!("{id}.json"))
        }
    }

    fn result_a() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/fake"}],
            "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
        })
    }

    fn result_b() -> Value {
        let mut result = result_a();
        result["dns"] = json!({"nameservers": ["10.1.0.53"]});
        result
    }

    /// A 0.4.0 result, which a 1.0.0 list gets converted.
    fn result_c() -> Value {
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/fake"}],
            "ips": [
                {"version": "4", "address": "10.1.0.1/24", "interface": 0},
                {"version": "6", "address": "fd00::7/64", "interface": 1},
                {"version": "4", "address": "10.1.0.7/24", "interface": 1},
            ],
        })
    }

    fn three_plugins() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "test-net",
            "plugins": [
                {"type": "fake-a", "foo": "bar",
                 "capabilities": {"portMappings": true, "ipRanges": true}},
                {"type": "fake-b", "capabilities": {"bandwidth": true, "portMappings": false}},
                {"type": "fake-c"},
            ],
        })
    }

    fn request() -> PodNetworkRequest {
        PodNetworkRequest {
            container_id: "sandbox1".to_string(),
            netns: PathBuf::from("/run/netns/fake"),
            ifname: "eth0".to_string(),
            pod_namespace: "default".to_string(),
            pod_name: "web".to_string(),
            pod_uid: "uid-1".to_string(),
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: "127.0.0.1".to_string(),
                },
                // No host port: not a mapping for the portmap plugin.
                PortMapping {
                    host_port: 0,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_ip: String::new(),
                },
                PortMapping {
                    host_port: 9000,
                    container_port: 9000,
                    protocol: Protocol::Sctp,
                    host_ip: String::new(),
                },
            ],
            bandwidth: Some(Bandwidth {
                ingress_rate: 1_000_000,
                ingress_burst: u64::from(u32::MAX),
                egress_rate: 0,
                egress_burst: 0,
            }),
            pod_cidr: Some("10.1.0.0/24".to_string()),
        }
    }

    const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
                        K8S_POD_INFRA_CONTAINER_ID=sandbox1;K8S_POD_UID=uid-1";

    fn port_mappings_json() -> Value {
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
            {"hostPort": 9000, "containerPort": 9000, "protocol": "sctp"},
        ])
    }

    #[tokio::test]
    async fn add_runs_the_list_in_order() {
        let h = Harness::new();
        let list_text = h.conflist(&three_plugins());
        h.plugin_with_result("fake-a", &result_a());
        h.plugin_with_result("fake-b", &result_b());
        h.plugin_with_result("fake-c", &result_c());

        let result = h.cni.add(&request()).await.unwrap();
        assert_eq!(h.calls(), ["fake-a ADD", "fake-b ADD", "fake-c ADD"]);

        // The environment.
        let env = h.env(1);
        let want_path = format!("{}:{}", h.path("absent-bin").display(), h.path("bin").display());
        let want: HashMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "sandbox1"),
            ("CNI_NETNS", "/run/netns/fake"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", ARGS),
            ("CNI_PATH", &want_path),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        assert_eq!(h.env(3), want);

        // Stdin: the plugin's object with the list's name and version, the previous result,
        // and only the capabilities the plugin declares.
        assert_eq!(
            h.stdin(1),
            json!({
                "type": "fake-a", "foo": "bar", "name": "test-net", "cniVersion": "1.0.0",
                "capabilities": {"portMappings": true, "ipRanges": true},
                "runtimeConfig": {
                    "portMappings": port_mappings_json(),
                    "ipRanges": [[{"subnet": "10.1.0.0/24"}]],
                },
            })
        );
        assert_eq!(
            h.stdin(2),
            json!({
                "type": "fake-b", "name": "test-net", "cniVersion": "1.0.0",
                "capabilities": {"bandwidth": true, "portMappings": false},
                "prevResult": result_a(),
                "runtimeConfig": {
                    "bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 4_294_967_295u64},
                },
            })
        );
        assert_eq!(
            h.stdin(3),
            json!({
                "type": "fake-c", "name": "test-net", "cniVersion": "1.0.0",
                "prevResult": result_b(),
            })
        );

        // The last result, in the list's version; IPv4 of eth0 first.
        let mut want_raw = result_c();
        result::convert(&mut want_raw, "1.0.0").unwrap();
        assert_eq!(want_raw["cniVersion"], "1.0.0");
        assert!(want_raw["ips"][0].get("version").is_none());
        assert_eq!(result.raw, want_raw);
        let ips: Vec<String> = result.ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.1.0.7", "fd00::7"]);

        // The cache, written atomically.
        let cache: Value =
            serde_json::from_slice(&fs::read(h.cache_file("sandbox1")).unwrap()).unwrap();
        assert_eq!(cache["kind"], CACHE_KIND);
        assert_eq!(cache["containerId"], "sandbox1");
        assert_eq!(cache["ifName"], "eth0");
        assert_eq!(cache["networkName"], "test-net");
        assert_eq!(cache["config"], list_text);
        assert_eq!(cache["result"], want_raw);
        assert_eq!(cache["capabilityArgs"]["portMappings"], port_mappings_json());
        assert_eq!(cache["cniArgs"][1], json!(["K8S_POD_NAMESPACE", "default"]));
        let files: Vec<_> = fs::read_dir(h.path("cache")).unwrap().collect();
        assert_eq!(files.len(), 1);
    }

    #[tokio::test]
    async fn add_failure_is_rolled_back_in_reverse_order() {
        let h = Harness::new();
        h.conflist(&three_plugins());
        h.plugin_with_result("fake-a", &result_a());
        // Fails on every command, DEL of the rollback too.
        h.plugin(
            "fake-b",
            &format!(
                "echo '{}'; exit 1",
                json!({
                    "cniVersion": "1.0.0", "code": 11, "msg": "no IP addresses available",
                    "details": "range 10.1.0.0/24 is full",
                })
            ),
        );
        h.plugin_with_result("fake-c", &result_c());

        let err = h.cni.add(&request()).await.unwrap_err();
        match &err {
            Error::CniPlugin { plugin, command, code, msg, details } => {
                assert_eq!(plugin, "fake-b");
                assert_eq!(*command, "ADD");
                assert_eq!(*code, Some(11));
                assert_eq!(msg, "no IP addresses available");
                assert_eq!(details, "range 10.1.0.0/24 is full");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.kind(), crate::ErrorKind::Unavailable);
        assert_eq!(
            err.to_string(),
            "CNI plugin fake-b failed on ADD: no IP addresses available: \
             range 10.1.0.0/24 is full (CNI error code 11)"
        );
        assert_eq!(
            h.calls(),
            ["fake-a ADD", "fake-b ADD", "fake-c DEL", "fake-b DEL", "fake-a DEL"]
        );
        // The rollback has the ADD's arguments, and no result.
        let del = h.stdin(5);
        assert!(del.get("prevResult").is_none(), "{del}");
        assert_eq!(del["runtimeConfig"]["portMappings"], port_mappings_json());
        assert_eq!(h.env(5)["CNI_COMMAND"], "DEL");
        assert_eq!(h.env(5)["CNI_ARGS"], ARGS);
        assert_eq!(h.env(5)["CNI_NETNS"], "/run/netns/fake");
        assert!(!h.cache_file("sandbox1").exists());
    }

    #[tokio::test]
    async fn add_with_an_unusable_result_is_rolled_back() {
        let h = Harness::new();
        h.conflist(&json!({
            "cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
        }));
        h.plugin_with_result("a", &result_a());
        h.plugin("b", "[ \"$CNI_COMMAND\" = ADD ] && echo 'not json'\nexit 0");
        let err = h.cni.add(&request()).await.unwrap_err();
        assert!(err.to_string().contains("plugin b printed no valid result"), "{err}");
        assert_eq!(h.calls(), ["a ADD", "b ADD", "b DEL", "a DEL"]);

        h.plugin_with_result("b", &json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/8"}}));
        let err = h.cni.add(&request()).await.unwrap_err();
        assert!(err.to_string().contains("unsupported result version"), "{err}");
        assert!(!h.cache_file("sandbox1").exists());
    }

    #[tokio::test]
    async fn del_uses_the_cache_after_the_config_changed() {
        let h = Harness::new();
        h.conflist(&three_plugins());
        for (name, result) in [("fake-a", result_a()), ("fake-b", result_b()), ("x", result_a())] {
            h.plugin_with_result(name, &result);
        }
        h.plugin_with_result("fake-c", &result_c());
        let added = h.cni.add(&request()).await.unwrap();

        // Another network replaces the one the pod was added to.
        fs::remove_file(h.path("net.d/10-test.conflist")).unwrap();
        fs::write(
            h.path("net.d/20-other.conflist"),
            json!({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "x"}]}).to_string(),
        )
        .unwrap();

        let gone = h.path("no-such-netns");
        h.cni.del("sandbox1", Some(&gone), "eth0").await.unwrap();
        assert_eq!(h.calls()[3..], ["fake-c DEL", "fake-b DEL", "fake-a DEL"]);
        for n in 4..=6 {
            let env = h.env(n);
            assert_eq!(env["CNI_COMMAND"], "DEL");
            assert_eq!(env["CNI_ARGS"], ARGS);
            // A netns that is gone is passed as none.
            assert_eq!(env["CNI_NETNS"], "");
            assert_eq!(h.stdin(n)["prevResult"], added.raw);
            assert_eq!(h.stdin(n)["name"], "test-net");
        }
        assert_eq!(h.stdin(6)["runtimeConfig"]["ipRanges"], json!([[{"subnet": "10.1.0.0/24"}]]));
        assert!(!h.cache_file("sandbox1").exists());

        // Again: nothing cached, so the current network, without a result.
        let own_netns = Path::new("/proc/self/ns/net");
        h.cni.del("sandbox1", Some(own_netns), "eth0").await.unwrap();
        assert_eq!(h.calls()[6..], ["x DEL"]);
        assert!(h.stdin(7).get("prevResult").is_none());
        assert_eq!(h.stdin(7)["name"], "other");
        let env = h.env(7);
        assert_eq!(env["CNI_ARGS"], "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=sandbox1");
        assert_eq!(env["CNI_NETNS"], "/proc/self/ns/net");

        // A broken cache is as good as none.
        fs::write(h.cache_file("sandbox1"), "{ truncated").unwrap();
        h.cni.del("sandbox1", None, "eth0").await.unwrap();
        assert_eq!(h.calls()[7..], ["x DEL"]);
        assert!(!h.cache_file("sandbox1").exists());

        // And with no network at all: nothing to do.
        fs::remove_dir_all(h.path("net.d")).unwrap();
        h.cni.del("sandbox1", None, "eth0").await.unwrap();
        assert_eq!(h.calls().len(), 8);
    }

    #[tokio::test]
    async fn failed_del_keeps_the_cache() {
        let h = Harness::new();
        h.conflist(&json!({
            "cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
        }));
        h.plugin(
            "a",
            &format!(
                "[ \"$CNI_COMMAND\" = ADD ] && echo '{}' && exit 0\n\
                 echo 'plugin a cannot delete' >&2; exit 1",
                result_a()
            ),
        );
        h.plugin_with_result("b", &result_b());
        h.cni.add(&request()).await.unwrap();

        let err = h.cni.del("sandbox1", None, "eth0").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "CNI plugin a failed on DEL: exit status: 1, stderr \"plugin a cannot delete\""
        );
        assert_eq!(h.calls()[2..], ["b DEL", "a DEL"]);
        assert!(h.cache_file("sandbox1").exists());

        h.plugin_with_result("a", &result_a());
        h.cni.del("sandbox1", None, "eth0").await.unwrap();
        assert_eq!(h.calls()[4..], ["b DEL", "a DEL"]);
        assert_eq!(h.stdin(6)["prevResult"], result_b());
        assert!(!h.cache_file("sandbox1").exists());
    }

    #[tokio::test]
    async fn check_uses_the_cache() {
        let h = Harness::new();
        let mut list = json!({
            "cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
        });
        h.conflist(&list);
        h.plugin_with_result("a", &result_a());
        h.plugin_with_result("b", &result_b());
        let netns = Path::new("/run/netns/fake");

        let err = h.cni.check("sandbox1", netns, "eth0").await.unwrap_err();
        assert!(err.to_string().contains("no cached network"), "{err}");

        h.cni.add(&request()).await.unwrap();
        h.cni.check("sandbox1", netns, "eth0").await.unwrap();
        assert_eq!(h.calls()[2..], ["a CHECK", "b CHECK"]);
        assert_eq!(h.stdin(3)["prevResult"], result_b());
        assert_eq!(h.stdin(4)["prevResult"], result_b());
        assert_eq!(h.env(4)["CNI_ARGS"], ARGS);
        assert_eq!(h.env(4)["CNI_NETNS"], "/run/netns/fake");
        h.cni.del("sandbox1", None, "eth0").await.unwrap();

        list["disableCheck"] = json!(true);
        h.conflist(&list);
        h.cni.add(&request()).await.unwrap();
        let calls = h.calls().len();
        h.cni.check("sandbox1", netns, "eth0").await.unwrap();
        assert_eq!(h.calls().len(), calls);
        h.cni.del("sandbox1", None, "eth0").await.unwrap();

        list["cniVersion"] = json!("0.3.1");
        list.as_object_mut().unwrap().remove("disableCheck");
        h.conflist(&list);
        h.cni.add(&request()).await.unwrap();
        let err = h.cni.check("sandbox1", netns, "eth0").await.unwrap_err();
        assert!(err.to_string().contains("CHECK needs 0.4.0 or later"), "{err}");
    }

    #[tokio::test]
    async fn results_are_converted_to_the_list_version() {
        let h = Harness::new();
        h.conflist(&json!({
            "cniVersion": "0.4.0", "name": "n", "plugins": [{"type": "a"}, {"type": "b"}],
        }));
        h.plugin_with_result("a", &result_a());
        h.plugin_with_result("b", &result_c());
        let result = h.cni.add(&request()).await.unwrap();
        let prev = &h.stdin(2)["prevResult"];
        assert_eq!(prev["cniVersion"], "0.4.0");
        assert_eq!(prev["ips"][0]["version"], "4");
        assert_eq!(h.stdin(2)["cniVersion"], "0.4.0");
        assert_eq!(result.raw, result_c());
        assert_eq!(result.ips, ["10.1.0.7".parse::<IpAddr>().unwrap(), "fd00::7".parse().unwrap()]);
    }

    #[tokio::test]
    async fn not_ready_and_invalid_requests() {
        let h = Harness::new();
        let err = h.cni.add(&request()).await.unwrap_err();
        assert!(matches!(err, Error::NetworkNotReady(_)), "{err:?}");
        assert_eq!(err.kind(), crate::ErrorKind::FailedPrecondition);
        assert!(err.to_string().contains(&h.path("net.d").display().to_string()), "{err}");

        h.conflist(&three_plugins());
        h.plugin_with_result("fake-a", &result_a());
        let err = h.cni.add(&request()).await.unwrap_err();
        assert!(matches!(err, Error::NetworkNotReady(_)), "{err:?}");
        assert!(err.to_string().ends_with("fake-b, fake-c"), "{err}");
        assert!(h.calls().is_empty());

        for id in ["", "../x", "a/b", ".hidden"] {
            let req = PodNetworkRequest { container_id: id.to_string(), ..request() };
            let err = h.cni.add(&req).await.unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{id}: {err}");
            let err = h.cni.del(id, None, "eth0").await.unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{id}: {err}");
        }
        let req = PodNetworkRequest { pod_name: "a;b".to_string(), ..request() };
        let err = h.cni.add(&req).await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{err}");
        assert!(h.calls().is_empty());
    }

    #[test]
    fn quantities() {
        let cases: [(&str, i128); 20] = [
            ("0", 0),
            ("1", 1),
            ("1k", 1_000),
            ("10M", 10_000_000),
            ("1.5M", 1_500_000),
            ("1Gi", 1 << 30),
            ("0.5Ki", 512),
            ("100m", 1),
            ("1500m", 2),
            ("1n", 1),
            ("1e3", 1_000),
            ("1E3", 1_000),
            ("1E", 1_000_000_000_000_000_000),
            ("12e-1", 2),
            ("+2k", 2_000),
            ("-2k", -2_000),
            (".5k", 500),
            ("5.k", 5_000),
            ("1Ei", 1 << 60),
            ("0.000001P", 1_000_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text), Ok(want), "{text}");
        }
        for text in ["", "k", "1K", "1 k", "1.2.3", ".", "1e", "1kk", "1Mi3", "abc", "1e+"] {
            assert!(parse_quantity(text).is_err(), "{text}");
        }
        assert_eq!(parse_quantity("1e40"), Err("quantity out of range".to_string()));

        assert_eq!(parse_bandwidth("10M"), Ok(10_000_000));
        assert_eq!(parse_bandwidth("1P"), Ok(1_000_000_000_000_000));
        assert!(parse_bandwidth("999").unwrap_err().contains("unreasonably small"));
        assert!(parse_bandwidth("-1M").unwrap_err().contains("unreasonably small"));
        assert!(parse_bandwidth("2P").unwrap_err().contains("unreasonably large"));
    }

    #[test]
    fn bandwidth_annotations() {
        let annotations = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(Bandwidth::from_annotations(&annotations(&[("a", "b")])).unwrap(), None);
        let bandwidth = Bandwidth::from_annotations(&annotations(&[
            (INGRESS_BANDWIDTH_ANNOTATION, "10M"),
            ("other", "x"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            bandwidth,
            Bandwidth {
                ingress_rate: 10_000_000,
                ingress_burst: 4_294_967_295,
                egress_rate: 0,
                egress_burst: 0
            }
        );
        assert_eq!(
            serde_json::to_value(bandwidth).unwrap(),
            json!({"ingressRate": 10_000_000, "ingressBurst": 4_294_967_295u64})
        );
        let bandwidth =
            Bandwidth::from_annotations(&annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "1Gi")]))
                .unwrap()
                .unwrap();
        assert_eq!((bandwidth.egress_rate, bandwidth.ingress_rate), (1 << 30, 0));
        let err = Bandwidth::from_annotations(&annotations(&[(EGRESS_BANDWIDTH_ANNOTATION, "1")]))
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("kubernetes.io/egress-bandwidth \"1\""), "{err}");
    }
}
