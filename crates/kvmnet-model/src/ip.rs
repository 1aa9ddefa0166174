//! Layer 3 and neighbour state: addresses, routes (every table), policy rules, neighbours,
//! the bridge forwarding database, and traffic-control qdiscs. Pure data plus the lookups the
//! reasoning layers share (longest-prefix match, policy-rule order). No I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::types::MacAddr;

/// The main routing table's id.
pub const RT_TABLE_MAIN: u32 = 254;
/// The local routing table's id.
pub const RT_TABLE_LOCAL: u32 = 255;
/// The default routing table's id.
pub const RT_TABLE_DEFAULT: u32 = 253;

/// An address assigned to an interface.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Address {
    pub ifname: String,
    #[serde(default)]
    pub ifindex: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `global`, `link`, `host`, `site`.
    #[serde(default = "scope_global")]
    pub scope: String,
    /// Kernel address flags worth knowing: `secondary`, `tentative`, `dadfailed`, `deprecated`,
    /// `permanent`, `noprefixroute`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

fn scope_global() -> String {
    "global".to_string()
}

impl Address {
    /// The address with its prefix, e.g. `10.0.0.1/24`.
    pub fn cidr(&self) -> IpNet {
        IpNet::new(self.address, self.prefix_len).unwrap_or_else(|_| IpNet::from(self.address))
    }
    /// The network the address belongs to, e.g. `10.0.0.0/24`.
    pub fn network(&self) -> IpNet {
        self.cidr().trunc()
    }
    /// True when DAD failed for this address (IPv6) or it is still tentative.
    pub fn is_dad_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "dadfailed")
    }
}

/// What a route does with a matching packet (`RTN_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    #[default]
    Unicast,
    Local,
    Broadcast,
    Anycast,
    Multicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Throw,
    Nat,
    Other,
}

/// One nexthop of a multipath route.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NextHop {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    #[serde(default = "one")]
    pub weight: u16,
}

fn one() -> u16 {
    1
}

/// A route from any table.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Route {
    #[serde(default = "main_table")]
    pub table: u32,
    /// Destination prefix; `0.0.0.0/0` or `::/0` for a default route.
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefsrc: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    #[serde(default)]
    pub kind: RouteKind,
    /// `kernel`, `boot`, `static`, `dhcp`, `ra`, ...
    #[serde(default = "proto_boot")]
    pub protocol: String,
    /// `global`, `link`, `host`, ...
    #[serde(default = "scope_global")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nexthops: Vec<NextHop>,
    /// The `mtu` route metric (locks path MTU for this destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

fn main_table() -> u32 {
    RT_TABLE_MAIN
}

fn proto_boot() -> String {
    "boot".to_string()
}

impl Route {
    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_default(&self) -> bool {
        self.dst.prefix_len() == 0
    }
    /// The devices this route sends out of (its own, or each nexthop's).
    pub fn devices(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.dev.iter().map(String::as_str).collect();
        out.extend(self.nexthops.iter().filter_map(|n| n.dev.as_deref()));
        out
    }
    /// The first gateway (own or first nexthop's).
    pub fn first_gateway(&self) -> Option<IpAddr> {
        self.gateway
            .or_else(|| self.nexthops.iter().find_map(|n| n.gateway))
    }
}

/// What a policy rule does when it matches (`FR_ACT_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    #[default]
    ToTable,
    Goto,
    Nop,
    Blackhole,
    Unreachable,
    Prohibit,
    Other,
}

/// A routing policy rule (`ip rule`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PolicyRule {
    /// `inet` or `inet6`.
    pub family: String,
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oif: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmark: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fwmask: Option<u32>,
    #[serde(default)]
    pub table: u32,
    #[serde(default)]
    pub action: RuleAction,
    #[serde(default)]
    pub invert: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress_prefixlen: Option<u32>,
}

/// A routing table's name as `ip` prints it.
pub fn table_name(t: u32) -> String {
    match t {
        RT_TABLE_MAIN => "main".into(),
        RT_TABLE_LOCAL => "local".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

impl PolicyRule {
    /// The selector as `ip rule` prints it: `from 10.0.0.0/24 iif br0 fwmark 0x1`.
    pub fn selector_text(&self) -> String {
        let mut sel = vec![];
        if self.invert {
            sel.push("not".to_string());
        }
        sel.push(format!(
            "from {}",
            self.src
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into())
        ));
        if let Some(d) = self.dst {
            sel.push(format!("to {d}"));
        }
        if let Some(i) = &self.iif {
            sel.push(format!("iif {i}"));
        }
        if let Some(i) = &self.oif {
            sel.push(format!("oif {i}"));
        }
        if let Some(m) = self.fwmark {
            match self.fwmask {
                Some(k) if k != u32::MAX => sel.push(format!("fwmark {m:#x}/{k:#x}")),
                _ => sel.push(format!("fwmark {m:#x}")),
            }
        }
        sel.join(" ")
    }

    /// The action as `ip rule` prints it: `lookup 100`, `blackhole`.
    pub fn action_text(&self) -> String {
        match self.action {
            RuleAction::ToTable => format!("lookup {}", table_name(self.table)),
            a => format!("{a:?}").to_lowercase(),
        }
    }

    /// `100: from 10.0.0.13 lookup 100`.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} {}",
            self.priority,
            self.selector_text(),
            self.action_text()
        )
    }

    /// True for the three rules every namespace starts with (local, main, default).
    pub fn is_default(&self) -> bool {
        self.action == RuleAction::ToTable
            && self.src.is_none()
            && self.dst.is_none()
            && self.iif.is_none()
            && self.oif.is_none()
            && self.fwmark.is_none()
            && !self.invert
            && matches!(
                (self.priority, self.table),
                (0, RT_TABLE_LOCAL) | (32766, RT_TABLE_MAIN) | (32767, 253)
            )
    }
}

