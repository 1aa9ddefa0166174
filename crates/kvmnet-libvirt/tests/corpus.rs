//! Every libvirt domain and network file of the shared real-world corpus parses, and a few
//! values per file match what the file says (written down by hand from the XML).
//!
//! The corpus lives beside the project (`../shared/corpus`, or `KVMNET_CORPUS`); it is read in
//! place, never copied. A missing corpus fails the test: CI must have it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kvmnet_libvirt::parse_document;
use kvmnet_model::network::ForwardMode;
use kvmnet_model::vm::VnicType;

fn corpus_dir() -> PathBuf {
    match std::env::var_os("KVMNET_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    }
}

fn xml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            xml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "xml") {
            out.push(p);
        }
    }
}

/// (file, kind, name, interfaces or ip blocks, first MAC, forward mode)
/// kind: "d" domain, "n" network, "s" status, "node" test-driver node.
const EXPECT: &[(&str, &str, &str, usize, &str, &str)] = &[
    (
        "networkxml2firewalldata/forward-dev.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2firewalldata/isolated.xml",
        "n",
        "default",
        3,
        "",
        "isolated",
    ),
    (
        "networkxml2firewalldata/nat-ipv6.xml",
        "n",
        "default",
        2,
        "",
        "nat",
    ),
    (
        "networkxml2firewalldata/nat-port-range.xml",
        "n",
        "default",
        3,
        "",
        "nat",
    ),
    (
        "networkxml2firewalldata/route-default.xml",
        "n",
        "default",
        1,
        "",
        "route",
    ),
    (
        "networkxml2xmlin/8021Qbh-net.xml",
        "n",
        "8021Qbh-net",
        0,
        "",
        "private",
    ),
    (
        "networkxml2xmlin/dhcp6-nat-network.xml",
        "n",
        "default",
        4,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/dhcp6host-routed-network.xml",
        "n",
        "local",
        2,
        "",
        "route",
    ),
    (
        "networkxml2xmlin/empty-allow-ipv6.xml",
        "n",
        "empty",
        0,
        "",
        "isolated",
    ),
    (
        "networkxml2xmlin/host-bridge-net.xml",
        "n",
        "host-bridge-net",
        0,
        "",
        "bridge",
    ),
    (
        "networkxml2xmlin/hostdev-pf-driver-model.xml",
        "n",
        "hostdev",
        0,
        "",
        "hostdev",
    ),
    (
        "networkxml2xmlin/hostdev.xml",
        "n",
        "hostdev",
        0,
        "",
        "hostdev",
    ),
    (
        "networkxml2xmlin/isolated-network.xml",
        "n",
        "private",
        1,
        "",
        "isolated",
    ),
    (
        "networkxml2xmlin/isolated-ports.xml",
        "n",
        "port-isolation-test",
        0,
        "",
        "bridge",
    ),
    (
        "networkxml2xmlin/leasetime-hours.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/leasetime-infinite.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/leasetime-minutes.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/leasetime-seconds.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/metadata.xml",
        "n",
        "host-bridge-net",
        0,
        "",
        "bridge",
    ),
    (
        "networkxml2xmlin/nat-network-dns-forwarders.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-dns-hosts.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-dns-local-domain.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-dns-srv-record-minimal.xml",
        "n",
        "default",
        5,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-dns-txt-record.xml",
        "n",
        "default",
        5,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-explicit-flood.xml",
        "n",
        "default",
        5,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-forward-nat-ipv6.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-forward-nat-no-address.xml",
        "n",
        "default",
        5,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network-mtu.xml",
        "n",
        "default",
        5,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/nat-network.xml",
        "n",
        "default",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/netboot-network.xml",
        "n",
        "netboot",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/netboot-proxy-network.xml",
        "n",
        "netboot",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/netboot-tftp.xml",
        "n",
        "tftp-only",
        1,
        "",
        "nat",
    ),
    (
        "networkxml2xmlin/open-network-with-forward-dev.xml",
        "n",
        "open",
        1,
        "",
        "open",
    ),
    (
        "networkxml2xmlin/open-network.xml",
        "n",
        "open",
        1,
        "",
        "open",
    ),
    (
        "networkxml2xmlin/openvswitch-net.xml",
        "n",
        "openvswitch-net",
        0,
        "",
        "bridge",
    ),
    (
        "networkxml2xmlin/passthrough-address-crash.xml",
        "n",
        "passthrough_001",
        0,
        "",
        "passthrough",
    ),
    (
        "networkxml2xmlin/passthrough-pf.xml",
        "n",
        "local",
        1,
        "",
        "passthrough",
    ),
    (
        "networkxml2xmlin/routed-network.xml",
        "n",
        "local",
        1,
        "",
        "route",
    ),
    (
        "networkxml2xmlin/vepa-net.xml",
        "n",
        "vepa-net",
        0,
        "",
        "vepa",
    ),
    (
        "qemustatusxml2xmldata/modern-in.xml",
        "s",
        "upstream",
        1,
        "52:54:00:36:bd:3b",
        "",
    ),
    (
        "qemuxml2argvdata/net-bandwidth.xml",
        "d",
        "f14-60",
        1,
        "52:54:00:24:a5:9f",
        "",
    ),
    (
        "qemuxml2argvdata/net-bandwidth2.xml",
        "d",
        "f14-60",
        1,
        "52:54:00:24:a5:9f",
        "",
    ),
    (
        "qemuxml2argvdata/net-client.xml",
        "d",
        "QEMUGuest1",
        1,
        "52:54:00:8c:b9:05",
        "",
    ),
    (
        "qemuxml2argvdata/net-coalesce.xml",
        "d",
        "test",
        3,
        "52:54:00:e5:48:58",
        "",
    ),
    (
        "qemuxml2argvdata/net-eth-hostip.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-eth-ifname.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-eth-names.xml",
        "d",
        "QEMUGuest1",
        2,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-eth-unmanaged-tap.xml",
        "d",
        "QEMUGuest1",
        1,
        "fe:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-eth.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-hostdev-bootorder.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-hostdev-vfio.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-hostdev.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-isolated-port.xml",
        "d",
        "q35-test",
        1,
        "52:54:00:d6:c0:0b",
        "",
    ),
    (
        "qemuxml2argvdata/net-linkstate.xml",
        "d",
        "QEMUGuest1",
        2,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-many-models.xml",
        "d",
        "QEMUGuest1",
        6,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-mcast.xml",
        "d",
        "QEMUGuest1",
        1,
        "52:54:00:8c:b9:05",
        "",
    ),
    (
        "qemuxml2argvdata/net-midonet.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-mtu.xml",
        "d",
        "test",
        2,
        "52:54:00:e5:48:58",
        "",
    ),
    (
        "qemuxml2argvdata/net-openvswitch.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-udp.xml",
        "d",
        "QEMUGuest1",
        1,
        "52:54:00:8c:b9:05",
        "",
    ),
    (
        "qemuxml2argvdata/net-user-passt.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-user.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-vdpa.xml",
        "d",
        "QEMUGuest1",
        1,
        "52:54:00:95:db:c0",
        "",
    ),
    (
        "qemuxml2argvdata/net-vhostuser-multiq.xml",
        "d",
        "QEMUGuest1",
        5,
        "52:54:00:ee:96:6b",
        "",
    ),
    (
        "qemuxml2argvdata/net-vhostuser.xml",
        "d",
        "QEMUGuest1",
        3,
        "52:54:00:ee:96:6b",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-device.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-disable-offloads.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:22:44:66:88:aa",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-network-portgroup.xml",
        "d",
        "QEMUGuest1",
        3,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-rss.xml",
        "d",
        "QEMUGuest1",
        3,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-rxtxqueuesize.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-teaming-network.xml",
        "d",
        "QEMUGuest1",
        2,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio-teaming.xml",
        "d",
        "QEMUGuest1",
        4,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/net-virtio.xml",
        "d",
        "QEMUGuest1",
        1,
        "00:11:22:33:44:55",
        "",
    ),
    (
        "qemuxml2argvdata/tap-vhost.xml",
        "d",
        "test",
        1,
        "52:54:00:e5:48:58",
        "",
    ),
    (
        "tests/data/cli/compare/virt-install-many-devices.xml",
        "d",
        "fedora",
        18,
        "12:34:56:78:11:22",
        "",
    ),
    (
        "tests/data/xmlparse/change-nics-in.xml",
        "d",
        "TestGuest",
        5,
        "22:11:11:11:11:11",
        "",
    ),
    (
        "tests/data/xmlparse/change-nics-out.xml",
        "d",
        "TestGuest",
        5,
        "aa:aa:aa:aa:aa:aa",
        "",
    ),
    (
        "tests/data/xmlparse/network-multi-in.xml",
        "n",
        "ipv6_multirange",
        4,
        "",
        "nat",
    ),
    (
        "tests/data/xmlparse/network-multi-out.xml",
        "n",
        "new-foo",
        4,
        "",
        "route",
    ),
    (
        "tests/data/xmlparse/network-open-in.xml",
        "n",
        "open",
        1,
        "",
        "open",
    ),
    (
        "tests/data/xmlparse/network-open-out.xml",
        "n",
        "new-foo",
        1,
        "",
        "open",
    ),
    (
        "tests/data/xmlparse/network-vf-pool-in.xml",
        "n",
        "passthrough",
        0,
        "",
        "hostdev",
    ),
    (
        "tests/data/xmlparse/network-vf-pool-out.xml",
        "n",
        "new-foo",
        0,
        "",
        "hostdev",
    ),
];

