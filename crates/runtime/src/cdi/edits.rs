//! Applies CDI container edits to an OCI spec, in the order the devices were asked for.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{major, minor};
use oci_spec::runtime::{
    Hook as OciHook, Hooks, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxIntelRdt,
    LinuxNetDevice, Mount as OciMount, Spec,
};

use super::spec::{ContainerEdits, DeviceNode, Hook, IntelRdt};

pub(super) fn apply(oci: &mut Spec, edits: &[&ContainerEdits]) -> Result<(), String> {
    let mut mounts_added = false;
    for edit in edits {
        env(oci, &edit.env)?;
        for node in &edit.device_nodes {
            device_node(oci, node)?;
        }
        for dev in &edit.net_devices {
            let linux = oci.linux_mut().get_or_insert_with(Default::default);
            let mut oci_dev = LinuxNetDevice::default();
            oci_dev.set_name(Some(dev.name.clone()));
            linux
                .net_devices_mut()
                .get_or_insert_with(Default::default)
                .insert(dev.host_interface_name.clone(), oci_dev);
        }
        for m in &edit.mounts {
            let mounts = oci.mounts_mut().get_or_insert_with(Vec::new);
            let destination = PathBuf::from(&m.container_path);
            mounts.retain(|existing| existing.destination() != &destination);
            let mut mount = OciMount::default();
            mount
                .set_destination(destination)
                .set_source(Some(PathBuf::from(&m.host_path)))
                // A bind mount unless the spec says otherwise: runc reads the options, the
                // embedded executor the type.
                .set_typ(Some(if m.typ.is_empty() { "bind".into() } else { m.typ.clone() }))
                .set_options((!m.options.is_empty()).then(|| m.options.clone()));
            mounts.push(mount);
            mounts_added = true;
        }
        for hook in &edit.hooks {
            add_hook(oci, hook)?;
        }
        if let Some(rdt) = &edit.intel_rdt {
            intel_rdt(oci, rdt)?;
        }
        if !edit.additional_gids.is_empty() {
            let process = oci.process_mut().as_mut().ok_or("the spec has no process")?;
            let gids = process.user_mut().additional_gids_mut().get_or_insert_with(Vec::new);
            for gid in &edit.additional_gids {
                // Group 0 in a device's list would hand root's group to every user.
                if *gid != 0 && !gids.contains(gid) {
                    gids.push(*gid);
                }
            }
        }
    }
    if mounts_added {
        // Parents before what is mounted inside them, whatever order the edits came in; the
        // sort is stable, so mounts of one depth keep their order.
        if let Some(mounts) = oci.mounts_mut() {
            mounts.sort_by_key(|m| depth(m.destination()));
        }
    }
    Ok(())
}

fn depth(path: &Path) -> usize {
    path.components().filter(|c| matches!(c, Component::Normal(_))).count()
}

/// A variable of the edits replaces the image's or the config's of the same name.
fn env(oci: &mut Spec, entries: &[String]) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let process = oci.process_mut().as_mut().ok_or("the spec has no process")?;
    let env = process.env_mut().get_or_insert_with(Vec::new);
    for entry in entries {
        let key = entry.split('=').next().unwrap_or_default();
        match env.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    Ok(())
}

fn device_type(typ: &str) -> Option<LinuxDeviceType> {
    match typ {
        "b" => Some(LinuxDeviceType::B),
        "c" => Some(LinuxDeviceType::C),
        "u" => Some(LinuxDeviceType::U),
        "p" => Some(LinuxDeviceType::P),
        _ => None,
    }
}

