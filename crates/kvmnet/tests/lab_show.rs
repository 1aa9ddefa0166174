//! `kvmnet show` and `kvmnet snapshot` against namespace labs the testkit builds: what kvmnet
//! reports must be what the lab really is. Root-only (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;
use kvmnet_testkit::{require_cmd, require_root, Lab};
use serde_json::Value;

fn kvmnet() -> Command {
    Command::cargo_bin("kvmnet").unwrap()
}

fn show_json(netns: &str) -> Value {
    let out = kvmnet()
        .args(["show", "--json", "--netns", netns])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn link<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no link {name}"))
}

#[test]
fn show_reports_the_lab_as_built() {
    if !require_root("show_reports_the_lab_as_built") {
        return;
    }
    require_cmd("nft");
    let lab = Lab::nat(3).unwrap();
    // a multiqueue tap without a process, as a VM that is not running would leave it
    lab.hv
        .ip(&["tuntap", "add", "dev", "tap9", "mode", "tap", "multi_queue"])
        .unwrap();
    lab.hv
        .ip(&["link", "set", "tap9", "master", "br0"])
        .unwrap();
    assert!(lab.guest_pings(0, "203.0.113.1"), "lab NAT works");

    let s = show_json(lab.hv.name());
    assert_eq!(s["schema_version"], 1);
    assert_eq!(s["netns"], lab.hv.name());

    // links: kinds, masters, peers
    assert_eq!(link(&s, "br0")["kind"], "bridge");
    assert_eq!(link(&s, "br0")["mac"], "02:00:0a:00:00:01");
    assert_eq!(link(&s, "uplink")["kind"], "veth");
    assert_eq!(link(&s, "uplink")["veth_peer"]["netns"], lab.up.name());
    for g in &lab.guests {
        let l = link(&s, &g.host_dev);
        assert_eq!(l["kind"], "veth");
        assert_eq!(l["master"], "br0");
        assert_eq!(l["admin_up"], true);
        assert_eq!(l["veth_peer"]["netns"], g.name());
        assert_eq!(l["veth_peer"]["name"], "eth0");
        assert_eq!(l["bridge_port"]["state"], "forwarding");
    }
    let tap = link(&s, "tap9");
    assert_eq!(tap["kind"], "tap");
    assert_eq!(tap["tap"]["multi_queue"], true);
    assert_eq!(tap["tap"]["persist"], true);
    assert_eq!(tap["tap"]["holders"].as_array().unwrap().len(), 0);
    assert_eq!(tap["master"], "br0");

    // addresses and routes
    let addrs = s["addresses"].as_array().unwrap();
    assert!(addrs
        .iter()
        .any(|a| a["ifname"] == "br0" && a["address"] == "10.0.0.1" && a["prefix_len"] == 24));
    let routes = s["routes"].as_array().unwrap();
    assert!(routes.iter().any(|r| r["dst"] == "0.0.0.0/0"
        && r["gateway"] == "198.51.100.1"
        && r["dev"] == "uplink"
        && r["table"] == 254));
    assert!(routes
        .iter()
        .any(|r| r["dst"] == "10.0.0.0/24" && r["dev"] == "br0"));

    // sysctls
    assert_eq!(s["sysctls"]["ip_forward"], true);
    assert_eq!(s["sysctls"]["bridge_nf_call_iptables"], true);
    assert_eq!(s["sysctls"]["interfaces"]["br0"]["forwarding"], true);

    // nftables: the lab's masquerade, as kernel expressions
    let tables = s["nftables"]["tables"].as_array().unwrap();
    let t = tables
        .iter()
        .find(|t| t["name"] == "kvmlab" && t["family"] == "ip")
        .expect("table ip kvmlab");
    let chain = &t["chains"][0];
    assert_eq!(chain["hook"]["hook"], "postrouting");
    assert_eq!(chain["hook"]["chain_type"], "nat");
    let rule = &chain["rules"][0];
    assert_eq!(rule["comment"], "lab-masq");
    assert!(rule["exprs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["expr"] == "masq"));

    // VMs: the three guests, not the upstream
    let vms = s["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 3, "{vms:#?}");
    for g in &lab.guests {
        let vm = vms.iter().find(|v| v["name"] == g.name()).unwrap();
        assert_eq!(vm["source"], "netns");
        let nic = &vm["vnics"][0];
        assert_eq!(nic["host_dev"], g.host_dev.as_str());
        assert_eq!(nic["mac"], g.mac.as_str());
        assert_eq!(nic["source_bridge"], "br0");
        assert_eq!(nic["guest_ifname"], "eth0");
        assert!(nic["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == g.ip.as_str() && a["prefix_len"] == 24));
        let routes = vm["guest"]["routes"].as_array().unwrap();
        assert!(routes
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0" && r["gateway"] == lab.gateway()));
    }
    assert!(!vms.iter().any(|v| v["name"] == lab.up.name()));

    // the network inferred from the bridge
    let nets = s["networks"].as_array().unwrap();
    assert!(nets
        .iter()
        .any(|n| n["bridge"] == "br0" && n["ips"][0]["address"] == "10.0.0.1/24"));
}

#[test]
fn show_follows_injected_changes() {
    if !require_root("show_follows_injected_changes") {
        return;
    }
    let lab = Lab::nat(2).unwrap();
    lab.hv.ip(&["link", "set", "vnet2", "nomaster"]).unwrap();
    lab.hv.ip(&["link", "set", "vnet1", "down"]).unwrap();
    lab.hv.ip(&["link", "set", "br0", "mtu", "1400"]).unwrap();
    lab.hv.sysctl("net.ipv4.ip_forward", "0").unwrap();
    lab.guests[0]
        .ns
        .ip(&["route", "replace", "default", "via", "10.0.0.254"])
        .unwrap();
    let s = show_json(lab.hv.name());
    assert_eq!(link(&s, "vnet1")["admin_up"], false);
    assert!(link(&s, "vnet2").get("master").is_none());
    assert_eq!(link(&s, "br0")["mtu"], 1400);
    assert_eq!(s["sysctls"]["ip_forward"], false);
    let vm = s["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == lab.guests[0].name())
        .unwrap();
    assert!(vm["guest"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["gateway"] == "10.0.0.254"));

    // the table view shows the chain guest -> veth -> bridge -> uplink
    let out = kvmnet()
        .args(["show", "--netns", lab.hv.name(), "vms"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(lab.guests[0].name()), "{text}");
    assert!(text.contains("vnet1 [down]"), "{text}");
    assert!(text.contains("uplink [up]"), "{text}");
}

#[test]
fn snapshot_round_trips_and_redacts() {
    if !require_root("snapshot_round_trips_and_redacts") {
        return;
    }
    let lab = Lab::nat(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.json");
    let red = dir.path().join("red.json");
    kvmnet()
        .args(["snapshot", "--netns", lab.hv.name(), "-o"])
        .arg(&plain)
        .assert()
        .success();
    kvmnet()
        .args(["snapshot", "--redact", "--netns", lab.hv.name(), "-o"])
        .arg(&red)
        .assert()
        .success();
    // a snapshot reads back through --from, and says the same as the live host
    let from = kvmnet()
        .args(["show", "--json", "--from"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(from.status.success());
    let a: Value = serde_json::from_slice(&from.stdout).unwrap();
    let b: Value = serde_json::from_str(&std::fs::read_to_string(&plain).unwrap()).unwrap();
    assert_eq!(a, b);
    assert_eq!(link(&a, "vnet1")["master"], "br0");

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&red).unwrap()).unwrap();
    let text = std::fs::read_to_string(&red).unwrap();
    assert!(
        !text.contains(&lab.guests[0].mac),
        "guest MAC must be hashed"
    );
    assert!(
        !text.contains("02:00:0a:00:00:01"),
        "bridge MAC must be hashed"
    );
    // private and documentation addresses stay: they identify nothing
    assert!(text.contains("10.0.0.1"));
    assert_ne!(r["hostname"], b["hostname"]);
    // redaction is consistent: the guest's MAC is the same hash everywhere it appears
    let vm_mac = r["vms"][0]["vnics"][0]["mac"].as_str().unwrap().to_string();
    assert!(r["fdb"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["mac"] == vm_mac.as_str()));
}

/// A process that holds a tap open and whose command line reads like QEMU's: kvmnet must find
/// the VM from the command line and the tap's holder from the process's descriptors.
#[test]
fn bare_qemu_command_line_and_tap_holder() {
    if !require_root("bare_qemu_command_line_and_tap_holder") {
        return;
    }
    let python = "/usr/bin/python3";
    assert!(
        std::path::Path::new(python).exists(),
        "needs {python} (python3 package)"
    );
    let lab = Lab::nat(1).unwrap();
    let code = "import fcntl,struct,os,sys,time\n\
        fd=os.open('/dev/net/tun',os.O_RDWR)\n\
        fcntl.ioctl(fd,0x400454ca,struct.pack('16sH',b'tap5',0x0002|0x1000))\n\
        print('ready',flush=True)\n\
        time.sleep(120)\n";
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", lab.hv.name(), "bash", "-c"])
        .arg(format!(
            "exec -a qemu-system-x86_64 {python} -c \"$0\" -name guest=web7,debug-threads=on \
             -smp 2 -netdev tap,id=hostnet0,ifname=tap5,script=no,downscript=no,vhost=off \
             -device virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:ab:cd:ef"
        ))
        .arg(code)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the child is ours: we stop it by PID, whatever happens below
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
    }
    let child = Kill(child);
    assert_eq!(line.trim(), "ready");
    lab.hv
        .ip(&["link", "set", "tap5", "master", "br0"])
        .unwrap();
    lab.hv.ip(&["link", "set", "tap5", "up"]).unwrap();

    let s = show_json(lab.hv.name());
    let tap = link(&s, "tap5");
    assert_eq!(tap["kind"], "tap");
    assert_eq!(tap["tap"]["vnet_hdr"], false);
    let holders = tap["tap"]["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{tap:#}");
    assert_eq!(holders[0]["pid"], child.0.id());
    let vm = s["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web7")
        .expect("VM web7 from the qemu command line");
    assert_eq!(vm["source"], "qemu");
    assert_eq!(vm["pid"], child.0.id());
    assert_eq!(vm["vcpus"], 2);
    let nic = &vm["vnics"][0];
    assert_eq!(nic["host_dev"], "tap5");
    assert_eq!(nic["model"], "virtio");
    assert_eq!(nic["mac"], "52:54:00:ab:cd:ef");
    assert_eq!(nic["vhost"], false);
    assert_eq!(nic["source_bridge"], "br0");
}
