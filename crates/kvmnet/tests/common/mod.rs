//! Helpers shared by the binary's integration tests: run kvmnet, read its JSON, pick out
//! root-cause errors, wait for the lab to settle.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

/// Runs kvmnet with `args`; it must exit 0 or 3 (findings); returns its JSON output.
pub fn kvmnet_json(args: &[&str]) -> Value {
    let out = Command::cargo_bin("kvmnet")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "kvmnet {args:?} failed ({code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `kvmnet doctor --json --netns NETNS --target TARGET [--probe]`.
pub fn doctor(netns: &str, target: &str, probe: bool) -> Value {
    let mut args = vec!["doctor", "--json", "--netns", netns, "--target", target];
    if probe {
        args.push("--probe");
    }
    kvmnet_json(&args)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Root-cause errors of a doctor report as (code, subject, affects).
pub fn root_errors(r: &Value) -> Vec<(String, Vec<String>, Vec<String>)> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.get("caused_by").is_none() && f["severity"] == "error")
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                strings(&f["subject"]),
                strings(&f["affects"]),
            )
        })
        .collect()
}

/// Whether the verdict for `vm` is ok.
pub fn verdict_ok(r: &Value, vm: &str) -> bool {
    r["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vm"] == vm)
        .unwrap_or_else(|| panic!("no verdict for {vm}: {r:#}"))["ok"]
        == true
}

/// Retries `f` for up to `secs` seconds; panics naming `what` when it never holds.
pub fn eventually(what: &str, secs: u64, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out waiting until {what}");
}

/// Retries `f` for up to `secs` seconds until it yields a value; panics naming `what` when it
/// never does.
pub fn eventually_value<T>(what: &str, secs: u64, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out waiting until {what}");
}

/// `kvmnet trace --json --netns NETNS ARGS`: (delivered, why not).
pub fn trace_delivered(netns: &str, args: &[String]) -> (bool, String) {
    let out = Command::cargo_bin("kvmnet")
        .unwrap()
        .args(["trace", "--json", "--netns", netns])
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "trace failed ({code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verdict = &v["verdict"];
    let delivered = verdict["verdict"] == "delivered";
    let why = if delivered {
        "delivered".to_string()
    } else {
        format!(
            "{} at {}: {}",
            verdict["cause"].as_str().unwrap_or("unknown"),
            verdict["at"].as_str().unwrap_or(""),
            verdict["reason"]
                .as_str()
                .or(verdict["what"].as_str())
                .unwrap_or("")
        )
    };
    (delivered, why)
}
