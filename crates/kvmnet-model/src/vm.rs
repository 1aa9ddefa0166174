//! Virtual machines and their vNICs: libvirt domains, bare QEMU processes and namespace guests
//! (a network namespace joined to the host by a veth), plus what is known of each guest's own
//! network view. Pure data; no I/O.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ip::{Neighbour, Route};
use crate::types::MacAddr;

/// Where kvmnet found a VM.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmSource {
    Libvirt,
    Qemu,
    Netns,
}

impl VmSource {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VmSource::Libvirt => "libvirt",
            VmSource::Qemu => "qemu",
            VmSource::Netns => "netns",
        }
    }
}

/// A VM's run state.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    ShutOff,
    Crashed,
    #[default]
    Unknown,
}

impl VmState {
    /// Maps `virsh list` / domain status text.
    pub fn from_virsh(s: &str) -> VmState {
        match s.trim() {
            "running" | "idle" | "in shutdown" | "blocked" => VmState::Running,
            "paused" | "pmsuspended" => VmState::Paused,
            "shut off" | "shutoff" => VmState::ShutOff,
            "crashed" => VmState::Crashed,
            _ => VmState::Unknown,
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShutOff => "shut off",
            VmState::Crashed => "crashed",
            VmState::Unknown => "unknown",
        })
    }
}

/// How a vNIC is connected (libvirt `<interface type=...>`, or `veth` for namespace guests).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VnicType {
    /// Through a libvirt network.
    Network,
    /// Directly into a host bridge.
    Bridge,
    /// macvtap on a host device.
    Direct,
    /// An unmanaged tap.
    #[default]
    Ethernet,
    /// User-mode networking (slirp/passt): no host device.
    User,
    Vhostuser,
    Hostdev,
    /// A veth leading into a namespace guest.
    Veth,
    Other,
}

/// Where a guest address was learned.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddrOrigin {
    /// A DHCP lease (libvirt's or kvmnet's dnsmasq).
    Lease,
    /// The host's neighbour table (ARP/NDP) matched by MAC.
    Neigh,
    /// The QEMU guest agent.
    Agent,
    /// Read from the guest's network namespace.
    Netns,
    /// Configured statically (declared DHCP host, kvmnet desired state).
    Config,
}

/// A guest address with its origin.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GuestAddr {
    pub address: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    pub origin: AddrOrigin,
}

/// A bandwidth limit (libvirt `<bandwidth>`): kilobytes per second and kilobytes.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Rate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_kbps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_kbps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_kb: Option<u64>,
}

/// Inbound and outbound limits of a vNIC.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<Rate>,
}

/// A virtual NIC as configured (domain XML, QEMU command line) and as found on the host.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Vnic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The host-side device: tap, veth or macvtap name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev: Option<String>,
    /// `virtio`, `e1000`, `e1000e`, `rtl8139`, ... (`veth` for namespace guests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub iface_type: VnicType,
    /// The libvirt network this vNIC is configured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The bridge this vNIC is configured to join (domain XML or network definition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_bridge: Option<String>,
    /// For `direct` (macvtap): the host device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_dev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// VLAN tags (`<vlan><tag id=.../></vlan>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlan_tags: Vec<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vlan_trunk: bool,
    /// Configured link state (`<link state='up|down'/>`); `None` when not set (up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_up: Option<bool>,
    /// vhost-net in use (`<driver name='vhost'>` / `vhost=on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filterref: Option<String>,
    /// `<virtualport type=...>` (e.g. `openvswitch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtualport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portgroup: Option<String>,
    /// The interface name inside the guest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ifname: Option<String>,
    /// Guest addresses, as `virsh domifaddr` would find them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GuestAddr>,
}

/// One interface as the guest sees it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GuestInterface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
    /// Addresses with prefix lengths.
    #[serde(default)]
    pub addresses: Vec<ipnet::IpNet>,
}

/// Where the guest's own view came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestSource {
    Netns,
    Agent,
}

/// The guest's own network view: interfaces, routes, resolvers, neighbours.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GuestView {
    pub source: GuestSource,
    #[serde(default)]
    pub interfaces: Vec<GuestInterface>,
    /// Routes (the main table) when the source can report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Route>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<IpAddr>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<Neighbour>,
}

/// A virtual machine (or a namespace guest standing in for one).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub source: VmSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// For namespace guests: the namespace name under /run/netns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default)]
    pub vnics: Vec<Vnic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestView>,
    /// Number of virtual CPUs, when known (tuning advice for multiqueue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// The VM's QEMU guest agent channel, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentChannel>,
}

/// How the QEMU guest agent of a VM is reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentChannel {
    /// The host-side unix socket (a bare QEMU's `-chardev socket,path=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// libvirt owns the channel (it holds the socket): ask libvirt
    /// (`virsh qemu-agent-command`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub libvirt: bool,
    /// Whether an agent in the guest is connected (libvirt's `state='connected'`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
}
