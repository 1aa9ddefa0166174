//! Declarative configuration on a real (namespace) host: plan/apply/confirm/rollback/import.
//! The hypervisor namespace starts with only its uplink; guests' veths lie unattached in it.
//! Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use kvmnet_testkit::{require_cmd, require_root, Lab, LabSpec, Netns};
use serde_json::Value;

/// A lab for configuration: hv (uplink only), guests g1..g3 with veths vnet1..vnet3 lying in
/// hv, and a "LAN" namespace behind hv's port lan0 (10.0.20.1/24) for the bridged network;
/// g3 lives on that LAN.
struct CfgLab {
    lab: Lab,
    lan: Netns,
    run: tempfile::TempDir,
}

fn cfg_lab() -> CfgLab {
    let lab = Lab::build(LabSpec {
        guests: 3,
        configure_host: false,
        ..Default::default()
    })
    .unwrap();
    let prefix = lab.hv.name().strip_suffix("-hv").unwrap().to_string();
    let lan = Netns::create(&prefix, "lan").unwrap();
    lab.hv
        .ip(&[
            "link",
            "add",
            "lan0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            lan.name(),
        ])
        .unwrap();
    lab.hv.ip(&["link", "set", "lan0", "up"]).unwrap();
    lan.ip(&["addr", "add", "10.0.20.1/24", "dev", "eth0"])
        .unwrap();
    lan.ip(&["link", "set", "eth0", "up"]).unwrap();
    // g3 is a machine on the LAN
    let g3 = &lab.guests[2].ns;
    g3.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    g3.ip(&["addr", "add", "10.0.20.13/24", "dev", "eth0"])
        .unwrap();
    g3.ip(&["route", "add", "default", "via", "10.0.20.1"])
        .unwrap();
    // let IPv6 duplicate-address detection finish, so "before" is a settled host
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5)
        && !lab
            .hv
            .ip(&["-6", "addr", "show", "tentative"])
            .unwrap()
            .trim()
            .is_empty()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    CfgLab {
        lab,
        lan,
        run: tempfile::tempdir().unwrap(),
    }
}

impl Drop for CfgLab {
    /// Removes what kvmnet configured (its dnsmasq would keep the namespace alive), also when
    /// the test failed; then any dnsmasq of this test's runtime directory, by its PID file.
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.run.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path().join("pending-confirm"));
        }
        let empty = self.write("teardown.yaml", "networks: []\n");
        let _ = self.apply(&empty, &["--force"]);
        for dir in std::fs::read_dir(self.run.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = f.file_name().to_string_lossy().into_owned();
                if !(name.starts_with("dnsmasq-") && name.ends_with(".pid")) {
                    continue;
                }
                let Some(pid) = std::fs::read_to_string(f.path())
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                else {
                    continue;
                };
                let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*self.run.path().to_string_lossy())
                });
                if ours {
                    let _ = std::process::Command::new("kill")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
    }
}

