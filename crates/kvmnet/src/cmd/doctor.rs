//! `kvmnet doctor`, and `--fix` through the journaled apply path.

use std::io::{BufRead, IsTerminal, Write};

use kvmnet_doctor::{diagnose, Options, Report};
use kvmnet_model::plan::PlanStep;
use kvmnet_model::HostState;

use crate::cli::DoctorArgs;
use crate::error::CliError;

fn options(a: &DoctorArgs) -> Options {
    Options {
        vms: if a.all { vec![] } else { a.vms.clone() },
        target: a.target,
        port: a.port,
        probes: vec![],
    }
}

pub fn run(a: DoctorArgs, color: bool) -> Result<i32, CliError> {
    let state = crate::source::load(a.source.netns.as_deref(), a.source.from.as_deref())?;
    for v in &a.vms {
        if state.vm(v).is_none() {
            return Err(CliError::input(format!(
                "no VM named {v:?} (known: {})",
                state
                    .vms
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut opts = options(&a);
    let mut probe_notes = vec![];
    if a.probe {
        let target = a
            .target
            .or_else(|| state.default_route(false).and_then(|r| r.first_gateway()));
        let (results, notes) = super::probe::run_probes(&state, target, a.port, &opts.vms);
        opts.probes = results;
        probe_notes = notes;
    }
    let mut report = diagnose(&state, &opts);
    report.skipped.extend(probe_notes);
    let text = if a.json {
        crate::output::json(&report)?
    } else {
        crate::render::doctor::render_report(&state, &report, color)
    };
    crate::output::print(&text)?;
    if a.fix {
        return fix(&a, &state, &report, color);
    }
    Ok(if report.root_errors() > 0 { 3 } else { 0 })
}

/// The plan steps of root-cause findings, in report order, without repeats.
fn fix_steps(report: &Report) -> Vec<(PlanStep, String)> {
    let mut out: Vec<(PlanStep, String)> = vec![];
    for f in report.findings.iter().filter(|f| f.caused_by.is_none()) {
        for s in &f.fix.steps {
            if !out.iter().any(|(x, _)| x == s) {
                out.push((s.clone(), f.code.clone()));
            }
        }
    }
    out
}

fn fix(a: &DoctorArgs, state: &HostState, report: &Report, color: bool) -> Result<i32, CliError> {
    let _ = color;
    let mut report = report.clone();
    let mut netns_label = state
        .netns
        .as_deref()
        .map(|n| format!(" in netns {n}"))
        .unwrap_or_default();
    let mut seen: Vec<PlanStep> = vec![];
    // a fix can uncover the next fault (NAT is only tested once forwarding works): repeat
    // while there is something new to fix, a few rounds at most
    for round in 1..=3 {
        let steps: Vec<(PlanStep, String)> = fix_steps(&report)
            .into_iter()
            .filter(|(s, _)| !seen.contains(s))
            .collect();
        if steps.is_empty() {
            if round == 1 {
                crate::output::print("\nnothing kvmnet can fix by itself: see the commands above")?;
            }
            break;
        }
        let mut out = format!(
            "\n{}kvmnet will apply {} change{}{netns_label}:\n",
            if round > 1 { "next, " } else { "" },
            steps.len(),
            if steps.len() == 1 { "" } else { "s" },
        );
        for (i, (s, code)) in steps.iter().enumerate() {
            out.push_str(&format!("  {}. {}   ({code})\n", i + 1, s.describe()));
        }
        crate::output::print(&out)?;
        if !a.yes {
            if !std::io::stdin().is_terminal() {
                return Err(CliError::input(
                    "--fix asks before changing anything; not on a terminal: add --yes",
                ));
            }
            print!("Apply? [y/N] ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                crate::output::print("not applied")?;
                return Ok(3);
            }
        }
        let plan: Vec<PlanStep> = steps.into_iter().map(|(s, _)| s).collect();
        seen.extend(plan.iter().cloned());
        match kvmnet_linux::apply::apply_plan(a.source.netns.as_deref(), &plan) {
            Ok(r) => {
                let after = crate::source::collect_live(a.source.netns.as_deref())?;
                report = diagnose(&after, &options(a));
                let mut t = format!(
                    "applied {} change{} (journal {})\nafter the fix:\n",
                    r.applied,
                    if r.applied == 1 { "" } else { "s" },
                    r.journal.display()
                );
                for v in &report.verdicts {
                    t.push_str(&format!(
                        "  {}: {}{}{}\n",
                        v.vm,
                        if v.ok { "ok - " } else { "" },
                        v.summary,
                        v.cause
                            .as_ref()
                            .map(|c| format!(" - cause: {c}"))
                            .unwrap_or_default()
                    ));
                }
                crate::output::print(&t)?;
            }
            Err(e @ kvmnet_linux::apply::ApplyError::RolledBack { .. }) => {
                eprintln!("kvmnet: error: {e}");
                return Ok(4);
            }
            Err(e) => return Err(CliError::runtime(e.to_string())),
        }
        netns_label.clear();
    }
    let left = report.root_errors();
    crate::output::print(&format!(
        "{left} root-cause error{} left",
        if left == 1 { "" } else { "s" }
    ))?;
    Ok(if left > 0 { 3 } else { 0 })
}
