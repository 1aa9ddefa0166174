//! Open vSwitch for real: a private ovsdb-server and ovs-vswitchd (userspace datapath) in the
//! lab's hypervisor namespace, guests on VLAN access ports, and an active-backup bond of two
//! veths to a LAN switch. kvmnet must read the switch over OVSDB, trace through the NORMAL
//! action as the switch really forwards, and name the one fault: a guest on the wrong VLAN
//! (`vlan-mismatch`, and nothing else), a bond member down (`bond-degraded` while traffic
//! still flows), vswitchd stopped (`ovs-not-running`), custom OpenFlow rules
//! (`ovs-flows-custom`). Root only; needs openvswitch-switch and ethtool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{doctor, eventually, kvmnet_json, root_errors};
use kvmnet_testkit::ovs::OvsLab;
use kvmnet_testkit::{require_cmd, require_root};
use serde_json::Value;

const UPSTREAM: &str = "203.0.113.1";

fn trace(lab: &OvsLab, from: &str, to: &str) -> (bool, String) {
    let v = kvmnet_json(&[
        "trace",
        "--json",
        "--netns",
        lab.hv.name(),
        "--from",
        &format!("vm:{from}"),
        "--to",
        to,
    ]);
    let verdict = &v["verdict"];
    (verdict["verdict"] == "delivered", format!("{verdict}"))
}

