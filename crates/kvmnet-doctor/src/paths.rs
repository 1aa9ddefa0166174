//! Path checks: each VM's packets traced to its gateway, to the target and to a peer on its
//! bridge; a drop becomes a finding naming the hop and the rule; the first failing hop is the
//! VM's root cause, and findings that only follow from it are marked `caused_by`.

use std::net::IpAddr;

use kvmnet_model::plan::PlanStep;
use kvmnet_model::{LinkKind, Vm};
use kvmnet_trace::{Endpoint, FlowSpec, Trace, Verdict};

use crate::finding::{Finding, Layer, Severity};
use crate::virt::guest_addrs;
use crate::{Ctx, VmVerdict};

/// A VM's traces and the root cause they point at.
pub(crate) struct Pending {
    vm: String,
    /// (what was tested, reached?)
    results: Vec<(String, bool)>,
    root: Option<(String, Vec<String>)>,
}

fn flow(vm: &str, to: IpAddr, proto: u8, dport: u16) -> FlowSpec {
    FlowSpec {
        from: Endpoint::Vm {
            name: vm.to_string(),
            vnic: None,
        },
        to: Endpoint::Addr(to),
        proto,
        dport,
        sport: None,
        size: None,
        df: true,
    }
}

/// The gateway a VM uses: its own default route's, else the host's address on its bridge.
fn gateway_of(cx: &Ctx, vm: &Vm) -> Option<IpAddr> {
    if let Some(r) = vm
        .guest
        .as_ref()
        .and_then(|g| g.routes.as_ref())
        .and_then(|rs| rs.iter().find(|r| r.is_default() && r.dst.addr().is_ipv4()))
    {
        return r.first_gateway();
    }
    let s = cx.s;
    for n in &vm.vnics {
        let br = n
            .host_dev
            .as_deref()
            .and_then(|d| s.link(d))
            .and_then(|l| l.master.clone())
            .or_else(|| n.source_bridge.clone());
        let addrs = guest_addrs(vm, n);
        if let Some(b) = br {
            if let Some(a) = s.addresses_of(&b).find(|a| {
                a.address.is_ipv4()
                    && (addrs.is_empty() || addrs.iter().any(|g| a.network().contains(&g.addr())))
            }) {
                return Some(a.address);
            }
        }
    }
    None
}

/// A peer guest on the same bridge, for the bridged path.
fn peer_of(cx: &Ctx, vm: &Vm) -> Option<IpAddr> {
    let s = cx.s;
    let my_br: Vec<String> = vm
        .vnics
        .iter()
        .filter_map(|n| {
            n.host_dev
                .as_deref()
                .and_then(|d| s.link(d))
                .and_then(|l| l.master.clone())
        })
        .collect();
    let my_nets: Vec<ipnet::IpNet> = vm
        .vnics
        .iter()
        .flat_map(|n| guest_addrs(vm, n))
        .map(|a| a.trunc())
        .collect();
    s.vms.iter().filter(|o| o.name != vm.name).find_map(|o| {
        o.vnics.iter().find_map(|n| {
            let br = n
                .host_dev
                .as_deref()
                .and_then(|d| s.link(d))
                .and_then(|l| l.master.clone())?;
            if !my_br.contains(&br) {
                return None;
            }
            guest_addrs(o, n)
                .into_iter()
                .find(|a| a.addr().is_ipv4() && my_nets.iter().any(|m| m.contains(&a.addr())))
                .map(|a| a.addr())
        })
    })
}

