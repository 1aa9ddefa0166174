//! Synthetic host states for benchmarks and scale tests: many VMs, vNICs, bridges and a large
//! nftables ruleset, built in memory (no root, no kernel), shaped like a real NAT host.

use std::net::{IpAddr, Ipv4Addr};

use kvmnet_model::ip::{Address, Route, RouteKind, RT_TABLE_MAIN};
use kvmnet_model::link::{BridgeInfo, BridgePortInfo, TapInfo};
use kvmnet_model::nft::{
    CmpOp, Expr, NftChain, NftData, NftFamily, NftHook, NftRule, NftTable, NftVerdict,
};
use kvmnet_model::vm::{AddrOrigin, GuestAddr, Vm, VmSource, VmState, Vnic, VnicType};
use kvmnet_model::{Bytes, HostState, Link, LinkKind, MacAddr};

fn verdict(kind: &str) -> Expr {
    Expr::Immediate {
        dreg: 0,
        data: NftData::Verdict(NftVerdict {
            kind: kind.into(),
            chain: None,
        }),
    }
}

fn saddr(ip: Ipv4Addr) -> [Expr; 2] {
    [
        Expr::Payload {
            base: "network".into(),
            offset: 12,
            len: 4,
            dreg: 1,
        },
        Expr::Cmp {
            sreg: 1,
            op: CmpOp::Eq,
            data: Bytes(ip.octets().to_vec()),
        },
    ]
}

fn dport(p: u16) -> [Expr; 4] {
    [
        Expr::Meta {
            key: "l4proto".into(),
            dreg: 1,
        },
        Expr::Cmp {
            sreg: 1,
            op: CmpOp::Eq,
            data: Bytes(vec![6]),
        },
        Expr::Payload {
            base: "transport".into(),
            offset: 2,
            len: 2,
            dreg: 1,
        },
        Expr::Cmp {
            sreg: 1,
            op: CmpOp::Eq,
            data: Bytes(p.to_be_bytes().to_vec()),
        },
    ]
}

/// The address of guest `i` on bridge `b`.
pub fn guest_ip(b: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100 + b as u8, (i / 250) as u8, (i % 250 + 2) as u8)
}

