//! The desired-state schema, as written in YAML. Every value a semantic check may point at is
//! `Spanned`, so errors name its file, line and column.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
pub use serde_saphyr::Spanned;

/// One configuration file (a directory's files are merged).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub networks: Vec<NetworkDef>,
    #[serde(default)]
    pub vnics: Vec<VnicDef>,
    #[serde(default)]
    pub port_forwards: Vec<PortForwardDef>,
    #[serde(default)]
    pub firewall: Vec<FirewallDef>,
}

/// What kind of network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// A bridge with the host's uplink port(s) in it: guests sit on the physical LAN.
    Bridged,
    /// Own bridge and subnet, masqueraded out of the uplink.
    Nat,
    /// Own bridge and subnet, forwarded without NAT (the upstream routes the subnet back).
    Routed,
    /// Own bridge and subnet, nothing forwarded: guests talk to each other and the host.
    Isolated,
    /// An Open vSwitch bridge: VLANs (each with an optional host address), an uplink trunk
    /// (a bond when it has several ports), VM ports with access tags.
    Ovs,
}

impl NetworkType {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Bridged => "bridged",
            NetworkType::Nat => "nat",
            NetworkType::Routed => "routed",
            NetworkType::Isolated => "isolated",
            NetworkType::Ovs => "ovs",
        }
    }
}

/// A network.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDef {
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<NetworkType>,
    /// The Linux bridge (created and owned by kvmnet unless it exists already).
    pub bridge: Spanned<String>,
    /// The guests' subnet (not for `bridged`, where the LAN has its own).
    #[serde(default)]
    pub subnet: Option<Spanned<IpNet>>,
    /// The host's address on the bridge, the guests' gateway (default: the subnet's first
    /// address). For `bridged`, an optional host address on the LAN, with its prefix.
    #[serde(default)]
    pub gateway: Option<Spanned<IpAddr>>,
    /// `nat`/`routed`: the interface traffic leaves by (default: the default route's).
    #[serde(default)]
    pub uplink: Option<Spanned<String>>,
    /// `bridged`: the host interface(s) put into the bridge.
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub mtu: Option<Spanned<u32>>,
    #[serde(default)]
    pub stp: Option<bool>,
    #[serde(default)]
    pub dhcp: Option<Spanned<DhcpDef>>,
    #[serde(default)]
    pub dns: Option<DnsDef>,
    /// An optional IPv6 subnet, with the host's address: `fd00:10::1/64`.
    #[serde(default)]
    pub ipv6: Option<Spanned<IpNet>>,
    /// `ovs`: the datapath, `system` (the kernel's, default) or `netdev` (userspace).
    #[serde(default)]
    pub datapath: Option<Spanned<String>>,
    /// `ovs`: the VLANs of the network.
    #[serde(default)]
    pub vlans: Vec<VlanDef>,
    /// `ovs`: how the uplink `ports` are bonded when there are several.
    #[serde(default)]
    pub bond: Option<BondDef>,
}

/// A VLAN of an `ovs` network; with `gateway` the host gets an internal port
/// `<bridge>.<id>` with that address.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlanDef {
    pub id: Spanned<u32>,
    #[serde(default)]
    pub subnet: Option<Spanned<IpNet>>,
    #[serde(default)]
    pub gateway: Option<Spanned<IpAddr>>,
}

/// Bond settings of an `ovs` uplink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BondDef {
    /// `active-backup` (default), `balance-slb` or `balance-tcp` (needs LACP).
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// `active`, `passive` or `off` (default).
    #[serde(default)]
    pub lacp: Option<Spanned<String>>,
}

/// DHCP served by a dnsmasq kvmnet starts and supervises.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpDef {
    pub start: Spanned<IpAddr>,
    pub end: Spanned<IpAddr>,
    /// Lease time in seconds, or with a unit: `90m`, `12h`.
    #[serde(default)]
    pub lease_time: Option<Spanned<String>>,
    #[serde(default)]
    pub hosts: Vec<DhcpHostDef>,
}

/// A static lease.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpHostDef {
    pub mac: Spanned<String>,
    pub ip: Spanned<IpAddr>,
    #[serde(default)]
    pub name: Option<String>,
}

/// DNS served to the guests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDef {
    #[serde(default)]
    pub forwarders: Vec<Spanned<IpAddr>>,
}

/// A guest's vNIC: its host-side device, attached to a network.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnicDef {
    /// The VM's name (labels, firewall and port-forward references).
    pub vm: Spanned<String>,
    /// The host-side device (tap or veth) as QEMU, libvirt or the container runtime names it.
    /// Without it kvmnet finds the running VM named `vm` (a libvirt domain or a QEMU
    /// process) and its NIC with `mac` (or its only NIC) when it plans.
    #[serde(default)]
    pub tap: Option<Spanned<String>>,
    pub network: Spanned<String>,
    #[serde(default)]
    pub mac: Option<Spanned<String>>,
    /// The guest's address (required for anti-spoofing and firewall rules by VM).
    #[serde(default)]
    pub ip: Option<Spanned<IpAddr>>,
    #[serde(default)]
    pub mtu: Option<Spanned<u32>>,
    #[serde(default)]
    pub vlan: Option<Spanned<u32>>,
    #[serde(default)]
    pub qos: Option<Spanned<QosDef>>,
    /// Only the declared MAC and IP may leave the tap.
    #[serde(default)]
    pub antispoof: bool,
}

/// Rate limiting toward the guest (a `tbf` qdisc on the tap).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosDef {
    /// `100mbit`, `1gbit`, `500kbit`, or bits per second.
    pub rate: Spanned<String>,
    /// `64k`, `1m`, or bytes (default: rate / 250, at least 16k).
    #[serde(default)]
    pub burst: Option<Spanned<String>>,
}

/// A port forward from the host into a guest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForwardDef {
    #[serde(default = "default_proto")]
    pub proto: Spanned<String>,
    pub host_port: Spanned<u32>,
    /// The guest's address.
    pub to: Spanned<IpAddr>,
    /// The guest's port (default: the host port).
    #[serde(default)]
    pub to_port: Option<Spanned<u32>>,
    /// Source prefixes allowed (default: any).
    #[serde(default)]
    pub from: Vec<Spanned<IpNet>>,
    /// Also forward connections from guests to the host's own address (NAT loopback).
    #[serde(default)]
    pub hairpin: bool,
}

fn default_proto() -> Spanned<String> {
    let here = serde_saphyr::Location::UNKNOWN;
    Spanned::new("tcp".into(), here, here)
}

/// Firewall rules for routed traffic toward a network's guests, or one VM, from outside its
/// network (guests of one network talk to each other freely).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallDef {
    /// The network whose guests this protects.
    #[serde(default)]
    pub network: Option<Spanned<String>>,
    /// Or one VM (by its `vnics` name).
    #[serde(default)]
    pub vm: Option<Spanned<String>>,
    /// What happens to traffic toward the guests that no rule allows: `accept` or `drop`.
    #[serde(default)]
    pub policy: Option<Spanned<String>>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

/// One allow/deny rule for traffic toward the guests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub action: Spanned<String>,
    #[serde(default)]
    pub proto: Option<Spanned<String>>,
    /// Destination ports: numbers or `from-to` ranges.
    #[serde(default)]
    pub ports: Vec<Spanned<PortSpec>>,
    #[serde(default)]
    pub from: Vec<Spanned<IpNet>>,
}

/// A port or a range.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    One(u32),
    Range(String),
}
