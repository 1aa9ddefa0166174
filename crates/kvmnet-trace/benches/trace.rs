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
    let n = 100_000;
    let t = Instant::now();
    for i in 0..n {
        let tr = tracer.trace(&specs[i % specs.len()]).unwrap();
        std::hint::black_box(&tr);
    }
    let el = t.elapsed();
    println!(
        "trace: {} rules compiled in {:.1} ms; {n} traces in {:.2} s = {:.0} traces/s on one core ({delivered}/{} sample flows delivered)",
        state.nftables.rule_count(),
        compile.as_secs_f64() * 1e3,
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        specs.len()
    );
}
