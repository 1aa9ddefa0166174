//! Metrics of a collected host in the Prometheus text format (0.0.4) and OpenMetrics 1.0.
//!
//! Cardinality is bounded by the host itself: per vNIC 10 series (labels vm, vnic, tap, bridge,
//! network), per bridge and uplink 6, per finding one (at most [`MAX_FINDINGS`]), per VM two.
//! vNIC counters are from the guest's point of view: `rx` is what the VM received (what its
//! tap transmitted).

use std::fmt::Write;

use kvmnet_doctor::Report;
use kvmnet_model::{HostState, Link, LinkKind, OperState};

/// At most this many `kvmnet_finding` series (the rest are counted in
/// `kvmnet_findings_dropped`).
pub const MAX_FINDINGS: usize = 500;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

struct Family {
    /// The name without `_total` for counters.
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: vec![],
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, v: f64) {
        self.samples.push((labels, v));
    }

    fn render(&self, out: &mut String, openmetrics: bool) {
        if self.samples.is_empty() {
            return;
        }
        let (ty, sample_name) = match (self.kind, openmetrics) {
            (Kind::Gauge, _) => ("gauge", self.name.to_string()),
            (Kind::Counter, _) => ("counter", format!("{}_total", self.name)),
        };
        let family_name = if openmetrics || self.kind == Kind::Gauge {
            self.name.to_string()
        } else {
            sample_name.clone()
        };
        let _ = writeln!(out, "# HELP {family_name} {}", self.help);
        let _ = writeln!(out, "# TYPE {family_name} {ty}");
        for (labels, v) in &self.samples {
            out.push_str(&sample_name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, val)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(val));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", num(*v));
        }
    }
}

/// What the exporter itself knows about its collections.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub collections: u64,
    pub collection_errors: u64,
    pub last_duration_s: f64,
    pub last_success_unix: f64,
    pub last_error: Option<String>,
}

fn up(l: &Link) -> f64 {
    f64::from(u8::from(
        l.admin_up && !matches!(l.oper_state, OperState::Down | OperState::LowerLayerDown),
    ))
}