/// Neighbour (ARP / NDP) entry states (`NUD_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeighState {
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    Noarp,
    Permanent,
    #[default]
    None,
}

impl NeighState {
    /// True when the entry holds a usable link-layer address.
    pub fn is_valid(self) -> bool {
        matches!(
            self,
            NeighState::Reachable
                | NeighState::Stale
                | NeighState::Delay
                | NeighState::Probe
                | NeighState::Permanent
                | NeighState::Noarp
        )
    }
}

/// An ARP/NDP neighbour entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Neighbour {
    pub ifname: String,
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lladdr: Option<MacAddr>,
    #[serde(default)]
    pub state: NeighState,
    #[serde(default)]
    pub router: bool,
}

/// A bridge forwarding database entry (`bridge fdb`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct FdbEntry {
    pub mac: MacAddr,
    /// The port the MAC was learned on (or the bridge itself for its own addresses).
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// `permanent` (local address), `static`, or `dynamic` (learned).
    pub state: String,
    /// The entry lives in the port's own table (`self`) rather than the bridge's (`master`).
    #[serde(default)]
    pub is_self: bool,
    /// `sticky`: the entry never moves to the port a frame from this MAC arrives on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky: bool,
    /// VXLAN remote for this MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
}

/// A queueing discipline attached to a link.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Qdisc {
    pub ifname: String,
    pub kind: String,
    /// `1:` style handle.
    pub handle: String,
    /// `root`, `ingress`, or the parent class handle.
    pub parent: String,
    /// Shaping rate in bits per second, for `tbf` (and `htb` classes when collected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u32>,
}

/// A socket bound for listening, from /proc/net (TCP in LISTEN, every bound UDP socket).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ListenSocket {
    /// `tcp` or `udp`.
    pub proto: String,
    pub address: IpAddr,
    pub port: u16,
    /// The owning process, when kvmnet could match the socket inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<crate::link::ProcessRef>,
}

/// Finds the route an IPv4/IPv6 destination takes in one table: the longest matching prefix,
/// then the lowest metric. Routes of other families never match.
pub fn lookup_route(routes: &[Route], table: u32, dst: IpAddr) -> Option<&Route> {
    routes
        .iter()
        .filter(|r| r.table == table && r.dst.contains(&dst))
        .max_by(|a, b| {
            a.dst
                .prefix_len()
                .cmp(&b.dst.prefix_len())
                .then_with(|| b.metric.unwrap_or(0).cmp(&a.metric.unwrap_or(0)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, dev: &str, metric: Option<u32>) -> Route {
        Route {
            table: RT_TABLE_MAIN,
            dst: dst.parse().unwrap(),
            gateway: None,
            dev: Some(dev.into()),
            prefsrc: None,
            metric,
            kind: RouteKind::Unicast,
            protocol: "boot".into(),
            scope: "global".into(),
            nexthops: vec![],
            mtu: None,
        }
    }

    #[test]
    fn longest_prefix_then_metric() {
        let routes = vec![
            route("0.0.0.0/0", "uplink", Some(100)),
            route("0.0.0.0/0", "backup", Some(200)),
            route("10.0.0.0/8", "wide", None),
            route("10.1.0.0/16", "narrow", None),
        ];
        let pick = |ip: &str| lookup_route(&routes, RT_TABLE_MAIN, ip.parse().unwrap());
        assert_eq!(pick("10.1.2.3").unwrap().dev.as_deref(), Some("narrow"));
        assert_eq!(pick("10.2.2.3").unwrap().dev.as_deref(), Some("wide"));
        assert_eq!(pick("8.8.8.8").unwrap().dev.as_deref(), Some("uplink"));
        assert!(pick("2001:db8::1").is_none());
        assert!(lookup_route(&routes, 100, "8.8.8.8".parse().unwrap()).is_none());
    }

    #[test]
    fn address_network() {
        let a = Address {
            ifname: "br0".into(),
            ifindex: 3,
            address: "10.0.0.1".parse().unwrap(),
            prefix_len: 24,
            scope: "global".into(),
            flags: vec![],
        };
        assert_eq!(a.network().to_string(), "10.0.0.0/24");
        assert_eq!(a.cidr().to_string(), "10.0.0.1/24");
    }
}
