//! `kvmnet show` as text: the VM view (VM -> vNIC -> host device -> bridge -> uplink), then one
//! table per section.

use std::fmt::Write;

use kvmnet_model::ip::{RouteKind, RT_TABLE_LOCAL};
use kvmnet_model::nft_text::rule_text;
use kvmnet_model::vm::VnicType;
use kvmnet_model::{HostState, Link, LinkKind};

use crate::cli::Section;
use crate::render::table::{heading, new_table, table_text};

/// What to render.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    pub sections: Vec<Section>,
    pub all: bool,
    pub color: bool,
}

impl ShowOptions {
    fn wants(&self, s: Section) -> bool {
        self.sections.is_empty() || self.sections.contains(&s)
    }
}

use kvmnet_model::ip::table_name;

/// The interface a bridge's traffic leaves the host through: the default route's device.
fn uplink_name(s: &HostState) -> Option<String> {
    s.default_route(false)
        .or_else(|| s.default_route(true))
        .and_then(|r| r.devices().first().map(|d| d.to_string()))
}

fn dev_state(l: Option<&Link>) -> String {
    match l {
        Some(l) => l.state_word(),
        None => "missing".into(),
    }
}

fn vms_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("VMs", o.color));
    if s.vms.is_empty() {
        let _ = writeln!(
            out,
            "  (no VMs found: no libvirt domains, qemu processes or namespace guests)\n"
        );
        return;
    }
    let uplink = uplink_name(s);
    let mut t = new_table(
        &[
            "VM",
            "STATE",
            "NIC",
            "MAC",
            "ADDRESSES",
            "HOST DEV",
            "BRIDGE",
            "UPLINK",
        ],
        o.color,
    );
    for vm in &s.vms {
        if vm.vnics.is_empty() {
            t.add_row(vec![
                vm.name.clone(),
                vm.state.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for (i, n) in vm.vnics.iter().enumerate() {
            let host = n.host_dev.as_deref().and_then(|d| s.link(d));
            let bridge = host
                .and_then(|h| h.master.clone())
                .or_else(|| n.source_bridge.clone());
            let bridge_link = bridge.as_deref().and_then(|b| s.link(b));
            let nic = match (&n.guest_ifname, &n.model) {
                (Some(g), Some(m)) => format!("{g} ({m})"),
                (None, Some(m)) => m.clone(),
                (Some(g), None) => g.clone(),
                (None, None) => format!("{:?}", n.iface_type).to_lowercase(),
            };
            let addrs = n
                .addresses
                .iter()
                .map(|a| match a.prefix_len {
                    Some(p) => format!("{}/{}", a.address, p),
                    None => a.address.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let host_dev = match (&n.host_dev, n.iface_type.clone()) {
                (Some(d), _) => format!("{d} [{}]", dev_state(host)),
                (None, VnicType::User) => "(user-mode)".into(),
                (None, _) => "-".into(),
            };
            let ovs_port = n
                .host_dev
                .as_deref()
                .and_then(|d| s.ovs.as_ref().and_then(|o| o.port_of(d)));
            let bridge_txt = match (&bridge, host.map(|h| h.master.is_some())) {
                _ if ovs_port.is_some() => match ovs_port {
                    Some((b, p)) if p.is_trunk() => format!("{} [ovs, trunk]", b.name),
                    Some((b, p)) => format!("{} [ovs, VLAN {}]", b.name, p.native_vlan()),
                    None => "-".into(),
                },
                (Some(b), Some(false)) => format!("{b}? (not attached)"),
                (Some(b), _) => format!("{b} [{}]", dev_state(bridge_link)),
                (None, _) => "-".into(),
            };
            let up = uplink
                .as_ref()
                .map(|u| format!("{u} [{}]", dev_state(s.link(u))))
                .unwrap_or_else(|| "-".into());
            t.add_row(vec![
                if i == 0 {
                    vm.name.clone()
                } else {
                    String::new()
                },
                if i == 0 {
                    vm.state.to_string()
                } else {
                    String::new()
                },
                nic,
                n.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
                if addrs.is_empty() { "-".into() } else { addrs },
                host_dev,
                bridge_txt,
                up,
            ]);
        }
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn networks_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    if s.networks.is_empty() {
        return;
    }
    let _ = writeln!(out, "{}", heading("Networks", o.color));
    let mut t = new_table(
        &[
            "NAME", "ORIGIN", "FORWARD", "BRIDGE", "SUBNETS", "DHCP", "ACTIVE",
        ],
        o.color,
    );
    for n in &s.networks {
        t.add_row(vec![
            n.name.clone(),
            format!("{:?}", n.origin).to_lowercase(),
            n.forward.as_str().to_string(),
            n.bridge.clone().unwrap_or_else(|| "-".into()),
            n.ips
                .iter()
                .map(|i| i.address.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if n.has_dhcp() { "yes" } else { "no" }.into(),
            n.active
                .map(|a| if a { "yes" } else { "no" })
                .unwrap_or("-")
                .into(),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn link_details(l: &Link) -> String {
    let mut d = vec![];
    if let Some(p) = &l.veth_peer {
        let name = p.name.clone().unwrap_or_else(|| format!("if{}", p.index));
        match &p.netns {
            Some(ns) => d.push(format!("peer {name}@{ns}")),
            None if p.netnsid.is_some() => {
                d.push(format!("peer {name}@nsid{}", p.netnsid.unwrap_or(-1)))
            }
            None => d.push(format!("peer {name}")),
        }
    }
    if let Some(t) = &l.tap {
        let mut f = vec![];
        if t.multi_queue {
            f.push("multi_queue");
        }
        if t.vnet_hdr {
            f.push("vnet_hdr");
        }
        if t.persist {
            f.push("persist");
        }
        let holders = t
            .holders
            .iter()
            .map(|h| format!("{}[{}]", h.name, h.pid))
            .collect::<Vec<_>>()
            .join(",");
        d.push(format!(
            "{}{}",
            f.join(","),
            if holders.is_empty() {
                " (no process)".to_string()
            } else {
                format!(" held by {holders}")
            }
        ));
    }
    if let Some(b) = &l.bridge {
        d.push(format!(
            "stp {} vlan_filtering {}{}",
            if b.stp_enabled() { "on" } else { "off" },
            u8::from(b.vlan_filtering),
            vlan_list(&b.self_vlans)
        ));
    }
    if let Some(p) = &l.bridge_port {
        d.push(format!("port {}{}", p.state.as_str(), vlan_list(&p.vlans)));
    }
    if let Some(v) = &l.vlan {
        d.push(format!(
            "vlan {} on {}",
            v.id,
            l.parent.as_deref().unwrap_or("?")
        ));
    }
    if let Some(b) = &l.bond {
        d.push(format!("bond {} [{}]", b.mode, b.members.join(",")));
    }
    if let Some(v) = &l.vxlan {
        d.push(format!("vni {}", v.vni.unwrap_or(0)));
    }
    if let Some(m) = &l.macvlan {
        d.push(format!(
            "{} on {}",
            m.mode,
            l.parent.as_deref().unwrap_or("?")
        ));
    }
    d.join("; ")
}

/// ` vlans 10(pvid,untagged),20` for a bridge member's VLANs, or nothing.
fn vlan_list(v: &[kvmnet_model::link::BridgeVlan]) -> String {
    if v.is_empty() {
        return String::new();
    }
    let items: Vec<String> = v
        .iter()
        .map(|x| {
            let flags: Vec<&str> = [(x.pvid, "pvid"), (x.untagged, "untagged")]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| f)
                .collect();
            if flags.is_empty() {
                x.vid.to_string()
            } else {
                format!("{}({})", x.vid, flags.join(","))
            }
        })
        .collect();
    format!(" vlans {}", items.join(","))
}

fn links_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Links", o.color));
    let mut t = new_table(
        &[
            "IDX", "NAME", "KIND", "STATE", "MTU", "MAC", "MASTER", "DETAILS",
        ],
        o.color,
    );
    for l in &s.links {
        if l.kind == LinkKind::Loopback && !o.all {
            continue;
        }
        t.add_row(vec![
            l.index.to_string(),
            l.name.clone(),
            l.kind.to_string(),
            l.state_word(),
            l.mtu.to_string(),
            l.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            l.master.clone().unwrap_or_else(|| "-".into()),
            link_details(l),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn addrs_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Addresses", o.color));
    let mut t = new_table(&["DEV", "ADDRESS", "SCOPE", "FLAGS"], o.color);
    for a in &s.addresses {
        if !o.all && (a.scope == "host" || a.ifname == "lo") {
            continue;
        }
        t.add_row(vec![
            a.ifname.clone(),
            a.cidr().to_string(),
            a.scope.clone(),
            a.flags.join(","),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn routes_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Routes", o.color));
    let mut t = new_table(
        &[
            "TABLE",
            "DESTINATION",
            "VIA",
            "DEV",
            "PROTO",
            "METRIC",
            "TYPE",
        ],
        o.color,
    );
    for r in &s.routes {
        if !o.all && r.table == RT_TABLE_LOCAL {
            continue;
        }
        if !o.all && r.dst.addr().is_ipv6() && r.dst.addr().to_string().starts_with("fe80") {
            continue;
        }
        let dst = if r.is_default() {
            "default".to_string()
        } else {
            r.dst.to_string()
        };
        let via = match (&r.gateway, r.nexthops.is_empty()) {
            (Some(g), _) => g.to_string(),
            (None, false) => r
                .nexthops
                .iter()
                .map(|n| {
                    n.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into())
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => "-".into(),
        };
        t.add_row(vec![
            table_name(r.table),
            dst,
            via,
            r.devices().join(","),
            r.protocol.clone(),
            r.metric
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            if r.kind == RouteKind::Unicast {
                String::new()
            } else {
                format!("{:?}", r.kind).to_lowercase()
            },
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn rules_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Policy rules", o.color));
    let mut t = new_table(&["PRIO", "FAMILY", "SELECTOR", "ACTION"], o.color);
    for r in &s.rules {
        t.add_row(vec![
            r.priority.to_string(),
            r.family.clone(),
            r.selector_text(),
            format!("{:?} {}", r.action, table_name(r.table)).to_lowercase(),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn neigh_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Neighbours", o.color));
    let mut t = new_table(&["DEV", "ADDRESS", "LLADDR", "STATE"], o.color);
    for n in &s.neighbours {
        if !o.all && n.address.is_ipv6() && n.address.to_string().starts_with("ff") {
            continue;
        }
        t.add_row(vec![
            n.ifname.clone(),
            n.address.to_string(),
            n.lladdr
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            format!("{:?}", n.state).to_uppercase(),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn fdb_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Bridge FDB", o.color));
    let mut t = new_table(&["MAC", "PORT", "BRIDGE", "VLAN", "STATE"], o.color);
    for f in &s.fdb {
        if !o.all && (f.mac.is_multicast() || f.is_self) {
            continue;
        }
        t.add_row(vec![
            f.mac.to_string(),
            f.ifname.clone(),
            f.master.clone().unwrap_or_else(|| "-".into()),
            f.vlan.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            if f.sticky {
                format!("{} sticky", f.state)
            } else {
                f.state.clone()
            },
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "?".into())
}

fn sysctl_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Sysctls", o.color));
    let y = &s.sysctls;
    let b = |v: Option<bool>| {
        v.map(|x| if x { "1" } else { "0" }.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(
        out,
        "net.ipv4.ip_forward                      {}",
        b(y.ip_forward)
    );
    let _ = writeln!(
        out,
        "net.ipv6.conf.all.forwarding             {}",
        b(y.ipv6_forwarding)
    );
    let _ = writeln!(
        out,
        "net.bridge.bridge-nf-call-iptables       {}",
        b(y.bridge_nf_call_iptables)
    );
    let _ = writeln!(
        out,
        "net.bridge.bridge-nf-call-ip6tables      {}",
        b(y.bridge_nf_call_ip6tables)
    );
    let _ = writeln!(
        out,
        "net.bridge.bridge-nf-call-arptables      {}",
        b(y.bridge_nf_call_arptables)
    );
    let _ = writeln!(
        out,
        "net.netfilter.nf_conntrack_count/max     {}/{}",
        opt(y.nf_conntrack_count),
        opt(y.nf_conntrack_max)
    );
    let mut t = new_table(
        &[
            "INTERFACE",
            "FORWARDING",
            "RP_FILTER",
            "PROXY_ARP",
            "ARP_IGNORE",
            "ARP_ANNOUNCE",
            "V6_FWD",
            "V6_DISABLED",
        ],
        o.color,
    );
    for (name, i) in &y.interfaces {
        if !o.all && name == "lo" {
            continue;
        }
        t.add_row(vec![
            name.clone(),
            b(i.forwarding),
            opt(i.rp_filter),
            b(i.proxy_arp),
            opt(i.arp_ignore),
            opt(i.arp_announce),
            b(i.ipv6_forwarding),
            b(i.disable_ipv6),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn nft_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("nftables", o.color));
    if s.nftables.tables.is_empty() {
        let _ = writeln!(out, "  (empty ruleset)\n");
        return;
    }
    for t in &s.nftables.tables {
        let rules: usize = t.chains.iter().map(|c| c.rules.len()).sum();
        let _ = writeln!(
            out,
            "table {} {}: {} chains, {} rules, {} sets",
            t.family,
            t.name,
            t.chains.len(),
            rules,
            t.sets.iter().filter(|s| !s.has_flag("anonymous")).count()
        );
        for c in &t.chains {
            match &c.hook {
                Some(h) => {
                    let _ = writeln!(
                        out,
                        "  chain {} (hook {} priority {} type {} policy {}): {} rules",
                        c.name,
                        h.hook,
                        h.priority,
                        h.chain_type,
                        h.policy,
                        c.rules.len()
                    );
                }
                None => {
                    let _ = writeln!(out, "  chain {}: {} rules", c.name, c.rules.len());
                }
            }
            if o.all {
                for r in &c.rules {
                    let _ = writeln!(out, "    {}  # handle {}", rule_text(t, r), r.handle);
                }
            }
        }
    }
    if !o.all {
        let _ = writeln!(out, "  (rules: kvmnet show nft --all)");
    }
    let _ = writeln!(out);
}

fn qdisc_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Qdiscs", o.color));
    let mut t = new_table(&["DEV", "KIND", "HANDLE", "PARENT", "RATE"], o.color);
    for q in &s.qdiscs {
        if !o.all && matches!(q.kind.as_str(), "noqueue" | "pfifo_fast" | "mq") {
            continue;
        }
        t.add_row(vec![
            q.ifname.clone(),
            q.kind.clone(),
            q.handle.clone(),
            q.parent.clone(),
            q.rate_bps
                .map(|r| format!("{:.1} Mbit/s", r as f64 / 1e6))
                .unwrap_or_default(),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn ovs_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let Some(ovs) = &s.ovs else {
        if o.sections.contains(&Section::Ovs) {
            let _ = writeln!(
                out,
                "{}\n  (no Open vSwitch here)\n",
                heading("Open vSwitch", o.color)
            );
        }
        return;
    };
    let _ = writeln!(
        out,
        "{}",
        heading(
            &format!(
                "Open vSwitch{} (db {}: {}, vswitchd: {})",
                ovs.version
                    .as_deref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                ovs.db,
                if ovs.db_running { "up" } else { "down" },
                if ovs.vswitchd_running {
                    "running"
                } else {
                    "not running"
                }
            ),
            o.color
        )
    );
    let mut t = new_table(&["BRIDGE", "PORT", "VLAN", "BOND", "INTERFACES"], o.color);
    for b in &ovs.bridges {
        let flows = match &b.custom_flows {
            Some(f) if !f.is_empty() => format!(" ({} custom flows)", f.len()),
            _ => String::new(),
        };
        for p in &b.ports {
            let vlan = match (p.tag, p.trunks.is_empty(), p.is_trunk()) {
                (Some(t), _, false) => format!("access {t}"),
                (tag, true, true) => format!(
                    "trunk all{}",
                    tag.map(|t| format!(" native {t}")).unwrap_or_default()
                ),
                (tag, false, true) => format!(
                    "trunk {}{}",
                    p.trunks
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    tag.map(|t| format!(" native {t}")).unwrap_or_default()
                ),
                (None, _, false) => "access 0".to_string(),
            };
            let bond = match &p.bond_mode {
                Some(m) => format!(
                    "{m}{}",
                    p.lacp
                        .as_deref()
                        .map(|l| format!(" lacp {l}"))
                        .unwrap_or_default()
                ),
                None if p.is_bond() => "bond".to_string(),
                None => String::new(),
            };
            let ifs = p
                .interfaces
                .iter()
                .map(|i| {
                    format!(
                        "{}{}{}",
                        i.name,
                        if i.kind.is_empty() || i.kind == "system" {
                            String::new()
                        } else {
                            format!(" ({})", i.kind)
                        },
                        if i.is_up() {
                            String::new()
                        } else {
                            " [down]".to_string()
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            t.add_row(vec![
                format!("{}{flows}", b.name),
                p.name.clone(),
                vlan,
                bond,
                ifs,
            ]);
        }
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn sockets_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    let _ = writeln!(out, "{}", heading("Listening sockets", o.color));
    let mut t = new_table(&["PROTO", "ADDRESS", "PORT", "PROCESS"], o.color);
    for k in &s.sockets {
        t.add_row(vec![
            k.proto.clone(),
            k.address.to_string(),
            k.port.to_string(),
            k.process
                .as_ref()
                .map(|p| format!("{}[{}]", p.name, p.pid))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let _ = writeln!(out, "{}\n", table_text(&t));
}

fn warnings_section(s: &HostState, o: &ShowOptions, out: &mut String) {
    if s.collection_warnings.is_empty() {
        return;
    }
    let _ = writeln!(out, "{}", heading("Collection warnings", o.color));
    for w in &s.collection_warnings {
        let _ = writeln!(out, "  {}: {}", w.source, w.message);
    }
    let _ = writeln!(out);
}

/// Renders `kvmnet show`.
pub fn render_show(s: &HostState, o: &ShowOptions) -> String {
    let mut out = String::new();
    let ns = s
        .netns
        .as_deref()
        .map(|n| format!(" (netns {n})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "host {}{}{}\n",
        s.hostname,
        ns,
        s.collected_at
            .as_deref()
            .map(|t| format!(", collected {t}"))
            .unwrap_or_default()
    );
    type SectionFn = fn(&HostState, &ShowOptions, &mut String);
    let sections: [(Section, SectionFn); 14] = [
        (Section::Vms, vms_section),
        (Section::Networks, networks_section),
        (Section::Links, links_section),
        (Section::Addrs, addrs_section),
        (Section::Routes, routes_section),
        (Section::Rules, rules_section),
        (Section::Neigh, neigh_section),
        (Section::Fdb, fdb_section),
        (Section::Sysctl, sysctl_section),
        (Section::Nft, nft_section),
        (Section::Qdisc, qdisc_section),
        (Section::Ovs, ovs_section),
        (Section::Sockets, sockets_section),
        (Section::Warnings, warnings_section),
    ];
    for (sec, f) in sections {
        if o.wants(sec) {
            f(s, o, &mut out);
        }
    }
    out.trim_end().to_string() + "\n"
}
