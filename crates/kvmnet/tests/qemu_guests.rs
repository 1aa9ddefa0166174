//! Real QEMU guests (TCG) on taps in a lab hypervisor namespace: kvmnet must find the QEMU
//! processes and their taps, read each guest's own view through qemu-guest-agent, probe from
//! inside the guests, and name the one fault injected at a time — each fault first confirmed
//! from inside the guest (its ping fails), then diagnosed, then repaired and confirmed healthy.
//! Root only; needs qemu-system-x86, busybox-static and apt access to the kernel package.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{kvmnet_json as kvmnet, root_errors, verdict_ok};
use kvmnet_testkit::{require_cmd, require_root, Lab, LabSpec, NicModel, QemuGuest};
use serde_json::Value;

const UPSTREAM: &str = "203.0.113.1";

fn doctor(lab: &Lab, probe: bool) -> Value {
    common::doctor(lab.hv.name(), UPSTREAM, probe)
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    common::eventually(what, 20, f)
}

struct Fault {
    code: &'static str,
    /// A word the finding's subject must contain.
    subject: &'static str,
    inject: fn(&Lab),
    /// From inside vm1: true when the fault shows (what an admin would see).
    symptom: fn(&QemuGuest, &Lab) -> bool,
    repair: fn(&Lab),
}

fn vm1(lab: &Lab) -> &QemuGuest {
    lab.vm("vm1").unwrap()
}

fn catalogue() -> Vec<Fault> {
    vec![
        Fault {
            code: "tap-not-in-bridge",
            subject: "tap1",
            inject: |l| {
                l.hv.ip(&["link", "set", "tap1", "nomaster"]).unwrap();
            },
            symptom: |g, l| !g.pings(&l.gateway(), None),
            repair: |l| {
                l.hv.ip(&["link", "set", "tap1", "master", "br0"]).unwrap();
            },
        },
        Fault {
            code: "ip-forward-disabled",
            subject: "net.ipv4.ip_forward",
            inject: |l| l.hv.sysctl("net.ipv4.ip_forward", "0").unwrap(),
            symptom: |g, l| g.pings(&l.gateway(), None) && !g.pings(UPSTREAM, None),
            repair: |l| l.hv.sysctl("net.ipv4.ip_forward", "1").unwrap(),
        },
        Fault {
            code: "nat-masquerade-missing",
            subject: "br0",
            inject: |l| l.hv.nft("delete table ip kvmlab\n").unwrap(),
            symptom: |g, l| g.pings(&l.gateway(), None) && !g.pings(UPSTREAM, None),
            repair: |l| {
                l.hv.nft(
                    "table ip kvmlab {\n chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.0.0.0/24 oifname \"uplink\" counter masquerade\n }\n}\n",
                )
                .unwrap()
            },
        },
        Fault {
            code: "guest-wrong-gateway",
            subject: "vm1",
            inject: |l| {
                let (rc, out) = vm1(l)
                    .sh("ip route replace default via 10.0.0.254 dev eth0")
                    .unwrap();
                assert_eq!(rc, 0, "{out}");
            },
            symptom: |g, _| !g.pings(UPSTREAM, None),
            repair: |l| {
                let (rc, out) = vm1(l)
                    .sh(&format!(
                        "ip route replace default via {} dev eth0",
                        l.gateway()
                    ))
                    .unwrap();
                assert_eq!(rc, 0, "{out}");
            },
        },
        Fault {
            code: "mtu-mismatch",
            subject: "tap1",
            inject: |l| {
                l.hv.ip(&["link", "set", "tap1", "mtu", "1400"]).unwrap();
            },
            // small packets pass; a full-size DF packet from a guest on the same bridge is
            // dropped at the narrower port without an ICMP error (what TCP sends; echo replies
            // carry no DF and are fragmented on the way)
            symptom: |g, l| {
                let ip = g.ip.as_deref().unwrap();
                g.pings(&l.guests[0].ip, None) && !l.guests[0].ns.ping(ip, Some(1500))
            },
            repair: |l| {
                l.hv.ip(&["link", "set", "tap1", "mtu", "1500"]).unwrap();
            },
        },
    ]
}

