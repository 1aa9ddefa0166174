//! Bad configurations: each must give one clear error naming the file, line and column of the
//! offending value, with the line and a caret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvmnet_config::{validate, Config};

const GOOD: &str = "\
networks:
  - name: lan
    type: nat
    bridge: kvbr0
    subnet: 10.10.0.0/24
    gateway: 10.10.0.1
    dhcp:
      start: 10.10.0.100
      end: 10.10.0.199
  - name: wan
    type: bridged
    bridge: kvbr1
    ports: [eth1]
vnics:
  - vm: web1
    tap: vnet1
    network: lan
    mac: 52:54:00:00:00:01
    ip: 10.10.0.11
port_forwards:
  - host_port: 8080
    to: 10.10.0.11
    to_port: 80
";

fn check(text: &str) -> Result<kvmnet_config::Desired, kvmnet_config::ConfigError> {
    let mut cfg = Config::default();
    cfg.add_source("net.yaml".into(), text.to_string())?;
    validate(&cfg)
}

#[test]
fn the_good_config_validates() {
    let d = check(GOOD).unwrap();
    assert_eq!(d.networks.len(), 2);
    assert_eq!(d.networks[0].gateway.unwrap().to_string(), "10.10.0.1/24");
    assert_eq!(d.vnics[0].mac.unwrap().to_string(), "52:54:00:00:00:01");
    assert_eq!(d.forwards[0].network, "lan");
}

/// (what, replace this, with this, expected line, message fragment)
const CASES: &[(&str, &str, &str, u64, &str)] = &[
    ("yaml syntax", "    subnet: 10.10.0.0/24\n", "    subnet: 10.10.0.0/24: x\n", 5, ""),
    ("wrong type", "    type: nat\n", "    type: [nat]\n", 3, "type"),
    ("unknown network type", "    type: nat\n", "    type: natted\n", 3, "natted"),
    ("unknown key", "    gateway: 10.10.0.1\n", "    gatway: 10.10.0.1\n", 6, "gatway"),
    ("overlapping subnets", "    type: bridged\n    bridge: kvbr1\n    ports: [eth1]\n", "    type: nat\n    bridge: kvbr1\n    subnet: 10.10.0.128/25\n", 13, "overlaps"),
    ("gateway outside subnet", "    gateway: 10.10.0.1\n", "    gateway: 10.20.0.1\n", 6, "outside its subnet"),
    ("dhcp range outside subnet", "      end: 10.10.0.199\n", "      end: 10.10.1.199\n", 9, "outside the subnet"),
    ("duplicate mac", "    ip: 10.10.0.11\n", "    ip: 10.10.0.11\n  - vm: web2\n    tap: vnet2\n    network: lan\n    mac: 52:54:00:00:00:01\n", 23, "already used"),
    ("vlan 4095", "    ip: 10.10.0.11\n", "    ip: 10.10.0.11\n    vlan: 4095\n", 20, "4094"),
    ("mtu 70000", "    bridge: kvbr0\n", "    bridge: kvbr0\n    mtu: 70000\n", 5, "MTU 70000"),
    ("16-character name", "    tap: vnet1\n", "    tap: vnet1234567890ab\n", 16, "at most 15"),
    ("forward to no network", "    to: 10.10.0.11\n", "    to: 10.99.0.11\n", 22, "in no network"),
    ("two networks one bridge", "    bridge: kvbr1\n", "    bridge: kvbr0\n", 12, "already used by network"),
];

#[test]
fn every_bad_config_names_file_line_and_column() {
    for (what, from, to, line, frag) in CASES {
        assert!(
            GOOD.contains(from),
            "{what}: fixture does not contain {from:?}"
        );
        let text = GOOD.replacen(from, to, 1);
        let err = check(&text).expect_err(what);
        let shown = err.to_string();
        eprintln!("--- {what}\n{shown}");
        assert_eq!(err.path, "net.yaml", "{what}");
        assert_eq!(err.line, *line, "{what}: {shown}");
        assert!(err.column > 0, "{what}: {shown}");
        assert!(shown.contains(frag), "{what}: {shown}");
        assert!(shown.contains('^'), "{what}: no caret: {shown}");
    }
}
