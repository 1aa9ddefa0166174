//! Real QEMU guests on taps inside a lab's hypervisor namespace.
//!
//! The guest is Debian's stock kernel plus a busybox initramfs built by `guest/build.sh` (once
//! per machine, cached under `target/kvmnet-guest`). Its /init configures eth0 from the kernel
//! command line, starts qemu-guest-agent when asked, prints `KVMNET-GUEST-UP` on the first
//! serial port and serves a shell command channel on the second one (a unix socket here).
//!
//! QEMU runs inside the hypervisor namespace (`ip netns exec`), so its `-netdev tap` attaches to
//! a tap of that namespace. Acceleration is KVM where it really works, else TCG (see
//! [`accel`]). Every guest is stopped by the PID QEMU wrote to its own pidfile, never by name.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

const BUILD_SCRIPT: &str = include_str!("../guest/build.sh");
static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The guest's kernel and initramfs.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl GuestImage {
    /// The guest image, built on first use (about 5 s: `apt-get download` of the kernel and
    /// qemu-guest-agent packages, unpacked, never installed). `KVMNET_GUEST_DIR` overrides
    /// where it is kept.
    pub fn get() -> Result<GuestImage> {
        IMAGE
            .get_or_init(|| Self::build().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn build() -> Result<GuestImage> {
        let dir = std::env::var_os("KVMNET_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/kvmnet-guest")
            });
        let img = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
        };
        let stamp = dir.join("stamp");
        let want = format!("{:016x}", fnv(BUILD_SCRIPT));
        let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want)
            && img.kernel.is_file()
            && img.initrd.is_file();
        if fresh {
            return Ok(img);
        }
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("build.sh");
        std::fs::write(&script, BUILD_SCRIPT)?;
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .context("cannot run bash")?;
        if !out.status.success() {
            bail!(
                "building the test guest failed (needs busybox-static, iputils-ping, apt access):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(&stamp, want)?;
        Ok(img)
    }
}

/// The QEMU accelerator for test guests: `KVMNET_QEMU_ACCEL` when set; else `kvm` when
/// /dev/kvm exists and the CPU has hardware virtualisation (vmx/svm), which stock guest kernels
/// need (a nested PVM host offers /dev/kvm without it, and they hang there); else `tcg`.
pub fn accel() -> String {
    if let Ok(a) = std::env::var("KVMNET_QEMU_ACCEL") {
        return a;
    }
    let hw = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    if hw && Path::new("/dev/kvm").exists() {
        "kvm".into()
    } else {
        "tcg".into()
    }
}

/// The guest's emulated NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    Virtio,
    E1000,
}

/// How to boot one guest.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub name: String,
    /// The tap in the hypervisor namespace (created by the caller or by QEMU).
    pub tap: String,
    pub mac: String,
    pub model: NicModel,
    /// `ADDR/LEN`, `dhcp` or `none`.
    pub ip: String,
    pub gateway: Option<String>,
    pub mtu: Option<u32>,
    /// Start qemu-guest-agent on a virtio-serial port.
    pub agent: bool,
    /// A macvtap's character device (`/dev/tapN`) to hand QEMU as its tap (fd 3) instead of
    /// a tap device by name.
    pub fd_device: Option<String>,
}

/// A running QEMU guest; stopped by its PID and its files removed on drop.
#[derive(Debug)]
pub struct QemuGuest {
    pub name: String,
    pub tap: String,
    pub mac: String,
    /// The static address (without prefix) when the spec gave one.
    pub ip: Option<String>,
    pid: u32,
    dir: PathBuf,
}

