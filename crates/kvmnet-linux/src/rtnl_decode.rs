//! rtnetlink dumps decoded into the model: links, addresses, routes, policy rules, neighbours,
//! FDB entries, qdiscs, and namespace ids.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use kvmnet_model::ip::{
    Address, FdbEntry, NeighState, Neighbour, NextHop, PolicyRule, Qdisc, Route, RouteKind,
    RuleAction,
};
use kvmnet_model::link::{
    BondInfo, BondPortInfo, BridgeInfo, BridgePortInfo, Link, LinkKind, LinkStats, MacvlanInfo,
    OperState, PortState, TapInfo, VethPeer, VlanInfo, VxlanInfo,
};
use kvmnet_model::sysctl::IfSysctls;
use kvmnet_model::MacAddr;
use netlink_packet_core::Nla;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, BondMode, BridgePortState, BridgeStpState, InfoBond,
    InfoBondPort, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoMacVlan, InfoMacVtap,
    InfoPortData, InfoTun, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType,
    LinkMessage, MacVlanMode, MacVtapMode, State, VlanProtocol,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{
    RuleAction as NlRuleAction, RuleAttribute, RuleFlags, RuleMessage,
};
use netlink_packet_route::tc::{TcAttribute, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::rtnl::RtSocket;
use crate::Error;

/// Raw facts about a link that the model does not keep but collection needs.
#[derive(Debug, Default, Clone)]
pub(crate) struct LinkExtra {
    pub master_index: Option<u32>,
    pub link_index: Option<u32>,
    pub link_netnsid: Option<i32>,
    /// The interface's IPv4/IPv6 devconf (its `net.ipv{4,6}.conf.<if>.*` sysctls), which the
    /// kernel includes in every link message.
    pub sysctls: Option<IfSysctls>,
}

fn nla_bytes<N: Nla>(n: &N) -> Vec<u8> {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    v
}

fn ne_u32(b: &[u8]) -> Option<u32> {
    b.get(..4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn kind_of(info: &InfoKind) -> LinkKind {
    match info {
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::Tun => LinkKind::Tap,
        InfoKind::Vxlan => LinkKind::Vxlan,
        InfoKind::Vlan => LinkKind::Vlan,
        InfoKind::Bond => LinkKind::Bond,
        InfoKind::MacVlan => LinkKind::Macvlan,
        InfoKind::MacVtap => LinkKind::Macvtap,
        InfoKind::Ifb => LinkKind::Ifb,
        InfoKind::Dummy => LinkKind::Dummy,
        InfoKind::Other(s) if s == "openvswitch" => LinkKind::Openvswitch,
        other => LinkKind::Other(format!("{other:?}").to_lowercase()),
    }
}

fn bond_mode(m: &BondMode) -> String {
    match m {
        BondMode::BalanceRr => "balance-rr",
        BondMode::ActiveBackup => "active-backup",
        BondMode::BalanceXor => "balance-xor",
        BondMode::Broadcast => "broadcast",
        BondMode::Ieee8023Ad => "802.3ad",
        BondMode::BalanceTlb => "balance-tlb",
        BondMode::BalanceAlb => "balance-alb",
        _ => "unknown",
    }
    .to_string()
}

fn port_state(s: &BridgePortState) -> PortState {
    match s {
        BridgePortState::Disabled => PortState::Disabled,
        BridgePortState::Listening => PortState::Listening,
        BridgePortState::Learning => PortState::Learning,
        BridgePortState::Forwarding => PortState::Forwarding,
        BridgePortState::Blocking => PortState::Blocking,
        _ => PortState::Disabled,
    }
}

fn oper_state(s: &State) -> OperState {
    match s {
        State::Unknown => OperState::Unknown,
        State::NotPresent => OperState::NotPresent,
        State::Down => OperState::Down,
        State::LowerLayerDown => OperState::LowerLayerDown,
        State::Testing => OperState::Testing,
        State::Dormant => OperState::Dormant,
        State::Up => OperState::Up,
        _ => OperState::Unknown,
    }
}

/// IFLA_TUN_* attribute numbers (the crate keeps them raw).
mod tun {
    pub const OWNER: u16 = 1;
    pub const GROUP: u16 = 2;
    pub const TYPE: u16 = 3;
    pub const PI: u16 = 4;
    pub const VNET_HDR: u16 = 5;
    pub const PERSIST: u16 = 6;
    pub const MULTI_QUEUE: u16 = 7;
    pub const NUM_QUEUES: u16 = 8;
    /// IFF_TUN
    pub const IFF_TUN: u8 = 1;
}

fn decode_tun(attrs: &[InfoTun]) -> (bool, TapInfo) {
    let mut t = TapInfo::default();
    let mut is_tun = false;
    for a in attrs {
        let InfoTun::Other(nla) = a else { continue };
        let v = nla_bytes(nla);
        let flag = v.first().copied().unwrap_or(0) != 0;
        match nla.kind() {
            tun::OWNER => t.owner = ne_u32(&v).filter(|o| *o != u32::MAX),
            tun::GROUP => t.group = ne_u32(&v).filter(|g| *g != u32::MAX),
            tun::TYPE => is_tun = v.first().copied() == Some(tun::IFF_TUN),
            tun::PI => t.packet_info = flag,
            tun::VNET_HDR => t.vnet_hdr = flag,
            tun::PERSIST => t.persist = flag,
            tun::MULTI_QUEUE => t.multi_queue = flag,
            tun::NUM_QUEUES => t.num_queues = ne_u32(&v),
            _ => {}
        }
    }
    (is_tun, t)
}

fn decode_link(msg: LinkMessage) -> (Link, LinkExtra) {
    let index = msg.header.index;
    let flags = msg.header.flags;
    let mut link = Link::new(index, "", LinkKind::Physical);
    link.admin_up = flags.contains(LinkFlags::Up);
    link.oper_state = OperState::Unknown;
    link.carrier = None;
    let mut extra = LinkExtra::default();
    let mut kind: Option<LinkKind> = None;
    let mut bond_members_active: Option<u32> = None;
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(&a),
            LinkAttribute::Controller(m) => extra.master_index = Some(m),
            LinkAttribute::Link(l) => extra.link_index = Some(l),
            LinkAttribute::LinkNetNsId(id) => extra.link_netnsid = Some(id),
            LinkAttribute::OperState(s) => link.oper_state = oper_state(&s),
            LinkAttribute::Carrier(c) => link.carrier = Some(c != 0),
            LinkAttribute::Qdisc(q) => link.qdisc = Some(q),
            LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
            LinkAttribute::AfSpecUnspec(specs) => {
                let mut sc = IfSysctls::default();
                for spec in specs {
                    match spec {
                        AfSpecUnspec::Inet(v) => {
                            for i in v {
                                if let AfSpecInet::DevConf(c) = i {
                                    sc.forwarding = Some(c.forwarding != 0);
                                    sc.rp_filter = u8::try_from(c.rp_filter).ok();
                                    sc.proxy_arp = Some(c.proxy_arp != 0);
                                    sc.arp_ignore = u8::try_from(c.arp_ignore).ok();
                                    sc.arp_announce = u8::try_from(c.arp_announce).ok();
                                }
                            }
                        }
                        AfSpecUnspec::Inet6(v) => {
                            for i in v {
                                if let AfSpecInet6::DevConf(c) = i {
                                    sc.ipv6_forwarding = Some(c.forwarding != 0);
                                    sc.disable_ipv6 = Some(c.disable_ipv6 != 0);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                extra.sysctls = Some(sc);
            }
            LinkAttribute::Stats64(s) => {
                link.stats = LinkStats {
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                    rx_errors: s.rx_errors,
                    tx_errors: s.tx_errors,
                    rx_dropped: s.rx_dropped,
                    tx_dropped: s.tx_dropped,
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = Some(kind_of(&k)),
                        LinkInfo::Data(InfoData::Bridge(attrs)) => {
                            let mut b = BridgeInfo::default();
                            for a in attrs {
                                match a {
                                    InfoBridge::StpState(s) => {
                                        b.stp_state = match s {
                                            BridgeStpState::Disabled => 0,
                                            BridgeStpState::KernelStp => 1,
                                            BridgeStpState::UserStp => 2,
                                            BridgeStpState::Other(v) => v,
                                            _ => 1,
                                        }
                                    }
                                    InfoBridge::VlanFiltering(v) => b.vlan_filtering = v,
                                    InfoBridge::VlanDefaultPvid(p) => b.default_pvid = Some(p),
                                    InfoBridge::ForwardDelay(d) => b.forward_delay_cs = Some(d),
                                    InfoBridge::AgeingTime(t) => b.ageing_time_cs = Some(t),
                                    InfoBridge::NfCallIpTables(v) => b.nf_call_iptables = v,
                                    InfoBridge::NfCallIp6Tables(v) => b.nf_call_ip6tables = v,
                                    InfoBridge::NfCallArpTables(v) => b.nf_call_arptables = v,
                                    _ => {}
                                }
                            }
                            link.bridge = Some(b);
                        }
                        LinkInfo::Data(InfoData::Tun(attrs)) => {
                            let (is_tun, t) = decode_tun(&attrs);
                            if is_tun {
                                kind = Some(LinkKind::Tun);
                            }
                            link.tap = Some(t);
                        }
                        LinkInfo::Data(InfoData::Vlan(attrs)) => {
                            let mut v = VlanInfo {
                                id: 0,
                                protocol: "802.1Q".into(),
                            };
                            for a in attrs {
                                match a {
                                    InfoVlan::Id(id) => v.id = id,
                                    InfoVlan::Protocol(VlanProtocol::Ieee8021Ad) => {
                                        v.protocol = "802.1ad".into()
                                    }
                                    _ => {}
                                }
                            }
                            link.vlan = Some(v);
                        }
                        LinkInfo::Data(InfoData::Bond(attrs)) => {
                            let mut b = BondInfo {
                                mode: "balance-rr".into(),
                                members: vec![],
                                active_member: None,
                                miimon_ms: None,
                                ad_partner_mac: None,
                                ad_num_ports: None,
                            };
                            for a in attrs {
                                match a {
                                    InfoBond::Mode(m) => b.mode = bond_mode(&m),
                                    InfoBond::ActivePort(p) => bond_members_active = Some(p),
                                    InfoBond::MiiMon(m) => b.miimon_ms = Some(m),
                                    InfoBond::AdInfo(infos) => {
                                        for i in infos {
                                            match i {
                                                netlink_packet_route::link::BondAdInfo::PartnerMac(m) => {
                                                    b.ad_partner_mac = Some(MacAddr(m))
                                                }
                                                netlink_packet_route::link::BondAdInfo::NumPorts(n) => {
                                                    b.ad_num_ports = Some(n)
                                                }
                                                _ => {}
                                            }
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            link.bond = Some(b);
                        }
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            let mut v = VxlanInfo::default();
                            for a in attrs {
                                match a {
                                    InfoVxlan::Id(id) => v.vni = Some(id),
                                    InfoVxlan::Group(g) => v.remote = Some(IpAddr::V4(g)),
                                    InfoVxlan::Group6(g) => v.remote = Some(IpAddr::V6(g)),
                                    InfoVxlan::Local(l) => v.local = Some(IpAddr::V4(l)),
                                    InfoVxlan::Local6(l) => v.local = Some(IpAddr::V6(l)),
                                    InfoVxlan::Port(p) => v.port = Some(p),
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(v);
                        }
                        LinkInfo::Data(InfoData::MacVlan(attrs)) => {
                            for a in attrs {
                                if let InfoMacVlan::Mode(m) = a {
                                    link.macvlan = Some(MacvlanInfo {
                                        mode: macvlan_mode(&m),
                                    });
                                }
                            }
                        }
                        LinkInfo::Data(InfoData::MacVtap(attrs)) => {
                            for a in attrs {
                                if let InfoMacVtap::Mode(m) = a {
                                    link.macvlan = Some(MacvlanInfo {
                                        mode: macvtap_mode(&m),
                                    });
                                }
                            }
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(attrs)) => {
                            let mut p = BridgePortInfo {
                                learning: true,
                                unicast_flood: true,
                                ..Default::default()
                            };
                            for a in attrs {
                                match a {
                                    InfoBridgePort::State(s) => p.state = port_state(&s),
                                    InfoBridgePort::Cost(c) => p.cost = Some(c),
                                    InfoBridgePort::Priority(pr) => p.priority = Some(pr),
                                    InfoBridgePort::Learning(l) => p.learning = l,
                                    InfoBridgePort::UnicastFlood(f) => p.unicast_flood = f,
                                    InfoBridgePort::HairpinMode(h) => p.hairpin = h,
                                    InfoBridgePort::Isolated(i) => p.isolated = i,
                                    _ => {}
                                }
                            }
                            link.bridge_port = Some(p);
                        }
                        LinkInfo::PortData(InfoPortData::BondPort(attrs)) => {
                            let mut p = BondPortInfo {
                                state: "active".into(),
                                mii_status: "up".into(),
                                link_failure_count: None,
                            };
                            for a in attrs {
                                match a {
                                    InfoBondPort::LinkFailureCount(c) => {
                                        p.link_failure_count = Some(c)
                                    }
                                    InfoBondPort::MiiStatus(m) => {
                                        p.mii_status = format!("{m:?}").to_lowercase()
                                    }
                                    InfoBondPort::BondPortState(s) => {
                                        p.state = format!("{s:?}").to_lowercase()
                                    }
                                    _ => {}
                                }
                            }
                            link.bond_port = Some(p);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link.kind = match kind {
        Some(k) => k,
        None if msg.header.link_layer_type == LinkLayerType::Loopback => LinkKind::Loopback,
        None if msg.header.link_layer_type == LinkLayerType::Ether => LinkKind::Physical,
        None => LinkKind::Other(format!("{:?}", msg.header.link_layer_type).to_lowercase()),
    };
    if let (Some(b), Some(active)) = (link.bond.as_mut(), bond_members_active) {
        b.active_member = Some(active.to_string());
    }
    (link, extra)
}

fn macvlan_mode(m: &MacVlanMode) -> String {
    match m {
        MacVlanMode::Private => "private",
        MacVlanMode::Vepa => "vepa",
        MacVlanMode::Bridge => "bridge",
        MacVlanMode::Passthrough => "passthru",
        MacVlanMode::Source => "source",
        _ => "unknown",
    }
    .to_string()
}

fn macvtap_mode(m: &MacVtapMode) -> String {
    match m {
        MacVtapMode::Private => "private",
        MacVtapMode::Vepa => "vepa",
        MacVtapMode::Bridge => "bridge",
        MacVtapMode::Passthrough => "passthru",
        MacVtapMode::Source => "source",
        _ => "unknown",
    }
    .to_string()
}

/// The bridge VLANs of every bridge port and bridge device (`bridge vlan show`): an AF_BRIDGE
/// link dump asking for VLAN information. Empty where no bridge filters VLANs.
pub(crate) fn dump_bridge_vlans(
    sock: &mut RtSocket,
) -> Result<HashMap<u32, Vec<kvmnet_model::link::BridgeVlan>>, Error> {
    use netlink_packet_route::link::{AfSpecBridge, LinkExtentMask};
    let mut req = LinkMessage::default();
    req.header.interface_family = AddressFamily::Bridge;
    req.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
    let mut out = HashMap::new();
    sock.request_each(
        RouteNetlinkMessage::GetLink(req),
        true,
        "dump bridge vlans",
        |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                let mut infos = vec![];
                for a in &l.attributes {
                    if let LinkAttribute::AfSpecBridge(specs) = a {
                        for sp in specs {
                            if let AfSpecBridge::VlanInfo(v) = sp {
                                infos.push((v.flags.bits(), v.vid));
                            }
                        }
                    }
                }
                let vlans = bridge_vlans_from(&infos);
                if !vlans.is_empty() {
                    out.insert(l.header.index, vlans);
                }
            }
        },
    )?;
    Ok(out)
}

/// Decodes `IFLA_BRIDGE_VLAN_INFO` entries (flags, vid), expanding ranges
/// (`BRIDGE_VLAN_INFO_RANGE_BEGIN` 8 .. `RANGE_END` 16); `PVID` is 2, `UNTAGGED` 4.
pub(crate) fn bridge_vlans_from(infos: &[(u16, u16)]) -> Vec<kvmnet_model::link::BridgeVlan> {
    let mut out = vec![];
    let mut begin: Option<u16> = None;
    for &(flags, vid) in infos {
        let mk = |vid| kvmnet_model::link::BridgeVlan {
            vid,
            pvid: flags & 2 != 0,
            untagged: flags & 4 != 0,
        };
        if flags & 8 != 0 {
            begin = Some(vid);
        } else if flags & 16 != 0 {
            let from = begin.take().unwrap_or(vid);
            for v in from..=vid {
                out.push(mk(v));
            }
        } else {
            out.push(mk(vid));
        }
    }
    out
}

/// Dumps every link and resolves masters, parents, veth peers (same namespace) and bond members.
pub(crate) fn dump_links(sock: &mut RtSocket) -> Result<Vec<(Link, LinkExtra)>, Error> {
    let mut out: Vec<(Link, LinkExtra)> = Vec::new();
    sock.request_each(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        true,
        "dump links",
        |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                out.push(decode_link(l));
            }
        },
    )?;
    let names: HashMap<u32, String> = out.iter().map(|(l, _)| (l.index, l.name.clone())).collect();
    for (link, extra) in out.iter_mut() {
        link.master = extra.master_index.and_then(|i| names.get(&i).cloned());
        if link.kind == LinkKind::Veth {
            if let Some(peer) = extra.link_index {
                link.veth_peer = Some(VethPeer {
                    index: peer,
                    netnsid: extra.link_netnsid,
                    netns: None,
                    name: if extra.link_netnsid.is_none() {
                        names.get(&peer).cloned()
                    } else {
                        None
                    },
                });
            }
        } else if extra.link_netnsid.is_none() && extra.link_index != Some(link.index) {
            link.parent = extra.link_index.and_then(|i| names.get(&i).cloned());
        }
        if let Some(b) = link.bond.as_mut() {
            if let Some(active) = b.active_member.take() {
                b.active_member = active
                    .parse::<u32>()
                    .ok()
                    .and_then(|i| names.get(&i).cloned());
            }
        }
    }
    // bond members
    let members: Vec<(String, String)> = out
        .iter()
        .filter(|(l, _)| l.bond_port.is_some())
        .filter_map(|(l, _)| l.master.clone().map(|m| (m, l.name.clone())))
        .collect();
    for (link, _) in out.iter_mut() {
        if let Some(b) = link.bond.as_mut() {
            b.members = members
                .iter()
                .filter(|(m, _)| *m == link.name)
                .map(|(_, n)| n.clone())
                .collect();
        }
    }
    out.sort_by_key(|(l, _)| l.index);
    Ok(out)
}

fn scope_name(s: u8) -> String {
    match s {
        0 => "global".into(),
        200 => "site".into(),
        253 => "link".into(),
        254 => "host".into(),
        255 => "nowhere".into(),
        n => n.to_string(),
    }
}

/// Dumps IPv4 and IPv6 addresses.
pub(crate) fn dump_addresses(
    sock: &mut RtSocket,
    names: &HashMap<u32, String>,
) -> Result<Vec<Address>, Error> {
    let replies = sock.request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        true,
        "dump addresses",
    )?;
    let mut out = vec![];
    for m in replies {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        let mut addr: Option<IpAddr> = None;
        let mut local: Option<IpAddr> = None;
        let mut flags: u32 = u32::from(a.header.flags.bits());
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Address(ip) => addr = Some(*ip),
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Flags(f) => flags = f.bits(),
                _ => {}
            }
        }
        // For IPv4 IFA_LOCAL is the interface's address (IFA_ADDRESS is the peer on p2p links).
        let Some(ip) = local.or(addr) else { continue };
        let mut fl = vec![];
        for (bit, name) in [
            (u32::from(AddressHeaderFlags::Secondary.bits()), "secondary"),
            (u32::from(AddressHeaderFlags::Dadfailed.bits()), "dadfailed"),
            (u32::from(AddressHeaderFlags::Tentative.bits()), "tentative"),
            (
                u32::from(AddressHeaderFlags::Deprecated.bits()),
                "deprecated",
            ),
            (u32::from(AddressHeaderFlags::Permanent.bits()), "permanent"),
            (0x200, "noprefixroute"),
        ] {
            if flags & bit != 0 {
                fl.push(name.to_string());
            }
        }
        out.push(Address {
            ifname: names.get(&a.header.index).cloned().unwrap_or_default(),
            ifindex: a.header.index,
            address: ip,
            prefix_len: a.header.prefix_len,
            scope: scope_name(u8::from(a.header.scope)),
            flags: fl,
        });
    }
    Ok(out)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route_kind(t: &RouteType) -> RouteKind {
    match t {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        RouteType::Broadcast => RouteKind::Broadcast,
        RouteType::Anycast => RouteKind::Anycast,
        RouteType::Multicast => RouteKind::Multicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        RouteType::Throw => RouteKind::Throw,
        RouteType::Nat => RouteKind::Nat,
        _ => RouteKind::Other,
    }
}

fn proto_name(p: &RouteProtocol) -> String {
    match p {
        RouteProtocol::Unspec => "unspec".into(),
        RouteProtocol::Kernel => "kernel".into(),
        RouteProtocol::Boot => "boot".into(),
        RouteProtocol::Static => "static".into(),
        RouteProtocol::Dhcp => "dhcp".into(),
        RouteProtocol::Ra => "ra".into(),
        RouteProtocol::Other(n) => n.to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn route_scope(s: &RouteScope) -> String {
    match s {
        RouteScope::Universe => "global".into(),
        RouteScope::Site => "site".into(),
        RouteScope::Link => "link".into(),
        RouteScope::Host => "host".into(),
        RouteScope::NoWhere => "nowhere".into(),
        RouteScope::Other(n) => n.to_string(),
        _ => "unknown".into(),
    }
}

/// Dumps routes of every table, IPv4 and IPv6.
pub(crate) fn dump_routes(
    sock: &mut RtSocket,
    names: &HashMap<u32, String>,
) -> Result<Vec<Route>, Error> {
    let mut out = vec![];
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let replies = sock.request(RouteNetlinkMessage::GetRoute(req), true, "dump routes")?;
        for m in replies {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let is_v6 = r.header.address_family == AddressFamily::Inet6;
            let mut dst: Option<IpAddr> = None;
            let mut route = Route {
                table: u32::from(r.header.table),
                dst: if is_v6 {
                    IpNet::V6(ipnet::Ipv6Net::default())
                } else {
                    IpNet::V4(ipnet::Ipv4Net::default())
                },
                gateway: None,
                dev: None,
                prefsrc: None,
                metric: None,
                kind: route_kind(&r.header.kind),
                protocol: proto_name(&r.header.protocol),
                scope: route_scope(&r.header.scope),
                nexthops: vec![],
                mtu: None,
            };
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(a) => dst = route_addr(a),
                    RouteAttribute::Gateway(a) => route.gateway = route_addr(a),
                    RouteAttribute::PrefSource(a) => route.prefsrc = route_addr(a),
                    RouteAttribute::Oif(i) => route.dev = names.get(i).cloned(),
                    RouteAttribute::Priority(p) => route.metric = Some(*p),
                    RouteAttribute::Table(t) => route.table = *t,
                    RouteAttribute::Metrics(ms) => {
                        for m in ms {
                            if let RouteMetric::Mtu(v) = m {
                                route.mtu = Some(*v);
                            }
                        }
                    }
                    RouteAttribute::MultiPath(hops) => {
                        for h in hops {
                            let mut nh = NextHop {
                                gateway: None,
                                dev: names.get(&h.interface_index).cloned(),
                                weight: u16::from(h.hops) + 1,
                            };
                            for a in &h.attributes {
                                if let RouteAttribute::Gateway(g) = a {
                                    nh.gateway = route_addr(g);
                                }
                            }
                            route.nexthops.push(nh);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(d) = dst {
                if let Ok(net) = IpNet::new(d, r.header.destination_prefix_length) {
                    route.dst = net;
                }
            }
            out.push(route);
        }
    }
    Ok(out)
}

/// Dumps IPv4 and IPv6 policy rules.
pub(crate) fn dump_rules(sock: &mut RtSocket) -> Result<Vec<PolicyRule>, Error> {
    let mut out = vec![];
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut req = RuleMessage::default();
        req.header.family = family;
        let replies = sock.request(RouteNetlinkMessage::GetRule(req), true, "dump rules")?;
        for m in replies {
            let RouteNetlinkMessage::NewRule(r) = m else {
                continue;
            };
            let is_v6 = r.header.family == AddressFamily::Inet6;
            let mut rule = PolicyRule {
                family: if is_v6 { "inet6" } else { "inet" }.into(),
                priority: 0,
                src: None,
                dst: None,
                iif: None,
                oif: None,
                fwmark: None,
                fwmask: None,
                table: u32::from(r.header.table),
                action: match r.header.action {
                    NlRuleAction::ToTable => RuleAction::ToTable,
                    NlRuleAction::Goto => RuleAction::Goto,
                    NlRuleAction::Nop => RuleAction::Nop,
                    NlRuleAction::Blackhole => RuleAction::Blackhole,
                    NlRuleAction::Unreachable => RuleAction::Unreachable,
                    NlRuleAction::Prohibit => RuleAction::Prohibit,
                    _ => RuleAction::Other,
                },
                invert: r.header.flags.contains(RuleFlags::Invert),
                suppress_prefixlen: None,
            };
            for attr in &r.attributes {
                match attr {
                    RuleAttribute::Priority(p) => rule.priority = *p,
                    RuleAttribute::Source(a) => rule.src = IpNet::new(*a, r.header.src_len).ok(),
                    RuleAttribute::Destination(a) => {
                        rule.dst = IpNet::new(*a, r.header.dst_len).ok()
                    }
                    RuleAttribute::Iifname(n) => rule.iif = Some(n.clone()),
                    RuleAttribute::Oifname(n) => rule.oif = Some(n.clone()),
                    RuleAttribute::FwMark(m) => rule.fwmark = Some(*m),
                    RuleAttribute::FwMask(m) => rule.fwmask = Some(*m),
                    RuleAttribute::Table(t) => rule.table = *t,
                    RuleAttribute::SuppressPrefixLen(p) if *p != u32::MAX => {
                        rule.suppress_prefixlen = Some(*p)
                    }
                    _ => {}
                }
            }
            out.push(rule);
        }
    }
    Ok(out)
}

fn neigh_state(s: &NeighbourState) -> NeighState {
    match s {
        NeighbourState::Incomplete => NeighState::Incomplete,
        NeighbourState::Reachable => NeighState::Reachable,
        NeighbourState::Stale => NeighState::Stale,
        NeighbourState::Delay => NeighState::Delay,
        NeighbourState::Probe => NeighState::Probe,
        NeighbourState::Failed => NeighState::Failed,
        NeighbourState::Noarp => NeighState::Noarp,
        NeighbourState::Permanent => NeighState::Permanent,
        _ => NeighState::None,
    }
}

/// Dumps ARP and NDP neighbours.
pub(crate) fn dump_neighbours(
    sock: &mut RtSocket,
    names: &HashMap<u32, String>,
) -> Result<Vec<Neighbour>, Error> {
    let replies = sock.request(
        RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
        true,
        "dump neighbours",
    )?;
    let mut out = vec![];
    for m in replies {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        if !matches!(n.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
            continue;
        }
        let mut addr = None;
        let mut ll = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                    addr = Some(IpAddr::V4(*v))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                    addr = Some(IpAddr::V6(*v))
                }
                NeighbourAttribute::LinkLayerAddress(b) => ll = MacAddr::from_slice(b),
                _ => {}
            }
        }
        let Some(address) = addr else { continue };
        out.push(Neighbour {
            ifname: names.get(&n.header.ifindex).cloned().unwrap_or_default(),
            address,
            lladdr: ll,
            state: neigh_state(&n.header.state),
            router: n.header.flags.contains(NeighbourFlags::Router),
        });
    }
    Ok(out)
}

/// Dumps the bridge forwarding database (AF_BRIDGE neighbours).
pub(crate) fn dump_fdb(
    sock: &mut RtSocket,
    names: &HashMap<u32, String>,
) -> Result<Vec<FdbEntry>, Error> {
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Bridge;
    let replies = sock.request(RouteNetlinkMessage::GetNeighbour(req), true, "dump fdb")?;
    let mut out = vec![];
    for m in replies {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        let mut mac = None;
        let mut vlan = None;
        let mut master = None;
        let mut dst = None;
        for a in &n.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
                NeighbourAttribute::Vlan(v) => vlan = Some(*v),
                NeighbourAttribute::Controller(i) => master = names.get(i).cloned(),
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                    dst = Some(IpAddr::V4(*v))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                    dst = Some(IpAddr::V6(*v))
                }
                _ => {}
            }
        }
        let Some(mac) = mac else { continue };
        let state = match n.header.state {
            NeighbourState::Permanent => "permanent",
            NeighbourState::Noarp => "static",
            _ => "dynamic",
        };
        out.push(FdbEntry {
            mac,
            ifname: names.get(&n.header.ifindex).cloned().unwrap_or_default(),
            master,
            vlan,
            state: state.to_string(),
            is_self: n.header.flags.contains(NeighbourFlags::Own),
            sticky: n.header.flags.contains(NeighbourFlags::Sticky),
            dst,
        });
    }
    Ok(out)
}

fn handle_text(h: u32) -> String {
    match h {
        0xffff_ffff => "root".into(),
        0xffff_fff1 => "ingress".into(),
        0 => "0:".into(),
        _ => {
            let (maj, min) = (h >> 16, h & 0xffff);
            if min == 0 {
                format!("{maj:x}:")
            } else {
                format!("{maj:x}:{min:x}")
            }
        }
    }
}

/// Decodes a `tbf` qdisc's TCA_OPTIONS (nested attributes): (rate in bit/s, burst in bytes).
/// TCA_TBF_PARMS (1) is `struct tc_tbf_qopt`: rate.rate (bytes/s) at offset 8, buffer (the
/// burst as transmit time, in 64 ns scheduler ticks) at offset 28; TCA_TBF_RATE64 (4) carries
/// rates of 4 GB/s and more.
fn decode_tbf(v: &[u8]) -> (Option<u64>, Option<u32>) {
    let mut rate: Option<u64> = None;
    let mut buffer_ticks: Option<u32> = None;
    let mut off = 0;
    while off + 4 <= v.len() {
        let len = usize::from(u16::from_ne_bytes([v[off], v[off + 1]]));
        let kind = u16::from_ne_bytes([v[off + 2], v[off + 3]]) & 0x3fff;
        if len < 4 || off + len > v.len() {
            break;
        }
        let body = &v[off + 4..off + len];
        match kind {
            1 if body.len() >= 32 => {
                if let Some(r) = ne_u32(&body[8..]) {
                    rate = rate.or(Some(u64::from(r)));
                }
                buffer_ticks = ne_u32(&body[28..]);
            }
            4 if body.len() >= 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&body[..8]);
                rate = Some(u64::from_ne_bytes(b));
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    let ns_per_tick = psched_ns_per_tick();
    let burst = match (rate, buffer_ticks) {
        (Some(r), Some(t)) => {
            let bytes = (r as f64) * f64::from(t) * ns_per_tick / 1e9;
            Some(bytes.round() as u32)
        }
        _ => None,
    };
    (rate.map(|r| r * 8), burst)
}

/// Nanoseconds per packet-scheduler tick (/proc/net/psched: NSEC_PER_USEC and the ns of one
/// tick; 64 on current kernels).
fn psched_ns_per_tick() -> f64 {
    std::fs::read_to_string("/proc/net/psched")
        .ok()
        .and_then(|t| {
            let mut w = t.split_whitespace();
            let _ = w.next()?;
            u32::from_str_radix(w.next()?, 16).ok()
        })
        .filter(|v| *v > 0)
        .map(f64::from)
        .unwrap_or(64.0)
}

/// Dumps qdiscs; `tbf` rates and bursts are decoded.
pub(crate) fn dump_qdiscs(
    sock: &mut RtSocket,
    names: &HashMap<u32, String>,
) -> Result<Vec<Qdisc>, Error> {
    let replies = sock.request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        true,
        "dump qdiscs",
    )?;
    let mut out = vec![];
    for m in replies {
        let RouteNetlinkMessage::NewQueueDiscipline(q) = m else {
            continue;
        };
        let mut kind = String::new();
        let mut rate = None;
        let mut burst = None;
        // the kind comes first in the kernel's message; options are decoded by kind
        for a in &q.attributes {
            if let TcAttribute::Kind(k) = a {
                kind = k.clone();
            }
        }
        for a in &q.attributes {
            match a {
                TcAttribute::Kind(k) => kind = k.clone(),
                TcAttribute::Options(opts) if kind == "tbf" => {
                    for o in opts {
                        if let TcOption::Other(nla) = o {
                            let (r, b) = decode_tbf(&nla_bytes(nla));
                            rate = r.or(rate);
                            burst = b.or(burst);
                        }
                    }
                }
                _ => {}
            }
        }
        let handle = (u32::from(q.header.handle.major) << 16) | u32::from(q.header.handle.minor);
        let parent = (u32::from(q.header.parent.major) << 16) | u32::from(q.header.parent.minor);
        out.push(Qdisc {
            ifname: names
                .get(&(q.header.index as u32))
                .cloned()
                .unwrap_or_default(),
            kind: kind.clone(),
            handle: handle_text(handle),
            parent: handle_text(parent),
            rate_bps: if kind == "tbf" { rate } else { None },
            burst_bytes: if kind == "tbf" { burst } else { None },
        });
    }
    Ok(out)
}

/// The id the current namespace uses for the namespace open at `file` (RTM_GETNSID), if any.
pub(crate) fn nsid_of(sock: &mut RtSocket, file: &std::fs::File) -> Option<i32> {
    let mut req = NsidMessage::default();
    req.header.family = AddressFamily::Unspec;
    req.attributes
        .push(NsidAttribute::Fd(file.as_raw_fd() as u32));
    let replies = sock
        .request(RouteNetlinkMessage::GetNsId(req), false, "get nsid")
        .ok()?;
    replies.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewNsId(n) => n.attributes.iter().find_map(|a| match a {
            NsidAttribute::Id(id) if *id >= 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_vlan_entries_expand_ranges_and_keep_flags() {
        // vid 1 pvid untagged, 10-12 as a range, 20 tagged
        let v = bridge_vlans_from(&[(2 | 4, 1), (8, 10), (16, 12), (0, 20)]);
        let vids: Vec<u16> = v.iter().map(|x| x.vid).collect();
        assert_eq!(vids, vec![1, 10, 11, 12, 20]);
        assert!(v[0].pvid && v[0].untagged);
        assert!(!v[2].pvid && !v[4].untagged);
        assert_eq!(kvmnet_model::link::pvid_of(&v), Some(1));
    }

    /// The AF_BRIDGE dump with the VLAN filter is accepted by this kernel (read-only; it
    /// returns VLANs only where a bridge filters them).
    #[test]
    fn bridge_vlan_dump_is_accepted() {
        let mut sock = RtSocket::open().expect("netlink socket");
        let v = dump_bridge_vlans(&mut sock).expect("AF_BRIDGE link dump");
        // whatever it reports belongs to links that exist
        let links = dump_links(&mut sock).expect("link dump");
        assert!(
            v.keys().all(|i| links.iter().any(|(l, _)| l.index == *i)),
            "{v:?}"
        );
    }
}