#[test]
fn every_corpus_file_parses_with_expected_values() {
    let dir = corpus_dir();
    assert!(
        dir.is_dir(),
        "corpus not found at {} (set KVMNET_CORPUS); CI needs it",
        dir.display()
    );
    let mut files = vec![];
    for sub in ["libvirt__libvirt", "virt-manager__virt-manager"] {
        xml_files(&dir.join(sub), &mut files);
    }
    files.sort();
    assert!(files.len() >= 80, "only {} XML files found", files.len());
    let mut checked = 0;
    let (mut domains, mut networks, mut others) = (0, 0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let doc = parse_document(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        domains += doc.domains.len();
        networks += doc.networks.len();
        if doc.other_root.is_some() {
            others += 1;
            // nwfilter definitions are not networks or domains
            assert!(
                f.to_string_lossy().contains("nwfilter"),
                "{}: unexpected root",
                f.display()
            );
            continue;
        }
        let rel = f.to_string_lossy().to_string();
        let Some(exp) = EXPECT.iter().find(|e| rel.ends_with(e.0)) else {
            if rel.ends_with("testdriver.xml") {
                continue; // checked below
            }
            panic!("{rel}: no expectation written for this file");
        };
        let (_, kind, name, count, mac, fwd) = *exp;
        match kind {
            "d" | "s" => {
                assert_eq!(doc.domains.len(), 1, "{rel}");
                let vm = &doc.domains[0];
                assert_eq!(vm.name, name, "{rel}");
                assert_eq!(vm.vnics.len(), count, "{rel}: interfaces");
                let first = vm.vnics.iter().find_map(|n| n.mac).map(|m| m.to_string());
                assert_eq!(first.as_deref().unwrap_or(""), mac, "{rel}: first MAC");
            }
            _ => {
                assert_eq!(doc.networks.len(), 1, "{rel}");
                let n = &doc.networks[0];
                assert_eq!(n.name, name, "{rel}");
                assert_eq!(n.ips.len(), count, "{rel}: <ip> blocks");
                assert_eq!(n.forward.as_str(), fwd, "{rel}: forward mode");
            }
        }
        checked += 1;
    }
    println!(
        "corpus: {} files, {domains} domains, {networks} networks, {others} other",
        files.len()
    );
    assert_eq!(checked, EXPECT.len(), "every expectation matched a file");
}

fn load(rel: &str) -> kvmnet_libvirt::LibvirtDoc {
    let p = corpus_dir().join(rel);
    parse_document(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

#[test]
fn hand_checked_details() {
    let d = load("libvirt__libvirt/tests/qemuxml2argvdata/net-openvswitch.xml");
    let n = &d.domains[0].vnics[0];
    assert_eq!(n.network.as_deref(), Some("ovs-net"));
    assert_eq!(n.vlan_tags, vec![42, 48, 456]);
    assert!(n.vlan_trunk);
    assert_eq!(n.virtualport.as_deref(), Some("openvswitch"));
    assert_eq!(n.model.as_deref(), Some("rtl8139"));

    let d = load("libvirt__libvirt/tests/qemuxml2argvdata/net-linkstate.xml");
    assert!(d.domains[0].vnics.iter().any(|n| n.link_up == Some(false)));

    let d = load("libvirt__libvirt/tests/qemuxml2argvdata/net-bandwidth.xml");
    assert!(d.domains[0].vnics[0].bandwidth.is_some());

    let d = load("libvirt__libvirt/tests/qemuxml2argvdata/tap-vhost.xml");
    assert_eq!(d.domains[0].vnics[0].vhost, Some(true));

    let d = load("libvirt__libvirt/tests/qemuxml2argvdata/net-hostdev.xml");
    assert_eq!(d.domains[0].vnics[0].iface_type, VnicType::Hostdev);

    let d = load("libvirt__libvirt/tests/qemustatusxml2xmldata/modern-in.xml");
    assert_eq!(d.domains[0].state, kvmnet_model::VmState::Running);
    assert!(d.domains[0].pid.is_some());

    let d = load("libvirt__libvirt/tests/networkxml2xmlin/nat-network.xml");
    let n = &d.networks[0];
    assert_eq!(n.bridge.as_deref(), Some("virbr0"));
    assert_eq!(n.forward, ForwardMode::Nat);
    assert_eq!(n.forward_dev.as_deref(), Some("eth1"));
    assert_eq!(n.ips[0].address.to_string(), "192.168.122.1/24");
    assert_eq!(n.ips[0].dhcp_ranges.len(), 1);
    assert_eq!(n.ips[0].dhcp_hosts.len(), 2);

    let d = load("libvirt__libvirt/tests/networkxml2xmlin/nat-network-dns-forwarders.xml");
    assert!(!d.networks[0].dns.forwarders.is_empty());

    let d = load("libvirt__libvirt/tests/networkxml2firewalldata/nat-port-range.xml");
    assert!(d.networks[0].nat_ports.is_some());

    let d = load("libvirt__libvirt/tests/networkxml2xmlin/nat-network-mtu.xml");
    assert!(d.networks[0].mtu.is_some());

    let d = load("virt-manager__virt-manager/tests/data/testdriver/testdriver.xml");
    assert!(d.domains.len() >= 5, "{} domains", d.domains.len());
    assert!(d.networks.len() >= 3, "{} networks", d.networks.len());
    assert!(d.networks.iter().any(|n| n.forward == ForwardMode::Nat));
}
