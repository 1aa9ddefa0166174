//! Plans: typed, ordered changes to a host, each with its inverse, executed by the single apply
//! path (journal, verify, rollback). Doctor expresses its safe fixes as plan steps; the
//! configuration planner produces them from a desired state. Pure data.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One change.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum PlanStep {
    /// Write a sysctl (`net.ipv4.ip_forward` style key).
    SetSysctl { key: String, value: String },
    /// Set a link administratively up.
    LinkUp { ifname: String },
    /// Set a link administratively down.
    LinkDown { ifname: String },
    /// Enslave a link to a bridge.
    SetMaster { ifname: String, master: String },
    /// Release a link from its master.
    NoMaster { ifname: String },
    /// Change a link's MTU.
    SetMtu { ifname: String, mtu: u32 },
    /// Masquerade traffic from `subnet` leaving through `oifname`, in kvmnet's own nft table.
    AddMasquerade { subnet: IpNet, oifname: String },
    /// Remove a masquerade rule kvmnet added.
    DelMasquerade { subnet: IpNet, oifname: String },
    /// Create a Linux bridge (down; a later step sets it up).
    CreateBridge {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
        #[serde(default)]
        stp: bool,
    },
    /// Delete a link kvmnet created.
    DeleteLink { name: String },
    /// Turn a bridge's kernel STP on or off.
    SetBridgeStp { name: String, stp: bool },
    /// Add an address (with its prefix) to a link.
    AddAddress { ifname: String, address: IpNet },
    /// Remove an address from a link.
    DelAddress { ifname: String, address: IpNet },
    /// Replace one of kvmnet's own nftables tables as a whole, in one atomic transaction.
    ReplaceNftTable {
        family: String,
        name: String,
        /// The table's body as `nft -f` takes it (`table FAMILY NAME { ... }`).
        script: String,
    },
    /// Delete one of kvmnet's own nftables tables.
    DeleteNftTable { family: String, name: String },
    /// Shape traffic toward a guest: a `tbf` root qdisc on its tap.
    SetRateLimit {
        ifname: String,
        rate_bps: u64,
        burst_bytes: u32,
    },
    /// Remove the root qdisc kvmnet put on a tap (back to the kernel's default).
    DelRateLimit { ifname: String },
    /// Remove a neighbour (ARP/NDP) entry; the kernel resolves the address again.
    DelNeighbour {
        ifname: String,
        address: std::net::IpAddr,
    },
    /// Set a static neighbour entry (`nud permanent`, or `noarp`).
    SetNeighbour {
        ifname: String,
        address: std::net::IpAddr,
        lladdr: crate::MacAddr,
        #[serde(default)]
        noarp: bool,
    },
    /// Remove a bridge forwarding-database entry; the bridge learns the MAC again.
    DelFdb { mac: crate::MacAddr, ifname: String },
    /// Add a static bridge forwarding-database entry on a port.
    AddFdb {
        mac: crate::MacAddr,
        ifname: String,
        #[serde(default)]
        sticky: bool,
    },
    /// (Re)start the dnsmasq serving DHCP/DNS for a network, with this configuration.
    StartDhcp {
        network: String,
        bridge: String,
        config: String,
    },
    /// Stop the dnsmasq kvmnet runs for a network.
    StopDhcp { network: String },
    /// Create an Open vSwitch bridge (and its internal port of the same name).
    OvsAddBridge {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        datapath: Option<String>,
    },
    /// Delete an Open vSwitch bridge with its ports.
    OvsDelBridge { name: String },
    /// Add a port to an Open vSwitch bridge: one interface, several (a bond), or an internal
    /// port (a host interface of the switch).
    OvsAddPort {
        bridge: String,
        port: String,
        interfaces: Vec<String>,
        #[serde(default)]
        internal: bool,
        #[serde(default)]
        settings: OvsPortSettings,
    },
    /// Remove a port from an Open vSwitch bridge.
    OvsDelPort { bridge: String, port: String },
    /// Change a port's VLAN and bond settings.
    OvsSetPort {
        port: String,
        settings: OvsPortSettings,
    },
}

/// The VLAN and bond settings of an Open vSwitch port.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct OvsPortSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacp: Option<String>,
}