pub(crate) fn check(cx: &Ctx, out: &mut Vec<Finding>) -> Vec<Pending> {
    let mut pend = vec![];
    for vm in cx.vms() {
        let mut p = Pending {
            vm: vm.name.clone(),
            results: vec![],
            root: None,
        };
        let has_addr = vm.vnics.iter().any(|n| !guest_addrs(vm, n).is_empty());
        if vm.vnics.is_empty() || !has_addr {
            pend.push(p);
            continue;
        }
        let gw = gateway_of(cx, vm);
        let mut tests: Vec<(String, FlowSpec)> = vec![];
        if let Some(g) = gw {
            tests.push((format!("gateway {g}"), flow(&vm.name, g, 1, 0)));
        }
        if let Some(t) = cx.target.filter(|t| Some(*t) != gw) {
            tests.push((t.to_string(), flow(&vm.name, t, 1, 0)));
        }
        if let (Some(t), Some(port)) = (cx.target, cx.opts.port) {
            tests.push((format!("{t} tcp/{port}"), flow(&vm.name, t, 6, port)));
        }
        if let Some(peer) = peer_of(cx, vm) {
            tests.push((format!("peer {peer}"), flow(&vm.name, peer, 1, 0)));
        }
        // a guest with an IPv6 default route through a global address: that gateway too
        // (link-local gateways learnt from router advertisements are out of scope)
        if let Some(g6) = vm
            .guest
            .as_ref()
            .and_then(|g| g.routes.as_ref())
            .and_then(|rs| rs.iter().find(|r| r.is_default() && r.dst.addr().is_ipv6()))
            .and_then(|r| r.first_gateway())
            .filter(|g| matches!(g, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) != 0xfe80))
            .filter(|g| Some(*g) != cx.target)
        {
            tests.push((format!("gateway {g6}"), flow(&vm.name, g6, 1, 0)));
        }
        // the guest's resolvers (a loopback resolver lives inside the guest: not a path)
        if let Some(ns) = vm.guest.as_ref().and_then(|g| g.nameservers.as_ref()) {
            for n in ns
                .iter()
                .filter(|n| !n.is_loopback() && n.is_ipv4())
                .take(2)
            {
                tests.push((format!("dns {n}"), flow(&vm.name, *n, 17, 53)));
            }
        }
        for (what, spec) in tests {
            let Ok(trace) = cx.tracer.trace(&spec) else {
                continue;
            };
            let ok = matches!(trace.verdict, Verdict::Delivered { .. });
            p.results.push((what.clone(), ok));
            if ok {
                continue;
            }
            let found = finding_from_trace(cx, vm, &what, &trace, gw);
            // a resolver that cannot be reached: the path's fault is the cause when it is a
            // known one or a specific one (a rule, a route...), else the resolver itself is the
            // finding
            let mut found_list: Vec<Finding> = vec![];
            match found {
                Some(f) if what.starts_with("dns ") => {
                    let known = out
                        .iter()
                        .any(|e| e.code == f.code && e.affects.contains(&vm.name))
                        || p.root.is_some();
                    let specific = !matches!(
                        f.code.as_str(),
                        "path-dropped"
                            | "gateway-unreachable"
                            | "target-unreachable"
                            | "dns-unreachable"
                    );
                    let mut d = Finding::new("dns-unreachable", Severity::Error, Layer::Guest, format!("{}: the guest's resolver {} is unreachable", vm.name, &what[4..]))
                        .subject([vm.name.clone(), what[4..].to_string()])
                        .evidence(f.evidence.clone())
                        .impact("the guest cannot resolve names")
                        .commands(["in the guest: point /etc/resolv.conf at a reachable resolver (the host's address on its bridge runs one for libvirt networks)"])
                        .affects([vm.name.clone()]);
                    if known {
                        d.caused_by = Some(
                            p.root
                                .as_ref()
                                .map(|r| r.0.clone())
                                .unwrap_or_else(|| f.code.clone()),
                        );
                        found_list.push(d);
                    } else if specific {
                        // the rule or route that stops DNS is the finding to fix
                        d.caused_by = Some(f.code.clone());
                        found_list.push(f);
                        found_list.push(d);
                    } else {
                        found_list.push(d);
                    }
                }
                Some(f) => found_list.push(f),
                None => {}
            }
            for f in found_list {
                // the same fault found by a structural check: that finding is the cause
                let existing = out.iter_mut().find(|e| {
                    e.code == f.code && (e.affects.contains(&vm.name) || e.subject == f.subject)
                });
                let key = match existing {
                    Some(e) => {
                        *e = e.clone().affects([vm.name.clone()]);
                        for ev in &f.evidence {
                            if !e.evidence.contains(ev) {
                                e.evidence.push(ev.clone());
                            }
                        }
                        (e.code.clone(), e.subject.clone())
                    }
                    None => {
                        let k = (f.code.clone(), f.subject.clone());
                        out.push(f);
                        k
                    }
                };
                if p.root.is_none() {
                    p.root = Some(key);
                }
            }
        }
        pend.push(p);
    }
    pend
}

/// A rule as a finding's subject: `inet filter forward handle 7` (or `... policy`).
pub(crate) fn rule_subject(r: &kvmnet_trace::RuleEvidence) -> String {
    format!(
        "{} {} {}{}",
        r.rule.family,
        r.rule.table,
        r.rule.chain,
        r.rule
            .handle
            .map(|h| format!(" handle {h}"))
            .unwrap_or_else(|| " policy".into())
    )
}

