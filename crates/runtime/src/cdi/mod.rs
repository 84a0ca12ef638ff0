//! CDI (the Container Device Interface): devices a container asks for by fully qualified name,
//! `vendor.com/class=name`, in the CRI's `CDI_devices` or in `cdi.k8s.io/*` annotations (which
//! older device plugins still set), resolved against the spec files in the node's CDI
//! directories and applied to the container's OCI spec before any handler sees it, so that
//! every handler gets the same devices.
//!
//! The directories are read at each CreateContainer that asks for a device, never cached: a
//! device plugin writes its spec files just before the kubelet creates the container, and a
//! stale cache would fail that container for no reason a user could see.

mod edits;
pub mod spec;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};
use spec::{ContainerEdits, SpecFile};

/// The annotation prefix of CDI device requests; the value is a comma-separated list of
/// qualified device names.
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The qualified names a container asks for, in the order asked, each once: the CRI field
/// first, then the annotations by key.
pub fn requested<'a>(
    cdi_devices: &[String],
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<String>> {
    let mut by_key: Vec<(&String, &String)> =
        annotations.into_iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).collect();
    by_key.sort();
    let from_annotations = by_key.into_iter().flat_map(|(key, value)| {
        value.split(',').map(str::trim).filter(|n| !n.is_empty()).map(move |n| (Some(key), n))
    });
    let mut names = Vec::new();
    for (key, name) in cdi_devices.iter().map(|n| (None, n.as_str())).chain(from_annotations) {
        parse_qualified(name).map_err(|why| {
            Error::InvalidArgument(match key {
                Some(key) => format!("annotation {key}: CDI device {name:?}: {why}"),
                None => format!("CDI device {name:?}: {why}"),
            })
        })?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Splits `vendor.com/class=name`.
pub fn parse_qualified(name: &str) -> std::result::Result<(&str, &str, &str), String> {
    let (kind, device) =
        name.split_once('=').ok_or("not a qualified name vendor.com/class=name")?;
    let (vendor, class) =
        kind.split_once('/').ok_or("not a qualified name vendor.com/class=name")?;
    spec::check_vendor_or_class("vendor", vendor)?;
    spec::check_vendor_or_class("class", class)?;
    spec::check_device_name(device)?;
    Ok((vendor, class, device))
}

/// Applies the devices `names` to `oci`, from the spec files in `dirs`, of which a later one
/// overrides an earlier one (`/etc/cdi`, then the generated `/var/run/cdi`).
pub fn inject(oci: &mut Spec, dirs: &[PathBuf], names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let registry = Registry::load(dirs);
    let mut edits: Vec<&ContainerEdits> = Vec::new();
    let mut specs_applied = BTreeSet::new();
    for name in names {
        let Some(found) = registry.devices.get(name) else {
            return Err(Error::FailedPrecondition(registry.unresolved(name, dirs)));
        };
        // The spec's own edits go with the first of its devices, once.
        if specs_applied.insert(found.path.clone()) {
            edits.push(&found.spec.container_edits);
        }
        if let Some(device) = found.spec.devices.get(found.index) {
            edits.push(&device.container_edits);
        }
    }
    edits::apply(oci, &edits)
        .map_err(|why| Error::InvalidArgument(format!("CDI devices {}: {why}", names.join(", "))))
}

/// A device found in a spec file.
struct Found {
    spec: Arc<SpecFile>,
    path: PathBuf,
    /// The device's position in `spec.devices`.
    index: usize,
    /// The position of its directory in the list: the higher, the stronger.
    priority: usize,
}

/// Every device of the spec files, by qualified name, and what could not be read.
struct Registry {
    devices: BTreeMap<String, Found>,
    /// Files that could not be used and devices defined twice at the same priority, named in
    /// the message when a device is not found: the file defining it may be one of them.
    problems: Vec<String>,
}

impl Registry {
    fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry { devices: BTreeMap::new(), problems: Vec::new() };
        let mut conflicts = BTreeSet::new();
        for (priority, dir) in dirs.iter().enumerate() {
            for path in spec_files(dir, &mut registry.problems) {
                let spec = match fs::read_to_string(&path)
                    .map_err(|err| err.to_string())
                    .and_then(|text| spec::parse(&path, &text))
                {
                    Ok(spec) => Arc::new(spec),
                    Err(why) => {
                        registry.problems.push(format!("{}: {why}", path.display()));
                        continue;
                    }
                };
                for (index, device) in spec.devices.iter().enumerate() {
                    let name = format!("{}={}", spec.kind, device.name);
                    if let Some(other) = registry.devices.get(&name) {
                        if other.priority == priority {
                            registry.problems.push(format!(
                                "{name} is defined by both {} and {}",
                                other.path.display(),
                                path.display()
                            ));
                            conflicts.insert(name.clone());
                        }
                    }
                    registry.devices.insert(
                        name,
                        Found { spec: spec.clone(), path: path.clone(), index, priority },
                    );
                }
            }
        }
        // A device two files of one directory define is neither's: which one the vendor
        // meant cannot be told.
        for name in conflicts {
            registry.devices.remove(&name);
        }
        registry
    }

    fn unresolved(&self, name: &str, dirs: &[PathBuf]) -> String {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let mut message =
            format!("CDI device {name} is not defined by any spec file in {}", dirs.join(", "));
        if !self.problems.is_empty() {
            message.push_str(&format!(" (unusable: {})", self.problems.join("; ")));
        }
        message
    }
}

/// The `*.json` and `*.yaml` files of `dir`, by name; a missing directory has none.
fn spec_files(dir: &Path, problems: &mut Vec<String>) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            problems.push(format!("{}: {err}", dir.display()));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            matches!(path.extension().and_then(|e| e.to_str()), Some("json" | "yaml"))
                && path.is_file()
        })
        .collect();
    files.sort();
    files
}