impl CfgLab {
    fn kvmnet(&self, args: &[&str]) -> Output {
        Command::cargo_bin("kvmnet")
            .unwrap()
            .env("KVMNET_RUN_DIR", self.run.path())
            .args(args)
            .output()
            .unwrap()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.run.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn plan(&self, file: &Path) -> Value {
        let out = self.kvmnet(&[
            "plan",
            "--json",
            "-f",
            file.to_str().unwrap(),
            "--netns",
            self.lab.hv.name(),
        ]);
        assert!(
            out.status.success(),
            "plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn apply(&self, file: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "apply",
            "-f",
            file.to_str().unwrap(),
            "--netns",
            self.lab.hv.name(),
        ];
        args.extend_from_slice(extra);
        self.kvmnet(&args)
    }

    /// The whole host as a snapshot, without what changes by itself (timestamps, counters,
    /// neighbours, conntrack).
    fn snapshot(&self) -> Value {
        let out = self.kvmnet(&["snapshot", "--netns", self.lab.hv.name(), "-o", "-"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let o = v.as_object_mut().unwrap();
        for k in ["collected_at", "neighbours", "fdb", "collection_warnings"] {
            o.remove(k);
        }
        if let Some(sy) = o.get_mut("sysctls").and_then(Value::as_object_mut) {
            sy.remove("nf_conntrack_count");
        }
        if let Some(links) = o.get_mut("links").and_then(Value::as_array_mut) {
            for l in links {
                if let Some(l) = l.as_object_mut() {
                    l.remove("stats");
                }
            }
        }
        // a device that was up once keeps the default qdisc the kernel gave it (noqueue for
        // veth) instead of noop: the kernel's bookkeeping, not configuration
        if let Some(links) = o.get_mut("links").and_then(Value::as_array_mut) {
            for l in links {
                if l["qdisc"] == "noop" {
                    l["qdisc"] = "noqueue".into();
                }
            }
        }
        if let Some(q) = o.get_mut("qdiscs").and_then(Value::as_array_mut) {
            q.retain(|x| x["kind"] != "noqueue");
        }
        // IPv6 duplicate-address detection finishes when it finishes
        if let Some(addrs) = o.get_mut("addresses").and_then(Value::as_array_mut) {
            for a in addrs {
                if let Some(f) = a.get_mut("flags").and_then(Value::as_array_mut) {
                    f.retain(|x| x != "tentative");
                }
            }
        }
        // the guests are other machines: their own view (carrier, link-local routes,
        // neighbour caches) follows the host's links, it is not the host's configuration
        if let Some(vms) = o.get_mut("vms").and_then(Value::as_array_mut) {
            for vm in vms {
                if let Some(vm) = vm.as_object_mut() {
                    vm.remove("guest");
                }
            }
        }
        v
    }

    /// Asserts two snapshots are equal, showing the first lines that differ.
    fn assert_same(&self, before: &Value, after: &Value, what: &str) {
        let a = serde_json::to_string_pretty(before).unwrap();
        let b = serde_json::to_string_pretty(after).unwrap();
        if a != b {
            let diff: Vec<String> = a
                .lines()
                .zip(b.lines())
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .take(8)
                .map(|(i, (x, y))| format!("line {i}: {x}  ->  {y}"))
                .collect();
            panic!("{what}: the host differs:\n{}", diff.join("\n"));
        }
    }
}

/// True when `ns` gets an echo reply from `dst` within a few seconds (a port that just came
/// up forwards once the kernel has seen its carrier).
fn pings_soon(ns: &Netns, dst: &str) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        if ns.ping(dst, None) {
            return true;
        }
    }
    false
}

const FULL: &str = "\
networks:
  - name: lan
    type: nat
    bridge: kvbr0
    subnet: 10.0.0.0/24
    dhcp:
      start: 10.0.0.100
      end: 10.0.0.150
  - name: office
    type: bridged
    bridge: kvbr1
    ports: [lan0]
vnics:
  - vm: g1
    tap: vnet1
    network: lan
    mac: 52:54:00:00:00:01
    ip: 10.0.0.11
    antispoof: true
    qos: { rate: 20mbit }
  - vm: g2
    tap: vnet2
    network: lan
    ip: 10.0.0.12
  - vm: g3
    tap: vnet3
    network: office
port_forwards:
  - host_port: 8080
    to: 10.0.0.11
    to_port: 80
firewall:
  - vm: g2
    policy: drop
    rules:
      - action: allow
        proto: tcp
        ports: [22]
";

/// Bytes per second a TCP stream from the hypervisor to `dst:port` in `rx` achieves over
/// three seconds.
fn throughput(hv: &Netns, rx: &Netns, dst: &str, port: u16) -> f64 {
    let recv = format!(
        "import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port}));s.listen(1);print('ready',flush=True)\nc,_=s.accept();n=0;t0=None\n\
         while True:\n d=c.recv(65536)\n if not d: break\n if t0 is None: t0=time.time()\n n+=len(d)\n\
         print(n/(time.time()-t0))\n"
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", rx.name(), "python3", "-c", &recv])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    let send = format!(
        "import socket,time\ns=socket.create_connection(('{dst}',{port}))\nb=b'x'*65536\nt=time.time()\n\
         while time.time()-t<3: s.sendall(b)\ns.close()\n"
    );
    hv.exec(&["python3", "-c", &send]).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = child.wait();
    rest.trim().parse().unwrap()
}

#[test]
fn full_config_applies_works_and_is_idempotent() {
    if !require_root("full_config_applies_works_and_is_idempotent") {
        return;
    }
    for c in ["nft", "tc", "dnsmasq", "python3", "busybox"] {
        require_cmd(c);
    }
    let l = cfg_lab();
    let lab = &l.lab;
    for g in &lab.guests {
        assert!(!g.ns.ping("203.0.113.1", None), "nothing works before");
    }
    let f = l.write("net.yaml", FULL);
    let out = l.apply(&f, &[]);
    assert!(
        out.status.success(),
        "apply: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verified"), "{text}");

