//! Switching checks beyond the Linux bridge: Open vSwitch (daemons, ports libvirt expects,
//! custom OpenFlow rules), bonds (OVS and Linux) and VLAN consistency (OVS ports and Linux
//! bridges on VLAN links).

use std::collections::BTreeMap;

use ipnet::IpNet;
use kvmnet_model::{LinkKind, Vm, Vnic};

use crate::finding::{Finding, Layer, Severity};
use crate::virt::guest_addrs;
use crate::Ctx;

/// (subnet, VLAN) of the host's own addresses on an OVS bridge's internal ports: which VLAN
/// carries which subnet, as the gateway side says.
pub(crate) fn subnet_vlans(cx: &Ctx, bridge: &str) -> Vec<(IpNet, u16)> {
    let s = cx.s;
    let Some(b) = s.ovs.as_ref().and_then(|o| o.bridge(bridge)) else {
        return vec![];
    };
    let mut out = vec![];
    for p in &b.ports {
        for i in p.interfaces.iter().filter(|i| i.kind == "internal") {
            for a in s
                .addresses_of(&i.name)
                .filter(|a| a.scope == "global" && a.address.is_ipv4())
            {
                out.push((a.network(), p.native_vlan()));
            }
        }
    }
    out
}

/// The switching segment of a vNIC: ("ovs BRIDGE" | "linux", VLAN), when it has a VLAN.
fn vnic_vlan(cx: &Ctx, n: &Vnic) -> Option<(String, String, u16)> {
    let s = cx.s;
    let dev = n.host_dev.as_deref()?;
    if let Some((b, p)) = s.ovs.as_ref().and_then(|o| o.port_of(dev)) {
        return Some((format!("ovs {}", b.name), p.name.clone(), p.native_vlan()));
    }
    // a Linux bridge whose uplink is a VLAN link: the bridge is that VLAN's segment
    let master = s.link(dev)?.master.clone()?;
    let vid = bridge_vlan(s, &master)?;
    Some(("linux".to_string(), master, vid))
}

/// The VLAN of a Linux bridge that has a VLAN link among its ports (a bridge per VLAN).
pub(crate) fn bridge_vlan(s: &kvmnet_model::HostState, bridge: &str) -> Option<u16> {
    s.ports_of(bridge)
        .find_map(|p| (p.kind == LinkKind::Vlan).then_some(p.vlan.as_ref().map(|v| v.id))?)
}

/// True when the guest's address belongs to a subnet that lives on another VLAN segment of
/// this host than the one its vNIC is on (vlan-mismatch covers it).
pub(crate) fn subnet_on_other_vlan(cx: &Ctx, vm: &Vm, n: &Vnic) -> bool {
    let s = cx.s;
    let addrs: Vec<IpNet> = guest_addrs(vm, n)
        .into_iter()
        .filter(|a| a.addr().is_ipv4())
        .collect();
    let Some((switch, port, vid)) = vnic_vlan(cx, n) else {
        return false;
    };
    if let Some(br) = switch.strip_prefix("ovs ") {
        let _ = port;
        return subnet_vlans(cx, br)
            .iter()
            .any(|(net, w)| *w != vid && addrs.iter().any(|a| net.contains(&a.addr())));
    }
    s.bridges().any(|b| {
        b.name != port
            && bridge_vlan(s, &b.name).is_some_and(|w| w != vid)
            && s.addresses_of(&b.name).any(|x| {
                x.scope == "global" && addrs.iter().any(|a| x.network().contains(&a.addr()))
            })
    })
}

fn vm_label(vm: &Vm) -> String {
    format!("vm:{}", vm.name)
}

pub(crate) fn check(cx: &Ctx, out: &mut Vec<Finding>) {
    check_daemons(cx, out);
    check_ports(cx, out);
    check_bonds(cx, out);
    check_vlans(cx, out);
}