/// A NAT host with `vms` VMs of `nics` vNICs each spread over `bridges` bridges, and a
/// forward chain of about `rules` per-VM rules (plus accept-established and a masquerade).
pub fn large_host(vms: usize, nics: usize, bridges: usize, rules: usize) -> HostState {
    let mut s = HostState {
        hostname: "synthetic".into(),
        ..Default::default()
    };
    let mut idx = 1u32;
    let mut link = |s: &mut HostState, name: &str, kind: LinkKind| -> u32 {
        idx += 1;
        let mut l = Link::new(idx, name, kind);
        l.mac = Some(MacAddr([
            2,
            0,
            0,
            (idx >> 16) as u8,
            (idx >> 8) as u8,
            idx as u8,
        ]));
        s.links.push(l);
        idx
    };
    let up = link(&mut s, "uplink", LinkKind::Physical);
    s.addresses.push(Address {
        ifname: "uplink".into(),
        ifindex: up,
        address: "198.51.100.2"
            .parse()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        prefix_len: 24,
        scope: "global".into(),
        flags: vec![],
    });
    let route = |dst: &str, gw: Option<&str>, dev: &str| Route {
        table: RT_TABLE_MAIN,
        dst: dst
            .parse()
            .unwrap_or_else(|_| ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
        gateway: gw.and_then(|g| g.parse().ok()),
        dev: Some(dev.into()),
        prefsrc: None,
        metric: None,
        kind: RouteKind::Unicast,
        protocol: "boot".into(),
        scope: "global".into(),
        nexthops: vec![],
        mtu: None,
    };
    s.routes
        .push(route("0.0.0.0/0", Some("198.51.100.1"), "uplink"));
    s.routes.push(route("198.51.100.0/24", None, "uplink"));
    for b in 0..bridges {
        let name = format!("br{b}");
        let i = link(&mut s, &name, LinkKind::Bridge);
        if let Some(l) = s.links.last_mut() {
            l.bridge = Some(BridgeInfo::default());
        }
        s.addresses.push(Address {
            ifname: name.clone(),
            ifindex: i,
            address: IpAddr::V4(Ipv4Addr::new(10, 100 + b as u8, 0, 1)),
            prefix_len: 16,
            scope: "global".into(),
            flags: vec![],
        });
        s.routes
            .push(route(&format!("10.{}.0.0/16", 100 + b), None, &name));
    }
    s.sysctls.ip_forward = Some(true);
    s.sysctls.bridge_nf_call_iptables = Some(true);
    for v in 0..vms {
        let mut vm = Vm {
            name: format!("vm{v:04}"),
            source: VmSource::Libvirt,
            uuid: None,
            state: VmState::Running,
            pid: None,
            netns: None,
            vnics: vec![],
            guest: None,
            vcpus: Some(2),
            agent: None,
        };
        for n in 0..nics {
            let k = v * nics + n;
            let b = k % bridges;
            let dev = format!("vnet{k}");
            link(&mut s, &dev, LinkKind::Tap);
            if let Some(l) = s.links.last_mut() {
                l.master = Some(format!("br{b}"));
                l.bridge_port = Some(BridgePortInfo {
                    learning: true,
                    unicast_flood: true,
                    ..Default::default()
                });
                l.tap = Some(TapInfo {
                    vnet_hdr: true,
                    ..Default::default()
                });
            }
            vm.vnics.push(Vnic {
                mac: Some(MacAddr([
                    0x52,
                    0x54,
                    0,
                    (k >> 16) as u8,
                    (k >> 8) as u8,
                    k as u8,
                ])),
                host_dev: Some(dev),
                model: Some("virtio".into()),
                iface_type: VnicType::Bridge,
                source_bridge: Some(format!("br{b}")),
                vhost: Some(true),
                addresses: vec![GuestAddr {
                    address: IpAddr::V4(guest_ip(b, k / bridges)),
                    prefix_len: Some(16),
                    origin: AddrOrigin::Lease,
                }],
                ..Default::default()
            });
        }
        s.vms.push(vm);
    }
    // the ruleset: established first, then per-guest port rules, a NAT table
    let mut fwd = vec![NftRule {
        handle: 2,
        comment: None,
        exprs: vec![
            Expr::Ct {
                key: "state".into(),
                dreg: Some(1),
                sreg: None,
                direction: None,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                len: 4,
                mask: Bytes(6u32.to_ne_bytes().to_vec()),
                xor: Bytes(vec![0; 4]),
            },
            Expr::Cmp {
                sreg: 1,
                op: CmpOp::Neq,
                data: Bytes(vec![0; 4]),
            },
            verdict("accept"),
        ],
    }];
    let total_nics = vms * nics;
    for r in 0..rules {
        let k = r % total_nics.max(1);
        let mut exprs: Vec<Expr> = saddr(guest_ip(k % bridges, k / bridges)).to_vec();
        exprs.extend(dport(1000 + (r / total_nics.max(1)) as u16));
        exprs.push(Expr::Counter {
            packets: 0,
            bytes: 0,
        });
        exprs.push(verdict(if r % 7 == 0 { "drop" } else { "accept" }));
        fwd.push(NftRule {
            handle: 10 + r as u64,
            comment: None,
            exprs,
        });
    }
    let chain = |name: &str, hook: &str, prio: i32, ty: &str, rules: Vec<NftRule>| NftChain {
        name: name.into(),
        handle: 1,
        hook: Some(NftHook {
            hook: hook.into(),
            priority: prio,
            chain_type: ty.into(),
            policy: "accept".into(),
            devices: vec![],
        }),
        comment: None,
        rules,
    };
    let masq = NftRule {
        handle: 3,
        comment: None,
        exprs: vec![
            Expr::Meta {
                key: "oifname".into(),
                dreg: 1,
            },
            Expr::Cmp {
                sreg: 1,
                op: CmpOp::Eq,
                data: Bytes(b"uplink\0\0\0\0\0\0\0\0\0\0".to_vec()),
            },
            Expr::Masq {
                flags: 0,
                proto_min: None,
                proto_max: None,
            },
        ],
    };
    s.nftables.tables.push(NftTable {
        family: NftFamily::Inet,
        name: "filter".into(),
        handle: 1,
        flags: vec![],
        comment: None,
        chains: vec![chain("forward", "forward", 0, "filter", fwd)],
        sets: vec![],
        objects: vec![],
        flowtables: vec![],
    });
    s.nftables.tables.push(NftTable {
        family: NftFamily::Ip,
        name: "nat".into(),
        handle: 2,
        flags: vec![],
        comment: None,
        chains: vec![chain("postrouting", "postrouting", 100, "nat", vec![masq])],
        sets: vec![],
        objects: vec![],
        flowtables: vec![],
    });
    s
}
