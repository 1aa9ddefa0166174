//! Doctor checks this kernel cannot reproduce in a namespace lab (conntrack exhaustion, VLAN
//! links, libvirt networks and domains, NIC models), tested on a recorded healthy NAT-lab
//! snapshot with exactly one fault written into it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvmnet_doctor::{diagnose, Options, Report, Severity};
use kvmnet_model::link::{LinkKind, VlanInfo};
use kvmnet_model::network::{DhcpRange, ForwardMode, Network, NetworkIp, NetworkOrigin};
use kvmnet_model::vm::{Vm, VmSource, VmState, Vnic, VnicType};
use kvmnet_model::{parse_snapshot, Address, HostState, Link, ListenSocket};

fn healthy() -> HostState {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../kvmnet/tests/fixtures/nat-lab-healthy.json"
    );
    parse_snapshot(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn run(s: &HostState) -> Report {
    diagnose(
        s,
        &Options {
            target: Some("203.0.113.1".parse().unwrap()),
            ..Default::default()
        },
    )
}

/// Exactly this root-cause error (code, a subject containing `subj`), and no other.
fn only_error(r: &Report, code: &str, subj: &str) {
    let roots: Vec<_> = r.findings.iter().filter(|f| f.is_root_error()).collect();
    assert!(
        roots
            .iter()
            .any(|f| f.code == code && f.subject.iter().any(|s| s.contains(subj))),
        "expected {code} on {subj}: {roots:#?}"
    );
    let others: Vec<_> = roots.iter().filter(|f| f.code != code).collect();
    assert!(others.is_empty(), "other root errors: {others:#?}");
}

fn tap(s: &mut HostState, name: &str, master: &str) {
    let idx = s.links.iter().map(|l| l.index).max().unwrap_or(1) + 1;
    let mut l = Link::new(idx, name, LinkKind::Tap);
    l.master = Some(master.into());
    l.bridge_port = Some(Default::default());
    l.tap = Some(Default::default());
    s.links.push(l);
}

fn libvirt_vm(name: &str, dev: &str, network: &str) -> Vm {
    Vm {
        name: name.into(),
        source: VmSource::Libvirt,
        uuid: None,
        state: VmState::Running,
        pid: Some(4242),
        netns: None,
        vnics: vec![Vnic {
            mac: Some("52:54:00:aa:00:01".parse().unwrap()),
            host_dev: Some(dev.into()),
            model: Some("virtio".into()),
            iface_type: VnicType::Network,
            network: Some(network.into()),
            vhost: Some(true),
            ..Default::default()
        }],
        guest: None,
        vcpus: Some(2),
        agent: None,
    }
}

fn libvirt_net(name: &str, bridge: &str, dhcp: bool) -> Network {
    let mut n = Network::new(name, NetworkOrigin::Libvirt);
    n.bridge = Some(bridge.into());
    n.forward = ForwardMode::Nat;
    n.active = Some(true);
    n.ips = vec![NetworkIp {
        address: "10.0.0.1/24".parse().unwrap(),
        dhcp_ranges: if dhcp {
            vec![DhcpRange {
                start: "10.0.0.100".parse().unwrap(),
                end: "10.0.0.200".parse().unwrap(),
            }]
        } else {
            vec![]
        },
        dhcp_hosts: vec![],
    }];
    n
}

#[test]
fn healthy_fixture_is_clean() {
    let r = run(&healthy());
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
}

#[test]
fn conntrack_table_full() {
    let mut s = healthy();
    s.sysctls.nf_conntrack_count = Some(250_000);
    s.sysctls.nf_conntrack_max = Some(262_144);
    only_error(&run(&s), "conntrack-table-full", "nf_conntrack");
    s.sysctls.nf_conntrack_count = Some(200_000);
    let r = run(&s);
    assert_eq!(r.root_errors(), 0);
    assert!(r
        .findings
        .iter()
        .any(|f| f.code == "conntrack-table-full" && f.severity == Severity::Warning));
}

#[test]
fn vlan_id_on_two_subnets() {
    let mut s = healthy();
    for (i, (name, parent, addr)) in [
        ("eth0.10", "uplink", "10.10.0.1"),
        ("eth1.10", "br0", "10.20.0.1"),
    ]
    .iter()
    .enumerate()
    {
        let mut l = Link::new(100 + i as u32, name, LinkKind::Vlan);
        l.vlan = Some(VlanInfo {
            id: 10,
            protocol: "802.1Q".into(),
        });
        l.parent = Some(parent.to_string());
        s.links.push(l);
        s.addresses.push(Address {
            ifname: name.to_string(),
            ifindex: 100 + i as u32,
            address: addr.parse().unwrap(),
            prefix_len: 24,
            scope: "global".into(),
            flags: vec![],
        });
    }
    only_error(&run(&s), "vlan-mismatch", "eth0.10");
}

#[test]
fn vnic_tag_on_bridge_without_vlan_filtering() {
    let mut s = healthy();
    s.vms[0].vnics[0].vlan_tags = vec![42];
    only_error(&run(&s), "vlan-mismatch", "br0");
}

#[test]
fn dhcp_not_running() {
    let mut s = healthy();
    s.networks.retain(|n| n.bridge.as_deref() != Some("br0"));
    s.networks.push(libvirt_net("default", "br0", true));
    only_error(&run(&s), "dhcp-not-running", "default");
    // with a DHCP server listening, nothing to report
    s.sockets.push(ListenSocket {
        proto: "udp".into(),
        address: "0.0.0.0".parse().unwrap(),
        port: 67,
        process: None,
    });
    assert_eq!(run(&s).root_errors(), 0);
}

#[test]
fn libvirt_network_bridge_missing() {
    let mut s = healthy();
    s.networks.push(libvirt_net("isolated", "virbr9", false));
    s.links.push({
        let mut l = Link::new(90, "vnet9", LinkKind::Tap);
        l.tap = Some(Default::default());
        l
    });
    s.vms.push(libvirt_vm("app1", "vnet9", "isolated"));
    only_error(&run(&s), "bridge-missing", "virbr9");
}

#[test]
fn libvirt_network_inactive() {
    let mut s = healthy();
    let mut n = libvirt_net("lab", "br0", false);
    n.active = Some(false);
    s.networks.retain(|n| n.bridge.as_deref() != Some("br0"));
    s.networks.push(n);
    tap(&mut s, "vnet9", "br0");
    s.vms.push(libvirt_vm("app1", "vnet9", "lab"));
    only_error(&run(&s), "network-inactive", "lab");
}

#[test]
fn domain_interface_link_down() {
    let mut s = healthy();
    s.networks.retain(|n| n.bridge.as_deref() != Some("br0"));
    s.networks.push(libvirt_net("lab", "br0", false));
    tap(&mut s, "vnet9", "br0");
    let mut vm = libvirt_vm("app1", "vnet9", "lab");
    vm.vnics[0].link_up = Some(false);
    vm.vnics[0].addresses.push(kvmnet_model::vm::GuestAddr {
        address: "10.0.0.50".parse().unwrap(),
        prefix_len: Some(24),
        origin: kvmnet_model::vm::AddrOrigin::Lease,
    });
    s.vms.push(vm);
    only_error(&run(&s), "vnic-link-down", "app1");
}

#[test]
fn slow_nic_model_and_vhost_are_info() {
    let mut s = healthy();
    tap(&mut s, "vnet8", "br0");
    tap(&mut s, "vnet9", "br0");
    let mut a = libvirt_vm("old1", "vnet8", "x");
    a.vnics[0].model = Some("e1000".into());
    a.vnics[0].iface_type = VnicType::Bridge;
    a.vnics[0].network = None;
    a.vnics[0].source_bridge = Some("br0".into());
    let mut b = libvirt_vm("novhost1", "vnet9", "x");
    b.vnics[0].vhost = Some(false);
    b.vnics[0].iface_type = VnicType::Bridge;
    b.vnics[0].network = None;
    b.vnics[0].source_bridge = Some("br0".into());
    b.vnics[0].mac = Some("52:54:00:aa:00:02".parse().unwrap());
    s.vms.push(a);
    s.vms.push(b);
    let r = run(&s);
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
    let slow = r
        .findings
        .iter()
        .find(|f| f.code == "nic-model-slow")
        .unwrap();
    assert_eq!(slow.severity, Severity::Info);
    assert!(slow.subject.contains(&"old1".to_string()));
    let vh = r
        .findings
        .iter()
        .find(|f| f.code == "vhost-disabled")
        .unwrap();
    assert!(vh.subject.contains(&"novhost1".to_string()));
}

#[test]
fn declared_port_forward_blocked_by_a_rule() {
    let mut s = healthy();
    // a drop of the forwarded traffic, first in the forward chain
    let t = s
        .nftables
        .tables
        .iter_mut()
        .find(|t| t.name == "filter")
        .unwrap();
    let chain = t.chains.iter_mut().find(|c| c.name == "forward").unwrap();
    use kvmnet_model::nft::{CmpOp, Expr, NftData, NftRule, NftVerdict};
    use kvmnet_model::Bytes;
    chain.rules.insert(
        0,
        NftRule {
            handle: 99,
            comment: Some("block web".into()),
            exprs: vec![
                Expr::Payload {
                    base: "network".into(),
                    offset: 16,
                    len: 4,
                    dreg: 1,
                },
                Expr::Cmp {
                    sreg: 1,
                    op: CmpOp::Eq,
                    data: Bytes(vec![10, 0, 0, 11]),
                },
                Expr::Immediate {
                    dreg: 0,
                    data: NftData::Verdict(NftVerdict {
                        kind: "drop".into(),
                        chain: None,
                    }),
                },
            ],
        },
    );
    let r = run(&s);
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "port-forward-blocked")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    // a root error, or the consequence of the root error that cites the same rule (the rule
    // also drops web1's own traffic)
    assert!(
        f.is_root_error()
            || r.findings
                .iter()
                .any(|x| Some(&x.code) == f.caused_by.as_ref()
                    && x.is_root_error()
                    && x.evidence.iter().any(|e| e.contains("handle 99"))),
        "{:#?}",
        r.findings
    );
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("handle 99") && e.contains("block web")),
        "cites the deciding rule: {:?}",
        f.evidence
    );
    // the same rule also drops replies to web1 and bridged frames to it (br_netfilter):
    // those are the rule's other effects; nothing else is broken
    let others: Vec<_> = r
        .findings
        .iter()
        .filter(|x| {
            x.is_root_error()
                && !matches!(
                    x.code.as_str(),
                    "port-forward-blocked" | "forward-blocked" | "bridge-netfilter-drop"
                )
        })
        .collect();
    assert!(others.is_empty(), "{others:#?}");
}

