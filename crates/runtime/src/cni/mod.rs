//! Pod networking through CNI: finding the network configuration ([`load_default_network`]),
//! and running its plugins for a pod sandbox ([`Cni`]) as the CNI spec 1.0 says and libcni and
//! containerd's CRI plugin do it.
//!
//! Every successful ADD is cached under the cache directory, with the configuration it used, so
//! that DEL and CHECK run the same plugins with the same arguments even after the
//! configuration directory changed. Callers serialize operations on one sandbox.
//!
//! Here: ADD, DEL and CHECK and their cache; in `request` what a pod asks and gets; in `config`,
//! `exec` and `result` the configuration, the plugin runs and the results.

mod config;
mod exec;
mod request;
pub mod result;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

pub use config::{
    check_plugins, find_plugin, load_default_network, NetworkConfigList, NetworkLookup,
};
pub use request::{
    parse_bandwidth, Bandwidth, PodNetworkRequest, PodNetworkResult, PortMapping, Protocol,
};
pub use result::CniResult;

use crate::error::{Error, Result};
use exec::{Command, Invocation};

/// How long one plugin call may take before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The pod annotations kubelet's bandwidth shaping reads.
pub const INGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

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
mod tests;
