//! The doctor's fault catalogue: for every fault this kernel can reproduce, a healthy NAT lab
//! with three guests gets exactly that one fault; doctor must report the fault's code as a
//! root-cause error on the right subject and no other root-cause error. The same lab without
//! a fault must report no error. Prints the catalogue's precision/recall table. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use assert_cmd::Command;
use kvmnet_testkit::{require_cmd, require_root, Lab};
use serde_json::Value;

fn doctor(lab: &Lab) -> (Value, i32) {
    let out = Command::cargo_bin("kvmnet")
        .unwrap()
        .args([
            "doctor",
            "--json",
            "--netns",
            lab.hv.name(),
            "--target",
            "203.0.113.1",
        ])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "doctor failed ({code}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), code)
}

/// (code, subject, severity) of root findings (not caused_by another).
fn roots(r: &Value) -> Vec<(String, Vec<String>, String)> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f.get("caused_by").is_none())
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["subject"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect(),
                f["severity"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

type Inject = fn(&Lab);

struct Fault {
    code: &'static str,
    /// A subject the finding must name.
    subject: fn(&Lab) -> String,
    severity: &'static str,
    inject: Inject,
}

fn g(lab: &Lab, i: usize) -> &kvmnet_testkit::Guest {
    &lab.guests[i]
}

fn catalogue() -> Vec<Fault> {
    vec![
        Fault {
            code: "uplink-down",
            subject: |_| "uplink".into(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&["link", "set", "uplink", "down"]).unwrap();
            },
        },
        Fault {
            code: "no-default-route",
            subject: |_| "main table".into(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&["route", "del", "default"]).unwrap();
            },
        },
        Fault {
            code: "route-rejected",
            subject: |_| "table 123".into(),
            severity: "error",
            inject: |l| {
                // one guest's traffic is steered into a table whose default route is a blackhole
                l.hv.ip(&["route", "add", "blackhole", "default", "table", "123"])
                    .unwrap();
                l.hv.ip(&[
                    "rule",
                    "add",
                    "from",
                    &g(l, 2).ip,
                    "table",
                    "123",
                    "prio",
                    "1000",
                ])
                .unwrap();
            },
        },
        Fault {
            code: "route-rejected",
            subject: |_| "rule 900".into(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&[
                    "rule",
                    "add",
                    "from",
                    &g(l, 1).ip,
                    "to",
                    "203.0.113.0/24",
                    "prohibit",
                    "prio",
                    "900",
                ])
                .unwrap();
            },
        },
        Fault {
            code: "port-isolated",
            subject: |l| g(l, 0).host_dev.clone(),
            severity: "warning",
            inject: |l| {
                for i in [0, 1] {
                    l.hv.exec(&[
                        "bridge",
                        "link",
                        "set",
                        "dev",
                        &g(l, i).host_dev,
                        "isolated",
                        "on",
                    ])
                    .unwrap();
                }
            },
        },
        Fault {
            code: "arp-ignored",
            subject: |_| "net.ipv4.conf.br0.arp_ignore".into(),
            severity: "error",
            inject: |l| {
                l.hv.sysctl("net.ipv4.conf.br0.arp_ignore", "8").unwrap();
                for g in &l.guests {
                    g.ns.ip(&["neigh", "flush", "all"]).unwrap();
                }
            },
        },
        Fault {
            code: "route-misdirected",
            subject: |_| "route 10.0.0.0/25 dev uplink".into(),
            severity: "error",
            inject: |l| {
                // a more specific route steals the guests' half of the subnet
                l.hv.ip(&["route", "add", "10.0.0.0/25", "dev", "uplink"])
                    .unwrap();
            },
        },
        Fault {
            code: "fdb-wrong-port",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                // guest 2's MAC pinned to guest 3's port
                l.hv.exec(&[
                    "bridge",
                    "fdb",
                    "replace",
                    &g(l, 1).mac,
                    "dev",
                    &g(l, 2).host_dev,
                    "master",
                    "static",
                    "sticky",
                ])
                .unwrap();
            },
        },
        Fault {
            code: "neigh-wrong-mac",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                // a static ARP entry for guest 2 that points at a MAC nobody has
                l.hv.ip(&[
                    "neigh",
                    "replace",
                    &g(l, 1).ip,
                    "lladdr",
                    "02:00:00:00:00:99",
                    "dev",
                    "br0",
                    "nud",
                    "permanent",
                ])
                .unwrap();
            },
        },
        Fault {
            code: "ip-forward-disabled",
            subject: |_| "net.ipv4.ip_forward".into(),
            severity: "error",
            inject: |l| l.hv.sysctl("net.ipv4.ip_forward", "0").unwrap(),
        },
        Fault {
            code: "ip-forward-disabled",
            subject: |_| "net.ipv4.conf.br0.forwarding".into(),
            severity: "error",
            inject: |l| l.hv.sysctl("net.ipv4.conf.br0.forwarding", "0").unwrap(),
        },
        Fault {
            code: "rp-filter-drop",
            subject: |_| "net.ipv4.conf.br0.rp_filter".into(),
            severity: "error",
            inject: |l| {
                // the route back to guest 2 points elsewhere; strict rp_filter on br0
                l.hv.ip(&[
                    "link", "add", "hole0", "type", "veth", "peer", "name", "hole1",
                ])
                .unwrap();
                l.hv.ip(&["link", "set", "hole0", "up"]).unwrap();
                l.hv.ip(&["link", "set", "hole1", "up"]).unwrap();
                l.hv.ip(&[
                    "route",
                    "add",
                    &format!("{}/32", g(l, 1).ip),
                    "dev",
                    "hole0",
                ])
                .unwrap();
                l.hv.sysctl("net.ipv4.conf.br0.rp_filter", "1").unwrap();
            },
        },
        Fault {
            code: "dns-unconfigured",
            subject: |l| format!("/etc/netns/{}/resolv.conf", l.hv.name()),
            severity: "error",
            inject: |l| l.hv.set_resolv("# no resolvers\n").unwrap(),
        },
        Fault {
            code: "bridge-down",
            subject: |_| "br0".into(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&["link", "set", "br0", "down"]).unwrap();
            },
        },
        Fault {
            code: "tap-down",
            subject: |l| g(l, 1).host_dev.clone(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&["link", "set", &g(l, 1).host_dev, "down"])
                    .unwrap();
            },
        },
        Fault {
            code: "tap-not-in-bridge",
            subject: |l| g(l, 1).host_dev.clone(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&["link", "set", &g(l, 1).host_dev, "nomaster"])
                    .unwrap();
            },
        },
        Fault {
            code: "port-blocked",
            subject: |l| g(l, 1).host_dev.clone(),
            severity: "error",
            inject: |l| {
                // kernel STP with a 30 s forward delay; the flapped port sits in "listening"
                l.hv.ip(&[
                    "link",
                    "set",
                    "br0",
                    "type",
                    "bridge",
                    "stp_state",
                    "1",
                    "forward_delay",
                    "3000",
                ])
                .unwrap();
                l.hv.ip(&["link", "set", &g(l, 1).host_dev, "down"])
                    .unwrap();
                l.hv.ip(&["link", "set", &g(l, 1).host_dev, "up"]).unwrap();
            },
        },
        Fault {
            code: "nat-masquerade-missing",
            subject: |_| "br0".into(),
            severity: "error",
            inject: |l| l.hv.nft("delete table ip kvmlab\n").unwrap(),
        },
        Fault {
            code: "forward-blocked",
            subject: |_| "inet block forward handle".into(),
            severity: "error",
            inject: |l| {
                l.hv.nft("table inet block {\n chain forward { type filter hook forward priority 0; policy accept;\n  ip daddr 203.0.113.0/24 counter drop\n }\n}\n").unwrap()
            },
        },
        Fault {
            code: "bridge-netfilter-drop",
            subject: |_| "br0".into(),
            severity: "error",
            inject: |l| {
                // what Docker does: FORWARD policy DROP with its own accepts; routed traffic
                // still passes, bridged guest-to-guest frames do not
                l.hv.exec(&["iptables", "-P", "FORWARD", "DROP"]).unwrap();
                l.hv.exec(&[
                    "iptables", "-A", "FORWARD", "-i", "br0", "-o", "uplink", "-j", "ACCEPT",
                ])
                .unwrap();
                l.hv.exec(&[
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-i",
                    "uplink",
                    "-o",
                    "br0",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "RELATED,ESTABLISHED",
                    "-j",
                    "ACCEPT",
                ])
                .unwrap();
            },
        },
        Fault {
            code: "mtu-mismatch",
            subject: |l| g(l, 1).host_dev.clone(),
            severity: "error",
            inject: |l| {
                l.hv.ip(&["link", "set", &g(l, 1).host_dev, "mtu", "1400"])
                    .unwrap();
            },
        },
        Fault {
            code: "mac-duplicate",
            subject: |l| format!("vm:{}", g(l, 2).name()),
            severity: "error",
            inject: |l| {
                let mac = g(l, 1).mac.clone();
                g(l, 2)
                    .ns
                    .ip(&["link", "set", "eth0", "address", &mac])
                    .unwrap();
            },
        },
        Fault {
            code: "guest-no-address",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                g(l, 1).ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
            },
        },
        Fault {
            code: "guest-wrong-subnet",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                let n = &g(l, 1).ns;
                n.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
                n.ip(&["addr", "add", "10.9.0.12/24", "dev", "eth0"])
                    .unwrap();
                n.ip(&["route", "add", "default", "via", "10.9.0.1"])
                    .unwrap();
            },
        },
        Fault {
            code: "guest-no-default-route",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                g(l, 1).ns.ip(&["route", "del", "default"]).unwrap();
            },
        },
        Fault {
            code: "guest-wrong-gateway",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                g(l, 1)
                    .ns
                    .ip(&["route", "replace", "default", "via", "10.0.0.254"])
                    .unwrap();
            },
        },
        Fault {
            code: "guest-wrong-netmask",
            subject: |l| g(l, 2).name().to_string(),
            severity: "error",
            inject: |l| {
                // the right address with a /29: the host's address falls outside it
                let ns = &g(l, 2).ns;
                ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
                ns.ip(&["addr", "add", &format!("{}/29", g(l, 2).ip), "dev", "eth0"])
                    .unwrap();
                // the kernel refuses the gateway now ("invalid gateway"): that is the point
                let _ = ns.ip(&["route", "replace", "default", "via", "10.0.0.1"]);
            },
        },
        Fault {
            code: "ip-conflict",
            subject: |l| g(l, 1).ip.clone(),
            severity: "error",
            inject: |l| {
                let ip = format!("{}/24", g(l, 1).ip);
                g(l, 2).ns.ip(&["addr", "add", &ip, "dev", "eth0"]).unwrap();
            },
        },
        Fault {
            code: "guest-mtu-too-large",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                g(l, 1)
                    .ns
                    .ip(&["link", "set", "eth0", "mtu", "9000"])
                    .unwrap();
            },
        },
        Fault {
            code: "gateway-unreachable",
            subject: |_| "inet guard input handle".into(),
            severity: "error",
            inject: |l| {
                l.hv.nft("table inet guard {\n chain input { type filter hook input priority 0; policy accept;\n  iifname \"br0\" icmp type echo-request drop\n }\n}\n").unwrap()
            },
        },
        Fault {
            code: "dns-unreachable",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| g(l, 1).ns.set_resolv("nameserver 10.0.0.53\n").unwrap(),
        },
        Fault {
            code: "guest-link-down",
            subject: |l| g(l, 1).name().to_string(),
            severity: "error",
            inject: |l| {
                g(l, 1).ns.ip(&["link", "set", "eth0", "down"]).unwrap();
            },
        },
        Fault {
            code: "firewall-conflict",
            subject: |_| "ip filter FORWARD".into(),
            severity: "warning",
            inject: |l| {
                // docker's chains and a libvirt table on the same hook, docker dropping by default
                l.hv.exec(&["iptables", "-N", "DOCKER-USER"]).unwrap();
                l.hv.exec(&["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"])
                    .unwrap();
                l.hv.exec(&["iptables", "-A", "FORWARD", "-i", "br0", "-j", "ACCEPT"])
                    .unwrap();
                l.hv.exec(&["iptables", "-A", "FORWARD", "-o", "br0", "-j", "ACCEPT"])
                    .unwrap();
                l.hv.exec(&["iptables", "-P", "FORWARD", "DROP"]).unwrap();
                l.hv.nft("table inet libvirt_network {\n chain forward { type filter hook forward priority 0; policy accept; }\n chain guest_input { }\n}\n").unwrap();
            },
        },
    ]
}