/// A bridge per VLAN: br0 carries VLAN 10 (port eth1.10), br20 VLAN 20 (port eth1.20).
fn vlan_bridges(s: &mut HostState) {
    let mut eth1 = Link::new(200, "eth1", LinkKind::Physical);
    eth1.admin_up = true;
    s.links.push(eth1);
    for (i, (name, id, master)) in [("eth1.10", 10u16, "br0"), ("eth1.20", 20, "br20")]
        .iter()
        .enumerate()
    {
        let mut l = Link::new(201 + i as u32, name, LinkKind::Vlan);
        l.vlan = Some(VlanInfo {
            id: *id,
            protocol: "802.1Q".into(),
        });
        l.parent = Some("eth1".into());
        l.master = Some(master.to_string());
        l.bridge_port = Some(Default::default());
        s.links.push(l);
    }
    let mut br20 = Link::new(210, "br20", LinkKind::Bridge);
    br20.bridge = Some(Default::default());
    br20.admin_up = true;
    s.links.push(br20);
}

#[test]
fn linux_guest_on_the_wrong_vlan_bridge() {
    let mut s = healthy();
    vlan_bridges(&mut s);
    // healthy with the VLAN bridges in place
    assert_eq!(run(&s).root_errors(), 0, "{:#?}", run(&s).findings);
    // db1 (vnet3) moved to the VLAN 20 bridge, keeping its VLAN-10 subnet address
    s.links
        .iter_mut()
        .find(|l| l.name == "vnet3")
        .unwrap()
        .master = Some("br20".into());
    let r = run(&s);
    only_error(&r, "vlan-mismatch", "db1");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "vlan-mismatch")
        .unwrap();
    assert_eq!(f.affects, vec!["db1".to_string()], "{f:#?}");
    // no warning or error beyond it
    let rest: Vec<_> = r
        .findings
        .iter()
        .filter(|f| {
            f.caused_by.is_none() && f.severity != Severity::Info && f.code != "vlan-mismatch"
        })
        .collect();
    assert!(rest.is_empty(), "{rest:#?}");
}

