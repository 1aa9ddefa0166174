//! Host-layer checks: uplink and default route, forwarding, conntrack, DNS.

use kvmnet_model::plan::PlanStep;
use kvmnet_model::LinkKind;

use crate::finding::{Finding, Layer, Severity};
use crate::Ctx;

pub(crate) fn check(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let all_vms: Vec<String> = cx.vms().map(|v| v.name.clone()).collect();
    let vnic_devs: Vec<&str> = s
        .vms
        .iter()
        .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
        .collect();

    // uplink and default route
    match s.default_route(false) {
        Some(r) => {
            for dev in r.devices() {
                if let Some(l) = s.link(dev) {
                    if !l.is_usable() {
                        out.push(
                            Finding::new(
                                "uplink-down",
                                Severity::Error,
                                Layer::Host,
                                format!("the uplink {dev} (default route) is {}", l.state_word()),
                            )
                            .subject([dev])
                            .evidence([
                                format!(
                                    "default via {} dev {dev}",
                                    r.first_gateway()
                                        .map(|g| g.to_string())
                                        .unwrap_or_else(|| "-".into())
                                ),
                                format!(
                                    "{dev}: admin {}, oper {}, carrier {}",
                                    if l.admin_up { "up" } else { "down" },
                                    l.oper_state.as_str(),
                                    l.carrier
                                        .map(|c| c.to_string())
                                        .unwrap_or_else(|| "?".into())
                                ),
                            ])
                            .impact("nothing leaves the host: no VM reaches the outside")
                            .commands(if l.admin_up {
                                vec![format!(
                                    "check the cable/peer of {dev}: it is up but has no carrier"
                                )]
                            } else {
                                vec![cx.cmd(&format!("ip link set {dev} up"))]
                            })
                            .steps(if l.admin_up {
                                vec![]
                            } else {
                                vec![PlanStep::LinkUp {
                                    ifname: dev.to_string(),
                                }]
                            })
                            .affects(all_vms.clone()),
                        );
                    }
                }
            }
        }
        None => {
            // the kernel removes a device's routes while it is down: a down link that holds
            // a global address is the likely uplink, and the root cause
            let down: Vec<_> = s
                .links
                .iter()
                .filter(|l| {
                    !matches!(l.kind, LinkKind::Bridge | LinkKind::Loopback)
                        && !vnic_devs.contains(&l.name.as_str())
                        && l.master.is_none()
                        && !l.admin_up
                        && s.addresses_of(&l.name)
                            .any(|a| a.scope == "global" && a.address.is_ipv4())
                })
                .collect();
            for l in &down {
                out.push(
                    Finding::new(
                        "uplink-down",
                        Severity::Error,
                        Layer::Host,
                        format!("the uplink {} is down, and with it the default route", l.name),
                    )
                    .subject([l.name.clone()])
                    .evidence([
                        format!("{}: state {}", l.name, l.state_word()),
                        "no default route in the main table (the kernel removed it with the link)".to_string(),
                    ])
                    .impact("nothing leaves the host: no VM reaches the outside")
                    .commands([
                        cx.cmd(&format!("ip link set {} up", l.name)),
                        "re-add the default route if it does not come back (ip route add default via GATEWAY)".to_string(),
                    ])
                    .steps([PlanStep::LinkUp { ifname: l.name.clone() }])
                    .affects(all_vms.clone()),
                );
            }
            if !all_vms.is_empty() {
                let mut f = Finding::new(
                    "no-default-route",
                    Severity::Error,
                    Layer::Host,
                    "the host has no IPv4 default route",
                )
                .subject(["main table"])
                .evidence([format!(
                    "routes in main: {}",
                    s.routes
                        .iter()
                        .filter(|r| r.table == 254 && r.dst.addr().is_ipv4())
                        .map(|r| r.dst.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )])
                .impact("VMs cannot reach anything beyond the host's own subnets")
                .commands([cx.cmd("ip route add default via GATEWAY dev UPLINK")])
                .affects(all_vms.clone());
                if let Some(l) = down.first() {
                    f.caused_by = Some("uplink-down".into());
                    f.evidence.push(format!("{} is down", l.name));
                }
                out.push(f);
            }
        }
    }

    // forwarding: global, then per interface on bridges carrying VMs and on the uplink
    if !all_vms.is_empty() {
        if s.sysctls.ip_forward == Some(false) {
            out.push(
                Finding::new(
                    "ip-forward-disabled",
                    Severity::Error,
                    Layer::Host,
                    "IPv4 forwarding is disabled (net.ipv4.ip_forward = 0)",
                )
                .subject(["net.ipv4.ip_forward"])
                .evidence(["net.ipv4.ip_forward = 0"])
                .impact("the host does not route VM traffic: VMs reach the host but nothing beyond it (silently: no ICMP error)")
                .commands([
                    cx.cmd("sysctl -w net.ipv4.ip_forward=1"),
                    "echo net.ipv4.ip_forward=1 > /etc/sysctl.d/90-kvmnet.conf   # keep it after reboot".to_string(),
                ])
                .steps([PlanStep::SetSysctl {
                    key: "net.ipv4.ip_forward".into(),
                    value: "1".into(),
                }])
                .affects(all_vms.clone()),
            );
        } else if s.sysctls.ip_forward == Some(true) {
            let mut devs: Vec<String> = s
                .vms
                .iter()
                .flat_map(|v| v.vnics.iter())
                .filter_map(|n| n.host_dev.as_deref().and_then(|d| s.link(d)))
                .filter_map(|l| l.master.clone())
                .collect();
            if let Some(u) = &cx.uplink {
                devs.push(u.clone());
            }
            devs.sort();
            devs.dedup();
            for d in devs {
                if s.sysctls.interfaces.get(&d).and_then(|i| i.forwarding) == Some(false) {
                    out.push(
                        Finding::new(
                            "ip-forward-disabled",
                            Severity::Error,
                            Layer::Host,
                            format!("IPv4 forwarding is disabled on {d}"),
                        )
                        .subject([format!("net.ipv4.conf.{d}.forwarding")])
                        .evidence([
                            format!("net.ipv4.conf.{d}.forwarding = 0"),
                            "net.ipv4.ip_forward = 1".to_string(),
                        ])
                        .impact(format!("packets arriving on {d} are not routed"))
                        .commands([cx.cmd(&format!("sysctl -w net.ipv4.conf.{d}.forwarding=1"))])
                        .steps([PlanStep::SetSysctl {
                            key: format!("net.ipv4.conf.{d}.forwarding"),
                            value: "1".into(),
                        }])
                        .affects(all_vms.clone()),
                    );
                }
            }
        }
    }

    // conntrack
    if let (Some(c), Some(m)) = (s.sysctls.nf_conntrack_count, s.sysctls.nf_conntrack_max) {
        if m > 0 && c * 100 >= m * 90 {
            out.push(
                Finding::new(
                    "conntrack-table-full",
                    Severity::Error,
                    Layer::Host,
                    format!("the conntrack table is {}% full ({c} of {m})", c * 100 / m),
                )
                .subject(["nf_conntrack"])
                .evidence([format!("net.netfilter.nf_conntrack_count = {c}"), format!("net.netfilter.nf_conntrack_max = {m}")])
                .impact("new connections are dropped once the table is full (kernel log: nf_conntrack: table full, dropping packet)")
                .commands([format!("sysctl -w net.netfilter.nf_conntrack_max={}", m * 2)])
                .affects(all_vms.clone()),
            );
        } else if m > 0 && c * 100 >= m * 75 {
            out.push(
                Finding::new(
                    "conntrack-table-full",
                    Severity::Warning,
                    Layer::Host,
                    format!("the conntrack table is {}% full ({c} of {m})", c * 100 / m),
                )
                .subject(["nf_conntrack"])
                .evidence([
                    format!("net.netfilter.nf_conntrack_count = {c}"),
                    format!("net.netfilter.nf_conntrack_max = {m}"),
                ])
                .impact("close to the limit where new connections are dropped")
                .commands([format!(
                    "sysctl -w net.netfilter.nf_conntrack_max={}",
                    m * 2
                )]),
            );
        }
    }

    // DNS
    if s.resolv.nameservers.is_empty() && s.resolv.path.is_some() {
        out.push(
            Finding::new("dns-unconfigured", Severity::Error, Layer::Host, "the host has no DNS resolver configured")
                .subject([s.resolv.path.clone().unwrap_or_else(|| "/etc/resolv.conf".into())])
                .evidence([format!("{}: no nameserver lines", s.resolv.path.clone().unwrap_or_default())])
                .impact("the host cannot resolve names, and neither can guests that use it (libvirt's dnsmasq forwards to the host's resolvers)")
                .commands(["add `nameserver ADDRESS` to /etc/resolv.conf (or fix the service that writes it)"]),
        );
    }
}
