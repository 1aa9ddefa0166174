//! Virtual-network checks: vNIC host devices, bridges and ports, MTUs, MACs, VLANs, networks
//! (DHCP, activity), address conflicts on a segment, and competing firewall managers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use kvmnet_model::network::NetworkOrigin;
use kvmnet_model::plan::PlanStep;
use kvmnet_model::vm::{Vnic, VnicType};
use kvmnet_model::{LinkKind, MacAddr, PortState, Vm, VmSource};

use crate::finding::{Finding, Layer, Severity};
use crate::Ctx;

/// Addresses a guest uses on a vNIC (its own view first, then leases/neighbours).
pub(crate) fn guest_addrs(vm: &Vm, n: &Vnic) -> Vec<ipnet::IpNet> {
    if let (Some(g), Some(gi)) = (&vm.guest, &n.guest_ifname) {
        if let Some(i) = g.interfaces.iter().find(|i| &i.name == gi) {
            return i.addresses.clone();
        }
    }
    n.addresses
        .iter()
        .map(|a| {
            ipnet::IpNet::new(
                a.address,
                a.prefix_len
                    .unwrap_or(if a.address.is_ipv4() { 32 } else { 128 }),
            )
            .unwrap_or_else(|_| ipnet::IpNet::from(a.address))
        })
        .collect()
}

/// The bridge a vNIC should be attached to, and why kvmnet thinks so.
pub(crate) fn expected_bridge(cx: &Ctx, vm: &Vm, n: &Vnic) -> Option<(String, String)> {
    let s = cx.s;
    // Open vSwitch ports are checked against the switch, not as Linux bridge ports
    let on_ovs = n
        .host_dev
        .as_deref()
        .is_some_and(|d| s.ovs.as_ref().is_some_and(|o| o.port_of(d).is_some()));
    if on_ovs || n.virtualport.as_deref() == Some("openvswitch") {
        return None;
    }
    if vm.source == VmSource::Libvirt {
        if let Some(b) = &n.source_bridge {
            return Some((
                b.clone(),
                format!("the domain's interface is configured on bridge {b}"),
            ));
        }
        if let Some(net) = n.network.as_deref().and_then(|x| s.network(x)) {
            if let Some(b) = &net.bridge {
                return Some((b.clone(), format!("network {} uses bridge {b}", net.name)));
            }
        }
    }
    if let Some(b) = n
        .source_bridge
        .as_ref()
        .filter(|_| vm.source == VmSource::Qemu)
    {
        let dev_master = n
            .host_dev
            .as_deref()
            .and_then(|d| s.link(d))
            .and_then(|l| l.master.clone());
        if dev_master.as_deref() != Some(b.as_str()) && n.iface_type == VnicType::Bridge {
            return Some((
                b.clone(),
                format!("qemu was started with -netdev bridge,br={b}"),
            ));
        }
    }
    // otherwise: the bridge whose subnet holds the guest's address
    for a in guest_addrs(vm, n) {
        if let Some(b) = s.bridges().find(|b| {
            s.addresses_of(&b.name)
                .any(|x| x.scope == "global" && x.network().contains(&a.addr()))
        }) {
            return Some((
                b.name.clone(),
                format!("the guest's address {a} is on {}'s subnet", b.name),
            ));
        }
    }
    None
}