/// The finding a failed trace points at.
fn finding_from_trace(
    cx: &Ctx,
    vm: &Vm,
    what: &str,
    t: &Trace,
    gw: Option<IpAddr>,
) -> Option<Finding> {
    let s = cx.s;
    let (at, cause, reason, rule) = match &t.verdict {
        Verdict::Dropped {
            at,
            cause,
            reason,
            rule,
            ..
        } => (at.clone(), cause.clone(), reason.clone(), rule.clone()),
        Verdict::Unknown { at, what: w, rule } => {
            return Some(
                Finding::new(
                    "path-unknown",
                    Severity::Warning,
                    Layer::Virtual,
                    format!(
                        "{}: kvmnet cannot tell whether traffic to {what} passes",
                        vm.name
                    ),
                )
                .subject([vm.name.clone()])
                .evidence(
                    [format!("at {at}: {w}")]
                        .into_iter()
                        .chain(rule.as_ref().map(|r| {
                            format!(
                                "{} {} {}: {}",
                                r.rule.family, r.rule.table, r.rule.chain, r.text
                            )
                        })),
                )
                .impact("the verdict for this path depends on something kvmnet cannot evaluate")
                .affects([vm.name.clone()]),
            )
        }
        Verdict::Delivered { .. } => return None,
    };
    let trail = format!("trace {} -> {what}: dropped at {at}: {reason}", vm.name);
    // the common shape: the VM's own finding, the drop as its summary, the trace as evidence
    let on_vm = |code: &str, severity: Severity, layer: Layer| {
        Finding::new(code, severity, layer, format!("{}: {reason}", vm.name))
            .subject([vm.name.clone()])
            .evidence([trail.clone()])
            .affects([vm.name.clone()])
    };
    let stage_dev = |prefix: &str| -> Option<String> {
        let a = at.trim_start_matches("reply: ");
        a.strip_prefix(prefix)
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
    };
    // the VM a guest-side drop happened in (the destination of a peer trace, or the source)
    let at_vm: String = at
        .trim_start_matches("reply: ")
        .strip_prefix("vm:")
        .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        .filter(|n| s.vm(n).is_some())
        .unwrap_or_else(|| vm.name.clone());
    let f = match cause.as_str() {
        "no-snat" => {
            let (subnet, bridge) = vm_subnet(cx, vm);
            let uplink = cx.uplink.clone().unwrap_or_default();
            let net = bridge
                .as_deref()
                .and_then(|b| s.network_on_bridge(b))
                .map(|n| n.name.clone());
            let mut f = Finding::new(
                "nat-masquerade-missing",
                Severity::Error,
                Layer::Virtual,
                format!("{} leaves {uplink} without NAT: replies cannot come back", subnet.map(|n| n.to_string()).unwrap_or_else(|| vm.name.clone())),
            )
            .subject(net.iter().cloned().chain(bridge.iter().cloned()).chain([uplink.clone()]))
            .evidence([trail, "no masquerade or snat rule in postrouting matches this traffic".to_string()])
            .impact("guests on this network reach nothing beyond the host (the upstream sees private source addresses it cannot route back)")
            .affects([vm.name.clone()]);
            if let Some(sn) = subnet {
                f = f
                    .commands([
                        cx.cmd("nft add table inet kvmnet"),
                        cx.cmd("nft add chain inet kvmnet postrouting '{ type nat hook postrouting priority srcnat; }'"),
                        cx.cmd(&format!("nft add rule inet kvmnet postrouting ip saddr {sn} oifname \"{uplink}\" masquerade")),
                        "then flush stale conntrack entries: conntrack -D -s SUBNET (flows set up without NAT keep their mapping)".to_string(),
                    ])
                    .steps([PlanStep::AddMasquerade { subnet: sn, oifname: uplink }]);
            }
            f
        }
        "nft-rule" | "nft-policy" | "bridge-filter" => {
            let r = rule.as_ref()?;
            let to_gateway = what.starts_with("gateway");
            let code = if at.contains("input")
                || at.contains("output")
                || (to_gateway && !at.contains("forward"))
            {
                // a service of the host itself (its resolver) refused by the host's rules
                if what.starts_with("dns ") {
                    "host-input-blocked"
                } else {
                    "gateway-unreachable"
                }
            } else {
                "forward-blocked"
            };
            Finding::new(
                code,
                Severity::Error,
                match code {
                    "forward-blocked" => Layer::Virtual,
                    "host-input-blocked" => Layer::Host,
                    _ => Layer::Guest,
                },
                format!(
                    "{}: traffic to {what} is {} by {} {} {}",
                    vm.name,
                    if reason.starts_with("rejected") {
                        "rejected"
                    } else {
                        "dropped"
                    },
                    r.rule.family,
                    r.rule.table,
                    r.rule.chain
                ),
            )
            .subject([rule_subject(r)])
            .evidence([
                trail,
                format!(
                    "rule: {}{}",
                    r.text,
                    r.rule
                        .handle
                        .map(|h| format!(" (handle {h})"))
                        .unwrap_or_default()
                ),
            ])
            .impact(format!("{}'s traffic to {what} never passes", vm.name))
            .commands(match r.rule.handle {
                // kvmnet's configuration wrote this rule: the configuration is what to change
                _ if &*r.rule.table == "kvmnet_cfg" => vec![format!(
                    "this rule comes from kvmnet's configuration ({}): change the vNIC's antispoof/firewall settings there, then {}",
                    if r.text.contains("comment") { r.text.rsplit("comment ").next().unwrap_or("").trim_matches('"').to_string() } else { "see `kvmnet plan`".into() },
                    format!("kvmnet apply -f CONFIG.yaml{}", s.netns.as_deref().map(|n| format!(" --netns {n}")).unwrap_or_default())
                )],
                Some(h) => vec![
                    format!(
                        "inspect: {}",
                        cx.cmd(&format!(
                            "nft -a list chain {} {} {}",
                            r.rule.family, r.rule.table, r.rule.chain
                        ))
                    ),
                    format!(
                        "if the rule is wrong: {}",
                        cx.cmd(&format!(
                            "nft delete rule {} {} {} handle {h}",
                            r.rule.family, r.rule.table, r.rule.chain
                        ))
                    ),
                ],
                None => vec![format!(
                    "accept the VM's traffic in {} {} {} (its policy drops what no rule accepts)",
                    r.rule.family, r.rule.table, r.rule.chain
                )],
            })
            .affects([vm.name.clone()])
        }
        "br-netfilter" => {
            let r = rule.as_ref()?;
            let br = vm_subnet(cx, vm).1.unwrap_or_default();
            Finding::new(
                "bridge-netfilter-drop",
                Severity::Error,
                Layer::Virtual,
                format!("bridged traffic on {br} is {} by {} {} {} (br_netfilter)", if reason.starts_with("rejected") { "rejected" } else { "dropped" }, r.rule.family, r.rule.table, r.rule.chain),
            )
            .subject([br.clone(), rule_subject(r)])
            .evidence([
                trail,
                "net.bridge.bridge-nf-call-iptables = 1: frames switched by the bridge cross the IP forward hook".to_string(),
                format!("rule: {}", r.text),
            ])
            .impact(format!("guests on {br} cannot talk to each other (the classic Docker-beside-libvirt breakage)"))
            .commands([
                cx.cmd(&format!("iptables -I FORWARD -i {br} -o {br} -j ACCEPT   # accept bridged traffic in the chain that drops it")),
                cx.cmd("sysctl -w net.bridge.bridge-nf-call-iptables=0   # only if no one relies on filtering bridged traffic"),
            ])
            .affects([vm.name.clone()])
        }
        "ip-forward-disabled" => {
            // the sysctl the trace names: net.ipv4.ip_forward, net.ipv4.conf.X.forwarding,
            // net.ipv6.conf.all.forwarding...
            let key = reason
                .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
                .find(|w| w.starts_with("net.ipv"))
                .unwrap_or("net.ipv4.ip_forward")
                .to_string();
            Finding::new(
                "ip-forward-disabled",
                Severity::Error,
                Layer::Host,
                reason.clone(),
            )
            .subject([key.clone()])
            .evidence([trail])
            .impact("the host routes nothing between the guests and the outside")
            .commands([cx.cmd(&format!("sysctl -w {key}=1"))])
            .steps([PlanStep::SetSysctl {
                key: key.clone(),
                value: "1".into(),
            }])
            .affects([vm.name.clone()])
        }
        "rp-filter" => {
            let iif = reason
                .split(" on ")
                .nth(1)
                .and_then(|x| x.split(':').next())
                .unwrap_or("")
                .to_string();
            Finding::new("rp-filter-drop", Severity::Error, Layer::Host, format!("reverse-path filtering on {iif} drops {}'s traffic", vm.name))
                .subject([format!("net.ipv4.conf.{iif}.rp_filter")])
                .evidence([
                    trail,
                    format!(
                        "rp_filter: all = {}, {iif} = {}",
                        s.sysctls.interfaces.get("all").and_then(|i| i.rp_filter).unwrap_or(0),
                        s.sysctls.interfaces.get(&iif).and_then(|i| i.rp_filter).unwrap_or(0)
                    ),
                ])
                .impact("packets whose source is routed back through another interface are dropped silently")
                .commands([
                    cx.cmd(&format!("sysctl -w net.ipv4.conf.{iif}.rp_filter=2")),
                    cx.cmd("sysctl -w net.ipv4.conf.all.rp_filter=2"),
                    "or fix the routes so the return path uses the same interface".to_string(),
                ])
                .steps([
                    PlanStep::SetSysctl { key: format!("net.ipv4.conf.{iif}.rp_filter"), value: "2".into() },
                    PlanStep::SetSysctl { key: "net.ipv4.conf.all.rp_filter".into(), value: "2".into() },
                ])
                .affects([vm.name.clone()])
        }
        "link-down" | "bridge-down" => {
            let dev = stage_dev("egress ")
                .or_else(|| stage_dev("bridge "))
                .or_else(|| {
                    at.trim_start_matches("reply: ")
                        .split_whitespace()
                        .next()
                        .map(String::from)
                })
                .unwrap_or_default();
            let l = s.link(&dev);
            let is_bridge = l.is_some_and(|l| l.kind == LinkKind::Bridge);
            let is_uplink = cx.uplink.as_deref() == Some(dev.as_str());
            let code = if is_bridge {
                "bridge-down"
            } else if is_uplink {
                "uplink-down"
            } else {
                "tap-down"
            };
            let owner = s.vnic_by_dev(&dev).map(|(v, _)| v.name.clone());
            let mut f = Finding::new(
                code,
                Severity::Error,
                if code == "uplink-down" {
                    Layer::Host
                } else {
                    Layer::Virtual
                },
                reason.clone(),
            )
            .evidence([trail])
            .affects([vm.name.clone()]);
            f = match (code, owner) {
                ("tap-down", Some(o)) => f.subject([o.clone(), dev.clone()]).affects([o]),
                _ => f.subject([dev.clone()]),
            };
            f.commands([cx.cmd(&format!("ip link set {dev} up"))])
                .steps([PlanStep::LinkUp {
                    ifname: dev.clone(),
                }])
        }
        "port-blocked" => Finding::new(
            "port-blocked",
            Severity::Error,
            Layer::Virtual,
            reason.clone(),
        )
        .evidence([trail])
        .affects([vm.name.clone()]),
        "not-in-bridge" => {
            let dev = reason.split_whitespace().next().unwrap_or("").to_string();
            let owner = s
                .vnic_by_dev(&dev)
                .map(|(v, _)| v.name.clone())
                .unwrap_or_else(|| vm.name.clone());
            Finding::new(
                "tap-not-in-bridge",
                Severity::Error,
                Layer::Virtual,
                reason.clone(),
            )
            .subject([owner.clone(), dev])
            .evidence([trail])
            .affects([vm.name.clone(), owner])
        }
        "mtu" => {
            let a = at.trim_start_matches("reply: ");
            if a.starts_with("vm:") {
                Finding::new(
                    "guest-mtu-too-large",
                    Severity::Error,
                    Layer::Guest,
                    reason.clone(),
                )
                .subject([vm.name.clone()])
                .evidence([trail])
                .affects([vm.name.clone()])
            } else if a.starts_with("egress") {
                Finding::new("mtu-mismatch", Severity::Warning, Layer::Host, format!("path MTU below the guests' MTU: {reason}"))
                    .subject([stage_dev("egress ").unwrap_or_default()])
                    .evidence([trail])
                    .impact("large packets rely on path MTU discovery (ICMP fragmentation-needed must not be filtered)")
                    .affects([vm.name.clone()])
            } else {
                let dev = a.split_whitespace().next().unwrap_or("").to_string();
                Finding::new(
                    "mtu-mismatch",
                    Severity::Error,
                    Layer::Virtual,
                    reason.clone(),
                )
                .subject(
                    s.vnic_by_dev(&dev)
                        .map(|(v, _)| v.name.clone())
                        .into_iter()
                        .chain([dev.clone()]),
                )
                .evidence([trail])
                .affects([vm.name.clone()])
            }
        }
        "arp-ignored" => {
            let br = stage_dev("bridge ").unwrap_or_default();
            // the safe fix: the bridge's own setting, when it is the one in effect (`all` is
            // host-wide and left to the admin)
            let all = s
                .sysctls
                .interfaces
                .get("all")
                .and_then(|i| i.arp_ignore)
                .unwrap_or(0);
            let dev = s
                .sysctls
                .interfaces
                .get(&br)
                .and_then(|i| i.arp_ignore)
                .unwrap_or(0);
            let steps = if dev > 0 && all == 0 {
                vec![PlanStep::SetSysctl {
                    key: format!("net.ipv4.conf.{br}.arp_ignore"),
                    value: "0".into(),
                }]
            } else {
                vec![]
            };
            Finding::new("arp-ignored", Severity::Error, Layer::Host, format!("{}: {reason}", vm.name))
                .steps(steps)
                .subject([format!("net.ipv4.conf.{br}.arp_ignore")])
                .evidence([trail])
                .impact("guests on this bridge cannot resolve the host's address: no gateway, no DHCP replies routed back")
                .commands([
                    cx.cmd(&format!("sysctl -w net.ipv4.conf.{br}.arp_ignore=0")),
                    cx.cmd("sysctl -w net.ipv4.conf.all.arp_ignore=0"),
                ])
                .affects([vm.name.clone()])
        }
        "arp-failed" => {
            let nh_is_gw = gw.is_some_and(|g| reason.contains(&g.to_string()))
                || what
                    .strip_prefix("gateway ")
                    .is_some_and(|g| reason.contains(g));
            if nh_is_gw && what.starts_with("gateway") {
                on_vm("guest-wrong-gateway", Severity::Error, Layer::Guest)
            } else {
                on_vm("gateway-unreachable", Severity::Error, Layer::Guest)
            }
        }
        "guest-no-route" => on_vm("guest-no-default-route", Severity::Error, Layer::Guest),
        "guest-no-address" => on_vm("guest-no-address", Severity::Error, Layer::Guest),
        "guest-link-down" => Finding::new(
            "guest-link-down",
            Severity::Error,
            Layer::Guest,
            format!("{at_vm}: {reason}"),
        )
        .subject([at_vm.clone()])
        .evidence([trail])
        .affects([vm.name.clone(), at_vm.clone()]),
        "vnic-link-down" => on_vm("vnic-link-down", Severity::Error, Layer::Virtual),
        "route-reject" => {
            // which route or rule rejects it, from the routing hop's facts
            let facts: Vec<String> = t.hops.last().map(|h| h.facts.clone()).unwrap_or_default();
            let route = facts
                .iter()
                .find_map(|f| f.strip_prefix("route "))
                .map(str::to_string);
            let rule = facts
                .iter()
                .find_map(|f| f.strip_prefix("ip rule "))
                .map(str::to_string);
            let mut fixes = vec![];
            let mut subject = vec![];
            if let Some(r) = &route {
                // "blackhole 0.0.0.0/0 table 100"
                subject.push(
                    r.split(" table ")
                        .nth(1)
                        .map(|t| format!("table {t}"))
                        .unwrap_or_else(|| "main table".into()),
                );
                fixes.push(cx.cmd(&format!("ip route del {r}")));
            }
            if let Some(r) = &rule {
                let prio = r.split(':').next().unwrap_or("").trim().to_string();
                subject.push(format!("rule {prio}"));
                fixes.push(cx.cmd(&format!("ip rule del prio {prio}")));
            }
            Finding::new(
                "route-rejected",
                Severity::Error,
                Layer::Host,
                reason.clone(),
            )
            .subject(subject)
            .evidence([trail].into_iter().chain(facts.iter().cloned()))
            .impact("the host itself discards this traffic (blackhole, unreachable or prohibit)")
            .commands(fixes)
            .affects([vm.name.clone()])
        }
        "misrouted" => {
            let facts: Vec<String> = t.hops.last().map(|h| h.facts.clone()).unwrap_or_default();
            // "route 10.0.0.0/25 dev uplink table main"
            let route = facts
                .iter()
                .find_map(|f| f.strip_prefix("route "))
                .map(str::to_string);
            let summary = match &route {
                Some(r) => format!(
                    "route {} takes guests' addresses away from their bridge ({reason})",
                    r.rsplit_once(" table ").map(|x| x.0).unwrap_or(r)
                ),
                None => reason.clone(),
            };
            let mut f = Finding::new("route-misdirected", Severity::Error, Layer::Host, summary)
                .evidence([trail].into_iter().chain(facts.iter().cloned()))
                .impact("traffic to these guests (replies included) leaves the host on the wrong interface")
                .affects([vm.name.clone(), at_vm.clone()]);
            if let Some(r) = route {
                let table = r.rsplit(" table ").next().unwrap_or("main").to_string();
                let spec = r
                    .rsplit_once(" table ")
                    .map(|x| x.0)
                    .unwrap_or(&r)
                    .to_string();
                f = f
                    .subject([format!("route {spec} (table {table})")])
                    .commands([cx.cmd(&format!("ip route del {spec} table {table}"))]);
            } else {
                f = f.subject([at_vm.clone()]);
            }
            f
        }
        "fdb-wrong-port" => {
            let facts: Vec<String> = t.hops.last().map(|h| h.facts.clone()).unwrap_or_default();
            // "fdb: 52:54:.. dev vnet3 static sticky"
            let mut w = facts
                .first()
                .and_then(|f| f.strip_prefix("fdb: "))
                .map(|f| f.split_whitespace())
                .into_iter()
                .flatten();
            let (mac, port) = (
                w.next().unwrap_or("").to_string(),
                w.nth(1).unwrap_or("").to_string(),
            );
            let br = stage_dev("bridge ").unwrap_or_default();
            // the guest whose MAC is pinned elsewhere: "(vm:NAME)" in the reason
            let owner = reason
                .split("(vm:")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .map(str::to_string)
                .unwrap_or_else(|| at_vm.clone());
            Finding::new("fdb-wrong-port", Severity::Error, Layer::Virtual, reason.clone())
                .subject([owner.clone(), format!("{mac} on {port}"), br])
                .evidence([trail].into_iter().chain(facts.iter().cloned()))
                .impact("frames for this guest leave through another port: it receives nothing from the host or its peers")
                .commands([cx.cmd(&format!("bridge fdb del {mac} dev {port} master"))])
                .steps(mac.parse().ok().map(|mac| PlanStep::DelFdb { mac, ifname: port.clone() }))
                .affects([vm.name.clone(), owner])
        }
        "macvtap-host" => {
            let facts: Vec<String> = t.hops.last().map(|h| h.facts.clone()).unwrap_or_default();
            // "macvtap0: macvtap mode bridge on eth0"
            let (dev, parent) = facts
                .first()
                .map(|f| {
                    let dev = f.split(':').next().unwrap_or("").to_string();
                    let parent = f.rsplit(" on ").next().unwrap_or("").to_string();
                    (dev, parent)
                })
                .unwrap_or_default();
            Finding::new("macvtap-host-unreachable", Severity::Error, Layer::Virtual, format!("{}: {reason}", vm.name))
                .subject([at_vm.clone(), dev.clone()])
                .evidence([trail].into_iter().chain(facts.iter().cloned()))
                .impact("the guest and the host cannot talk to each other (the guest reaches the rest of the LAN)")
                .commands([
                    format!("attach the guest to a Linux bridge on {parent} instead (libvirt: <interface type='bridge'><source bridge='br0'/>)"),
                    format!("or give the host its own macvlan on {parent}: {}; {}", cx.cmd(&format!("ip link add link {parent} name {parent}-host type macvlan mode bridge")), cx.cmd(&format!("ip addr add ADDRESS dev {parent}-host"))),
                ])
                .affects([vm.name.clone(), at_vm.clone()])
        }
        "lower-down" => {
            let parent = stage_dev("").unwrap_or_default();
            Finding::new(
                "uplink-down",
                Severity::Error,
                Layer::Host,
                format!("{}: {reason}", vm.name),
            )
            .subject([parent.clone()])
            .evidence([trail])
            .impact("the macvtap guests on this device are cut off")
            .commands([cx.cmd(&format!("ip link set {parent} up"))])
            .affects([vm.name.clone()])
        }
        "macvtap-private" => Finding::new(
            "macvtap-private",
            Severity::Warning,
            Layer::Virtual,
            format!("{}: {reason}", vm.name),
        )
        .subject([vm.name.clone()])
        .evidence([trail])
        .impact("these guests cannot reach each other (deliberate with mode private)")
        .affects([vm.name.clone()]),
        "port-isolated" => {
            let ports: Vec<String> = reason
                .strip_prefix("ports ")
                .and_then(|r| r.split(" are ").next())
                .map(|p| p.split(" and ").map(str::to_string).collect())
                .unwrap_or_default();
            Finding::new("port-isolated", Severity::Warning, Layer::Virtual, format!("{}: {reason}", vm.name))
                .subject(ports.iter().cloned())
                .evidence([trail])
                .impact("these guests cannot reach each other on their bridge (deliberate in private-VLAN setups)")
                .commands(ports.iter().map(|p| cx.cmd(&format!("bridge link set dev {p} isolated off"))))
                .affects([vm.name.clone()])
        }
        "neigh-wrong-mac" => {
            let facts: Vec<String> = t.hops.last().map(|h| h.facts.clone()).unwrap_or_default();
            // "10.0.0.12 dev br0 lladdr 02:..:99 PERMANENT"
            let mut w = facts
                .first()
                .map(|f| f.split_whitespace())
                .into_iter()
                .flatten();
            let (addr, dev) = (
                w.next().unwrap_or("").to_string(),
                w.nth(1).unwrap_or("").to_string(),
            );
            Finding::new("neigh-wrong-mac", Severity::Error, Layer::Host, reason.clone())
                .subject([at_vm.clone(), format!("{addr} dev {dev}")])
                .evidence([trail].into_iter().chain(facts.iter().cloned()))
                .impact("everything the host sends to this guest (replies, forwarded traffic) goes to another MAC")
                .commands([cx.cmd(&format!("ip neigh del {addr} dev {dev}"))])
                .steps(addr.parse().ok().map(|address| PlanStep::DelNeighbour { ifname: dev.clone(), address }))
                .affects([vm.name.clone(), at_vm.clone()])
        }
        "no-route" => Finding::new(
            "no-default-route",
            Severity::Error,
            Layer::Host,
            reason.clone(),
        )
        .subject(["main table"])
        .evidence([trail])
        .affects([vm.name.clone()]),
        "vlan-mismatch" | "ovs-not-running" => {
            // a Linux bridge filtering VLANs: the guest's port joins the VLAN of the host's
            // own address on the bridge
            let fixes: Vec<String> = vm
                .vnics
                .iter()
                .filter_map(|n| {
                    let port = n.host_dev.as_deref()?;
                    let br = s.link(s.link(port)?.master.as_deref()?)?;
                    let b = br.bridge.as_ref().filter(|b| b.vlan_filtering)?;
                    let want = kvmnet_model::link::pvid_of(&b.self_vlans)?;
                    Some(cx.cmd(&format!(
                        "bridge vlan add dev {port} vid {want} pvid untagged"
                    )))
                })
                .collect();
            on_vm(cause.as_str(), Severity::Error, Layer::Virtual).commands(fixes)
        }
        "no-listener" => Finding::new("port-closed", Severity::Error, Layer::Guest, reason.clone())
            .subject([what.to_string()])
            .evidence([trail])
            .affects([vm.name.clone()]),
        _ => on_vm("path-dropped", Severity::Error, Layer::Virtual),
    };
    Some(f)
}

