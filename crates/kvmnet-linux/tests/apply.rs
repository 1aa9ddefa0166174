//! The apply path is transactional: a step the kernel refuses midway undoes the steps before
//! it, and the host reads back exactly as before. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvmnet_linux::apply::{apply_plan, ApplyError};
use kvmnet_linux::{collect, CollectOptions};
use kvmnet_model::plan::PlanStep;
use kvmnet_model::HostState;
use kvmnet_testkit::{require_root, Lab};

/// The parts of a state an apply may touch, without counters and timestamps.
fn fingerprint(s: &HostState) -> String {
    let mut out = vec![format!("ip_forward={:?}", s.sysctls.ip_forward)];
    for l in &s.links {
        out.push(format!(
            "{} up={} master={:?} mtu={}",
            l.name, l.admin_up, l.master, l.mtu
        ));
    }
    for (k, v) in &s.sysctls.interfaces {
        out.push(format!("{k}: {v:?}"));
    }
    out.push(format!(
        "nft tables={:?}",
        s.nftables
            .tables
            .iter()
            .map(|t| &t.name)
            .collect::<Vec<_>>()
    ));
    out.join("\n")
}

#[test]
fn refused_step_rolls_back_everything() {
    if !require_root("refused_step_rolls_back_everything") {
        return;
    }
    let lab = Lab::nat(2).unwrap();
    lab.hv.sysctl("net.ipv4.ip_forward", "0").unwrap();
    lab.hv.ip(&["link", "set", "vnet1", "down"]).unwrap();
    let opts = CollectOptions::full(Some(lab.hv.name().to_string()));
    let before = fingerprint(&collect(&opts).unwrap().state);
    let steps = vec![
        PlanStep::SetSysctl {
            key: "net.ipv4.ip_forward".into(),
            value: "1".into(),
        },
        PlanStep::LinkUp {
            ifname: "vnet1".into(),
        },
        PlanStep::SetMtu {
            ifname: "vnet2".into(),
            mtu: 1400,
        },
        PlanStep::AddMasquerade {
            subnet: "10.0.0.0/24".parse().unwrap(),
            oifname: "uplink".into(),
        },
        // the kernel refuses this one: there is no such bridge
        PlanStep::SetMaster {
            ifname: "vnet2".into(),
            master: "nosuchbr".into(),
        },
    ];
    let err = apply_plan(Some(lab.hv.name()), &steps).unwrap_err();
    match err {
        ApplyError::RolledBack {
            index, rolled_back, ..
        } => {
            assert_eq!(index, 5);
            assert_eq!(rolled_back, 4);
        }
        other => panic!("expected a rollback, got {other}"),
    }
    let after = fingerprint(&collect(&opts).unwrap().state);
    assert_eq!(before, after, "the host must read back as before");
}

#[test]
fn applied_steps_read_back() {
    if !require_root("applied_steps_read_back") {
        return;
    }
    let lab = Lab::nat(1).unwrap();
    lab.hv.ip(&["link", "set", "vnet1", "nomaster"]).unwrap();
    let r = apply_plan(
        Some(lab.hv.name()),
        &[
            PlanStep::SetMaster {
                ifname: "vnet1".into(),
                master: "br0".into(),
            },
            PlanStep::SetSysctl {
                key: "net.ipv4.conf.br0.rp_filter".into(),
                value: "2".into(),
            },
        ],
    )
    .unwrap();
    assert_eq!(r.applied, 2);
    let journal = std::fs::read_to_string(&r.journal).unwrap();
    assert!(
        journal.contains("\"no-master\""),
        "the journal holds each inverse: {journal}"
    );
    let s = collect(&CollectOptions::full(Some(lab.hv.name().to_string())))
        .unwrap()
        .state;
    assert_eq!(s.link("vnet1").unwrap().master.as_deref(), Some("br0"));
    assert_eq!(s.sysctls.interfaces["br0"].rp_filter, Some(2));
    assert!(lab.guest_pings(0, "203.0.113.1"));
}

/// Neighbour and FDB steps are undone exactly: a static ARP entry and a sticky FDB entry
/// removed by steps before a refused one come back as they were.
#[test]
fn neighbour_and_fdb_steps_roll_back() {
    if !require_root("neighbour_and_fdb_steps_roll_back") {
        return;
    }
    let lab = Lab::nat(2).unwrap();
    let (g1, g2) = (&lab.guests[0], &lab.guests[1]);
    lab.hv
        .ip(&[
            "neigh",
            "replace",
            &g1.ip,
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
            &g1.mac,
            "dev",
            &g2.host_dev,
            "master",
            "static",
            "sticky",
        ])
        .unwrap();
    let opts = CollectOptions::full(Some(lab.hv.name().to_string()));
    let view = |s: &HostState| {
        let n: Vec<String> = s
            .neighbours
            .iter()
            .filter(|n| n.address.to_string() == g1.ip)
            .map(|n| format!("{} {:?} {:?}", n.ifname, n.lladdr, n.state))
            .collect();
        let f: Vec<String> = s
            .fdb
            .iter()
            .filter(|f| f.mac.to_string() == g1.mac && !f.is_self)
            .map(|f| format!("{} {} sticky={}", f.ifname, f.state, f.sticky))
            .collect();
        (n, f)
    };
    let before = view(&collect(&opts).unwrap().state);
    assert!(
        before.1.iter().any(|f| f.contains("sticky=true")),
        "{before:?}"
    );
    let steps = vec![
        PlanStep::DelNeighbour {
            ifname: "br0".into(),
            address: g1.ip.parse().unwrap(),
        },
        PlanStep::DelFdb {
            mac: g1.mac.parse().unwrap(),
            ifname: g2.host_dev.clone(),
        },
        PlanStep::SetMaster {
            ifname: g2.host_dev.clone(),
            master: "nosuchbr".into(),
        },
    ];
    match apply_plan(Some(lab.hv.name()), &steps).unwrap_err() {
        ApplyError::RolledBack {
            index, rolled_back, ..
        } => {
            assert_eq!((index, rolled_back), (3, 2));
        }
        other => panic!("expected a rollback, got {other}"),
    }
    assert_eq!(
        view(&collect(&opts).unwrap().state),
        before,
        "restored as before"
    );
    // and applied without the refused step: both entries are gone
    apply_plan(Some(lab.hv.name()), &steps[..2]).unwrap();
    let after = view(&collect(&opts).unwrap().state);
    assert!(
        after.0.iter().all(|n| !n.contains("Permanent"))
            && after.1.iter().all(|f| !f.contains("sticky=true")),
        "{after:?}"
    );
}