pub(crate) fn check(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let mut down_bridges: Vec<String> = vec![];
    for vm in cx.vms() {
        for (i, n) in vm.vnics.iter().enumerate() {
            let vnic_name = format!(
                "{}/{}",
                vm.name,
                n.host_dev.clone().unwrap_or_else(|| format!("nic{i}"))
            );
            let nic = &vm.name;
            if n.link_up == Some(false) {
                out.push(
                    Finding::new(
                        "vnic-link-down",
                        Severity::Error,
                        Layer::Virtual,
                        format!("{vnic_name}: the domain interface's link is set down"),
                    )
                    .subject([nic.clone(), n.host_dev.clone().unwrap_or_default()])
                    .evidence(["domain XML: <link state='down'/>"])
                    .impact("the guest sees no carrier on this NIC: no traffic at all")
                    .commands([format!(
                        "virsh domif-setlink {} {} up",
                        vm.name,
                        n.host_dev
                            .clone()
                            .or(n.mac.map(|m| m.to_string()))
                            .unwrap_or_default()
                    )])
                    .affects([vm.name.clone()]),
                );
            }
            if matches!(
                n.iface_type,
                VnicType::User | VnicType::Hostdev | VnicType::Vhostuser
            ) {
                continue;
            }
            let Some(dev) = n.host_dev.clone() else {
                continue;
            };
            let expected = expected_bridge(cx, vm, n);
            let Some(link) = s.link(&dev) else {
                out.push(
                    Finding::new("tap-down", Severity::Error, Layer::Virtual, format!("{vnic_name}: host device {dev} does not exist"))
                        .subject([nic.clone(), dev.clone()])
                        .evidence([format!("no link named {dev} in the host's links")])
                        .impact("the vNIC is not connected to the host at all")
                        .commands([format!("restart the VM's interface (virsh detach-interface/attach-interface, or restart {})", vm.name)])
                        .affects([vm.name.clone()]),
                );
                continue;
            };
            // host side state
            if !link.admin_up {
                out.push(
                    Finding::new("tap-down", Severity::Error, Layer::Virtual, format!("{vnic_name}: host side {dev} is administratively down"))
                        .subject([nic.clone(), dev.clone()])
                        .evidence([format!("{dev}: state {}", link.state_word()), "the guest keeps its carrier: it sees nothing wrong".to_string()])
                        .impact("every frame the guest sends is dropped on the host side; nothing reaches the guest")
                        .commands([cx.cmd(&format!("ip link set {dev} up"))])
                        .steps([PlanStep::LinkUp { ifname: dev.clone() }])
                        .affects([vm.name.clone()]),
                );
            } else if !link.is_usable() {
                let guest_down = vm.guest.as_ref().and_then(|g| {
                    n.guest_ifname
                        .as_ref()
                        .and_then(|gi| g.interfaces.iter().find(|x| &x.name == gi))
                        .map(|x| !x.up)
                }) == Some(true);
                if !guest_down {
                    let why = match &link.tap {
                        Some(t) if t.holders.is_empty() => {
                            " (no process holds the tap: is the VM running?)"
                        }
                        _ => "",
                    };
                    out.push(
                        Finding::new(
                            "tap-down",
                            Severity::Error,
                            Layer::Virtual,
                            format!("{vnic_name}: host side {dev} has no carrier{why}"),
                        )
                        .subject([nic.clone(), dev.clone()])
                        .evidence([format!("{dev}: oper state {}", link.oper_state.as_str())])
                        .impact("no traffic passes the vNIC")
                        .commands([format!(
                            "restart the VM ({}) or re-attach its interface",
                            vm.name
                        )])
                        .affects([vm.name.clone()]),
                    );
                }
            }
            // attachment (a macvtap/macvlan hangs off its lower device, never a bridge)
            let on_lower = matches!(link.kind, LinkKind::Macvtap | LinkKind::Macvlan);
            match (&link.master, &expected) {
                (None, Some((b, why)))
                    if !on_lower && s.addresses_of(&dev).all(|a| a.scope != "global") =>
                {
                    if s.link(b).is_none() {
                        out.push(bridge_missing(cx, b, why, vm));
                        continue;
                    }
                    out.push(
                        Finding::new("tap-not-in-bridge", Severity::Error, Layer::Virtual, format!("{vnic_name}: {dev} is not attached to bridge {b}"))
                            .subject([nic.clone(), dev.clone(), b.clone()])
                            .evidence([format!("{dev}: no master"), why.clone()])
                            .impact(format!("the guest is cut off from {b}: no gateway, no other guests (ARP may still resolve through the host's weak-host replies, which hides the cause)"))
                            .commands([cx.cmd(&format!("ip link set {dev} master {b}"))])
                            .steps([PlanStep::SetMaster { ifname: dev.clone(), master: b.clone() }])
                            .affects([vm.name.clone()]),
                    );
                }
                (Some(m), Some((b, why)))
                    if m != b
                        && s.link(m).is_some_and(|l| l.kind == LinkKind::Bridge)
                        // two VLAN segments (bridges on VLAN links): vlan-mismatch says it
                        && !(crate::ovs::bridge_vlan(s, m).is_some()
                            && crate::ovs::bridge_vlan(s, b).is_some()) =>
                {
                    if s.link(b).is_none() {
                        out.push(bridge_missing(cx, b, why, vm));
                        continue;
                    }
                    out.push(
                        Finding::new("tap-not-in-bridge", Severity::Error, Layer::Virtual, format!("{vnic_name}: {dev} is attached to {m}, not {b}"))
                            .subject([nic.clone(), dev.clone(), b.clone()])
                            .evidence([format!("{dev}: master {m}"), why.clone()])
                            .impact(format!("the guest is on the wrong segment: its gateway and peers on {b} are unreachable"))
                            .commands([cx.cmd(&format!("ip link set {dev} master {b}"))])
                            .steps([PlanStep::SetMaster { ifname: dev.clone(), master: b.clone() }])
                            .affects([vm.name.clone()]),
                    );
                }
                (None, None)
                    if vm.source == VmSource::Libvirt && n.iface_type == VnicType::Network =>
                {
                    if let Some(net) = n.network.as_deref() {
                        if s.network(net).is_none() {
                            out.push(
                                Finding::new("bridge-missing", Severity::Error, Layer::Virtual, format!("{vnic_name}: network {net} does not exist"))
                                    .subject([nic.clone(), net.to_string()])
                                    .evidence([format!("domain interface source network='{net}'"), "no such libvirt network".to_string()])
                                    .impact("the vNIC has nowhere to connect")
                                    .commands([format!("virsh net-define/net-start {net}, or edit the domain to use an existing network")])
                                    .affects([vm.name.clone()]),
                            );
                        }
                    }
                }
                _ => {}
            }
            // the bridge it is on
            if let Some(m) = link
                .master
                .as_deref()
                .and_then(|m| s.link(m))
                .filter(|l| l.kind == LinkKind::Bridge)
            {
                if !m.admin_up {
                    if !down_bridges.contains(&m.name) {
                        down_bridges.push(m.name.clone());
                        out.push(
                            Finding::new("bridge-down", Severity::Error, Layer::Virtual, format!("bridge {} is down", m.name))
                                .subject([m.name.clone()])
                                .evidence([format!("{}: state {}", m.name, m.state_word())])
                                .impact("every guest on the bridge is cut off from the host and from each other")
                                .commands([cx.cmd(&format!("ip link set {} up", m.name))])
                                .steps([PlanStep::LinkUp { ifname: m.name.clone() }])
                                .affects([vm.name.clone()]),
                        );
                    } else if let Some(f) = out
                        .iter_mut()
                        .find(|f| f.code == "bridge-down" && f.subject.contains(&m.name))
                    {
                        *f = f.clone().affects([vm.name.clone()]);
                    }
                } else if link.is_usable() {
                    if let Some(p) = &link.bridge_port {
                        if p.state != PortState::Forwarding {
                            out.push(
                                Finding::new("port-blocked", Severity::Error, Layer::Virtual, format!("{vnic_name}: bridge port {dev} is {}", p.state.as_str()))
                                    .subject([nic.clone(), dev.clone(), m.name.clone()])
                                    .evidence([
                                        format!("{dev}: bridge port state {}", p.state.as_str()),
                                        format!("{}: stp {}", m.name, if m.bridge.as_ref().is_some_and(|b| b.stp_enabled()) { "on" } else { "off" }),
                                    ])
                                    .impact("the bridge does not forward the guest's frames")
                                    .commands([
                                        "check for a loop that made STP block the port".to_string(),
                                        cx.cmd(&format!("ip link set {} type bridge stp_state 0   # only if there is no loop", m.name)),
                                    ])
                                    .affects([vm.name.clone()]),
                            );
                        }
                    }
                }
            }
            // slow NIC models and vhost (real VMs only)
            if vm.source != VmSource::Netns {
                if let Some(model) = &n.model {
                    if matches!(
                        model.as_str(),
                        "e1000" | "e1000e" | "rtl8139" | "ne2k_pci" | "pcnet" | "eepro100"
                    ) {
                        out.push(
                            Finding::new("nic-model-slow", Severity::Info, Layer::Guest, format!("{vnic_name}: emulated {model} NIC where virtio would do"))
                                .subject([nic.clone(), dev.clone()])
                                .evidence([format!("model {model}")])
                                .impact("every packet is emulated in QEMU: several times the CPU cost and a fraction of virtio-net's throughput")
                                .commands([if vm.source == VmSource::Libvirt {
                                    format!("virsh edit {}: <model type='virtio'/> (the guest needs virtio drivers)", vm.name)
                                } else {
                                    format!("restart {} with -device virtio-net-pci instead of {model} (the guest needs virtio drivers)", vm.name)
                                }])
                                .affects([vm.name.clone()]),
                        );
                    } else if model == "virtio" && n.vhost == Some(false) {
                        out.push(
                            Finding::new("vhost-disabled", Severity::Info, Layer::Guest, format!("{vnic_name}: virtio-net without vhost-net"))
                                .subject([nic.clone(), dev.clone()])
                                .evidence(["vhost=off".to_string()])
                                .impact("packets are copied through QEMU's userspace: lower throughput, higher latency")
                                .commands([if vm.source == VmSource::Libvirt {
                                    format!("virsh edit {}: <driver name='vhost'/> (needs /dev/vhost-net)", vm.name)
                                } else {
                                    format!("restart {} with vhost=on on its -netdev tap (needs /dev/vhost-net)", vm.name)
                                }])
                                .affects([vm.name.clone()]),
                        );
                    }
                }
            }
            // VLAN tags on a plain Linux bridge without VLAN filtering are not applied
            if !n.vlan_tags.is_empty() && n.virtualport.as_deref() != Some("openvswitch") {
                if let Some(m) = link
                    .master
                    .as_deref()
                    .and_then(|m| s.link(m))
                    .filter(|l| l.kind == LinkKind::Bridge)
                {
                    if !m.bridge.as_ref().is_some_and(|b| b.vlan_filtering) {
                        out.push(
                            Finding::new("vlan-mismatch", Severity::Error, Layer::Virtual, format!("{vnic_name}: VLAN {:?} configured, but bridge {} does not filter VLANs", n.vlan_tags, m.name))
                                .subject([nic.clone(), dev.clone(), m.name.clone()])
                                .evidence([format!("vnic vlan tags {:?}", n.vlan_tags), format!("{}: vlan_filtering 0", m.name)])
                                .impact("the tag is not applied: the guest lands on the untagged segment, not its VLAN")
                                .commands([cx.cmd(&format!("ip link set {} type bridge vlan_filtering 1; bridge vlan add dev {dev} vid {} pvid untagged", m.name, n.vlan_tags[0]))])
                                .affects([vm.name.clone()]),
                        );
                    }
                }
            }
        }
    }
    check_port_mtus(cx, out);
    check_macs(cx, out);
    check_networks(cx, out);
    check_ip_conflicts(cx, out);
    check_vlans(cx, out);
    check_firewall_managers(cx, out);
}

