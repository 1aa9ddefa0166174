//! A real QEMU guest on a macvtap of the hypervisor's uplink (libvirt's `<interface
//! type='direct'>`): kvmnet must find the guest through the macvtap QEMU holds, see that it
//! reaches the LAN and beyond through the wire but never the host itself (as the kernel
//! really behaves, confirmed from inside the guest), and say so in trace and doctor.
//! Root only; needs qemu-system-x86, busybox-static and apt access to the kernel package.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{kvmnet_json as kvmnet, root_errors};
use kvmnet_testkit::{require_cmd, require_root, Lab, LabSpec, NicModel, QemuSpec};

#[test]
fn macvtap_guest_reaches_the_lan_but_never_the_host() {
    if !require_root("macvtap_guest_reaches_the_lan_but_never_the_host") {
        return;
    }
    for c in ["qemu-system-x86_64", "busybox", "nft", "apt-get", "dpkg"] {
        require_cmd(c);
    }
    let mut lab = Lab::build(LabSpec {
        guests: 0,
        ..Default::default()
    })
    .unwrap();
    // the guest sits on the uplink's LAN (198.51.100.0/24), next to the host's 198.51.100.2
    let spec = QemuSpec {
        name: "lanvm".into(),
        tap: "mvtap1".into(),
        mac: "52:54:00:0a:00:47".into(),
        model: NicModel::Virtio,
        ip: "198.51.100.71/24".into(),
        gateway: Some("198.51.100.1".into()),
        mtu: None,
        agent: true,
        fd_device: None,
    };
    lab.add_qemu_macvtap(&spec, "uplink").unwrap();
    lab.wait_vms(Duration::from_secs(180)).unwrap();
    let vm = lab.vm("lanvm").unwrap();
    vm.sh("echo nameserver 203.0.113.1 > /etc/resolv.conf")
        .unwrap();

    // the kernel's behaviour, from inside the guest
    assert!(
        vm.pings("198.51.100.1", None),
        "the LAN router answers through the wire"
    );
    assert!(vm.pings("203.0.113.1", None), "beyond the router too");
    assert!(
        !vm.pings("198.51.100.2", None),
        "the host itself never answers over its own macvtap"
    );

    let ns = lab.hv.name().to_string();
    // kvmnet finds the guest through the macvtap QEMU holds
    let show = common::eventually_value("the guest's address through its agent", 30, || {
        let v = kvmnet(&["show", "vms", "--json", "--netns", &ns]);
        let found = v["vms"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == "lanvm").cloned());
        found.filter(|x| x.to_string().contains("198.51.100.71"))
    });
    assert_eq!(show["vnics"][0]["host_dev"], "mvtap1", "{show:#}");

    // trace: out through the wire; never between the host and the guest
    let t = kvmnet(&[
        "trace",
        "--json",
        "--netns",
        &ns,
        "--from",
        "vm:lanvm",
        "--to",
        "203.0.113.1",
    ]);
    assert_eq!(t["verdict"]["verdict"], "delivered", "{t:#}");
    assert!(t.to_string().contains("out of uplink to the wire"), "{t:#}");
    let t = kvmnet(&[
        "trace", "--json", "--netns", &ns, "--from", "host", "--to", "vm:lanvm",
    ]);
    assert_eq!(t["verdict"]["cause"], "macvtap-host", "{t:#}");
    let t = kvmnet(&[
        "trace",
        "--json",
        "--netns",
        &ns,
        "--from",
        "vm:lanvm",
        "--to",
        "198.51.100.2",
    ]);
    assert_eq!(t["verdict"]["cause"], "macvtap-host", "{t:#}");

    // doctor: healthy towards the upstream; the host as the target is the finding
    let r = common::doctor(&ns, "203.0.113.1", false);
    let errs = root_errors(&r);
    assert!(errs.is_empty(), "{errs:#?}");
    let r = common::doctor(&ns, "198.51.100.2", false);
    let errs = root_errors(&r);
    assert!(
        errs.iter()
            .any(|(c, subj, aff)| c == "macvtap-host-unreachable"
                && subj.contains(&"mvtap1".to_string())
                && aff.contains(&"lanvm".to_string())),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
}