#[test]
fn linux_bond_member_down_and_lacp_unnegotiated() {
    use kvmnet_model::link::{BondInfo, BondPortInfo};
    let mut s = healthy();
    let mut bond = Link::new(300, "bond0", LinkKind::Bond);
    bond.admin_up = true;
    bond.bond = Some(BondInfo {
        mode: "active-backup".into(),
        members: vec!["eth1".into(), "eth2".into()],
        active_member: Some("eth1".into()),
        miimon_ms: Some(100),
        ad_partner_mac: None,
        ad_num_ports: None,
    });
    s.links.push(bond);
    for (i, (name, up)) in [("eth1", true), ("eth2", false)].iter().enumerate() {
        let mut m = Link::new(301 + i as u32, name, LinkKind::Physical);
        m.admin_up = *up;
        m.carrier = Some(*up);
        m.master = Some("bond0".into());
        m.bond_port = Some(BondPortInfo {
            state: if *up { "active" } else { "backup" }.into(),
            mii_status: if *up { "up" } else { "down" }.into(),
            link_failure_count: Some(1),
        });
        s.links.push(m);
    }
    let r = run(&s);
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "bond-degraded")
        .expect("bond-degraded");
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.subject, vec!["bond0".to_string()]);
    assert!(f.summary.contains("eth2"), "{}", f.summary);
    // both members down: an error
    s.links
        .iter_mut()
        .find(|l| l.name == "eth1")
        .unwrap()
        .admin_up = false;
    let r = run(&s);
    assert!(r
        .findings
        .iter()
        .any(|f| f.code == "bond-degraded" && f.severity == Severity::Error));
    // 802.3ad without a partner
    let mut s = healthy();
    let mut bond = Link::new(300, "bond1", LinkKind::Bond);
    bond.bond = Some(BondInfo {
        mode: "802.3ad".into(),
        members: vec!["eth3".into()],
        active_member: None,
        miimon_ms: Some(100),
        ad_partner_mac: Some("00:00:00:00:00:00".parse().unwrap()),
        ad_num_ports: Some(1),
    });
    s.links.push(bond);
    let mut m = Link::new(310, "eth3", LinkKind::Physical);
    m.master = Some("bond1".into());
    m.admin_up = true;
    s.links.push(m);
    let r = run(&s);
    assert!(
        r.findings
            .iter()
            .any(|f| f.code == "bond-degraded" && f.summary.contains("LACP")),
        "{:#?}",
        r.findings
    );
}

