//! Configuration speed: 200 NAT networks with 500 vNICs applied from scratch by `kvmnet apply`
//! (collect, plan, journaled apply, verify by collecting again), against the same objects made
//! by a shell script with one `ip`/`nft`/`sysctl` command per object and by `ip -batch` plus
//! one `nft -f`; then a no-op re-apply of the same state. Runs in a network namespace it
//! creates (500 taps and an uplink in it) and removes, also on failure. Root only.
//! Run: `cargo bench -p kvmnet --bench apply`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NETS: usize = 200;
const VNICS: usize = 500;
const RUNS: usize = 3;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn pipe(args: &[&str], input: &str) {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "{args:?} failed");
}

fn subnet(i: usize) -> (String, String) {
    let (a, b) = (100 + i / 250, i % 250);
    (format!("10.{a}.{b}.0/24"), format!("10.{a}.{b}"))
}

fn desired() -> String {
    let mut y = String::from("networks:\n");
    for i in 0..NETS {
        let (s, _) = subnet(i);
        let _ = writeln!(
            y,
            "  - name: n{i}\n    type: nat\n    bridge: kvb{i}\n    subnet: {s}\n    uplink: uplink"
        );
    }
    y.push_str("vnics:\n");
    for j in 0..VNICS {
        let net = j % NETS;
        let (_, p) = subnet(net);
        let _ = writeln!(
            y,
            "  - vm: vm{j}\n    tap: t{j}\n    network: n{net}\n    ip: {p}.{}",
            10 + j / NETS
        );
    }
    y
}

/// The same objects as `ip` commands (without the leading `ip`) and an nft script.
fn commands() -> (Vec<String>, String) {
    let mut ip = vec![];
    let mut nft = String::from(
        "table inet kvbench {\n chain postrouting { type nat hook postrouting priority srcnat; policy accept; }\n}\n",
    );
    for i in 0..NETS {
        let (s, p) = subnet(i);
        ip.push(format!(
            "link add kvb{i} type bridge stp_state 0 forward_delay 0"
        ));
        ip.push(format!("addr add {p}.1/24 dev kvb{i}"));
        ip.push(format!("link set kvb{i} up"));
        let _ = writeln!(
            nft,
            "add rule inet kvbench postrouting ip saddr {s} ip daddr != {s} oifname \"uplink\" masquerade"
        );
    }
    for j in 0..VNICS {
        ip.push(format!("link set t{j} master kvb{}", j % NETS));
        ip.push(format!("link set t{j} up"));
    }
    (ip, nft)
}

fn teardown_manual(ns: &str) {
    let mut s = String::new();
    for i in 0..NETS {
        let _ = writeln!(s, "link del kvb{i}");
    }
    for j in 0..VNICS {
        let _ = writeln!(s, "link set t{j} down");
    }
    pipe(&["ip", "-n", ns, "-batch", "-"], &s);
    let _ = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "delete", "table", "inet", "kvbench",
        ])
        .status();
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ])
        .status();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn kvmnet(run: &std::path::Path, ns: &str, file: &std::path::Path) -> Duration {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .env("KVMNET_RUN_DIR", run)
        .args(["apply", "-f", file.to_str().unwrap(), "--netns", ns])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "kvmnet apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ns = Ns(format!("kvmnet-bench-apply-{}", std::process::id()));
    let n = ns.0.as_str();
    assert!(Command::new("ip")
        .args(["netns", "add", n])
        .status()
        .unwrap()
        .success());
    let mut setup =
        String::from("link set lo up\nlink add uplink type veth peer name uplink-peer\n");
    setup.push_str(
        "addr add 198.51.100.2/24 dev uplink\nlink set uplink up\nlink set uplink-peer up\n",
    );
    setup.push_str("route add default via 198.51.100.1\n");
    for j in 0..VNICS {
        let _ = writeln!(setup, "tuntap add dev t{j} mode tap");
    }
    pipe(&["ip", "-n", n, "-batch", "-"], &setup);
    let run = tempfile::tempdir().unwrap();
    let want = run.path().join("net.yaml");
    let empty = run.path().join("empty.yaml");
    std::fs::write(&want, desired()).unwrap();
    std::fs::write(&empty, "networks: []\n").unwrap();
    let (ip, nft) = commands();

    let mut k_apply = vec![];
    let mut k_noop = vec![];
    let mut shell = vec![];
    let mut batch = vec![];
    for _ in 0..RUNS {
        k_apply.push(kvmnet(run.path(), n, &want));
        k_noop.push(kvmnet(run.path(), n, &want));
        kvmnet(run.path(), n, &empty);

        // one process per object
        let mut script = String::from("set -e\n");
        let _ = writeln!(script, "ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1");
        for c in &ip {
            let _ = writeln!(script, "ip -n {n} {c}");
        }
        let _ = writeln!(
            script,
            "ip netns exec {n} nft add table inet kvbench\nip netns exec {n} nft add chain inet kvbench postrouting '{{ type nat hook postrouting priority srcnat; policy accept; }}'"
        );
        for l in nft.lines().filter(|l| l.starts_with("add rule")) {
            let _ = writeln!(script, "ip netns exec {n} nft '{}'", l.replace('\'', ""));
        }
        let t = Instant::now();
        pipe(&["bash", "-s"], &script);
        shell.push(t.elapsed());
        teardown_manual(n);

        // ip -batch and one nft transaction
        let t = Instant::now();
        pipe(
            &[
                "ip",
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            "",
        );
        pipe(&["ip", "-n", n, "-batch", "-"], &(ip.join("\n") + "\n"));
        pipe(&["ip", "netns", "exec", n, "nft", "-f", "-"], &nft);
        batch.push(t.elapsed());
        teardown_manual(n);
    }
    let (a, o, s, b) = (
        median(k_apply),
        median(k_noop),
        median(shell),
        median(batch),
    );
    println!(
        "apply {NETS} NAT networks + {VNICS} vNICs from scratch (median of {RUNS}):\n  \
         kvmnet apply (collect, plan, journal, apply, verify)  {:>8.1} ms\n  \
         ip -batch + nft -f                                     {:>8.1} ms   kvmnet/batch {:.2}x\n  \
         shell script, one command per object                   {:>8.1} ms   shell/kvmnet {:.1}x\n  \
         kvmnet no-op re-apply                                  {:>8.1} ms",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        a.as_secs_f64() / b.as_secs_f64(),
        s.as_secs_f64() * 1e3,
        s.as_secs_f64() / a.as_secs_f64(),
        o.as_secs_f64() * 1e3,
    );
}
