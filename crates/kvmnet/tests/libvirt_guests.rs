//! libvirt for real: a private libvirtd inside the lab's hypervisor namespace, a NAT network
//! whose own dnsmasq hands out leases, and two domains of the tiny guest (virtio and e1000)
//! booted by libvirt. kvmnet must find the daemon, read domains, network and leases, reach the
//! guests' agents through libvirt, call the healthy case healthy, and name
//! `dhcp-not-running` (the network's dnsmasq killed), `vnic-link-down` (`virsh domif-setlink
//! ... down`) and `network-inactive` (`virsh net-destroy`), each first confirmed from inside a
//! guest. Root only; needs libvirt-daemon, libvirt-clients, libvirt-daemon-driver-qemu,
//! dnsmasq-base, qemu-system-x86 and busybox-static.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually, kvmnet_json as kvmnet, root_errors};
use kvmnet_testkit::libvirt::{domain_xml, Libvirtd};
use kvmnet_testkit::qemu::serial_sh;
use kvmnet_testkit::{require_cmd, require_root, GuestImage, Lab, LabSpec};
use serde_json::Value;

const UPSTREAM: &str = "203.0.113.1";
const NET: &str = "kvnat";

fn doctor(lab: &Lab, probe: bool) -> Value {
    common::doctor(lab.hv.name(), UPSTREAM, probe)
}

/// Root-cause errors as (code, affects).
fn roots(r: &Value) -> Vec<(String, Vec<String>)> {
    root_errors(r).into_iter().map(|(c, _, a)| (c, a)).collect()
}

fn sh(dir: &Path, vm: &str, cmd: &str) -> (i32, String) {
    serial_sh(&dir.join(format!("{vm}.cmd")), cmd, Duration::from_secs(20)).unwrap()
}

fn pings(dir: &Path, vm: &str, dst: &str) -> bool {
    sh(dir, vm, &format!("ping -c1 -W2 -n -q {dst}")).0 == 0
}

