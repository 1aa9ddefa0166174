//! `kvmnet import`: the desired state that describes a host as it is (so planning it right
//! away shows no change), written in the configuration schema; and `kvmnet export libvirt`.

use std::collections::BTreeSet;
use std::fmt::Write;

use kvmnet_model::{HostState, LinkKind};

use crate::desired::{Desired, Net, Vnic};
use crate::schema::NetworkType;

/// Describes the host's bridges and their VM ports as desired state. `applied` is the desired
/// state kvmnet applied last on this host, if any: what it manages is taken from there
/// (port forwards, firewall, DHCP and QoS cannot be read back from the kernel unambiguously),
/// and only the bridges it does not know are discovered.
pub fn import(s: &HostState, applied: Option<&Desired>) -> (Desired, Vec<String>) {
    let mut d = Desired::default();
    let mut notes = vec![];
    let known: BTreeSet<String> = applied
        .map(|a| a.networks.iter().map(|n| n.bridge.clone()).collect())
        .unwrap_or_default();
    let known_taps: BTreeSet<String> = applied
        .map(|a| a.vnics.iter().map(|v| v.tap.clone()).collect())
        .unwrap_or_default();
    let vm_devs: BTreeSet<&str> = s
        .vms
        .iter()
        .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
        .collect();
    let mut bridges: Vec<_> = s
        .links
        .iter()
        .filter(|l| l.kind == LinkKind::Bridge && !known.contains(&l.name))
        .collect();
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    for b in bridges {
        let gw = s
            .addresses_of(&b.name)
            .find(|a| a.address.is_ipv4() && a.scope == "global");
        let host_ports: Vec<String> = s
            .ports_of(&b.name)
            .filter(|p| !vm_devs.contains(p.name.as_str()))
            .map(|p| p.name.clone())
            .collect();
        let name = s
            .networks
            .iter()
            .find(|n| n.bridge.as_deref() == Some(b.name.as_str()))
            .map(|n| n.name.clone())
            .unwrap_or_else(|| b.name.clone());
        let stp = b.bridge.as_ref().is_some_and(|x| x.stp_state != 0);
        let mtu = (b.mtu != 1500).then_some(b.mtu);
        let net = match gw {
            Some(a) => {
                let gw_net = ipnet::IpNet::new(a.address, a.prefix_len).ok();
                Net {
                    name,
                    kind: NetworkType::Routed,
                    bridge: b.name.clone(),
                    subnet: gw_net.map(|g| g.trunc()),
                    gateway: gw_net,
                    uplink: None,
                    ports: vec![],
                    mtu,
                    stp,
                    dhcp: None,
                    dns_forwarders: vec![],
                    ipv6: None,
                    datapath: None,
                    vlans: vec![],
                    bond_mode: None,
                    lacp: None,
                }
            }
            None if !host_ports.is_empty() => Net {
                name,
                kind: NetworkType::Bridged,
                bridge: b.name.clone(),
                subnet: None,
                gateway: None,
                uplink: None,
                ports: host_ports,
                mtu,
                stp,
                dhcp: None,
                dns_forwarders: vec![],
                ipv6: None,
                datapath: None,
                vlans: vec![],
                bond_mode: None,
                lacp: None,
            },
            None => {
                notes.push(format!(
                    "bridge {}: no address and no host port (an L2-only segment): not imported",
                    b.name
                ));
                continue;
            }
        };
        d.networks.push(net);
    }
    // the kind of each routed network: NAT when something masquerades it, isolated when
    // nothing forwards
    let ext = crate::plan::external_nat(&d, s);
    let forwarding = s.sysctls.ip_forward == Some(true);
    for n in d
        .networks
        .iter_mut()
        .filter(|n| n.kind == NetworkType::Routed)
    {
        if ext.contains(&n.name) {
            n.kind = NetworkType::Nat;
        } else if !forwarding {
            n.kind = NetworkType::Isolated;
        }
    }
    let mut macs = BTreeSet::new();
    for vm in &s.vms {
        for nic in &vm.vnics {
            let Some(dev) = nic.host_dev.as_deref() else {
                continue;
            };
            if known_taps.contains(dev) {
                continue;
            }
            let Some(master) = s.link(dev).and_then(|l| l.master.clone()) else {
                continue;
            };
            let Some(net) = d.networks.iter().find(|n| n.bridge == master) else {
                continue;
            };
            let ip = nic.addresses.iter().map(|a| a.address).find(|a| {
                net.subnet.is_some_and(|s| s.contains(a))
                    && Some(*a) != net.gateway.map(|g| g.addr())
            });
            let mac = nic.mac.filter(|m| macs.insert(*m));
            d.vnics.push(Vnic {
                vm: vm.name.clone(),
                tap: dev.to_string(),
                network: net.name.clone(),
                mac,
                ip,
                mtu: None,
                vlan: None,
                qos: None,
                antispoof: false,
            });
        }
    }
    if s.ovs.as_ref().is_some_and(|o| !o.bridges.is_empty())
        && applied.is_none_or(|a| !a.networks.iter().any(|n| n.kind == NetworkType::Ovs))
    {
        notes.push("Open vSwitch bridges kvmnet did not create are not imported".to_string());
    }
    if let Some(a) = applied {
        let mut all = a.clone();
        all.networks.extend(d.networks);
        all.vnics.extend(d.vnics);
        d = all;
    }
    if s.networks
        .iter()
        .any(|n| n.ips.iter().any(|i| !i.dhcp_ranges.is_empty()))
    {
        notes.push("DHCP served by libvirt's dnsmasq is left to libvirt: not imported".to_string());
    }
    (d, notes)
}

fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !matches!(s, "true" | "false" | "yes" | "no" | "null" | "on" | "off");
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Writes a desired state in the configuration schema.
pub fn to_yaml(d: &Desired, header: &str) -> String {
    let mut y = String::new();
    for l in header.lines() {
        let _ = writeln!(y, "# {l}");
    }
    if d.networks.is_empty() {
        y.push_str("networks: []\n");
    } else {
        y.push_str("networks:\n");
    }
    for n in &d.networks {
        let _ = writeln!(y, "  - name: {}", q(&n.name));
        let _ = writeln!(y, "    type: {}", n.kind.as_str());
        let _ = writeln!(y, "    bridge: {}", q(&n.bridge));
        if let Some(s) = n.subnet {
            let _ = writeln!(y, "    subnet: {s}");
        }
        if let Some(g) = n.gateway {
            let _ = writeln!(y, "    gateway: {}", g.addr());
        }
        if let Some(u) = &n.uplink {
            let _ = writeln!(y, "    uplink: {}", q(u));
        }
        if !n.ports.is_empty() {
            let _ = writeln!(
                y,
                "    ports: [{}]",
                n.ports.iter().map(|p| q(p)).collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(m) = n.mtu {
            let _ = writeln!(y, "    mtu: {m}");
        }
        if n.stp {
            y.push_str("    stp: true\n");
        }
        if let Some(dh) = &n.dhcp {
            let _ = writeln!(
                y,
                "    dhcp:\n      start: {}\n      end: {}\n      lease_time: {}",
                dh.start, dh.end, dh.lease_secs
            );
            if !dh.hosts.is_empty() {
                y.push_str("      hosts:\n");
                for h in &dh.hosts {
                    let _ = writeln!(y, "        - mac: \"{}\"\n          ip: {}", h.mac, h.ip);
                    if let Some(name) = &h.name {
                        let _ = writeln!(y, "          name: {}", q(name));
                    }
                }
            }
        }
        if !n.dns_forwarders.is_empty() {
            let _ = writeln!(
                y,
                "    dns:\n      forwarders: [{}]",
                n.dns_forwarders
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(v6) = n.ipv6 {
            let _ = writeln!(y, "    ipv6: {v6}");
        }
        if let Some(dp) = &n.datapath {
            let _ = writeln!(y, "    datapath: {dp}");
        }
        if !n.vlans.is_empty() {
            y.push_str("    vlans:\n");
            for v in &n.vlans {
                let _ = writeln!(y, "      - id: {}", v.id);
                if let Some(g) = v.gateway {
                    let _ = writeln!(
                        y,
                        "        subnet: {}\n        gateway: {}",
                        g.trunc(),
                        g.addr()
                    );
                }
            }
        }
        if n.bond_mode.is_some() || n.lacp.is_some() {
            y.push_str("    bond:\n");
            if let Some(m) = &n.bond_mode {
                let _ = writeln!(y, "      mode: {m}");
            }
            if let Some(l) = &n.lacp {
                let _ = writeln!(y, "      lacp: {l}");
            }
        }
    }
    if !d.vnics.is_empty() {
        y.push_str("vnics:\n");
    }
    for v in &d.vnics {
        let _ = writeln!(y, "  - vm: {}", q(&v.vm));
        if !v.tap.is_empty() {
            let _ = writeln!(y, "    tap: {}", q(&v.tap));
        }
        let _ = writeln!(y, "    network: {}", q(&v.network));
        if let Some(m) = v.mac {
            let _ = writeln!(y, "    mac: \"{m}\"");
        }
        if let Some(ip) = v.ip {
            let _ = writeln!(y, "    ip: {ip}");
        }
        if let Some(m) = v.mtu {
            let _ = writeln!(y, "    mtu: {m}");
        }
        if let Some(t) = v.vlan {
            let _ = writeln!(y, "    vlan: {t}");
        }
        if let Some((rate, burst)) = v.qos {
            let _ = writeln!(y, "    qos:\n      rate: {rate}bit\n      burst: {burst}");
        }
        if v.antispoof {
            y.push_str("    antispoof: true\n");
        }
    }
    if !d.forwards.is_empty() {
        y.push_str("port_forwards:\n");
    }
    for f in &d.forwards {
        let _ = writeln!(
            y,
            "  - proto: {}\n    host_port: {}\n    to: {}\n    to_port: {}",
            f.proto, f.host_port, f.to, f.to_port
        );
        if !f.from.is_empty() {
            let _ = writeln!(
                y,
                "    from: [{}]",
                f.from
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if f.hairpin {
            y.push_str("    hairpin: true\n");
        }
    }
    if !d.firewall.is_empty() {
        y.push_str("firewall:\n");
    }
    for fw in &d.firewall {
        let _ = match &fw.target {
            crate::desired::FwTarget::Network(n) => writeln!(y, "  - network: {}", q(n)),
            crate::desired::FwTarget::Vm(v) => writeln!(y, "  - vm: {}", q(v)),
        };
        let _ = writeln!(
            y,
            "    policy: {}",
            if fw.drop_by_default { "drop" } else { "accept" }
        );
        if !fw.rules.is_empty() {
            y.push_str("    rules:\n");
        }
        for r in &fw.rules {
            let _ = writeln!(
                y,
                "      - action: {}",
                if r.allow { "allow" } else { "deny" }
            );
            if let Some(p) = &r.proto {
                let _ = writeln!(y, "        proto: {p}");
            }
            if !r.ports.is_empty() {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("\"{a}-{b}\"")
                        }
                    })
                    .collect();
                let _ = writeln!(y, "        ports: [{}]", ports.join(", "));
            }
            if !r.from.is_empty() {
                let _ = writeln!(
                    y,
                    "        from: [{}]",
                    r.from
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    y
}

/// A libvirt network definition for one network of the desired state.
pub fn libvirt_xml(d: &Desired, name: &str) -> Option<String> {
    let n = d.network(name)?;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&apos;")
    };
    let mut x = String::new();
    let _ = writeln!(x, "<network>\n  <name>{}</name>", esc(&n.name));
    match n.kind {
        NetworkType::Nat => {
            let _ = match &n.uplink {
                Some(u) => writeln!(x, "  <forward mode='nat' dev='{}'/>", esc(u)),
                None => writeln!(x, "  <forward mode='nat'/>"),
            };
        }
        NetworkType::Routed => {
            let _ = match &n.uplink {
                Some(u) => writeln!(x, "  <forward mode='route' dev='{}'/>", esc(u)),
                None => writeln!(x, "  <forward mode='route'/>"),
            };
        }
        NetworkType::Bridged => {
            let _ = writeln!(x, "  <forward mode='bridge'/>");
        }
        NetworkType::Ovs => {
            let _ = writeln!(
                x,
                "  <forward mode='bridge'/>\n  <virtualport type='openvswitch'/>"
            );
            for v in &n.vlans {
                let _ = writeln!(
                    x,
                    "  <portgroup name='vlan{0}'>\n    <vlan>\n      <tag id='{0}'/>\n    </vlan>\n  </portgroup>",
                    v.id
                );
            }
        }
        NetworkType::Isolated => {}
    }
    let _ = writeln!(
        x,
        "  <bridge name='{}' stp='{}' delay='0'/>",
        esc(&n.bridge),
        if n.stp { "on" } else { "off" }
    );
    if let Some(m) = n.mtu {
        let _ = writeln!(x, "  <mtu size='{m}'/>");
    }
    if !n.dns_forwarders.is_empty() {
        x.push_str("  <dns>\n");
        for f in &n.dns_forwarders {
            let _ = writeln!(x, "    <forwarder addr='{f}'/>");
        }
        x.push_str("  </dns>\n");
    }
    if let Some(g) = n.gateway {
        let _ = write!(
            x,
            "  <ip address='{}' prefix='{}'",
            g.addr(),
            g.prefix_len()
        );
        match &n.dhcp {
            None => x.push_str("/>\n"),
            Some(dh) => {
                let _ = writeln!(
                    x,
                    ">\n    <dhcp>\n      <range start='{}' end='{}'>\n        <lease expiry='{}' unit='seconds'/>\n      </range>",
                    dh.start, dh.end, dh.lease_secs
                );
                for h in &dh.hosts {
                    let _ = match &h.name {
                        Some(nm) => writeln!(
                            x,
                            "      <host mac='{}' name='{}' ip='{}'/>",
                            h.mac,
                            esc(nm),
                            h.ip
                        ),
                        None => writeln!(x, "      <host mac='{}' ip='{}'/>", h.mac, h.ip),
                    };
                }
                x.push_str("    </dhcp>\n  </ip>\n");
            }
        }
    }
    if let Some(v6) = n.ipv6 {
        let _ = writeln!(
            x,
            "  <ip family='ipv6' address='{}' prefix='{}'/>",
            v6.addr(),
            v6.prefix_len()
        );
    }
    let fwd: Vec<_> = d.forwards.iter().filter(|f| f.network == n.name).collect();
    if !fwd.is_empty() {
        x.push_str("  <!-- port forwards are not part of a libvirt network definition: kvmnet applies them itself -->\n");
    }
    x.push_str("</network>\n");
    Some(x)
}