fn bridge_missing(cx: &Ctx, b: &str, why: &str, vm: &Vm) -> Finding {
    Finding::new(
        "bridge-missing",
        Severity::Error,
        Layer::Virtual,
        format!("bridge {b} does not exist"),
    )
    .subject([b.to_string()])
    .evidence([why.to_string(), format!("no link named {b}")])
    .impact(format!(
        "guests configured on {b} are not connected to anything"
    ))
    .commands([
        cx.cmd(&format!(
            "ip link add {b} type bridge && ip link set {b} up"
        )),
        "or start the libvirt network that owns it (virsh net-start NAME)".to_string(),
    ])
    .affects([vm.name.clone()])
}

/// Bridge ports with different MTUs: the odd ones out are the mismatch.
fn check_port_mtus(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    for br in s.bridges() {
        let ports: Vec<_> = s.ports_of(&br.name).collect();
        if ports.len() < 2 {
            continue;
        }
        let mut count: BTreeMap<u32, usize> = BTreeMap::new();
        for p in &ports {
            *count.entry(p.mtu).or_default() += 1;
        }
        if count.len() < 2 {
            continue;
        }
        let common = count
            .iter()
            .max_by_key(|(m, c)| (**c, **m))
            .map(|(m, _)| *m)
            .unwrap_or(1500);
        for p in ports.iter().filter(|p| p.mtu != common) {
            let vm = s.vnic_by_dev(&p.name).map(|(v, _)| v.name.clone());
            if vm.as_ref().is_some_and(|v| !cx.selected(v)) {
                continue;
            }
            let mut f = Finding::new(
                "mtu-mismatch",
                Severity::Error,
                Layer::Virtual,
                format!("port {} of bridge {} has MTU {}, the other ports {common}", p.name, br.name, p.mtu),
            )
            .subject([p.name.clone(), br.name.clone()])
            .evidence([
                format!("{}: mtu {}", p.name, p.mtu),
                format!("{}: mtu {} (the bridge takes its smallest port's MTU)", br.name, br.mtu),
                format!(
                    "ports: {}",
                    ports.iter().map(|x| format!("{} {}", x.name, x.mtu)).collect::<Vec<_>>().join(", ")
                ),
            ])
            .impact(if p.mtu < common {
                format!("frames larger than {} bytes towards {} are dropped silently by the bridge (a black hole for large packets)", p.mtu, p.name)
            } else {
                "the bridge's MTU follows its smallest port".to_string()
            })
            .commands([cx.cmd(&format!("ip link set {} mtu {common}", p.name))])
            .steps([PlanStep::SetMtu { ifname: p.name.clone(), mtu: common }]);
            if let Some(v) = vm {
                f = f.subject([v.clone()]).affects([v]);
            }
            out.push(f);
        }
    }
}