#[test]
fn libvirt_expects_an_ovs_port_that_does_not_exist() {
    use kvmnet_model::ovs::{OvsBridge, OvsInterface, OvsPort, OvsState};
    let mut s = healthy();
    let port = |n: &str, kind: &str| OvsPort {
        name: n.into(),
        tag: Some(10),
        interfaces: vec![OvsInterface {
            name: n.into(),
            kind: kind.into(),
            link_state: Some("up".into()),
            admin_state: Some("up".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    s.ovs = Some(OvsState {
        db: "/run/openvswitch/db.sock".into(),
        version: Some("3.1.0".into()),
        db_running: true,
        vswitchd_running: true,
        bridges: vec![OvsBridge {
            name: "ovsbr0".into(),
            ports: vec![port("ovsbr0", "internal"), port("vnet7", "")],
            custom_flows: Some(vec![]),
            ..Default::default()
        }],
    });
    let mut vm = libvirt_vm("app1", "vnet8", "ovsnet");
    vm.vnics[0].iface_type = VnicType::Bridge;
    vm.vnics[0].network = None;
    vm.vnics[0].source_bridge = Some("ovsbr0".into());
    vm.vnics[0].virtualport = Some("openvswitch".into());
    tap(&mut s, "vnet8", "ovs-system");
    s.links.last_mut().unwrap().master = None;
    s.vms.push(vm);
    let r = run(&s);
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "ovs-port-missing")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert_eq!(f.severity, Severity::Error);
    assert!(f.subject.contains(&"vnet8".to_string()));
    assert!(f.fix.commands[0].contains("ovs-vsctl add-port ovsbr0 vnet8"));
    // the domain's <vlan> against the port OVS has
    s.vms.last_mut().unwrap().vnics[0].host_dev = Some("vnet7".into());
    s.vms.last_mut().unwrap().vnics[0].vlan_tags = vec![20];
    let r = run(&s);
    assert!(
        r.findings.iter().any(|f| f.code == "vlan-mismatch"
            && f.summary.contains("[20]")
            && f.affects == vec!["app1".to_string()]),
        "{:#?}",
        r.findings
    );
    s.vms.last_mut().unwrap().vnics[0].vlan_tags = vec![10];
    assert!(!run(&s).findings.iter().any(|f| f.code == "vlan-mismatch"));
    // vswitchd gone: ovs-not-running for the VMs on the switch
    s.ovs.as_mut().unwrap().vswitchd_running = false;
    let r = run(&s);
    assert!(r
        .findings
        .iter()
        .any(|f| f.code == "ovs-not-running" && f.affects.contains(&"app1".to_string())));
}

/// A bridge with vlan_filtering: the guests' ports and the bridge itself untagged in VLAN 10.
fn vlan_filtering(s: &mut HostState) {
    use kvmnet_model::link::BridgeVlan;
    let v10 = BridgeVlan {
        vid: 10,
        pvid: true,
        untagged: true,
    };
    for l in &mut s.links {
        if l.name == "br0" {
            let b = l.bridge.get_or_insert_with(Default::default);
            b.vlan_filtering = true;
            b.self_vlans = vec![v10];
        } else if l.master.as_deref() == Some("br0") {
            l.bridge_port.get_or_insert_with(Default::default).vlans = vec![v10];
        }
    }
}

fn set_port_vlans(s: &mut HostState, port: &str, vlans: Vec<kvmnet_model::link::BridgeVlan>) {
    s.links
        .iter_mut()
        .find(|l| l.name == port)
        .unwrap()
        .bridge_port
        .as_mut()
        .unwrap()
        .vlans = vlans;
}

fn icmp_trace(s: &HostState, from: &str, to: kvmnet_trace::Endpoint) -> kvmnet_trace::Trace {
    kvmnet_trace::Tracer::new(s)
        .trace(&kvmnet_trace::FlowSpec {
            from: kvmnet_trace::Endpoint::Vm {
                name: from.into(),
                vnic: None,
            },
            to,
            proto: 1,
            dport: 0,
            sport: None,
            size: None,
            df: false,
        })
        .unwrap()
}

/// The reason of a dropped trace, or a panic with the trace.
fn dropped(t: &kvmnet_trace::Trace) -> (String, String) {
    match &t.verdict {
        kvmnet_trace::Verdict::Dropped { cause, reason, .. } => (cause.clone(), reason.clone()),
        _ => panic!("not dropped: {t:#?}"),
    }
}

#[test]
fn guest_port_in_another_vlan_of_a_vlan_filtering_bridge() {
    use kvmnet_model::link::BridgeVlan;
    use kvmnet_trace::{Endpoint, Verdict};
    let mut s = healthy();
    vlan_filtering(&mut s);
    assert_eq!(run(&s).root_errors(), 0, "{:#?}", run(&s).findings);
    // db1's port (vnet3) moved to VLAN 20: neither the host nor web1 shares it any more
    set_port_vlans(
        &mut s,
        "vnet3",
        vec![BridgeVlan {
            vid: 20,
            pvid: true,
            untagged: true,
        }],
    );
    let r = run(&s);
    only_error(&r, "vlan-mismatch", "db1");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "vlan-mismatch")
        .unwrap();
    assert!(
        f.fix
            .commands
            .iter()
            .any(|c| c.contains("vlan add dev vnet3 vid 10 pvid untagged")),
        "{f:#?}"
    );
    let gw = || Endpoint::Addr("10.0.0.1".parse().unwrap());
    let (cause, reason) = dropped(&icmp_trace(&s, "db1", gw()));
    assert_eq!(cause, "vlan-mismatch");
    assert!(
        reason.contains("br0 itself is not a member of VLAN 20"),
        "{reason}"
    );
    // web1 still reaches the host, but not db1 (the frame leaves only through VLAN 10 ports)
    let t = icmp_trace(&s, "web1", gw());
    assert!(matches!(t.verdict, Verdict::Delivered { .. }), "{t:#?}");
    let (cause, reason) = dropped(&icmp_trace(
        &s,
        "web1",
        Endpoint::Vm {
            name: "db1".into(),
            vnic: None,
        },
    ));
    assert_eq!(cause, "vlan-mismatch");
    assert!(
        reason.contains("port vnet3 is not a member of VLAN 10"),
        "{reason}"
    );
    // a port with no PVID drops what the guest sends untagged
    set_port_vlans(
        &mut s,
        "vnet3",
        vec![BridgeVlan {
            vid: 10,
            pvid: false,
            untagged: false,
        }],
    );
    let (_, reason) = dropped(&icmp_trace(&s, "db1", gw()));
    assert!(reason.contains("port vnet3 has no PVID"), "{reason}");
    only_error(&run(&s), "vlan-mismatch", "db1");
    // back into VLAN 10 as the PVID: healthy again
    set_port_vlans(
        &mut s,
        "vnet3",
        vec![BridgeVlan {
            vid: 10,
            pvid: true,
            untagged: true,
        }],
    );
    assert_eq!(run(&s).root_errors(), 0);
}

/// The right address with a wider prefix: what lies inside the guest's prefix but off its
/// segment (here its resolver) is looked for on the link and never answers.
#[test]
fn guest_prefix_wider_than_its_segment() {
    let mut s = healthy();
    let vm = s.vms.iter_mut().find(|v| v.name == "db1").unwrap();
    let g = vm.guest.as_mut().unwrap();
    g.interfaces[0].addresses = vec!["10.0.0.13/8".parse().unwrap()];
    if let Some(routes) = g.routes.as_mut() {
        for r in routes.iter_mut().filter(|r| r.gateway.is_none()) {
            r.dst = "10.0.0.0/8".parse().unwrap();
        }
    }
    g.nameservers = Some(vec!["10.200.0.53".parse().unwrap()]);
    let r = run(&s);
    only_error(&r, "guest-wrong-netmask", "db1");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "guest-wrong-netmask")
        .unwrap();
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("10.200.0.53 (resolver) is inside 10.0.0.0/8")),
        "{f:#?}"
    );
    assert!(
        f.fix.commands[0].contains("ip addr add 10.0.0.13/24 dev eth0"),
        "{f:#?}"
    );
    // a wider prefix with nothing of importance in the extra range: a warning only
    let vm = s.vms.iter_mut().find(|v| v.name == "db1").unwrap();
    vm.guest.as_mut().unwrap().nameservers = Some(vec!["198.51.100.53".parse().unwrap()]);
    let r = run(&s);
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
    assert!(r
        .findings
        .iter()
        .any(|f| f.code == "guest-wrong-netmask" && f.severity == Severity::Warning));
}

