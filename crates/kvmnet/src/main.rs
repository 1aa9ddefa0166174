//! The `kvmnet` command: parses arguments, dispatches to a command, prints errors once, and maps
//! error kinds to exit codes (0 ok, 1 runtime error, 2 usage or input error, 3 findings or
//! pending changes where a flag asks for it, 4 applied and rolled back).

mod cli;
mod cmd;
mod error;
mod exporter;
mod output;
mod render;
mod source;

use clap::Parser;

use crate::error::CliError;

fn main() {
    let args = cli::Cli::parse();
    let code = match cmd::run(args) {
        Ok(code) => code,
        Err(e) => report(&e),
    };
    if std::env::var_os("KVMNET_REPORT_PEAK_RSS").is_some() {
        report_peak_rss();
    }
    std::process::exit(code);
}

/// Prints the process's peak resident set size (VmHWM), for the benchmarks.
fn report_peak_rss() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            let kb = line.trim_start_matches("VmHWM:").trim();
            eprintln!("kvmnet: peak RSS {kb}");
        }
    }
}

fn report(e: &CliError) -> i32 {
    if e.is_broken_pipe() {
        return 0;
    }
    eprintln!("kvmnet: error: {e}");
    e.exit_code()
}