fn check_macs(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let mut seen: HashMap<MacAddr, Vec<String>> = HashMap::new();
    for vm in &s.vms {
        for n in &vm.vnics {
            if let Some(m) = n.mac {
                seen.entry(m).or_default().push(format!("vm:{}", vm.name));
            }
        }
    }
    let vnic_devs: Vec<&str> = s
        .vms
        .iter()
        .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
        .collect();
    for l in &s.links {
        if let Some(m) = l.mac {
            if !m.is_zero()
                && !vnic_devs.contains(&l.name.as_str())
                && l.kind != LinkKind::Loopback
                && seen.contains_key(&m)
            {
                seen.entry(m).or_default().push(format!("host:{}", l.name));
            }
        }
    }
    for (mac, who) in seen {
        let mut uniq = who.clone();
        uniq.dedup();
        if uniq.len() < 2 {
            continue;
        }
        let vms: Vec<String> = uniq
            .iter()
            .filter_map(|w| w.strip_prefix("vm:").map(String::from))
            .collect();
        if !vms.iter().any(|v| cx.selected(v)) {
            continue;
        }
        out.push(
            Finding::new(
                "mac-duplicate",
                Severity::Error,
                Layer::Virtual,
                format!("MAC {mac} is used by {}", uniq.join(" and ")),
            )
            .subject(uniq.clone())
            .evidence([format!("{mac} on {}", uniq.join(", "))])
            .impact(
                "the bridge's FDB flips between the two ports: both lose traffic intermittently",
            )
            .commands(["give one of them a new MAC (virsh edit: <mac address='52:54:00:..'/>)"])
            .affects(vms),
        );
    }
}

