//! The hop-by-hop walk of one packet and its reply across a host: guest egress, the vNIC's host
//! side, the bridge (ports, forwarding, bridge-family and br_netfilter hooks), the IP stack
//! (prerouting with DNAT, the routing decision with forwarding and rp_filter, forward,
//! postrouting with SNAT/masquerade, input/output for the host itself), egress links and MTUs,
//! and the reply through conntrack and reverse NAT.

// A walk step returns the trace's final verdict as its error: built once per trace, so its
// size does not matter.
#![allow(clippy::result_large_err)]

use std::net::IpAddr;

use kvmnet_model::nft::NftFamily;
use kvmnet_model::nft_text::rule_text;
use kvmnet_model::ovs::OvsBridge;
use kvmnet_model::vm::VnicType;
use kvmnet_model::{HostState, Link, LinkKind, PortState};
use serde::Serialize;

use crate::compile::{compile, Compiled};
use crate::eval::{eval_hook, ip_families, Dev, Fib, HookCtx, HookVerdict, Nat, RuleRef};
use crate::fnv::FnvMap;
use crate::packet::{Packet, ICMP, ICMPV6, TCP, UDP};
use crate::route::{route, rp_filter_ok, select_source, RouteResult};

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// A VM (or namespace guest), optionally one of its vNICs (index).
    Vm { name: String, vnic: Option<usize> },
    /// The host itself.
    Host,
    /// Any address: a host address, a guest's, or one beyond the uplinks.
    Addr(IpAddr),
}

/// What to trace.
#[derive(Clone, Debug, Serialize)]
pub struct FlowSpec {
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: u8,
    pub dport: u16,
    pub sport: Option<u16>,
    /// Total IP packet size in bytes.
    pub size: Option<u32>,
    /// Don't fragment (IPv4).
    pub df: bool,
}

/// A rule cited as evidence.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct RuleEvidence {
    #[serde(flatten)]
    pub rule: RuleRef,
    /// The rule as nft prints it, or `policy drop` / `policy accept`.
    pub text: std::sync::Arc<str>,
}

/// One step of the path.
#[derive(Clone, Debug, Serialize)]
pub struct Hop {
    pub stage: String,
    pub decision: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleEvidence>,
}

/// How the trace ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Delivered {
        to: String,
    },
    Dropped {
        /// The stage that dropped it.
        at: String,
        /// A stable cause code: `nft-rule`, `nft-policy`, `br-netfilter`, `no-route`,
        /// `link-down`, `bridge-down`, `port-blocked`, `not-in-bridge`, `mtu`,
        /// `ip-forward-disabled`, `rp-filter`, `arp-failed`, `no-snat`, `guest-no-route`,
        /// `guest-no-address`, `guest-link-down`, `vnic-link-down`, `no-listener`,
        /// `route-reject`.
        cause: String,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<RuleEvidence>,
        /// True when the drop happened on the reply's way back.
        reply: bool,
    },
    Unknown {
        at: String,
        what: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<RuleEvidence>,
    },
}

/// A finished trace.
#[derive(Clone, Debug, Serialize)]
pub struct Trace {
    pub from: String,
    pub to: String,
    pub proto: String,
    pub size: u32,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
}

/// Why a flow could not be traced at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceError {
    NoSuchVm(String),
    NoSuchVnic(String, usize),
    NoAddress(String),
    NoHostAddress,
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceError::NoSuchVm(n) => write!(f, "no VM named {n:?} on this host"),
            TraceError::NoSuchVnic(n, i) => write!(f, "VM {n:?} has no vNIC number {i}"),
            TraceError::NoAddress(n) => {
                write!(
                    f,
                    "VM {n:?} has no known address: give the source address instead"
                )
            }
            TraceError::NoHostAddress => write!(f, "the host has no address to send from"),
        }
    }
}

impl std::error::Error for TraceError {}

/// A guest's address, for ownership lookups.
#[derive(Clone, Debug)]
struct Owner {
    vm: usize,
    vnic: usize,
}

/// The simulator for one host state: compiled once, then any number of traces.
#[derive(Debug)]
pub struct Tracer<'a> {
    pub state: &'a HostState,
    pub compiled: Compiled,
    devs: FnvMap<String, Dev>,
    owners: FnvMap<IpAddr, Owner>,
    links: FnvMap<&'a str, &'a Link>,
    vms: FnvMap<&'a str, usize>,
    /// Rule texts, rendered once on first use: (family, table, chain, handle) -> text.
    texts: std::sync::Mutex<FnvMap<RuleRef, std::sync::Arc<str>>>,
    /// The host-side devices of every vNIC.
    vnic_devs: FnvMap<&'a str, ()>,
    /// Static (permanent/noarp) neighbour entries with a MAC, by address.
    static_neigh: FnvMap<IpAddr, Vec<&'a kvmnet_model::Neighbour>>,
    /// Bridge FDB entries that learning may not move (sticky or not dynamic), by MAC.
    pinned_fdb: FnvMap<kvmnet_model::MacAddr, Vec<&'a kvmnet_model::FdbEntry>>,
}

fn arptype(l: &Link) -> u16 {
    if l.kind == LinkKind::Loopback {
        772
    } else {
        1
    }
}

fn proto_name(p: u8) -> String {
    match p {
        ICMP => "icmp".into(),
        TCP => "tcp".into(),
        UDP => "udp".into(),
        ICMPV6 => "icmpv6".into(),
        n => n.to_string(),
    }
}

impl<'a> Tracer<'a> {
    /// Compiles the state's ruleset and indexes its addresses.
    pub fn new(state: &'a HostState) -> Tracer<'a> {
        let devs = state
            .links
            .iter()
            .map(|l| {
                (
                    l.name.clone(),
                    Dev {
                        name: l.name.clone(),
                        index: l.index,
                        kind: match l.kind {
                            LinkKind::Physical | LinkKind::Loopback => String::new(),
                            LinkKind::Tap => "tun".into(),
                            ref k => k.as_str().to_string(),
                        },
                        arptype: arptype(l),
                    },
                )
            })
            .collect();
        let mut owners = FnvMap::default();
        for (vi, vm) in state.vms.iter().enumerate() {
            for (ni, n) in vm.vnics.iter().enumerate() {
                let mut addrs: Vec<IpAddr> = n.addresses.iter().map(|a| a.address).collect();
                if let (Some(g), Some(gi)) = (&vm.guest, &n.guest_ifname) {
                    if let Some(iface) = g.interfaces.iter().find(|i| &i.name == gi) {
                        addrs.extend(iface.addresses.iter().map(|a| a.addr()));
                    }
                }
                for a in addrs {
                    owners.entry(a).or_insert(Owner { vm: vi, vnic: ni });
                }
            }
        }
        Tracer {
            state,
            compiled: compile(&state.nftables),
            devs,
            owners,
            links: state.links.iter().map(|l| (l.name.as_str(), l)).collect(),
            vms: state
                .vms
                .iter()
                .enumerate()
                .map(|(i, v)| (v.name.as_str(), i))
                .collect(),
            texts: std::sync::Mutex::new(FnvMap::default()),
            vnic_devs: state
                .vms
                .iter()
                .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
                .map(|d| (d, ()))
                .collect(),
            static_neigh: {
                let mut m: FnvMap<IpAddr, Vec<&kvmnet_model::Neighbour>> = FnvMap::default();
                for n in state.neighbours.iter().filter(|n| {
                    n.lladdr.is_some()
                        && matches!(
                            n.state,
                            kvmnet_model::ip::NeighState::Permanent
                                | kvmnet_model::ip::NeighState::Noarp
                        )
                }) {
                    m.entry(n.address).or_default().push(n);
                }
                m
            },
            pinned_fdb: {
                let mut m: FnvMap<kvmnet_model::MacAddr, Vec<&kvmnet_model::FdbEntry>> =
                    FnvMap::default();
                for f in state
                    .fdb
                    .iter()
                    .filter(|f| !f.is_self && (f.sticky || f.state != "dynamic"))
                {
                    m.entry(f.mac).or_default().push(f);
                }
                m
            },
        }
    }

    /// A link by name (indexed).
    pub fn link(&self, name: &str) -> Option<&'a Link> {
        self.links.get(name).copied()
    }

    /// A port of bridge `br` (other than `from`) that leads off the host: not a known guest's
    /// vNIC, up and forwarding. Physical NICs and bonds first.
    pub fn lan_port(&self, br: &str, from: &str) -> Option<String> {
        let mut ports: Vec<&Link> = self
            .state
            .ports_of(br)
            .filter(|p| p.name != from && p.admin_up && p.is_usable())
            .filter(|p| {
                p.bridge_port
                    .as_ref()
                    .is_none_or(|bp| bp.state == PortState::Forwarding)
            })
            .filter(|p| !self.vnic_devs.contains_key(p.name.as_str()))
            .collect();
        ports.sort_by_key(|p| match p.kind {
            LinkKind::Physical | LinkKind::Bond => 0,
            LinkKind::Vlan | LinkKind::Vxlan => 1,
            _ => 2,
        });
        ports.first().map(|p| p.name.clone())
    }

    /// True when the host's own neighbour entry for `ip` on `dev` is FAILED (it tried to
    /// resolve it and nothing answered).
    pub fn host_failed_to_resolve(&self, dev: &str, ip: IpAddr) -> bool {
        self.state.neighbours.iter().any(|n| {
            n.ifname == dev && n.address == ip && n.state == kvmnet_model::ip::NeighState::Failed
        })
    }

    fn dev(&self, name: &str) -> Option<&Dev> {
        self.devs.get(name)
    }

    fn evidence(&self, r: &RuleRef) -> RuleEvidence {
        if let Ok(cache) = self.texts.lock() {
            if let Some(t) = cache.get(r) {
                return RuleEvidence {
                    rule: r.clone(),
                    text: t.clone(),
                };
            }
        }
        let table = self
            .state
            .nftables
            .tables
            .iter()
            .find(|t| t.family.as_str() == &*r.family && t.name == *r.table);
        let text = match r.handle {
            None => {
                let policy = table
                    .and_then(|t| t.chain(&r.chain))
                    .and_then(|c| c.hook.as_ref())
                    .map(|h| h.policy.clone())
                    .unwrap_or_else(|| "accept".into());
                format!("policy {policy}")
            }
            Some(h) => table
                .and_then(|t| {
                    t.chain(&r.chain)
                        .and_then(|c| c.rules.iter().find(|x| x.handle == h))
                        .map(|x| rule_text(t, x))
                })
                .unwrap_or_default(),
        };
        let text: std::sync::Arc<str> = text.into();
        if let Ok(mut cache) = self.texts.lock() {
            cache.insert(r.clone(), text.clone());
        }
        RuleEvidence {
            rule: r.clone(),
            text,
        }
    }

    /// A guest's address on a vNIC (guest view first, then what the host knows).
    fn vnic_address(&self, vm: usize, vnic: usize, v6: bool) -> Option<IpAddr> {
        let v = &self.state.vms[vm];
        let n = &v.vnics[vnic];
        if let (Some(g), Some(gi)) = (&v.guest, &n.guest_ifname) {
            if let Some(iface) = g.interfaces.iter().find(|i| &i.name == gi) {
                if let Some(a) = iface.addresses.iter().find(|a| a.addr().is_ipv6() == v6) {
                    return Some(a.addr());
                }
            }
        }
        n.addresses
            .iter()
            .find(|a| a.address.is_ipv6() == v6 && !is_link_local(a.address))
            .map(|a| a.address)
    }

