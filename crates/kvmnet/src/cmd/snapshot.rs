//! `kvmnet snapshot`: the whole state in one JSON file.

use std::io::Read;

use std::io::Write;

use kvmnet_model::redact::Redactor;
use kvmnet_model::write_snapshot_to;

use crate::cli::SnapshotArgs;
use crate::error::CliError;

fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut salt);
    }
    salt
}

pub fn run(a: SnapshotArgs) -> Result<i32, CliError> {
    let mut state = crate::source::collect_live(a.netns.as_deref())?;
    if a.redact {
        Redactor::new(&random_salt()).redact_state(&mut state);
    }
    if a.output.as_os_str() == "-" {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        write_snapshot_to(&state, &mut out)?;
        out.write_all(b"\n")?;
        out.flush()?;
    } else {
        // write next to the target and rename, so a reader never sees half a snapshot
        let tmp = a.output.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            write_snapshot_to(&state, &mut f)?;
            f.write_all(b"\n")?;
            f.flush()?;
            std::fs::rename(&tmp, &a.output)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CliError::runtime(format!("{}: cannot write: {e}", a.output.display()))
        })?;
        eprintln!(
            "kvmnet: wrote {} ({} links, {} VMs, {} nft rules{})",
            a.output.display(),
            state.links.len(),
            state.vms.len(),
            state.nftables.rule_count(),
            if a.redact { ", redacted" } else { "" }
        );
    }
    Ok(0)
}