fn check_networks(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    for net in &s.networks {
        let users: Vec<String> = cx
            .vms()
            .filter(|v| {
                v.vnics.iter().any(|n| {
                    n.network.as_deref() == Some(net.name.as_str())
                        || (net.bridge.is_some()
                            && n.host_dev
                                .as_deref()
                                .and_then(|d| s.link(d))
                                .and_then(|l| l.master.clone())
                                == net.bridge)
                })
            })
            .map(|v| v.name.clone())
            .collect();
        if net.origin == NetworkOrigin::Libvirt && net.active == Some(false) && !users.is_empty() {
            out.push(
                Finding::new(
                    "network-inactive",
                    Severity::Error,
                    Layer::Virtual,
                    format!("libvirt network {} is not active", net.name),
                )
                .subject([net.name.clone()])
                .evidence([format!("virsh net-list: {} inactive", net.name)])
                .impact("its bridge, DHCP and NAT rules do not exist")
                .commands([
                    format!("virsh net-start {}", net.name),
                    format!("virsh net-autostart {}", net.name),
                ])
                .affects(users.clone()),
            );
            continue;
        }
        if net.origin == NetworkOrigin::Libvirt && net.active != Some(false) {
            if let Some(b) = &net.bridge {
                if s.link(b).is_none() && !users.is_empty() {
                    out.push(
                        Finding::new(
                            "bridge-missing",
                            Severity::Error,
                            Layer::Virtual,
                            format!("bridge {b} of network {} does not exist", net.name),
                        )
                        .subject([b.clone(), net.name.clone()])
                        .evidence([
                            format!("network {} declares bridge {b}", net.name),
                            format!("no link named {b}"),
                        ])
                        .impact("guests of the network are not connected to anything")
                        .commands([format!(
                            "virsh net-destroy {0}; virsh net-start {0}",
                            net.name
                        )])
                        .affects(users.clone()),
                    );
                    continue;
                }
            }
        }
        if net.has_dhcp()
            && net.active != Some(false)
            && net.bridge.as_deref().is_some_and(|b| s.link(b).is_some())
        {
            let listening = s.sockets.iter().any(|k| k.proto == "udp" && k.port == 67);
            if !listening {
                out.push(
                    Finding::new("dhcp-not-running", Severity::Error, Layer::Virtual, format!("network {} hands out DHCP leases, but no DHCP server listens", net.name))
                        .subject([net.name.clone(), net.bridge.clone().unwrap_or_default()])
                        .evidence([
                            format!(
                                "DHCP range {}",
                                net.ips.iter().flat_map(|i| i.dhcp_ranges.iter()).map(|r| format!("{}-{}", r.start, r.end)).collect::<Vec<_>>().join(", ")
                            ),
                            "no UDP socket bound to port 67 in this namespace".to_string(),
                        ])
                        .impact("guests that use DHCP get no address (after their lease expires, or at boot)")
                        .commands(match net.origin {
                            NetworkOrigin::Libvirt => vec![format!("virsh net-destroy {0} && virsh net-start {0}   # restarts its dnsmasq", net.name)],
                            NetworkOrigin::Kvmnet => vec![format!(
                                "kvmnet apply -f CONFIG.yaml{}   # kvmnet starts the DHCP server of network {} again",
                                s.netns.as_deref().map(|n| format!(" --netns {n}")).unwrap_or_default(),
                                net.name
                            )],
                            _ => vec!["start the network's DHCP server (dnsmasq)".to_string()],
                        })
                        .affects(users.clone()),
                );
            }
        }
    }
}

