//! `kvmnet doctor --fix` on a broken namespace lab: the safe fixes are applied through the
//! journaled apply path, the guests really reach the outside afterwards, and doctor is clean.
//! Without --yes and without a terminal nothing changes. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use kvmnet_testkit::{require_cmd, require_root, Lab};

fn kvmnet() -> Command {
    Command::cargo_bin("kvmnet").unwrap()
}

fn break_lab(lab: &Lab) {
    lab.hv.sysctl("net.ipv4.ip_forward", "0").unwrap();
    lab.hv
        .ip(&["link", "set", &lab.guests[1].host_dev, "down"])
        .unwrap();
    lab.hv
        .ip(&["link", "set", &lab.guests[2].host_dev, "nomaster"])
        .unwrap();
    lab.hv.nft("delete table ip kvmlab\n").unwrap();
    lab.hv.sysctl("net.ipv4.conf.br0.arp_ignore", "8").unwrap();
    // guest 1: a static ARP entry with a wrong MAC, and its MAC pinned to guest 2's port
    let g = &lab.guests[0];
    lab.hv
        .ip(&[
            "neigh",
            "replace",
            &g.ip,
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "br0",
            "nud",
            "permanent",
        ])
        .unwrap();
    lab.hv
        .exec(&[
            "bridge",
            "fdb",
            "replace",
            &g.mac,
            "dev",
            &lab.guests[1].host_dev,
            "master",
            "static",
            "sticky",
        ])
        .unwrap();
}

#[test]
fn fix_repairs_a_broken_lab() {
    if !require_root("fix_repairs_a_broken_lab") {
        return;
    }
    require_cmd("nft");
    let lab = Lab::nat(3).unwrap();
    break_lab(&lab);
    for i in 0..3 {
        assert!(
            !lab.guest_pings(i, "203.0.113.1"),
            "guest {i} must be cut off first"
        );
    }
    let out = kvmnet()
        .args([
            "doctor",
            "--netns",
            lab.hv.name(),
            "--target",
            "203.0.113.1",
            "--fix",
            "--yes",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "net.ipv4.ip_forward = 1",
        "net.ipv4.conf.br0.arp_ignore = 0",
        "remove neighbour entry",
        "remove bridge fdb entry",
        "up",
        "master br0",
        "masquerade 10.0.0.0/24 out of uplink",
    ] {
        assert!(text.contains(want), "plan shows {want:?}: {text}");
    }
    // a port that was down needs its carrier event (linkwatch, up to a second) to forward
    for i in 0..3 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !lab.guest_pings(i, "203.0.113.1") && std::time::Instant::now() < deadline {}
        assert!(
            lab.guest_pings(i, "203.0.113.1"),
            "guest {i} reaches the upstream after the fix"
        );
    }
    // the masquerade lives in kvmnet's own table, nowhere else
    let rules = lab
        .hv
        .exec(&["nft", "list", "table", "inet", "kvmnet"])
        .unwrap();
    assert!(rules.contains("masquerade"), "{rules}");
    kvmnet()
        .args([
            "doctor",
            "--netns",
            lab.hv.name(),
            "--target",
            "203.0.113.1",
        ])
        .assert()
        .code(0);
}

#[test]
fn fix_without_yes_off_a_terminal_changes_nothing() {
    if !require_root("fix_without_yes_off_a_terminal_changes_nothing") {
        return;
    }
    let lab = Lab::nat(1).unwrap();
    lab.hv.sysctl("net.ipv4.ip_forward", "0").unwrap();
    let out = kvmnet()
        .args(["doctor", "--netns", lab.hv.name(), "--fix"])
        .write_stdin("y\n")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let v = lab
        .hv
        .exec(&["sysctl", "-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(v.trim(), "0");
    // --fix works on the live host only
    kvmnet()
        .args(["doctor", "--fix", "--from", "x.json"])
        .assert()
        .code(2);
}
