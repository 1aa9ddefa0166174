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
    assert!(f.is_root_error());
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