#[test]
fn libvirt_network_and_domains_are_seen_and_diagnosed() {
    if !require_root("libvirt_network_and_domains_are_seen_and_diagnosed") {
        return;
    }
    for c in [
        "libvirtd",
        "virsh",
        "dnsmasq",
        "qemu-system-x86_64",
        "busybox",
        "nsenter",
    ] {
        require_cmd(c);
    }
    // the upstream only: libvirt brings its own bridge, NAT rules and DHCP
    let lab = Lab::build(LabSpec {
        guests: 0,
        configure_host: false,
        ..Default::default()
    })
    .unwrap();
    let image = GuestImage::get().unwrap();
    let t0 = Instant::now();
    let lv = Libvirtd::start(&lab.hv).unwrap();
    eprintln!("libvirtd answers after {:.1?}", t0.elapsed());
    lv.define(
        "net",
        &format!(
            "<network><name>{NET}</name><bridge name='kvbr0' stp='off' delay='0'/><forward mode='nat'/>\
             <ip address='10.0.7.1' netmask='255.255.255.0'><dhcp><range start='10.0.7.100' end='10.0.7.150'/></dhcp></ip></network>"
        ),
        true,
    )
    .unwrap();
    let dir = lv.dir().to_path_buf();
    for (name, mac, model) in [
        ("lv1", "52:54:00:07:00:01", "virtio"),
        ("lv2", "52:54:00:07:00:02", "e1000"),
    ] {
        lv.define(
            "domain",
            &domain_xml(&image, name, NET, mac, model, &dir),
            true,
        )
        .unwrap();
    }
    for name in ["lv1", "lv2"] {
        eventually(&format!("{name} has a lease"), 180, || {
            std::fs::read_to_string(dir.join(format!("{name}.console")))
                .unwrap_or_default()
                .contains("KVMNET-GUEST-UP name")
                && lv
                    .virsh(&["net-dhcp-leases", NET])
                    .unwrap_or_default()
                    .contains(name)
        });
    }
    eprintln!(
        "two libvirt domains up with leases after {:.1?}",
        t0.elapsed()
    );
    for name in ["lv1", "lv2"] {
        assert!(
            pings(&dir, name, "10.0.7.1"),
            "{name} cannot ping its gateway"
        );
        assert!(pings(&dir, name, UPSTREAM), "{name} cannot reach upstream");
    }
    // the agents connect a moment after the guests' /init started them
    eventually("both agents are connected", 30, || {
        ["lv1", "lv2"].iter().all(|d| {
            lv.virsh(&["dumpxml", d])
                .unwrap_or_default()
                .contains("state='connected'")
        })
    });

    // discovery: domains, their taps and network, lease and agent addresses
    let show = kvmnet(&["show", "vms", "--json", "--netns", lab.hv.name()]);
    let leases = lv.virsh(&["net-dhcp-leases", NET]).unwrap();
    for (name, mac, model) in [
        ("lv1", "52:54:00:07:00:01", "virtio"),
        ("lv2", "52:54:00:07:00:02", "e1000"),
    ] {
        let vm = show["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} not discovered: {show:#}"));
        assert_eq!(vm["source"], "libvirt", "{vm:#}");
        assert_eq!(vm["state"], "running", "{vm:#}");
        assert_eq!(vm["agent"]["libvirt"], true, "{vm:#}");
        let nic = &vm["vnics"][0];
        assert_eq!(nic["mac"], mac, "{vm:#}");
        assert_eq!(nic["model"], model, "{vm:#}");
        assert_eq!(nic["network"], NET, "{vm:#}");
        assert_eq!(nic["source_bridge"], "kvbr0", "{vm:#}");
        assert!(
            nic["host_dev"].as_str().unwrap().starts_with("vnet"),
            "{vm:#}"
        );
        // the lease libvirt reports is the address kvmnet shows, from both sources
        let addr = nic["addresses"][0]["address"].as_str().unwrap().to_string();
        let line = leases.lines().find(|l| l.contains(mac)).unwrap();
        assert!(line.contains(&format!("{addr}/24")), "{addr} vs {line}");
        let origins: Vec<&str> = nic["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["address"] == addr.as_str())
            .filter_map(|a| a["origin"].as_str())
            .collect();
        assert!(origins.contains(&"lease"), "{vm:#}");
        assert_eq!(vm["guest"]["source"], "agent", "{vm:#}");
        assert_eq!(vm["guest"]["nameservers"][0], "10.0.7.1", "{vm:#}");
    }
    let nets = kvmnet(&["show", "networks", "--json", "--netns", lab.hv.name()]);
    let net = nets["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == NET)
        .unwrap_or_else(|| panic!("{nets:#}"));
    assert_eq!(net["active"], true, "{net:#}");
    assert_eq!(net["forward"], "nat", "{net:#}");

    // healthy: nothing wrong, probes run inside both guests through libvirt's agent channel
    let r = doctor(&lab, true);
    assert!(roots(&r).is_empty(), "healthy: {r:#}");
    for name in ["lv1", "lv2"] {
        let v = r["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vm"] == name)
            .unwrap();
        assert_eq!(v["ok"], true, "{v:#}");
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
            "{name}: {probes:#?}"
        );
    }

    // dhcp-not-running: the network's dnsmasq is gone; a guest asking for a lease gets none
    let dnsmasq = lv.dnsmasq_pid(NET).expect("dnsmasq pidfile");
    assert!(
        std::fs::read_to_string(format!("/proc/{dnsmasq}/cmdline"))
            .unwrap()
            .contains("dnsmasq"),
        "pid {dnsmasq} is not the network's dnsmasq"
    );
    kvmnet_testkit::run(&["kill", &dnsmasq.to_string()]).unwrap();
    eventually("dnsmasq exits", 10, || {
        !Path::new(&format!("/proc/{dnsmasq}")).exists()
    });
    let (rc, out) = sh(
        &dir,
        "lv2",
        "udhcpc -i eth0 -n -q -t 2 -T 1 -s /bin/true 2>&1",
    );
    assert_ne!(rc, 0, "a DHCP request must go unanswered: {out}");
    let r = doctor(&lab, false);
    let found = roots(&r);
    assert!(
        found.iter().any(|(c, _)| c == "dhcp-not-running"),
        "dhcp-not-running: {r:#}"
    );
    assert!(
        found.iter().all(|(c, _)| c == "dhcp-not-running"),
        "only dhcp-not-running: {found:?}"
    );

    // vnic-link-down: libvirt takes lv1's link down; the guest loses its carrier
    let lv1_dev = lv
        .virsh(&["domiflist", "lv1"])
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    lv.virsh(&["domif-setlink", "lv1", &lv1_dev, "down"])
        .unwrap();
    eventually("lv1 loses its network", 20, || {
        !pings(&dir, "lv1", "10.0.7.1")
    });
    let r = doctor(&lab, false);
    let found = roots(&r);
    assert!(
        found
            .iter()
            .any(|(c, a)| c == "vnic-link-down" && a.iter().any(|x| x == "lv1")),
        "vnic-link-down: {found:?}\n{r:#}"
    );
    lv.virsh(&["domif-setlink", "lv1", &lv1_dev, "up"]).unwrap();
    eventually("lv1 has its network back", 20, || {
        pings(&dir, "lv1", "10.0.7.1")
    });
    let r = doctor(&lab, false);
    assert!(
        roots(&r).iter().all(|(c, _)| c != "vnic-link-down"),
        "after setlink up: {:?}",
        roots(&r)
    );

    // network-inactive: the network is stopped under running domains
    lv.virsh(&["net-destroy", NET]).unwrap();
    eventually("lv2 is cut off", 20, || !pings(&dir, "lv2", "10.0.7.1"));
    let r = doctor(&lab, false);
    let found = roots(&r);
    assert!(
        found.iter().any(|(c, _)| c == "network-inactive"),
        "network-inactive: {found:?}\n{r:#}"
    );
}
