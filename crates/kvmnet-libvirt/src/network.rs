//! libvirt network XML <-> `Network`.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use kvmnet_model::network::{
    DhcpHost, DhcpRange, ForwardMode, Network, NetworkIp, NetworkOrigin, PortGroup,
};
use kvmnet_model::MacAddr;
use roxmltree::{Document, Node};

use crate::xml::{child, child_attr, child_text, children, line_of, parse_xml, XmlError};

/// Parses a `<network>` document.
pub fn parse_network(text: &str) -> Result<Network, XmlError> {
    let doc = parse_xml(text)?;
    network_from(&doc, doc.root_element())
}

fn invalid(doc: &Document, node: Node, reason: String) -> XmlError {
    XmlError::Invalid {
        line: line_of(doc, node),
        element: node.tag_name().name().to_string(),
        reason,
    }
}

fn netmask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let v = u32::from(mask);
    let p = v.leading_ones();
    (v.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
}

fn tags(node: Node) -> Vec<u16> {
    child(node, "vlan")
        .map(|v| {
            children(v, "tag")
                .filter_map(|t| t.attribute("id").and_then(|i| i.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn network_from(doc: &Document, root: Node) -> Result<Network, XmlError> {
    let net = if root.tag_name().name() == "networkstatus" {
        child(root, "network").ok_or_else(|| invalid(doc, root, "no <network> inside".into()))?
    } else {
        root
    };
    let name = child_text(net, "name").ok_or_else(|| invalid(doc, net, "missing <name>".into()))?;
    let mut n = Network::new(&name, NetworkOrigin::Libvirt);
    n.uuid = child_text(net, "uuid");
    n.bridge = child_attr(net, "bridge", "name").map(String::from);
    n.mtu = child_attr(net, "mtu", "size").and_then(|s| s.parse().ok());
    n.domain = child_attr(net, "domain", "name").map(String::from);
    n.virtualport = child_attr(net, "virtualport", "type").map(String::from);
    n.vlan_tags = tags(net);
    n.forward = match child(net, "forward") {
        None => ForwardMode::Isolated,
        Some(f) => {
            n.forward_dev = f.attribute("dev").map(String::from);
            n.forward_interfaces = children(f, "interface")
                .filter_map(|i| i.attribute("dev").map(String::from))
                .collect();
            if let Some(nat) = child(f, "nat") {
                if let Some(port) = child(nat, "port") {
                    let s = port.attribute("start").and_then(|v| v.parse().ok());
                    let e = port.attribute("end").and_then(|v| v.parse().ok());
                    if let (Some(s), Some(e)) = (s, e) {
                        n.nat_ports = Some((s, e));
                    }
                }
            }
            match f.attribute("mode").unwrap_or("nat") {
                "nat" => ForwardMode::Nat,
                "route" => ForwardMode::Route,
                "open" => ForwardMode::Open,
                "bridge" => ForwardMode::Bridge,
                "private" => ForwardMode::Private,
                "vepa" => ForwardMode::Vepa,
                "passthrough" => ForwardMode::Passthrough,
                "hostdev" => ForwardMode::Hostdev,
                other => return Err(invalid(doc, f, format!("unknown forward mode {other:?}"))),
            }
        }
    };
    if let Some(dns) = child(net, "dns") {
        n.dns.enabled = dns.attribute("enable").map(|e| e != "no");
        n.dns.forwarders = children(dns, "forwarder")
            .filter_map(|f| {
                f.attribute("addr")
                    .or(f.attribute("domain"))
                    .map(String::from)
            })
            .collect();
        for h in children(dns, "host") {
            if let Some(ip) = h.attribute("ip").and_then(|i| i.parse().ok()) {
                let names = children(h, "hostname")
                    .filter_map(|x| x.text().map(|t| t.trim().to_string()))
                    .collect();
                n.dns.hosts.push((ip, names));
            }
        }
    }
    for ip in children(net, "ip") {
        let Some(addr) = ip.attribute("address") else {
            continue;
        };
        let address: IpAddr = addr
            .parse()
            .map_err(|_| invalid(doc, ip, format!("bad address {addr:?}")))?;
        let prefix = match (ip.attribute("prefix"), ip.attribute("netmask")) {
            (Some(p), _) => p
                .parse::<u8>()
                .map_err(|_| invalid(doc, ip, format!("bad prefix {p:?}")))?,
            (None, Some(m)) => m
                .parse::<Ipv4Addr>()
                .ok()
                .and_then(netmask_prefix)
                .ok_or_else(|| invalid(doc, ip, format!("bad netmask {m:?}")))?,
            (None, None) => {
                if address.is_ipv6() {
                    64
                } else {
                    24
                }
            }
        };
        let address = IpNet::new(address, prefix)
            .map_err(|_| invalid(doc, ip, format!("prefix {prefix} too long")))?;
        let mut nip = NetworkIp {
            address,
            dhcp_ranges: vec![],
            dhcp_hosts: vec![],
        };
        if let Some(dhcp) = child(ip, "dhcp") {
            for r in children(dhcp, "range") {
                let s = r.attribute("start").and_then(|v| v.parse().ok());
                let e = r.attribute("end").and_then(|v| v.parse().ok());
                match (s, e) {
                    (Some(start), Some(end)) => nip.dhcp_ranges.push(DhcpRange { start, end }),
                    _ => {
                        return Err(invalid(
                            doc,
                            r,
                            "range needs start and end addresses".into(),
                        ))
                    }
                }
            }
            for h in children(dhcp, "host") {
                let mac = match h.attribute("mac") {
                    Some(m) => Some(
                        m.parse::<MacAddr>()
                            .map_err(|e| invalid(doc, h, e.to_string()))?,
                    ),
                    None => None,
                };
                nip.dhcp_hosts.push(DhcpHost {
                    mac,
                    name: h.attribute("name").map(String::from),
                    ip: h.attribute("ip").and_then(|v| v.parse().ok()),
                });
            }
        }
        n.ips.push(nip);
    }
    for pg in children(net, "portgroup") {
        n.portgroups.push(PortGroup {
            name: pg.attribute("name").unwrap_or("").to_string(),
            vlan_tags: tags(pg),
            default: pg.attribute("default") == Some("yes"),
        });
    }
    Ok(n)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// Renders a network as libvirt network XML (`kvmnet export libvirt NETWORK`).
pub fn network_to_xml(n: &Network) -> String {
    let mut x = String::new();
    let _ = writeln!(x, "<network>");
    let _ = writeln!(x, "  <name>{}</name>", esc(&n.name));
    if let Some(u) = &n.uuid {
        let _ = writeln!(x, "  <uuid>{}</uuid>", esc(u));
    }
    match n.forward {
        ForwardMode::Isolated | ForwardMode::Unknown => {}
        mode => {
            let dev = n
                .forward_dev
                .as_ref()
                .map(|d| format!(" dev='{}'", esc(d)))
                .unwrap_or_default();
            match (mode, n.nat_ports) {
                (ForwardMode::Nat, Some((s, e))) => {
                    let _ = writeln!(x, "  <forward mode='nat'{dev}>");
                    let _ = writeln!(x, "    <nat><port start='{s}' end='{e}'/></nat>");
                    let _ = writeln!(x, "  </forward>");
                }
                _ => {
                    let _ = writeln!(x, "  <forward mode='{}'{dev}/>", mode.as_str());
                }
            }
        }
    }
    if let Some(b) = &n.bridge {
        let _ = writeln!(x, "  <bridge name='{}'/>", esc(b));
    }
    if let Some(m) = n.mtu {
        let _ = writeln!(x, "  <mtu size='{m}'/>");
    }
    if let Some(d) = &n.domain {
        let _ = writeln!(x, "  <domain name='{}'/>", esc(d));
    }
    if !n.dns.forwarders.is_empty() {
        let _ = writeln!(x, "  <dns>");
        for f in &n.dns.forwarders {
            let _ = writeln!(x, "    <forwarder addr='{}'/>", esc(f));
        }
        let _ = writeln!(x, "  </dns>");
    }
    for ip in &n.ips {
        let fam = if ip.address.addr().is_ipv6() {
            " family='ipv6'"
        } else {
            ""
        };
        let head = format!(
            "  <ip{fam} address='{}' prefix='{}'",
            ip.address.addr(),
            ip.address.prefix_len()
        );
        if ip.dhcp_ranges.is_empty() && ip.dhcp_hosts.is_empty() {
            let _ = writeln!(x, "{head}/>");
            continue;
        }
        let _ = writeln!(x, "{head}>");
        let _ = writeln!(x, "    <dhcp>");
        for r in &ip.dhcp_ranges {
            let _ = writeln!(x, "      <range start='{}' end='{}'/>", r.start, r.end);
        }
        for h in &ip.dhcp_hosts {
            let mut attrs = String::new();
            if let Some(m) = h.mac {
                let _ = write!(attrs, " mac='{m}'");
            }
            if let Some(nm) = &h.name {
                let _ = write!(attrs, " name='{}'", esc(nm));
            }
            if let Some(a) = h.ip {
                let _ = write!(attrs, " ip='{a}'");
            }
            let _ = writeln!(x, "      <host{attrs}/>");
        }
        let _ = writeln!(x, "    </dhcp>");
        let _ = writeln!(x, "  </ip>");
    }
    let _ = writeln!(x, "</network>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_network_round_trip() {
        let xml = r#"<network>
  <name>default</name>
  <bridge name="virbr0" />
  <forward mode="nat" dev="eth1"><nat><port start='1024' end='65535'/></nat></forward>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.122.2" end="192.168.122.254" />
      <host mac="00:16:3e:77:e2:ed" name="a.example.com" ip="192.168.122.10" />
    </dhcp>
  </ip>
</network>"#;
        let n = parse_network(xml).unwrap();
        assert_eq!(n.forward, ForwardMode::Nat);
        assert_eq!(n.forward_dev.as_deref(), Some("eth1"));
        assert_eq!(n.nat_ports, Some((1024, 65535)));
        assert_eq!(n.ips[0].address.to_string(), "192.168.122.1/24");
        assert_eq!(n.ips[0].dhcp_ranges.len(), 1);
        let back = parse_network(&network_to_xml(&n)).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn isolated_and_errors() {
        let n = parse_network(
            "<network><name>iso</name><ip address='10.1.0.1' prefix='24'/></network>",
        )
        .unwrap();
        assert_eq!(n.forward, ForwardMode::Isolated);
        let e = parse_network(
            "<network>\n<name>x</name>\n<ip address='10.0.0.1' netmask='255.0.255.0'/></network>",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(netmask_prefix("255.255.255.0".parse().unwrap()) == Some(24));
        assert!(netmask_prefix("255.255.255.255".parse().unwrap()) == Some(32));
        assert!(netmask_prefix("0.0.0.0".parse().unwrap()) == Some(0));
    }
}
