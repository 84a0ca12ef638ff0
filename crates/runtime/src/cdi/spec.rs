//! CDI spec files: their format (JSON or YAML, spec versions 0.3.0 to 1.1.0) and the checks a
//! file must pass before any of its devices can be used.
//!
//! The only Rust implementation of CDI on crates.io (`container-device-interface`) pulls an HTTP
//! client and a JSON-schema engine into berthd for what is a few structs, and panics on input it
//! does not expect; these types follow the CDI specification (`specs-go/config.go` upstream)
//! field for field instead.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The newest spec version berth knows every field of; a file asking for a newer one may use
/// fields berth would drop, so it is refused rather than half applied.
pub const NEWEST_VERSION: (u64, u64) = (1, 1);
/// Versions before 0.3.0 had another layout (`ociEdits`, `containerSpec`).
const OLDEST_VERSION: (u64, u64) = (0, 3);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecFile {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    pub net_devices: Vec<NetDevice>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub intel_rdt: Option<IntelRdt>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(default)]
    pub host_path: String,
    /// `b`, `c`, `u` or `p`; empty: whatever the host's node is.
    #[serde(default, rename = "type")]
    pub typ: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// A subset of `rwm` for the device cgroup rule; empty: `rwm`; `none`: no rule at all.
    #[serde(default)]
    pub permissions: String,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetDevice {
    pub host_interface_name: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default, rename = "type")]
    pub typ: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntelRdt {
    #[serde(default, rename = "closID")]
    pub clos_id: String,
    #[serde(default)]
    pub l3_cache_schema: String,
    #[serde(default)]
    pub mem_bw_schema: String,
    #[serde(default)]
    pub schemata: Vec<String>,
    #[serde(default)]
    pub enable_monitoring: bool,
}

/// The hook names of the CDI spec, each an OCI hook list of the same name.
pub const HOOK_NAMES: [&str; 6] =
    ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

/// Reads a spec file by its extension: `.json`, or `.yaml` (YAML is a superset of JSON, but the
/// JSON parser gives the better messages for the format most tools write).
pub fn parse(path: &Path, text: &str) -> Result<SpecFile, String> {
    let spec: SpecFile = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(text).map_err(|err| err.to_string())?,
        _ => serde_norway::from_str(text).map_err(|err| err.to_string())?,
    };
    spec.validate()?;
    Ok(spec)
}

impl SpecFile {
    /// `vendor` and `class` of `kind`.
    pub fn vendor_class(&self) -> Option<(&str, &str)> {
        self.kind.split_once('/')
    }

    fn validate(&self) -> Result<(), String> {
        let version = parse_version(&self.cdi_version)?;
        if version < OLDEST_VERSION || version > NEWEST_VERSION {
            return Err(format!(
                "cdiVersion {:?} is not one berth reads ({}.{}.0 to {}.{}.x)",
                self.cdi_version,
                OLDEST_VERSION.0,
                OLDEST_VERSION.1,
                NEWEST_VERSION.0,
                NEWEST_VERSION.1
            ));
        }
        let (vendor, class) = self
            .vendor_class()
            .ok_or_else(|| format!("kind {:?} is not vendor/class", self.kind))?;
        check_vendor_or_class("vendor", vendor)?;
        check_vendor_or_class("class", class)?;
        if self.devices.is_empty() {
            return Err("the spec has no devices".into());
        }
        self.container_edits.validate().map_err(|err| format!("spec's containerEdits: {err}"))?;
        let mut seen = std::collections::BTreeSet::new();
        for device in &self.devices {
            check_device_name(&device.name)?;
            if !seen.insert(device.name.as_str()) {
                return Err(format!("device {:?} is defined twice", device.name));
            }
            device
                .container_edits
                .validate()
                .map_err(|err| format!("device {:?}: {err}", device.name))?;
            if device.container_edits.is_empty() {
                return Err(format!("device {:?} has no containerEdits", device.name));
            }
        }
        Ok(())
    }
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.net_devices.is_empty()
            && self.hooks.is_empty()
            && self.mounts.is_empty()
            && self.intel_rdt.is_none()
            && self.additional_gids.is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        check_env(&self.env)?;
        for node in &self.device_nodes {
            node.validate()?;
        }
        for dev in &self.net_devices {
            if dev.host_interface_name.is_empty() || dev.name.is_empty() {
                return Err("a netDevice needs hostInterfaceName and name".into());
            }
        }
        for hook in &self.hooks {
            if !HOOK_NAMES.contains(&hook.hook_name.as_str()) {
                return Err(format!("unknown hook name {:?}", hook.hook_name));
            }
            if hook.path.is_empty() {
                return Err(format!("hook {:?} has no path", hook.hook_name));
            }
            check_env(&hook.env).map_err(|err| format!("hook {:?}: {err}", hook.hook_name))?;
        }
        for mount in &self.mounts {
            if mount.host_path.is_empty() || mount.container_path.is_empty() {
                return Err("a mount needs hostPath and containerPath".into());
            }
        }
        Ok(())
    }
}

impl DeviceNode {
    fn validate(&self) -> Result<(), String> {
        if self.path.is_empty() {
            return Err("a device node has no path".into());
        }
        if !["", "b", "c", "u", "p"].contains(&self.typ.as_str()) {
            return Err(format!("device node {:?}: unknown type {:?}", self.path, self.typ));
        }
        // -1 would be a wildcard in a device cgroup rule.
        if self.major < 0 || self.minor < 0 {
            return Err(format!("device node {:?}: negative device number", self.path));
        }
        if self.permissions != "none" && self.permissions.chars().any(|c| !"rwm".contains(c)) {
            return Err(format!(
                "device node {:?}: permissions {:?} are not a subset of rwm",
                self.path, self.permissions
            ));
        }
        Ok(())
    }
}

fn check_env(env: &[String]) -> Result<(), String> {
    match env.iter().find(|e| !e.contains('=')) {
        Some(bad) => Err(format!("env entry {bad:?} is not KEY=VALUE")),
        None => Ok(()),
    }
}

fn parse_version(raw: &str) -> Result<(u64, u64), String> {
    let bad = || format!("cdiVersion {raw:?} is not a version x.y.z");
    let mut parts = raw.split('.');
    let mut number =
        || -> Result<u64, String> { parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad) };
    let (major, minor, _patch) = (number()?, number()?, number()?);
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((major, minor))
}

/// A vendor or class: a letter, then letters, digits, `_`, `-` or `.`, ending in a letter or
/// digit.
pub fn check_vendor_or_class(what: &str, name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = match bytes {
        [] => false,
        [first, ..] if !first.is_ascii_alphabetic() => false,
        [.., last] if !last.is_ascii_alphanumeric() => false,
        _ => bytes.iter().all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(c)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {name:?}: letters, digits, _ - . starting with a letter"))
    }
}

/// A device's name: a letter or digit, then letters, digits, `_`, `-`, `.` or `:`, ending in a
/// letter or digit.
pub fn check_device_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = match bytes {
        [] => false,
        [first, ..] if !first.is_ascii_alphanumeric() => false,
        [.., last] if !last.is_ascii_alphanumeric() => false,
        _ => bytes.iter().all(|c| c.is_ascii_alphanumeric() || b"_-.:".contains(c)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "device name {name:?}: letters, digits, _ - . : starting with one of the first"
        ))
    }
}
