//! `kvmnet demo`: every fault it knows is diagnosed, fixed and shown healthy, and the lab is
//! gone afterwards — also when the demo is interrupted with Ctrl-C. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use kvmnet_testkit::require_root;

fn demo_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("kvmnet-demo-"))
        .map(String::from)
        .collect()
}

#[test]
fn every_demo_fault_is_found_fixed_and_cleaned_up() {
    if !require_root("every_demo_fault_is_found_fixed_and_cleaned_up") {
        return;
    }
    for fault in [
        "ip-forward-disabled",
        "nat-masquerade-missing",
        "tap-not-in-bridge",
        "tap-down",
        "bridge-down",
    ] {
        let out = assert_cmd::Command::cargo_bin("kvmnet")
            .unwrap()
            .args(["demo", "--fault", fault, "--color", "never"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{fault}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // broken first, named, fixed, healthy
        let broken = text.split("== 3.").next().unwrap();
        assert!(
            broken.contains("FAIL"),
            "{fault}: the fault must show: {text}"
        );
        assert!(
            text.contains(&format!("{fault} [error]")),
            "{fault}: doctor names it: {text}"
        );
        let after = text.split("== 6. Healthy again").nth(1).unwrap();
        assert!(
            !after.contains("FAIL") && !after.contains("still broken"),
            "{fault}: {after}"
        );
        // this run's namespaces are gone (another test may run a demo of its own meanwhile)
        let prefix = text
            .split_whitespace()
            .find(|w| w.starts_with("kvmnet-demo-") && w.ends_with("-hv:"))
            .map(|w| w.trim_end_matches("-hv:").to_string())
            .unwrap();
        assert!(
            !demo_namespaces()
                .iter()
                .any(|n| n.starts_with(&format!("{prefix}-"))),
            "{fault}: namespaces left: {:?}",
            demo_namespaces()
        );
    }
    // a fault it does not know
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .args(["demo", "--fault", "cosmic-rays"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the demo knows"));
}

#[test]
fn an_interrupted_demo_removes_its_lab() {
    if !require_root("an_interrupted_demo_removes_its_lab") {
        return;
    }
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("kvmnet"))
        .args(["demo", "--fault", "tap-down", "--color", "never"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // the lab exists once the guests' reachability is printed
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the demo ended early");
        if line.contains("internet 203.0.113.1") {
            break;
        }
    }
    let pid = child.id().to_string();
    assert!(
        demo_namespaces().iter().any(|n| n.contains(&pid)),
        "the lab exists"
    );
    kvmnet_testkit::run(&["kill", "-INT", &pid]).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        !demo_namespaces().iter().any(|n| n.contains(&pid)),
        "namespaces left after Ctrl-C: {:?}",
        demo_namespaces()
    );
}