impl QemuGuest {
    /// The QEMU command line for `spec`, with its files under `dir`.
    pub fn command_line(image: &GuestImage, spec: &QemuSpec, dir: &Path) -> Vec<String> {
        let accel = accel();
        let mut append = format!(
            "console=ttyS0 quiet panic=-1 kvmnet.name={} kvmnet.ip={}",
            spec.name, spec.ip
        );
        if let Some(g) = &spec.gateway {
            append.push_str(&format!(" kvmnet.gw={g}"));
        }
        if let Some(m) = spec.mtu {
            append.push_str(&format!(" kvmnet.mtu={m}"));
        }
        if spec.agent {
            append.push_str(" kvmnet.agent=1");
        }
        let d = dir.display();
        let nic = match spec.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
        };
        let mut v: Vec<String> = [
            "qemu-system-x86_64",
            "-name",
            &format!("guest={}", spec.name),
            "-accel",
            &accel,
            "-m",
            "128",
            "-smp",
            "1",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-kernel",
            &image.kernel.display().to_string(),
            "-initrd",
            &image.initrd.display().to_string(),
            "-append",
            &append,
            "-netdev",
            &match &spec.fd_device {
                Some(_) => "tap,id=n0,fd=3".to_string(),
                None => format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap),
            },
            "-device",
            &format!("{nic},netdev=n0,mac={}", spec.mac),
            "-serial",
            &format!("file:{d}/console"),
            "-serial",
            &format!("unix:{d}/cmd,server=on,wait=off"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if spec.agent {
            v.extend(
                [
                    "-device",
                    "virtio-serial-pci",
                    "-chardev",
                    &format!("socket,id=qga0,path={d}/qga,server=on,wait=off"),
                    "-device",
                    "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        v.extend(
            ["-pidfile", &format!("{d}/qemu.pid"), "-daemonize"]
                .iter()
                .map(|s| s.to_string()),
        );
        v
    }

    /// Boots a guest inside `hv` (returns once QEMU runs; see [`QemuGuest::wait_up`]).
    pub fn launch(hv: &Netns, image: &GuestImage, spec: &QemuSpec) -> Result<QemuGuest> {
        let dir = std::env::temp_dir().join(format!(
            "kvmnet-qemu-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            spec.name
        ));
        std::fs::create_dir_all(&dir)?;
        let cmd = Self::command_line(image, spec, &dir);
        let mut args = vec!["ip", "netns", "exec", hv.name()];
        // a macvtap: QEMU gets its character device open as fd 3
        let redirect = spec
            .fd_device
            .as_ref()
            .map(|d| format!("exec \"$0\" \"$@\" 3<>{d}"));
        if let Some(r) = &redirect {
            args.extend(["sh", "-c", r.as_str()]);
        }
        args.extend(cmd.iter().map(String::as_str));
        let started = crate::run(&args);
        let pid = std::fs::read_to_string(dir.join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let guest = QemuGuest {
            name: spec.name.clone(),
            tap: spec.tap.clone(),
            mac: spec.mac.clone(),
            ip: spec.ip.split_once('/').map(|(a, _)| a.to_string()),
            pid: pid.unwrap_or(0),
            dir,
        };
        started.with_context(|| format!("starting QEMU guest {}", spec.name))?;
        if pid.is_none() {
            bail!("QEMU guest {} wrote no pidfile", spec.name);
        }
        Ok(guest)
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The guest agent's socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("qga")
    }

    /// Everything the guest printed on its console.
    pub fn console(&self) -> String {
        std::fs::read(self.dir.join("console"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the guest's /init reports its network configured.
    pub fn wait_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console().contains("KVMNET-GUEST-UP") {
                return Ok(());
            }
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                bail!("QEMU guest {} exited:\n{}", self.name, self.console());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "QEMU guest {} did not come up in {timeout:?}; console:\n{}",
            self.name,
            self.console()
        )
    }

    /// Runs a shell command in the guest through its serial command channel; returns its exit
    /// code and output (stdout and stderr).
    pub fn sh(&self, cmd: &str) -> Result<(i32, String)> {
        self.sh_timeout(cmd, Duration::from_secs(20))
    }

    /// [`QemuGuest::sh`] with a timeout.
    pub fn sh_timeout(&self, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        serial_sh(&self.dir.join("cmd"), cmd, timeout)
            .with_context(|| format!("guest {}", self.name))
    }

    /// True when one ICMP echo from the guest to `dst` gets a reply; with `size`, the packet
    /// is that many bytes in total and carries DF.
    pub fn pings(&self, dst: &str, size: Option<u32>) -> bool {
        let df = size
            .map(|s| format!("-M do -s {} ", s.saturating_sub(28)))
            .unwrap_or_default();
        matches!(
            self.sh(&format!("/usr/bin/ping -c1 -W2 -n -q {df}{dst}")),
            Ok((0, _))
        )
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        use rustix::process::{kill_process, Pid, Signal};
        // only the process this guest started: check its command line names our directory
        let ours = std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy()));
        if let (true, Some(pid)) = (ours, i32::try_from(self.pid).ok().and_then(Pid::from_raw)) {
            let _ = kill_process(pid, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{}", self.pid)).exists() {
                let _ = kill_process(pid, Signal::KILL);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a shell command in a test guest through its serial command channel (the unix socket
/// QEMU serves for the guest's second serial port); returns its exit code and output.
pub fn serial_sh(socket: &Path, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("command channel {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    // drain anything stale (output of an earlier command that timed out)
    let mut buf = vec![0u8; 65536];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    // the command travels base64-encoded: quoting and newlines survive the line protocol
    writeln!(
        s,
        "eval \"$(echo {} | base64 -d)\"",
        b64encode(cmd.as_bytes())
    )?;
    let deadline = Instant::now() + timeout;
    let mut got: Vec<u8> = vec![];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&got).replace('\r', "");
        if let Some(b) = text.find("@@BEGIN\n") {
            let body = &text[b + 8..];
            if let Some(e) = body.find("@@END rc=") {
                let rc_text: String = body[e + 9..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if body[e + 9 + rc_text.len()..].starts_with('\n') {
                    let rc = rc_text.parse().unwrap_or(-1);
                    return Ok((rc, body[..e].to_string()));
                }
            }
        }
    }
    bail!("`{cmd}` did not finish in {timeout:?}")
}

fn b64encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(b64encode(b""), "");
        assert_eq!(b64encode(b"f"), "Zg==");
        assert_eq!(b64encode(b"fo"), "Zm8=");
        assert_eq!(b64encode(b"foo"), "Zm9v");
        assert_eq!(
            b64encode(b"ip route; echo 'a b'\n"),
            "aXAgcm91dGU7IGVjaG8gJ2EgYicK"
        );
    }

    #[test]
    fn command_line_names_tap_mac_and_agent() {
        let img = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let spec = QemuSpec {
            name: "g1".into(),
            tap: "tap1".into(),
            mac: "52:54:00:00:00:01".into(),
            model: NicModel::E1000,
            ip: "10.0.0.21/24".into(),
            gateway: Some("10.0.0.1".into()),
            mtu: Some(1400),
            agent: true,
            fd_device: None,
        };
        let v = QemuGuest::command_line(&img, &spec, Path::new("/run/x")).join(" ");
        assert!(v.contains("ifname=tap1,script=no"));
        assert!(v.contains("-device e1000,netdev=n0,mac=52:54:00:00:00:01"));
        assert!(
            v.contains("kvmnet.ip=10.0.0.21/24 kvmnet.gw=10.0.0.1 kvmnet.mtu=1400 kvmnet.agent=1")
        );
        assert!(v.contains("path=/run/x/qga"));
    }
}