/// A firewall rule that drops only DNS: the rule is the root cause (once, for every guest),
/// the unreachable resolvers are its consequences.
#[test]
fn dns_dropped_by_a_forward_rule() {
    let mut s = healthy();
    kvmnet_model::nft_script::load_script(
        "table inet blk {\n  chain fw1 {\n    type filter hook forward priority -5; policy accept;\n    udp dport 53 drop\n  }\n}\n",
        &mut s.nftables,
    )
    .unwrap();
    let r = run(&s);
    only_error(&r, "forward-blocked", "inet blk fw1");
    let fb: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.code == "forward-blocked")
        .collect();
    assert_eq!(fb.len(), 1, "{fb:#?}");
    assert_eq!(fb[0].affects.len(), 3, "{:#?}", fb[0]);
    assert!(
        fb[0]
            .fix
            .commands
            .iter()
            .any(|c| c.contains("nft delete rule inet blk fw1 handle")),
        "{:#?}",
        fb[0]
    );
    let dns: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.code == "dns-unreachable")
        .collect();
    assert_eq!(dns.len(), 3);
    assert!(
        dns.iter()
            .all(|f| f.caused_by.as_deref() == Some("forward-blocked")),
        "{dns:#?}"
    );
}

/// A guest without an address whose DHCP requests a host rule drops: the rule is the cause.
#[test]
fn dhcp_requests_dropped_by_an_input_rule() {
    let mut s = healthy();
    let vm = s.vms.iter_mut().find(|v| v.name == "db1").unwrap();
    let g = vm.guest.as_mut().unwrap();
    g.interfaces[0].addresses.clear();
    g.routes = Some(vec![]);
    // without a blocking rule: only the missing address
    only_error(&run(&s), "guest-no-address", "db1");
    kvmnet_model::nft_script::load_script(
        "table ip guard {\n  chain in {\n    type filter hook input priority filter; policy accept;\n    iifname \"br0\" udp dport 67 counter reject\n  }\n}\n",
        &mut s.nftables,
    )
    .unwrap();
    let r = run(&s);
    only_error(&r, "dhcp-blocked", "ip guard in");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "dhcp-blocked")
        .unwrap();
    assert!(f.summary.contains("rejected"), "{f:#?}");
    assert!(
        f.fix
            .commands
            .iter()
            .any(|c| c.contains("nft delete rule ip guard in handle")),
        "{f:#?}"
    );
    let na = r
        .findings
        .iter()
        .find(|f| f.code == "guest-no-address")
        .unwrap();
    assert_eq!(na.caused_by.as_deref(), Some("dhcp-blocked"));
}

