//! Virtual networks: libvirt networks and plain bridges with their subnets, DHCP, DNS and port
//! forwards. Pure data; no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::types::MacAddr;

/// Where a network definition came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkOrigin {
    Libvirt,
    /// Inferred from a host bridge and its addresses.
    Bridge,
    Kvmnet,
}

/// How a network reaches the outside (libvirt `<forward mode=...>`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardMode {
    Nat,
    Route,
    Open,
    Bridge,
    Private,
    Vepa,
    Passthrough,
    Hostdev,
    /// No `<forward>`: guests talk to each other and the host only.
    Isolated,
    /// Not declared anywhere (a plain bridge): what the host does with its traffic is decided
    /// by routes and rules, which doctor and trace evaluate.
    #[default]
    Unknown,
}

impl ForwardMode {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::Nat => "nat",
            ForwardMode::Route => "route",
            ForwardMode::Open => "open",
            ForwardMode::Bridge => "bridge",
            ForwardMode::Private => "private",
            ForwardMode::Vepa => "vepa",
            ForwardMode::Passthrough => "passthrough",
            ForwardMode::Hostdev => "hostdev",
            ForwardMode::Isolated => "isolated",
            ForwardMode::Unknown => "unknown",
        }
    }
}

/// A static DHCP host entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DhcpHost {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

/// A DHCP range.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DhcpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

/// One IP subnet of a network, with the host's gateway address on it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NetworkIp {
    /// The gateway address with the subnet's prefix, e.g. `10.0.0.1/24`.
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_ranges: Vec<DhcpRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhcp_hosts: Vec<DhcpHost>,
}

/// A port forward: traffic to a host port is DNATed to a guest.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PortForward {
    /// `tcp` or `udp`.
    pub proto: String,
    pub host_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_address: Option<IpAddr>,
    pub guest_ip: IpAddr,
    pub guest_port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<IpNet>,
}

/// DNS settings of a network.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct NetworkDns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarders: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<(IpAddr, Vec<String>)>,
}

/// A VLAN assignment in a network or port group.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PortGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlan_tags: Vec<u16>,
    #[serde(default)]
    pub default: bool,
}

/// A virtual network.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub origin: NetworkOrigin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    #[serde(default)]
    pub forward: ForwardMode,
    /// The uplink the network forwards through (`<forward dev=...>`), when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_dev: Option<String>,
    /// Devices of a `bridge`/`passthrough`/`private`/`vepa` forward pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ports: Option<(u16, u16)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default)]
    pub ips: Vec<NetworkIp>,
    #[serde(default)]
    pub dns: NetworkDns,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<PortForward>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtualport: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlan_tags: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portgroups: Vec<PortGroup>,
}

impl Network {
    /// A network with only a name and origin set.
    pub fn new(name: &str, origin: NetworkOrigin) -> Network {
        Network {
            name: name.to_string(),
            origin,
            uuid: None,
            active: None,
            autostart: None,
            bridge: None,
            forward: ForwardMode::Unknown,
            forward_dev: None,
            forward_interfaces: vec![],
            nat_ports: None,
            mtu: None,
            domain: None,
            ips: vec![],
            dns: NetworkDns::default(),
            port_forwards: vec![],
            virtualport: None,
            vlan_tags: vec![],
            portgroups: vec![],
        }
    }

    /// The IPv4/IPv6 subnets of the network.
    pub fn subnets(&self) -> Vec<IpNet> {
        self.ips.iter().map(|ip| ip.address.trunc()).collect()
    }

    /// True when at least one subnet hands out DHCP leases.
    pub fn has_dhcp(&self) -> bool {
        self.ips
            .iter()
            .any(|ip| !ip.dhcp_ranges.is_empty() || !ip.dhcp_hosts.is_empty())
    }
}
