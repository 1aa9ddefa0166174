//! Trace throughput on one core against a 10,000-rule ruleset, compiled once: guest-to-outside
//! flows of many VMs, each walked there and back through every hook. Prints traces per second
//! (target: at least 100,000). Run: `cargo bench -p kvmnet-trace --bench trace`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use kvmnet_testkit::synth::large_host;
use kvmnet_trace::{Endpoint, FlowSpec, Tracer, Verdict};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let state = large_host(500, 2, 10, 10_000);
    let t0 = Instant::now();
    let tracer = Tracer::new(&state);
    let compile = t0.elapsed();
    let specs: Vec<FlowSpec> = (0..500)
        .map(|v| FlowSpec {
            from: Endpoint::Vm {
                name: format!("vm{v:04}"),
                vnic: None,
            },
            to: Endpoint::Addr("203.0.113.1".parse().unwrap()),
            proto: 6,
            dport: 1000 + (v % 20) as u16,
            sport: None,
            size: None,
            df: true,
        })
        .collect();
    // warm up and check the flows are meaningful
    let mut delivered = 0;
    for s in &specs {
        if matches!(tracer.trace(s).unwrap().verdict, Verdict::Delivered { .. }) {
            delivered += 1;
        }
    }
    // five rounds of 50,000 traces; the median round is the figure (this machine's neighbours
    // make single runs vary by +-15%)
    let n = 50_000;
    let mut rates = vec![];
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..n {
            let tr = tracer.trace(&specs[i % specs.len()]).unwrap();
            std::hint::black_box(&tr);
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "trace: {} rules compiled in {:.1} ms; 5 rounds of {n} traces: median {:.0} traces/s on one core (min {:.0}, max {:.0}; {delivered}/{} sample flows delivered)",
        state.nftables.rule_count(),
        compile.as_secs_f64() * 1e3,
        rates[2],
        rates[0],
        rates[4],
        specs.len()
    );
}