/// The VM's subnet on its bridge (the bridge address's network that holds the guest).
fn vm_subnet(cx: &Ctx, vm: &Vm) -> (Option<ipnet::IpNet>, Option<String>) {
    let s = cx.s;
    for n in &vm.vnics {
        let br = n
            .host_dev
            .as_deref()
            .and_then(|d| s.link(d))
            .and_then(|l| l.master.clone())
            .or_else(|| n.source_bridge.clone());
        let addrs = guest_addrs(vm, n);
        if let Some(b) = &br {
            let net = s
                .addresses_of(b)
                .find(|a| {
                    a.address.is_ipv4() && addrs.iter().any(|g| a.network().contains(&g.addr()))
                })
                .map(|a| a.network());
            if let Some(net) = net {
                return (Some(net), br);
            }
        }
        if let Some(a) = addrs.iter().find(|a| a.addr().is_ipv4()) {
            return (Some(a.trunc()), br);
        }
    }
    (None, None)
}

/// Symptoms get `caused_by` their root cause.
pub(crate) fn assign_causes(cx: &Ctx, mut findings: Vec<Finding>) -> Vec<Finding> {
    let s = cx.s;
    // guest-no-address because the network's DHCP server is not running
    let dhcp_down: Vec<(Vec<String>, Vec<String>)> = findings
        .iter()
        .filter(|f| f.code == "dhcp-not-running")
        .map(|f| (f.subject.clone(), f.affects.clone()))
        .collect();
    let roots: Vec<(String, Vec<String>)> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error && f.caused_by.is_none() && !is_symptom(&f.code))
        .map(|f| (f.code.clone(), f.affects.clone()))
        .collect();
    let guest_roots: Vec<(String, Vec<String>)> = findings
        .iter()
        .filter(|f| {
            matches!(
                f.code.as_str(),
                "guest-wrong-subnet"
                    | "guest-wrong-netmask"
                    | "guest-no-address"
                    | "guest-link-down"
                    | "tap-not-in-bridge"
                    | "tap-down"
                    | "bridge-down"
                    | "vnic-link-down"
            )
        })
        .map(|f| (f.code.clone(), f.affects.clone()))
        .collect();
    for f in findings.iter_mut() {
        if f.caused_by.is_some() {
            continue;
        }
        if matches!(
            f.code.as_str(),
            "guest-no-default-route" | "guest-wrong-gateway" | "gateway-unreachable"
        ) {
            if let Some((code, _)) = guest_roots.iter().find(|(c, aff)| {
                *c != f.code && !f.affects.is_empty() && f.affects.iter().all(|v| aff.contains(v))
            }) {
                f.caused_by = Some(code.clone());
                continue;
            }
        }
        if f.code == "guest-no-address" {
            if let Some((_, _)) = dhcp_down
                .iter()
                .find(|(_, aff)| f.affects.iter().any(|v| aff.contains(v)))
            {
                f.caused_by = Some("dhcp-not-running".into());
                continue;
            }
        }
        if is_symptom(&f.code) {
            if let Some((code, _)) = roots
                .iter()
                .find(|(c, aff)| *c != f.code && f.affects.iter().all(|v| aff.contains(v)))
            {
                f.caused_by = Some(code.clone());
            }
        }
    }
    let _ = s;
    findings
}