    fn find_vm(&self, name: &str) -> Result<usize, TraceError> {
        self.vms
            .get(name)
            .copied()
            .ok_or_else(|| TraceError::NoSuchVm(name.to_string()))
    }

    /// A guest's DHCP request (DISCOVER: 0.0.0.0:68 -> 255.255.255.255:67, broadcast on its
    /// segment) up to the host's DHCP server: the vNIC, the bridge, the bridge and IP input
    /// hooks, and a listener on udp 67. For guests without an address.
    pub fn dhcp_discover(&self, vm: &str, vnic: usize) -> Result<Trace, TraceError> {
        let vi = self.find_vm(vm)?;
        let v = &self.state.vms[vi];
        let n = v
            .vnics
            .get(vnic)
            .ok_or_else(|| TraceError::NoSuchVnic(vm.to_string(), vnic))?;
        let mut pkt = Packet::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(std::net::Ipv4Addr::BROADCAST),
            UDP,
            67,
        );
        pkt.sport = 68;
        pkt.src_mac = n.mac;
        pkt.len = 328;
        pkt.df = false;
        let mut w = Walk {
            t: self,
            hops: vec![],
            reply: false,
            prev: None,
        };
        let verdict = match w.dhcp_in(n.host_dev.as_deref().unwrap_or(""), &pkt) {
            Ok(to) => Verdict::Delivered { to },
            Err(v) => v,
        };
        Ok(Trace {
            from: format!("vm:{vm}"),
            to: "DHCP server (udp 67, broadcast)".into(),
            proto: "udp/67".into(),
            size: pkt.len,
            hops: w.hops,
            verdict,
        })
    }

    /// Traces a flow and its reply.
    pub fn trace(&self, spec: &FlowSpec) -> Result<Trace, TraceError> {
        // destination address
        let want_v6 = match &spec.to {
            Endpoint::Addr(a) => a.is_ipv6(),
            _ => matches!(&spec.from, Endpoint::Addr(a) if a.is_ipv6()),
        };
        let dst = match &spec.to {
            Endpoint::Addr(a) => *a,
            Endpoint::Vm { name, vnic } => {
                let vi = self.find_vm(name)?;
                let ni = vnic.unwrap_or(0);
                if self.state.vms[vi].vnics.len() <= ni {
                    return Err(TraceError::NoSuchVnic(name.clone(), ni));
                }
                self.vnic_address(vi, ni, want_v6)
                    .ok_or_else(|| TraceError::NoAddress(name.clone()))?
            }
            Endpoint::Host => self
                .state
                .addresses
                .iter()
                .find(|a| a.scope == "global" && a.address.is_ipv6() == want_v6)
                .map(|a| a.address)
                .ok_or(TraceError::NoHostAddress)?,
        };
        let v6 = dst.is_ipv6();
        let mut w = Walk {
            t: self,
            hops: vec![],
            reply: false,
            prev: None,
        };
        let (src, start) = match &spec.from {
            Endpoint::Vm { name, vnic } => {
                let vi = self.find_vm(name)?;
                let ni = match vnic {
                    Some(i) => *i,
                    None => self.pick_vnic(vi, dst),
                };
                if self.state.vms[vi].vnics.len() <= ni {
                    return Err(TraceError::NoSuchVnic(name.clone(), ni));
                }
                let src = self
                    .vnic_address(vi, ni, v6)
                    .ok_or_else(|| TraceError::NoAddress(name.clone()))?;
                (src, Start::Guest(vi, ni))
            }
            Endpoint::Host => {
                let src = match route(self.state, dst, dst, None, 0) {
                    RouteResult::Unicast {
                        dev,
                        gateway,
                        prefsrc,
                        ..
                    } => select_source(self.state, &dev, gateway.unwrap_or(dst), prefsrc),
                    _ => None,
                }
                .or_else(|| {
                    self.state
                        .addresses
                        .iter()
                        .find(|a| a.address.is_ipv6() == v6 && a.scope == "global")
                        .map(|a| a.address)
                })
                .ok_or(TraceError::NoHostAddress)?;
                (src, Start::Host)
            }
            Endpoint::Addr(a) => match self.owners.get(a) {
                Some(o) => (*a, Start::Guest(o.vm, o.vnic)),
                None if self.state.owner_of(*a).is_some() => (*a, Start::Host),
                None => (*a, Start::External),
            },
        };
        // "icmp" means ICMPv6 between IPv6 addresses (protocol 58), and the other way round
        let proto = match (spec.proto, dst.is_ipv6()) {
            (ICMP, true) => ICMPV6,
            (ICMPV6, false) => ICMP,
            (p, _) => p,
        };
        let mut pkt = Packet::new(src, dst, proto, spec.dport);
        if let Some(sp) = spec.sport {
            pkt.sport = sp;
        }
        if let Some(sz) = spec.size {
            pkt.len = sz;
        }
        pkt.df = spec.df;
        let from_desc = describe(self, &spec.from, src);
        let to_desc = describe(self, &spec.to, dst);
        let verdict = w.run(start, pkt.clone());
        Ok(Trace {
            from: from_desc,
            to: to_desc,
            proto: proto_name(spec.proto),
            size: pkt.len,
            hops: w.hops,
            verdict,
        })
    }

    /// The vNIC a VM would use towards `dst`: the one on the destination's subnet, else the
    /// one whose guest default route leaves through it, else the first.
    fn pick_vnic(&self, vm: usize, dst: IpAddr) -> usize {
        let v = &self.state.vms[vm];
        if let Some(g) = &v.guest {
            let routes = g.routes.as_deref().unwrap_or(&[]);
            if let Some(r) = kvmnet_model::ip::lookup_route(routes, 254, dst) {
                if let Some(dev) = &r.dev {
                    if let Some(i) = v
                        .vnics
                        .iter()
                        .position(|n| n.guest_ifname.as_ref() == Some(dev))
                    {
                        return i;
                    }
                }
            }
        }
        0
    }
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn describe(t: &Tracer, e: &Endpoint, addr: IpAddr) -> String {
    match e {
        Endpoint::Vm { name, .. } => format!("vm:{name} ({addr})"),
        Endpoint::Host => format!("host ({addr})"),
        Endpoint::Addr(a) => match t.owners.get(a) {
            Some(o) => format!("{a} (vm:{})", t.state.vms[o.vm].name),
            None if t.state.owner_of(*a).is_some() => format!("{a} (host)"),
            None => a.to_string(),
        },
    }
}

enum Start {
    Guest(usize, usize),
    Host,
    External,
}

/// Where a packet ended up after a successful forward pass.
#[derive(Clone, Debug)]
enum Landed {
    Guest(usize, usize),
    Host,
    /// Left the host through `dev` towards `next_hop`.
    External {
        dev: String,
    },
    /// Left bridge `bridge` at layer 2 through its LAN port `port` (the segment goes on
    /// beyond the host).
    LanPort {
        bridge: String,
        port: String,
    },
    /// Left a macvtap/macvlan guest's lower device `parent` onto the wire, at layer 2.
    Wire {
        parent: String,
        vm: usize,
        vnic: usize,
    },
    /// Left the host at layer 2 through Open vSwitch port `port` of `bridge`, in VLAN `vid`.
    OvsOut {
        bridge: String,
        port: String,
        vid: u16,
    },
}

/// What the forward pass produced: where the packet landed, the packet as it arrived, and
/// the NAT applied on the way (for the reply's reverse translation).
#[derive(Clone, Debug)]
struct Outcome {
    landed: Landed,
    pkt: Packet,
    /// The packet as first sent.
    orig: Packet,
    snat: Option<IpAddr>,
    dnat: Option<(IpAddr, u16)>,
    routed_via_default: bool,
}

struct Fibber<'a> {
    s: &'a HostState,
    devs: &'a FnvMap<String, Dev>,
}

impl Fib for Fibber<'_> {
    fn fib(
        &self,
        pkt: &Packet,
        iif: Option<&Dev>,
        _oif: Option<&Dev>,
        result: u32,
        flags: u32,
    ) -> Option<Vec<u8>> {
        // flags: 1 saddr, 2 daddr, 4 mark, 8 iif, 16 oif, 32 present
        let addr = if flags & 1 != 0 { pkt.src } else { pkt.dst };
        let r = route(
            self.s,
            pkt.src,
            addr,
            iif.map(|d| d.name.as_str()),
            pkt.mark,
        );
        match result {
            1 | 2 => {
                let dev = match &r {
                    RouteResult::Unicast { dev, .. } => Some(dev.clone()),
                    RouteResult::Local { dev } => dev.clone(),
                    _ => None,
                };
                // with `iif` in the flags, the result must be the input interface
                let dev = match (flags & 8 != 0, iif, dev) {
                    (true, Some(i), Some(d)) if d != i.name => None,
                    (_, _, d) => d,
                };
                if result == 1 {
                    let idx = dev
                        .and_then(|d| self.devs.get(&d))
                        .map(|d| d.index)
                        .unwrap_or(0);
                    Some(idx.to_ne_bytes().to_vec())
                } else {
                    let mut b = [0u8; 16];
                    if let Some(d) = dev {
                        let n = d.as_bytes();
                        let l = n.len().min(15);
                        b[..l].copy_from_slice(&n[..l]);
                    }
                    Some(b.to_vec())
                }
            }
            3 => Some(self.addrtype(addr).to_ne_bytes().to_vec()),
            _ => None,
        }
    }

    fn addrtype(&self, addr: IpAddr) -> u32 {
        if addr.is_multicast() {
            return 5;
        }
        if self.s.addresses.iter().any(|a| a.address == addr) {
            return 2;
        }
        if let IpAddr::V4(v) = addr {
            if v.is_broadcast()
                || self.s.addresses.iter().any(|a| {
                    matches!(a.network(), ipnet::IpNet::V4(n) if n.prefix_len() < 31 && n.broadcast() == v)
                })
            {
                return 3;
            }
        }
        match route(self.s, addr, addr, None, 0) {
            RouteResult::Reject { kind, .. } if kind.contains("blackhole") => 6,
            RouteResult::Reject { kind, .. } if kind.contains("prohibit") => 8,
            RouteResult::Reject { .. } | RouteResult::NoRoute => 7,
            _ => 1,
        }
    }
}

struct Walk<'t, 'a> {
    t: &'t Tracer<'a>,
    hops: Vec<Hop>,
    reply: bool,
    /// The forward pass, while the reply is walked (for reverse NAT).
    prev: Option<Outcome>,
}

type Step<T> = Result<T, Verdict>;

