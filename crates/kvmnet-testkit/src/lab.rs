//! A NAT lab: one hypervisor namespace with a bridge and NAT to an upstream namespace, and
//! namespace guests on the bridge.
//!
//! ```text
//!   [g1 10.0.0.11]--vnet1--+                                hv                     up ("internet")
//!   [g2 10.0.0.12]--vnet2--+--br0 10.0.0.1/24 ip_forward=1 uplink 198.51.100.2 == down0 198.51.100.1
//!   [g3 10.0.0.13]--vnet3--+   nft: masquerade 10.0.0.0/24 out of uplink        lo 203.0.113.1/32
//! ```
//! The upstream has no route back to 10.0.0.0/8, as a real one would not: only NATed traffic
//! gets answers.

use anyhow::Result;

use crate::netns::Netns;
use crate::qemu::{GuestImage, NicModel, QemuGuest, QemuSpec};

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub guests: usize,
    /// The bridge's name in the hypervisor namespace.
    pub bridge: String,
    /// Third octet of the 10.0.X.0/24 guest subnet.
    pub subnet: u8,
    /// Masquerade guest traffic out of the uplink (an nft table `ip kvmlab`).
    pub nat: bool,
    /// Build the hypervisor's bridge and attach the guests. Without it the hypervisor has
    /// only its uplink and the guests' veths lie unattached (and down) in it, for a test that
    /// configures the host itself.
    pub configure_host: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            guests: 3,
            bridge: "br0".into(),
            subnet: 0,
            nat: true,
            configure_host: true,
        }
    }
}

/// A namespace guest.
#[derive(Debug)]
pub struct Guest {
    pub ns: Netns,
    /// The guest's address (without prefix).
    pub ip: String,
    /// The host-side veth in the hypervisor namespace.
    pub host_dev: String,
    pub mac: String,
}

impl Guest {
    /// The guest's name as kvmnet reports it (the namespace name).
    pub fn name(&self) -> &str {
        self.ns.name()
    }
}

/// A built lab; dropping it deletes every namespace.
#[derive(Debug)]
pub struct Lab {
    pub spec: LabSpec,
    // guests first so they are dropped before the hypervisor (order does not matter to the
    // kernel, but it keeps `ip netns` output tidy)
    pub guests: Vec<Guest>,
    /// Real QEMU guests (stopped before the namespaces go).
    pub vms: Vec<QemuGuest>,
    pub hv: Netns,
    pub up: Netns,
}

impl Lab {
    /// The standard NAT lab with `n` guests.
    pub fn nat(n: usize) -> Result<Lab> {
        Lab::build(LabSpec {
            guests: n,
            ..Default::default()
        })
    }

    /// Builds a lab from a spec.
    pub fn build(spec: LabSpec) -> Result<Lab> {
        let prefix = Netns::unique_prefix();
        let hv = Netns::create(&prefix, "hv")?;
        let up = Netns::create(&prefix, "up")?;
        let mut lab = Lab {
            spec: spec.clone(),
            guests: vec![],
            vms: vec![],
            hv,
            up,
        };
        let s = spec.subnet;
        let br = spec.bridge.as_str();
        let hv = &lab.hv;
        if !spec.configure_host {
            lab.uplink()?;
            for i in 1..=spec.guests {
                lab.add_guest(i)?;
            }
            return Ok(lab);
        }
        hv.ip(&["link", "add", br, "type", "bridge"])?;
        // pin the bridge MAC: otherwise it follows the lowest port MAC and changes with ports
        hv.ip(&[
            "link",
            "set",
            br,
            "address",
            &format!("02:00:0a:00:{s:02x}:01"),
        ])?;
        hv.ip(&["addr", "add", &format!("10.0.{s}.1/24"), "dev", br])?;
        hv.ip(&["link", "set", br, "up"])?;
        lab.uplink()?;
        let hv = &lab.hv;
        hv.sysctl("net.ipv4.ip_forward", "1")?;
        if spec.nat {
            hv.nft(&format!(
                "table ip kvmlab {{\n chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.0.{s}.0/24 oifname \"uplink\" counter masquerade comment \"lab-masq\"\n }}\n}}\n"
            ))?;
        }
        for i in 1..=spec.guests {
            lab.add_guest(i)?;
        }
        Ok(lab)
    }

