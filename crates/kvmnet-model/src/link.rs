//! Network links (interfaces) as the kernel reports them over rtnetlink, with the kind-specific
//! details kvmnet reasons about: bridges and their ports, veth peers, taps, VLANs, bonds, VXLAN,
//! macvlan/macvtap. Pure data; no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::MacAddr;

/// What kind of device a link is (the rtnetlink `IFLA_INFO_KIND`, refined for taps).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum LinkKind {
    Bridge,
    Veth,
    /// A tun/tap device in TAP (Ethernet) mode: what QEMU attaches to.
    Tap,
    /// A tun/tap device in TUN (IP) mode.
    Tun,
    Vxlan,
    Vlan,
    Bond,
    Macvlan,
    Macvtap,
    /// An Open vSwitch internal port or datapath device.
    Openvswitch,
    Ifb,
    Dummy,
    Loopback,
    /// A device with no rtnetlink kind: a NIC driven by real (or emulated) hardware.
    Physical,
    Other(String),
}

impl LinkKind {
    /// The name used in JSON and tables.
    pub fn as_str(&self) -> &str {
        match self {
            LinkKind::Bridge => "bridge",
            LinkKind::Veth => "veth",
            LinkKind::Tap => "tap",
            LinkKind::Tun => "tun",
            LinkKind::Vxlan => "vxlan",
            LinkKind::Vlan => "vlan",
            LinkKind::Bond => "bond",
            LinkKind::Macvlan => "macvlan",
            LinkKind::Macvtap => "macvtap",
            LinkKind::Openvswitch => "openvswitch",
            LinkKind::Ifb => "ifb",
            LinkKind::Dummy => "dummy",
            LinkKind::Loopback => "loopback",
            LinkKind::Physical => "physical",
            LinkKind::Other(s) => s,
        }
    }
}

impl From<String> for LinkKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "bridge" => LinkKind::Bridge,
            "veth" => LinkKind::Veth,
            "tap" => LinkKind::Tap,
            "tun" => LinkKind::Tun,
            "vxlan" => LinkKind::Vxlan,
            "vlan" => LinkKind::Vlan,
            "bond" => LinkKind::Bond,
            "macvlan" => LinkKind::Macvlan,
            "macvtap" => LinkKind::Macvtap,
            "openvswitch" => LinkKind::Openvswitch,
            "ifb" => LinkKind::Ifb,
            "dummy" => LinkKind::Dummy,
            "loopback" => LinkKind::Loopback,
            "physical" => LinkKind::Physical,
            _ => LinkKind::Other(s),
        }
    }
}

impl From<LinkKind> for String {
    fn from(k: LinkKind) -> String {
        k.as_str().to_string()
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 2863 operational state (`IFLA_OPERSTATE`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperState {
    #[default]
    Unknown,
    NotPresent,
    Down,
    LowerLayerDown,
    Testing,
    Dormant,
    Up,
}

impl OperState {
    /// The iproute2 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OperState::Unknown => "UNKNOWN",
            OperState::NotPresent => "NOTPRESENT",
            OperState::Down => "DOWN",
            OperState::LowerLayerDown => "LOWERLAYERDOWN",
            OperState::Testing => "TESTING",
            OperState::Dormant => "DORMANT",
            OperState::Up => "UP",
        }
    }
}

/// One network interface.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    /// `IFF_UP`: the administrator set the link up.
    #[serde(default)]
    pub admin_up: bool,
    #[serde(default)]
    pub oper_state: OperState,
    /// `IFLA_CARRIER`, when the kernel reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The bridge, bond or OVS datapath this link is enslaved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// The lower device (`IFLA_LINK`) of a VLAN, macvlan, macvtap or VXLAN link in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub veth_peer: Option<VethPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<VlanInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_port: Option<BondPortInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<TapInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<BridgeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_port: Option<BridgePortInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<MacvlanInfo>,
    /// The root qdisc kind (`noqueue`, `htb`, `tbf`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdisc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default)]
    pub stats: LinkStats,
}

fn default_mtu() -> u32 {
    1500
}

impl Link {
    /// A minimal link of the given kind, up, MTU 1500: the starting point for fixtures and tests.
    pub fn new(index: u32, name: &str, kind: LinkKind) -> Link {
        Link {
            index,
            name: name.to_string(),
            kind,
            admin_up: true,
            oper_state: OperState::Up,
            carrier: Some(true),
            mtu: 1500,
            mac: None,
            master: None,
            parent: None,
            veth_peer: None,
            vlan: None,
            bond: None,
            bond_port: None,
            tap: None,
            bridge: None,
            bridge_port: None,
            vxlan: None,
            macvlan: None,
            qdisc: None,
            alias: None,
            stats: LinkStats::default(),
        }
    }

    /// True when the link can pass traffic: administratively up and not operationally down.
    ///
    /// `UNKNOWN` counts as up: taps without a reader-aware driver, loopback and tunnels report it.
    pub fn is_usable(&self) -> bool {
        self.admin_up
            && !matches!(
                self.oper_state,
                OperState::Down | OperState::LowerLayerDown | OperState::NotPresent
            )
    }

