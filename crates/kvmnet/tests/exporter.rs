//! The Prometheus exporter: a real Prometheus server scrapes it in a lab; taps churn while it is
//! scraped a thousand times; TLS and basic authentication; bad --web-config files; the shipped
//! alerting rules and dashboard use only metrics the exporter exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmnet_testkit::{require_cmd, require_root, Lab, Netns};
use serde_json::Value;

/// A process this test started, stopped by its PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn exporter(ns: &Netns, args: &[&str]) -> Proc {
    let bin = assert_cmd::cargo::cargo_bin("kvmnet");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name()])
        .arg(bin)
        .arg("exporter")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // it says where it serves once it listens
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("serving"), "exporter did not start: {line}");
    Proc(child)
}

/// GET a URL from inside a namespace: (status, body).
fn get(ns: &Netns, url: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec![
        "curl",
        "-s",
        "-k",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "5",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let out = ns.exec(&args).unwrap_or_default();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn prometheus_scrapes_vm_traffic_from_the_exporter() {
    if !require_root("prometheus_scrapes_vm_traffic_from_the_exporter") {
        return;
    }
    for c in ["prometheus", "curl"] {
        require_cmd(c);
    }
    let lab = Lab::nat(3).unwrap();
    let _exp = exporter(&lab.hv, &["--listen", "127.0.0.1:9847", "--interval", "1s"]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kvmnet\n    static_configs:\n      - targets: ['127.0.0.1:9847']\n",
    )
    .unwrap();
    let _prom = Proc(
        Command::new("ip")
            .args(["netns", "exec", lab.hv.name(), "prometheus"])
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // traffic to the first guest: 300 KB from the upstream... through NAT only outbound works,
    // so the guest pulls it: a server upstream, the guest reads
    let g = &lab.guests[0];
    lab.up
        .sh("python3 -c \"import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('203.0.113.1',5001));s.listen(1)\nc,_=s.accept();c.sendall(b'x'*300000);c.close()\" >/dev/null 2>&1 &")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    g.ns.exec(&[
        "timeout",
        "5",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/203.0.113.1/5001; cat <&3 >/dev/null",
    ])
    .unwrap();
    let query = format!(
        "http://127.0.0.1:9090/api/v1/query?query=kvmnet_vnic_rx_bytes_total%7Bvm%3D%22{}%22%7D",
        g.name()
    );
    let t = Instant::now();
    let value = loop {
        let (code, body) = get(&lab.hv, &query, &[]);
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(val) = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
            {
                if val > 300_000.0 {
                    break val;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "prometheus never had the traffic: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "prometheus: kvmnet_vnic_rx_bytes_total{{vm=\"{}\"}} = {value}",
        g.name()
    );
    // the scrape itself is healthy
    let (_, body) = get(
        &lab.hv,
        "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22kvmnet%22%7D",
        &[],
    );
    assert!(body.contains("\"1\""), "{body}");
}

#[test]
fn taps_churn_while_scraped_a_thousand_times() {
    if !require_root("taps_churn_while_scraped_a_thousand_times") {
        return;
    }
    require_cmd("curl");
    let lab = Lab::nat(1).unwrap();
    let _exp = exporter(
        &lab.hv,
        &[
            "--listen",
            "127.0.0.1:9847",
            "--interval",
            "200ms",
            "--no-doctor",
        ],
    );
    let hv = lab.hv.name().to_string();
    // 200 taps come and go on the bridge
    let churn = std::thread::spawn(move || {
        for i in 0..200 {
            let t = format!("kvt{i}");
            let mut script =
                format!("tuntap add dev {t} mode tap\nlink set {t} master br0\nlink set {t} up\n");
            if i >= 10 {
                script.push_str(&format!("tuntap del dev kvt{} mode tap\n", i - 10));
            }
            let mut c = Command::new("ip")
                .args(["-n", &hv, "-batch", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
            std::thread::sleep(Duration::from_millis(10));
        }
        // the last ten go too
        for i in 190..200 {
            let _ = Command::new("ip")
                .args([
                    "-n",
                    &hv,
                    "tuntap",
                    "del",
                    "dev",
                    &format!("kvt{i}"),
                    "mode",
                    "tap",
                ])
                .status();
        }
    });
    // 1000 scrapes over one keep-alive connection each 10, by curl
    let mut failed = 0;
    let mut seen_taps = 0usize;
    for round in 0..100 {
        let urls: Vec<String> = (0..10)
            .map(|_| "http://127.0.0.1:9847/metrics".to_string())
            .collect();
        let mut args = vec!["curl", "-s", "--max-time", "10", "-w", "\n@@%{http_code}\n"];
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        args.extend(refs);
        let out = lab.hv.exec(&args).unwrap_or_default();
        let codes: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("@@")).collect();
        assert_eq!(codes.len(), 10, "round {round}: {} answers", codes.len());
        failed += codes.iter().filter(|c| **c != "200").count();
        seen_taps = seen_taps.max(out.matches("tap=\"kvt").count());
        assert!(out.contains("kvmnet_up 1"), "round {round}");
    }
    churn.join().unwrap();
    assert_eq!(failed, 0, "failed scrapes");
    assert!(seen_taps > 0, "the churning taps were never exported");
    // after the next collections: no series of a deleted tap
    std::thread::sleep(Duration::from_millis(800));
    let (code, body) = get(&lab.hv, "http://127.0.0.1:9847/metrics", &[]);
    assert_eq!(code, 200);
    assert!(
        !body.contains("tap=\"kvt"),
        "stale series of deleted taps remain"
    );
}

#[test]
fn tls_and_basic_auth_from_a_web_config() {
    if !require_root("tls_and_basic_auth_from_a_web_config") {
        return;
    }
    for c in ["openssl", "curl"] {
        require_cmd(c);
    }
    let prefix = Netns::unique_prefix();
    let ns = Netns::create(&prefix, "exp").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kvmnet_testkit::run(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-keyout",
        d.join("key.pem").to_str().unwrap(),
        "-out",
        d.join("cert.pem").to_str().unwrap(),
    ])
    .unwrap();
    // bcrypt hash of "s3cret", cost 10
    let hash = "$2b$10$Cf3vTgiZxmi4EthIRtisPeQtKITJi7OUH2nThE4r5xyas/j9gB45S";
    std::fs::write(
        d.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prom: '{hash}'\n"
        ),
    )
    .unwrap();
    let _exp = exporter(
        &ns,
        &[
            "--listen",
            "127.0.0.1:9847",
            "--interval",
            "1s",
            "--web-config",
            d.join("web.yml").to_str().unwrap(),
        ],
    );
    let (code, _) = get(&ns, "https://127.0.0.1:9847/metrics", &[]);
    assert_eq!(code, 401, "no credentials");
    let (code, _) = get(&ns, "https://127.0.0.1:9847/metrics", &["-u", "prom:wrong"]);
    assert_eq!(code, 401, "wrong password");
    let (code, body) = get(
        &ns,
        "https://127.0.0.1:9847/metrics",
        &["-u", "prom:s3cret"],
    );
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE kvmnet_up gauge"), "{body}");
    // plain HTTP on the TLS port gets nothing
    let (code, _) = get(&ns, "http://127.0.0.1:9847/metrics", &["-u", "prom:s3cret"]);
    assert_ne!(code, 200);
}

#[test]
fn bad_web_configs_are_refused_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("cert.pem"), "not a certificate\n").unwrap();
    for (name, text, want) in [
        ("unknown.yml", "basic_auth_users:\n  a: '$2b$10$Cf3vTgiZxmi4EthIRtisPeQtKITJi7OUH2nThE4r5xyas/j9gB45S'\ntls_config:\n  cert_file: x\n", "unknown.yml:3:1: unknown field `tls_config`"),
        ("hash.yml", "basic_auth_users:\n  alice: plaintext\n", "hash.yml:2:10: the password of `alice` is not a bcrypt hash"),
        ("nocert.yml", "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n", "nocert.yml:2:14:"),
        ("badcert.yml", "tls_server_config:\n  cert_file: cert.pem\n  key_file: cert.pem\n", "no certificate"),
        ("nokey.yml", "tls_server_config:\n  cert_file: cert.pem\n", "needs both cert_file and key_file"),
        ("client.yml", "tls_server_config:\n  cert_file: cert.pem\n  key_file: cert.pem\n  client_auth_type: RequireAndVerifyClientCert\n", "client.yml:4:21: client certificates are not supported"),
        ("syntax.yml", "basic_auth_users: [\n", "syntax.yml:"),
    ] {
        std::fs::write(d.join(name), text).unwrap();
        let out = assert_cmd::Command::cargo_bin("kvmnet")
            .unwrap()
            .args(["exporter", "--listen", "127.0.0.1:1", "--web-config", d.join(name).to_str().unwrap()])
            .timeout(Duration::from_secs(10))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
    // bad durations and addresses too
    for (args, want) in [
        (
            vec!["--interval", "soon"],
            "--interval: `soon` is not a duration",
        ),
        (
            vec!["--listen", "localhost"],
            "--listen: `localhost` is not an address:port",
        ),
    ] {
        let out = assert_cmd::Command::cargo_bin("kvmnet")
            .unwrap()
            .arg("exporter")
            .args(&args)
            .timeout(Duration::from_secs(10))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(want));
    }
}

/// Metric names a PromQL text uses (kvmnet_* identifiers).
fn metric_names(text: &str) -> Vec<String> {
    let mut out = vec![];
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(p) = text[i..].find("kvmnet_") {
        let start = i + p;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.push(text[start..end].to_string());
        i = end;
    }
    out
}

#[test]
fn shipped_alerts_and_dashboard_use_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // every metric the exporter can export, from its own source
    let src = std::fs::read_to_string(root.join("crates/kvmnet/src/exporter/metrics.rs")).unwrap();
    let mut exported: Vec<String> = vec![];
    for n in metric_names(&src) {
        exported.push(n.clone());
        exported.push(format!("{n}_total"));
    }
    let alerts = std::fs::read_to_string(root.join("contrib/prometheus/alerts.yml")).unwrap();
    let dash = std::fs::read_to_string(root.join("contrib/grafana/kvmnet.json")).unwrap();
    let v: Value = serde_json::from_str(&dash).unwrap();
    assert!(v["panels"].as_array().unwrap().len() >= 8);
    for (what, text) in [("alerts.yml", &alerts), ("kvmnet.json", &dash)] {
        let used = metric_names(text);
        assert!(!used.is_empty());
        for m in used {
            assert!(
                exported.contains(&m),
                "{what} uses {m}, which the exporter does not export"
            );
        }
    }
    // promtool validates the rules where Prometheus is installed (CI installs it)
    if Command::new("promtool").arg("--version").output().is_ok() {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(root.join("contrib/prometheus/alerts.yml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        require_cmd("promtool");
    }
}