#[test]
fn real_qemu_guests_are_seen_probed_and_diagnosed() {
    if !require_root("real_qemu_guests_are_seen_probed_and_diagnosed") {
        return;
    }
    for c in ["qemu-system-x86_64", "busybox", "nft", "apt-get", "dpkg"] {
        require_cmd(c);
    }
    let mut lab = Lab::build(LabSpec {
        guests: 1,
        ..Default::default()
    })
    .unwrap();
    lab.guests[0]
        .ns
        .set_resolv("nameserver 203.0.113.1\n")
        .unwrap();
    lab.add_qemu_guest(1, NicModel::Virtio).unwrap();
    lab.add_qemu_guest(2, NicModel::E1000).unwrap();
    let t0 = Instant::now();
    lab.wait_vms(Duration::from_secs(180)).unwrap();
    eprintln!("two TCG guests up in {:.1?}", t0.elapsed());
    // give the agents a resolver so the healthy case has none of the resolver warnings
    for vm in &lab.vms {
        vm.sh("echo nameserver 203.0.113.1 > /etc/resolv.conf")
            .unwrap();
    }

    // the real network works from inside both guests
    for vm in &lab.vms {
        eventually(&format!("{} pings the gateway", vm.name), || {
            vm.pings(&lab.gateway(), None)
        });
        assert!(
            vm.pings(UPSTREAM, None),
            "{} cannot reach upstream",
            vm.name
        );
    }

    // discovery: the QEMU processes, their taps, models and the agent's view
    let show = kvmnet(&["show", "vms", "--json", "--netns", lab.hv.name()]);
    for (name, tap, model, ip) in [
        ("vm1", "tap1", "virtio", "10.0.0.21"),
        ("vm2", "tap2", "e1000", "10.0.0.22"),
    ] {
        let vm = show["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} not discovered: {show:#}"));
        assert_eq!(vm["source"], "qemu");
        assert_eq!(vm["pid"], lab.vm(name).unwrap().pid());
        let nic = &vm["vnics"][0];
        assert_eq!(nic["host_dev"], tap, "{vm:#}");
        assert_eq!(nic["source_bridge"], "br0", "{vm:#}");
        assert_eq!(nic["model"], model, "{vm:#}");
        assert_eq!(nic["mac"], lab.vm(name).unwrap().mac, "{vm:#}");
        assert_eq!(nic["addresses"][0]["address"], ip, "{vm:#}");
        assert_eq!(nic["addresses"][0]["origin"], "agent", "{vm:#}");
        let guest = &vm["guest"];
        assert_eq!(guest["source"], "agent", "{vm:#}");
        let routes = guest["routes"].as_array().expect("agent routes");
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "0.0.0.0/0" && r["gateway"] == "10.0.0.1"),
            "{vm:#}"
        );
        assert_eq!(guest["nameservers"][0], UPSTREAM, "{vm:#}");
    }

    // healthy: no root-cause error, every verdict ok, probes ran inside the guests via the agent
    let r = doctor(&lab, true);
    assert!(root_errors(&r).is_empty(), "healthy lab: {r:#}");
    for name in ["vm1", "vm2"] {
        assert!(verdict_ok(&r, name), "{name}: {r:#}");
        let probes: Vec<&Value> = r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["from"] == name)
            .collect();
        assert!(
            probes
                .iter()
                .any(|p| p["kind"] == "ping" && p["target"] == UPSTREAM && p["ok"] == true),
            "{name} probes: {probes:#?}"
        );
        assert!(
            probes.iter().all(|p| p["ok"] == true),
            "{name}: {probes:#?}"
        );
    }
    // the e1000 guest is named slow, as information only
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "nic-model-slow"
                && f["severity"] == "info"
                && f["affects"][0] == "vm2"),
        "{r:#}"
    );

    // kvmnet bench into and out of a QEMU guest, through its agent
    for (from, to) in [("host", "vm:vm1"), ("vm:vm1", "host")] {
        let r = kvmnet(&[
            "bench",
            "--json",
            "--netns",
            lab.hv.name(),
            "--from",
            from,
            "--to",
            to,
            "--duration",
            "2s",
        ]);
        let bps = r["tcp_bits_per_second"].as_f64().unwrap_or(0.0);
        assert!(bps > 1e6, "{from} -> {to}: {r:#}");
        assert!(r["notes"].to_string().contains("guest agent"), "{r:#}");
    }

    for f in catalogue() {
        (f.inject)(&lab);
        eventually(&format!("{}: the fault shows inside vm1", f.code), || {
            (f.symptom)(vm1(&lab), &lab)
        });
        let r = doctor(&lab, false);
        let roots = root_errors(&r);
        assert!(
            roots.iter().any(|(c, s, a)| c == f.code
                && s.iter().any(|x| x.contains(f.subject))
                && a.iter().any(|x| x == "vm1")),
            "{}: expected a root error naming {} for vm1, got {roots:?}\n{r:#}",
            f.code,
            f.subject
        );
        assert!(
            roots.iter().all(|(c, _, _)| c == f.code),
            "{}: other root errors {roots:?}",
            f.code
        );
        assert!(!verdict_ok(&r, "vm1"), "{}: vm1 verdict ok", f.code);
        (f.repair)(&lab);
        eventually(&format!("{}: vm1 works again", f.code), || {
            vm1(&lab).pings(UPSTREAM, None)
                && lab.guests[0]
                    .ns
                    .ping(vm1(&lab).ip.as_deref().unwrap(), Some(1500))
        });
        let r = doctor(&lab, false);
        assert!(
            root_errors(&r).is_empty(),
            "{}: after repair: {:?}",
            f.code,
            root_errors(&r)
        );
    }
}