#[test]
fn healthy_lab_has_no_error() {
    if !require_root("healthy_lab_has_no_error") {
        return;
    }
    let lab = Lab::nat(3).unwrap();
    assert!(lab.guest_pings(0, "203.0.113.1"));
    let (r, code) = doctor(&lab);
    let errs: Vec<_> = roots(&r).into_iter().filter(|f| f.2 == "error").collect();
    assert!(
        errs.is_empty(),
        "healthy lab reports errors: {errs:#?}\n{r:#}"
    );
    assert_eq!(code, 0);
    for v in r["verdicts"].as_array().unwrap() {
        assert_eq!(v["ok"], true, "{v}");
    }
    assert_eq!(r["verdicts"].as_array().unwrap().len(), 3);
}

#[test]
fn fault_catalogue() {
    if !require_root("fault_catalogue") {
        return;
    }
    require_cmd("nft");
    require_cmd("iptables");
    let mut failures = vec![];
    // per code: (true positives, false positives, false negatives)
    let mut table: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    let mut fp_by_code: BTreeMap<String, u32> = BTreeMap::new();
    for f in catalogue() {
        let lab = Lab::nat(3).unwrap();
        (f.inject)(&lab);
        let (r, code) = doctor(&lab);
        let want_subject = (f.subject)(&lab);
        let rs = roots(&r);
        let hit = rs.iter().any(|(c, subj, sev)| {
            c == f.code && sev == f.severity && subj.iter().any(|s| s.contains(&want_subject))
        });
        let others: Vec<_> = rs
            .iter()
            .filter(|(c, _, sev)| sev == "error" && c != f.code)
            .collect();
        let e = table.entry(f.code).or_default();
        if hit {
            e.0 += 1;
        } else {
            e.2 += 1;
            failures.push(format!(
                "{}: expected a root {} on {want_subject:?}; got {rs:?}",
                f.code, f.severity
            ));
        }
        for (c, _, _) in &others {
            *fp_by_code.entry(c.clone()).or_default() += 1;
            failures.push(format!("{}: unexpected root error {c}: {others:?}", f.code));
        }
        if f.severity == "error" && code != 3 {
            failures.push(format!("{}: exit code {code}, expected 3", f.code));
        }
    }
    for (c, n) in &fp_by_code {
        if let Some(e) = table.iter_mut().find(|(k, _)| **k == c.as_str()) {
            e.1 .1 += n;
        }
    }
    println!("doctor fault catalogue (namespace lab, 3 guests):");
    println!(
        "{:<26} {:>3} {:>3} {:>3}  {:>9} {:>7}",
        "code", "TP", "FP", "FN", "precision", "recall"
    );
    for (code, (tp, fp, fneg)) in &table {
        let p = if tp + fp == 0 {
            1.0
        } else {
            *tp as f64 / (*tp + *fp) as f64
        };
        let rc = if tp + fneg == 0 {
            1.0
        } else {
            *tp as f64 / (*tp + *fneg) as f64
        };
        println!("{code:<26} {tp:>3} {fp:>3} {fneg:>3}  {p:>9.2} {rc:>7.2}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
