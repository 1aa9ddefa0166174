//! Differential test of `kvmnet trace` against the real kernel for IPv6: the NAT lab gets a
//! routed IPv6 network beside its IPv4 one (guests 2001:db8:0:1::1X/64 on br0, the upstream
//! routes the prefix back to the host, a target 2001:db8:ffff::1 behind it), and for the
//! healthy lab and each fault, every flow is both simulated and really sent. Any disagreement
//! fails. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvmnet_testkit::{require_cmd, require_root, Lab};

const TARGET: &str = "2001:db8:ffff::1";
const GW: &str = "2001:db8:0:1::1";

fn gip(i: usize) -> String {
    format!("2001:db8:0:1::1{}", i + 1)
}

/// The lab's IPv6 side (no DAD: addresses are usable at once).
fn setup_v6(l: &Lab) {
    let hv = &l.hv;
    hv.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{GW}/64"),
        "dev",
        "br0",
        "nodad",
    ])
    .unwrap();
    hv.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:ff::2/64",
        "dev",
        "uplink",
        "nodad",
    ])
    .unwrap();
    hv.ip(&["-6", "route", "add", "default", "via", "2001:db8:ff::1"])
        .unwrap();
    hv.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    l.up.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:ff::1/64",
        "dev",
        "down0",
        "nodad",
    ])
    .unwrap();
    l.up.ip(&["-6", "addr", "add", &format!("{TARGET}/128"), "dev", "lo"])
        .unwrap();
    l.up.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:0:1::/64",
        "via",
        "2001:db8:ff::2",
    ])
    .unwrap();
    for (i, g) in l.guests.iter().enumerate() {
        g.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", gip(i)),
            "dev",
            "eth0",
            "nodad",
        ])
        .unwrap();
        g.ns.ip(&["-6", "route", "add", "default", "via", GW])
            .unwrap();
    }
}

struct Flow {
    args: fn(&Lab) -> Vec<String>,
    real: fn(&Lab) -> bool,
}

fn vm(l: &Lab, i: usize) -> String {
    format!("vm:{}", l.guests[i].name())
}

fn flows() -> Vec<Flow> {
    vec![
        Flow {
            args: |l| vec!["--from".into(), vm(l, 0), "--to".into(), TARGET.into()],
            real: |l| l.guests[0].ns.ping(TARGET, None),
        },
        Flow {
            args: |l| {
                vec![
                    "--from".into(),
                    vm(l, 0),
                    "--to".into(),
                    TARGET.into(),
                    "--proto".into(),
                    "tcp".into(),
                    "--dport".into(),
                    "80".into(),
                ]
            },
            real: |l| l.guests[0].ns.tcp_connects(TARGET, 80),
        },
        Flow {
            args: |l| vec!["--from".into(), vm(l, 0), "--to".into(), GW.into()],
            real: |l| l.guests[0].ns.ping(GW, None),
        },
        Flow {
            args: |l| vec!["--from".into(), vm(l, 0), "--to".into(), gip(1)],
            real: |l| l.guests[0].ns.ping(&gip(1), None),
        },
        Flow {
            args: |_| vec!["--from".into(), "host".into(), "--to".into(), gip(0)],
            real: |l| l.hv.ping(&gip(0), None),
        },
        Flow {
            args: |l| vec!["--from".into(), vm(l, 1), "--to".into(), TARGET.into()],
            real: |l| l.guests[1].ns.ping(TARGET, None),
        },
    ]
}

type Inject = fn(&Lab);

