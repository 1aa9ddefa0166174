//! Open vSwitch as its database describes it (RFC 7047 tables Bridge, Port, Interface, Mirror,
//! Controller), plus whether its daemons run and which OpenFlow rules are not the default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The Open vSwitch instance serving a namespace.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct OvsState {
    /// The database socket it was read from.
    pub db: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// ovsdb-server answers (false: bridges may exist in the kernel but nothing manages them).
    pub db_running: bool,
    /// ovs-vswitchd runs for this database.
    pub vswitchd_running: bool,
    #[serde(default)]
    pub bridges: Vec<OvsBridge>,
}

impl OvsState {
    /// The bridge and port an interface belongs to.
    pub fn port_of(&self, ifname: &str) -> Option<(&OvsBridge, &OvsPort)> {
        self.bridges.iter().find_map(|b| {
            b.ports
                .iter()
                .find(|p| p.interfaces.iter().any(|i| i.name == ifname))
                .map(|p| (b, p))
        })
    }

    /// The bridge of this name.
    pub fn bridge(&self, name: &str) -> Option<&OvsBridge> {
        self.bridges.iter().find(|b| b.name == name)
    }

    /// The host's interfaces (internal ports) of `bridge` that carry VLAN `vid`.
    pub fn host_ports(&self, bridge: &str, vid: u16) -> Vec<&str> {
        self.bridge(bridge)
            .map(|b| {
                b.ports
                    .iter()
                    .filter(|p| p.carries(vid))
                    .flat_map(|p| p.interfaces.iter().filter(|i| i.kind == "internal"))
                    .map(|i| i.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// An OVS bridge.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct OvsBridge {
    pub name: String,
    /// `system` (kernel) or `netdev` (userspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_type: Option<String>,
    /// `standalone` or `secure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
    #[serde(default)]
    pub ports: Vec<OvsPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// OpenFlow rules other than the default `priority=0 actions=NORMAL`, when they could be
    /// read (None: not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_flows: Option<Vec<String>>,
}

/// A port: one interface, or several for a bond.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct OvsPort {
    pub name: String,
    /// Access VLAN (or the native VLAN of a native-tagged/untagged trunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    /// VLANs a trunk carries (empty with no tag: every VLAN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<u16>,
    /// `access`, `trunk`, `native-tagged`, `native-untagged`, `dot1q-tunnel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_mode: Option<String>,
    /// `active-backup`, `balance-slb`, `balance-tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_mode: Option<String>,
    /// `active`, `passive` or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<OvsInterface>,
}

impl OvsPort {
    /// True for a bond (more than one interface).
    pub fn is_bond(&self) -> bool {
        self.interfaces.len() > 1
    }

    /// The VLAN untagged frames from this port belong to.
    pub fn native_vlan(&self) -> u16 {
        self.tag.unwrap_or(0)
    }

    /// Whether frames of VLAN `vid` may leave through this port.
    pub fn carries(&self, vid: u16) -> bool {
        match self.vlan_mode.as_deref() {
            Some("access") => self.tag.unwrap_or(0) == vid,
            Some("trunk") => self.trunks.is_empty() || self.trunks.contains(&vid),
            Some("native-tagged") | Some("native-untagged") => {
                self.tag == Some(vid) || self.trunks.is_empty() || self.trunks.contains(&vid)
            }
            _ => match self.tag {
                Some(t) => t == vid,
                None => self.trunks.is_empty() || self.trunks.contains(&vid),
            },
        }
    }

    /// A trunk (tags on the wire) rather than an access port.
    pub fn is_trunk(&self) -> bool {
        match self.vlan_mode.as_deref() {
            Some("access") => false,
            Some(_) => true,
            None => self.tag.is_none(),
        }
    }
}

/// An interface of a port.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct OvsInterface {
    pub name: String,
    /// `""`/`system` (a kernel device), `internal`, `tap`, `patch`, `vxlan`, ...
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofport: Option<i64>,
    /// `up` or `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Why OVS could not open the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// LACP negotiated on this member (bonds with LACP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp_current: Option<bool>,
    /// `attached-mac`, `iface-id`, `vm-uuid` (set by libvirt) and others.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub statistics: BTreeMap<String, u64>,
}

impl OvsInterface {
    /// Link and admin state both up (unknown counts as up).
    pub fn is_up(&self) -> bool {
        self.link_state.as_deref() != Some("down") && self.admin_state.as_deref() != Some("down")
    }
}
