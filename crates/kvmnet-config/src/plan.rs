//! The planner: desired state + the collected host + what kvmnet owns -> typed steps in a
//! deterministic order. Removals of what kvmnet owns and no longer wants come first (in
//! reverse dependency order), then creations and changes. Objects that exist already and were
//! not made by kvmnet are used but never removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kvmnet_model::plan::PlanStep;
use kvmnet_model::{HostState, LinkKind};
use serde::{Deserialize, Serialize};

use crate::desired::Desired;
use crate::render::{self, TABLE};
use crate::schema::NetworkType;

/// What kvmnet created or changed on a host (kept in its runtime directory), so it removes
/// only its own objects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Bridges kvmnet created.
    #[serde(default)]
    pub bridges: BTreeSet<String>,
    /// Addresses kvmnet added: (interface, address/prefix).
    #[serde(default)]
    pub addresses: BTreeSet<(String, IpNet)>,
    /// Interfaces kvmnet put into a bridge: interface -> bridge.
    #[serde(default)]
    pub ports: BTreeMap<String, String>,
    /// Taps with a rate limit kvmnet set.
    #[serde(default)]
    pub rate_limits: BTreeSet<String>,
    /// Networks whose dnsmasq kvmnet runs.
    #[serde(default)]
    pub dhcp: BTreeSet<String>,
    /// kvmnet's nftables tables ("inet kvmnet_cfg") -> hash of the script loaded.
    #[serde(default)]
    pub nft_tables: BTreeMap<String, String>,
    /// Sysctls kvmnet changed -> their value before.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Open vSwitch bridges kvmnet created.
    #[serde(default)]
    pub ovs_bridges: BTreeSet<String>,
    /// Open vSwitch ports kvmnet added: port -> bridge.
    #[serde(default)]
    pub ovs_ports: BTreeMap<String, String>,
}

/// What the planner looks at besides the desired state.
#[derive(Debug)]
pub struct Observed<'a> {
    pub state: &'a HostState,
    pub owned: &'a Owned,
    /// The configuration of each kvmnet dnsmasq that is running, by network.
    pub dhcp: &'a BTreeMap<String, String>,
    /// The local address and interface of the management (SSH) session, when there is one.
    pub management: Option<(IpAddr, String)>,
    /// Whether the kernel can tag VLANs on a Linux bridge (`vlan_filtering`).
    pub vlan_capable: bool,
}

/// A plan.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    /// What kvmnet owns once the plan is applied.
    pub owned: Owned,
    /// Things the plan cannot do yet, and why (a tap that does not exist yet).
    pub notes: Vec<String>,
}

/// Why a desired state cannot be planned on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Conflict(String),
    #[error("refusing: {0} (this would cut the session kvmnet runs in; --force to do it anyway)")]
    Management(String),
}

fn fnv(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// The uplink each nat/routed network uses: the one named, else the default route's device.
pub fn uplinks(d: &Desired, s: &HostState) -> BTreeMap<String, Option<String>> {
    let default_dev = s
        .default_route(false)
        .and_then(|r| r.devices().first().map(|d| d.to_string()));
    d.networks
        .iter()
        .filter(|n| matches!(n.kind, NetworkType::Nat | NetworkType::Routed))
        .map(|n| (n.name.clone(), n.uplink.clone().or(default_dev.clone())))
        .collect()
}

/// Networks (nat or routed) whose subnet another table already masquerades (or SNATs): a
/// masquerade or snat rule in a postrouting chain of a table kvmnet does not own that names
/// the subnet.
pub fn external_nat(d: &Desired, s: &HostState) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for n in d
        .networks
        .iter()
        .filter(|n| matches!(n.kind, NetworkType::Nat | NetworkType::Routed))
    {
        let Some(subnet) = n.subnet else { continue };
        let needle = subnet.to_string();
        let found = s
            .nftables
            .tables
            .iter()
            .filter(|t| t.name != TABLE)
            .any(|t| {
                t.chains
                    .iter()
                    .filter(|c| c.hook.as_ref().is_some_and(|h| h.hook == "postrouting"))
                    .any(|c| {
                        c.rules.iter().any(|r| {
                            let text = kvmnet_model::nft_text::rule_text(t, r);
                            (text.contains("masquerade") || text.contains("snat"))
                                && text.contains(&needle)
                        })
                    })
            });
        if found {
            out.insert(n.name.clone());
        }
    }
    out
}

