//! `kvmnet snapshot`: the whole state in one JSON file.

use std::io::Read;

use kvmnet_model::redact::Redactor;
use kvmnet_model::write_snapshot;

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
    let text = write_snapshot(&state);
    if a.output.as_os_str() == "-" {
        crate::output::print(&text)?;
    } else {
        // write next to the target and rename, so a reader never sees half a snapshot
        let tmp = a.output.with_extension("tmp");
        std::fs::write(&tmp, text.as_bytes())
            .and_then(|_| std::fs::rename(&tmp, &a.output))
            .map_err(|e| CliError::runtime(format!("{}: cannot write: {e}", a.output.display())))?;
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
