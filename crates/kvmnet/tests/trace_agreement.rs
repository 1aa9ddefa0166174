//! Differential test of `kvmnet trace` against the real kernel: for the healthy lab and each
//! fault whose effect on traffic is deterministic, every flow of a set is both simulated and
//! really sent (ping, TCP connect against a listener), and the two must agree. Prints the
//! agreement table; any disagreement fails. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvmnet_testkit::{require_cmd, require_root, Lab};

struct Flow {
    name: &'static str,
    /// kvmnet trace arguments (endpoints use the lab's names).
    args: fn(&Lab) -> Vec<String>,
    /// Really send it; true when it got through (and back).
    real: fn(&Lab) -> bool,
}

fn vm(l: &Lab, i: usize) -> String {
    format!("vm:{}", l.guests[i].name())
}

fn flows() -> Vec<Flow> {
    vec![
        Flow {
            name: "g1 -> 203.0.113.1 icmp",
            args: |l| {
                vec![
                    "--from".into(),
                    vm(l, 0),
                    "--to".into(),
                    "203.0.113.1".into(),
                ]
            },
            real: |l| l.guests[0].ns.ping("203.0.113.1", None),
        },
        Flow {
            name: "g1 -> gateway icmp",
            args: |l| vec!["--from".into(), vm(l, 0), "--to".into(), l.gateway()],
            real: |l| l.guests[0].ns.ping(&l.gateway(), None),
        },
        Flow {
            name: "g1 -> g2 icmp",
            args: |l| {
                vec![
                    "--from".into(),
                    vm(l, 0),
                    "--to".into(),
                    l.guests[1].ip.clone(),
                ]
            },
            real: |l| l.guests[0].ns.ping(&l.guests[1].ip, None),
        },
        Flow {
            name: "g1 -> g2 icmp 1500 DF",
            args: |l| {
                vec![
                    "--from".into(),
                    vm(l, 0),
                    "--to".into(),
                    l.guests[1].ip.clone(),
                    "--size".into(),
                    "1500".into(),
                ]
            },
            real: |l| l.guests[0].ns.ping(&l.guests[1].ip, Some(1500)),
        },
        Flow {
            name: "host -> g1 icmp",
            args: |l| {
                vec![
                    "--from".into(),
                    "host".into(),
                    "--to".into(),
                    l.guests[0].ip.clone(),
                ]
            },
            real: |l| l.hv.ping(&l.guests[0].ip, None),
        },
        Flow {
            name: "g1 -> 203.0.113.1 tcp/80",
            args: |l| {
                vec![
                    "--from".into(),
                    vm(l, 0),
                    "--to".into(),
                    "203.0.113.1".into(),
                    "--proto".into(),
                    "tcp".into(),
                    "--dport".into(),
                    "80".into(),
                ]
            },
            real: |l| l.guests[0].ns.tcp_connects("203.0.113.1", 80),
        },
        Flow {
            name: "g1 -> 203.0.113.1 icmp 1500 DF",
            args: |l| {
                vec![
                    "--from".into(),
                    vm(l, 0),
                    "--to".into(),
                    "203.0.113.1".into(),
                    "--size".into(),
                    "1500".into(),
                ]
            },
            real: |l| l.guests[0].ns.ping("203.0.113.1", Some(1500)),
        },
        Flow {
            name: "upstream -> :8080 (forward to g1:80)",
            args: |_| {
                vec![
                    "--from".into(),
                    "198.51.100.1".into(),
                    "--to".into(),
                    "198.51.100.2".into(),
                    "--proto".into(),
                    "tcp".into(),
                    "--dport".into(),
                    "8080".into(),
                ]
            },
            real: |l| l.up.tcp_connects("198.51.100.2", 8080),
        },
    ]
}

type Inject = fn(&Lab);

/// A router on the guests' LAN beyond a port of br0 (the upstream namespace's second leg, at
/// 10.0.0.254), and g1 using it as its gateway.
fn lan_router(l: &Lab) {
    l.hv.ip(&[
        "link",
        "add",
        "lan0",
        "type",
        "veth",
        "peer",
        "name",
        "lanp",
        "netns",
        l.up.name(),
    ])
    .unwrap();
    l.hv.ip(&["link", "set", "lan0", "master", "br0"]).unwrap();
    l.hv.ip(&["link", "set", "lan0", "up"]).unwrap();
    l.up.ip(&["addr", "add", "10.0.0.254/24", "dev", "lanp"])
        .unwrap();
    l.up.ip(&["link", "set", "lanp", "up"]).unwrap();
    l.guests[0]
        .ns
        .ip(&["route", "replace", "default", "via", "10.0.0.254"])
        .unwrap();
}