/// Renders the metrics of `s` (with doctor's `report`) as (Prometheus text, OpenMetrics).
pub fn render(s: Option<&HostState>, report: Option<&Report>, meta: &Meta) -> (String, String) {
    let mut fams: Vec<Family> = vec![];
    let mut exp_up = Family::new(
        "kvmnet_up",
        Kind::Gauge,
        "1 when the last collection of the host succeeded",
    );
    exp_up.add(
        vec![],
        f64::from(u8::from(s.is_some() && meta.last_error.is_none())),
    );
    fams.push(exp_up);
    let mut c = Family::new(
        "kvmnet_collections",
        Kind::Counter,
        "Collections of the host's state",
    );
    c.add(vec![], meta.collections as f64);
    fams.push(c);
    let mut c = Family::new(
        "kvmnet_collection_errors",
        Kind::Counter,
        "Collections that failed",
    );
    c.add(vec![], meta.collection_errors as f64);
    fams.push(c);
    let mut g = Family::new(
        "kvmnet_collection_duration_seconds",
        Kind::Gauge,
        "How long the last collection took",
    );
    g.add(vec![], meta.last_duration_s);
    fams.push(g);
    let mut g = Family::new(
        "kvmnet_last_collection_timestamp_seconds",
        Kind::Gauge,
        "When the last successful collection finished (Unix time)",
    );
    g.add(vec![], meta.last_success_unix);
    fams.push(g);

    if let Some(s) = s {
        // per vNIC, from the guest's point of view
        let mut vrx = Family::new(
            "kvmnet_vnic_rx_bytes",
            Kind::Counter,
            "Bytes the VM received on this vNIC",
        );
        let mut vtx = Family::new(
            "kvmnet_vnic_tx_bytes",
            Kind::Counter,
            "Bytes the VM sent on this vNIC",
        );
        let mut vrxp = Family::new(
            "kvmnet_vnic_rx_packets",
            Kind::Counter,
            "Packets the VM received on this vNIC",
        );
        let mut vtxp = Family::new(
            "kvmnet_vnic_tx_packets",
            Kind::Counter,
            "Packets the VM sent on this vNIC",
        );
        let mut verr = Family::new(
            "kvmnet_vnic_errors",
            Kind::Counter,
            "Errors on the vNIC's host device, by direction as the VM sees it",
        );
        let mut vdrop = Family::new(
            "kvmnet_vnic_drops",
            Kind::Counter,
            "Drops on the vNIC's host device, by direction as the VM sees it",
        );
        let mut vup = Family::new(
            "kvmnet_vnic_up",
            Kind::Gauge,
            "1 when the vNIC's host device is up",
        );
        let mut vmtu = Family::new(
            "kvmnet_vnic_mtu_bytes",
            Kind::Gauge,
            "MTU of the vNIC's host device",
        );
        let mut vminfo = Family::new(
            "kvmnet_vm_info",
            Kind::Gauge,
            "A VM kvmnet sees, with where it comes from and its state",
        );
        for vm in &s.vms {
            vminfo.add(
                vec![
                    ("vm", vm.name.clone()),
                    ("source", vm.source.as_str().to_string()),
                    ("state", format!("{:?}", vm.state).to_lowercase()),
                ],
                1.0,
            );
            for (i, n) in vm.vnics.iter().enumerate() {
                let Some(dev) = n.host_dev.as_deref() else {
                    continue;
                };
                let Some(l) = s.link(dev) else { continue };
                let bridge = l
                    .master
                    .clone()
                    .or_else(|| n.source_bridge.clone())
                    .unwrap_or_default();
                let labels = vec![
                    ("vm", vm.name.clone()),
                    (
                        "vnic",
                        n.guest_ifname.clone().unwrap_or_else(|| format!("net{i}")),
                    ),
                    ("tap", dev.to_string()),
                    ("bridge", bridge),
                    ("network", n.network.clone().unwrap_or_default()),
                ];
                let st = &l.stats;
                vrx.add(labels.clone(), st.tx_bytes as f64);
                vtx.add(labels.clone(), st.rx_bytes as f64);
                vrxp.add(labels.clone(), st.tx_packets as f64);
                vtxp.add(labels.clone(), st.rx_packets as f64);
                let with = |dir: &str| {
                    let mut l2 = labels.clone();
                    l2.push(("direction", dir.to_string()));
                    l2
                };
                verr.add(with("rx"), st.tx_errors as f64);
                verr.add(with("tx"), st.rx_errors as f64);
                vdrop.add(with("rx"), st.tx_dropped as f64);
                vdrop.add(with("tx"), st.rx_dropped as f64);
                vup.add(labels.clone(), up(l));
                vmtu.add(labels, f64::from(l.mtu));
            }
        }
        // taps no known VM claims (another VM manager's, or a VM kvmnet cannot see): their
        // traffic counts too, with an empty vm label
        let claimed: std::collections::HashSet<&str> = s
            .vms
            .iter()
            .flat_map(|v| v.vnics.iter().filter_map(|n| n.host_dev.as_deref()))
            .collect();
        for l in s
            .links
            .iter()
            .filter(|l| l.kind == LinkKind::Tap && !claimed.contains(l.name.as_str()))
        {
            let labels = vec![
                ("vm", String::new()),
                ("vnic", String::new()),
                ("tap", l.name.clone()),
                ("bridge", l.master.clone().unwrap_or_default()),
                ("network", String::new()),
            ];
            let st = &l.stats;
            vrx.add(labels.clone(), st.tx_bytes as f64);
            vtx.add(labels.clone(), st.rx_bytes as f64);
            vrxp.add(labels.clone(), st.tx_packets as f64);
            vtxp.add(labels.clone(), st.rx_packets as f64);
            vup.add(labels.clone(), up(l));
            vmtu.add(labels, f64::from(l.mtu));
        }
        fams.extend([vminfo, vrx, vtx, vrxp, vtxp, verr, vdrop, vup, vmtu]);

        // bridges and uplinks, from the host's point of view
        let uplinks: Vec<String> = s
            .routes
            .iter()
            .filter(|r| r.is_default())
            .flat_map(|r| {
                r.devices()
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut lup = Family::new(
            "kvmnet_link_up",
            Kind::Gauge,
            "1 when a bridge or uplink is up",
        );
        let mut lrx = Family::new(
            "kvmnet_link_rx_bytes",
            Kind::Counter,
            "Bytes received by a bridge or uplink",
        );
        let mut ltx = Family::new(
            "kvmnet_link_tx_bytes",
            Kind::Counter,
            "Bytes sent by a bridge or uplink",
        );
        let mut lerr = Family::new(
            "kvmnet_link_errors",
            Kind::Counter,
            "Errors on a bridge or uplink",
        );
        let mut ldrop = Family::new(
            "kvmnet_link_drops",
            Kind::Counter,
            "Drops on a bridge or uplink",
        );
        let mut ports = Family::new("kvmnet_bridge_ports", Kind::Gauge, "Ports of a bridge");
        let mut mtu = Family::new(
            "kvmnet_link_mtu_bytes",
            Kind::Gauge,
            "MTU of a bridge or uplink",
        );
        for l in &s.links {
            let role = if l.kind == LinkKind::Bridge {
                "bridge"
            } else if uplinks.contains(&l.name) {
                "uplink"
            } else {
                continue;
            };
            let labels = vec![("link", l.name.clone()), ("role", role.to_string())];
            lup.add(labels.clone(), up(l));
            lrx.add(labels.clone(), l.stats.rx_bytes as f64);
            ltx.add(labels.clone(), l.stats.tx_bytes as f64);
            lerr.add(
                labels.clone(),
                (l.stats.rx_errors + l.stats.tx_errors) as f64,
            );
            ldrop.add(
                labels.clone(),
                (l.stats.rx_dropped + l.stats.tx_dropped) as f64,
            );
            mtu.add(labels.clone(), f64::from(l.mtu));
            if role == "bridge" {
                ports.add(
                    vec![("link", l.name.clone())],
                    s.ports_of(&l.name).count() as f64,
                );
            }
        }
        fams.extend([lup, lrx, ltx, lerr, ldrop, mtu, ports]);

        let mut ct = Family::new(
            "kvmnet_conntrack_entries",
            Kind::Gauge,
            "Connections the kernel tracks",
        );
        if let Some(n) = s.sysctls.nf_conntrack_count {
            ct.add(vec![], n as f64);
        }
        let mut ctm = Family::new(
            "kvmnet_conntrack_max",
            Kind::Gauge,
            "The connection tracking table's size",
        );
        if let Some(n) = s.sysctls.nf_conntrack_max {
            ctm.add(vec![], n as f64);
        }
        fams.extend([ct, ctm]);
    }

    if let Some(r) = report {
        let mut f = Family::new(
            "kvmnet_finding",
            Kind::Gauge,
            "A finding of kvmnet doctor (1 while it holds); root causes have caused_by=\"\"",
        );
        let mut dropped = 0usize;
        for (i, x) in r.findings.iter().enumerate() {
            if i >= MAX_FINDINGS {
                dropped += 1;
                continue;
            }
            f.add(
                vec![
                    ("code", x.code.clone()),
                    ("severity", x.severity.as_str().to_string()),
                    ("layer", x.layer.as_str().to_string()),
                    ("subject", x.subject.join("/")),
                    ("caused_by", x.caused_by.clone().unwrap_or_default()),
                ],
                1.0,
            );
        }
        let mut cnt = Family::new(
            "kvmnet_findings",
            Kind::Gauge,
            "Findings of kvmnet doctor by severity (root causes only)",
        );
        for sev in ["error", "warning", "info"] {
            cnt.add(
                vec![("severity", sev.to_string())],
                r.findings
                    .iter()
                    .filter(|x| x.caused_by.is_none() && x.severity.as_str() == sev)
                    .count() as f64,
            );
        }
        let mut dr = Family::new(
            "kvmnet_findings_dropped",
            Kind::Gauge,
            "Findings not exported as series (over the limit)",
        );
        dr.add(vec![], dropped as f64);
        let mut ok = Family::new(
            "kvmnet_vm_network_ok",
            Kind::Gauge,
            "1 when doctor's verdict for the VM is ok",
        );
        for v in &r.verdicts {
            ok.add(vec![("vm", v.vm.clone())], f64::from(u8::from(v.ok)));
        }
        let mut pr = Family::new(
            "kvmnet_probe_ok",
            Kind::Gauge,
            "1 when an active probe got its answer",
        );
        for p in &r.probes {
            pr.add(
                vec![
                    ("from", p.from.clone()),
                    ("kind", format!("{:?}", p.kind).to_lowercase()),
                    ("target", p.target.to_string()),
                ],
                f64::from(u8::from(p.ok)),
            );
        }
        fams.extend([f, cnt, dr, ok, pr]);
    }

    let mut prom = String::with_capacity(64 * 1024);
    let mut om = String::with_capacity(64 * 1024);
    for f in &fams {
        f.render(&mut prom, false);
        f.render(&mut om, true);
    }
    om.push_str("# EOF\n");
    (prom, om)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_name_counters_as_they_must() {
        let mut s = HostState::default();
        let mut l = Link::new(5, "vnet1", LinkKind::Tap);
        l.stats.tx_bytes = 1234;
        l.master = Some("br0".into());
        s.links.push(l);
        s.vms.push(kvmnet_model::Vm {
            name: "web\"1".into(),
            source: kvmnet_model::VmSource::Qemu,
            uuid: None,
            state: kvmnet_model::VmState::Running,
            pid: None,
            netns: None,
            vnics: vec![kvmnet_model::Vnic {
                host_dev: Some("vnet1".into()),
                ..Default::default()
            }],
            guest: None,
            vcpus: None,
            agent: None,
        });
        let (prom, om) = render(Some(&s), None, &Meta::default());
        assert!(
            prom.contains("# TYPE kvmnet_vnic_rx_bytes_total counter"),
            "{prom}"
        );
        assert!(prom.contains(
            "kvmnet_vnic_rx_bytes_total{vm=\"web\\\"1\",vnic=\"net0\",tap=\"vnet1\",bridge=\"br0\",network=\"\"} 1234"
        ), "{prom}");
        assert!(om.contains("# TYPE kvmnet_vnic_rx_bytes counter"), "{om}");
        assert!(om.contains("kvmnet_vnic_rx_bytes_total{"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        assert!(prom.contains("kvmnet_up 1"));
    }
}