/// Two owners of one address on one segment.
fn check_ip_conflicts(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    // segment = bridge name (guests attached to it, and the host's addresses on it)
    let mut seg: BTreeMap<String, Vec<(IpAddr, String, Option<String>)>> = BTreeMap::new();
    for vm in &s.vms {
        for n in &vm.vnics {
            let Some(br) = n
                .host_dev
                .as_deref()
                .and_then(|d| s.link(d))
                .and_then(|l| l.master.clone())
            else {
                continue;
            };
            for a in guest_addrs(vm, n) {
                if a.addr().is_ipv6() && (a.addr().to_string().starts_with("fe80")) {
                    continue;
                }
                seg.entry(br.clone()).or_default().push((
                    a.addr(),
                    format!("vm:{}", vm.name),
                    Some(vm.name.clone()),
                ));
            }
        }
    }
    for (br, list) in seg.iter_mut() {
        for a in s.addresses_of(br) {
            list.push((a.address, format!("host:{br}"), None));
        }
        let mut by_ip: BTreeMap<IpAddr, Vec<(String, Option<String>)>> = BTreeMap::new();
        for (ip, who, vm) in list.iter() {
            let e = by_ip.entry(*ip).or_default();
            if !e.iter().any(|(w, _)| w == who) {
                e.push((who.clone(), vm.clone()));
            }
        }
        for (ip, who) in by_ip {
            if who.len() < 2 {
                continue;
            }
            let vms: Vec<String> = who.iter().filter_map(|(_, v)| v.clone()).collect();
            if !vms.iter().any(|v| cx.selected(v)) {
                continue;
            }
            let names: Vec<String> = who.iter().map(|(w, _)| w.clone()).collect();
            out.push(
                Finding::new("ip-conflict", Severity::Error, Layer::Guest, format!("{ip} is claimed by {} on {br}", names.join(" and ")))
                    .subject(names.iter().cloned().chain([ip.to_string()]))
                    .evidence([format!("{ip} configured on {}", names.join(", "))])
                    .impact("ARP answers race: traffic for the address goes to one or the other (arping -D shows two MACs)")
                    .commands(["give one of them another address"])
                    .affects(vms),
            );
        }
    }
}

