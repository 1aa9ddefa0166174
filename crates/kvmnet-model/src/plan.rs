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
        }
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