fn rate_matches(have: Option<u64>, want: u64) -> bool {
    have.is_some_and(|h| (h as f64 - want as f64).abs() <= want as f64 * 0.01)
}

fn burst_matches(have: Option<u32>, want: u32) -> bool {
    have.is_some_and(|h| (f64::from(h) - f64::from(want)).abs() <= f64::from(want) * 0.05 + 64.0)
}

/// Finds the device of each vNIC given by its VM (no `tap`): the running VM of that name
/// and its NIC with the vNIC's MAC, or its only NIC. Unresolved vNICs are left out, with a
/// note.
pub fn resolve_vnics(d: &Desired, s: &HostState) -> (Desired, Vec<String>) {
    let mut out = d.clone();
    let mut notes = vec![];
    out.vnics.retain_mut(|v| {
        if !v.tap.is_empty() {
            return true;
        }
        let Some(vm) = s.vms.iter().find(|x| x.name == v.vm) else {
            notes.push(format!(
                "vm `{}` is not running here (no libvirt domain or QEMU process of that name): its vNIC is attached once it runs",
                v.vm
            ));
            return false;
        };
        let nic = match v.mac {
            Some(m) => vm.vnics.iter().find(|n| n.mac == Some(m)),
            None if vm.vnics.len() == 1 => vm.vnics.first(),
            None => None,
        };
        match nic.and_then(|n| n.host_dev.clone()) {
            Some(dev) => {
                v.tap = dev;
                true
            }
            None => {
                notes.push(match v.mac {
                    Some(m) => format!("vm `{}` has no NIC with MAC {m} on a host device", v.vm),
                    None => format!(
                        "vm `{}` has {} NICs: give the vNIC its `mac` or `tap`",
                        v.vm,
                        vm.vnics.len()
                    ),
                });
                false
            }
        }
    });
    (out, notes)
}

/// Plans `d` against the observed host.
pub fn plan(d: &Desired, o: &Observed, force: bool) -> Result<Plan, PlanError> {
    let s = o.state;
    let (resolved, notes) = resolve_vnics(d, s);
    // Open vSwitch networks are planned on their own; the rest is Linux
    let is_ovs = |net: &str| {
        resolved
            .network(net)
            .is_some_and(|n| n.kind == NetworkType::Ovs)
    };
    let mut lin = resolved.clone();
    lin.networks.retain(|n| n.kind != NetworkType::Ovs);
    lin.vnics.retain(|v| !is_ovs(&v.network));
    let ovs = crate::ovsplan::plan_ovs(&resolved, o, force)?;
    let mut p = plan_linux(&lin, o, force, &ovs.addresses)?;
    let mut steps = ovs.removals;
    steps.append(&mut p.steps);
    steps.extend(ovs.creations);
    p.steps = steps;
    p.owned.ovs_bridges = ovs.bridges;
    p.owned.ovs_ports = ovs.ports;
    p.owned.addresses.extend(ovs.addresses);
    let mut all_notes = notes;
    all_notes.append(&mut p.notes);
    all_notes.extend(ovs.notes);
    p.notes = all_notes;
    Ok(p)
}

