//! `doctor --probe` in namespace labs: probes run from the host and inside every guest, in
//! parallel, and agree with the configuration. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use assert_cmd::Command;
use kvmnet_testkit::{require_root, Lab, LabSpec};
use serde_json::Value;

fn doctor_probe(lab: &Lab, extra: &[&str]) -> (Value, i32) {
    let out = Command::cargo_bin("kvmnet")
        .unwrap()
        .args([
            "doctor",
            "--json",
            "--probe",
            "--netns",
            lab.hv.name(),
            "--target",
            "203.0.113.1",
        ])
        .args(extra)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), code)
}

fn root_codes(r: &Value) -> Vec<String> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.get("caused_by").is_none() && f["severity"] == "error")
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn healthy_lab_probes_clean_and_fast() {
    if !require_root("healthy_lab_probes_clean_and_fast") {
        return;
    }
    let lab = Lab::build(LabSpec {
        guests: 20,
        ..Default::default()
    })
    .unwrap();
    let _srv = lab.up.tcp_server("203.0.113.1", 443).unwrap();
    let t = Instant::now();
    let (r, code) = doctor_probe(&lab, &["--port", "443"]);
    let took = t.elapsed();
    assert_eq!(root_codes(&r), Vec::<String>::new(), "{r:#}");
    assert_eq!(code, 0);
    assert_eq!(r["verdicts"].as_array().unwrap().len(), 20);
    // informative only: 20 guests, 6 probes each plus the host's, all in parallel
    println!("doctor --probe, 20 guests: {took:.2?}");
}

#[test]
fn probes_find_a_closed_port_and_confirm_a_conflict() {
    if !require_root("probes_find_a_closed_port_and_confirm_a_conflict") {
        return;
    }
    let lab = Lab::nat(3).unwrap();
    let ip = format!("{}/24", lab.guests[1].ip);
    lab.guests[2]
        .ns
        .ip(&["addr", "add", &ip, "dev", "eth0"])
        .unwrap();
    let (r, _) = doctor_probe(&lab, &["--port", "443"]);
    let codes = root_codes(&r);
    assert!(codes.contains(&"port-closed".to_string()), "{codes:?}");
    let conflict = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "ip-conflict")
        .expect("ip-conflict");
    let ev: Vec<&str> = conflict["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        ev.iter().any(|e| e.contains("probe Dad")),
        "the DAD probe confirms it: {ev:?}"
    );
}

#[test]
fn probe_sees_a_tap_down_as_a_consequence() {
    if !require_root("probe_sees_a_tap_down_as_a_consequence") {
        return;
    }
    let lab = Lab::nat(2).unwrap();
    lab.hv
        .ip(&["link", "set", &lab.guests[0].host_dev, "down"])
        .unwrap();
    let (r, _) = doctor_probe(&lab, &[]);
    assert_eq!(root_codes(&r), vec!["tap-down".to_string()], "{r:#}");
    // the failed probes are there, caused by the tap
    assert!(r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["caused_by"] == "tap-down"
            || f["evidence"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str().unwrap().contains("probe"))));
}
