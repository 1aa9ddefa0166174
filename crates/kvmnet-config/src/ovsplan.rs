//! Planning `ovs` networks: Open vSwitch bridges, their uplink (a bond when it has several
//! ports), an internal port per VLAN with a host address, and VM ports with access tags —
//! against the switch's database as collected, removing only what kvmnet added.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use kvmnet_model::ovs::{OvsPort, OvsState};
use kvmnet_model::plan::{OvsPortSettings, PlanStep};

use crate::desired::{Desired, Net};
use crate::plan::{Observed, PlanError};
use crate::schema::NetworkType;

/// The Open vSwitch part of a plan.
#[derive(Debug, Default)]
pub(crate) struct OvsPlan {
    pub removals: Vec<PlanStep>,
    pub creations: Vec<PlanStep>,
    pub bridges: BTreeSet<String>,
    pub ports: BTreeMap<String, String>,
    /// Host addresses on internal ports (owned by kvmnet once applied).
    pub addresses: BTreeSet<(String, IpNet)>,
    pub notes: Vec<String>,
}

/// The uplink port of an ovs network: its only port, or `<bridge>.up` for a bond.
pub fn uplink_port(n: &Net) -> Option<String> {
    match n.ports.len() {
        0 => None,
        1 => n.ports.first().cloned(),
        _ => Some(format!("{}.up", n.bridge)),
    }
}

struct WantPort {
    bridge: String,
    interfaces: Vec<String>,
    internal: bool,
    settings: OvsPortSettings,
}

fn settings_of(p: &OvsPort) -> OvsPortSettings {
    OvsPortSettings {
        tag: p.tag,
        trunks: p.trunks.clone(),
        bond_mode: p.bond_mode.clone(),
        lacp: p.lacp.clone(),
    }
}