/// A device node, with what its spec leaves out taken from the node on the host; a node the
/// spec describes fully need not exist on the host.
fn device_node(oci: &mut Spec, node: &DeviceNode) -> Result<(), String> {
    let host = if node.host_path.is_empty() { &node.path } else { &node.host_path };
    let fully_described = !node.typ.is_empty() && (node.major != 0 || node.typ == "p");
    let found = match fs::symlink_metadata(host) {
        Ok(meta) => Some(meta),
        Err(_) if fully_described => None,
        Err(err) => return Err(format!("device node {host}: {err}")),
    };
    let (mut typ, mut dev_major, mut dev_minor) = (node.typ.clone(), node.major, node.minor);
    let mut mode = node.file_mode;
    if let Some(meta) = &found {
        mode = mode.or(Some(meta.mode() & 0o7777));
        if !fully_described {
            let ft = meta.file_type();
            let host_typ = if ft.is_char_device() {
                "c"
            } else if ft.is_block_device() {
                "b"
            } else if ft.is_fifo() {
                "p"
            } else {
                return Err(format!("{host} is not a device node"));
            };
            if typ.is_empty() {
                typ = host_typ.to_string();
            } else if !(typ == host_typ || typ == "u" && host_typ == "c") {
                return Err(format!(
                    "device node {}: the spec says type {typ}, {host} is of type {host_typ}",
                    node.path
                ));
            }
            if typ != "p" && dev_major == 0 {
                dev_major = major(meta.rdev()) as i64;
                dev_minor = minor(meta.rdev()) as i64;
            }
        }
    }
    let oci_typ = device_type(&typ).ok_or_else(|| format!("device node {}: no type", node.path))?;
    let process_user = oci.process().as_ref().map(|p| (p.user().uid(), p.user().gid()));
    let mut device = LinuxDevice::default();
    device
        .set_path(PathBuf::from(&node.path))
        .set_typ(oci_typ)
        .set_major(dev_major)
        .set_minor(dev_minor)
        .set_file_mode(mode)
        // Owned by the container's user unless the spec says otherwise, so that a non-root
        // container can open the device it was given.
        .set_uid(node.uid.or(process_user.map(|u| u.0).filter(|uid| *uid > 0)))
        .set_gid(node.gid.or(process_user.map(|u| u.1).filter(|gid| *gid > 0)));
    let linux = oci.linux_mut().get_or_insert_with(Default::default);
    let devices = linux.devices_mut().get_or_insert_with(Vec::new);
    devices.retain(|d| d.path() != device.path());
    devices.push(device);
    if matches!(typ.as_str(), "b" | "c") && node.permissions != "none" {
        let access = if node.permissions.is_empty() { "rwm" } else { node.permissions.as_str() };
        let mut rule = LinuxDeviceCgroup::default();
        rule.set_allow(true)
            .set_typ(Some(oci_typ))
            .set_major(Some(dev_major))
            .set_minor(Some(dev_minor))
            .set_access(Some(access.to_string()));
        linux
            .resources_mut()
            .get_or_insert_with(Default::default)
            .devices_mut()
            .get_or_insert_with(Vec::new)
            .push(rule);
    }
    Ok(())
}

#[allow(deprecated)] // prestart: deprecated by the OCI spec, still a CDI hook name
fn add_hook(oci: &mut Spec, hook: &Hook) -> Result<(), String> {
    let mut oci_hook = OciHook::default();
    oci_hook
        .set_path(PathBuf::from(&hook.path))
        .set_args((!hook.args.is_empty()).then(|| hook.args.clone()))
        .set_env((!hook.env.is_empty()).then(|| hook.env.clone()))
        .set_timeout(hook.timeout);
    let hooks = oci.hooks_mut().get_or_insert_with(Hooks::default);
    let list = match hook.hook_name.as_str() {
        "prestart" => hooks.prestart_mut(),
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        "poststop" => hooks.poststop_mut(),
        other => return Err(format!("unknown hook name {other:?}")),
    };
    list.get_or_insert_with(Vec::new).push(oci_hook);
    Ok(())
}

fn intel_rdt(oci: &mut Spec, rdt: &IntelRdt) -> Result<(), String> {
    if rdt.enable_monitoring {
        // Not a field of the OCI spec version berth writes: it could only be dropped.
        return Err("intelRdt.enableMonitoring is not supported".into());
    }
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    let mut oci_rdt = LinuxIntelRdt::default();
    oci_rdt
        .set_clos_id(some(&rdt.clos_id))
        .set_l3_cache_schema(some(&rdt.l3_cache_schema))
        .set_mem_bw_schema(some(&rdt.mem_bw_schema))
        .set_schemata((!rdt.schemata.is_empty()).then(|| rdt.schemata.clone()));
    oci.linux_mut().get_or_insert_with(Default::default).set_intel_rdt(Some(oci_rdt));
    Ok(())
}
