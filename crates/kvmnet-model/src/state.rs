//! `HostState`: one host's (or one network namespace's) whole network picture, the only shape
//! the collection, reasoning and rendering layers exchange. Lookups shared by every reader live
//! here too.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::ip::{
    Address, FdbEntry, ListenSocket, Neighbour, PolicyRule, Qdisc, Route, RT_TABLE_MAIN,
};
use crate::link::{Link, LinkKind};
use crate::network::Network;
use crate::nft::NftRuleset;
use crate::sysctl::Sysctls;
use crate::vm::Vm;

/// The snapshot format version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Something kvmnet could not read; the rest of the state is still valid.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CollectionWarning {
    /// What was being read: `nftables`, `libvirt`, `sysctl`, `qemu`, `netns`, ...
    pub source: String,
    pub message: String,
}

/// The host's resolver configuration.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Resolv {
    #[serde(default)]
    pub nameservers: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// The file the values came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The network state of one host or namespace.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct HostState {
    pub schema_version: u32,
    #[serde(default)]
    pub hostname: String,
    /// The network namespace collected (`None`: the collector's own namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// When the state was collected, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub addresses: Vec<Address>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub neighbours: Vec<Neighbour>,
    #[serde(default)]
    pub fdb: Vec<FdbEntry>,
    #[serde(default)]
    pub qdiscs: Vec<Qdisc>,
    #[serde(default)]
    pub sysctls: Sysctls,
    #[serde(default)]
    pub nftables: NftRuleset,
    #[serde(default)]
    pub resolv: Resolv,
    #[serde(default)]
    pub sockets: Vec<ListenSocket>,
    #[serde(default)]
    pub vms: Vec<Vm>,
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Open vSwitch, when it manages bridges here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs: Option<crate::ovs::OvsState>,
    #[serde(default)]
    pub collection_warnings: Vec<CollectionWarning>,
}

impl Default for HostState {
    fn default() -> Self {
        HostState {
            schema_version: SCHEMA_VERSION,
            hostname: String::new(),
            netns: None,
            collected_at: None,
            kernel: None,
            links: vec![],
            addresses: vec![],
            routes: vec![],
            rules: vec![],
            neighbours: vec![],
            fdb: vec![],
            qdiscs: vec![],
            sysctls: Sysctls::default(),
            nftables: NftRuleset::default(),
            resolv: Resolv::default(),
            sockets: vec![],
            vms: vec![],
            networks: vec![],
            ovs: None,
            collection_warnings: vec![],
        }
    }
}

impl HostState {
    /// Looks up a link by name.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Looks up a link by ifindex.
    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// The addresses of one interface.
    pub fn addresses_of<'a>(&'a self, ifname: &'a str) -> impl Iterator<Item = &'a Address> + 'a {
        self.addresses.iter().filter(move |a| a.ifname == ifname)
    }

    /// The links enslaved to a master (bridge ports, bond members).
    pub fn ports_of<'a>(&'a self, master: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links
            .iter()
            .filter(move |l| l.master.as_deref() == Some(master))
    }

    /// The bridges on the host.
    pub fn bridges(&self) -> impl Iterator<Item = &Link> {
        self.links.iter().filter(|l| l.kind == LinkKind::Bridge)
    }

    /// The default route of the main table for a family (lowest metric first).
    pub fn default_route(&self, ipv6: bool) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| {
                r.table == RT_TABLE_MAIN && r.is_default() && r.dst.addr().is_ipv6() == ipv6
            })
            .filter(|r| matches!(r.kind, crate::ip::RouteKind::Unicast))
            .min_by_key(|r| r.metric.unwrap_or(0))
    }

    /// Which local interface owns an address.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&Address> {
        self.addresses.iter().find(|a| a.address == ip)
    }

    /// Looks up a VM by name.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The VM and vNIC index whose host-side device is `dev`.
    pub fn vnic_by_dev(&self, dev: &str) -> Option<(&Vm, usize)> {
        self.vms.iter().find_map(|vm| {
            vm.vnics
                .iter()
                .position(|n| n.host_dev.as_deref() == Some(dev))
                .map(|i| (vm, i))
        })
    }

    /// Looks up a network by name.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The network whose bridge is `bridge`.
    pub fn network_on_bridge(&self, bridge: &str) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| n.bridge.as_deref() == Some(bridge))
    }

    /// Records a warning about something that could not be read.
    pub fn warn(&mut self, source: &str, message: impl Into<String>) {
        self.collection_warnings.push(CollectionWarning {
            source: source.to_string(),
            message: message.into(),
        });
    }
}