impl<'t, 'a> Walk<'t, 'a> {
    fn s(&self) -> &'a HostState {
        self.t.state
    }

    fn stage(&self, s: &str) -> String {
        if self.reply {
            format!("reply: {s}")
        } else {
            s.to_string()
        }
    }

    fn hop(&mut self, stage: &str, decision: impl Into<String>, facts: Vec<String>) {
        let stage = self.stage(stage);
        self.hops.push(Hop {
            stage,
            decision: decision.into(),
            facts,
            rule: None,
        });
    }

    fn drop(
        &mut self,
        stage: &str,
        cause: &str,
        reason: impl Into<String>,
        facts: Vec<String>,
    ) -> Verdict {
        let reason = reason.into();
        self.hop(stage, format!("drop: {reason}"), facts);
        Verdict::Dropped {
            at: self.stage(stage),
            cause: cause.into(),
            reason,
            rule: None,
            reply: self.reply,
        }
    }

    fn run(&mut self, start: Start, pkt: Packet) -> Verdict {
        let out = match self.forward_pass(&start, pkt.clone()) {
            Ok(o) => o,
            Err(v) => return v,
        };
        // the reply, from where the packet landed back to where it started
        self.reply = true;
        let rp = out.pkt.reply();
        let orig_src = pkt.src;
        self.prev = Some(out.clone());
        let landed_desc;
        let res = match &out.landed {
            Landed::External { dev } => {
                landed_desc = format!("{} via {dev}", pkt.dst);
                let from_private = is_private(orig_src) && out.snat.is_none();
                let on_link = self
                    .s()
                    .addresses_of(dev)
                    .any(|a| a.network().contains(&orig_src));
                let declared_routed = self.declared_routed(orig_src);
                if from_private && out.routed_via_default && !on_link && !declared_routed {
                    return self.drop(
                        "return path",
                        "no-snat",
                        format!(
                            "the packet left {dev} with private source {orig_src} and no SNAT: the upstream cannot route the reply back"
                        ),
                        vec!["no masquerade/snat rule matched in postrouting".into()],
                    );
                }
                self.hop(
                    "upstream",
                    format!("{} answers {}", pkt.dst, rp.dst),
                    vec![format!("the reply comes back in through {dev}")],
                );
                self.host_in(dev.clone(), rp)
            }
            Landed::OvsOut { bridge, port, vid } => {
                landed_desc = format!("{} via {bridge} port {port}", pkt.dst);
                self.hop(
                    "LAN",
                    format!("{} answers {}", pkt.dst, rp.dst),
                    vec![format!(
                        "the reply comes back in through {port} (VLAN {vid})"
                    )],
                );
                let (bridge, port, vid) = (bridge.clone(), port.clone(), *vid);
                match self.s().ovs.as_ref().and_then(|o| o.bridge(&bridge)) {
                    Some(b) => {
                        let nh = rp.dst;
                        self.ovs_switch(b, &port, vid, nh, rp)
                    }
                    None => Err(self.drop(
                        "LAN",
                        "ovs-port-missing",
                        format!("bridge {bridge} is gone"),
                        vec![],
                    )),
                }
            }
            Landed::LanPort { bridge, port } => {
                landed_desc = format!("{} via {bridge} port {port} (on the LAN)", pkt.dst);
                self.hop(
                    "LAN",
                    format!("{} answers {}", pkt.dst, rp.dst),
                    vec![format!("the reply comes back in through {port}")],
                );
                let (bridge, port) = (bridge.clone(), port.clone());
                match self.t.link(&port) {
                    Some(pl) => {
                        let nh = rp.dst;
                        self.bridge_in(&bridge, &port, nh, rp, pl)
                    }
                    None => Err(self.drop("LAN", "link-down", format!("{port} is gone"), vec![])),
                }
            }
            Landed::Wire { parent, vm, vnic } => {
                landed_desc = format!("{} via {parent} (on the wire)", pkt.dst);
                self.hop(
                    "LAN",
                    format!("{} answers {}", pkt.dst, rp.dst),
                    vec![format!(
                        "the reply comes back on {parent} to the guest's MAC"
                    )],
                );
                let o = Owner {
                    vm: *vm,
                    vnic: *vnic,
                };
                let stage = format!("{parent} (lower device)");
                self.deliver_guest(o, rp, &stage)
            }
            Landed::Host => {
                landed_desc = format!("host ({})", pkt.dst);
                self.host_out(rp)
            }
            Landed::Guest(vm, vnic) => {
                landed_desc = format!("vm:{} ({})", self.s().vms[*vm].name, pkt.dst);
                self.guest_sends(*vm, *vnic, rp)
            }
        };
        match res {
            Ok(_) => Verdict::Delivered { to: landed_desc },
            Err(v) => v,
        }
    }

    fn declared_routed(&self, src: IpAddr) -> bool {
        self.s().networks.iter().any(|n| {
            matches!(
                n.forward,
                kvmnet_model::ForwardMode::Route | kvmnet_model::ForwardMode::Open
            ) && n.subnets().iter().any(|s| s.contains(&src))
        })
    }

    fn forward_pass(&mut self, start: &Start, pkt: Packet) -> Step<Outcome> {
        let landed = match start {
            Start::Guest(vm, vnic) => self.guest_sends(*vm, *vnic, pkt.clone())?,
            Start::Host => self.host_out(pkt.clone())?,
            Start::External => {
                // it arrives on the interface the host would use to reach its source
                let dev = match route(self.s(), pkt.dst, pkt.src, None, 0) {
                    RouteResult::Unicast { dev, .. } => dev,
                    _ => {
                        return Err(self.drop(
                            "ingress",
                            "no-route",
                            format!(
                                "the host has no route towards {}: it cannot arrive",
                                pkt.src
                            ),
                            vec![],
                        ))
                    }
                };
                self.hop(
                    "ingress",
                    format!("arrives on {dev}"),
                    vec![format!("{} is reached through {dev}", pkt.src)],
                );
                self.host_in(dev, pkt.clone())?
            }
        };
        Ok(Outcome {
            landed: landed.0,
            pkt: landed.1,
            orig: pkt,
            snat: landed.2.snat,
            dnat: landed.2.dnat,
            routed_via_default: landed.2.via_default,
        })
    }
}

/// NAT and routing facts gathered on the way.
#[derive(Clone, Debug, Default)]
struct PathNotes {
    snat: Option<IpAddr>,
    dnat: Option<(IpAddr, u16)>,
    via_default: bool,
}

type Arrived = (Landed, Packet, PathNotes);