/// Plans the Linux part of `d` (bridges, addresses, vNICs on them, nftables, DHCP, sysctls);
/// `keep` are addresses another part of the plan owns.
fn plan_linux(
    d: &Desired,
    o: &Observed,
    force: bool,
    keep: &BTreeSet<(String, IpNet)>,
) -> Result<Plan, PlanError> {
    let s = o.state;
    let mut p = Plan {
        owned: o.owned.clone(),
        ..Default::default()
    };
    let mut steps = vec![];
    let link = |n: &str| s.link(n);

    // what the desired state wants, keyed like Owned
    let want_bridges: BTreeSet<String> = d.networks.iter().map(|n| n.bridge.clone()).collect();
    let mut want_addrs: BTreeSet<(String, IpNet)> = BTreeSet::new();
    for n in &d.networks {
        if let Some(g) = n.gateway {
            want_addrs.insert((n.bridge.clone(), g));
        }
        if let Some(v6) = n.ipv6 {
            want_addrs.insert((n.bridge.clone(), v6));
        }
    }
    let mut want_ports: BTreeMap<String, String> = BTreeMap::new();
    for n in &d.networks {
        for port in &n.ports {
            want_ports.insert(port.clone(), n.bridge.clone());
        }
    }
    for v in &d.vnics {
        if let Some(n) = d.network(&v.network) {
            want_ports.insert(v.tap.clone(), n.bridge.clone());
        }
    }
    let want_rate: BTreeSet<String> = d
        .vnics
        .iter()
        .filter(|v| v.qos.is_some())
        .map(|v| v.tap.clone())
        .collect();
    let want_dhcp: BTreeMap<String, (String, String)> = d
        .networks
        .iter()
        .filter_map(|n| render::dnsmasq_conf(n).map(|c| (n.name.clone(), (n.bridge.clone(), c))))
        .collect();
    let ups = uplinks(d, s);
    let ext: BTreeSet<String> = external_nat(d, s)
        .into_iter()
        .filter(|n| d.network(n).is_some_and(|x| x.kind == NetworkType::Nat))
        .collect();
    for n in &ext {
        p.notes.push(format!(
            "network `{n}`: the host already masquerades its subnet (another tool's rule): kvmnet adds no second one"
        ));
    }
    let mut want_tables: BTreeMap<String, String> = BTreeMap::new();
    if let Some(t) = render::inet_table(
        d,
        &ups,
        &ext,
        s.sysctls.ip_forward == Some(true)
            || d.networks
                .iter()
                .any(|n| matches!(n.kind, NetworkType::Nat | NetworkType::Routed)),
    ) {
        want_tables.insert(format!("inet {TABLE}"), t);
    }
    if let Some(t) = render::bridge_table(d) {
        want_tables.insert(format!("bridge {TABLE}"), t);
    }

    // VLAN tags need a bridge that can filter VLANs
    if let Some(v) = d.vnics.iter().find(|v| v.vlan.is_some()) {
        if o.vlan_capable {
            return Err(PlanError::Conflict(format!(
                "vm `{}` ({}): VLAN tags on Linux-bridge networks are not supported by kvmnet yet; leave `vlan` out",
                v.vm, v.tap
            )));
        } else {
            return Err(PlanError::Conflict(format!(
                "vm `{}` ({}): VLAN {} needs 802.1Q filtering on the Linux bridge (vlan_filtering), which this kernel lacks (CONFIG_BRIDGE_VLAN_FILTERING)",
                v.vm,
                v.tap,
                v.vlan.unwrap_or(0)
            )));
        }
    }

    // ---- removals of what kvmnet owns and no longer wants
    for net in o.owned.dhcp.iter() {
        if !want_dhcp.contains_key(net) {
            steps.push(PlanStep::StopDhcp {
                network: net.clone(),
            });
            p.owned.dhcp.remove(net);
        }
    }
    for key in o.owned.nft_tables.keys() {
        if !want_tables.contains_key(key) {
            if let Some((family, name)) = key.split_once(' ') {
                steps.push(PlanStep::DeleteNftTable {
                    family: family.into(),
                    name: name.into(),
                });
            }
            p.owned.nft_tables.remove(key);
        }
    }
    for tap in o.owned.rate_limits.iter() {
        if !want_rate.contains(tap) {
            if link(tap).is_some() {
                steps.push(PlanStep::DelRateLimit {
                    ifname: tap.clone(),
                });
            }
            p.owned.rate_limits.remove(tap);
        }
    }
    for (ifname, bridge) in o.owned.ports.iter() {
        if want_ports.get(ifname) != Some(bridge) {
            let still = link(ifname).and_then(|l| l.master.as_deref()) == Some(bridge.as_str());
            // a port of a bridge that goes away is released with it
            let bridge_goes = o.owned.bridges.contains(bridge) && !want_bridges.contains(bridge);
            if still && !want_ports.contains_key(ifname) && !bridge_goes {
                steps.push(PlanStep::NoMaster {
                    ifname: ifname.clone(),
                });
            }
            p.owned.ports.remove(ifname);
        }
    }
    for (ifname, a) in o.owned.addresses.iter() {
        if !want_addrs.contains(&(ifname.clone(), *a)) && !keep.contains(&(ifname.clone(), *a)) {
            let present = s
                .addresses_of(ifname)
                .any(|x| x.address == a.addr() && x.prefix_len == a.prefix_len());
            let bridge_goes = o.owned.bridges.contains(ifname) && !want_bridges.contains(ifname);
            if present && !bridge_goes {
                steps.push(PlanStep::DelAddress {
                    ifname: ifname.clone(),
                    address: *a,
                });
            }
            p.owned.addresses.remove(&(ifname.clone(), *a));
        }
    }
    for b in o.owned.bridges.iter() {
        if !want_bridges.contains(b) {
            if link(b).is_some() {
                steps.push(PlanStep::DeleteLink { name: b.clone() });
            }
            p.owned.bridges.remove(b);
        }
    }

    // ---- sysctls
    let forwarding = d
        .networks
        .iter()
        .any(|n| matches!(n.kind, NetworkType::Nat | NetworkType::Routed));
    let v6_forwarding = d
        .networks
        .iter()
        .any(|n| matches!(n.kind, NetworkType::Nat | NetworkType::Routed) && n.ipv6.is_some());
    let mut sysctl = |key: &str, want: bool, have: Option<bool>, steps: &mut Vec<PlanStep>| {
        if want {
            if have != Some(true) {
                steps.push(PlanStep::SetSysctl {
                    key: key.into(),
                    value: "1".into(),
                });
                p.owned
                    .sysctls
                    .entry(key.to_string())
                    .or_insert_with(|| if have == Some(false) { "0" } else { "1" }.to_string());
            }
        } else if let Some(orig) = o.owned.sysctls.get(key) {
            if have != Some(orig == "1") {
                steps.push(PlanStep::SetSysctl {
                    key: key.into(),
                    value: orig.clone(),
                });
            }
            p.owned.sysctls.remove(key);
        }
    };
    sysctl(
        "net.ipv4.ip_forward",
        forwarding,
        s.sysctls.ip_forward,
        &mut steps,
    );
    sysctl(
        "net.ipv6.conf.all.forwarding",
        v6_forwarding,
        s.sysctls.ipv6_forwarding,
        &mut steps,
    );
    // an uplink with forwarding switched off on its own
    for up in ups.values().flatten() {
        if forwarding && s.sysctls.ip_forward == Some(true) {
            if let Some(false) = s.sysctls.interfaces.get(up).and_then(|i| i.forwarding) {
                let key = format!("net.ipv4.conf.{up}.forwarding");
                steps.push(PlanStep::SetSysctl {
                    key: key.clone(),
                    value: "1".into(),
                });
                p.owned.sysctls.entry(key).or_insert_with(|| "0".into());
            }
        }
    }

    // ---- networks: bridges, their ports, addresses, up
    for n in &d.networks {
        match link(&n.bridge) {
            None => {
                steps.push(PlanStep::CreateBridge {
                    name: n.bridge.clone(),
                    mtu: n.mtu,
                    stp: n.stp,
                });
                p.owned.bridges.insert(n.bridge.clone());
            }
            Some(l) if l.kind != LinkKind::Bridge => {
                return Err(PlanError::Conflict(format!(
                    "network `{}`: {} exists and is a {} link, not a bridge",
                    n.name,
                    n.bridge,
                    l.kind.as_str()
                )))
            }
            Some(l) => {
                let stp_on = l.bridge.as_ref().is_some_and(|b| b.stp_state != 0);
                if stp_on != n.stp {
                    steps.push(PlanStep::SetBridgeStp {
                        name: n.bridge.clone(),
                        stp: n.stp,
                    });
                }
                if let Some(m) = n.mtu {
                    if l.mtu != m {
                        steps.push(PlanStep::SetMtu {
                            ifname: n.bridge.clone(),
                            mtu: m,
                        });
                    }
                }
            }
        }
        if let Some(u) = ups.get(&n.name).cloned().flatten() {
            if link(&u).is_none() {
                return Err(PlanError::Conflict(format!(
                    "network `{}`: uplink {u} does not exist",
                    n.name
                )));
            }
        } else if n.kind == NetworkType::Nat {
            p.notes.push(format!(
                "network `{}`: no uplink given and no default route: masquerading out of any interface",
                n.name
            ));
        }
        for port in &n.ports {
            let Some(l) = link(port) else {
                return Err(PlanError::Conflict(format!(
                    "network `{}`: port {port} does not exist",
                    n.name
                )));
            };
            if let Some(m) = &o.management {
                if &m.1 == port && !force {
                    return Err(PlanError::Management(format!(
                        "network `{}` puts {port} into bridge {}, but {port} carries this session's address {}: its address would stop working",
                        n.name, n.bridge, m.0
                    )));
                }
            }
            if l.master.as_deref() != Some(n.bridge.as_str()) {
                if let Some(other) = &l.master {
                    return Err(PlanError::Conflict(format!(
                        "network `{}`: port {port} is already in {other}",
                        n.name
                    )));
                }
                steps.push(PlanStep::SetMaster {
                    ifname: port.clone(),
                    master: n.bridge.clone(),
                });
                p.owned.ports.insert(port.clone(), n.bridge.clone());
            }
            if !l.admin_up {
                steps.push(PlanStep::LinkUp {
                    ifname: port.clone(),
                });
            }
        }
        for a in [n.gateway, n.ipv6].into_iter().flatten() {
            let present = s
                .addresses_of(&n.bridge)
                .any(|x| x.address == a.addr() && x.prefix_len == a.prefix_len());
            if !present {
                // the same address elsewhere on the host would answer ARP for both
                if let Some(other) = s
                    .addresses
                    .iter()
                    .find(|x| x.address == a.addr() && x.ifname != n.bridge)
                {
                    return Err(PlanError::Conflict(format!(
                        "network `{}`: address {} is already on {}",
                        n.name,
                        a.addr(),
                        other.ifname
                    )));
                }
                steps.push(PlanStep::AddAddress {
                    ifname: n.bridge.clone(),
                    address: a,
                });
                p.owned.addresses.insert((n.bridge.clone(), a));
            }
        }
        if link(&n.bridge).is_none_or(|l| !l.admin_up) {
            steps.push(PlanStep::LinkUp {
                ifname: n.bridge.clone(),
            });
        }
    }

    // ---- vNICs
    for v in &d.vnics {
        let Some(n) = d.network(&v.network) else {
            continue;
        };
        let Some(l) = link(&v.tap) else {
            p.notes.push(format!(
                "vm `{}`: {} does not exist yet; run apply again once the VM runs",
                v.vm, v.tap
            ));
            continue;
        };
        if let (Some(m), Some(mac)) = (&l.mac, &v.mac) {
            // the host side of a tap has its own MAC; a veth's peer carries the guest's: only
            // an identical MAC on the host side is a sign of a mix-up
            if m == mac && l.kind == LinkKind::Tap {
                p.notes.push(format!(
                    "vm `{}`: the host side {} has the guest's MAC {mac}",
                    v.vm, v.tap
                ));
            }
        }
        let mtu = v.mtu.or(n.mtu);
        if let Some(m) = mtu {
            if l.mtu != m {
                steps.push(PlanStep::SetMtu {
                    ifname: v.tap.clone(),
                    mtu: m,
                });
            }
        }
        if l.master.as_deref() != Some(n.bridge.as_str()) {
            steps.push(PlanStep::SetMaster {
                ifname: v.tap.clone(),
                master: n.bridge.clone(),
            });
            p.owned.ports.insert(v.tap.clone(), n.bridge.clone());
        }
        if !l.admin_up {
            steps.push(PlanStep::LinkUp {
                ifname: v.tap.clone(),
            });
        }
        if let Some((rate, burst)) = v.qos {
            let q = s
                .qdiscs
                .iter()
                .find(|q| q.ifname == v.tap && q.parent == "root");
            let ok = q.is_some_and(|q| {
                q.kind == "tbf"
                    && rate_matches(q.rate_bps, rate)
                    && burst_matches(q.burst_bytes, burst)
            });
            if !ok {
                steps.push(PlanStep::SetRateLimit {
                    ifname: v.tap.clone(),
                    rate_bps: rate,
                    burst_bytes: burst,
                });
            }
            p.owned.rate_limits.insert(v.tap.clone());
        }
    }

    // ---- nftables: one atomic replace per table whose content changed
    for (key, script) in &want_tables {
        let h = fnv(script);
        let (family, name) = key.split_once(' ').unwrap_or(("inet", TABLE));
        let present = s
            .nftables
            .tables
            .iter()
            .any(|t| t.family.as_str() == family && t.name == name);
        if !(present && o.owned.nft_tables.get(key) == Some(&h)) {
            steps.push(PlanStep::ReplaceNftTable {
                family: family.into(),
                name: name.into(),
                script: script.clone(),
            });
        }
        p.owned.nft_tables.insert(key.clone(), h);
    }

    // ---- DHCP
    for (net, (bridge, conf)) in &want_dhcp {
        let running = o
            .dhcp
            .get(net)
            .is_some_and(|c| c.starts_with(conf.as_str()));
        if !running {
            steps.push(PlanStep::StartDhcp {
                network: net.clone(),
                bridge: bridge.clone(),
                config: conf.clone(),
            });
        }
        p.owned.dhcp.insert(net.clone());
    }

    // ---- the management guard over every removal
    if let (Some((addr, ifname)), false) = (&o.management, force) {
        for st in &steps {
            let hit = match st {
                PlanStep::DelAddress { ifname: i, address } => {
                    i == ifname && address.addr() == *addr
                }
                PlanStep::DeleteLink { name } => name == ifname,
                PlanStep::LinkDown { ifname: i } | PlanStep::NoMaster { ifname: i } => i == ifname,
                _ => false,
            };
            if hit {
                return Err(PlanError::Management(format!(
                    "`{}` would remove or move {addr} on {ifname}",
                    st.describe()
                )));
            }
        }
    }
    p.steps = steps;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{validate, Config};
    use kvmnet_model::ip::{Address, Route, RouteKind, RT_TABLE_MAIN};
    use kvmnet_model::Link;

    fn desired(y: &str) -> Desired {
        let mut c = Config::default();
        c.add_source("t.yaml".into(), y.to_string()).unwrap();
        validate(&c).unwrap()
    }

    fn host() -> HostState {
        let mut s = HostState::default();
        let mut up = Link::new(2, "uplink", LinkKind::Veth);
        up.admin_up = true;
        s.links.push(up);
        for (i, n) in ["vnet1", "vnet2"].iter().enumerate() {
            let mut l = Link::new(3 + i as u32, n, LinkKind::Tap);
            l.admin_up = false;
            s.links.push(l);
        }
        s.addresses.push(Address {
            ifname: "uplink".into(),
            ifindex: 2,
            address: "198.51.100.2".parse().unwrap(),
            prefix_len: 24,
            scope: "global".into(),
            flags: vec![],
        });
        s.routes.push(Route {
            table: RT_TABLE_MAIN,
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("198.51.100.1".parse().unwrap()),
            dev: Some("uplink".into()),
            prefsrc: None,
            metric: None,
            kind: RouteKind::Unicast,
            protocol: "boot".into(),
            scope: "global".into(),
            nexthops: vec![],
            mtu: None,
        });
        s.sysctls.ip_forward = Some(false);
        s
    }

    const NAT: &str = "networks:\n  - name: lan\n    type: nat\n    bridge: kvbr0\n    subnet: 10.10.0.0/24\nvnics:\n  - vm: a\n    tap: vnet1\n    network: lan\n";

    fn obs<'a>(
        s: &'a HostState,
        owned: &'a Owned,
        dhcp: &'a BTreeMap<String, String>,
    ) -> Observed<'a> {
        Observed {
            state: s,
            owned,
            dhcp,
            management: None,
            vlan_capable: false,
        }
    }

    #[test]
    fn a_nat_network_from_scratch_in_dependency_order() {
        let s = host();
        let (o, dh) = (Owned::default(), BTreeMap::new());
        let p = plan(&desired(NAT), &obs(&s, &o, &dh), false).unwrap();
        let d: Vec<String> = p.steps.iter().map(|x| x.describe()).collect();
        assert_eq!(
            d,
            [
                "sysctl net.ipv4.ip_forward = 1",
                "create bridge kvbr0",
                "address 10.10.0.1/24 on kvbr0",
                "link kvbr0 up",
                "link vnet1 master kvbr0",
                "link vnet1 up",
                "nft table inet kvmnet_cfg: load 1 rule",
            ]
        );
        let PlanStep::ReplaceNftTable { script, .. } = &p.steps[6] else {
            panic!()
        };
        // the uplink comes from the default route
        assert!(
            script.contains(
                "ip saddr 10.10.0.0/24 ip daddr != 10.10.0.0/24 oifname \"uplink\" masquerade"
            ),
            "{script}"
        );
        assert!(p.owned.bridges.contains("kvbr0"));
        assert_eq!(
            p.owned
                .sysctls
                .get("net.ipv4.ip_forward")
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn dropping_the_network_removes_only_what_kvmnet_made() {
        let s = host();
        let (o0, dh) = (Owned::default(), BTreeMap::new());
        let first = plan(&desired(NAT), &obs(&s, &o0, &dh), false).unwrap();
        // the host as the first plan left it
        let mut s2 = host();
        let mut br = Link::new(9, "kvbr0", LinkKind::Bridge);
        br.admin_up = true;
        s2.links.push(br);
        s2.sysctls.ip_forward = Some(true);
        let p = plan(
            &desired("networks: []\n"),
            &obs(&s2, &first.owned, &dh),
            false,
        )
        .unwrap();
        let d: Vec<String> = p.steps.iter().map(|x| x.describe()).collect();
        assert_eq!(
            d,
            [
                "nft: delete table inet kvmnet_cfg",
                "delete link kvbr0",
                "sysctl net.ipv4.ip_forward = 0",
            ]
        );
        assert_eq!(p.owned, Owned::default());
        // a bridge kvmnet did not make is never deleted
        let p = plan(&desired("networks: []\n"), &obs(&s2, &o0, &dh), false).unwrap();
        assert!(p.steps.is_empty(), "{:?}", p.steps);
    }

    #[test]
    fn foreign_masquerade_is_respected_and_conflicts_are_refused() {
        let mut s = host();
        // a non-bridge of the same name
        s.links.push(Link::new(9, "kvbr0", LinkKind::Veth));
        let (o, dh) = (Owned::default(), BTreeMap::new());
        let e = plan(&desired(NAT), &obs(&s, &o, &dh), false).unwrap_err();
        assert!(e.to_string().contains("not a bridge"), "{e}");
        // a VLAN where the bridge cannot tag
        let s = host();
        let y = NAT.replace("network: lan\n", "network: lan\n    vlan: 10\n");
        let e = plan(&desired(&y), &obs(&s, &o, &dh), false).unwrap_err();
        assert!(e.to_string().contains("vlan_filtering"), "{e}");
    }

    #[test]
    fn a_vnic_without_tap_is_found_through_its_vm() {
        use kvmnet_model::vm::{Vm, VmSource, VmState, Vnic as ModelVnic};
        let mut s = host();
        let mut vm = Vm {
            name: "web1".into(),
            source: VmSource::Libvirt,
            uuid: None,
            state: VmState::Running,
            pid: None,
            netns: None,
            vnics: vec![],
            guest: None,
            vcpus: None,
            agent: None,
        };
        vm.vnics.push(ModelVnic {
            mac: Some("52:54:00:00:00:07".parse().unwrap()),
            host_dev: Some("vnet2".into()),
            ..Default::default()
        });
        s.vms.push(vm);
        let y = "networks:\n  - name: lan\n    type: isolated\n    bridge: kvbr0\n    subnet: 10.10.0.0/24\nvnics:\n  - vm: web1\n    network: lan\n    mac: 52:54:00:00:00:07\n  - vm: db1\n    network: lan\n";
        let (o, dh) = (Owned::default(), BTreeMap::new());
        let p = plan(&desired(y), &obs(&s, &o, &dh), false).unwrap();
        assert!(
            p.steps.contains(&PlanStep::SetMaster {
                ifname: "vnet2".into(),
                master: "kvbr0".into()
            }),
            "{:?}",
            p.steps
        );
        assert!(
            p.notes.iter().any(|n| n.contains("`db1` is not running")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn the_management_session_is_guarded() {
        let s = host();
        let (o, dh) = (Owned::default(), BTreeMap::new());
        let mut ob = obs(&s, &o, &dh);
        ob.management = Some(("198.51.100.2".parse().unwrap(), "uplink".into()));
        let y =
            "networks:\n  - name: wan\n    type: bridged\n    bridge: kvbr1\n    ports: [uplink]\n";
        let e = plan(&desired(y), &ob, false).unwrap_err();
        assert!(matches!(e, PlanError::Management(_)), "{e}");
        assert!(plan(&desired(y), &ob, true).is_ok());
    }
}
