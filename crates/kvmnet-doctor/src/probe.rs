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
    let _ = skipped;
    // a VM whose path already failed in the simulation: its failed probes follow from that
    let traced_root = |vm: &str, out: &[Finding]| -> Option<String> {
        out.iter()
            .find(|f| {
                f.severity == Severity::Error
                    && f.caused_by.is_none()
                    && f.affects.iter().any(|a| a == vm)
            })
            .map(|f| f.code.clone())
    };
    for p in &cx.opts.probes {
        if p.from != "host" && !cx.selected(&p.from) {
            continue;
        }
        if p.ok {
            continue;
        }
        // path MTU says nothing when the target does not answer small packets either
        if p.kind == ProbeKind::PathMtu
            && cx.opts.probes.iter().any(|q| {
                q.from == p.from && q.kind == ProbeKind::Ping && q.target == p.target && !q.ok
            })
        {
            continue;
        }
        let ev = format!(
            "probe {:?} from {} to {}{}: {}",
            p.kind,
            p.from,
            p.target,
            p.port.map(|x| format!(":{x}")).unwrap_or_default(),
            p.detail
        );
        let f = match p.kind {
            ProbeKind::Dad => Finding::new("ip-conflict", Severity::Error, Layer::Guest, format!("{} is in use by another machine ({})", p.target, p.macs.join(", ")))
                .subject([p.from.clone(), p.target.to_string()])
                .impact("two machines answer for one address")
                .commands(["give one of them another address"]),
            ProbeKind::Arp | ProbeKind::Ping if Some(p.target) != cx.target || p.kind == ProbeKind::Arp => {
                Finding::new("gateway-unreachable", Severity::Error, Layer::Guest, format!("{}: {} does not answer ({})", p.from, p.target, if p.kind == ProbeKind::Arp { "ARP" } else { "ping" }))
                    .subject([p.from.clone(), p.target.to_string()])
                    .impact("the guest cannot reach its gateway")
            }
            ProbeKind::TcpConnect if p.detail.contains("refused") => Finding::new("port-closed", Severity::Error, Layer::Guest, format!("{}: {} port {} refuses connections", p.from, p.target, p.port.unwrap_or(0)))
                .subject([p.from.clone(), format!("{}:{}", p.target, p.port.unwrap_or(0))])
                .impact("the target is reachable, but nothing listens on the port (or a firewall rejects with a TCP reset)")
                .commands(["check the service on the target, or a reject rule on the way"]),
            ProbeKind::Arp | ProbeKind::Ping | ProbeKind::TcpConnect => Finding::new("target-unreachable", Severity::Error, Layer::Guest, format!("{}: {}{} does not answer", p.from, p.target, p.port.map(|x| format!(" port {x}")).unwrap_or_default()))
                .subject([p.from.clone(), p.target.to_string()])
                .impact("the probe failed although the host's configuration shows no cause: look beyond the host (upstream, the guest's own firewall, the service)"),
            ProbeKind::PathMtu => {
                let discoverable = p.detail.contains("fragmentation needed");
                Finding::new(
                    "mtu-mismatch",
                    if discoverable { Severity::Warning } else { Severity::Error },
                    Layer::Virtual,
                    format!("{}: full-size packets to {} {}{}", p.from, p.target, if discoverable { "need path MTU discovery" } else { "are lost" }, p.size.map(|s| format!(" (largest that passed: {s} bytes)")).unwrap_or_default()),
                )
                .subject([p.from.clone(), p.target.to_string()])
                .impact(if discoverable { "works only while ICMP fragmentation-needed reaches the guest" } else { "transfers with full-size packets stall (a black hole)" })
            }
        };
        // the same fault already found from the configuration: the probe is evidence
        if let Some(e) = out
            .iter_mut()
            .find(|e| e.code == f.code && e.affects.contains(&p.from))
        {
            e.evidence.push(ev);
            continue;
        }
        let mut f = f.evidence([ev]);
        if p.kind != ProbeKind::Dad {
            f.caused_by = traced_root(&p.from, out);
        }
        out.push(if p.from == "host" {
            f
        } else {
            f.affects([p.from.clone()])
        });
    }
}
