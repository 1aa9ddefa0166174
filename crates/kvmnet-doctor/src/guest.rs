//! Guest-layer checks, from the guest's own view (its namespace, or the guest agent): address,
//! subnet, default route and gateway, MTU.

use std::net::IpAddr;

use kvmnet_model::ip::RT_TABLE_MAIN;
use kvmnet_model::LinkKind;

use crate::finding::{Finding, Layer, Severity};
use crate::virt::expected_bridge;
use crate::Ctx;

pub(crate) fn check(cx: &Ctx, out: &mut Vec<Finding>, skipped: &mut Vec<String>) {
    let s = cx.s;
    for vm in cx.vms() {
        let Some(g) = &vm.guest else {
            let why = match &vm.agent {
                None => "no view into the guest: it has no guest agent channel (libvirt: add <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>; then run qemu-guest-agent in the guest)",
                Some(a) if a.connected == Some(false) => "its guest agent channel exists but no agent runs in the guest (start qemu-guest-agent there)",
                Some(_) => "its guest agent did not answer",
            };
            skipped.push(format!("{}: guest layer skipped: {why}", vm.name));
            continue;
        };
        for (ni, n) in vm.vnics.iter().enumerate() {
            let Some(gi) = n.guest_ifname.as_deref() else {
                continue;
            };
            let Some(iface) = g.interfaces.iter().find(|i| i.name == gi) else {
                continue;
            };
            let subj = vec![vm.name.clone(), gi.to_string()];
            let dhcp_down = false;
            if !iface.up {
                out.push(
                    Finding::new(
                        "guest-link-down",
                        Severity::Error,
                        Layer::Guest,
                        format!("{}: the guest's {gi} is down", vm.name),
                    )
                    .subject(subj.clone())
                    .evidence([format!("guest {gi}: down")])
                    .impact("the guest sends nothing")
                    .commands([format!("in the guest: ip link set {gi} up")])
                    .affects([vm.name.clone()]),
                );
                continue;
            }
            let v4: Vec<_> = iface
                .addresses
                .iter()
                .filter(|a| a.addr().is_ipv4())
                .collect();
            if v4.is_empty() {
                let _ = dhcp_down;
                let mut f = Finding::new(
                    "guest-no-address",
                    Severity::Error,
                    Layer::Guest,
                    format!("{}: the guest's {gi} has no IPv4 address", vm.name),
                )
                .subject(subj.clone())
                .evidence([format!("guest {gi}: no inet address")])
                .impact("the guest cannot talk IP")
                .commands([format!(
                    "in the guest: dhclient {gi} (or configure a static address)"
                )])
                .affects([vm.name.clone()]);
                // would its DHCP request reach the host's DHCP server?
                if let Ok(t) = cx.tracer.dhcp_discover(&vm.name, ni) {
                    if let kvmnet_trace::Verdict::Dropped {
                        at,
                        reason,
                        rule: Some(r),
                        ..
                    } = &t.verdict
                    {
                        let subject = crate::paths::rule_subject(r);
                        let mut b = Finding::new(
                            "dhcp-blocked",
                            Severity::Error,
                            Layer::Virtual,
                            format!(
                                "DHCP requests from the guests are {} on the host",
                                if reason.starts_with("rejected") {
                                    "rejected"
                                } else {
                                    "dropped"
                                }
                            ),
                        )
                        .subject([subject])
                        .evidence([
                            format!(
                                "trace {} -> DHCP (udp 67, broadcast): dropped at {at}: {reason}",
                                vm.name
                            ),
                            format!("rule: {}", r.text),
                        ])
                        .impact("guests that use DHCP get no address")
                        .affects([vm.name.clone()]);
                        if let Some(h) = r.rule.handle {
                            b = b.commands([
                                cx.cmd(&format!(
                                    "nft -a list chain {} {} {}",
                                    r.rule.family, r.rule.table, r.rule.chain
                                )),
                                cx.cmd(&format!(
                                    "nft delete rule {} {} {} handle {h}",
                                    r.rule.family, r.rule.table, r.rule.chain
                                )),
                            ]);
                        }
                        f.caused_by = Some("dhcp-blocked".into());
                        match out
                            .iter_mut()
                            .find(|e| e.code == "dhcp-blocked" && e.subject == b.subject)
                        {
                            Some(e) => {
                                *e = e.clone().affects([vm.name.clone()]);
                                e.evidence.extend(b.evidence.into_iter().take(1));
                            }
                            None => out.push(b),
                        }
                    }
                }
                out.push(f);
                continue;
            }
            // the subnet of the segment it is on
            let bridge = n
                .host_dev
                .as_deref()
                .and_then(|d| s.link(d))
                .and_then(|l| l.master.clone())
                .filter(|m| s.link(m).is_some_and(|l| l.kind == LinkKind::Bridge))
                .or_else(|| expected_bridge(cx, vm, n).map(|(b, _)| b));
            // a macvtap/macvlan: the guest is on its lower device's wire, which kvmnet cannot see
            let wire_parent = n
                .host_dev
                .as_deref()
                .and_then(|d| s.link(d))
                .filter(|l| matches!(l.kind, LinkKind::Macvtap | LinkKind::Macvlan))
                .and_then(|l| l.parent.clone());
            // an Open vSwitch port: the segment is its bridge's VLAN, the host's interfaces on
            // it are the internal ports carrying that VLAN
            let ovs_seg = n
                .host_dev
                .as_deref()
                .and_then(|d| s.ovs.as_ref().and_then(|o| o.port_of(d)))
                .map(|(b, p)| (b, p.native_vlan()));
            let (bridge, seg_ifs): (Option<String>, Vec<String>) = match ovs_seg {
                Some((b, vid)) => (
                    Some(format!("{} VLAN {vid}", b.name)),
                    s.ovs
                        .as_ref()
                        .map(|o| {
                            o.host_ports(&b.name, vid)
                                .into_iter()
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                None => match &wire_parent {
                    // a macvtap guest's segment is its lower device's LAN
                    Some(p) => (Some(p.clone()), vec![p.clone()]),
                    None => (bridge.clone(), bridge.into_iter().collect()),
                },
            };
            // a guest whose subnet lives on another VLAN of this host: vlan-mismatch says so
            if crate::ovs::subnet_on_other_vlan(cx, vm, n) {
                continue;
            }
            let seg_addrs: Vec<&kvmnet_model::Address> =
                seg_ifs.iter().flat_map(|i| s.addresses_of(i)).collect();
            let seg_nets: Vec<ipnet::IpNet> = seg_addrs
                .iter()
                .filter(|a| a.scope == "global" && a.address.is_ipv4())
                .map(|a| a.network())
                .collect();
            if !seg_nets.is_empty()
                && !v4
                    .iter()
                    .any(|a| seg_nets.iter().any(|net| net.contains(&a.addr())))
            {
                out.push(
                    Finding::new(
                        "guest-wrong-subnet",
                        Severity::Error,
                        Layer::Guest,
                        format!("{}: the guest's address {} is not on {}'s subnet", vm.name, v4[0], bridge.clone().unwrap_or_default()),
                    )
                    .subject(subj.clone())
                    .evidence([
                        format!("guest {gi}: {}", v4.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
                        format!("{}: {}", bridge.clone().unwrap_or_default(), seg_nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")),
                    ])
                    .impact("the guest cannot reach its gateway; the host does not answer for a foreign subnet")
                    .commands([format!("in the guest: ip addr flush dev {gi}; ip addr add ADDRESS/{} dev {gi}   (an address in {})", seg_nets[0].prefix_len(), seg_nets[0])])
                    .affects([vm.name.clone()]),
                );
                continue;
            }
            // the right subnet with the wrong prefix length
            if let Some((a, net)) = v4.iter().find_map(|a| {
                seg_nets
                    .iter()
                    .find(|n| n.contains(&a.addr()) && n.prefix_len() != a.prefix_len())
                    .map(|n| (*a, *n))
            }) {
                let wider = a.prefix_len() < net.prefix_len();
                // what the guest needs that a wider prefix makes it look for on its own segment
                let mut needs: Vec<(String, IpAddr)> = g
                    .nameservers
                    .iter()
                    .flatten()
                    .map(|r| ("resolver".to_string(), *r))
                    .collect();
                if let Some(t) = cx.target {
                    needs.push(("target".into(), t));
                }
                let mut lost: Vec<String> = needs
                    .iter()
                    .filter(|(_, ip)| wider && a.contains(ip) && !net.contains(ip))
                    .map(|(what, ip)| format!("{ip} ({what}) is inside {} but not on the segment {net}: the guest ARPs for it directly and nothing answers", a.trunc()))
                    .collect();
                // a narrower prefix can leave the host's address (the gateway) outside it
                lost.extend(
                    seg_addrs
                        .iter()
                        .filter(|x| !wider && net.contains(&x.address) && !a.contains(&x.address))
                        .map(|x| format!("the host's {} is outside {}: the guest cannot use it as its gateway", x.address, a.trunc())),
                );
                let severity = if lost.is_empty() {
                    Severity::Warning
                } else {
                    Severity::Error
                };
                out.push(
                    Finding::new(
                        "guest-wrong-netmask",
                        severity,
                        Layer::Guest,
                        format!("{}: the guest's {gi} has {a}, but its segment is {net}", vm.name),
                    )
                    .subject(subj.clone())
                    .evidence(
                        [
                            format!("guest {gi}: {a}"),
                            format!("{}: {}", bridge.clone().unwrap_or_default(), seg_addrs.iter().filter(|x| net.contains(&x.address)).map(|x| format!("{}/{}", x.address, x.prefix_len)).collect::<Vec<_>>().join(", ")),
                        ]
                        .into_iter()
                        .chain(lost.iter().cloned()),
                    )
                    .impact(if wider {
                        "addresses outside the segment but inside the guest's prefix are treated as on-link and are unreachable"
                    } else if !lost.is_empty() {
                        "the host's address is outside the guest's prefix: the guest has no usable gateway"
                    } else {
                        "peers outside the guest's narrower prefix are reached through the gateway (the host sends ICMP redirects)"
                    })
                    .commands([format!("in the guest: ip addr del {a} dev {gi}; ip addr add {}/{} dev {gi}", a.addr(), net.prefix_len())])
                    .affects([vm.name.clone()]),
                );
            }
            // default route and gateway
            let Some(routes) = &g.routes else { continue };
            let main: Vec<_> = routes
                .iter()
                .filter(|r| r.table == RT_TABLE_MAIN)
                .cloned()
                .collect();
            let default = main
                .iter()
                .filter(|r| r.is_default() && r.dst.addr().is_ipv4())
                .min_by_key(|r| r.metric.unwrap_or(0));
            let host_gw: Option<IpAddr> = seg_addrs
                .iter()
                .find(|a| {
                    a.address.is_ipv4()
                        && a.scope == "global"
                        && v4.iter().any(|x| a.network().contains(&x.addr()))
                })
                .map(|a| a.address);
            match default {
                None => {
                    let target_outside =
                        cx.target.is_none_or(|t| !v4.iter().any(|a| a.contains(&t)));
                    if target_outside {
                        out.push(
                            Finding::new(
                                "guest-no-default-route",
                                Severity::Error,
                                Layer::Guest,
                                format!("{}: the guest has no default route", vm.name),
                            )
                            .subject(subj.clone())
                            .evidence([format!(
                                "guest routes: {}",
                                main.iter()
                                    .map(|r| r.dst.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )])
                            .impact("the guest reaches its own subnet only")
                            .commands([format!(
                                "in the guest: ip route add default via {}",
                                host_gw
                                    .map(|g| g.to_string())
                                    .unwrap_or_else(|| "GATEWAY".into())
                            )])
                            .affects([vm.name.clone()]),
                        );
                    }
                }
                Some(r) => {
                    if let Some(gw) = r.first_gateway() {
                        let on_link = v4.iter().any(|a| a.trunc().contains(&gw));
                        let host_owns = seg_addrs.iter().any(|a| a.address == gw);
                        let same_segment = |on: &kvmnet_model::Vnic| match ovs_seg {
                            Some((b, vid)) => on
                                .host_dev
                                .as_deref()
                                .and_then(|d| s.ovs.as_ref().and_then(|o| o.port_of(d)))
                                .is_some_and(|(b2, p2)| b2.name == b.name && p2.carries(vid)),
                            None => {
                                on.host_dev
                                    .as_deref()
                                    .and_then(|d| s.link(d))
                                    .and_then(|l| l.master.clone())
                                    == bridge
                            }
                        };
                        // on a wire kvmnet cannot see, the gateway is presumed there when the
                        // host knows it (its own gateway, or a live neighbour on that device)
                        let on_wire = wire_parent.as_deref().is_some_and(|p| {
                            s.neighbours.iter().any(|nb| {
                                nb.ifname == p
                                    && nb.address == gw
                                    && !matches!(
                                        nb.state,
                                        kvmnet_model::ip::NeighState::Failed
                                            | kvmnet_model::ip::NeighState::Incomplete
                                    )
                            }) || s.routes.iter().any(|r| {
                                r.dev.as_deref() == Some(p) && r.first_gateway() == Some(gw)
                            })
                        });
                        // a bridge with a port that leads off the host (a NIC, bond, VLAN...):
                        // the gateway may well be out there, unless the host failed to find it
                        let on_lan = || {
                            bridge.as_deref().is_some_and(|b| {
                                cx.tracer.lan_port(b, "").is_some()
                                    && !cx.tracer.host_failed_to_resolve(b, gw)
                            })
                        };
                        let someone = host_owns
                            || on_wire
                            || s.vms.iter().any(|o| {
                                o.name != vm.name
                                    && o.vnics.iter().any(|on| {
                                        same_segment(on)
                                            && crate::virt::guest_addrs(o, on)
                                                .iter()
                                                .any(|a| a.addr() == gw)
                                    })
                            })
                            || on_lan();
                        if !on_link || !someone {
                            out.push(
                                Finding::new("guest-wrong-gateway", Severity::Error, Layer::Guest, format!("{}: the guest's gateway {gw} does not exist on its segment", vm.name))
                                    .subject(subj.clone())
                                    .evidence([
                                        format!("guest: default via {gw}"),
                                        match host_gw {
                                            Some(h) => format!("the host's address on {} is {h}", bridge.clone().unwrap_or_default()),
                                            None => "no host address on the guest's segment".to_string(),
                                        },
                                        if on_link { format!("nothing on the segment owns {gw} (ARP fails)") } else { format!("{gw} is not on the guest's subnet") },
                                    ])
                                    .impact("everything beyond the guest's subnet is unreachable (its neighbour entry for the gateway is FAILED)")
                                    .commands([format!("in the guest: ip route replace default via {}", host_gw.map(|g| g.to_string()).unwrap_or_else(|| "GATEWAY".into()))])
                                    .affects([vm.name.clone()]),
                            );
                        }
                    }
                }
            }
            // the guest's MTU against its host side, when the host side is consistent
            if let (Some(gm), Some(dev)) =
                (iface.mtu, n.host_dev.as_deref().and_then(|d| s.link(d)))
            {
                let ports_consistent = dev
                    .master
                    .as_deref()
                    .map(|m| s.ports_of(m).all(|p| p.mtu == dev.mtu))
                    .unwrap_or(true);
                if gm > dev.mtu && ports_consistent {
                    out.push(
                        Finding::new("guest-mtu-too-large", Severity::Error, Layer::Guest, format!("{}: the guest's MTU {gm} is larger than its host side {} ({})", vm.name, dev.name, dev.mtu))
                            .subject(subj.clone())
                            .evidence([format!("guest {gi}: mtu {gm}"), format!("{}: mtu {}", dev.name, dev.mtu)])
                            .impact(format!("frames larger than {} bytes are dropped without an ICMP error: large transfers stall", dev.mtu))
                            .commands([format!("in the guest: ip link set {gi} mtu {}", dev.mtu)])
                            .affects([vm.name.clone()]),
                    );
                }
            }
        }
        // a guest with a default route but no resolver: the network works, names do not
        let routed = g
            .routes
            .as_ref()
            .is_some_and(|r| r.iter().any(|r| r.is_default() && r.dst.addr().is_ipv4()));
        if routed && g.nameservers.as_ref().is_some_and(|n| n.is_empty()) {
            let host_dns: Vec<String> = vm
                .vnics
                .iter()
                .filter_map(|n| n.network.as_deref())
                .filter_map(|net| s.networks.iter().find(|x| x.name == net))
                .filter(|net| net.dns.enabled != Some(false))
                .filter_map(|net| net.ips.iter().find(|i| i.address.addr().is_ipv4()))
                .map(|i| i.address.addr().to_string())
                .collect();
            out.push(
                Finding::new(
                    "guest-no-resolver",
                    Severity::Warning,
                    Layer::Guest,
                    format!("{}: the guest has no DNS resolver configured", vm.name),
                )
                .subject([vm.name.clone()])
                .evidence(["guest /etc/resolv.conf: no nameserver lines (or no file)".to_string()])
                .impact("IP traffic works but names do not resolve: package installs and most services fail")
                .commands([format!(
                    "in the guest: echo 'nameserver {}' > /etc/resolv.conf (or let DHCP configure it)",
                    host_dns.first().cloned().unwrap_or_else(|| "RESOLVER".into())
                )])
                .affects([vm.name.clone()]),
            );
        }
    }
}