fn faults() -> Vec<(&'static str, Inject)> {
    vec![
        ("healthy", |_| {}),
        ("uplink-down", |l| {
            l.hv.ip(&["link", "set", "uplink", "down"]).unwrap();
        }),
        ("no-default-route", |l| {
            l.hv.ip(&["route", "del", "default"]).unwrap();
        }),
        ("ip-forward-disabled", |l| {
            l.hv.sysctl("net.ipv4.ip_forward", "0").unwrap()
        }),
        ("arp_ignore 8 on br0", |l| {
            l.hv.sysctl("net.ipv4.conf.br0.arp_ignore", "8").unwrap();
            for g in &l.guests {
                g.ns.ip(&["neigh", "flush", "all"]).unwrap();
            }
        }),
        ("arp_ignore 2 on br0", |l| {
            l.hv.sysctl("net.ipv4.conf.br0.arp_ignore", "2").unwrap();
            for g in &l.guests {
                g.ns.ip(&["neigh", "flush", "all"]).unwrap();
            }
        }),
        (
            "g1's gateway: a LAN router beyond a bridge port",
            lan_router,
        ),
        (
            "the same LAN router, br_netfilter off (asymmetric NAT)",
            |l| {
                lan_router(l);
                l.hv.sysctl("net.bridge.bridge-nf-call-iptables", "0")
                    .unwrap();
            },
        ),
        ("a more specific route steals the guests' addresses", |l| {
            l.hv.ip(&["route", "add", "10.0.0.0/25", "dev", "uplink"])
                .unwrap();
        }),
        ("g2's MAC pinned to g3's port (sticky FDB entry)", |l| {
            l.hv.exec(&[
                "bridge",
                "fdb",
                "replace",
                &l.guests[1].mac,
                "dev",
                &l.guests[2].host_dev,
                "master",
                "static",
                "sticky",
            ])
            .unwrap();
        }),
        ("g1's MAC pinned to g2's port (sticky FDB entry)", |l| {
            l.hv.exec(&[
                "bridge",
                "fdb",
                "replace",
                &l.guests[0].mac,
                "dev",
                &l.guests[1].host_dev,
                "master",
                "static",
                "sticky",
            ])
            .unwrap();
        }),
        ("isolated ports (g1, g2)", |l| {
            for g in &l.guests[..2] {
                l.hv.exec(&[
                    "bridge",
                    "link",
                    "set",
                    "dev",
                    &g.host_dev,
                    "isolated",
                    "on",
                ])
                .unwrap();
            }
        }),
        ("static ARP entry with a wrong MAC (g2)", |l| {
            l.hv.ip(&[
                "neigh",
                "replace",
                &l.guests[1].ip,
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "br0",
                "nud",
                "permanent",
            ])
            .unwrap();
        }),
        ("policy rule to a blackhole table (g1)", |l| {
            l.hv.ip(&["route", "add", "blackhole", "default", "table", "123"])
                .unwrap();
            l.hv.ip(&[
                "rule",
                "add",
                "from",
                &l.guests[0].ip,
                "table",
                "123",
                "prio",
                "1000",
            ])
            .unwrap();
        }),
        ("policy rule prohibit to the upstream (g1)", |l| {
            l.hv.ip(&[
                "rule",
                "add",
                "from",
                &l.guests[0].ip,
                "to",
                "203.0.113.0/24",
                "prohibit",
                "prio",
                "900",
            ])
            .unwrap();
        }),
        ("br0 forwarding off", |l| {
            l.hv.sysctl("net.ipv4.conf.br0.forwarding", "0").unwrap()
        }),
        ("rp-filter-drop", |l| {
            l.hv.ip(&[
                "link", "add", "hole0", "type", "veth", "peer", "name", "hole1",
            ])
            .unwrap();
            l.hv.ip(&["link", "set", "hole0", "up"]).unwrap();
            l.hv.ip(&["link", "set", "hole1", "up"]).unwrap();
            l.hv.ip(&[
                "route",
                "add",
                &format!("{}/32", l.guests[0].ip),
                "dev",
                "hole0",
            ])
            .unwrap();
            l.hv.sysctl("net.ipv4.conf.br0.rp_filter", "1").unwrap();
        }),
        ("bridge-down", |l| {
            l.hv.ip(&["link", "set", "br0", "down"]).unwrap();
        }),
        ("tap-down (g1)", |l| {
            l.hv.ip(&["link", "set", &l.guests[0].host_dev, "down"])
                .unwrap();
        }),
        ("tap-not-in-bridge (g1)", |l| {
            l.hv.ip(&["link", "set", &l.guests[0].host_dev, "nomaster"])
                .unwrap();
        }),
        ("port-blocked (g2)", |l| {
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
            l.hv.ip(&["link", "set", &l.guests[1].host_dev, "down"])
                .unwrap();
            l.hv.ip(&["link", "set", &l.guests[1].host_dev, "up"])
                .unwrap();
        }),
        ("nat-masquerade-missing", |l| {
            l.hv.nft("delete table ip kvmlab\n").unwrap()
        }),
        ("forward-blocked", |l| {
            l.hv.nft("table inet block {\n chain forward { type filter hook forward priority 0; policy accept;\n  ip daddr 203.0.113.0/24 counter drop\n }\n}\n").unwrap()
        }),
        ("forward reject tcp/80", |l| {
            l.hv.nft("table inet block {\n chain forward { type filter hook forward priority 0; policy accept;\n  tcp dport 80 reject with tcp reset\n }\n}\n").unwrap()
        }),
        ("bridge-netfilter-drop", |l| {
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
        }),
        ("iptables FORWARD drop, call-iptables 0", |l| {
            l.hv.exec(&["iptables", "-P", "FORWARD", "DROP"]).unwrap();
            l.hv.sysctl("net.bridge.bridge-nf-call-iptables", "0")
                .unwrap();
        }),
        ("mtu-mismatch (g2 port 1400)", |l| {
            l.hv.ip(&["link", "set", &l.guests[1].host_dev, "mtu", "1400"])
                .unwrap();
        }),
        ("uplink path MTU 1400", |l| {
            l.hv.ip(&["link", "set", "uplink", "mtu", "1400"]).unwrap();
            l.up.ip(&["link", "set", "down0", "mtu", "1400"]).unwrap();
        }),
        ("guest-no-address (g2)", |l| {
            l.guests[1]
                .ns
                .ip(&["addr", "flush", "dev", "eth0"])
                .unwrap();
        }),
        ("guest-no-default-route (g1)", |l| {
            l.guests[0].ns.ip(&["route", "del", "default"]).unwrap();
        }),
        ("guest-wrong-gateway (g1)", |l| {
            l.guests[0]
                .ns
                .ip(&["route", "replace", "default", "via", "10.0.0.254"])
                .unwrap();
        }),
        ("guest-mtu-too-large (g2 9000)", |l| {
            l.guests[1]
                .ns
                .ip(&["link", "set", "eth0", "mtu", "9000"])
                .unwrap();
        }),
        ("guest-link-down (g2)", |l| {
            l.guests[1].ns.ip(&["link", "set", "eth0", "down"]).unwrap();
        }),
        ("input drops ping", |l| {
            l.hv.nft("table inet guard {\n chain input { type filter hook input priority 0; policy accept;\n  iifname \"br0\" icmp type echo-request drop\n }\n}\n").unwrap()
        }),
        ("dnat missing", |l| {
            l.hv.nft("delete table ip pf\n").unwrap()
        }),
    ]
}

