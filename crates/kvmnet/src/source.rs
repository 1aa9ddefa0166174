//! Where a command's host state comes from: the live host (a namespace of it) or a snapshot file.

use std::path::Path;

use kvmnet_libvirt::virsh::Connection;
use kvmnet_linux::{collect, CollectOptions};
use kvmnet_model::{parse_snapshot, HostState};

use crate::error::CliError;

/// Reads a snapshot file, with one clear error naming the file, position and reason.
pub fn read_snapshot(path: &Path) -> Result<HostState, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("{}: cannot read: {e}", path.display())))?;
    parse_snapshot(&text).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

/// Collects the live state of a namespace (ours when `None`), including libvirt when a daemon
/// manages that namespace.
pub fn collect_live(netns: Option<&str>) -> Result<HostState, CliError> {
    let collected = collect(&CollectOptions::full(netns.map(String::from)))?;
    let mut state = collected.state;
    if let Some(d) = collected.libvirt {
        let conn = Connection {
            uri: std::env::var("KVMNET_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into()),
            mount_ns_pid: (!d.same_mount_ns).then_some(d.pid),
        };
        let inv = kvmnet_libvirt::collect_libvirt(&conn);
        kvmnet_libvirt::merge_into(&mut state, inv);
    }
    kvmnet_model::enrich::enrich(&mut state);
    Ok(state)
}

/// The state a read command works on.
pub fn load(netns: Option<&str>, from: Option<&Path>) -> Result<HostState, CliError> {
    match from {
        Some(p) => read_snapshot(p),
        None => collect_live(netns),
    }
}
