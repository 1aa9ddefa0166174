//! Doctor speed on a large host: 500 VMs, 1,000 vNICs on 10 bridges, 10,000 nftables rules,
//! no probes. Prints the median of several runs (target: under 200 ms).
//! Run: `cargo bench -p kvmnet-doctor --bench doctor`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use kvmnet_doctor::{diagnose, Options};
use kvmnet_testkit::synth::large_host;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let state = large_host(500, 2, 10, 10_000);
    let mut times = vec![];
    let mut findings = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let r = diagnose(&state, &Options::default());
        times.push(t.elapsed());
        findings = r.findings.len();
        assert_eq!(r.verdicts.len(), 500);
    }
    times.sort();
    println!(
        "doctor, no probes: 500 VMs, 1000 vNICs, {} nft rules: median {:.1} ms (min {:.1} ms), {findings} findings",
        state.nftables.rule_count(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );
}
