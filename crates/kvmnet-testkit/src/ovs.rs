//! Open vSwitch for a lab: ovsdb-server and ovs-vswitchd started by hand inside the hypervisor
//! namespace, with a private database and run directory, the userspace datapath (this kernel
//! has no openvswitch module), and stopped by their PIDs on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running private Open vSwitch.
#[derive(Debug)]
pub struct Ovs {
    dir: PathBuf,
}

impl Ovs {
    /// Starts ovsdb-server and ovs-vswitchd inside `hv`.
    pub fn start(hv: &Netns) -> Result<Ovs> {
        let dir = std::env::temp_dir().join(format!(
            "kvmnet-ovs-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)?;
        let ovs = Ovs { dir };
        let d = ovs.dir.display().to_string();
        let schema = ["/usr/share/openvswitch/vswitch.ovsschema"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("vswitch.ovsschema not found: is openvswitch-switch installed?")?;
        ovs.run(&["ovsdb-tool", "create", &format!("{d}/conf.db"), schema])?;
        ovs.run(&[
            "ip",
            "netns",
            "exec",
            hv.name(),
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            &format!("--log-file={d}/ovsdb-server.log"),
            "--detach",
        ])?;
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.run(&[
            "ip",
            "netns",
            "exec",
            hv.name(),
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            "--detach",
        ])?;
        Ok(ovs)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let d = self.dir.display().to_string();
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("OVS_RUNDIR", &d)
            .env("OVS_LOGDIR", &d)
            .env("OVS_DBDIR", &d)
            .env("OVS_SYSCONFDIR", &d)
            .output()
            .with_context(|| format!("cannot run {}", args[0]))?;
        if !out.status.success() {
            bail!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The database socket.
    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// `ovs-vsctl` against this instance.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}", self.db_socket().display());
        let mut v = vec!["ovs-vsctl", db.as_str(), "--timeout=20"];
        v.extend_from_slice(args);
        self.run(&v)
    }

    /// `ovs-ofctl` against one bridge of this instance.
    pub fn ofctl(&self, args: &[&str], bridge: &str) -> Result<String> {
        let target = format!("unix:{}", self.dir.join(format!("{bridge}.mgmt")).display());
        let mut v = vec!["ovs-ofctl"];
        v.extend_from_slice(args);
        v.insert(2.min(v.len()), &target);
        self.run(&v)
    }

    fn pid(&self, daemon: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{daemon}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Stops ovs-vswitchd only (its database stays), by PID.
    pub fn stop_vswitchd(&self) {
        self.stop("ovs-vswitchd");
    }

    fn stop(&self, daemon: &str) {
        use rustix::process::{kill_process, Pid, Signal};
        let Some(pid) = self.pid(daemon) else { return };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy()));
        if !ours {
            return;
        }
        if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(p, Signal::TERM);
            let t = Instant::now();
            while Path::new(&format!("/proc/{pid}/cmdline")).exists()
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
                && t.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill_process(p, Signal::KILL);
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        self.stop("ovs-vswitchd");
        self.stop("ovsdb-server");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A lab switched by Open vSwitch: hypervisor `hv` runs OVS with bridge `ovsbr0` (userspace
/// datapath) whose internal port has 10.0.10.1/24 on VLAN 10; guest `g<i>` (10.0.<tag>.(10+i)/24,
/// default route via 10.0.<tag>.1) sits on an access port `ovp<i>` with its tag; with `bond`, a
/// port `bond0` of two veth members (`bm1`, `bm2`, active-backup, access VLAN 10) leads to a
/// switch namespace (a Linux bridge) with a LAN host at 10.0.10.254.
#[derive(Debug)]
pub struct OvsLab {
    pub guests: Vec<crate::Guest>,
    pub lan: Option<Netns>,
    pub switch: Option<Netns>,
    pub ovs: Ovs,
    pub hv: Netns,
    /// The upstream ("internet") namespace, as in the NAT lab.
    pub up: Netns,
}

impl OvsLab {
    /// Builds the lab with one guest per tag in `tags`.
    pub fn build(tags: &[u16], bond: bool) -> Result<OvsLab> {
        let prefix = Netns::unique_prefix();
        let hv = Netns::create(&prefix, "hv")?;
        let up = Netns::create(&prefix, "up")?;
        // the upstream, NAT for every guest subnet
        hv.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "down0",
            "netns",
            up.name(),
        ])?;
        hv.ip(&["addr", "add", "198.51.100.2/24", "dev", "uplink"])?;
        hv.ip(&["link", "set", "uplink", "up"])?;
        up.ip(&["addr", "add", "198.51.100.1/24", "dev", "down0"])?;
        up.ip(&["addr", "add", "203.0.113.1/32", "dev", "lo"])?;
        up.ip(&["link", "set", "down0", "up"])?;
        hv.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        hv.sysctl("net.ipv4.ip_forward", "1")?;
        hv.nft("table ip kvmlab {\n chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.0.0.0/8 oifname \"uplink\" masquerade\n }\n}\n")?;
        let ovs = Ovs::start(&hv)?;
        ovs.vsctl(&[
            "add-br",
            "ovsbr0",
            "--",
            "set",
            "bridge",
            "ovsbr0",
            "datapath_type=netdev",
        ])?;
        ovs.vsctl(&["set", "port", "ovsbr0", "tag=10"])?;
        // the internal port appears as a tap in hv once vswitchd has created it
        let t = Instant::now();
        while hv.ip(&["link", "show", "ovsbr0"]).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("ovsbr0 did not appear");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        hv.ip(&["addr", "add", "10.0.10.1/24", "dev", "ovsbr0"])?;
        hv.ip(&["link", "set", "ovsbr0", "up"])?;
        let mut lab = OvsLab {
            guests: vec![],
            lan: None,
            switch: None,
            ovs,
            hv,
            up,
        };
        for (i, tag) in tags.iter().enumerate() {
            lab.add_guest(&prefix, i + 1, *tag)?;
        }
        if bond {
            let sw = Netns::create(&prefix, "sw")?;
            let lan = Netns::create(&prefix, "lan")?;
            sw.ip(&["link", "add", "swbr", "type", "bridge"])?;
            sw.ip(&["link", "set", "swbr", "up"])?;
            for m in ["bm1", "bm2"] {
                lab.hv.ip(&[
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
                ])?;
                lab.hv.ip(&["link", "set", m, "up"])?;
                sw.ip(&["link", "set", &format!("{m}p"), "master", "swbr"])?;
                sw.ip(&["link", "set", &format!("{m}p"), "up"])?;
                sw.exec(&["ethtool", "-K", &format!("{m}p"), "tx", "off"])?;
            }
            sw.ip(&[
                "link",
                "add",
                "toLan",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                lan.name(),
            ])?;
            sw.ip(&["link", "set", "toLan", "master", "swbr"])?;
            sw.ip(&["link", "set", "toLan", "up"])?;
            lan.ip(&["addr", "add", "10.0.10.254/24", "dev", "eth0"])?;
            lan.ip(&["link", "set", "eth0", "up"])?;
            lan.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
            lab.ovs.vsctl(&[
                "add-bond",
                "ovsbr0",
                "bond0",
                "bm1",
                "bm2",
                "tag=10",
                "bond_mode=active-backup",
            ])?;
            lab.switch = Some(sw);
            lab.lan = Some(lan);
        }
        Ok(lab)
    }

    fn add_guest(&mut self, prefix: &str, i: usize, tag: u16) -> Result<()> {
        let ns = Netns::create(prefix, &format!("g{i}"))?;
        let dev = format!("ovp{i}");
        let mac = format!("52:54:00:0a:00:{i:02x}");
        let ip = format!("10.0.{tag}.{}", 10 + i);
        self.hv.ip(&[
            "link",
            "add",
            &dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.hv.ip(&["link", "set", &dev, "up"])?;
        ns.ip(&["link", "set", "eth0", "address", &mac])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.0.{tag}.1")])?;
        // the userspace datapath forwards checksum-offloaded frames without the checksum
        ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        self.ovs
            .vsctl(&["add-port", "ovsbr0", &dev, &format!("tag={tag}")])?;
        self.guests.push(crate::Guest {
            ns,
            ip,
            host_dev: dev,
            mac,
        });
        Ok(())
    }
}
