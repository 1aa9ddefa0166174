//! Scrape latency and memory of `kvmnet exporter` against prometheus-node-exporter's netdev
//! collector, both serving the same namespace of 1,000 interfaces (500 veth pairs, 100 of them
//! on bridges). Each is scraped 1,000 times over fresh connections after a warm-up; prints
//! p50/p99 latency and resident memory. Root only; needs prometheus-node-exporter.
//! Run: `cargo bench -p kvmnet --bench exporter`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PAIRS: usize = 500;
const SCRAPES: usize = 1000;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> (Duration, usize) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::with_capacity(256 * 1024);
    s.read_to_end(&mut buf).unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..buf.len().min(200)])
    );
    (t.elapsed(), buf.len())
}

fn wait_port(port: u16) {
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rss_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn measure(port: u16) -> (Duration, Duration, usize) {
    for _ in 0..20 {
        scrape(port);
    }
    let mut lat = vec![];
    let mut size = 0;
    for _ in 0..SCRAPES {
        let (d, n) = scrape(port);
        lat.push(d);
        size = n;
    }
    lat.sort();
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100], size)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let ns = Ns(format!("kvmnet-bench-exp-{}", std::process::id()));
    let n = ns.0.clone();
    assert!(Command::new("ip")
        .args(["netns", "add", &n])
        .status()
        .unwrap()
        .success());
    let mut s = String::from("link set lo up\n");
    for b in 0..10 {
        let _ = writeln!(s, "link add kvb{b} type bridge\nlink set kvb{b} up");
    }
    for i in 0..PAIRS {
        let _ = writeln!(
            s,
            "link add v{i}a type veth peer name v{i}b\nlink set v{i}a up\nlink set v{i}b up"
        );
        if i < 100 {
            let _ = writeln!(s, "link set v{i}a master kvb{}", i % 10);
        }
    }
    let mut c = Command::new("ip")
        .args(["-n", &n, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());

    let kv = Proc(
        Command::new("ip")
            .args(["netns", "exec", &n])
            .arg(env!("CARGO_BIN_EXE_kvmnet"))
            .args([
                "exporter",
                "--listen",
                "127.0.0.1:9847",
                "--interval",
                "15s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ne = Proc(
        Command::new("ip")
            .args(["netns", "exec", &n, "prometheus-node-exporter"])
            .args([
                "--collector.disable-defaults",
                "--collector.netdev",
                "--web.listen-address=127.0.0.1:9100",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter is not installed"),
    );
    let results = kvmnet_linux::netns::run_in_netns(Some(&n), || {
        wait_port(9847);
        wait_port(9100);
        // the exporter's first collection
        std::thread::sleep(Duration::from_secs(2));
        let k = measure(9847);
        let e = measure(9100);
        (k, e)
    })
    .unwrap();
    let ((kp50, kp99, ksize), (ep50, ep99, esize)) = results;
    let (krss, erss) = (rss_kb(kv.0.id(), "VmRSS:"), rss_kb(ne.0.id(), "VmRSS:"));
    let (khwm, ehwm) = (rss_kb(kv.0.id(), "VmHWM:"), rss_kb(ne.0.id(), "VmHWM:"));
    println!(
        "scrapes of a namespace with {} interfaces ({SCRAPES} each, fresh connections):\n  \
         kvmnet exporter         p50 {:>7.2} ms  p99 {:>7.2} ms  {:>7} bytes  RSS {:>6} kB (peak {} kB)\n  \
         node_exporter (netdev)  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>7} bytes  RSS {:>6} kB (peak {} kB)\n  \
         p99 kvmnet/node_exporter {:.2}, RSS kvmnet/node_exporter {:.2}",
        PAIRS * 2 + 10,
        kp50.as_secs_f64() * 1e3,
        kp99.as_secs_f64() * 1e3,
        ksize,
        krss,
        khwm,
        ep50.as_secs_f64() * 1e3,
        ep99.as_secs_f64() * 1e3,
        esize,
        erss,
        ehwm,
        kp99.as_secs_f64() / ep99.as_secs_f64(),
        krss as f64 / erss.max(1) as f64,
    );
}