fn is_private(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) || v.is_link_local()
        }
        IpAddr::V6(v) => {
            (v.segments()[0] & 0xfe00) == 0xfc00 || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

impl<'a> Walk<'_, 'a> {
    fn fibber(&self) -> Fibber<'_> {
        Fibber {
            s: self.t.state,
            devs: &self.t.devs,
        }
    }

    /// Runs one IP-family hook; a drop or unknown ends the walk.
    #[allow(clippy::too_many_arguments)]
    fn ip_hook(
        &mut self,
        hook: &str,
        pkt: &Packet,
        iif: Option<&str>,
        oif: Option<&str>,
        bridge: Option<(&str, Option<&str>, Option<&str>)>,
        ct_orig: (IpAddr, IpAddr, u16, u16),
        families: &[NftFamily],
        stage: &str,
    ) -> Step<Option<Nat>> {
        let fib = self.fibber();
        let t = self.t;
        let cx = HookCtx {
            iif: iif.and_then(|n| t.dev(n)),
            oif: oif.and_then(|n| t.dev(n)),
            bri_in: bridge.map(|b| b.0),
            bri_out: bridge.map(|b| b.0),
            phys_in: bridge.and_then(|b| b.1),
            phys_out: bridge.and_then(|b| b.2),
            ct_orig,
            fib: &fib,
        };
        let res = eval_hook(&self.t.compiled, families, hook, pkt, &cx);
        if res.chains == 0 {
            return Ok(None);
        }
        match res.verdict {
            HookVerdict::Accept => {
                let ev: Vec<RuleEvidence> =
                    res.accepted_by.iter().map(|r| self.t.evidence(r)).collect();
                let facts: Vec<String> = ev
                    .iter()
                    .map(|e| {
                        let text: &str = if e.text.is_empty() { "accept" } else { &e.text };
                        let mut f = String::with_capacity(
                            e.rule.family.len()
                                + e.rule.table.len()
                                + e.rule.chain.len()
                                + text.len()
                                + 4,
                        );
                        for (part, sep) in [
                            (&*e.rule.family, " "),
                            (&*e.rule.table, " "),
                            (&*e.rule.chain, ": "),
                            (text, ""),
                        ] {
                            f.push_str(part);
                            f.push_str(sep);
                        }
                        f
                    })
                    .collect();
                let decision = match &res.nat {
                    Some(n) => format!(
                        "{}{}",
                        n.kind,
                        n.addr.map(|a| format!(" to {a}")).unwrap_or_default()
                    ),
                    None => "accept".into(),
                };
                let stage_s = self.stage(stage);
                self.hops.push(Hop {
                    stage: stage_s,
                    decision,
                    facts,
                    rule: res.nat.as_ref().map(|n| self.t.evidence(&n.rule)),
                });
                Ok(res.nat)
            }
            HookVerdict::Drop { rule, reject } => {
                let ev = self.t.evidence(&rule);
                let cause = if bridge.is_some() {
                    "br-netfilter"
                } else if rule.handle.is_none() {
                    "nft-policy"
                } else {
                    "nft-rule"
                };
                let reason = format!(
                    "{} by {} {} {} {}{}",
                    if reject { "rejected" } else { "dropped" },
                    rule.family,
                    rule.table,
                    rule.chain,
                    match rule.handle {
                        Some(h) => format!("handle {h}: "),
                        None => String::new(),
                    },
                    ev.text
                );
                let stage_s = self.stage(stage);
                self.hops.push(Hop {
                    stage: stage_s.clone(),
                    decision: format!("drop: {reason}"),
                    facts: vec![],
                    rule: Some(ev.clone()),
                });
                Err(Verdict::Dropped {
                    at: stage_s,
                    cause: cause.into(),
                    reason,
                    rule: Some(ev),
                    reply: self.reply,
                })
            }
            HookVerdict::Unknown { rule, what } => {
                let ev = self.t.evidence(&rule);
                let stage_s = self.stage(stage);
                self.hops.push(Hop {
                    stage: stage_s.clone(),
                    decision: format!("unknown: cannot evaluate {what}"),
                    facts: vec![],
                    rule: Some(ev.clone()),
                });
                Err(Verdict::Unknown {
                    at: stage_s,
                    what,
                    rule: Some(ev),
                })
            }
        }
    }

    /// The host's neighbour entry for a guest's address: a static one (permanent/noarp) with
    /// another MAC than the guest's sends every frame to that MAC, and the guest never sees it
    /// (the kernel does not replace a permanent entry by what ARP learns).
    fn neigh_check(&mut self, dev: &str, nh: IpAddr, o: &Owner) -> Step<()> {
        let s = self.t.state;
        let vm = &s.vms[o.vm];
        let Some(mac) = vm.vnics[o.vnic].mac else {
            return Ok(());
        };
        let wrong = self
            .t
            .static_neigh
            .get(&nh)
            .and_then(|v| {
                v.iter()
                    .find(|n| n.ifname == dev && n.lladdr.is_some_and(|l| l != mac))
            })
            .copied();
        if let Some(n) = wrong {
            let l = n.lladdr.map(|m| m.to_string()).unwrap_or_default();
            return Err(self.drop(
                &format!("neighbour {nh}"),
                "neigh-wrong-mac",
                format!(
                    "the host's static neighbour entry sends {nh} to {l}, but vm:{}'s MAC is {mac}",
                    vm.name
                ),
                vec![format!(
                    "{nh} dev {dev} lladdr {l} {}",
                    format!("{:?}", n.state).to_uppercase()
                )],
            ));
        }
        Ok(())
    }

    /// A blackhole/unreachable/prohibit route or rule decided: says which, in which table,
    /// reached through which policy rule.
    fn route_reject(
        &mut self,
        pkt: &Packet,
        kind: &str,
        table: u32,
        dst: ipnet::IpNet,
        rule: Option<String>,
    ) -> Verdict {
        let mut facts = vec![];
        let reason = if table == 0 {
            // a rule with a reject action
            let r = rule.clone().unwrap_or_default();
            facts.push(format!("ip rule {r}"));
            format!("the policy rule {r} rejects {} ({kind})", pkt.dst)
        } else {
            let tname = kvmnet_model::ip::table_name(table);
            facts.push(format!("route {kind} {dst} table {tname}"));
            match &rule {
                Some(r) => {
                    facts.push(format!("ip rule {r}"));
                    format!("the route to {} is {kind} ({kind} {dst} in table {tname}, reached through rule {r})", pkt.dst)
                }
                None if table != kvmnet_model::ip::RT_TABLE_MAIN => {
                    format!(
                        "the route to {} is {kind} ({kind} {dst} in table {tname})",
                        pkt.dst
                    )
                }
                None => format!("the route to {} is {kind} ({kind} {dst})", pkt.dst),
            }
        };
        self.drop("routing", "route-reject", reason, facts)
    }

    fn link_ok(&mut self, name: &str, stage: &str, cause: &str) -> Step<&'a Link> {
        match self.t.link(name) {
            None => Err(self.drop(stage, cause, format!("{name} does not exist"), vec![])),
            Some(l) if !l.admin_up => Err(self.drop(
                stage,
                cause,
                format!("{name} is administratively down"),
                vec![format!("{name}: state {}", l.state_word())],
            )),
            Some(l) if !l.is_usable() => Err(self.drop(
                stage,
                cause,
                format!("{name} has no carrier ({})", l.oper_state.as_str()),
                vec![format!("{name}: state {}", l.state_word())],
            )),
            Some(l) => Ok(l),
        }
    }

    /// A guest sends `pkt` out of vNIC `ni`; follows it onto the host.
    fn guest_sends(&mut self, vi: usize, ni: usize, mut pkt: Packet) -> Step<Arrived> {
        let s = self.t.state;
        let vm = &s.vms[vi];
        let vnic = &vm.vnics[ni];
        let mut facts = vec![];
        // guest routing
        let mut next_hop = pkt.dst;
        let guest_if = vnic.guest_ifname.clone();
        let mut guest_mtu = vnic.mtu;
        match &vm.guest {
            Some(g) => {
                let iface = guest_if
                    .as_ref()
                    .and_then(|n| g.interfaces.iter().find(|i| &i.name == n));
                if let Some(i) = iface {
                    if !i.up {
                        return Err(self.drop(
                            &format!("vm:{}", vm.name),
                            "guest-link-down",
                            format!("the guest's {} is down", i.name),
                            vec![],
                        ));
                    }
                    if i.addresses.is_empty() {
                        return Err(self.drop(
                            &format!("vm:{}", vm.name),
                            "guest-no-address",
                            format!("the guest's {} has no address", i.name),
                            vec![],
                        ));
                    }
                    guest_mtu = i.mtu.or(guest_mtu);
                }
                if let Some(routes) = &g.routes {
                    let table: Vec<_> = routes.to_vec();
                    match kvmnet_model::ip::lookup_route(&table, 254, pkt.dst) {
                        None => {
                            return Err(self.drop(
                                &format!("vm:{}", vm.name),
                                "guest-no-route",
                                format!("the guest has no route to {}", pkt.dst),
                                vec![],
                            ))
                        }
                        Some(r) => {
                            if let Some(gw) = r.first_gateway() {
                                next_hop = gw;
                                facts.push(format!(
                                    "guest route {} via {gw}",
                                    if r.is_default() {
                                        "default".into()
                                    } else {
                                        r.dst.to_string()
                                    }
                                ));
                            } else {
                                facts.push(format!("{} is on-link ({})", pkt.dst, r.dst));
                            }
                        }
                    }
                }
            }
            None => {
                // no view into the guest: assume it uses the host's address on its subnet as
                // gateway, as DHCP would have told it
                let bridge = vnic
                    .host_dev
                    .as_deref()
                    .and_then(|d| self.t.link(d))
                    .and_then(|l| l.master.clone())
                    .or(vnic.source_bridge.clone());
                let on_link = bridge
                    .as_deref()
                    .map(|b| s.addresses_of(b).any(|a| a.network().contains(&pkt.dst)))
                    .unwrap_or(false)
                    || self.t.owners.get(&pkt.dst).is_some_and(|o| {
                        s.vms[o.vm].vnics[o.vnic].source_bridge == bridge && bridge.is_some()
                    });
                if !on_link {
                    if let Some(gw) = bridge.as_deref().and_then(|b| {
                        s.addresses_of(b)
                            .find(|a| a.network().contains(&pkt.src))
                            .map(|a| a.address)
                    }) {
                        next_hop = gw;
                        facts.push(format!(
                            "assumed guest route via {gw} (no view into the guest)"
                        ));
                    }
                }
            }
        }
        if let Some(m) = guest_mtu {
            if pkt.len > m {
                if pkt.df {
                    return Err(self.drop(
                        &format!("vm:{}", vm.name),
                        "mtu",
                        format!("{} bytes with DF do not fit the guest's MTU {m}", pkt.len),
                        vec![],
                    ));
                }
                pkt.len = m;
            }
        }
        pkt.src_mac = vnic.mac;
        self.hop(
            &format!("vm:{}", vm.name),
            format!(
                "sends {} -> {} out of {}",
                pkt.src,
                pkt.dst,
                guest_if.clone().unwrap_or_else(|| "its NIC".into())
            ),
            facts,
        );
        // the host side of the vNIC
        if vnic.link_up == Some(false) {
            return Err(self.drop(
                &format!("vnic {}", vnic.host_dev.clone().unwrap_or_default()),
                "vnic-link-down",
                "the domain interface has link state down".to_string(),
                vec![],
            ));
        }
        if matches!(vnic.iface_type, VnicType::User) {
            return Err(Verdict::Unknown {
                at: self.stage("vnic"),
                what: "user-mode networking (slirp/passt) is outside the host's network stack"
                    .into(),
                rule: None,
            });
        }
        let Some(dev) = vnic.host_dev.clone() else {
            return Err(Verdict::Unknown {
                at: self.stage("vnic"),
                what: "the vNIC's host device is not known".into(),
                rule: None,
            });
        };
        let stage = format!(
            "{dev} ({})",
            self.t
                .link(&dev)
                .map(|l| l.kind.to_string())
                .unwrap_or_default()
        );
        let link = self.link_ok(&dev, &stage, "link-down")?;
        if link.kind == LinkKind::Veth && pkt.len > link.mtu {
            return Err(self.drop(
                &stage,
                "mtu",
                format!(
                    "{} bytes exceed {dev}'s MTU {} (the veth drops it)",
                    pkt.len, link.mtu
                ),
                vec![],
            ));
        }
        self.hop(
            &stage,
            "receives the frame",
            vec![format!("{dev}: {}, mtu {}", link.state_word(), link.mtu)],
        );
        if matches!(link.kind, LinkKind::Macvtap | LinkKind::Macvlan) {
            return self.macvtap_out(vi, ni, &dev, link, next_hop, pkt);
        }
        // a port of an Open vSwitch bridge (no kernel master with the userspace datapath)
        if let Some((b, p)) = s.ovs.as_ref().and_then(|o| o.port_of(&dev)) {
            return self.ovs_switch(b, &p.name, p.native_vlan(), next_hop, pkt);
        }
        match link.master.clone() {
            Some(br) if self.t.link(&br).is_some_and(|b| b.kind == LinkKind::Bridge) => {
                self.bridge_in(&br, &dev, next_hop, pkt, link)
            }
            Some(m) => Err(Verdict::Unknown {
                at: self.stage(&stage),
                what: format!("{dev} is enslaved to {m}, which is not a Linux bridge"),
                rule: None,
            }),
            None => {
                // a lone L3 interface: the host answers ARP for its addresses (weak host model,
                // arp_ignore 0) and routes whatever arrives
                let has_addr = s.addresses_of(&dev).any(|a| a.scope == "global");
                let arp_ignore = s.sysctls.effective_arp_ignore(&dev);
                let host_has = s.addresses.iter().any(|a| a.address == next_hop);
                let answers = (host_has
                    && (arp_ignore == 0 || s.addresses_of(&dev).any(|a| a.address == next_hop)))
                    || (s.sysctls.effective_proxy_arp(&dev) && !host_has);
                let expected_bridge = vnic.source_bridge.clone().or_else(|| {
                    s.bridges()
                        .find(|b| {
                            s.addresses_of(&b.name)
                                .any(|a| a.network().contains(&pkt.src))
                        })
                        .map(|b| b.name.clone())
                });
                if !answers {
                    if !has_addr {
                        if let Some(b) = expected_bridge {
                            return Err(self.drop(
                                &stage,
                                "not-in-bridge",
                                format!("{dev} is not attached to bridge {b}: nothing on its segment answers ARP for {next_hop}"),
                                vec![format!("{dev}: no master")],
                            ));
                        }
                    }
                    return Err(self.drop(
                        &stage,
                        "arp-failed",
                        format!("nothing answers ARP for {next_hop} on {dev}"),
                        vec![],
                    ));
                }
                self.hop(
                    &stage,
                    format!("the host answers ARP for {next_hop} on {dev}"),
                    if has_addr {
                        vec![]
                    } else {
                        vec![format!(
                            "{dev} has no master and no address (arp_ignore {arp_ignore})"
                        )]
                    },
                );
                self.host_in(dev, pkt)
            }
        }
    }

    /// A frame enters bridge `br` on `port`, for next hop `nh`.
    fn bridge_in(
        &mut self,
        br: &str,
        port: &str,
        nh: IpAddr,
        mut pkt: Packet,
        port_link: &Link,
    ) -> Step<Arrived> {
        let s = self.t.state;
        let stage = format!("bridge {br}");
        let brl = self.t.link(br);
        let Some(brl) = brl else {
            return Err(self.drop(
                &stage,
                "bridge-down",
                format!("bridge {br} does not exist"),
                vec![],
            ));
        };
        if !brl.admin_up {
            return Err(self.drop(
                &stage,
                "bridge-down",
                format!("bridge {br} is down"),
                vec![],
            ));
        }
        let pstate = port_link
            .bridge_port
            .as_ref()
            .map(|p| p.state)
            .unwrap_or_default();
        if pstate != PortState::Forwarding {
            return Err(self.drop(
                &stage,
                "port-blocked",
                format!("port {port} is in STP state {}", pstate.as_str()),
                vec![],
            ));
        }
        // who answers ARP for the next hop on this segment?
        let host_on_br = s.addresses_of(br).any(|a| a.address == nh);
        let host_any = s
            .addresses
            .iter()
            .any(|a| a.address == nh && self.t.link(&a.ifname).is_none_or(|l| l.admin_up));
        let arp_ignore = s.sysctls.effective_arp_ignore(br);
        let guest = self.t.owners.get(&nh).cloned().filter(|o| {
            let v = &s.vms[o.vm].vnics[o.vnic];
            v.host_dev
                .as_deref()
                .and_then(|d| self.t.link(d))
                .is_some_and(|l| l.master.as_deref() == Some(br))
        });
        // arp_ignore (net/ipv4/arp.c): 0 and 4-7 answer for any local address, 1 only for an
        // address on the incoming interface, 2 also needs the sender in that address's subnet,
        // 3 not for scope-host addresses, 8 never
        // (IPv6 neighbour discovery answers only for addresses on the receiving interface,
        // whatever arp_ignore says)
        let host_answers = match arp_ignore {
            _ if pkt.is_v6() => host_on_br,
            8 => false,
            1 => host_on_br,
            2 => s
                .addresses_of(br)
                .any(|a| a.address == nh && a.network().contains(&pkt.src)),
            3 => s.addresses.iter().any(|a| {
                a.address == nh
                    && a.scope != "host"
                    && self.t.link(&a.ifname).is_none_or(|l| l.admin_up)
            }),
            _ => host_on_br || host_any,
        };
        // a reply to the host's own packet: the guest learned the host's MAC from the host's
        // ARP request (the kernel records the sender of a request for one of its addresses)
        let learned = self.reply && nh == pkt.dst && host_on_br;
        let host_answers = host_answers || learned;
        if !pkt.is_v6()
            && (host_on_br || host_any)
            && !host_answers
            && !s.sysctls.effective_proxy_arp(br)
        {
            return Err(self.drop(
                &stage,
                "arp-ignored",
                format!("{nh} is the host's, but the host does not answer ARP for it on {br} (arp_ignore {arp_ignore})"),
                vec![format!("net.ipv4.conf.{br}.arp_ignore = {arp_ignore} (effective: the larger of all and {br})")],
            ));
        }
        if host_answers {
            self.bridge_vlan(br, port, br)?;
            pkt.dst_mac = brl.mac;
            self.hop(
                &stage,
                format!("{nh} is the host: deliver up to {br}"),
                vec![format!("{br}: {}", brl.state_word())],
            );
            self.bridge_hook("prerouting", &pkt, Some(port), None, br)?;
            self.bridge_hook("input", &pkt, Some(port), None, br)?;
            return self.host_in(br.to_string(), pkt);
        }
        if let Some(o) = guest {
            let out_dev = s.vms[o.vm].vnics[o.vnic]
                .host_dev
                .clone()
                .unwrap_or_default();
            pkt.dst_mac = s.vms[o.vm].vnics[o.vnic].mac;
            let learned = s
                .fdb
                .iter()
                .any(|f| Some(f.mac) == pkt.dst_mac && f.ifname == out_dev);
            self.hop(
                &stage,
                format!("forward to port {out_dev} (vm:{})", s.vms[o.vm].name),
                vec![if learned {
                    format!(
                        "fdb: {} on {out_dev}",
                        pkt.dst_mac.map(|m| m.to_string()).unwrap_or_default()
                    )
                } else {
                    "destination MAC not learned yet: flooded to every port".to_string()
                }],
            );
            self.bridge_vlan(br, port, &out_dev)?;
            self.fdb_check(br, &out_dev, &o)?;
            let isolated = |d: &str| {
                self.t
                    .link(d)
                    .and_then(|l| l.bridge_port.as_ref())
                    .is_some_and(|p| p.isolated)
            };
            if isolated(port) && isolated(&out_dev) {
                return Err(self.drop(
                    &stage,
                    "port-isolated",
                    format!("ports {port} and {out_dev} are both isolated: {br} does not forward between them"),
                    vec![format!("bridge link: {port} isolated on"), format!("bridge link: {out_dev} isolated on")],
                ));
            }
            return self.bridge_forward(br, port, &out_dev, pkt, o);
        }
        if s.sysctls.effective_proxy_arp(br) && !host_any {
            pkt.dst_mac = brl.mac;
            self.hop(
                &stage,
                format!("proxy ARP: the host answers for {nh}"),
                vec![],
            );
            return self.host_in(br.to_string(), pkt);
        }
        // the segment goes on beyond the host through a LAN port (a NIC, bond, VLAN, a veth
        // to elsewhere, a tap of a VM kvmnet does not know): what answers there is out of
        // sight, unless the host itself already failed to resolve it
        if !host_any {
            if let Some(lan) = self.t.lan_port(br, port) {
                let failed = self.t.host_failed_to_resolve(br, nh);
                if failed {
                    return Err(self.drop(
                        &stage,
                        "arp-failed",
                        format!(
                            "nothing on {br} answers ARP for {nh}: the host's own attempt failed"
                        ),
                        vec![format!("{nh} dev {br} FAILED (host neighbour table)")],
                    ));
                }
                // a reply that leaves on the LAN bypasses the host's conntrack: the NAT of the
                // original direction is never undone
                // (with br_netfilter, conntrack sees the bridged reply and undoes the NAT there)
                let brl_ = self.t.link(br).and_then(|b| b.bridge.as_ref());
                let br_nf = if pkt.is_v6() {
                    s.sysctls.bridge_nf_call_ip6tables.unwrap_or(false)
                        || brl_.is_some_and(|b| b.nf_call_ip6tables)
                } else {
                    s.sysctls.bridge_nf_call_iptables.unwrap_or(false)
                        || brl_.is_some_and(|b| b.nf_call_iptables)
                };
                if self.reply
                    && !br_nf
                    && self
                        .prev
                        .as_ref()
                        .is_some_and(|o| o.dnat.is_some() || o.snat.is_some())
                {
                    return Err(self.drop(
                        &stage,
                        "asymmetric-nat",
                        format!("the reply leaves through LAN port {lan} towards {nh}, bypassing the host that translated the request: the client gets it from the wrong address"),
                        vec![format!("the guest's route to {} goes via {nh}, not via the host", pkt.dst)],
                    ));
                }
                self.hop(
                    &stage,
                    format!("{nh} is not on this host: out through LAN port {lan}"),
                    vec![format!("{lan}: a port of {br} that leads off the host; kvmnet cannot see beyond it")],
                );
                return Ok((
                    Landed::LanPort {
                        bridge: br.to_string(),
                        port: lan,
                    },
                    pkt,
                    PathNotes::default(),
                ));
            }
        }
        let mut facts = vec![];
        if host_any {
            facts.push(format!("{nh} is a host address on another interface and arp_ignore on {br} is {arp_ignore}"));
        }
        Err(self.drop(
            &stage,
            "arp-failed",
            format!(
                "nothing on {br} answers {} for {nh}",
                if nh.is_ipv6() {
                    "neighbour solicitations"
                } else {
                    "ARP"
                }
            ),
            facts,
        ))
    }

    /// A frame from a macvtap/macvlan guest: it goes out of the lower device to the wire;
    /// in bridge mode, siblings on the same lower device get it directly; the host's own
    /// stack on the lower device never sees it.
    fn macvtap_out(
        &mut self,
        vi: usize,
        ni: usize,
        dev: &str,
        link: &'a Link,
        next_hop: IpAddr,
        pkt: Packet,
    ) -> Step<Arrived> {
        let s = self.t.state;
        let mode = link
            .macvlan
            .as_ref()
            .map(|m| m.mode.clone())
            .unwrap_or_else(|| "vepa".into());
        let Some(parent) = link.parent.clone() else {
            return Err(Verdict::Unknown {
                at: self.stage(dev),
                what: format!("the lower device of {dev} is not known"),
                rule: None,
            });
        };
        let pstage = format!("{parent} (lower device of {dev})");
        self.link_ok(&parent, &pstage, "lower-down")?;
        if s.addresses
            .iter()
            .any(|a| a.address == next_hop || a.address == pkt.dst)
        {
            let which = if s.addresses.iter().any(|a| a.address == pkt.dst) {
                pkt.dst
            } else {
                next_hop
            };
            return Err(self.drop(
                &pstage,
                "macvtap-host",
                format!(
                    "{which} is the host's, but vm:{} reaches the network through {dev} ({} {mode} on {parent}): frames from a macvtap never reach the host's own stack on its lower device",
                    s.vms[vi].name, link.kind
                ),
                vec![format!("{dev}: {} mode {mode} on {parent}", link.kind)],
            ));
        }
        // a sibling guest on the same lower device
        if let Some(o) = self.t.owners.get(&next_hop).cloned() {
            let sib = s.vms[o.vm].vnics[o.vnic]
                .host_dev
                .as_deref()
                .and_then(|d| self.t.link(d));
            if let Some(sib) = sib.filter(|l| {
                matches!(l.kind, LinkKind::Macvtap | LinkKind::Macvlan)
                    && l.parent.as_deref() == Some(parent.as_str())
            }) {
                let smode = sib
                    .macvlan
                    .as_ref()
                    .map(|m| m.mode.as_str())
                    .unwrap_or("vepa");
                return match (mode.as_str(), smode) {
                    ("bridge", "bridge") => {
                        self.hop(&pstage, format!("bridge mode: {parent} switches it to {} (vm:{})", sib.name, s.vms[o.vm].name), vec![]);
                        let stage = format!("{} (to vm:{})", sib.name, s.vms[o.vm].name);
                        let (l, p, n) = self.deliver_guest(o, pkt, &stage)?;
                        Ok((l, p, n))
                    }
                    ("private", _) | (_, "private") => Err(self.drop(
                        &pstage,
                        "macvtap-private",
                        format!("{dev} and {} are macvtaps on {parent} and one is in private mode: they never reach each other", sib.name),
                        vec![format!("{dev}: mode {mode}"), format!("{}: mode {smode}", sib.name)],
                    )),
                    _ => Err(Verdict::Unknown {
                        at: self.stage(&pstage),
                        what: format!("{dev} ({mode}) and {} ({smode}) on {parent}: the frame goes out to the switch, which must reflect it back (VEPA hairpin) for it to arrive", sib.name),
                        rule: None,
                    }),
                };
            }
        }
        self.hop(
            &pstage,
            format!("out of {parent} to the wire ({} {mode})", link.kind),
            vec![format!(
                "{parent}: {}",
                self.t
                    .link(&parent)
                    .map(|l| l.state_word())
                    .unwrap_or_default()
            )],
        );
        Ok((
            Landed::Wire {
                parent,
                vm: vi,
                vnic: ni,
            },
            pkt,
            PathNotes::default(),
        ))
    }

    /// A broadcast DHCP request from a bridge port up to the host's DHCP server.
    fn dhcp_in(&mut self, port: &str, pkt: &Packet) -> Step<String> {
        let s = self.t.state;
        let stage = format!("vnic {port}");
        let link = self.link_ok(port, &stage, "link-down")?;
        let Some(br) = link
            .master
            .clone()
            .filter(|m| self.t.link(m).is_some_and(|l| l.kind == LinkKind::Bridge))
        else {
            return Err(self.drop(
                &stage,
                "not-in-bridge",
                format!(
                    "{port} is not in a bridge: its broadcast reaches no DHCP server on the host"
                ),
                vec![],
            ));
        };
        let brl = self.link_ok(&br, &format!("bridge {br}"), "bridge-down")?;
        let pstate = link
            .bridge_port
            .as_ref()
            .map(|p| p.state)
            .unwrap_or_default();
        if pstate != PortState::Forwarding {
            return Err(self.drop(
                &format!("bridge {br}"),
                "port-blocked",
                format!("port {port} is in STP state {}", pstate.as_str()),
                vec![],
            ));
        }
        self.bridge_vlan(&br, port, &br)?;
        self.hop(
            &format!("bridge {br}"),
            format!("broadcast: flooded to every port and up to {br}"),
            vec![format!("{br}: {}", brl.state_word())],
        );
        self.bridge_hook("prerouting", pkt, Some(port), None, &br)?;
        self.bridge_hook("input", pkt, Some(port), None, &br)?;
        let ct = (pkt.src, pkt.dst, pkt.sport, pkt.dport);
        let fams = ip_families(false);
        self.ip_hook(
            "prerouting",
            pkt,
            Some(&br),
            None,
            None,
            ct,
            &fams,
            "ip prerouting",
        )?;
        self.ip_hook("input", pkt, Some(&br), None, None, ct, &fams, "ip input")?;
        match s.sockets.iter().find(|l| l.proto == "udp" && l.port == 67) {
            Some(l) => {
                let who = l
                    .process
                    .as_ref()
                    .map(|p| format!("{}[{}]", p.name, p.pid))
                    .unwrap_or_else(|| "a process".into());
                self.hop(
                    "host",
                    format!("{who} listens on udp {}:67", l.address),
                    vec![],
                );
                Ok(format!("{who} on udp 67"))
            }
            None => Err(self.drop(
                "host",
                "no-listener",
                "nothing on the host listens on udp 67 (no DHCP server)".to_string(),
                vec![],
            )),
        }
    }

    /// The bridge's forwarding database for a guest's MAC: an entry that pins the MAC to
    /// another port (sticky, or static where the guest's port does not learn) sends every frame
    /// for the guest there.
    fn fdb_check(&mut self, br: &str, port: &str, o: &Owner) -> Step<()> {
        let s = self.t.state;
        let vm = &s.vms[o.vm];
        let Some(mac) = vm.vnics[o.vnic].mac else {
            return Ok(());
        };
        let learns = || {
            self.t
                .link(port)
                .and_then(|l| l.bridge_port.as_ref())
                .is_none_or(|p| p.learning)
        };
        let pinned = self
            .t
            .pinned_fdb
            .get(&mac)
            .and_then(|v| {
                v.iter().find(|f| {
                    f.ifname != port
                        && self.t.link(&f.ifname).and_then(|l| l.master.as_deref()) == Some(br)
                        && (f.sticky || !learns())
                })
            })
            .copied();
        if let Some(f) = pinned {
            let what = format!(
                "{mac} dev {} {}{}",
                f.ifname,
                f.state,
                if f.sticky { " sticky" } else { "" }
            );
            return Err(self.drop(
                &format!("bridge {br}"),
                "fdb-wrong-port",
                format!("{br}'s forwarding database sends {mac} (vm:{}) to port {}, but the guest is on {port}", vm.name, f.ifname),
                vec![format!("fdb: {what}")],
            ));
        }
        Ok(())
    }

    /// VLAN filtering on a Linux bridge: an untagged frame from `from` (a port, or the bridge
    /// device itself) is classified into that member's PVID, and leaves only through members
    /// of that VLAN. Nothing to check when the bridge does not filter VLANs.
    fn bridge_vlan(&mut self, br: &str, from: &str, to: &str) -> Step<()> {
        let Some(b) = self.t.link(br).and_then(|l| l.bridge.clone()) else {
            return Ok(());
        };
        if !b.vlan_filtering {
            return Ok(());
        }
        let vlans_of = |w: &Walk, m: &str| -> Vec<kvmnet_model::link::BridgeVlan> {
            if m == br {
                b.self_vlans.clone()
            } else {
                w.t.link(m)
                    .and_then(|l| l.bridge_port.as_ref())
                    .map(|p| p.vlans.clone())
                    .unwrap_or_default()
            }
        };
        let member = |m: &str| {
            if m == br {
                format!("{br} itself")
            } else {
                format!("port {m}")
            }
        };
        let stage = format!("bridge {br}");
        let fv = vlans_of(self, from);
        let Some(vid) = kvmnet_model::link::pvid_of(&fv) else {
            return Err(self.drop(
                &stage,
                "vlan-mismatch",
                format!("{} has no PVID on {br} (vlan_filtering is on): its untagged frames are dropped", member(from)),
                vec![format!(
                    "{}: VLANs {}",
                    member(from),
                    if fv.is_empty() { "none".to_string() } else { fv.iter().map(|v| v.vid.to_string()).collect::<Vec<_>>().join(", ") }
                )],
            ));
        };
        let tv = vlans_of(self, to);
        if !tv.iter().any(|v| v.vid == vid) {
            return Err(self.drop(
                &stage,
                "vlan-mismatch",
                format!(
                    "{} is not a member of VLAN {vid}, the VLAN of {}",
                    member(to),
                    member(from)
                ),
                vec![
                    format!("{}: PVID {vid}", member(from)),
                    format!(
                        "{}: VLANs {}",
                        member(to),
                        if tv.is_empty() {
                            "none".to_string()
                        } else {
                            tv.iter()
                                .map(|v| {
                                    format!("{}{}", v.vid, if v.pvid { " (PVID)" } else { "" })
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ],
            ));
        }
        self.hop(
            &stage,
            format!(
                "VLAN {vid}: {} and {} are members",
                member(from),
                member(to)
            ),
            vec![],
        );
        Ok(())
    }

    fn bridge_hook(
        &mut self,
        hook: &str,
        pkt: &Packet,
        iif: Option<&str>,
        oif: Option<&str>,
        br: &str,
    ) -> Step<()> {
        let ct = (pkt.src, pkt.dst, pkt.sport, pkt.dport);
        self.ip_hook(
            hook,
            pkt,
            iif,
            oif,
            None,
            ct,
            &[NftFamily::Bridge],
            &format!("bridge {br} {hook} (bridge family)"),
        )
        .map(|_| ())
        .map_err(|v| relabel(v, "bridge-filter"))
    }

    /// A frame bridged from `in_port` to `out_port` (another guest).
    fn bridge_forward(
        &mut self,
        br: &str,
        in_port: &str,
        out_port: &str,
        pkt: Packet,
        o: Owner,
    ) -> Step<Arrived> {
        let s = self.t.state;
        let brl = self.t.link(br);
        self.bridge_hook("prerouting", &pkt, Some(in_port), None, br)?;
        self.bridge_hook("forward", &pkt, Some(in_port), Some(out_port), br)?;
        // br_netfilter: bridged IP traffic also crosses the IP hooks
        let call = if pkt.is_v6() {
            s.sysctls.bridge_nf_call_ip6tables.unwrap_or(false)
                || brl
                    .as_ref()
                    .and_then(|b| b.bridge.as_ref())
                    .is_some_and(|b| b.nf_call_ip6tables)
        } else {
            s.sysctls.bridge_nf_call_iptables.unwrap_or(false)
                || brl
                    .as_ref()
                    .and_then(|b| b.bridge.as_ref())
                    .is_some_and(|b| b.nf_call_iptables)
        };
        let ct = (pkt.src, pkt.dst, pkt.sport, pkt.dport);
        if call {
            let fams = ip_families(pkt.is_v6());
            self.hop(
                &format!("bridge {br}"),
                "br_netfilter passes the frame through the IP hooks".to_string(),
                vec![format!(
                    "net.bridge.bridge-nf-call-{}tables = 1",
                    if pkt.is_v6() { "ip6" } else { "ip" }
                )],
            );
            self.ip_hook(
                "prerouting",
                &pkt,
                Some(in_port),
                None,
                Some((br, Some(in_port), None)),
                ct,
                &fams,
                "ip prerouting (br_netfilter)",
            )?;
            self.ip_hook(
                "forward",
                &pkt,
                Some(br),
                Some(br),
                Some((br, Some(in_port), Some(out_port))),
                ct,
                &fams,
                "ip forward (br_netfilter)",
            )?;
            self.ip_hook(
                "postrouting",
                &pkt,
                None,
                Some(br),
                Some((br, Some(in_port), Some(out_port))),
                ct,
                &fams,
                "ip postrouting (br_netfilter)",
            )?;
        }
        self.bridge_hook("postrouting", &pkt, None, Some(out_port), br)?;
        self.send_to_port(br, out_port, pkt, o)
    }

    /// The bridge transmits out of `port` towards the guest that owns it.
    fn send_to_port(&mut self, br: &str, port: &str, pkt: Packet, o: Owner) -> Step<Arrived> {
        let s = self.t.state;
        let stage = format!("{port} (to vm:{})", s.vms[o.vm].name);
        // a veth loses its carrier when the guest's end is down: that is where the fault is
        let vm = &s.vms[o.vm];
        let vnic = &vm.vnics[o.vnic];
        if let (Some(g), Some(gi)) = (&vm.guest, &vnic.guest_ifname) {
            if g.interfaces.iter().any(|i| &i.name == gi && !i.up) {
                return Err(self.drop(
                    &format!("vm:{}", vm.name),
                    "guest-link-down",
                    format!("the guest's {gi} is down"),
                    vec![],
                ));
            }
        }
        let link = self.link_ok(port, &stage, "link-down")?;
        if link.master.as_deref() != Some(br) {
            // a bridge per VLAN: the guest sits on another VLAN's bridge
            let vlan_of = |b: &str| {
                s.links
                    .iter()
                    .filter(|p| p.master.as_deref() == Some(b) && p.kind == LinkKind::Vlan)
                    .find_map(|p| p.vlan.as_ref().map(|v| v.id))
            };
            if let (Some(m), Some(want)) = (link.master.as_deref(), vlan_of(br)) {
                if let Some(have) = vlan_of(m) {
                    return Err(self.drop(
                        &stage,
                        "vlan-mismatch",
                        format!("{port} is on {m} (VLAN {have}), not on {br} (VLAN {want})"),
                        vec![],
                    ));
                }
            }
            return Err(self.drop(
                &stage,
                "not-in-bridge",
                format!("{port} is not attached to {br}"),
                vec![],
            ));
        }
        let pstate = link
            .bridge_port
            .as_ref()
            .map(|p| p.state)
            .unwrap_or_default();
        if pstate != PortState::Forwarding {
            return Err(self.drop(
                &stage,
                "port-blocked",
                format!("port {port} is in STP state {}", pstate.as_str()),
                vec![],
            ));
        }
        if pkt.len > link.mtu {
            return Err(self.drop(
                &stage,
                "mtu",
                format!(
                    "{} bytes exceed {port}'s MTU {}: the bridge discards the frame silently",
                    pkt.len, link.mtu
                ),
                vec![],
            ));
        }
        self.deliver_guest(o, pkt, &stage)
    }

    fn deliver_guest(&mut self, o: Owner, pkt: Packet, stage: &str) -> Step<Arrived> {
        let s = self.t.state;
        let vm = &s.vms[o.vm];
        let vnic = &vm.vnics[o.vnic];
        if vnic.link_up == Some(false) {
            return Err(self.drop(
                stage,
                "vnic-link-down",
                "the domain interface has link state down",
                vec![],
            ));
        }
        if let (Some(g), Some(gi)) = (&vm.guest, &vnic.guest_ifname) {
            if let Some(i) = g.interfaces.iter().find(|i| &i.name == gi) {
                if !i.up {
                    return Err(self.drop(
                        &format!("vm:{}", vm.name),
                        "guest-link-down",
                        format!("the guest's {gi} is down"),
                        vec![],
                    ));
                }
                if let Some(m) = i.mtu {
                    if pkt.len > m && vnic.model.as_deref() == Some("veth") {
                        return Err(self.drop(
                            &format!("vm:{}", vm.name),
                            "mtu",
                            format!("{} bytes exceed the guest's MTU {m}", pkt.len),
                            vec![],
                        ));
                    }
                }
                if !i.addresses.iter().any(|a| a.addr() == pkt.dst) {
                    return Err(self.drop(
                        &format!("vm:{}", vm.name),
                        "arp-failed",
                        format!("the guest does not own {}", pkt.dst),
                        vec![],
                    ));
                }
            }
        }
        self.hop(
            &format!("vm:{}", vm.name),
            format!("receives {} -> {}", pkt.src, pkt.dst),
            vec![],
        );
        Ok((Landed::Guest(o.vm, o.vnic), pkt, PathNotes::default()))
    }

    /// A packet enters the host's IP stack on `iif`.
    fn host_in(&mut self, iif: String, mut pkt: Packet) -> Step<Arrived> {
        let s = self.t.state;
        let fams = ip_families(pkt.is_v6());
        let orig = (pkt.src, pkt.dst, pkt.sport, pkt.dport);
        let mut notes = PathNotes::default();
        // reply packets: conntrack undoes the source NAT of the original direction
        if let Some(prev) = self.prev.as_ref().filter(|_| self.reply) {
            if prev.snat == Some(pkt.dst) {
                let orig_src = prev.orig.src;
                self.hop(
                    "conntrack",
                    format!("reverse NAT: destination {} -> {orig_src}", pkt.dst),
                    vec![],
                );
                pkt.dst = orig_src;
            }
        }
        let nat = self.ip_hook(
            "prerouting",
            &pkt,
            Some(&iif),
            None,
            None,
            orig,
            &fams,
            "ip prerouting",
        )?;
        if let Some(n) = nat {
            match n.kind.as_str() {
                "dnat" => {
                    if let Some(a) = n.addr {
                        pkt.dst = a;
                    }
                    if let Some(p) = n.port {
                        pkt.dport = p;
                    }
                    pkt.ct_status |= 32;
                    notes.dnat = Some((orig.1, orig.3));
                }
                "redirect" => {
                    if let Some(p) = n.port {
                        pkt.dport = p;
                    }
                }
                _ => {}
            }
        }
        let r = route(s, pkt.src, pkt.dst, Some(&iif), pkt.mark);
        match r {
            RouteResult::Local { dev } => {
                self.hop(
                    "routing",
                    format!(
                        "{} is local{}",
                        pkt.dst,
                        dev.map(|d| format!(" ({d})")).unwrap_or_default()
                    ),
                    vec![],
                );
                let rp = s.sysctls.effective_rp_filter(&iif).unwrap_or(0);
                if !rp_filter_ok(s, rp, pkt.src, pkt.dst, &iif) {
                    return Err(self.drop(
                        "routing",
                        "rp-filter",
                        format!(
                            "rp_filter {rp} on {iif}: {} is not reached through {iif}",
                            pkt.src
                        ),
                        vec![],
                    ));
                }
                self.ip_hook(
                    "input",
                    &pkt,
                    Some(&iif),
                    None,
                    None,
                    orig,
                    &fams,
                    "ip input",
                )?;
                if !self.reply && matches!(pkt.proto, TCP | UDP) {
                    let listening = s.sockets.iter().any(|k| {
                        k.proto == proto_name(pkt.proto)
                            && k.port == pkt.dport
                            && (k.address == pkt.dst || k.address.is_unspecified())
                    });
                    if !listening {
                        return Err(self.drop(
                            "host",
                            "no-listener",
                            format!(
                                "nothing listens on {} port {} on the host",
                                proto_name(pkt.proto),
                                pkt.dport
                            ),
                            vec![],
                        ));
                    }
                }
                self.hop(
                    "host",
                    format!("delivered to the host ({})", pkt.dst),
                    vec![],
                );
                Ok((Landed::Host, pkt, notes))
            }
            RouteResult::Unicast {
                dev,
                gateway,
                prefsrc,
                mtu,
                table,
                dst,
            } => {
                // forwarding
                let fwd = s.sysctls.if_forwarding(&iif).unwrap_or(false);
                let fwd_all = if pkt.is_v6() {
                    s.sysctls.ipv6_forwarding
                } else {
                    s.sysctls.ip_forward
                };
                if fwd_all == Some(false) || !fwd {
                    return Err(self.drop(
                        "routing",
                        "ip-forward-disabled",
                        format!(
                            "forwarding is off ({})",
                            if fwd_all == Some(false) {
                                if pkt.is_v6() {
                                    "net.ipv6.conf.all.forwarding = 0".to_string()
                                } else {
                                    "net.ipv4.ip_forward = 0".to_string()
                                }
                            } else {
                                format!("net.ipv4.conf.{iif}.forwarding = 0")
                            }
                        ),
                        vec![],
                    ));
                }
                let rp = s.sysctls.effective_rp_filter(&iif).unwrap_or(0);
                if !rp_filter_ok(s, rp, pkt.src, pkt.dst, &iif) {
                    return Err(self.drop(
                        "routing",
                        "rp-filter",
                        format!(
                            "rp_filter {rp} on {iif}: the route back to {} does not use {iif}",
                            pkt.src
                        ),
                        vec![],
                    ));
                }
                notes.via_default = dst.prefix_len() == 0;
                self.hop(
                    "routing",
                    format!(
                        "forward via {dev}{}",
                        gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()
                    ),
                    vec![
                        format!("table {table}: {dst}"),
                        format!("forwarding on {iif}"),
                    ],
                );
                self.ip_hook(
                    "forward",
                    &pkt,
                    Some(&iif),
                    Some(&dev),
                    None,
                    orig,
                    &fams,
                    "ip forward",
                )?;
                let (landed, p, n2) = self.out_dev(dev, gateway, prefsrc, mtu, pkt, orig, true)?;
                notes.snat = n2.snat;
                notes.via_default |= n2.via_default;
                Ok((landed, p, notes))
            }
            RouteResult::Reject {
                kind,
                table,
                dst,
                rule,
            } => Err(self.route_reject(&pkt, &kind, table, dst, rule)),
            RouteResult::NoRoute => Err(self.drop(
                "routing",
                "no-route",
                format!("no route to {}", pkt.dst),
                vec![],
            )),
        }
    }

    /// Postrouting, egress checks and where the packet goes next.
    #[allow(clippy::too_many_arguments)]
    fn out_dev(
        &mut self,
        dev: String,
        gateway: Option<IpAddr>,
        prefsrc: Option<IpAddr>,
        route_mtu: Option<u32>,
        mut pkt: Packet,
        orig: (IpAddr, IpAddr, u16, u16),
        forwarded: bool,
    ) -> Step<Arrived> {
        let s = self.t.state;
        let fams = ip_families(pkt.is_v6());
        let mut notes = PathNotes::default();
        let stage = format!("egress {dev}");
        let link = self.link_ok(&dev, &stage, "link-down")?;
        let mtu = route_mtu.unwrap_or(link.mtu).min(link.mtu);
        if pkt.len > mtu {
            if pkt.df || pkt.is_v6() {
                return Err(self.drop(
                    &stage,
                    "mtu",
                    format!(
                        "{} bytes exceed the path MTU {mtu} with DF set{}",
                        pkt.len,
                        if forwarded {
                            ": the host answers ICMP fragmentation needed"
                        } else {
                            ""
                        }
                    ),
                    vec![],
                ));
            }
            pkt.len = mtu;
        }
        let nat = self.ip_hook(
            "postrouting",
            &pkt,
            None,
            Some(&dev),
            None,
            orig,
            &fams,
            "ip postrouting",
        )?;
        if let Some(n) = nat {
            match n.kind.as_str() {
                "masquerade" => {
                    if let Some(a) = select_source(s, &dev, gateway.unwrap_or(pkt.dst), prefsrc) {
                        notes.snat = Some(a);
                        pkt.src = a;
                    }
                }
                "snat" => {
                    if let Some(a) = n.addr {
                        notes.snat = Some(a);
                        pkt.src = a;
                    }
                }
                _ => {}
            }
            if let Some(p) = n.port {
                pkt.sport = p;
            }
        }
        // reply packets: conntrack undoes the destination NAT of the original direction
        if let Some((a, p)) = self
            .prev
            .as_ref()
            .filter(|_| self.reply)
            .and_then(|o| o.dnat)
        {
            if pkt.src != a {
                self.hop(
                    "conntrack",
                    format!("reverse NAT: source {} -> {a}", pkt.src),
                    vec![],
                );
                pkt.src = a;
                pkt.sport = p;
            }
        }
        let nh = gateway.unwrap_or(pkt.dst);
        // an Open vSwitch internal port: the switch takes it from here
        if let Some((b, p)) = s.ovs.as_ref().and_then(|o| o.port_of(&dev)) {
            let (l, p, _) = self.ovs_switch(b, &p.name, p.native_vlan(), nh, pkt)?;
            return Ok((l, p, notes));
        }
        // where does it go from here?
        if link.kind == LinkKind::Bridge {
            let owner = self.t.owners.get(&nh).cloned();
            match owner {
                Some(o) => {
                    let port = s.vms[o.vm].vnics[o.vnic]
                        .host_dev
                        .clone()
                        .unwrap_or_default();
                    self.hop(
                        &stage,
                        format!("bridge {dev} sends it to {port} (vm:{})", s.vms[o.vm].name),
                        vec![],
                    );
                    self.neigh_check(&dev, nh, &o)?;
                    if self.t.link(&port).and_then(|l| l.master.as_deref()) == Some(dev.as_str()) {
                        self.bridge_vlan(&dev, &dev, &port)?;
                        self.fdb_check(&dev, &port, &o)?;
                    }
                    let (l, p, _) = self.send_to_port(&dev, &port, pkt, o)?;
                    return Ok((l, p, notes));
                }
                None => {
                    return Err(self.drop(
                        &stage,
                        "arp-failed",
                        format!("nothing on {dev} answers ARP for {nh}"),
                        vec![],
                    ));
                }
            }
        }
        if let Some(o) = self.t.owners.get(&nh).cloned() {
            // a routed vNIC (tap/veth with the route to the guest)
            if s.vms[o.vm].vnics[o.vnic].host_dev.as_deref() == Some(dev.as_str()) {
                self.neigh_check(&dev, nh, &o)?;
                let (l, p, _) = self.deliver_guest(o, pkt, &stage)?;
                return Ok((l, p, notes));
            }
        }
        // a macvtap/macvlan guest on the device the host sends through: the kernel never
        // passes frames between a lower device and its macvtaps
        if let Some(o) = self.t.owners.get(&pkt.dst).cloned() {
            let v = &s.vms[o.vm];
            if let Some(m) = v.vnics[o.vnic]
                .host_dev
                .as_deref()
                .and_then(|d| self.t.link(d))
            {
                if matches!(m.kind, LinkKind::Macvtap | LinkKind::Macvlan)
                    && m.parent.as_deref() == Some(dev.as_str())
                {
                    return Err(self.drop(
                        &stage,
                        "macvtap-host",
                        format!(
                            "vm:{} sits on {dev} through {} ({}): the host's own traffic out of {dev} never reaches its macvtaps (frames go to the wire, and the switch does not send them back)",
                            v.name,
                            m.name,
                            m.kind
                        ),
                        vec![format!("{}: {} mode {} on {dev}", m.name, m.kind, m.macvlan.as_ref().map(|x| x.mode.as_str()).unwrap_or("?"))],
                    ));
                }
            }
        }
        // the destination is a guest of this host, but the route leads elsewhere
        if let Some(o) = self.t.owners.get(&pkt.dst).cloned() {
            let v = &s.vms[o.vm];
            let home = v.vnics[o.vnic]
                .host_dev
                .as_deref()
                .and_then(|d| self.t.link(d))
                .map(|l| l.master.clone().unwrap_or_else(|| l.name.clone()));
            return Err(self.drop(
                &stage,
                "misrouted",
                format!(
                    "{} is vm:{}'s address{}, but the host routes it out of {dev}",
                    pkt.dst,
                    v.name,
                    home.map(|h| format!(" (on {h})")).unwrap_or_default()
                ),
                // the route that sends it there
                match route(s, pkt.src, pkt.dst, None, pkt.mark) {
                    RouteResult::Unicast {
                        dst,
                        table,
                        gateway,
                        ..
                    } => vec![format!(
                        "route {dst}{} dev {dev} table {}",
                        gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                        kvmnet_model::ip::table_name(table)
                    )],
                    _ => vec![],
                },
            ));
        }
        // a neighbour entry the kernel already gave up on
        if let Some(n) = s.neighbours.iter().find(|n| {
            n.ifname == dev && n.address == nh && n.state == kvmnet_model::ip::NeighState::Failed
        }) {
            return Err(self.drop(
                &stage,
                "arp-failed",
                format!(
                    "{nh} does not answer ARP on {dev} (neighbour entry {:?})",
                    n.state
                )
                .to_lowercase(),
                vec![],
            ));
        }
        self.hop(
            &stage,
            format!("leaves the host towards {nh}"),
            vec![
                format!("{dev}: {}, mtu {}", link.state_word(), link.mtu),
                format!("source {}", pkt.src),
            ],
        );
        Ok((Landed::External { dev }, pkt, notes))
    }

    /// Open vSwitch's NORMAL action: a learning switch with VLANs. The frame entered `br` by
    /// port `from`, in VLAN `vid`, for next hop `nh`.
    fn ovs_switch(
        &mut self,
        br: &'a OvsBridge,
        from: &str,
        vid: u16,
        nh: IpAddr,
        mut pkt: Packet,
    ) -> Step<Arrived> {
        let s = self.t.state;
        let stage = format!("ovs {}", br.name);
        let Some(ovs) = s.ovs.as_ref() else {
            return Err(self.drop(
                &stage,
                "ovs-not-running",
                "Open vSwitch is not running",
                vec![],
            ));
        };
        if !ovs.vswitchd_running {
            return Err(self.drop(
                &stage,
                "ovs-not-running",
                format!(
                    "ovs-vswitchd does not run: nothing forwards frames on {}",
                    br.name
                ),
                vec![format!(
                    "database {} {}",
                    ovs.db,
                    if ovs.db_running { "up" } else { "down" }
                )],
            ));
        }
        if let Some(f) = br.custom_flows.as_ref().filter(|f| !f.is_empty()) {
            let mut flow = format!("in_port={from}");
            if !pkt.is_v6() {
                flow.push_str(&format!(
                    ",dl_type=0x0800,nw_src={},nw_dst={},nw_proto={}",
                    pkt.src, pkt.dst, pkt.proto
                ));
                if matches!(pkt.proto, 6 | 17) {
                    flow.push_str(&format!(",tp_src={},tp_dst={}", pkt.sport, pkt.dport));
                }
            }
            if let Some(m) = pkt.src_mac {
                flow.push_str(&format!(",dl_src={m}"));
            }
            return Err(Verdict::Unknown {
                at: self.stage(&stage),
                what: format!(
                    "{} has {} OpenFlow rule(s) besides NORMAL (first: {}); kvmnet simulates NORMAL only: ask the switch with `ovs-appctl ofproto/trace {} {flow}`",
                    br.name,
                    f.len(),
                    f[0],
                    br.name
                ),
                rule: None,
            });
        }
        // 1. the host, on an internal port
        for p in &br.ports {
            for i in p.interfaces.iter().filter(|i| i.kind == "internal") {
                if !s.addresses_of(&i.name).any(|a| a.address == nh) {
                    continue;
                }
                if !p.carries(vid) {
                    return Err(self.drop(
                        &stage,
                        "vlan-mismatch",
                        format!(
                            "{nh} is the host's address on internal port {} in VLAN {}, but the frame from {from} is in VLAN {vid}",
                            i.name,
                            p.native_vlan()
                        ),
                        vec![format!("port {from}: VLAN {vid}"), format!("port {}: VLAN {}", p.name, p.native_vlan())],
                    ));
                }
                if let Some(l) = self.t.link(&i.name) {
                    pkt.dst_mac = l.mac;
                }
                self.hop(
                    &stage,
                    format!(
                        "{nh} is the host: up through internal port {} (VLAN {vid})",
                        i.name
                    ),
                    vec![format!("port {from}: VLAN {vid}")],
                );
                return self.host_in(i.name.clone(), pkt);
            }
        }
        // 2. a guest on another port of this bridge
        if let Some(o) = self.t.owners.get(&nh).cloned() {
            let dev = s.vms[o.vm].vnics[o.vnic]
                .host_dev
                .clone()
                .unwrap_or_default();
            if let Some((b2, p2)) = ovs.port_of(&dev) {
                if b2.name == br.name && p2.name != from {
                    if !p2.carries(vid) {
                        return Err(self.drop(
                            &stage,
                            "vlan-mismatch",
                            format!(
                                "{nh} is vm:{} on port {} in VLAN {}, but the frame from {from} is in VLAN {vid}",
                                s.vms[o.vm].name,
                                p2.name,
                                p2.native_vlan()
                            ),
                            vec![format!("port {from}: VLAN {vid}"), format!("port {}: VLAN {}", p2.name, p2.native_vlan())],
                        ));
                    }
                    if let Some(i) = p2.interfaces.iter().find(|i| !i.is_up()) {
                        return Err(self.drop(
                            &stage,
                            "link-down",
                            format!("port {} ({}) is down", p2.name, i.name),
                            vec![],
                        ));
                    }
                    pkt.dst_mac = s.vms[o.vm].vnics[o.vnic].mac;
                    self.hop(
                        &stage,
                        format!(
                            "forward to port {} (vm:{}) in VLAN {vid}",
                            p2.name, s.vms[o.vm].name
                        ),
                        vec![format!("port {from}: VLAN {vid}")],
                    );
                    let stage2 = format!("{dev} (to vm:{})", s.vms[o.vm].name);
                    return self.deliver_guest(o, pkt, &stage2);
                }
            }
        }
        // 3. out of the host through a port that is no VM's (an uplink, a bond)
        let vm_devs: Vec<&str> = s
            .vms
            .iter()
            .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
            .collect();
        let out = br.ports.iter().find(|p| {
            p.name != from
                && p.carries(vid)
                && p.interfaces
                    .iter()
                    .all(|i| i.kind != "internal" && !vm_devs.contains(&i.name.as_str()))
        });
        if let Some(p) = out {
            if p.interfaces.iter().all(|i| !i.is_up()) {
                return Err(self.drop(
                    &stage,
                    "link-down",
                    format!("every member of port {} is down", p.name),
                    vec![],
                ));
            }
            self.hop(
                &stage,
                format!(
                    "{nh} is not on this host: out through port {} in VLAN {vid}",
                    p.name
                ),
                vec![format!(
                    "{}: {}",
                    p.name,
                    p.interfaces
                        .iter()
                        .map(|i| format!("{} {}", i.name, if i.is_up() { "up" } else { "down" }))
                        .collect::<Vec<_>>()
                        .join(", ")
                )],
            );
            return Ok((
                Landed::OvsOut {
                    bridge: br.name.clone(),
                    port: p.name.clone(),
                    vid,
                },
                pkt,
                PathNotes::default(),
            ));
        }
        Err(self.drop(
            &stage,
            "arp-failed",
            format!("nothing in VLAN {vid} on {} answers ARP for {nh}", br.name),
            vec![format!("port {from}: VLAN {vid}")],
        ))
    }

    /// The host itself sends `pkt`.
    fn host_out(&mut self, mut pkt: Packet) -> Step<Arrived> {
        let s = self.t.state;
        let fams = ip_families(pkt.is_v6());
        let orig = (pkt.src, pkt.dst, pkt.sport, pkt.dport);
        let r = route(s, pkt.src, pkt.dst, None, pkt.mark);
        match r {
            RouteResult::Local { .. } => {
                self.hop("host", format!("{} is the host itself", pkt.dst), vec![]);
                Ok((Landed::Host, pkt, PathNotes::default()))
            }
            RouteResult::Unicast {
                dev,
                gateway,
                prefsrc,
                mtu,
                table,
                dst,
            } => {
                self.hop(
                    "routing",
                    format!(
                        "host sends via {dev}{}",
                        gateway.map(|g| format!(" gateway {g}")).unwrap_or_default()
                    ),
                    vec![format!("table {table}: {dst}")],
                );
                let nat = self.ip_hook(
                    "output",
                    &pkt,
                    None,
                    Some(&dev),
                    None,
                    orig,
                    &fams,
                    "ip output",
                )?;
                if let Some(n) = nat {
                    if n.kind == "dnat" {
                        if let Some(a) = n.addr {
                            pkt.dst = a;
                        }
                    }
                }
                self.out_dev(dev, gateway, prefsrc, mtu, pkt, orig, false)
            }
            RouteResult::Reject {
                kind,
                table,
                dst,
                rule,
            } => Err(self.route_reject(&pkt, &kind, table, dst, rule)),
            RouteResult::NoRoute => Err(self.drop(
                "routing",
                "no-route",
                format!("the host has no route to {}", pkt.dst),
                vec![],
            )),
        }
    }
}

fn relabel(v: Verdict, cause: &str) -> Verdict {
    match v {
        Verdict::Dropped {
            at,
            reason,
            rule,
            reply,
            ..
        } => Verdict::Dropped {
            at,
            cause: cause.into(),
            reason,
            rule,
            reply,
        },
        other => other,
    }
}