fn on_ovs(cx: &Ctx, vm: &Vm) -> bool {
    vm.vnics.iter().any(|n| {
        n.virtualport.as_deref() == Some("openvswitch")
            || n.host_dev
                .as_deref()
                .is_some_and(|d| cx.s.ovs.as_ref().is_some_and(|o| o.port_of(d).is_some()))
    })
}

fn check_daemons(cx: &Ctx, out: &mut Vec<Finding>) {
    let Some(ovs) = &cx.s.ovs else { return };
    let kernel_dp = cx.s.links.iter().any(|l| l.kind == LinkKind::Openvswitch);
    if ovs.db_running && ovs.vswitchd_running {
        return;
    }
    if ovs.db_running && ovs.bridges.is_empty() && !kernel_dp {
        return;
    }
    let affected: Vec<String> = cx
        .vms()
        .filter(|v| on_ovs(cx, v))
        .map(|v| v.name.clone())
        .collect();
    let (what, cmd) = if !ovs.db_running {
        (
            "ovsdb-server does not answer",
            "systemctl start openvswitch-switch   (or: ovs-ctl start)",
        )
    } else {
        (
            "ovs-vswitchd does not run",
            "systemctl restart openvswitch-switch   (or: ovs-ctl --no-ovsdb-server start)",
        )
    };
    out.push(
        Finding::new(
            "ovs-not-running",
            Severity::Error,
            Layer::Virtual,
            format!("Open vSwitch is configured here, but {what}"),
        )
        .subject(["openvswitch".to_string()])
        .evidence([
            format!(
                "database {}: {}",
                ovs.db,
                if ovs.db_running {
                    "answers"
                } else {
                    "no answer"
                }
            ),
            format!(
                "ovs-vswitchd: {}",
                if ovs.vswitchd_running {
                    "running"
                } else {
                    "not running"
                }
            ),
            format!(
                "bridges configured: {}",
                if ovs.bridges.is_empty() {
                    "unknown (database down)".to_string()
                } else {
                    ovs.bridges
                        .iter()
                        .map(|b| b.name.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ])
        .impact("no frame is switched on the Open vSwitch bridges: every VM on them is cut off")
        .commands([cmd.to_string()])
        .affects(affected),
    );
}

fn check_ports(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let Some(ovs) = &s.ovs else { return };
    if !ovs.db_running {
        return;
    }
    for vm in cx.vms() {
        for n in &vm.vnics {
            let Some(dev) = n.host_dev.as_deref() else {
                continue;
            };
            let port = ovs.port_of(dev);
            if n.virtualport.as_deref() == Some("openvswitch") && port.is_none() {
                let br = n
                    .source_bridge
                    .clone()
                    .unwrap_or_else(|| "its bridge".into());
                out.push(
                    Finding::new(
                        "ovs-port-missing",
                        Severity::Error,
                        Layer::Virtual,
                        format!("{}/{dev}: libvirt attaches it to Open vSwitch {br}, but OVS has no port {dev}", vm.name),
                    )
                    .subject([vm.name.clone(), dev.to_string(), br.clone()])
                    .evidence([
                        "domain interface: <virtualport type='openvswitch'/>".to_string(),
                        format!(
                            "OVS bridges: {}",
                            ovs.bridges.iter().map(|b| b.name.clone()).collect::<Vec<_>>().join(", ")
                        ),
                    ])
                    .impact("the guest's frames go nowhere: it is cut off")
                    .commands([format!("ovs-vsctl add-port {br} {dev}{}", n.vlan_tags.first().map(|t| format!(" tag={t}")).unwrap_or_default())])
                    .affects([vm.name.clone()]),
                );
            }
            // libvirt's <vlan> against the port OVS actually has
            if let (Some((b, p)), kvmnet_model::VmSource::Libvirt) = (port, vm.source) {
                let want: Vec<u16> = n.vlan_tags.clone();
                let have: Vec<u16> = if p.is_trunk() {
                    p.trunks.clone()
                } else {
                    p.tag.into_iter().collect()
                };
                if !want.is_empty() && want != have {
                    out.push(
                        Finding::new(
                            "vlan-mismatch",
                            Severity::Error,
                            Layer::Virtual,
                            format!("{}/{dev}: the domain asks for VLAN {want:?}, but OVS port {} of {} has {have:?}", vm.name, p.name, b.name),
                        )
                        .subject([vm.name.clone(), p.name.clone()])
                        .evidence([
                            format!("domain interface: <vlan> {want:?}{}", if n.vlan_trunk { " trunk" } else { "" }),
                            format!("ovs port {}: tag {:?}, trunks {:?}", p.name, p.tag, p.trunks),
                        ])
                        .impact("the guest is on another VLAN than its definition says")
                        .commands([if n.vlan_trunk {
                            format!("ovs-vsctl set port {} trunks={}", p.name, want.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","))
                        } else {
                            format!("ovs-vsctl set port {} tag={}", p.name, want[0])
                        }])
                        .affects([vm.name.clone()]),
                    );
                }
            }
            if let Some((b, p)) = port {
                if let Some(i) = p
                    .interfaces
                    .iter()
                    .find(|i| i.name == dev && i.error.is_some())
                {
                    out.push(
                        Finding::new(
                            "ovs-port-missing",
                            Severity::Error,
                            Layer::Virtual,
                            format!(
                                "{}/{dev}: Open vSwitch cannot open port {dev} of {}",
                                vm.name, b.name
                            ),
                        )
                        .subject([vm.name.clone(), dev.to_string(), b.name.clone()])
                        .evidence([format!(
                            "interface {dev}: error \"{}\"",
                            i.error.clone().unwrap_or_default()
                        )])
                        .impact("the port exists in the database only: the guest is cut off")
                        .commands([format!(
                            "ovs-vsctl del-port {} {dev}; ovs-vsctl add-port {} {dev}",
                            b.name, b.name
                        )])
                        .affects([vm.name.clone()]),
                    );
                }
            }
        }
    }
    for b in &ovs.bridges {
        if let Some(f) = b.custom_flows.as_ref().filter(|f| !f.is_empty()) {
            out.push(
                Finding::new(
                    "ovs-flows-custom",
                    Severity::Info,
                    Layer::Virtual,
                    format!("{} has {} OpenFlow rule(s) besides the default NORMAL", b.name, f.len()),
                )
                .subject([b.name.clone()])
                .evidence(f.iter().take(5).cloned())
                .impact("layer-2 behaviour depends on these rules: kvmnet's trace simulates NORMAL only (ovs-appctl ofproto/trace answers exactly)")
                .commands([format!("ovs-ofctl dump-flows {}", b.name)]),
            );
        }
    }
}

fn check_bonds(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    // Open vSwitch bonds
    if let Some(ovs) = s.ovs.as_ref().filter(|o| o.db_running) {
        for b in &ovs.bridges {
            for p in b.ports.iter().filter(|p| p.is_bond()) {
                let down: Vec<&str> = p
                    .interfaces
                    .iter()
                    .filter(|i| !i.is_up())
                    .map(|i| i.name.as_str())
                    .collect();
                let lacp_on = matches!(p.lacp.as_deref(), Some("active" | "passive"));
                let unnegotiated: Vec<&str> = p
                    .interfaces
                    .iter()
                    .filter(|i| lacp_on && i.is_up() && i.lacp_current == Some(false))
                    .map(|i| i.name.as_str())
                    .collect();
                let up = p.interfaces.len() - down.len();
                if down.is_empty() && unnegotiated.is_empty() {
                    continue;
                }
                let mut ev: Vec<String> = p
                    .interfaces
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: link {}, admin {}{}",
                            i.name,
                            i.link_state.as_deref().unwrap_or("?"),
                            i.admin_state.as_deref().unwrap_or("?"),
                            i.lacp_current
                                .map(|c| format!(
                                    ", lacp {}",
                                    if c { "current" } else { "not negotiated" }
                                ))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                ev.insert(
                    0,
                    format!(
                        "bond {} on {}: mode {}, lacp {}",
                        p.name,
                        b.name,
                        p.bond_mode.as_deref().unwrap_or("active-backup"),
                        p.lacp.as_deref().unwrap_or("off")
                    ),
                );
                out.push(bond_finding(
                    &p.name,
                    up,
                    &down,
                    &unnegotiated,
                    ev,
                    format!("ovs-appctl bond/show {}", p.name),
                ));
            }
        }
    }
    // Linux bonds
    for l in s.links.iter().filter(|l| l.kind == LinkKind::Bond) {
        let Some(info) = &l.bond else { continue };
        let members: Vec<&kvmnet_model::Link> = s
            .links
            .iter()
            .filter(|m| m.master.as_deref() == Some(l.name.as_str()))
            .collect();
        let down: Vec<&str> = members
            .iter()
            .filter(|m| {
                !m.admin_up
                    || m.carrier == Some(false)
                    || m.bond_port.as_ref().is_some_and(|b| b.mii_status != "up")
            })
            .map(|m| m.name.as_str())
            .collect();
        let lacp_unnegotiated =
            info.mode == "802.3ad" && info.ad_partner_mac.is_some_and(|m| m.0 == [0; 6]);
        let unnegotiated: Vec<&str> = if lacp_unnegotiated {
            members.iter().map(|m| m.name.as_str()).collect()
        } else {
            vec![]
        };
        if down.is_empty() && unnegotiated.is_empty() {
            continue;
        }
        let mut ev = vec![format!(
            "bond {}: mode {}{}",
            l.name,
            info.mode,
            info.active_member
                .as_deref()
                .map(|a| format!(", active {a}"))
                .unwrap_or_default()
        )];
        for m in &members {
            ev.push(format!(
                "{}: {}{}",
                m.name,
                if m.admin_up { "up" } else { "down" },
                m.bond_port
                    .as_ref()
                    .map(|b| format!(", mii {}", b.mii_status))
                    .unwrap_or_default()
            ));
        }
        if lacp_unnegotiated {
            ev.push("802.3ad partner MAC 00:00:00:00:00:00: no LACP partner answered".into());
        }
        let up = members.len() - down.len();
        out.push(bond_finding(
            &l.name,
            up,
            &down,
            &unnegotiated,
            ev,
            format!("cat /proc/net/bonding/{}", l.name),
        ));
    }
}

fn bond_finding(
    bond: &str,
    up: usize,
    down: &[&str],
    unnegotiated: &[&str],
    evidence: Vec<String>,
    cmd: String,
) -> Finding {
    let (sev, summary, impact) = if up == 0 {
        (
            Severity::Error,
            format!("bond {bond}: every member is down"),
            "nothing passes the bond: everything behind it is cut off".to_string(),
        )
    } else if !down.is_empty() {
        (
            Severity::Warning,
            format!("bond {bond} is degraded: {} down", down.join(", ")),
            format!(
                "traffic still flows over {up} member{}, without redundancy{}",
                if up == 1 { "" } else { "s" },
                if up == 1 {
                    ": one more failure cuts it off"
                } else {
                    ""
                }
            ),
        )
    } else {
        (
            Severity::Warning,
            format!("bond {bond}: LACP not negotiated on {}", unnegotiated.join(", ")),
            "the switch does not aggregate these links: traffic may be dropped or looped depending on the switch".to_string(),
        )
    };
    Finding::new("bond-degraded", sev, Layer::Host, summary)
        .subject([bond.to_string()])
        .evidence(evidence)
        .impact(impact)
        .commands([
            cmd,
            "check the member's cable and the switch port (and its LACP configuration)".to_string(),
        ])
}

fn check_vlans(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    // each VM vNIC with a VLAN, grouped by subnet
    struct Member {
        vm: String,
        port: String,
        switch: String,
        vid: u16,
    }
    let mut by_subnet: BTreeMap<IpNet, Vec<Member>> = BTreeMap::new();
    for vm in cx.vms() {
        for n in &vm.vnics {
            let Some((switch, port, vid)) = vnic_vlan(cx, n) else {
                continue;
            };
            for a in guest_addrs(vm, n)
                .into_iter()
                .filter(|a| a.addr().is_ipv4())
            {
                // the gateway side's word first: the subnet belongs to one VLAN of the switch
                if switch == "linux" {
                    let home = s.bridges().find(|b| {
                        bridge_vlan(s, &b.name).is_some_and(|w| w != vid)
                            && s.addresses_of(&b.name)
                                .any(|x| x.scope == "global" && x.network().contains(&a.addr()))
                    });
                    let mine = s
                        .addresses_of(&port)
                        .any(|x| x.network().contains(&a.addr()));
                    if let (Some(h), false) = (home, mine) {
                        let w = bridge_vlan(s, &h.name).unwrap_or(0);
                        out.push(
                            Finding::new(
                                "vlan-mismatch",
                                Severity::Error,
                                Layer::Virtual,
                                format!("{}: on bridge {port} (VLAN {vid}), but its subnet is on {} (VLAN {w})", vm.name, h.name),
                            )
                            .subject([vm.name.clone(), port.clone()])
                            .evidence([
                                format!("{port}: VLAN {vid}"),
                                format!("{}: {a}", vm_label(vm)),
                                format!("{}: VLAN {w}, the host's gateway for {}", h.name, a.trunc()),
                            ])
                            .impact("the guest's gateway and the peers of its subnet are on another VLAN: it reaches nobody")
                            .commands([cx.cmd(&format!(
                                "ip link set {} master {}",
                                n.host_dev.clone().unwrap_or_default(),
                                h.name
                            ))])
                            .affects([vm.name.clone()]),
                        );
                        continue;
                    }
                }
                if let Some(br) = switch.strip_prefix("ovs ") {
                    let homes = subnet_vlans(cx, br);
                    let mine = homes
                        .iter()
                        .any(|(net, w)| *w == vid && net.contains(&a.addr()));
                    if let Some((net, w)) = homes
                        .iter()
                        .find(|(net, w)| *w != vid && net.contains(&a.addr()))
                    {
                        if !mine {
                            out.push(
                                Finding::new(
                                    "vlan-mismatch",
                                    Severity::Error,
                                    Layer::Virtual,
                                    format!("{}: port {port} is on VLAN {vid}, but its subnet {net} is on VLAN {w}", vm.name),
                                )
                                .subject([vm.name.clone(), port.clone()])
                                .evidence([
                                    format!("{br} port {port}: VLAN {vid}"),
                                    format!("{}: {a}", vm_label(vm)),
                                    format!("{br}: the host's {net} is on VLAN {w}"),
                                ])
                                .impact("the guest's gateway and the peers of its subnet are on another VLAN: it reaches nobody")
                                .commands([format!("ovs-vsctl set port {port} tag={w}")])
                                .affects([vm.name.clone()]),
                            );
                            continue;
                        }
                    }
                }
                by_subnet.entry(a.trunc()).or_default().push(Member {
                    vm: vm.name.clone(),
                    port: port.clone(),
                    switch: switch.clone(),
                    vid,
                });
            }
        }
    }
    // two VMs in one subnet on different VLANs: the odd ones out are mismatched
    for (net, members) in by_subnet {
        let mut count: BTreeMap<u16, usize> = BTreeMap::new();
        for m in &members {
            *count.entry(m.vid).or_default() += 1;
        }
        if count.len() < 2 {
            continue;
        }
        let max = count.values().copied().max().unwrap_or(0);
        let majority: Vec<u16> = count
            .iter()
            .filter(|(_, c)| **c == max)
            .map(|(v, _)| *v)
            .collect();
        // a tie names every side
        let odd: Vec<&Member> = if majority.len() == 1 {
            members.iter().filter(|m| m.vid != majority[0]).collect()
        } else {
            members.iter().collect()
        };
        for m in odd {
            let others: Vec<String> = members
                .iter()
                .filter(|o| o.vid != m.vid)
                .map(|o| format!("vm:{} on VLAN {} ({})", o.vm, o.vid, o.port))
                .collect();
            let fix = if m.switch.starts_with("ovs ") {
                format!(
                    "ovs-vsctl set port {} tag={}",
                    m.port,
                    members
                        .iter()
                        .find(|o| o.vid != m.vid)
                        .map(|o| o.vid)
                        .unwrap_or(0)
                )
            } else {
                format!(
                    "move {} to the bridge of VLAN {}",
                    m.vm,
                    members
                        .iter()
                        .find(|o| o.vid != m.vid)
                        .map(|o| o.vid)
                        .unwrap_or(0)
                )
            };
            out.push(
                Finding::new(
                    "vlan-mismatch",
                    Severity::Error,
                    Layer::Virtual,
                    format!(
                        "{}: in subnet {net} but on VLAN {} while its peers are on another VLAN",
                        m.vm, m.vid
                    ),
                )
                .subject([m.vm.clone(), m.port.clone()])
                .evidence(
                    std::iter::once(format!("vm:{} on VLAN {} ({})", m.vm, m.vid, m.port))
                        .chain(others),
                )
                .impact("guests of one subnet on different VLANs cannot reach each other")
                .commands([fix])
                .affects([m.vm.clone()]),
            );
        }
    }
    // a VM's VLAN that no uplink of its OVS bridge carries (when the bridge has uplinks)
    let Some(ovs) = s.ovs.as_ref() else { return };
    let vm_devs: Vec<&str> = s
        .vms
        .iter()
        .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
        .collect();
    for vm in cx.vms() {
        for n in &vm.vnics {
            let Some((b, p)) = n.host_dev.as_deref().and_then(|d| ovs.port_of(d)) else {
                continue;
            };
            let vid = p.native_vlan();
            let uplinks: Vec<_> = b
                .ports
                .iter()
                .filter(|u| {
                    u.interfaces
                        .iter()
                        .all(|i| i.kind != "internal" && !vm_devs.contains(&i.name.as_str()))
                })
                .collect();
            if uplinks.is_empty() || uplinks.iter().any(|u| u.carries(vid)) {
                continue;
            }
            if !ovs.host_ports(&b.name, vid).is_empty() {
                continue;
            }
            out.push(
                Finding::new(
                    "vlan-mismatch",
                    Severity::Warning,
                    Layer::Virtual,
                    format!(
                        "{}: VLAN {vid} of port {} leaves the host through no uplink of {}",
                        vm.name, p.name, b.name
                    ),
                )
                .subject([vm.name.clone(), p.name.clone()])
                .evidence(uplinks.iter().map(|u| {
                    format!(
                        "uplink {}: {}",
                        u.name,
                        if u.is_trunk() {
                            format!(
                                "trunk {}",
                                if u.trunks.is_empty() {
                                    "all".to_string()
                                } else {
                                    u.trunks
                                        .iter()
                                        .map(|t| t.to_string())
                                        .collect::<Vec<_>>()
                                        .join(",")
                                }
                            )
                        } else {
                            format!("access VLAN {}", u.native_vlan())
                        }
                    )
                }))
                .impact("the guest reaches only guests of its VLAN on this host, nothing beyond it")
                .commands(
                    uplinks
                        .first()
                        .map(|u| format!("ovs-vsctl add port {} trunks {vid}", u.name)),
                )
                .affects([vm.name.clone()]),
            );
        }
    }
}