    // the network works for real
    assert!(
        pings_soon(&lab.guests[0].ns, "203.0.113.1"),
        "g1 reaches the upstream"
    );
    assert!(
        pings_soon(&lab.guests[1].ns, "203.0.113.1"),
        "g2 reaches the upstream"
    );
    assert!(
        pings_soon(&lab.guests[2].ns, "10.0.20.1"),
        "g3 reaches its LAN through the bridge"
    );
    // the port forward answers from the upstream
    let _web = lab.guests[0].ns.tcp_server("0.0.0.0", 80).unwrap();
    assert!(
        lab.up.tcp_connects("198.51.100.2", 8080),
        "port forward 8080 -> g1:80"
    );
    // the firewall: g2 takes ssh, nothing else from outside its network
    let _ssh = lab.guests[1].ns.tcp_server("0.0.0.0", 22).unwrap();
    let _other = lab.guests[1].ns.tcp_server("0.0.0.0", 5432).unwrap();
    // (from the upstream, routed through the host: the forward path the firewall guards)
    lab.up
        .ip(&["route", "add", "10.0.0.0/24", "via", "198.51.100.2"])
        .unwrap();
    assert!(lab.up.tcp_connects("10.0.0.12", 22), "g2:22 allowed");
    assert!(
        !lab.up.tcp_connects("10.0.0.12", 5432),
        "g2:5432 dropped by policy"
    );
    assert!(
        lab.hv.tcp_connects("10.0.0.12", 5432),
        "the host itself is not forwarded traffic"
    );
    // anti-spoofing: g1 cannot send from another address
    lab.guests[0]
        .ns
        .ip(&["addr", "add", "10.0.0.99/24", "dev", "eth0"])
        .unwrap();
    assert!(
        lab.guests[0]
            .ns
            .exec(&["ping", "-c1", "-W1", "-I", "10.0.0.99", "10.0.0.1"])
            .is_err(),
        "a spoofed source must not pass"
    );
    lab.guests[0]
        .ns
        .ip(&["addr", "del", "10.0.0.99/24", "dev", "eth0"])
        .unwrap();
    // DHCP: dnsmasq answers on the network's bridge
    let snap = l.snapshot();
    assert!(
        snap["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["proto"] == "udp" && s["port"] == 67),
        "dnsmasq listens for DHCP"
    );

    // QoS: the 20 Mbit/s limit toward g1, measured within 15%
    let bps = throughput(&lab.hv, &lab.guests[0].ns, "10.0.0.11", 5001) * 8.0;
    eprintln!("measured {:.1} Mbit/s toward g1 (limit 20)", bps / 1e6);
    assert!(
        (bps - 20e6).abs() <= 0.15 * 20e6,
        "rate {:.1} Mbit/s not within 15% of 20",
        bps / 1e6
    );

    // doctor finds nothing wrong
    let out = l.kvmnet(&[
        "doctor",
        "--json",
        "--netns",
        lab.hv.name(),
        "--target",
        "203.0.113.1",
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // for the host and the NAT guests (the bridged LAN of this lab has no way to the
    // upstream: its router namespace ends there, and doctor rightly says so for g3)
    let nat_guests = [lab.guests[0].name(), lab.guests[1].name()];
    let errors: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error" && f.get("caused_by").is_none())
        .filter(|f| {
            let aff = f["affects"].as_array().cloned().unwrap_or_default();
            aff.is_empty()
                || aff
                    .iter()
                    .any(|a| nat_guests.contains(&a.as_str().unwrap_or("")))
        })
        .collect();
    assert!(errors.is_empty(), "doctor after apply: {errors:#?}");

    // again: nothing to do
    assert_eq!(l.plan(&f)["changes"], 0);
    // kvmnet supervises its dnsmasq: gone, the next plan starts it again
    let pidfile = l
        .run
        .path()
        .join(format!("ns-{}", lab.hv.name()))
        .join("dnsmasq-lan.pid");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    kvmnet_testkit::run(&["kill", pid.trim()]).unwrap();
    let t = Instant::now();
    while Path::new(&format!("/proc/{}/cmdline", pid.trim())).exists()
        && std::fs::read(format!("/proc/{}/cmdline", pid.trim())).is_ok_and(|c| !c.is_empty())
        && t.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // doctor holds the host to what kvmnet applied: the network's DHCP server is missing
    let doctor_codes = |l: &CfgLab| -> Vec<(String, Option<String>)> {
        let out = l.kvmnet(&[
            "doctor",
            "--json",
            "--netns",
            l.lab.hv.name(),
            "--target",
            "203.0.113.1",
        ]);
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["code"].as_str().unwrap().to_string(),
                    f["caused_by"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let codes = doctor_codes(&l);
    assert!(
        codes.contains(&("dhcp-not-running".to_string(), None)),
        "{codes:?}"
    );
    let p = l.plan(&f);
    assert_eq!(p["changes"], 1, "{p:#}");
    assert_eq!(p["steps"][0]["op"], "start-dhcp");
    assert!(l.apply(&f, &[]).status.success());
    assert_eq!(l.plan(&f)["changes"], 0);

    // DHCP for real: g2 without its address gets a lease (busybox udhcpc; dnsmasq pings an
    // address before it offers it, so the client waits up to 3 s per attempt)...
    let g2 = &lab.guests[1].ns;
    let udhcpc = || {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                g2.name(),
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-n",
                "-q",
                "-t",
                "3",
                "-T",
                "3",
                "-s",
                "/bin/true",
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    g2.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
    assert!(udhcpc(), "g2 gets a DHCP lease from kvmnet's dnsmasq");
    // ...until a host rule drops DHCP requests: then it gets none, and doctor names the rule
    lab.hv
        .nft("table ip guard {\n chain in {\n  type filter hook input priority filter; policy accept;\n  udp dport 67 drop\n }\n}\n")
        .unwrap();
    assert!(!udhcpc(), "the rule stops DHCP");
    let codes = doctor_codes(&l);
    assert!(
        codes.contains(&("dhcp-blocked".to_string(), None)),
        "{codes:?}"
    );
    assert!(
        codes.contains(&(
            "guest-no-address".to_string(),
            Some("dhcp-blocked".to_string())
        )),
        "{codes:?}"
    );
    lab.hv
        .exec(&["nft", "delete", "table", "ip", "guard"])
        .unwrap();
    g2.ip(&["addr", "add", "10.0.0.12/24", "dev", "eth0"])
        .unwrap();
    g2.ip(&["route", "replace", "default", "via", "10.0.0.1"])
        .unwrap();
    assert!(pings_soon(g2, "203.0.113.1"), "g2 back");
    // one field changed: exactly its step
    let f2 = l.write("net2.yaml", &FULL.replace("rate: 20mbit", "rate: 10mbit"));
    let p = l.plan(&f2);
    assert_eq!(p["changes"], 1, "{p:#}");
    assert_eq!(p["steps"][0]["op"], "set-rate-limit");
    assert_eq!(p["steps"][0]["rate_bps"], 10_000_000);
    let f3 = l.write("net3.yaml", &FULL.replace("to_port: 80", "to_port: 81"));
    let p = l.plan(&f3);
    assert_eq!(p["changes"], 1, "{p:#}");
    assert_eq!(p["steps"][0]["op"], "replace-nft-table");
    let f4 = l.write(
        "net4.yaml",
        &FULL.replace(
            "    network: office\n",
            "    network: office\n    mtu: 1400\n",
        ),
    );
    let p = l.plan(&f4);
    assert_eq!(p["changes"], 1, "{p:#}");
    assert_eq!(p["steps"][0]["op"], "set-mtu");

    // import describes the host so that planning it changes nothing
    let out = l.kvmnet(&["import", "--netns", lab.hv.name()]);
    assert!(out.status.success());
    let imported = l.write("imported.yaml", &String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        l.plan(&imported)["changes"],
        0,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // removing everything leaves the host as the lab built it: kvmnet's objects only go
    let empty = l.write("empty.yaml", "networks: []\n");
    let out = l.apply(&empty, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = l.snapshot();
    let names: Vec<&str> = snap["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"kvbr0") && !names.contains(&"kvbr1"),
        "{names:?}"
    );
    assert!(
        names.contains(&"lan0") && names.contains(&"vnet1"),
        "foreign links stay"
    );
    assert!(snap["nftables"]["tables"]
        .as_array()
        .is_none_or(|t| t.is_empty()));
    assert_eq!(snap["sysctls"]["ip_forward"], false);
    let _ = &l.lan;
}

#[test]
fn a_step_the_kernel_refuses_leaves_the_host_exactly_as_before() {
    if !require_root("a_step_the_kernel_refuses_leaves_the_host_exactly_as_before") {
        return;
    }
    let l = cfg_lab();
    let before = l.snapshot();
    // the loopback cannot join a bridge: the kernel refuses that step after many others ran
    let bad = FULL.replace("ports: [lan0]", "ports: [lo]");
    let f = l.write("bad.yaml", &bad);
    let out = l.apply(&f, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("link lo master kvbr1") && err.contains("rolled back"),
        "{err}"
    );
    l.assert_same(&before, &l.snapshot(), "after a refused step");
}

#[test]
fn a_killed_apply_is_undone_and_the_next_apply_converges() {
    if !require_root("a_killed_apply_is_undone_and_the_next_apply_converges") {
        return;
    }
    let l = cfg_lab();
    let f = l.write("net.yaml", FULL);
    // stall after step 5, kill -9 there
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("kvmnet"))
        .env("KVMNET_RUN_DIR", l.run.path())
        .env("KVMNET_TEST_STALL_AFTER_STEP", "5")
        .args([
            "apply",
            "-f",
            f.to_str().unwrap(),
            "--netns",
            l.lab.hv.name(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let journal = l
        .run
        .path()
        .join(format!("ns-{}", l.lab.hv.name()))
        .join("journal.jsonl");
    let t = Instant::now();
    // a header line, then a line per step
    while std::fs::read_to_string(&journal)
        .map(|j| j.lines().count())
        .unwrap_or(0)
        < 6
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "apply did not reach step 5"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    assert!(
        journal.exists(),
        "the journal of the killed apply stays behind"
    );
    // half-applied: the bridge exists
    assert!(l.lab.hv.ip(&["link", "show", "kvbr0"]).is_ok());
    let out = l.apply(&f, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted"),
        "the recovery is reported"
    );
    assert_eq!(l.plan(&f)["changes"], 0, "converged");
    assert!(pings_soon(&l.lab.guests[0].ns, "203.0.113.1"));
}

#[test]
fn an_unconfirmed_apply_rolls_back_by_itself_and_a_confirmed_one_stays() {
    if !require_root("an_unconfirmed_apply_rolls_back_by_itself_and_a_confirmed_one_stays") {
        return;
    }
    require_cmd("setsid");
    let l = cfg_lab();
    let before = l.snapshot();
    let f = l.write("net.yaml", FULL);
    let out = l.apply(&f, &["--confirm-timeout", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pings_soon(&l.lab.guests[0].ns, "203.0.113.1"),
        "applied for now"
    );
    // nobody confirms; the shell that ran apply is long gone
    let t = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = l.snapshot();
        if now == before {
            break;
        }
        if t.elapsed() > Duration::from_secs(15) {
            l.assert_same(&before, &now, "not rolled back after the timeout");
        }
    }
    // a confirmed apply stays
    let out = l.apply(&f, &["--confirm-timeout", "2"]);
    assert!(out.status.success());
    let out = l.kvmnet(&["confirm", "--netns", l.lab.hv.name()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("confirmed"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(l.plan(&f)["changes"], 0, "still applied after the timeout");
    // and an explicit rollback undoes it
    let out = l.kvmnet(&["rollback", "--netns", l.lab.hv.name()]);
    assert!(out.status.success());
    l.assert_same(&before, &l.snapshot(), "after rollback");
}

#[test]
fn the_session_path_is_guarded_and_bad_input_changes_nothing() {
    if !require_root("the_session_path_is_guarded_and_bad_input_changes_nothing") {
        return;
    }
    let l = cfg_lab();
    let before = l.snapshot();
    // an SSH session from the upstream into the hypervisor's uplink address (a server that
    // keeps its connections open)
    let mut sshd = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            l.lab.hv.name(),
            "python3",
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('198.51.100.2',22))\ns.listen(4)\nprint('ok',flush=True)\nc,_=s.accept()\ntime.sleep(30)\n",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ok = [0u8; 2];
    std::io::Read::read_exact(sshd.stdout.as_mut().unwrap(), &mut ok).unwrap();
    let mut client = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            l.lab.up.name(),
            "python3",
            "-c",
            "import socket,time\ns=socket.create_connection(('198.51.100.2',22))\nprint('up',flush=True)\ntime.sleep(30)\n",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(client.stdout.as_mut().unwrap(), &mut buf).unwrap();
    let f = l.write(
        "wan.yaml",
        "networks:\n  - name: wan\n    type: bridged\n    bridge: kvbr9\n    ports: [uplink]\n",
    );
    let out = l.apply(&f, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("uplink") && err.contains("198.51.100.2") && err.contains("--force"),
        "{err}"
    );
    let _ = client.kill();
    let _ = client.wait();
    let _ = sshd.kill();
    let _ = sshd.wait();

    // bad configurations: one clear error each, nothing changed
    for (name, text, want) in [
        ("syntax.yaml", "networks:\n  - name: a\n    type: nat\n    subnet: 10.1.0.0/24: x\n", "syntax.yaml:4:"),
        ("unknown.yaml", "networks:\n  - name: a\n    type: nat\n    bridge: b0\n    subnet: 10.1.0.0/24\n    colour: red\n", "unknown.yaml:6:5: unknown field `colour`"),
        ("port.yaml", "port_forwards:\n  - host_port: 80\n    to: 10.9.9.9\n", "port.yaml:3:9:"),
    ] {
        let f = l.write(name, text);
        let out = l.apply(&f, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.trim().lines().filter(|l| l.starts_with("kvmnet: error")).count(), 1);
    }
    l.assert_same(&before, &l.snapshot(), "after bad input");
}

#[test]
fn import_of_a_foreign_host_plans_no_change_and_export_round_trips() {
    if !require_root("import_of_a_foreign_host_plans_no_change_and_export_round_trips") {
        return;
    }
    // a host configured by hand: bridge, address, masquerade in its own table, 3 guests
    let lab = Lab::nat(3).unwrap();
    let run = tempfile::tempdir().unwrap();
    let kv = |args: &[&str]| {
        Command::cargo_bin("kvmnet")
            .unwrap()
            .env("KVMNET_RUN_DIR", run.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = kv(&["import", "--netns", lab.hv.name()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        y.contains("type: nat") && y.contains("bridge: br0") && y.contains("subnet: 10.0.0.0/24"),
        "{y}"
    );
    for g in &lab.guests {
        assert!(y.contains(&format!("tap: {}", g.host_dev)), "{y}");
        assert!(y.contains(&format!("ip: {}", g.ip)), "{y}");
    }
    let f = run.path().join("imported.yaml");
    std::fs::write(&f, &y).unwrap();
    let out = kv(&[
        "plan",
        "--json",
        "-f",
        f.to_str().unwrap(),
        "--netns",
        lab.hv.name(),
    ]);
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["changes"], 0, "{p:#}\n{y}");
    // the host's own masquerade is respected, not doubled
    assert!(
        p["notes"].to_string().contains("already masquerades"),
        "{p:#}"
    );

    // export as a libvirt network, read back by kvmnet's libvirt parser
    let out = kv(&["export", "libvirt", "br0", "-f", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8_lossy(&out.stdout);
    let doc = kvmnet_libvirt::parse_document(&xml).unwrap();
    let net = &doc.networks[0];
    assert_eq!(net.name, "br0");
    assert_eq!(net.bridge.as_deref(), Some("br0"));
    assert_eq!(net.forward, kvmnet_model::network::ForwardMode::Nat);
    assert_eq!(net.ips[0].address.to_string(), "10.0.0.1/24");
    let out = kv(&["export", "libvirt", "nosuch", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no network named `nosuch`"));
}
