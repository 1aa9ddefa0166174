//! A private libvirtd inside a lab's hypervisor namespace.
//!
//! libvirtd runs in the hypervisor's network namespace and in a mount namespace of its own,
//! where /etc/libvirt is a throw-away copy and /run/libvirt, /var/lib/libvirt and
//! /var/log/libvirt are tmpfs: nothing it does reaches the host's libvirt configuration, and
//! everything it does to the network (bridges, taps, dnsmasq, firewall rules, ip_forward)
//! happens inside the lab. virsh reaches it with `nsenter -t PID -m`. On drop, domains and
//! networks are destroyed (stopping their QEMU and dnsmasq), then libvirtd is stopped by PID.
//!
//! The QEMU capability cache is kept under `target/kvmnet-libvirt-cache` so only the first
//! start on a machine pays the probe (about 8 s under TCG).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

static SEQ: AtomicU32 = AtomicU32::new(0);

const QEMU_CONF: &str = r#"# kvmnet test lab: qemu as root, no relabelling, no virtlogd, no cgroups, no private /dev
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
"#;

const LIBVIRTD_CONF: &str = r#"listen_tls = 0
listen_tcp = 0
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"#;

/// A running private libvirtd.
#[derive(Debug)]
pub struct Libvirtd {
    child: Child,
    dir: PathBuf,
}

impl Libvirtd {
    /// Starts libvirtd inside `hv` and waits until it answers.
    pub fn start(hv: &Netns) -> Result<Libvirtd> {
        let dir = std::env::temp_dir().join(format!(
            "kvmnet-libvirt-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let etc = dir.join("etc");
        std::fs::create_dir_all(etc.join("qemu/networks"))?;
        for f in ["libvirt.conf", "libvirt-admin.conf"] {
            let src = Path::new("/etc/libvirt").join(f);
            if src.is_file() {
                std::fs::copy(&src, etc.join(f))?;
            }
        }
        // no package default network (192.168.122.0/24) and nothing from the host
        std::fs::write(etc.join("qemu.conf"), QEMU_CONF)?;
        std::fs::write(etc.join("libvirtd.conf"), LIBVIRTD_CONF)?;
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kvmnet-libvirt-cache");
        std::fs::create_dir_all(&cache)?;
        let script = format!(
            "set -e
mount --bind '{etc}' /etc/libvirt
for d in /run/libvirt /var/lib/libvirt /var/log/libvirt; do mkdir -p $d; mount -t tmpfs tmpfs $d; done
mkdir -p /var/cache/libvirt; mount --bind '{cache}' /var/cache/libvirt
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/dnsmasq /var/lib/libvirt/qemu
exec libvirtd",
            etc = etc.display(),
            cache = cache.display()
        );
        let log = std::fs::File::create(dir.join("libvirtd.out"))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                hv.name(),
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start libvirtd")?;
        let d = Libvirtd { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.virsh(&["version"]).is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline || !Path::new(&format!("/proc/{}", d.pid())).exists() {
                bail!(
                    "libvirtd did not start:\n{}",
                    std::fs::read_to_string(d.dir.join("libvirtd.out")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// libvirtd's PID (`ip netns exec`, unshare and bash all exec into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A directory for the test's files (console logs, sockets), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `virsh -c qemu:///system ARGS` against this daemon.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let pid = self.pid().to_string();
        let mut v = vec![
            "nsenter",
            "-t",
            &pid,
            "-m",
            "-n",
            "--",
            "virsh",
            "-q",
            "-c",
            "qemu:///system",
        ];
        v.extend_from_slice(args);
        crate::run(&v)
    }

    /// The PID of the dnsmasq libvirt runs for `network` (its pidfile lives in the daemon's
    /// private /run, reached through /proc/PID/root).
    pub fn dnsmasq_pid(&self, network: &str) -> Option<u32> {
        std::fs::read_to_string(format!(
            "/proc/{}/root/run/libvirt/network/{network}.pid",
            self.pid()
        ))
        .ok()
        .and_then(|p| p.trim().parse().ok())
    }

    /// Defines an object from XML (`what` is `net` or `domain`) and starts it when asked.
    pub fn define(&self, what: &str, xml: &str, start: bool) -> Result<()> {
        let f = self
            .dir
            .join(format!("def-{}.xml", SEQ.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&f, xml)?;
        let path = f.display().to_string();
        let (define, start_cmd) = match what {
            "net" => ("net-define", "net-start"),
            _ => ("define", "start"),
        };
        self.virsh(&[define, &path])?;
        if start {
            let name = xml
                .split("<name>")
                .nth(1)
                .and_then(|r| r.split("</name>").next())
                .context("XML without <name>")?;
            self.virsh(&[start_cmd, name])?;
        }
        Ok(())
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Ok(list) = self.virsh(&["list", "--all", "--name"]) {
            for d in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.virsh(&["destroy", d]);
            }
        }
        if let Ok(list) = self.virsh(&["net-list", "--all", "--name"]) {
            for n in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.virsh(&["net-destroy", n]);
            }
        }
        use rustix::process::{kill_process, Pid, Signal};
        if let Some(pid) = i32::try_from(self.pid()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A libvirt domain of the tiny test guest: direct kernel boot, one interface on `network`,
/// DHCP inside, the guest agent on a virtio channel, console and command channel in `dir`.
pub fn domain_xml(
    image: &crate::GuestImage,
    name: &str,
    network: &str,
    mac: &str,
    model: &str,
    dir: &Path,
) -> String {
    let d = dir.display();
    let kind = if crate::qemu::accel() == "kvm" {
        "kvm"
    } else {
        "qemu"
    };
    format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 kvmnet.name={name} kvmnet.ip=dhcp kvmnet.agent=1</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'>
      <source network='{network}'/>
      <mac address='{mac}'/>
      <model type='{model}'/>
    </interface>
    <serial type='file'><source path='{d}/{name}.console'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{d}/{name}.cmd'/><target port='1'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
    )
}