    /// The hypervisor's uplink to the upstream namespace, and its default route.
    fn uplink(&self) -> Result<()> {
        let hv = &self.hv;
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
            self.up.name(),
        ])?;
        hv.ip(&["addr", "add", "198.51.100.2/24", "dev", "uplink"])?;
        hv.ip(&["link", "set", "uplink", "up"])?;
        self.up
            .ip(&["addr", "add", "198.51.100.1/24", "dev", "down0"])?;
        self.up
            .ip(&["addr", "add", "203.0.113.1/32", "dev", "lo"])?;
        self.up.ip(&["link", "set", "down0", "up"])?;
        hv.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        Ok(())
    }

    /// Adds guest number `i` (namespace `<prefix>-g<i>`, veth `vnet<i>` on the bridge).
    pub fn add_guest(&mut self, i: usize) -> Result<()> {
        let prefix = self
            .hv
            .name()
            .strip_suffix("-hv")
            .unwrap_or(self.hv.name())
            .to_string();
        let ns = Netns::create(&prefix, &format!("g{i}"))?;
        let s = self.spec.subnet;
        let dev = format!("vnet{i}");
        let mac = format!("52:54:00:00:{s:02x}:{i:02x}");
        let ip = format!("10.0.{s}.{}", 10 + i);
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
        if self.spec.configure_host {
            self.hv
                .ip(&["link", "set", &dev, "master", &self.spec.bridge])?;
            self.hv.ip(&["link", "set", &dev, "up"])?;
        }
        ns.ip(&["link", "set", "eth0", "address", &mac])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.0.{s}.1")])?;
        self.guests.push(Guest {
            ns,
            ip,
            host_dev: dev,
            mac,
        });
        Ok(())
    }

    /// Boots real QEMU guest number `i` (tap `tap<i>` on the bridge, address 10.0.S.(20+i),
    /// MAC 52:54:00:01:S:i, the guest agent on) with `model`; returns once QEMU runs. Call
    /// [`Lab::wait_vms`] before talking to it.
    pub fn add_qemu_guest(&mut self, i: usize, model: NicModel) -> Result<()> {
        let s = self.spec.subnet;
        let spec = QemuSpec {
            name: format!("vm{i}"),
            tap: format!("tap{i}"),
            mac: format!("52:54:00:01:{s:02x}:{i:02x}"),
            model,
            ip: format!("10.0.{s}.{}/24", 20 + i),
            gateway: Some(self.gateway()),
            mtu: None,
            agent: true,
            fd_device: None,
        };
        self.add_qemu(&spec)
    }

    /// Boots a QEMU guest on a macvtap (bridge mode) of the hypervisor's device `lower`, the
    /// way libvirt's `<interface type='direct'>` does: the macvtap takes the guest's MAC and
    /// QEMU gets its character device.
    pub fn add_qemu_macvtap(&mut self, spec: &QemuSpec, lower: &str) -> Result<()> {
        let image = GuestImage::get()?;
        let hv = &self.hv;
        hv.ip(&[
            "link", "add", "link", lower, "name", &spec.tap, "type", "macvtap", "mode", "bridge",
        ])?;
        hv.ip(&["link", "set", &spec.tap, "address", &spec.mac])?;
        hv.ip(&["link", "set", &spec.tap, "up"])?;
        let idx = hv
            .exec(&["cat", &format!("/sys/class/net/{}/ifindex", spec.tap)])
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .ok_or_else(|| anyhow::anyhow!("no ifindex for {}", spec.tap))?;
        let dev = format!("/dev/tap{idx}");
        let t = std::time::Instant::now();
        while !std::path::Path::new(&dev).exists()
            && t.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut spec = spec.clone();
        spec.fd_device = Some(dev);
        self.vms.push(QemuGuest::launch(hv, &image, &spec)?);
        Ok(())
    }

    /// Boots a QEMU guest from a full spec; the tap is created on the lab's bridge first.
    pub fn add_qemu(&mut self, spec: &QemuSpec) -> Result<()> {
        let image = GuestImage::get()?;
        let hv = &self.hv;
        hv.ip(&["tuntap", "add", "dev", &spec.tap, "mode", "tap"])?;
        hv.ip(&["link", "set", &spec.tap, "master", &self.spec.bridge])?;
        hv.ip(&["link", "set", &spec.tap, "up"])?;
        self.vms.push(QemuGuest::launch(hv, &image, spec)?);
        Ok(())
    }

    /// Waits until every QEMU guest has its network up.
    pub fn wait_vms(&self, timeout: std::time::Duration) -> Result<()> {
        for vm in &self.vms {
            vm.wait_up(timeout)?;
        }
        Ok(())
    }

    /// The QEMU guest named `name`.
    pub fn vm(&self, name: &str) -> Option<&QemuGuest> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The gateway address guests use.
    pub fn gateway(&self) -> String {
        format!("10.0.{}.1", self.spec.subnet)
    }

    /// Pings `target` from guest `i` (0-based); true when a reply came back.
    pub fn guest_pings(&self, i: usize, target: &str) -> bool {
        self.guests[i]
            .ns
            .exec(&["ping", "-c1", "-W1", "-n", "-q", target])
            .is_ok()
    }
}
