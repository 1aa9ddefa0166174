//! Golden tests: doctor and trace output, human and JSON, for snapshot fixtures of a NAT lab
//! (recorded from a real namespace lab, then given stable names). Reviewed with `cargo insta`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> (String, i32) {
    let out = Command::cargo_bin("kvmnet")
        .unwrap()
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn doctor_faults_human() {
    let f = fixture("nat-lab-faults.json");
    let (text, code) = run(&[
        "doctor",
        "--from",
        &f,
        "--target",
        "203.0.113.1",
        "--port",
        "443",
    ]);
    assert_eq!(code, 3);
    insta::assert_snapshot!(text);
}

#[test]
fn doctor_faults_json() {
    let f = fixture("nat-lab-faults.json");
    let (text, _) = run(&[
        "doctor",
        "--json",
        "--from",
        &f,
        "--target",
        "203.0.113.1",
        "--port",
        "443",
    ]);
    insta::assert_snapshot!(text);
}

#[test]
fn doctor_healthy_human() {
    let f = fixture("nat-lab-healthy.json");
    let (text, code) = run(&["doctor", "--from", &f, "--target", "203.0.113.1"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(text);
}

#[test]
fn trace_guest_to_outside_human() {
    let f = fixture("nat-lab-healthy.json");
    let (text, code) = run(&[
        "trace",
        "--from-snapshot",
        &f,
        "--from",
        "vm:web1",
        "--to",
        "203.0.113.1",
        "--proto",
        "tcp",
        "--dport",
        "443",
    ]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(text);
}

#[test]
fn trace_port_forward_json() {
    let f = fixture("nat-lab-healthy.json");
    let (text, code) = run(&[
        "trace",
        "--json",
        "--from-snapshot",
        &f,
        "--from",
        "198.51.100.1",
        "--to",
        "198.51.100.2",
        "--proto",
        "tcp",
        "--dport",
        "8080",
    ]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(text);
}

#[test]
fn trace_dropped_by_rule_human() {
    let f = fixture("nat-lab-faults.json");
    let (text, code) = run(&[
        "trace",
        "--from-snapshot",
        &f,
        "--from",
        "vm:web1",
        "--to",
        "203.0.113.1",
        "--proto",
        "tcp",
        "--dport",
        "443",
    ]);
    assert_eq!(code, 3);
    insta::assert_snapshot!(text);
}

#[test]
fn show_vms_human() {
    let f = fixture("nat-lab-faults.json");
    let (text, _) = run(&["show", "vms", "networks", "--from", &f]);
    insta::assert_snapshot!(text);
}

#[test]
fn topo_faults_svg() {
    let (text, code) = run(&["topo", "--from", &fixture("nat-lab-faults.json")]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(text);
}

#[test]
fn topo_healthy_dot() {
    let (text, code) = run(&[
        "topo",
        "-o",
        "dot",
        "--from",
        &fixture("nat-lab-healthy.json"),
    ]);
    assert_eq!(code, 0);
    insta::assert_snapshot!(text);
}