/// One VLAN id on several parents with different subnets.
fn check_vlans(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let mut by_id: BTreeMap<u16, Vec<(String, Vec<ipnet::IpNet>)>> = BTreeMap::new();
    for l in &s.links {
        if let Some(v) = &l.vlan {
            let nets: Vec<_> = s
                .addresses_of(&l.name)
                .filter(|a| a.scope == "global")
                .map(|a| a.network())
                .chain(
                    l.master
                        .as_deref()
                        .map(|m| {
                            s.addresses_of(m)
                                .filter(|a| a.scope == "global")
                                .map(|a| a.network())
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default(),
                )
                .collect();
            by_id.entry(v.id).or_default().push((l.name.clone(), nets));
        }
    }
    for (id, links) in by_id {
        let mut all: Vec<ipnet::IpNet> = links.iter().flat_map(|(_, n)| n.clone()).collect();
        all.sort();
        all.dedup();
        let v4: Vec<_> = all.iter().filter(|n| n.addr().is_ipv4()).collect();
        if links.len() >= 2 && v4.len() >= 2 {
            out.push(
                Finding::new("vlan-mismatch", Severity::Error, Layer::Virtual, format!("VLAN {id} is mapped to different subnets"))
                    .subject(links.iter().map(|(n, _)| n.clone()))
                    .evidence(links.iter().map(|(n, nets)| format!("{n}: {}", nets.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))))
                    .impact("guests on the same VLAN id end up in different IP subnets: they cannot talk, and a VLAN usually means one subnet")
                    .commands(["use one subnet per VLAN, or separate VLAN ids"]),
            );
        }
    }
}

/// Who manages a table: libvirt, docker, firewalld, ufw, kvmnet, or someone else.
pub(crate) fn manager_of(table: &kvmnet_model::NftTable) -> &'static str {
    let names: Vec<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
    if table.name == "kvmnet" {
        "kvmnet"
    } else if table.name.starts_with("libvirt")
        || names
            .iter()
            .any(|n| n.starts_with("LIBVIRT_") || n.starts_with("guest_"))
    {
        "libvirt"
    } else if names.iter().any(|n| n.starts_with("DOCKER")) {
        "docker"
    } else if table.name == "firewalld"
        || names
            .iter()
            .any(|n| n.starts_with("filter_FWD") || n.starts_with("filter_IN_"))
    {
        "firewalld"
    } else if names.iter().any(|n| n.starts_with("ufw-")) {
        "ufw"
    } else {
        "other"
    }
}

fn check_firewall_managers(cx: &Ctx, out: &mut Vec<Finding>) {
    let s = cx.s;
    let mut managers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut drop_policy = vec![];
    for t in &s.nftables.tables {
        if !t.family.sees_ipv4() {
            continue;
        }
        let m = manager_of(t);
        for c in &t.chains {
            if let Some(h) = &c.hook {
                if h.hook == "forward" {
                    managers.entry(m).or_default().push(format!(
                        "{} {} {} (policy {})",
                        t.family, t.name, c.name, h.policy
                    ));
                    if h.policy == "drop" {
                        drop_policy.push(format!("{} {} {}", t.family, t.name, c.name));
                    }
                }
            }
        }
    }
    let named: Vec<&&str> = managers.keys().filter(|m| **m != "other").collect();
    if managers.len() >= 2 && named.len() >= 2 && !drop_policy.is_empty() {
        out.push(
            Finding::new(
                "firewall-conflict",
                Severity::Warning,
                Layer::Virtual,
                format!("{} manage the forward hook, and {} drops by default", named.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "), drop_policy.join(", ")),
            )
            .subject(drop_policy.clone())
            .evidence(managers.values().flatten().cloned())
            .impact("a packet must be accepted by every base chain on the hook: one manager's drop policy can undo another's accept")
            .commands(["allow VM traffic in the chain that drops it (e.g. docker's DOCKER-USER chain), or keep one firewall manager"]),
        );
    }
}
