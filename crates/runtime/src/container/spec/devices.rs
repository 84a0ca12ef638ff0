//! The spec's devices: the CRI's device requests (a node or a tree of them) and the device cgroup
//! rules that go with them, containerd's defaults first.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};

use super::*;
use crate::container::types::Device;
use crate::error::{Error, Result};

/// runc's default device rules (mknod of anything, then the basic character devices), less
/// `/dev/net/tun`, which containerd leaves out of an unprivileged container.
pub(super) const DEFAULT_DEVICE_RULES: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 11] = [
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"), // null
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"), // zero
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"), // full
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"), // tty
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"), // console
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"), // ptmx
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"), // random
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"), // urandom
    (LinuxDeviceType::C, Some(136), None, "rwm"),  // /dev/pts/*
];

/// Directories of `/dev` whose nodes are not devices to hand over (containerd's list).
pub(super) const SKIPPED_DEV_DIRS: [&str; 7] =
    ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// A device node of the host, as a spec device at `container` path; `None` if not a device.
pub(super) fn device_node(host: &Path, container: PathBuf) -> io::Result<Option<LinuxDevice>> {
    let meta = fs::symlink_metadata(host)?;
    let file_type = meta.file_type();
    let typ = if file_type.is_char_device() {
        LinuxDeviceType::C
    } else if file_type.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    let mut device = LinuxDevice::default();
    device
        .set_path(container)
        .set_typ(typ)
        .set_major(major(rdev) as i64)
        .set_minor(minor(rdev) as i64)
        .set_file_mode(Some(meta.mode() & 0o7777))
        .set_uid(Some(meta.uid()))
        .set_gid(Some(meta.gid()));
    Ok(Some(device))
}

/// Every device under a host directory, at the same relative path under `container`; links
/// are not followed and containerd's list of non-device directories is skipped.
pub(super) fn devices_under(
    host: &Path,
    container: &Path,
    out: &mut Vec<LinuxDevice>,
) -> Result<()> {
    let entries = fs::read_dir(host).map_err(Error::io("listing devices in", host))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("listing devices in", host))?;
        let name = entry.file_name();
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io("inspecting", path)(err)),
        };
        if file_type.is_dir() {
            if !SKIPPED_DEV_DIRS.iter().any(|s| name == *s) {
                devices_under(&path, &container.join(&name), out)?;
            }
            continue;
        }
        // The console is the runtime's to set up (a pty when the container has a terminal).
        if name == "console" {
            continue;
        }
        match device_node(&path, container.join(&name)) {
            Ok(Some(device)) => out.push(device),
            Ok(None) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("inspecting", path)(err)),
        }
    }
    Ok(())
}

/// The config's devices (a directory stands for every device under it), with the access each
/// is allowed; for a privileged container all of the host's `/dev` first, as containerd does.
pub(super) fn devices(
    requested: &[Device],
    privileged: bool,
) -> Result<Vec<(LinuxDevice, String)>> {
    let mut out: Vec<(LinuxDevice, String)> = Vec::new();
    if privileged {
        let mut host = Vec::new();
        devices_under(Path::new("/dev"), Path::new("/dev"), &mut host)?;
        out.extend(host.into_iter().map(|d| (d, "rwm".to_string())));
    }
    for d in requested {
        let container = container_path(&d.container_path, "device")?;
        let access = if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() };
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(Error::InvalidArgument(format!(
                "device {}: invalid permissions {:?}",
                d.host_path, d.permissions
            )));
        }
        let host = fs::canonicalize(&d.host_path).map_err(|err| {
            Error::InvalidArgument(format!("device {:?} not found: {err}", d.host_path))
        })?;
        let mut found = Vec::new();
        if host.is_dir() {
            devices_under(&host, &container, &mut found)?;
        } else {
            match device_node(&host, container) {
                Ok(Some(device)) => found.push(device),
                Ok(None) => {
                    return Err(Error::InvalidArgument(format!(
                        "device {:?} is not a device node",
                        d.host_path
                    )))
                }
                Err(err) => {
                    return Err(Error::InvalidArgument(format!(
                        "device {:?} not found: {err}",
                        d.host_path
                    )))
                }
            }
        }
        for device in found {
            // A requested device takes the place of a host device at the same path.
            out.retain(|(d, _)| d.path() != device.path());
            out.push((device, access.to_string()));
        }
    }
    Ok(out)
}

pub(super) fn device_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow)
        .set_typ(Some(typ))
        .set_major(major)
        .set_minor(minor)
        .set_access(Some(access.to_string()));
    rule
}