impl OvsPortSettings {
    fn describe(&self) -> String {
        let mut v = vec![];
        if let Some(t) = self.tag {
            v.push(format!("tag {t}"));
        }
        if !self.trunks.is_empty() {
            v.push(format!(
                "trunks {}",
                self.trunks
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if let Some(m) = &self.bond_mode {
            v.push(format!("bond {m}"));
        }
        if let Some(l) = &self.lacp {
            v.push(format!("lacp {l}"));
        }
        v.join(" ")
    }
}

impl PlanStep {
    /// A one-line description, as `plan` prints it.
    pub fn describe(&self) -> String {
        match self {
            PlanStep::SetSysctl { key, value } => format!("sysctl {key} = {value}"),
            PlanStep::LinkUp { ifname } => format!("link {ifname} up"),
            PlanStep::LinkDown { ifname } => format!("link {ifname} down"),
            PlanStep::SetMaster { ifname, master } => format!("link {ifname} master {master}"),
            PlanStep::NoMaster { ifname } => format!("link {ifname} nomaster"),
            PlanStep::SetMtu { ifname, mtu } => format!("link {ifname} mtu {mtu}"),
            PlanStep::AddMasquerade { subnet, oifname } => {
                format!("nft inet kvmnet: masquerade {subnet} out of {oifname}")
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                format!("nft inet kvmnet: remove masquerade {subnet} out of {oifname}")
            }
            PlanStep::CreateBridge { name, mtu, stp } => format!(
                "create bridge {name}{}{}",
                mtu.map(|m| format!(" mtu {m}")).unwrap_or_default(),
                if *stp { " stp on" } else { "" }
            ),
            PlanStep::DeleteLink { name } => format!("delete link {name}"),
            PlanStep::SetBridgeStp { name, stp } => {
                format!("bridge {name} stp {}", if *stp { "on" } else { "off" })
            }
            PlanStep::AddAddress { ifname, address } => format!("address {address} on {ifname}"),
            PlanStep::DelAddress { ifname, address } => {
                format!("remove address {address} from {ifname}")
            }
            PlanStep::ReplaceNftTable {
                family,
                name,
                script,
            } => format!(
                "nft table {family} {name}: load {} rule{}",
                count_rules(script),
                if count_rules(script) == 1 { "" } else { "s" }
            ),
            PlanStep::DeleteNftTable { family, name } => {
                format!("nft: delete table {family} {name}")
            }
            PlanStep::SetRateLimit {
                ifname,
                rate_bps,
                burst_bytes,
            } => format!(
                "rate limit toward {ifname}: {} burst {}",
                human_rate(*rate_bps),
                human_size(*burst_bytes)
            ),
            PlanStep::DelRateLimit { ifname } => format!("remove rate limit on {ifname}"),
            PlanStep::DelNeighbour { ifname, address } => {
                format!("remove neighbour entry {address} on {ifname}")
            }
            PlanStep::SetNeighbour {
                ifname,
                address,
                lladdr,
                noarp,
            } => format!(
                "neighbour {address} lladdr {lladdr} on {ifname} ({})",
                if *noarp { "noarp" } else { "permanent" }
            ),
            PlanStep::DelFdb { mac, ifname } => {
                format!("remove bridge fdb entry {mac} on {ifname}")
            }
            PlanStep::AddFdb {
                mac,
                ifname,
                sticky,
            } => format!(
                "bridge fdb {mac} on {ifname} static{}",
                if *sticky { " sticky" } else { "" }
            ),
            PlanStep::StartDhcp {
                network, bridge, ..
            } => format!("start DHCP/DNS (dnsmasq) for network {network} on {bridge}"),
            PlanStep::StopDhcp { network } => {
                format!("stop DHCP/DNS (dnsmasq) of network {network}")
            }
            PlanStep::OvsAddBridge { name, datapath } => format!(
                "ovs: create bridge {name}{}",
                datapath
                    .as_deref()
                    .map(|d| format!(" (datapath {d})"))
                    .unwrap_or_default()
            ),
            PlanStep::OvsDelBridge { name } => format!("ovs: delete bridge {name}"),
            PlanStep::OvsAddPort {
                bridge,
                port,
                interfaces,
                internal,
                settings,
            } => {
                let d = settings.describe();
                format!(
                    "ovs: add {}port {port} to {bridge}{}{}",
                    if *internal { "internal " } else { "" },
                    if interfaces.len() > 1 {
                        format!(" (bond of {})", interfaces.join(", "))
                    } else {
                        String::new()
                    },
                    if d.is_empty() { d } else { format!(" {d}") }
                )
            }
            PlanStep::OvsDelPort { bridge, port } => {
                format!("ovs: remove port {port} from {bridge}")
            }
            PlanStep::OvsSetPort { port, settings } => {
                let d = settings.describe();
                format!(
                    "ovs: set port {port} {}",
                    if d.is_empty() {
                        "untagged".to_string()
                    } else {
                        d
                    }
                )
            }
        }
    }
}

/// Rules in an nft script: lines inside chains that are not chain headers, sets or comments.
fn count_rules(script: &str) -> usize {
    script
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('#')
                && !l.starts_with("table ")
                && !l.starts_with("chain ")
                && !l.starts_with("type ")
                && !l.starts_with("set ")
                && !l.starts_with("elements ")
                && !l.starts_with("flags ")
                && *l != "}"
                && *l != "{"
        })
        .count()
}

/// `100 Mbit/s`-style rate.
pub fn human_rate(bps: u64) -> String {
    match bps {
        b if b >= 1_000_000_000 && b % 1_000_000_000 == 0 => {
            format!("{} Gbit/s", b / 1_000_000_000)
        }
        b if b >= 1_000_000 => format!("{} Mbit/s", b / 1_000_000),
        b if b >= 1_000 => format!("{} kbit/s", b / 1_000),
        b => format!("{b} bit/s"),
    }
}

/// `64 KiB`-style size.
pub fn human_size(bytes: u32) -> String {
    match bytes {
        b if b >= 1024 * 1024 && b % (1024 * 1024) == 0 => format!("{} MiB", b / 1024 / 1024),
        b if b >= 1024 && b % 1024 == 0 => format!("{} KiB", b / 1024),
        b => format!("{b} bytes"),
    }
}

/// One step as a JSON object (for journals).
pub fn to_json(step: &PlanStep) -> String {
    serde_json::to_string(step).unwrap_or_default()
}

/// Steps as a JSON array (for journals).
pub fn to_json_list(steps: &[PlanStep]) -> String {
    serde_json::to_string(steps).unwrap_or_default()
}