fn faults() -> Vec<(&'static str, Inject)> {
    vec![
        ("healthy", |_| {}),
        ("IPv6 forwarding off", |l| {
            l.hv.sysctl("net.ipv6.conf.all.forwarding", "0").unwrap()
        }),
        ("forward rule drops the target", |l| {
            l.hv.nft(&format!(
                "table inet guard {{\n chain forward {{ type filter hook forward priority 0; policy accept;\n  ip6 daddr {TARGET} drop\n }}\n}}\n"
            ))
            .unwrap()
        }),
        ("forward rule drops tcp only", |l| {
            l.hv.nft("table ip6 guard {\n chain forward { type filter hook forward priority 0; policy accept;\n  tcp dport 80 reject\n }\n}\n").unwrap()
        }),
        ("g1's port down", |l| {
            l.hv.ip(&["link", "set", &l.guests[0].host_dev, "down"])
                .unwrap();
        }),
        ("g1 without an IPv6 default route", |l| {
            l.guests[0]
                .ns
                .ip(&["-6", "route", "del", "default"])
                .unwrap();
        }),
        ("no IPv6 default route on the host", |l| {
            l.hv.ip(&["-6", "route", "del", "default"]).unwrap();
        }),
        ("arp_ignore 8 on br0 (IPv4 only)", |l| {
            l.hv.sysctl("net.ipv4.conf.br0.arp_ignore", "8").unwrap();
        }),
        ("a blackhole route for the target's prefix", |l| {
            l.hv.ip(&["-6", "route", "add", "blackhole", "2001:db8:ffff::/48"])
                .unwrap();
        }),
        ("policy rule from g1 into an unreachable table", |l| {
            l.hv.ip(&[
                "-6",
                "route",
                "add",
                "unreachable",
                "default",
                "table",
                "77",
            ])
            .unwrap();
            l.hv.ip(&[
                "-6",
                "rule",
                "add",
                "from",
                &gip(0),
                "table",
                "77",
                "prio",
                "500",
            ])
            .unwrap();
        }),
        ("input rule drops ICMPv6 echo to the host", |l| {
            l.hv.nft("table inet guard {\n chain in { type filter hook input priority 0; policy accept;\n  icmpv6 type echo-request drop\n }\n}\n").unwrap()
        }),
    ]
}

#[test]
fn ipv6_trace_agrees_with_the_kernel() {
    if !require_root("ipv6_trace_agrees_with_the_kernel") {
        return;
    }
    require_cmd("nft");
    let flows = flows();
    let faults = faults();
    let results: Vec<Vec<(bool, bool, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = faults
            .iter()
            .map(|(_, inject)| {
                let flows = &flows;
                s.spawn(move || {
                    let lab = Lab::nat(2).unwrap();
                    setup_v6(&lab);
                    let _srv = lab.up.tcp_server("::", 80).unwrap();
                    // IPv6 needs a moment (link-local addresses, neighbour discovery) before
                    // the healthy lab works: wait for it, then break it
                    let t0 = std::time::Instant::now();
                    while !(lab.guests.iter().all(|g| g.ns.ping(TARGET, None))
                        && lab.hv.ping(&gip(0), None))
                        && t0.elapsed() < std::time::Duration::from_secs(10)
                    {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                    inject(&lab);
                    flows
                        .iter()
                        .map(|f| {
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
    let (mut agree, mut total, mut bad) = (0, 0, vec![]);
    println!("IPv6 trace vs kernel ('+' passes, '.' blocked; x = disagreement):");
    for ((fname, _), row) in faults.iter().zip(&results) {
        print!("{fname:<50}");
        for (i, (sim, real, why)) in row.iter().enumerate() {
            total += 1;
            if sim == real {
                agree += 1;
                print!("  {}", if *real { '+' } else { '.' });
            } else {
                print!("  x");
                bad.push(format!(
                    "{fname} / F{}: trace says {why}, the kernel {}",
                    i + 1,
                    if *real { "delivered it" } else { "did not" }
                ));
            }
        }
        println!();
    }
    println!("agreement: {agree}/{total}");
    assert!(bad.is_empty(), "disagreements:\n{}", bad.join("\n"));
    // the healthy lab really works, or the table proves nothing
    assert!(
        results[0].iter().all(|(_, real, _)| *real),
        "healthy IPv6 lab: {:?}",
        results[0]
    );
}