pub(crate) fn plan_ovs(d: &Desired, o: &Observed, force: bool) -> Result<OvsPlan, PlanError> {
    let s = o.state;
    let mut out = OvsPlan::default();
    let nets: Vec<&Net> = d
        .networks
        .iter()
        .filter(|n| n.kind == NetworkType::Ovs)
        .collect();
    let empty = OvsState::default();
    let ovs: &OvsState = match &s.ovs {
        Some(x) if x.db_running => x,
        _ if !nets.is_empty() => {
            return Err(PlanError::Conflict(format!(
                "network `{}` is an ovs network, but no Open vSwitch runs here (ovsdb-server not found or not answering)",
                nets[0].name
            )))
        }
        _ => &empty,
    };
    if !nets.is_empty() && !ovs.vswitchd_running {
        return Err(PlanError::Conflict(format!(
            "network `{}`: ovs-vswitchd does not run here; start Open vSwitch first",
            nets[0].name
        )));
    }
    // what is wanted
    let mut want_ports: BTreeMap<String, WantPort> = BTreeMap::new();
    let mut want_bridges: BTreeMap<String, Option<String>> = BTreeMap::new();
    for n in &nets {
        want_bridges.insert(n.bridge.clone(), n.datapath.clone());
        let mut trunks: Vec<u16> = n.vlans.iter().map(|v| v.id).collect();
        trunks.sort_unstable();
        if let Some(up) = uplink_port(n) {
            for m in &n.ports {
                if s.link(m).is_none() {
                    return Err(PlanError::Conflict(format!(
                        "network `{}`: port {m} does not exist",
                        n.name
                    )));
                }
                if let Some((ip, ifname)) = &o.management {
                    if ifname == m && !force {
                        return Err(PlanError::Management(format!(
                            "network `{}` puts {m} into Open vSwitch bridge {}, but {m} carries this session's address {ip}: its address would stop working",
                            n.name, n.bridge
                        )));
                    }
                }
            }
            let bond = n.ports.len() > 1;
            want_ports.insert(
                up,
                WantPort {
                    bridge: n.bridge.clone(),
                    interfaces: n.ports.clone(),
                    internal: false,
                    settings: OvsPortSettings {
                        tag: None,
                        trunks: trunks.clone(),
                        bond_mode: if bond {
                            Some(
                                n.bond_mode
                                    .clone()
                                    .unwrap_or_else(|| "active-backup".into()),
                            )
                        } else {
                            None
                        },
                        lacp: if bond { n.lacp.clone() } else { None },
                    },
                },
            );
        }
        for v in &n.vlans {
            if let Some(g) = v.gateway {
                let port = n.vlan_port(v.id);
                want_ports.insert(
                    port.clone(),
                    WantPort {
                        bridge: n.bridge.clone(),
                        interfaces: vec![port.clone()],
                        internal: true,
                        settings: OvsPortSettings {
                            tag: Some(v.id),
                            ..Default::default()
                        },
                    },
                );
                out.addresses.insert((port, g));
            }
        }
    }
    for v in &d.vnics {
        let Some(n) = nets.iter().find(|n| n.name == v.network) else {
            continue;
        };
        let Some(l) = s.link(&v.tap) else {
            out.notes.push(format!(
                "vm `{}`: {} does not exist yet; run apply again once the VM runs",
                v.vm, v.tap
            ));
            continue;
        };
        if let Some(m) = l.master.as_deref().filter(|m| *m != "ovs-system") {
            return Err(PlanError::Conflict(format!(
                "vm `{}`: {} is a port of Linux bridge {m}; take it out first",
                v.vm, v.tap
            )));
        }
        want_ports.insert(
            v.tap.clone(),
            WantPort {
                bridge: n.bridge.clone(),
                interfaces: vec![v.tap.clone()],
                internal: false,
                settings: OvsPortSettings {
                    tag: v.vlan,
                    ..Default::default()
                },
            },
        );
        if !l.admin_up {
            out.creations.push(PlanStep::LinkUp {
                ifname: v.tap.clone(),
            });
        }
    }

    // removals of what kvmnet added and no longer wants
    for (port, bridge) in &o.owned.ovs_ports {
        let bridge_goes =
            o.owned.ovs_bridges.contains(bridge) && !want_bridges.contains_key(bridge);
        if want_ports.get(port).is_none_or(|w| &w.bridge != bridge)
            && !bridge_goes
            && ovs
                .bridge(bridge)
                .is_some_and(|b| b.ports.iter().any(|p| &p.name == port))
        {
            out.removals.push(PlanStep::OvsDelPort {
                bridge: bridge.clone(),
                port: port.clone(),
            });
        }
    }
    for b in &o.owned.ovs_bridges {
        if !want_bridges.contains_key(b) && ovs.bridge(b).is_some() {
            out.removals
                .push(PlanStep::OvsDelBridge { name: b.clone() });
        }
    }

    // bridges
    for (b, dp) in &want_bridges {
        match ovs.bridge(b) {
            None => {
                if s.link(b)
                    .is_some_and(|l| l.kind == kvmnet_model::LinkKind::Bridge)
                {
                    return Err(PlanError::Conflict(format!(
                        "{b} is a Linux bridge; an ovs network needs another name"
                    )));
                }
                out.creations.push(PlanStep::OvsAddBridge {
                    name: b.clone(),
                    datapath: dp.clone(),
                });
                out.bridges.insert(b.clone());
            }
            Some(have) => {
                if o.owned.ovs_bridges.contains(b) {
                    out.bridges.insert(b.clone());
                }
                if dp.is_some()
                    && have.datapath_type.as_deref().unwrap_or("system")
                        != dp.as_deref().unwrap_or("system")
                {
                    out.notes.push(format!(
                        "bridge {b} runs datapath {}, not {}: kvmnet does not change a bridge's datapath",
                        have.datapath_type.as_deref().unwrap_or("system"),
                        dp.as_deref().unwrap_or("system")
                    ));
                }
            }
        }
    }
    // ports
    for (name, w) in &want_ports {
        let existing = ovs
            .bridges
            .iter()
            .find_map(|b| b.ports.iter().find(|p| &p.name == name).map(|p| (b, p)));
        match existing {
            None => {
                out.creations.push(PlanStep::OvsAddPort {
                    bridge: w.bridge.clone(),
                    port: name.clone(),
                    interfaces: w.interfaces.clone(),
                    internal: w.internal,
                    settings: w.settings.clone(),
                });
                out.ports.insert(name.clone(), w.bridge.clone());
            }
            Some((b, p)) => {
                let ifaces: Vec<String> = p.interfaces.iter().map(|i| i.name.clone()).collect();
                let mut want_ifaces = w.interfaces.clone();
                want_ifaces.sort();
                if b.name != w.bridge || ifaces != want_ifaces {
                    if !o.owned.ovs_ports.contains_key(name) {
                        return Err(PlanError::Conflict(format!(
                            "Open vSwitch port {name} exists on {} with {}: kvmnet does not change ports it did not add",
                            b.name,
                            ifaces.join(", ")
                        )));
                    }
                    out.creations.push(PlanStep::OvsDelPort {
                        bridge: b.name.clone(),
                        port: name.clone(),
                    });
                    out.creations.push(PlanStep::OvsAddPort {
                        bridge: w.bridge.clone(),
                        port: name.clone(),
                        interfaces: w.interfaces.clone(),
                        internal: w.internal,
                        settings: w.settings.clone(),
                    });
                } else if settings_of(p) != w.settings {
                    out.creations.push(PlanStep::OvsSetPort {
                        port: name.clone(),
                        settings: w.settings.clone(),
                    });
                }
                if o.owned.ovs_ports.contains_key(name) {
                    out.ports.insert(name.clone(), w.bridge.clone());
                }
            }
        }
    }
    // host addresses on the VLAN internal ports, and the ports up
    for (port, g) in out.addresses.clone() {
        let present = s
            .addresses_of(&port)
            .any(|a| a.address == g.addr() && a.prefix_len == g.prefix_len());
        if !present {
            out.creations.push(PlanStep::AddAddress {
                ifname: port.clone(),
                address: g,
            });
        }
        if s.link(&port).is_none_or(|l| !l.admin_up) {
            out.creations.push(PlanStep::LinkUp { ifname: port });
        }
    }
    for n in &nets {
        for m in &n.ports {
            if s.link(m).is_some_and(|l| !l.admin_up) {
                out.creations.push(PlanStep::LinkUp { ifname: m.clone() });
            }
        }
    }
    Ok(out)
}