/// Root findings (not consequences of another) that are errors or warnings, as (code,
/// severity, affects).
fn problems(r: &Value) -> Vec<(String, String, Vec<String>)> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info" && f.get("caused_by").is_none())
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["affects"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn open_vswitch_vlans_bonds_and_daemons() {
    if !require_root("open_vswitch_vlans_bonds_and_daemons") {
        return;
    }
    for c in [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-ofctl",
        "ethtool",
        "nft",
    ] {
        require_cmd(c);
    }
    let lab = OvsLab::build(&[10, 10, 10], true).unwrap();
    let (g1, g2) = (&lab.guests[0], &lab.guests[1]);
    let lan = "10.0.10.254";
    eventually("the switch forwards", 15, || g1.ns.ping(&g2.ip, None));
    assert!(g1.ns.ping("10.0.10.1", None), "g1 reaches its gateway");
    assert!(g1.ns.ping(lan, None), "g1 reaches the LAN over the bond");
    assert!(g1.ns.ping(UPSTREAM, None), "g1 reaches the upstream");

    // discovery: the switch, its ports, VLANs and bond, from OVSDB
    let show = kvmnet_json(&["show", "ovs", "vms", "--json", "--netns", lab.hv.name()]);
    let br = &show["ovs"]["bridges"][0];
    assert_eq!(br["name"], "ovsbr0");
    assert_eq!(br["datapath_type"], "netdev");
    let port = |n: &str| {
        br["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no port {n}: {br:#}"))
    };
    assert_eq!(port("ovp1")["tag"], 10);
    assert_eq!(port("bond0")["bond_mode"], "active-backup");
    assert_eq!(port("bond0")["interfaces"].as_array().unwrap().len(), 2);
    let vms = show["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 3, "bond members are not guests: {vms:#?}");
    let v1 = vms.iter().find(|v| v["name"] == g1.name()).unwrap();
    assert_eq!(v1["vnics"][0]["source_bridge"], "ovsbr0");
    assert_eq!(v1["vnics"][0]["vlan_tags"][0], 10);

    // healthy: nothing wrong, and the trace says what the switch does
    let r = doctor(lab.hv.name(), UPSTREAM, false);
    assert!(problems(&r).is_empty(), "healthy: {:?}", problems(&r));
    for to in [g2.ip.as_str(), "10.0.10.1", lan, UPSTREAM] {
        let (ok, why) = trace(&lab, g1.name(), to);
        assert!(ok, "trace {} -> {to}: {why}", g1.name());
    }

    // a guest moved to the wrong VLAN really loses its peers; doctor names it and only it
    lab.ovs.vsctl(&["set", "port", "ovp2", "tag=20"]).unwrap();
    eventually("g2 is cut off", 15, || !g2.ns.ping(&g1.ip, None));
    let r = doctor(lab.hv.name(), UPSTREAM, false);
    let p = problems(&r);
    assert!(
        p.iter().any(|(c, sev, a)| c == "vlan-mismatch"
            && sev == "error"
            && a == &vec![g2.name().to_string()]),
        "{p:?}"
    );
    assert!(
        p.iter()
            .all(|(c, _, a)| c == "vlan-mismatch" && a == &vec![g2.name().to_string()]),
        "only vlan-mismatch on g2: {p:?}"
    );
    assert_eq!(
        root_errors(&r)
            .into_iter()
            .filter(|(c, _, _)| c != "vlan-mismatch")
            .count(),
        0
    );
    for (from, to) in [
        (g2.name(), g1.ip.as_str()),
        (g1.name(), g2.ip.as_str()),
        (g2.name(), "10.0.10.1"),
    ] {
        let (ok, why) = trace(&lab, from, to);
        assert!(
            !ok,
            "trace {from} -> {to} must fail like the real packet: {why}"
        );
        assert!(why.contains("vlan-mismatch"), "{why}");
    }
    let (ok, why) = trace(&lab, g1.name(), lab.guests[2].ip.as_str());
    assert!(
        ok && lab.guests[0].ns.ping(&lab.guests[2].ip, None),
        "g1-g3 unaffected: {why}"
    );
    lab.ovs.vsctl(&["set", "port", "ovp2", "tag=10"]).unwrap();
    eventually("g2 is back", 15, || g2.ns.ping(&g1.ip, None));

    // a bond member down: degraded, but traffic flows over the other one
    lab.hv.ip(&["link", "set", "bm2", "down"]).unwrap();
    eventually("OVS sees bm2 down", 15, || {
        lab.ovs
            .vsctl(&["get", "interface", "bm2", "link_state"])
            .is_ok_and(|s| s.trim() == "down")
    });
    eventually("traffic still flows over the bond", 15, || {
        g1.ns.ping(lan, None)
    });
    let r = doctor(lab.hv.name(), UPSTREAM, false);
    let p = problems(&r);
    assert!(
        p.iter()
            .any(|(c, sev, _)| c == "bond-degraded" && sev == "warning"),
        "{p:?}"
    );
    assert!(p.iter().all(|(c, _, _)| c == "bond-degraded"), "{p:?}");
    let f = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "bond-degraded")
        .unwrap();
    assert_eq!(f["subject"][0], "bond0");
    assert!(f["summary"].as_str().unwrap().contains("bm2"), "{f:#}");
    lab.hv.ip(&["link", "set", "bm2", "up"]).unwrap();

    // custom OpenFlow rules: said, and the trace does not pretend to know
    lab.ovs
        .ofctl(
            &[
                "add-flow",
                "priority=100,dl_type=0x0800,nw_dst=10.0.10.13,actions=drop",
            ],
            "ovsbr0",
        )
        .unwrap();
    let r = doctor(lab.hv.name(), UPSTREAM, false);
    assert!(
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "ovs-flows-custom" && f["severity"] == "info"),
        "{r:#}"
    );
    let v = kvmnet_json(&[
        "trace",
        "--json",
        "--netns",
        lab.hv.name(),
        "--from",
        &format!("vm:{}", g1.name()),
        "--to",
        &lab.guests[2].ip,
    ]);
    // NORMAL no longer decides: the live switch is asked, and its answer is the verdict
    assert_eq!(v["verdict"]["verdict"], "dropped", "{v:#}");
    assert_eq!(v["verdict"]["cause"], "ovs-flow", "{v:#}");
    assert!(v.to_string().contains("ofproto/trace"), "{v:#}");
    assert!(
        !g1.ns.ping(&lab.guests[2].ip, None),
        "the rule really drops"
    );
    lab.ovs
        .ofctl(
            &["del-flows", "priority=100,dl_type=0x0800,nw_dst=10.0.10.13"],
            "ovsbr0",
        )
        .ok();
    lab.ovs
        .ofctl(
            &["--strict", "del-flows", "priority=100,ip,nw_dst=10.0.10.13"],
            "ovsbr0",
        )
        .ok();

    // the switch daemon gone: everything on it is cut off, and doctor says why
    lab.ovs.stop_vswitchd();
    eventually("g1 is cut off", 15, || !g1.ns.ping(&g2.ip, None));
    let r = doctor(lab.hv.name(), UPSTREAM, false);
    let roots = root_errors(&r);
    assert!(
        roots
            .iter()
            .any(|(c, _, a)| c == "ovs-not-running" && a.len() == 3),
        "{roots:?}"
    );
    assert!(
        roots.iter().all(|(c, _, _)| c == "ovs-not-running"),
        "{roots:?}"
    );
}

