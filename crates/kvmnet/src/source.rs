//! Where a command's host state comes from: the live host (a namespace of it) or a snapshot file.

use std::path::Path;
use std::sync::OnceLock;

use kvmnet_libvirt::virsh::Connection;
use kvmnet_linux::agent::Agent;
use kvmnet_linux::{collect, CollectOptions};
use kvmnet_model::vm::VmState;
use kvmnet_model::{parse_snapshot, HostState, Vm};

/// The libvirt daemon of the collected namespace, once found (for agent calls later on).
static LIBVIRT: OnceLock<Connection> = OnceLock::new();

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
        let _ = LIBVIRT.set(conn);
        attach_libvirt_agent_views(&mut state);
    }
    add_kvmnet_networks(&mut state, netns);
    kvmnet_model::enrich::enrich(&mut state);
    Ok(state)
}

/// The networks kvmnet itself applied on this host (its last applied desired state), in place
/// of the plain-bridge networks inferred for the same bridges.
fn add_kvmnet_networks(state: &mut HostState, netns: Option<&str>) {
    let path = kvmnet_linux::apply::ns_dir(netns).join("desired.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let desired: kvmnet_config::Desired = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => {
            state.warn("kvmnet", format!("{}: {e}", path.display()));
            return;
        }
    };
    for n in kvmnet_config::model_networks(&desired) {
        // a libvirt network on the same bridge wins; an inferred one gives way
        if state
            .networks
            .iter()
            .any(|o| o.origin == kvmnet_model::NetworkOrigin::Libvirt && o.bridge == n.bridge)
        {
            continue;
        }
        let active = n
            .bridge
            .as_deref()
            .and_then(|b| state.link(b))
            .map(|l| l.admin_up);
        state
            .networks
            .retain(|o| !(o.origin == kvmnet_model::NetworkOrigin::Bridge && o.bridge == n.bridge));
        let mut n = n;
        n.active = Some(active.unwrap_or(false));
        state.networks.push(n);
    }
}

/// A session with `vm`'s guest agent: its own socket (bare QEMU) or through libvirt.
pub fn agent_for(vm: &Vm) -> Result<Agent, String> {
    let ch = vm.agent.as_ref().ok_or("no guest agent channel")?;
    if ch.libvirt {
        let conn = LIBVIRT.get().ok_or("libvirt is not reachable")?;
        return Ok(Agent::via(Box::new(conn.agent_caller(&vm.name))));
    }
    let path = ch
        .socket
        .as_deref()
        .ok_or("the agent socket is not known")?;
    Agent::connect(path, std::time::Duration::from_secs(2))
}

/// Reads the guests of running libvirt domains with an agent channel through libvirt.
fn attach_libvirt_agent_views(state: &mut HostState) {
    let idx: Vec<usize> = state
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.guest.is_none()
                && v.state == VmState::Running
                && v.agent
                    .as_ref()
                    .is_some_and(|a| a.libvirt && a.connected != Some(false))
        })
        .map(|(i, _)| i)
        .collect();
    let views: Vec<(usize, Result<kvmnet_model::vm::GuestView, String>)> =
        std::thread::scope(|sc| {
            let hs: Vec<_> = idx
                .iter()
                .map(|i| {
                    let vm = &state.vms[*i];
                    (
                        *i,
                        sc.spawn(move || {
                            agent_for(vm)
                                .and_then(|mut a| kvmnet_linux::agent::guest_view_of(&mut a))
                        }),
                    )
                })
                .collect();
            hs.into_iter()
                .map(|(i, h)| (i, h.join().unwrap_or(Err("agent reader panicked".into()))))
                .collect()
        });
    for (i, v) in views {
        match v {
            Ok(v) => kvmnet_linux::collect::apply_guest_view(&mut state.vms[i], v),
            Err(e) => {
                let name = state.vms[i].name.clone();
                state.warn(
                    "agent",
                    format!("{name}: guest agent (through libvirt): {e}"),
                );
            }
        }
    }
}

/// The host as configuration planning sees it (no sockets, VMs or guests; processes only
/// with `ovs`, to find Open vSwitch): fast.
pub fn collect_for_config(netns: Option<&str>, ovs: bool) -> Result<HostState, CliError> {
    let mut o = CollectOptions::config(netns.map(String::from));
    o.processes = ovs;
    let mut s = collect(&o)?.state;
    if ovs {
        s.vms.clear();
        s.sockets.clear();
    }
    Ok(s)
}

/// The state a read command works on.
pub fn load(netns: Option<&str>, from: Option<&Path>) -> Result<HostState, CliError> {
    match from {
        Some(p) => read_snapshot(p),
        None => collect_live(netns),
    }
}