/// A libvirt guest on a macvtap of the host's uplink (`<interface type='direct'>`), made from
/// db1's record: address `ip` on the uplink's LAN, gateway the LAN's router, resolver `dns`.
fn macvtap_guest(s: &mut HostState, name: &str, tap: &str, mode: &str, ip: &str, dns: &str) {
    use kvmnet_model::link::MacvlanInfo;
    let idx = s.links.iter().map(|l| l.index).max().unwrap_or(1) + 1;
    let mut l = Link::new(idx, tap, LinkKind::Macvtap);
    l.parent = Some("uplink".into());
    l.macvlan = Some(MacvlanInfo { mode: mode.into() });
    s.links.push(l);
    let db1 = s.vms.iter().find(|v| v.name == "db1").unwrap().clone();
    let mut v = serde_json::to_value(&db1).unwrap();
    v["name"] = name.into();
    v["source"] = "libvirt".into();
    v["netns"] = serde_json::Value::Null;
    let mac = format!("52:54:00:aa:bb:{:02x}", idx);
    v["vnics"][0]["host_dev"] = tap.into();
    v["vnics"][0]["iface_type"] = "direct".into();
    v["vnics"][0]["source_dev"] = "uplink".into();
    v["vnics"][0]["source_bridge"] = serde_json::Value::Null;
    v["vnics"][0]["network"] = serde_json::Value::Null;
    v["vnics"][0]["model"] = "virtio".into();
    v["vnics"][0]["mac"] = mac.clone().into();
    v["vnics"][0]["addresses"] = serde_json::json!([]);
    v["guest"]["interfaces"][0]["mac"] = mac.into();
    v["guest"]["interfaces"][0]["addresses"] = serde_json::json!([format!("{ip}/24")]);
    v["guest"]["routes"] = serde_json::json!([
        {"table": 254, "dst": "0.0.0.0/0", "gateway": "198.51.100.1", "dev": "eth0", "kind": "unicast", "protocol": "boot", "scope": "global"},
        {"table": 254, "dst": "198.51.100.0/24", "dev": "eth0", "kind": "unicast", "protocol": "kernel", "scope": "link"}
    ]);
    v["guest"]["nameservers"] = serde_json::json!([dns]);
    v["guest"]["neighbours"] = serde_json::json!([]);
    s.vms.push(serde_json::from_value(v).unwrap());
}