    /// A short state word for tables: `up`, `down` (admin), or the operational state.
    pub fn state_word(&self) -> String {
        if !self.admin_up {
            "down".to_string()
        } else if self.is_usable() {
            "up".to_string()
        } else {
            format!("up/{}", self.oper_state.as_str().to_lowercase())
        }
    }
}

/// The other end of a veth pair.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VethPeer {
    /// The peer's ifindex in its own namespace.
    pub index: u32,
    /// The peer namespace's id as seen from this namespace (`IFLA_LINK_NETNSID`); absent when
    /// the peer lives in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netnsid: Option<i32>,
    /// The peer namespace's name under /run/netns, when kvmnet could match it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The peer's interface name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An 802.1Q VLAN sub-interface.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VlanInfo {
    pub id: u16,
    /// `802.1Q` or `802.1ad`.
    #[serde(default = "default_vlan_protocol")]
    pub protocol: String,
}

fn default_vlan_protocol() -> String {
    "802.1Q".to_string()
}

/// A bonding master.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BondInfo {
    /// `balance-rr`, `active-backup`, `balance-xor`, `broadcast`, `802.3ad`, `balance-tlb`,
    /// `balance-alb`.
    pub mode: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miimon_ms: Option<u32>,
    /// 802.3ad: the aggregator's partner MAC; all zeroes means LACP never negotiated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_partner_mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_num_ports: Option<u16>,
}

/// A bond member's state.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BondPortInfo {
    /// `active` or `backup`.
    pub state: String,
    /// `up`, `going-down`, `down`, ...
    pub mii_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_failure_count: Option<u32>,
}

/// tun/tap details (`IFLA_TUN_*`) and who holds the device open.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct TapInfo {
    #[serde(default)]
    pub multi_queue: bool,
    #[serde(default)]
    pub vnet_hdr: bool,
    #[serde(default)]
    pub persist: bool,
    /// `IFF_NO_PI` unset: packets carry the 4-byte tun_pi header.
    #[serde(default)]
    pub packet_info: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u32>,
    /// Processes with the tap's file descriptor open (QEMU, usually).
    #[serde(default)]
    pub holders: Vec<ProcessRef>,
}

/// A process, by PID and command name.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub name: String,
}

/// Linux bridge settings.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct BridgeInfo {
    /// 0 = STP off, 1 = kernel STP, 2 = user-space STP.
    #[serde(default)]
    pub stp_state: u32,
    #[serde(default)]
    pub vlan_filtering: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pvid: Option<u16>,
    /// Forward delay in centiseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_delay_cs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing_time_cs: Option<u32>,
    /// Per-bridge `nf_call_iptables` option: br_netfilter runs for this bridge even when the
    /// global sysctl is 0.
    #[serde(default)]
    pub nf_call_iptables: bool,
    #[serde(default)]
    pub nf_call_ip6tables: bool,
    #[serde(default)]
    pub nf_call_arptables: bool,
    /// With `vlan_filtering`: the VLANs of the bridge device itself (`bridge vlan ... self`),
    /// which decide what the host's own address on the bridge reaches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub self_vlans: Vec<BridgeVlan>,
}

/// A bridge VLAN membership (`bridge vlan show`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BridgeVlan {
    pub vid: u16,
    /// Untagged frames entering the port are classified into this VLAN.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untagged: bool,
}

/// The VLAN untagged frames from a member with these memberships are classified into.
pub fn pvid_of(vlans: &[BridgeVlan]) -> Option<u16> {
    vlans.iter().find(|v| v.pvid).map(|v| v.vid)
}

impl BridgeInfo {
    /// True when any spanning tree protocol runs on the bridge.
    pub fn stp_enabled(&self) -> bool {
        self.stp_state != 0
    }
}

/// The STP state of a bridge port (`BR_STATE_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortState {
    Disabled,
    Listening,
    Learning,
    #[default]
    Forwarding,
    Blocking,
}

impl PortState {
    /// The iproute2 spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Disabled => "disabled",
            PortState::Listening => "listening",
            PortState::Learning => "learning",
            PortState::Forwarding => "forwarding",
            PortState::Blocking => "blocking",
        }
    }
}

/// A bridge port's settings and state.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct BridgePortInfo {
    #[serde(default)]
    pub state: PortState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    #[serde(default = "yes")]
    pub learning: bool,
    #[serde(default = "yes")]
    pub unicast_flood: bool,
    #[serde(default)]
    pub hairpin: bool,
    #[serde(default)]
    pub isolated: bool,
    /// With the bridge's `vlan_filtering`: the port's VLANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<BridgeVlan>,
}

fn yes() -> bool {
    true
}

/// A VXLAN tunnel endpoint.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct VxlanInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// macvlan / macvtap mode.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct MacvlanInfo {
    /// `private`, `vepa`, `bridge`, `passthru`, `source`.
    pub mode: String,
}

/// Interface counters (`IFLA_STATS64`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LinkStats {
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    #[serde(default)]
    pub rx_packets: u64,
    #[serde(default)]
    pub tx_packets: u64,
    #[serde(default)]
    pub rx_errors: u64,
    #[serde(default)]
    pub tx_errors: u64,
    #[serde(default)]
    pub rx_dropped: u64,
    #[serde(default)]
    pub tx_dropped: u64,
}
