//! `kvmnet bench` between namespace guests and the host: it measures for real (a rate limit
//! shows in the figure) and its advice comes from the host's configuration. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvmnet_testkit::{require_root, Lab};
use serde_json::Value;

fn bench(lab: &Lab, from: &str, to: &str) -> Value {
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .args([
            "bench",
            "--json",
            "--netns",
            lab.hv.name(),
            "--from",
            from,
            "--to",
            to,
            "--duration",
            "1s",
            "--streams",
            "2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_measures_guest_paths_and_advises() {
    if !require_root("bench_measures_guest_paths_and_advises") {
        return;
    }
    let lab = Lab::nat(2).unwrap();
    let (g1, g2) = (
        format!("vm:{}", lab.guests[0].name()),
        format!("vm:{}", lab.guests[1].name()),
    );
    let r = bench(&lab, &g1, &g2);
    let tcp = r["tcp_bits_per_second"].as_f64().unwrap();
    assert!(tcp > 100e6, "guest to guest over a bridge: {tcp}");
    assert!(
        r["udp_packets_per_second"].as_f64().unwrap() > 1000.0,
        "{r}"
    );
    let (p50, p99) = (
        r["rtt_p50_us"].as_f64().unwrap(),
        r["rtt_p99_us"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p99 >= p50, "{r}");
    // a 20 Mbit/s limit toward g2 shows in the figure and in the advice
    lab.hv
        .exec(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &lab.guests[1].host_dev,
            "root",
            "tbf",
            "rate",
            "20mbit",
            "burst",
            "32k",
            "latency",
            "50ms",
        ])
        .unwrap();
    let r = bench(&lab, "host", &g2);
    let tcp = r["tcp_bits_per_second"].as_f64().unwrap();
    assert!(tcp < 26e6 && tcp > 10e6, "rate-limited path: {tcp}");
    assert!(
        r["advice"].to_string().contains("20 Mbit/s rate limit"),
        "{r}"
    );
    // on a terminal, a progress bar while it measures (util-linux `script` gives a terminal)
    let bin = assert_cmd::cargo::cargo_bin("kvmnet");
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "{} bench --netns {} --from {g1} --to host --duration 2s --streams 1",
                bin.display(),
                lab.hv.name()
            ),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("TCP") && text.contains("100%") && text.contains("\r"),
        "{text}"
    );
    assert!(text.contains("Gbit/s") || text.contains("Mbit/s"), "{text}");
    // bad input
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .args([
            "bench",
            "--netns",
            lab.hv.name(),
            "--from",
            "vm:nosuch",
            "--to",
            "host",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VM named nosuch"));
}