#[test]
fn macvtap_guests_reach_the_lan_but_never_the_host() {
    use kvmnet_trace::{Endpoint, Verdict};
    let mut s = healthy();
    macvtap_guest(
        &mut s,
        "lan1",
        "macvtap0",
        "bridge",
        "198.51.100.71",
        "198.51.100.53",
    );
    macvtap_guest(
        &mut s,
        "lan2",
        "macvtap1",
        "bridge",
        "198.51.100.72",
        "198.51.100.53",
    );
    // healthy: the LAN router and the LAN's resolver are out on the wire
    let r = run(&s);
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
    let t = icmp_trace(&s, "lan1", Endpoint::Addr("203.0.113.1".parse().unwrap()));
    assert!(matches!(t.verdict, Verdict::Delivered { .. }), "{t:#?}");
    assert!(
        t.hops
            .iter()
            .any(|h| h.decision.contains("out of uplink to the wire")),
        "{t:#?}"
    );
    // bridge mode: siblings on the same lower device reach each other directly
    let t = icmp_trace(
        &s,
        "lan1",
        Endpoint::Vm {
            name: "lan2".into(),
            vnic: None,
        },
    );
    assert!(matches!(t.verdict, Verdict::Delivered { .. }), "{t:#?}");
    // the host cannot reach them through the lower device, nor they the host
    let host_to = kvmnet_trace::Tracer::new(&s)
        .trace(&kvmnet_trace::FlowSpec {
            from: Endpoint::Host,
            to: Endpoint::Vm {
                name: "lan1".into(),
                vnic: None,
            },
            proto: 1,
            dport: 0,
            sport: None,
            size: None,
            df: false,
        })
        .unwrap();
    assert_eq!(dropped(&host_to).0, "macvtap-host", "{host_to:#?}");
    // a guest whose resolver is the host: that is the finding
    let vm = s.vms.iter_mut().find(|v| v.name == "lan1").unwrap();
    vm.guest.as_mut().unwrap().nameservers = Some(vec!["198.51.100.2".parse().unwrap()]);
    let r = run(&s);
    only_error(&r, "macvtap-host-unreachable", "lan1");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "macvtap-host-unreachable")
        .unwrap();
    assert!(f.subject.contains(&"macvtap0".to_string()), "{f:#?}");
    assert!(
        f.fix
            .commands
            .iter()
            .any(|c| c.contains("type macvlan mode bridge")),
        "{f:#?}"
    );
    // private mode: siblings are cut off from each other (a warning: it is what private means)
    let vm = s.vms.iter_mut().find(|v| v.name == "lan1").unwrap();
    vm.guest.as_mut().unwrap().nameservers = Some(vec!["198.51.100.53".parse().unwrap()]);
    for l in s.links.iter_mut().filter(|l| l.name == "macvtap1") {
        l.macvlan.as_mut().unwrap().mode = "private".into();
    }
    let (cause, _) = dropped(&icmp_trace(
        &s,
        "lan1",
        Endpoint::Vm {
            name: "lan2".into(),
            vnic: None,
        },
    ));
    assert_eq!(cause, "macvtap-private");
    // the lower device down: every macvtap guest on it is cut off
    for l in s.links.iter_mut().filter(|l| l.name == "uplink") {
        l.admin_up = false;
    }
    let r = run(&s);
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "uplink-down" && f.is_root_error())
        .expect("uplink-down");
    assert!(
        f.affects.contains(&"lan1".to_string()) && f.affects.contains(&"lan2".to_string()),
        "{f:#?}"
    );
}

/// The host runs the guests' resolver, and a host input rule drops DNS: the rule is the cause.
#[test]
fn dns_to_the_host_dropped_by_an_input_rule() {
    let mut s = healthy();
    s.sockets.push(ListenSocket {
        proto: "udp".into(),
        address: "10.0.0.1".parse().unwrap(),
        port: 53,
        process: None,
    });
    for vm in &mut s.vms {
        vm.guest.as_mut().unwrap().nameservers = Some(vec!["10.0.0.1".parse().unwrap()]);
    }
    assert_eq!(run(&s).root_errors(), 0, "{:#?}", run(&s).findings);
    kvmnet_model::nft_script::load_script(
        "table inet guard {\n  chain in {\n    type filter hook input priority filter; policy accept;\n    iifname \"br0\" udp dport 53 drop\n  }\n}\n",
        &mut s.nftables,
    )
    .unwrap();
    let r = run(&s);
    only_error(&r, "host-input-blocked", "inet guard in");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "host-input-blocked")
        .unwrap();
    assert_eq!(f.affects.len(), 3, "{f:#?}");
    assert!(r
        .findings
        .iter()
        .filter(|f| f.code == "dns-unreachable")
        .all(|f| f.caused_by.as_deref() == Some("host-input-blocked")));
}