/// The OVS state without counters, as a comparable value.
fn ovs_shape(netns: &str) -> Value {
    let mut v = kvmnet_json(&["show", "ovs", "links", "addrs", "--json", "--netns", netns]);
    if let Some(bs) = v["ovs"]["bridges"].as_array_mut() {
        for b in bs {
            for p in b["ports"].as_array_mut().into_iter().flatten() {
                for i in p["interfaces"].as_array_mut().into_iter().flatten() {
                    if let Some(o) = i.as_object_mut() {
                        o.remove("statistics");
                        o.remove("ofport");
                    }
                }
            }
        }
    }
    let o = v.as_object_mut().unwrap();
    o.remove("collected_at");
    for l in o["links"].as_array_mut().into_iter().flatten() {
        if let Some(l) = l.as_object_mut() {
            l.remove("stats");
            if l.get("qdisc").and_then(Value::as_str) == Some("noop") {
                l.insert("qdisc".into(), "noqueue".into());
            }
        }
    }
    for a in o["addresses"].as_array_mut().into_iter().flatten() {
        if let Some(f) = a.get_mut("flags").and_then(Value::as_array_mut) {
            f.retain(|x| x != "tentative");
        }
    }
    // the kernel's IPv6 link-local addresses come and go with links
    if let Some(a) = o.get_mut("addresses").and_then(Value::as_array_mut) {
        a.retain(|x| !x["address"].as_str().unwrap_or("").starts_with("fe80"));
    }
    v
}

