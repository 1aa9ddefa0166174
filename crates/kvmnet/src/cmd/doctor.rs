//! `kvmnet doctor`.

use kvmnet_doctor::{diagnose, Options};

use crate::cli::DoctorArgs;
use crate::error::CliError;

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
    let opts = Options {
        vms: if a.all { vec![] } else { a.vms.clone() },
        target: a.target,
        port: a.port,
        probes: vec![],
    };
    let report = diagnose(&state, &opts);
    let text = if a.json {
        crate::output::json(&report)?
    } else {
        crate::render::doctor::render_report(&state, &report, color)
    };
    crate::output::print(&text)?;
    Ok(if report.root_errors() > 0 { 3 } else { 0 })
}