/// IPv6 beside IPv4: a guest with an IPv6 address and route, the host forwarding IPv6 or not.
#[test]
fn ipv6_forwarding_off_for_a_dual_stack_guest() {
    let mut s = healthy();
    let addr = |ifname: &str, a: &str, len: u8| Address {
        ifname: ifname.into(),
        ifindex: s.links.iter().find(|l| l.name == ifname).unwrap().index,
        address: a.parse().unwrap(),
        prefix_len: len,
        scope: "global".into(),
        flags: vec![],
    };
    let (a1, a2) = (
        addr("br0", "2001:db8:1::1", 64),
        addr("uplink", "2001:db8:ff::2", 64),
    );
    s.addresses.extend([a1, a2]);
    let mut def6 = s.routes.iter().find(|r| r.is_default()).unwrap().clone();
    def6.dst = "::/0".parse().unwrap();
    def6.gateway = Some("2001:db8:ff::1".parse().unwrap());
    let mut on_link = def6.clone();
    on_link.dst = "2001:db8:ff::/64".parse().unwrap();
    on_link.gateway = None;
    let mut on_br = on_link.clone();
    on_br.dst = "2001:db8:1::/64".parse().unwrap();
    on_br.dev = Some("br0".into());
    s.routes.extend([def6, on_link, on_br]);
    s.sysctls.ipv6_forwarding = Some(true);
    let vm = s.vms.iter_mut().find(|v| v.name == "db1").unwrap();
    let g = vm.guest.as_mut().unwrap();
    g.interfaces[0]
        .addresses
        .push("2001:db8:1::13/64".parse().unwrap());
    let routes = g.routes.as_mut().unwrap();
    let mut gdef = routes.iter().find(|r| r.is_default()).unwrap().clone();
    gdef.dst = "::/0".parse().unwrap();
    gdef.gateway = Some("2001:db8:1::1".parse().unwrap());
    let mut gnet = gdef.clone();
    gnet.dst = "2001:db8:1::/64".parse().unwrap();
    gnet.gateway = None;
    routes.extend([gdef, gnet]);
    let run6 = |s: &HostState| {
        diagnose(
            s,
            &Options {
                target: Some("2001:db8:ff::1".parse().unwrap()),
                ..Default::default()
            },
        )
    };
    let r = run6(&s);
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
    s.sysctls.ipv6_forwarding = Some(false);
    let r = run6(&s);
    only_error(&r, "ip-forward-disabled", "net.ipv6.conf.all.forwarding");
    let f = r
        .findings
        .iter()
        .find(|f| f.code == "ip-forward-disabled")
        .unwrap();
    assert!(
        f.fix
            .commands
            .iter()
            .any(|c| c.contains("sysctl -w net.ipv6.conf.all.forwarding=1")),
        "{f:#?}"
    );
    assert!(
        f.affects.contains(&"db1".to_string()) && !f.affects.contains(&"web1".to_string()),
        "{f:#?}"
    );
    // with an IPv4 target, db1's IPv6 gateway is still checked: gone from br0, it is the fault
    s.sysctls.ipv6_forwarding = Some(true);
    assert_eq!(run(&s).root_errors(), 0, "{:#?}", run(&s).findings);
    s.addresses
        .retain(|a| a.address.to_string() != "2001:db8:1::1");
    let r = run(&s);
    only_error(&r, "guest-wrong-gateway", "db1");
    assert!(
        r.findings
            .iter()
            .any(|f| f.summary.contains("2001:db8:1::1")),
        "{:#?}",
        r.findings
    );
}

/// A bridge with a NIC in it (classic bridged networking): a guest whose gateway is a router
/// on the LAN beyond that NIC is fine as far as the host can tell; it is an error only when
/// the host itself failed to resolve that router.
#[test]
fn gateway_on_the_lan_beyond_the_bridge_nic() {
    use kvmnet_model::ip::{NeighState, Neighbour};
    use kvmnet_trace::{Endpoint, Verdict};
    let mut s = healthy();
    let idx = s.links.iter().map(|l| l.index).max().unwrap_or(1) + 1;
    let mut nic = Link::new(idx, "eno1", LinkKind::Physical);
    nic.master = Some("br0".into());
    nic.bridge_port = Some(Default::default());
    s.links.push(nic);
    let vm = s.vms.iter_mut().find(|v| v.name == "db1").unwrap();
    for r in vm
        .guest
        .as_mut()
        .unwrap()
        .routes
        .as_mut()
        .unwrap()
        .iter_mut()
        .filter(|r| r.is_default())
    {
        r.gateway = Some("10.0.0.254".parse().unwrap());
    }
    let r = run(&s);
    assert_eq!(r.root_errors(), 0, "{:#?}", r.findings);
    let t = icmp_trace(&s, "db1", Endpoint::Addr("10.0.0.254".parse().unwrap()));
    assert!(matches!(t.verdict, Verdict::Delivered { .. }), "{t:#?}");
    assert!(
        t.hops
            .iter()
            .any(|h| h.decision.contains("out through LAN port eno1")),
        "{t:#?}"
    );
    // the host's own ARP for it failed: nothing answers there
    s.neighbours.push(Neighbour {
        ifname: "br0".into(),
        address: "10.0.0.254".parse().unwrap(),
        lladdr: None,
        state: NeighState::Failed,
        router: false,
    });
    only_error(&run(&s), "guest-wrong-gateway", "db1");
}
