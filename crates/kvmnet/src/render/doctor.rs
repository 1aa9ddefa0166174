//! `kvmnet doctor` as text: host-wide findings, then each VM's findings by layer, then one
//! verdict line per VM.

use std::fmt::Write;

use kvmnet_doctor::{Finding, Layer, Report, Severity};
use kvmnet_model::HostState;

use crate::render::table::heading;

fn mark(f: &Finding, color: bool) -> String {
    let (sym, code) = match (f.severity, f.caused_by.is_some()) {
        (_, true) => ("-", "2"),
        (Severity::Error, _) => ("x", "31"),
        (Severity::Warning, _) => ("!", "33"),
        (Severity::Info, _) => ("i", "36"),
    };
    if color {
        format!("\x1b[{code}m{sym}\x1b[0m")
    } else {
        sym.to_string()
    }
}

fn finding(out: &mut String, f: &Finding, color: bool) {
    let _ = writeln!(
        out,
        "  {} {} [{}] {}",
        mark(f, color),
        f.code,
        f.severity.as_str(),
        f.summary
    );
    if let Some(c) = &f.caused_by {
        let _ = writeln!(out, "      caused by: {c}");
        return;
    }
    for e in &f.evidence {
        let _ = writeln!(out, "      evidence: {e}");
    }
    if !f.impact.is_empty() {
        let _ = writeln!(out, "      impact:   {}", f.impact);
    }
    for (i, c) in f.fix.commands.iter().enumerate() {
        let _ = writeln!(
            out,
            "      {}{c}",
            if i == 0 { "fix:      " } else { "          " }
        );
    }
    if !f.fix.steps.is_empty() {
        let _ = writeln!(out, "                (kvmnet doctor --fix applies this)");
    }
}

/// Renders a report.
pub fn render_report(s: &HostState, r: &Report, color: bool) -> String {
    let mut out = String::new();
    let n = r.verdicts.len();
    let _ = writeln!(
        out,
        "kvmnet doctor: {} VM{}{}{}\n",
        n,
        if n == 1 { "" } else { "s" },
        s.netns
            .as_deref()
            .map(|x| format!(" in netns {x}"))
            .unwrap_or_default(),
        r.target
            .map(|t| format!(", target {t}"))
            .unwrap_or_default()
    );
    // findings that are not about one VM
    let shared: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| f.layer == Layer::Host || f.affects.len() != 1)
        .collect();
    if !shared.is_empty() {
        let _ = writeln!(out, "{}", heading("Host and shared", color));
        for f in &shared {
            finding(&mut out, f, color);
        }
        let _ = writeln!(out);
    }
    for v in &r.verdicts {
        let mine: Vec<&Finding> = r
            .findings
            .iter()
            .filter(|f| f.layer != Layer::Host && f.affects.len() == 1 && f.affects[0] == v.vm)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}", heading(&format!("vm {}", v.vm), color));
        for layer in [Layer::Virtual, Layer::Guest] {
            for f in mine.iter().filter(|f| f.layer == layer) {
                finding(&mut out, f, color);
            }
        }
        let _ = writeln!(out);
    }
    if !r.probes.is_empty() {
        let failed = r.probes.iter().filter(|p| !p.ok).count();
        let _ = writeln!(
            out,
            "probes: {} run, {} answered, {failed} failed",
            r.probes.len(),
            r.probes.len() - failed
        );
    }
    for sk in &r.skipped {
        let _ = writeln!(out, "note: {sk}");
    }
    if !r.skipped.is_empty() || !r.probes.is_empty() {
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "{}", heading("Verdicts", color));
    if r.verdicts.is_empty() {
        let _ = writeln!(out, "  (no VMs)");
    }
    for v in &r.verdicts {
        let line = match (&v.cause, v.ok) {
            (_, true) => format!("{}: ok - {}", v.vm, v.summary),
            (Some(c), false) => format!(
                "{}: {} - cause: {c}{} - fix: {}",
                v.vm,
                v.summary,
                if v.cause_subject.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", v.cause_subject.join(", "))
                },
                v.fix.clone().unwrap_or_default()
            ),
            (None, false) => format!("{}: {}", v.vm, v.summary),
        };
        let _ = writeln!(out, "  {line}");
    }
    let errors = r.root_errors();
    let _ = writeln!(
        out,
        "\n{} root-cause error{}, {} finding{} in all",
        errors,
        if errors == 1 { "" } else { "s" },
        r.findings.len(),
        if r.findings.len() == 1 { "" } else { "s" }
    );
    out
}
