//! `kvmnet doctor`: walks the host layer, the virtual network layer and the guest layer of a
//! collected state, traces each VM's packets with the simulator, and reports findings — each
//! with a stable code, its evidence, its impact and the fix — plus one verdict per VM naming
//! the root cause. Pure: it gets a model (and probe results), never does I/O itself.

pub mod finding;
mod guest;
mod host;
mod ovs;
mod paths;
mod probe;
mod virt;

use std::collections::BTreeMap;
use std::net::IpAddr;

use kvmnet_model::{HostState, Vm, VmState};
use kvmnet_trace::Tracer;
use serde::Serialize;

pub use finding::{Finding, Fix, Layer, Severity};
pub use probe::{ProbeKind, ProbeResult};

/// What to examine.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// VMs to examine (empty: all).
    pub vms: Vec<String>,
    /// The outside address to test reachability against (default: the default gateway).
    pub target: Option<IpAddr>,
    /// A TCP port to test on the target.
    pub port: Option<u16>,
    /// Results of active probes, when `--probe` ran them.
    pub probes: Vec<ProbeResult>,
}

/// One VM's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct VmVerdict {
    pub vm: String,
    pub ok: bool,
    /// What works or what does not, e.g. `cannot reach 203.0.113.1`.
    pub summary: String,
    /// The root cause's code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Where the cause is (network, bridge, device, rule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cause_subject: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The doctor's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<IpAddr>,
    pub findings: Vec<Finding>,
    pub verdicts: Vec<VmVerdict>,
    /// Layers or checks that were skipped, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// The active probes that ran (with `--probe`) and what they saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeResult>,
}

impl Report {
    /// Number of root-cause errors (what the exit code counts).
    pub fn root_errors(&self) -> usize {
        self.findings.iter().filter(|f| f.is_root_error()).count()
    }
}

/// Shared context of the checks.
pub(crate) struct Ctx<'a> {
    pub s: &'a HostState,
    pub tracer: Tracer<'a>,
    pub opts: &'a Options,
    pub uplink: Option<String>,
    pub target: Option<IpAddr>,
}

impl Ctx<'_> {
    /// A command as the admin must type it for the collected namespace.
    pub fn cmd(&self, c: &str) -> String {
        match &self.s.netns {
            Some(ns) if c.starts_with("ip ") => format!("ip -n {ns} {}", &c[3..]),
            Some(ns) if c.starts_with("bridge ") => format!("bridge -n {ns} {}", &c[7..]),
            Some(ns) => format!("ip netns exec {ns} {c}"),
            None => c.to_string(),
        }
    }

    /// The VMs to examine.
    pub fn vms(&self) -> impl Iterator<Item = &Vm> {
        self.s.vms.iter().filter(|v| {
            (self.opts.vms.is_empty() || self.opts.vms.contains(&v.name))
                && matches!(v.state, VmState::Running | VmState::Unknown)
        })
    }

    /// True when a VM is among those examined.
    pub fn selected(&self, name: &str) -> bool {
        self.opts.vms.is_empty() || self.opts.vms.iter().any(|v| v == name)
    }
}

/// Runs every check on a state.
pub fn diagnose(s: &HostState, opts: &Options) -> Report {
    let def = s.default_route(false);
    let uplink = def.and_then(|r| r.devices().first().map(|d| d.to_string()));
    let gateway = def.and_then(|r| r.first_gateway());
    let cx = Ctx {
        s,
        tracer: Tracer::new(s),
        opts,
        uplink,
        target: opts.target.or(gateway),
    };
    let mut findings = vec![];
    let mut skipped = vec![];
    host::check(&cx, &mut findings);
    virt::check(&cx, &mut findings);
    ovs::check(&cx, &mut findings);
    guest::check(&cx, &mut findings, &mut skipped);
    let verdicts = paths::check(&cx, &mut findings);
    paths::check_port_forwards(&cx, &mut findings);
    probe::check(&cx, &mut findings, &mut skipped);
    let findings = merge(findings);
    let findings = paths::assign_causes(&cx, findings);
    let verdicts = paths::finish_verdicts(&cx, verdicts, &findings);
    let mut findings = findings;
    findings.sort_by(|a, b| {
        (a.caused_by.is_some(), a.severity, a.layer, &a.code).cmp(&(
            b.caused_by.is_some(),
            b.severity,
            b.layer,
            &b.code,
        ))
    });
    Report {
        target: cx.target,
        findings,
        verdicts,
        skipped,
        probes: opts.probes.clone(),
    }
}

/// Merges findings with the same code and subject (several checks can reach one fault).
fn merge(findings: Vec<Finding>) -> Vec<Finding> {
    let mut by_key: BTreeMap<(String, Vec<String>), Finding> = BTreeMap::new();
    let mut order = vec![];
    for f in findings {
        let mut subj = f.subject.clone();
        subj.sort();
        let key = (f.code.clone(), subj);
        match by_key.get_mut(&key) {
            Some(existing) => {
                for e in f.evidence {
                    if !existing.evidence.contains(&e) {
                        existing.evidence.push(e);
                    }
                }
                let affects = f.affects.clone();
                *existing = existing.clone().affects(affects);
                if existing.fix.commands.is_empty() {
                    existing.fix = f.fix;
                }
                if f.severity < existing.severity {
                    existing.severity = f.severity;
                }
            }
            None => {
                order.push(key.clone());
                by_key.insert(key, f);
            }
        }
    }
    order
        .into_iter()
        .filter_map(|k| by_key.remove(&k))
        .collect()
}