fn setup(lab: &Lab) -> Vec<kvmnet_testkit::TcpServer> {
    // a port forward upstream -> g1:80, and listeners for the TCP flows
    lab.hv
        .nft("table ip pf {\n chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n  iifname \"uplink\" tcp dport 8080 dnat to 10.0.0.11:80\n }\n}\n")
        .unwrap();
    vec![
        lab.up.tcp_server("203.0.113.1", 80).unwrap(),
        lab.guests[0].ns.tcp_server("0.0.0.0", 80).unwrap(),
    ]
}

#[test]
fn trace_agrees_with_the_kernel() {
    if !require_root("trace_agrees_with_the_kernel") {
        return;
    }
    require_cmd("nft");
    require_cmd("iptables");
    let flows = flows();
    let faults = faults();
    // (fault, flow, simulated, real, why)
    let results: Vec<Vec<(bool, bool, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = faults
            .iter()
            .map(|(_, inject)| {
                let flows = &flows;
                s.spawn(move || {
                    let lab = Lab::nat(3).unwrap();
                    let _servers = setup(&lab);
                    inject(&lab);
                    flows
                        .iter()
                        .map(|f| {
                            // each flow starts with the guests' ARP caches empty, as the
                            // simulation (from the state collected now) assumes
                            for g in &lab.guests {
                                g.ns.ip(&["neigh", "flush", "all"]).unwrap();
                            }
                            let (sim, why) =
                                common::trace_delivered(lab.hv.name(), &(f.args)(&lab));
                            let real = (f.real)(&lab);
                            (sim, real, why)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut agree = 0;
    let mut total = 0;
    let mut bad = vec![];
    println!("trace vs kernel ('+' passes, '.' blocked; lowercase x = disagreement):");
    print!("{:<40}", "fault \\ flow");
    for i in 0..flows.len() {
        print!(" F{}", i + 1);
    }
    println!();
    for ((fname, _), row) in faults.iter().zip(&results) {
        print!("{fname:<40}");
        for (i, (sim, real, why)) in row.iter().enumerate() {
            total += 1;
            if sim == real {
                agree += 1;
                print!("  {}", if *real { '+' } else { '.' });
            } else {
                print!("  x");
                bad.push(format!(
                    "{fname} / {}: trace says {why}, the kernel {}",
                    flows[i].name,
                    if *real { "delivered it" } else { "did not" }
                ));
            }
        }
        println!();
    }
    for (i, f) in flows.iter().enumerate() {
        println!("  F{}: {}", i + 1, f.name);
    }
    println!("agreement: {agree}/{total}");
    assert!(bad.is_empty(), "disagreements:\n{}", bad.join("\n"));
}
