//! Snapshot speed on a large host, against the iproute2/nft commands an admin would run.
//!
//! Builds, in a network namespace this bench creates (and removes, also on failure): 1,000 veth
//! pairs with one side enslaved to one of 20 bridges, 2,000 routes, 5,000 neighbours and an
//! nftables ruleset of 10,000 rules. Then times `kvmnet snapshot` against
//! `ip -j link; ip -j addr; ip -j route show table all; ip -j neigh; bridge -j fdb;
//! nft -j list ruleset` run as processes, and prints both medians, the ratio and kvmnet's peak
//! RSS. Root only. Run: `cargo bench -p kvmnet --bench snapshot`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VETHS: usize = 1000;
const BRIDGES: usize = 20;
const ROUTES: usize = 2000;
const NEIGHS: usize = 5000;
const RULES: usize = 10_000;
const RUNS: usize = 7;

/// The bench namespace; removed on drop unless it was given (`KVMNET_BENCH_NETNS`) or the
/// bench was asked to keep it for profiling (`KVMNET_BENCH_KEEP=1`).
struct Ns(String, bool);

impl Drop for Ns {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
}

fn batch(ns: &str, prog: &str, script: &str) {
    let mut args = vec!["-n", ns, "-batch", "-"];
    if prog == "nft" {
        args = vec!["netns", "exec", ns, "nft", "-f", "-"];
    }
    let bin = if prog == "nft" { "ip" } else { prog };
    let mut child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "{prog} batch failed");
}

fn build(ns: &str) {
    let mut s = String::new();
    for b in 0..BRIDGES {
        let _ = writeln!(s, "link add br{b} type bridge");
        let _ = writeln!(s, "addr add 10.{}.0.1/16 dev br{b}", 100 + b);
        let _ = writeln!(s, "link set br{b} up");
    }
    for v in 0..VETHS {
        let _ = writeln!(s, "link add v{v}a type veth peer name v{v}b");
        let _ = writeln!(s, "link set v{v}a master br{} up", v % BRIDGES);
        let _ = writeln!(s, "link set v{v}b up");
    }
    for r in 0..ROUTES {
        let _ = writeln!(
            s,
            "route add 10.200.{}.{}/32 dev br{}",
            r / 250,
            r % 250 + 1,
            r % BRIDGES
        );
    }
    for n in 0..NEIGHS {
        let b = n % BRIDGES;
        let _ = writeln!(
            s,
            "neigh add 10.{}.{}.{} lladdr 02:00:00:{:02x}:{:02x}:{:02x} dev br{b} nud permanent",
            100 + b,
            n / 250,
            n % 250 + 2,
            b,
            n / 256,
            n % 256
        );
    }
    batch(ns, "ip", &s);

    let mut nft = String::from("table inet bench {\n set blocked { type ipv4_addr; flags interval; elements = { 10.9.0.0/16, 10.10.1.1 } }\n");
    let chains = 10;
    for c in 0..chains {
        let _ = writeln!(nft, " chain c{c} {{");
        for r in 0..RULES / chains {
            let i = c * (RULES / chains) + r;
            let _ = match i % 4 {
                0 => writeln!(
                    nft,
                    "  ip saddr 10.{}.{}.{} tcp dport {} counter accept",
                    i % 250,
                    (i / 250) % 250,
                    i % 200 + 1,
                    1000 + i % 5000
                ),
                1 => writeln!(
                    nft,
                    "  iifname \"v{}a\" ip daddr 10.200.0.0/16 drop",
                    i % VETHS
                ),
                2 => writeln!(
                    nft,
                    "  ct state established,related meta mark 0x{:x} accept",
                    i
                ),
                _ => writeln!(
                    nft,
                    "  ip saddr @blocked udp dport {{ 53, {} }} counter drop",
                    2000 + i % 1000
                ),
            };
        }
        let _ = writeln!(nft, " }}");
    }
    nft.push_str(" chain forward { type filter hook forward priority 0; policy accept;\n");
    for c in 0..chains {
        let _ = writeln!(nft, "  jump c{c}");
    }
    nft.push_str(" }\n}\n");
    batch(ns, "nft", &nft);
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run_quiet(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(
        root,
        "the snapshot bench builds a namespace: run it as root"
    );
    let ns = match std::env::var("KVMNET_BENCH_NETNS") {
        Ok(existing) => Ns(existing, false),
        Err(_) => {
            let name = format!("kvmnet-bench-{}", std::process::id());
            assert!(Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success());
            let ns = Ns(
                name,
                std::env::var("KVMNET_BENCH_KEEP").as_deref() != Ok("1"),
            );
            // no IPv6 on the 3,000 new links: their DAD and router solicitations would keep
            // the kernel busy in the background and blur both measurements
            for k in ["all", "default"] {
                let key = format!("net.ipv6.conf.{k}.disable_ipv6=1");
                let ok = Command::new("ip")
                    .args(["netns", "exec", &ns.0, "sysctl", "-qw", &key])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "cannot set {key} in the bench namespace");
            }
            let t0 = Instant::now();
            build(&ns.0);
            eprintln!(
                "built {} veth pairs on {} bridges, {} routes, {} neighbours, {} nft rules in {:.1?} (netns {})",
                VETHS, BRIDGES, ROUTES, NEIGHS, RULES, t0.elapsed(), ns.0
            );
            ns
        }
    };

    let kvmnet = env!("CARGO_BIN_EXE_kvmnet");
    let out = std::env::temp_dir().join(format!("{}.json", ns.0));
    let mut k = vec![];
    let mut rss_kb = 0u64;
    for _ in 0..RUNS {
        let t = Instant::now();
        let o = Command::new(kvmnet)
            .args(["snapshot", "--netns", &ns.0, "-o"])
            .arg(&out)
            .env("KVMNET_REPORT_PEAK_RSS", "1")
            .output()
            .unwrap();
        k.push(t.elapsed());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for line in String::from_utf8_lossy(&o.stderr).lines() {
            if let Some(v) = line.strip_prefix("kvmnet: peak RSS ") {
                rss_kb = rss_kb.max(v.trim_end_matches(" kB").parse().unwrap_or(0));
            }
        }
    }
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out);

    let mut b = vec![];
    for _ in 0..RUNS {
        let t = Instant::now();
        for args in [
            vec!["-j", "link"],
            vec!["-j", "addr"],
            vec!["-j", "route", "show", "table", "all"],
            vec!["-j", "neigh"],
        ] {
            run_quiet(Command::new("ip").arg("-n").arg(&ns.0).args(&args));
        }
        run_quiet(Command::new("bridge").args(["-n", &ns.0, "-j", "fdb"]));
        run_quiet(
            Command::new("ip").args(["netns", "exec", &ns.0, "nft", "-j", "list", "ruleset"]),
        );
        b.push(t.elapsed());
    }
    let (km, bm) = (median(k), median(b));
    println!("snapshot of a large host ({RUNS} runs each, medians):");
    println!(
        "  kvmnet snapshot                         {:>8.1} ms  (peak RSS {:.1} MB, file {:.1} MB)",
        km.as_secs_f64() * 1e3,
        rss_kb as f64 / 1024.0,
        size as f64 / 1e6
    );
    println!(
        "  ip/bridge -j + nft -j list ruleset      {:>8.1} ms",
        bm.as_secs_f64() * 1e3
    );
    println!(
        "  ratio kvmnet / baseline                 {:>8.2}",
        km.as_secs_f64() / bm.as_secs_f64()
    );
}
