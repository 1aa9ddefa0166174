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
firewall:
  - vm: web1
    policy: drop
    rules:
      - action: allow
        proto: tcp
        ports: [22]
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
    assert!(d.firewall[0].drop_by_default);
}

#[test]
fn there_are_at_least_25_bad_configs() {
    assert!(CASES.len() >= 25, "{}", CASES.len());
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
    ("dhcp range reversed", "      end: 10.10.0.199\n", "      end: 10.10.0.90\n", 9, "before it starts"),
    ("subnet with host bits", "    subnet: 10.10.0.0/24\n", "    subnet: 10.10.0.5/24\n", 5, "host bits"),
    ("bridged with a subnet", "    ports: [eth1]\n", "    ports: [eth1]\n    subnet: 10.30.0.0/24\n", 14, "has no subnet"),
    ("nat without subnet", "    subnet: 10.10.0.0/24\n    gateway: 10.10.0.1\n", "", 3, "needs `subnet`"),
    ("vnic on an unknown network", "    network: lan\n", "    network: lna\n", 17, "did you mean `lan`"),
    ("port out of range", "  - host_port: 8080\n", "  - host_port: 70000\n", 21, "out of range"),
    ("malformed mac", "    mac: 52:54:00:00:00:01\n", "    mac: 52:54:00:00:00\n", 18, "not a MAC"),
    ("multicast mac", "    mac: 52:54:00:00:00:01\n", "    mac: 01:00:5e:00:00:01\n", 18, "multicast"),
    ("gateway is the network address", "    gateway: 10.10.0.1\n", "    gateway: 10.10.0.0\n", 6, "network address"),
    ("unreadable rate", "    ip: 10.10.0.11\n", "    ip: 10.10.0.11\n    qos: { rate: fast }\n", 20, "not a rate"),
    ("firewall action", "      - action: allow\n", "      - action: permit\n", 28, "use allow or deny"),
    ("firewall for an unknown vm", "  - vm: web1\n    policy: drop\n", "  - vm: web9\n    policy: drop\n", 25, "no vm named"),
    ("tap attached twice", "    ip: 10.10.0.11\n", "    ip: 10.10.0.11\n  - vm: web2\n    tap: vnet1\n    network: lan\n", 21, "attached twice"),
    ("ports without tcp/udp", "        proto: tcp\n", "        proto: icmp\n", 28, "need `proto: tcp`"),
    ("lease time too short", "      end: 10.10.0.199\n", "      end: 10.10.0.199\n      lease_time: 30\n", 10, "minimum"),
    ("network name with a space", "  - name: lan\n", "  - name: my lan\n", 2, "network name"),
    ("antispoof without mac", "    mac: 52:54:00:00:00:01\n", "    antispoof: true\n", 16, "antispoof needs"),
    ("vnic address outside its subnet", "    ip: 10.10.0.11\n", "    ip: 10.20.0.11\n", 19, "outside network"),
    ("static lease outside the subnet", "      end: 10.10.0.199\n", "      end: 10.10.0.199\n      hosts:\n        - mac: 52:54:00:00:00:09\n          ip: 10.99.0.9\n", 12, "outside the subnet"),
    ("duplicate address", "    ip: 10.10.0.11\n", "    ip: 10.10.0.11\n  - vm: web2\n    tap: vnet2\n    network: lan\n    ip: 10.10.0.11\n", 23, "already used"),
    ("dhcp on a bridged network", "    ports: [eth1]\n", "    ports: [eth1]\n    dhcp:\n      start: 10.30.0.2\n      end: 10.30.0.9\n", 15, "compete"),
    ("port forwarded twice", "    to_port: 80\n", "    to_port: 80\n  - host_port: 8080\n    to: 10.10.0.11\n", 24, "forwarded twice"),
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
