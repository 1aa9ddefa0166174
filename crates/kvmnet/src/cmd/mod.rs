//! Command dispatch.

mod config;
mod doctor;
mod probe;
mod show;
mod snapshot;
mod trace;

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> Result<i32, CliError> {
    let color = crate::output::use_color(cli.color);
    match cli.command {
        Command::Show(a) => show::run(a, color),
        Command::Snapshot(a) => snapshot::run(a),
        Command::Trace(a) => trace::run(a, color),
        Command::Doctor(a) => doctor::run(a, color),
        Command::Plan(a) => config::plan(a),
        Command::Apply(a) => config::apply(a),
        Command::Confirm(a) => config::confirm(a),
        Command::Rollback(a) => config::rollback(a),
        Command::Import(a) => config::import(a),
        Command::Export(a) => config::export(a),
        Command::ConfirmWatchdog(a) => config::watchdog(a),
        Command::Exporter(a) => crate::exporter::run(a),
    }
}

/// Probes for the exporter (every VM, the given target).
pub fn probe_for_exporter(
    s: &kvmnet_model::HostState,
    target: Option<std::net::IpAddr>,
) -> Vec<kvmnet_doctor::ProbeResult> {
    probe::run_probes(s, target, None, &[]).0
}