/// Codes that are usually consequences of something else on the same path.
fn is_symptom(code: &str) -> bool {
    matches!(
        code,
        "gateway-unreachable" | "dns-unreachable" | "path-dropped" | "port-closed"
    )
}

pub(crate) fn finish_verdicts(
    cx: &Ctx,
    pend: Vec<Pending>,
    findings: &[Finding],
) -> Vec<VmVerdict> {
    let target = cx.target;
    pend.into_iter()
        .map(|p| {
            let vm_errors: Vec<&Finding> = findings
                .iter()
                .filter(|f| f.is_root_error() && f.affects.contains(&p.vm))
                .collect();
            let root = p
                .root
                .as_ref()
                .and_then(|(code, subj)| {
                    findings
                        .iter()
                        .find(|f| &f.code == code && &f.subject == subj)
                })
                .map(|f| match &f.caused_by {
                    Some(c) => findings
                        .iter()
                        .find(|x| &x.code == c && x.affects.iter().any(|v| v == &p.vm))
                        .unwrap_or(f),
                    None => f,
                })
                .or_else(|| vm_errors.first().copied());
            let probe_fails: Vec<String> = cx
                .opts
                .probes
                .iter()
                .filter(|x| x.from == p.vm && !x.ok)
                .map(|x| {
                    format!(
                        "{:?} {}{}",
                        x.kind,
                        x.target,
                        x.port.map(|n| format!(":{n}")).unwrap_or_default()
                    )
                    .to_lowercase()
                })
                .collect();
            let failed: Vec<&String> = p
                .results
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(w, _)| w)
                .collect();
            let reached: Vec<&String> = p
                .results
                .iter()
                .filter(|(_, ok)| *ok)
                .map(|(w, _)| w)
                .collect();
            let summary = if p.results.is_empty() {
                if vm_errors.is_empty() {
                    "no address known: paths not traced".to_string()
                } else {
                    "not connected".to_string()
                }
            } else if failed.is_empty() {
                format!(
                    "reaches {}",
                    reached
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!(
                    "cannot reach {}",
                    failed
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = target;
            let summary = if probe_fails.is_empty() {
                summary
            } else {
                format!("{summary}; probes failed: {}", probe_fails.join(", "))
            };
            VmVerdict {
                vm: p.vm.clone(),
                ok: root.is_none() && failed.is_empty() && probe_fails.is_empty(),
                summary,
                cause: root.map(|f| f.code.clone()),
                cause_subject: root.map(|f| f.subject.clone()).unwrap_or_default(),
                fix: root.map(|f| {
                    if !f.fix.steps.is_empty() {
                        "kvmnet doctor --fix".to_string()
                    } else {
                        f.fix
                            .commands
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "see the finding".to_string())
                    }
                }),
            }
        })
        .collect()
}

/// Declared port forwards: traffic from the upstream to the host port must reach the guest.
pub(crate) fn check_port_forwards(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let Some(uplink) = cx.uplink.clone() else {
        return;
    };
    let from = s
        .default_route(false)
        .and_then(|r| r.first_gateway())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1)));
    for net in &s.networks {
        for pf in &net.port_forwards {
            let host_addr = pf.host_address.or_else(|| {
                s.addresses_of(&uplink)
                    .find(|a| a.address.is_ipv4() && a.scope == "global")
                    .map(|a| a.address)
            });
            let Some(host_addr) = host_addr else { continue };
            let proto = if pf.proto == "udp" { 17 } else { 6 };
            let spec = FlowSpec {
                from: Endpoint::Addr(from),
                to: Endpoint::Addr(host_addr),
                proto,
                dport: pf.host_port,
                sport: None,
                size: None,
                df: true,
            };
            let Ok(t) = cx.tracer.trace(&spec) else {
                continue;
            };
            let what = format!(
                "{}/{} {}:{} -> {}:{}",
                net.name, pf.proto, host_addr, pf.host_port, pf.guest_ip, pf.guest_port
            );
            let affected: Vec<String> = s
                .vms
                .iter()
                .filter(|v| {
                    v.vnics
                        .iter()
                        .any(|n| n.addresses.iter().any(|a| a.address == pf.guest_ip))
                        || v.guest.as_ref().is_some_and(|g| {
                            g.interfaces
                                .iter()
                                .any(|i| i.addresses.iter().any(|a| a.addr() == pf.guest_ip))
                        })
                })
                .map(|v| v.name.clone())
                .collect();
            let landed_on_host = t
                .hops
                .iter()
                .any(|h| h.stage == "routing" && h.decision.contains("is local"));
            let dnat_ok = t.hops.iter().any(|h| {
                h.stage == "ip prerouting"
                    && h.decision.starts_with("dnat")
                    && h.decision.contains(&pf.guest_ip.to_string())
            });
            match &t.verdict {
                Verdict::Delivered { .. } if dnat_ok => {}
                Verdict::Dropped {
                    cause,
                    at,
                    reason,
                    rule,
                    ..
                } if dnat_ok || !landed_on_host => {
                    let mut f = Finding::new(
                        "port-forward-blocked",
                        Severity::Error,
                        Layer::Virtual,
                        format!("port forward {what}: {reason}"),
                    )
                    .subject([net.name.clone(), format!("{}/{}", pf.proto, pf.host_port)])
                    .evidence([format!(
                        "trace {from} -> {host_addr} {}/{}: dropped at {at} ({cause})",
                        pf.proto, pf.host_port
                    )])
                    .impact(format!(
                        "clients cannot reach {}:{} through the forward",
                        pf.guest_ip, pf.guest_port
                    ))
                    .affects(affected.clone());
                    if let Some(r) = rule {
                        f = f.evidence([format!(
                            "rule: {} {} {}{}: {}",
                            r.rule.family,
                            r.rule.table,
                            r.rule.chain,
                            r.rule
                                .handle
                                .map(|h| format!(" handle {h}"))
                                .unwrap_or_default(),
                            r.text
                        )]);
                    }
                    // the same drop already diagnosed on the guests' own paths: that is the cause
                    if let Some(root) = out.iter().find(|e| {
                        e.caused_by.is_none()
                            && e.severity == Severity::Error
                            && e.code != "port-forward-blocked"
                            && (e.summary == *reason
                                || e.evidence.iter().any(|ev| ev.ends_with(reason.as_str())))
                    }) {
                        f.caused_by = Some(root.code.clone());
                    }
                    out.push(f);
                }
                _ => {
                    out.push(
                        Finding::new(
                            "port-forward-missing",
                            Severity::Error,
                            Layer::Virtual,
                            format!("port forward {what} is declared, but nothing translates the traffic"),
                        )
                        .subject([net.name.clone(), format!("{}/{}", pf.proto, pf.host_port)])
                        .evidence([format!("trace {from} -> {host_addr} {}/{}: no DNAT in prerouting; the packet stays on the host", pf.proto, pf.host_port)])
                        .impact(format!("connections to {}:{} never reach {}", host_addr, pf.host_port, pf.guest_ip))
                        .commands([
                            cx.cmd("nft add table inet kvmnet"),
                            cx.cmd("nft add chain inet kvmnet prerouting '{ type nat hook prerouting priority dstnat; }'"),
                            cx.cmd(&format!("nft add rule inet kvmnet prerouting iifname \"{uplink}\" {} dport {} dnat ip to {}:{}", pf.proto, pf.host_port, pf.guest_ip, pf.guest_port)),
                        ])
                        .affects(affected.clone()),
                    );
                }
            }
        }
    }
}
