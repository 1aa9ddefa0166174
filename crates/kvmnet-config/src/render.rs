//! What kvmnet writes for a desired state besides netlink objects: its nftables tables (NAT,
//! isolation, port forwards, firewall in `inet kvmnet_cfg`; anti-spoofing in
//! `bridge kvmnet_cfg`) and each network's dnsmasq configuration.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::desired::{Desired, FwRule, FwTarget, Net};
use crate::schema::NetworkType;

/// The name of kvmnet's configuration tables (in the `inet` and `bridge` families).
pub const TABLE: &str = "kvmnet_cfg";

fn set<T: std::fmt::Display>(items: &[T]) -> String {
    if items.len() == 1 {
        items[0].to_string()
    } else {
        format!(
            "{{ {} }}",
            items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn family_of(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn rule_match(r: &FwRule) -> String {
    let mut m = String::new();
    let v4: Vec<&IpNet> = r.from.iter().filter(|n| n.addr().is_ipv4()).collect();
    if !v4.is_empty() {
        let _ = write!(m, "ip saddr {} ", set(&v4));
    }
    match r.proto.as_deref() {
        Some("icmp") => m.push_str("ip protocol icmp "),
        Some(p) if !r.ports.is_empty() => {
            let ports: Vec<String> = r
                .ports
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let _ = write!(m, "{p} dport {} ", set(&ports));
        }
        Some(p) => {
            let _ = write!(m, "meta l4proto {p} ");
        }
        None => {}
    }
    m
}

/// The `inet kvmnet_cfg` table for `d`, given each network's uplink (None: any interface), the
/// NAT networks another tool already masquerades, and whether the host forwards at all; or
/// None when nothing needs it.
pub fn inet_table(
    d: &Desired,
    uplinks: &BTreeMap<String, Option<String>>,
    external_nat: &std::collections::BTreeSet<String>,
    forwarding: bool,
) -> Option<String> {
    let mut forward = String::new();
    let mut pre = String::new();
    let mut out = String::new();
    let mut post = String::new();
    for n in &d.networks {
        let br = &n.bridge;
        match n.kind {
            NetworkType::Nat if external_nat.contains(&n.name) => {}
            NetworkType::Nat => {
                if let Some(s) = n.subnet {
                    let fam = family_of(&s.addr());
                    let oif = uplinks
                        .get(&n.name)
                        .cloned()
                        .flatten()
                        .map(|u| format!("oifname \"{u}\" "))
                        .unwrap_or_default();
                    let _ = writeln!(
                        post,
                        "\t\t{fam} saddr {s} {fam} daddr != {s} {oif}masquerade comment \"network {}\"",
                        n.name
                    );
                }
            }
            // nothing to keep out when the host forwards nothing
            NetworkType::Isolated if !forwarding => {}
            NetworkType::Isolated => {
                let _ = writeln!(
                    forward,
                    "\t\tiifname \"{br}\" oifname != \"{br}\" drop comment \"network {} is isolated\"",
                    n.name
                );
                let _ = writeln!(
                    forward,
                    "\t\toifname \"{br}\" iifname != \"{br}\" drop comment \"network {} is isolated\"",
                    n.name
                );
            }
            NetworkType::Routed | NetworkType::Bridged | NetworkType::Ovs => {}
        }
    }
    for f in &d.forwards {
        let Some(net) = d.network(&f.network) else {
            continue;
        };
        let br = &net.bridge;
        let fam = family_of(&f.to);
        let from: Vec<&IpNet> = f.from.iter().collect();
        let src = if from.is_empty() {
            String::new()
        } else {
            format!("{fam} saddr {} ", set(&from))
        };
        let dest = if f.to.is_ipv6() {
            format!("[{}]:{}", f.to, f.to_port)
        } else {
            format!("{}:{}", f.to, f.to_port)
        };
        let iif = if f.hairpin {
            String::new()
        } else {
            format!("iifname != \"{br}\" ")
        };
        let _ = writeln!(
            pre,
            "\t\t{iif}fib daddr type local {src}{} dport {} dnat {fam} to {dest} comment \"forward {} {}\"",
            f.proto, f.host_port, f.proto, f.host_port
        );
        if f.hairpin {
            let _ = writeln!(
                out,
                "\t\tfib daddr type local {} dport {} dnat {fam} to {dest} comment \"forward {} {} from the host\"",
                f.proto, f.host_port, f.proto, f.host_port
            );
            if let Some(s) = net.subnet {
                let _ = writeln!(
                    post,
                    "\t\t{fam} saddr {s} {fam} daddr {} {} dport {} ct status dnat masquerade comment \"hairpin {} {}\"",
                    f.to, f.proto, f.to_port, f.proto, f.host_port
                );
            }
        }
    }
    for fw in &d.firewall {
        let (br, daddr, what, net) = match &fw.target {
            FwTarget::Network(name) => {
                let Some(n) = d.network(name) else { continue };
                (n.bridge.clone(), None, format!("network {name}"), n)
            }
            FwTarget::Vm(vm) => {
                let Some(nic) = d.vnics.iter().find(|v| &v.vm == vm) else {
                    continue;
                };
                let Some(n) = d.network(&nic.network) else {
                    continue;
                };
                (n.bridge.clone(), nic.ip, format!("vm {vm}"), n)
            }
        };
        let _ = net;
        // routed traffic toward these guests from outside their network: guests of one
        // network talk freely (bridged frames reach this hook only with br_netfilter, so
        // rules on them would depend on a sysctl)
        let to = match daddr {
            Some(ip) => format!(
                "oifname \"{br}\" iifname != \"{br}\" {} daddr {ip} ",
                family_of(&ip)
            ),
            None => format!("oifname \"{br}\" iifname != \"{br}\" "),
        };
        let _ = writeln!(
            forward,
            "\t\t{to}ct state established,related accept comment \"{what}\""
        );
        for r in fw.rules.iter().filter(|r| !r.allow) {
            let _ = writeln!(forward, "\t\t{to}{}drop comment \"{what}\"", rule_match(r));
        }
        for r in fw.rules.iter().filter(|r| r.allow) {
            let _ = writeln!(
                forward,
                "\t\t{to}{}accept comment \"{what}\"",
                rule_match(r)
            );
        }
        if fw.drop_by_default {
            // port forwards to these guests stay open
            let _ = writeln!(forward, "\t\t{to}ct status dnat accept comment \"{what}\"");
            let _ = writeln!(forward, "\t\t{to}drop comment \"{what}: policy\"");
        }
    }
    if forward.is_empty() && pre.is_empty() && out.is_empty() && post.is_empty() {
        return None;
    }
    let mut t = format!("table inet {TABLE} {{\n");
    let chain = |t: &mut String, name: &str, hook: &str, prio: &str, body: &str| {
        if !body.is_empty() {
            let _ = write!(
                t,
                "\tchain {name} {{\n\t\ttype {hook} priority {prio}; policy accept;\n{body}\t}}\n"
            );
        }
    };
    chain(&mut t, "forward", "filter hook forward", "filter", &forward);
    chain(&mut t, "prerouting", "nat hook prerouting", "dstnat", &pre);
    chain(&mut t, "output", "nat hook output", "-100", &out);
    chain(
        &mut t,
        "postrouting",
        "nat hook postrouting",
        "srcnat",
        &post,
    );
    t.push_str("}\n");
    Some(t)
}

/// The `bridge kvmnet_cfg` table: per anti-spoofed vNIC, only its MAC and IP may leave the tap.
pub fn bridge_table(d: &Desired) -> Option<String> {
    let mut body = String::new();
    for v in d.vnics.iter().filter(|v| v.antispoof) {
        let (Some(mac), Some(ip)) = (v.mac, v.ip) else {
            continue;
        };
        let tap = &v.tap;
        let ipv6 = d.network(&v.network).and_then(|n| n.ipv6).is_some();
        let _ = writeln!(
            body,
            "\t\tiifname \"{tap}\" ether saddr != {mac} drop comment \"{} antispoof\"",
            v.vm
        );
        if ip.is_ipv4() {
            // 0.0.0.0: DHCP requests and duplicate-address probes before the guest has one
            let _ = writeln!(
                body,
                "\t\tiifname \"{tap}\" ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} drop comment \"{} antispoof\"",
                v.vm
            );
            let _ = writeln!(
                body,
                "\t\tiifname \"{tap}\" ether type ip ip saddr != {{ 0.0.0.0, {ip} }} drop comment \"{} antispoof\"",
                v.vm
            );
            if !ipv6 {
                let _ = writeln!(
                    body,
                    "\t\tiifname \"{tap}\" ether type ip6 drop comment \"{} antispoof (no IPv6 declared)\"",
                    v.vm
                );
            }
        }
    }
    if body.is_empty() {
        return None;
    }
    Some(format!(
        "table bridge {TABLE} {{\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority -200; policy accept;\n{body}\t}}\n}}\n"
    ))
}

/// The dnsmasq configuration of a network with DHCP (paths for its PID and lease files are
/// added by the apply path).
pub fn dnsmasq_conf(n: &Net) -> Option<String> {
    let dh = n.dhcp.as_ref()?;
    let gw = n.gateway?;
    let mut c = String::new();
    let _ = writeln!(c, "# kvmnet: DHCP and DNS for network {}", n.name);
    c.push_str("strict-order\nexcept-interface=lo\nbind-dynamic\nno-hosts\ndhcp-authoritative\n");
    let _ = writeln!(c, "interface={}", n.bridge);
    let mask = match gw {
        IpNet::V4(v) => v.netmask().to_string(),
        IpNet::V6(_) => String::new(),
    };
    let _ = writeln!(
        c,
        "dhcp-range={},{},{mask},{}",
        dh.start, dh.end, dh.lease_secs
    );
    let _ = writeln!(c, "dhcp-option=option:router,{}", gw.addr());
    let _ = writeln!(c, "dhcp-option=option:dns-server,{}", gw.addr());
    for h in &dh.hosts {
        match &h.name {
            Some(name) => {
                let _ = writeln!(c, "dhcp-host={},{},{name}", h.mac, h.ip);
            }
            None => {
                let _ = writeln!(c, "dhcp-host={},{}", h.mac, h.ip);
            }
        }
    }
    if !n.dns_forwarders.is_empty() {
        c.push_str("no-resolv\n");
        for f in &n.dns_forwarders {
            let _ = writeln!(c, "server={f}");
        }
    }
    Some(c)
}
