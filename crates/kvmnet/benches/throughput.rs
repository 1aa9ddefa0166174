//! `kvmnet bench` against iperf3 on the same path in the same run: guest to guest across the
//! lab's Linux bridge, at MTU 1500 and at MTU 9000, one TCP stream and four. Prints both
//! figures and their ratio (kvmnet's throughput should be within 10% of iperf3's). Runs in
//! namespaces it creates and removes. Root only; needs iperf3.
//! Run: `cargo bench -p kvmnet --bench throughput`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use kvmnet_testkit::Lab;
use serde_json::Value;

fn kvmnet_bps(lab: &Lab, streams: usize) -> f64 {
    let out = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args([
            "bench",
            "--json",
            "--netns",
            lab.hv.name(),
            "--from",
            &format!("vm:{}", lab.guests[0].name()),
            "--to",
            &format!("vm:{}", lab.guests[1].name()),
            "--duration",
            "5s",
            "--streams",
            &streams.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["tcp_bits_per_second"].as_f64().unwrap()
}

fn iperf3_bps(lab: &Lab, streams: usize) -> f64 {
    let (g1, g2) = (&lab.guests[0], &lab.guests[1]);
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            g2.ns.name(),
            "iperf3",
            "-s",
            "-1",
            "-B",
            &g2.ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 is not installed");
    std::thread::sleep(Duration::from_millis(400));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            g1.ns.name(),
            "iperf3",
            "-J",
            "-t",
            "5",
            "-O",
            "1",
            "-P",
        ])
        .arg(streams.to_string())
        .args(["-c", &g2.ip])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

fn set_mtu(lab: &Lab, mtu: u32) {
    let m = mtu.to_string();
    for g in &lab.guests {
        lab.hv.ip(&["link", "set", &g.host_dev, "mtu", &m]).unwrap();
        g.ns.ip(&["link", "set", "eth0", "mtu", &m]).unwrap();
    }
    lab.hv.ip(&["link", "set", "br0", "mtu", &m]).unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let lab = Lab::nat(2).unwrap();
    println!("guest to guest across a Linux bridge, one TCP stream, 5 s per run, median of 3 (alternating):");
    for mtu in [1500u32, 9000] {
        set_mtu(&lab, mtu);
        let (mut ks, mut is) = (vec![], vec![]);
        for round in 0..3 {
            if round % 2 == 0 {
                ks.push(kvmnet_bps(&lab, 1));
                is.push(iperf3_bps(&lab, 1));
            } else {
                is.push(iperf3_bps(&lab, 1));
                ks.push(kvmnet_bps(&lab, 1));
            }
        }
        ks.sort_by(|a, b| a.partial_cmp(b).unwrap());
        is.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (k, i) = (ks[1], is[1]);
        println!(
            "  MTU {mtu:>4}: kvmnet bench {:>6.2} Gbit/s   iperf3 {:>6.2} Gbit/s   kvmnet/iperf3 {:.2}   (runs: kvmnet {}, iperf3 {})",
            k / 1e9,
            i / 1e9,
            k / i,
            ks.iter().map(|x| format!("{:.1}", x / 1e9)).collect::<Vec<_>>().join("/"),
            is.iter().map(|x| format!("{:.1}", x / 1e9)).collect::<Vec<_>>().join("/"),
        );
    }
    // several streams: kvmnet drives each from its own thread (iperf3 3.12 runs all its streams
    // on one thread, so the two are not compared there)
    println!(
        "  4 streams at MTU 9000: kvmnet bench {:.2} Gbit/s",
        kvmnet_bps(&lab, 4) / 1e9
    );
}
