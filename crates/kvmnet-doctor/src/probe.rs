//! Results of active probes (run by the probe layer, judged here).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::finding::{Finding, Layer, Severity};
use crate::Ctx;

/// What a probe tested.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// ARP request for an address (the gateway).
    Arp,
    /// ICMP echo.
    Ping,
    /// TCP connect.
    TcpConnect,
    /// Largest DF packet that got through.
    PathMtu,
    /// ARP duplicate-address detection for the guest's own address.
    Dad,
}

/// One probe's outcome.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProbeResult {
    /// `host` or the VM name.
    pub from: String,
    pub kind: ProbeKind,
    pub target: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub ok: bool,
    /// What was observed (replies, MACs, error text, bytes).
    pub detail: String,
    /// For DAD: the MACs that answered. For path MTU: the size that worked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub macs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

pub(crate) fn check(cx: &Ctx, out: &mut Vec<Finding>, skipped: &mut Vec<String>) {
    if cx.opts.probes.is_empty() {
        return;
    }
    for p in &cx.opts.probes {
        if p.from != "host" && !cx.selected(&p.from) {
            continue;
        }
        match (p.kind, p.ok) {
            (ProbeKind::Dad, false) => out.push(
                Finding::new(
                    "ip-conflict",
                    Severity::Error,
                    Layer::Guest,
                    format!(
                        "{} is in use by another machine ({})",
                        p.target,
                        p.macs.join(", ")
                    ),
                )
                .subject([p.from.clone(), p.target.to_string()])
                .evidence([format!(
                    "ARP duplicate-address detection from {}: {}",
                    p.from, p.detail
                )])
                .impact("two machines answer for one address")
                .commands(["give one of them another address"])
                .affects([p.from.clone()]),
            ),
            (ProbeKind::Arp, false) | (ProbeKind::Ping, false)
                if (Some(p.target) != cx.target || p.kind == ProbeKind::Arp)
                    && p.from != "host" =>
            {
                out.push(
                    Finding::new(
                        "gateway-unreachable",
                        Severity::Error,
                        Layer::Guest,
                        format!(
                            "{}: {} does not answer ({})",
                            p.from,
                            p.target,
                            if p.kind == ProbeKind::Arp {
                                "ARP"
                            } else {
                                "ping"
                            }
                        ),
                    )
                    .subject([p.from.clone(), p.target.to_string()])
                    .evidence([format!("probe {:?} from {}: {}", p.kind, p.from, p.detail)])
                    .impact("the guest cannot reach its gateway")
                    .affects([p.from.clone()]),
                );
            }
            (ProbeKind::PathMtu, false) if p.from != "host" => out.push(
                Finding::new(
                    "mtu-mismatch",
                    Severity::Error,
                    Layer::Virtual,
                    format!(
                        "{}: large packets to {} are lost{}",
                        p.from,
                        p.target,
                        p.size
                            .map(|s| format!(" (largest that passed: {s} bytes)"))
                            .unwrap_or_default()
                    ),
                )
                .subject([p.from.clone(), p.target.to_string()])
                .evidence([format!("DF probes from {}: {}", p.from, p.detail)])
                .impact("transfers with full-size packets stall")
                .affects([p.from.clone()]),
            ),
            _ => {}
        }
    }
    let _ = skipped;
}
