//! Command dispatch.

mod bench;
mod config;
mod demo;
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
        Command::Demo(a) => demo::run(a, color),
        Command::Bench(a) => bench::run(a),
        Command::Topo(a) => {
            let state = crate::source::load(a.source.netns.as_deref(), a.source.from.as_deref())?;
            let report = (!a.no_doctor).then(|| {
                kvmnet_doctor::diagnose(
                    &state,
                    &kvmnet_doctor::Options {
                        target: a.target,
                        ..Default::default()
                    },
                )
            });
            let text = match a.output {
                crate::cli::TopoFormat::Svg => crate::render::topo::svg(&state, report.as_ref()),
                crate::cli::TopoFormat::Dot => crate::render::topo::dot(&state, report.as_ref()),
            };
            crate::output::print(text.trim_end())?;
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kvmnet", &mut out);
            crate::output::print(String::from_utf8_lossy(&out).trim_end())?;
            Ok(0)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .map_err(|e| CliError::runtime(e.to_string()))?;
            crate::output::print(String::from_utf8_lossy(&out).trim_end())?;
            Ok(0)
        }
    }
}

/// Probes for the exporter (every VM, the given target).
pub fn probe_for_exporter(
    s: &kvmnet_model::HostState,
    target: Option<std::net::IpAddr>,
) -> Vec<kvmnet_doctor::ProbeResult> {
    probe::run_probes(s, target, None, &[]).0
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