#[test]
fn configure_an_ovs_network_with_two_vlans_and_a_bond() {
    use kvmnet_testkit::{Lab, LabSpec, Netns, Ovs};
    if !require_root("configure_an_ovs_network_with_two_vlans_and_a_bond") {
        return;
    }
    for c in ["ovsdb-server", "ovs-vswitchd", "ethtool"] {
        require_cmd(c);
    }
    let lab = Lab::build(LabSpec {
        guests: 3,
        configure_host: false,
        ..Default::default()
    })
    .unwrap();
    let ovs = Ovs::start(&lab.hv).unwrap();
    // guests: g1, g2 in VLAN 10, g3 in VLAN 20
    for (g, (ip, gw)) in lab.guests.iter().zip([
        ("10.0.10.11/24", "10.0.10.1"),
        ("10.0.10.12/24", "10.0.10.1"),
        ("10.0.20.13/24", "10.0.20.1"),
    ]) {
        g.ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
        g.ns.ip(&["addr", "add", ip, "dev", "eth0"]).unwrap();
        g.ns.ip(&["route", "add", "default", "via", gw]).unwrap();
        g.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]).unwrap();
    }
    // two bond members towards a switch namespace
    let prefix = lab.hv.name().strip_suffix("-hv").unwrap().to_string();
    let sw = Netns::create(&prefix, "sw").unwrap();
    for m in ["bm1", "bm2"] {
        lab.hv
            .ip(&[
                "link",
                "add",
                m,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{m}p"),
                "netns",
                sw.name(),
            ])
            .unwrap();
        sw.ip(&["link", "set", &format!("{m}p"), "up"]).unwrap();
    }
    let run = tempfile::tempdir().unwrap();
    let kv = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("kvmnet")
            .unwrap()
            .env("KVMNET_RUN_DIR", run.path())
            .args(args)
            .output()
            .unwrap()
    };
    let before = ovs_shape(lab.hv.name());
    let f = run.path().join("ovs.yaml");
    std::fs::write(
        &f,
        "networks:
  - name: prod
    type: ovs
    bridge: kvovs0
    datapath: netdev
    ports: [bm1, bm2]
    bond:
      mode: active-backup
    vlans:
      - id: 10
        subnet: 10.0.10.0/24
        gateway: 10.0.10.1
      - id: 20
        subnet: 10.0.20.0/24
        gateway: 10.0.20.1
vnics:
  - vm: g1
    tap: vnet1
    network: prod
    vlan: 10
  - vm: g2
    tap: vnet2
    network: prod
    vlan: 10
  - vm: g3
    tap: vnet3
    network: prod
    vlan: 20
",
    )
    .unwrap();
    let file = f.to_str().unwrap();
    let out = kv(&["apply", "-f", file, "--netns", lab.hv.name()]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // the switch as configured
    let st = kvmnet_json(&["show", "ovs", "--json", "--netns", lab.hv.name()]);
    let br = st["ovs"]["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "kvovs0")
        .cloned()
        .unwrap();
    assert_eq!(br["datapath_type"], "netdev");
    let port = |n: &str| {
        br["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("no port {n}: {br:#}"))
    };
    assert_eq!(port("kvovs0.up")["bond_mode"], "active-backup");
    assert_eq!(port("kvovs0.up")["trunks"], serde_json::json!([10, 20]));
    assert_eq!(port("vnet3")["tag"], 20);
    assert_eq!(port("kvovs0.10")["tag"], 10);
    // and it switches for real
    let (g1, g2, g3) = (&lab.guests[0], &lab.guests[1], &lab.guests[2]);
    assert!(eventually_ping(g2, "10.0.10.11"), "g2 reaches g1");
    eventually("g1 reaches g2 in VLAN 10", 15, || {
        g1.ns.ping("10.0.10.12", None)
    });
    assert!(
        g1.ns.ping("10.0.10.1", None),
        "g1 reaches its VLAN's host address"
    );
    assert!(
        g3.ns.ping("10.0.20.1", None),
        "g3 reaches its VLAN's host address"
    );
    assert!(
        !g1.ns.ping("10.0.20.13", None),
        "VLANs are separate (and the host does not route)"
    );
    // planned again: nothing to do
    let out = kv(&["plan", "--json", "-f", file, "--netns", lab.hv.name()]);
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["changes"], 0, "{p:#}");
    // doctor sees the VLANs as they are
    let r = doctor(lab.hv.name(), "10.0.10.1", false);
    let bad: Vec<_> = problems(&r)
        .into_iter()
        .filter(|(c, _, _)| c == "vlan-mismatch")
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    // one field: g2 to VLAN 20 is exactly one port change
    std::fs::write(
        run.path().join("ovs2.yaml"),
        std::fs::read_to_string(&f).unwrap().replace(
            "    tap: vnet2\n    network: prod\n    vlan: 10",
            "    tap: vnet2\n    network: prod\n    vlan: 20",
        ),
    )
    .unwrap();
    let out = kv(&[
        "plan",
        "--json",
        "-f",
        run.path().join("ovs2.yaml").to_str().unwrap(),
        "--netns",
        lab.hv.name(),
    ]);
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["changes"], 1, "{p:#}");
    assert_eq!(p["steps"][0]["op"], "ovs-set-port");
    // rolled back, the switch and the host are as before
    let out = kv(&["rollback", "--netns", lab.hv.name()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = ovs_shape(lab.hv.name());
    assert_eq!(
        serde_json::to_string_pretty(&before).unwrap(),
        serde_json::to_string_pretty(&after).unwrap()
    );
    drop(ovs);
    drop(sw);
}

fn eventually_ping(g: &kvmnet_testkit::Guest, dst: &str) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(15) {
        if g.ns.ping(dst, None) {
            return true;
        }
    }
    false
}
