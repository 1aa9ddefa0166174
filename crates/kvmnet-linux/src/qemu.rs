//! Bare QEMU discovery: a qemu process's command line names its guest, NICs and the taps they
//! use (`-netdev tap,ifname=...` or a passed tap fd, `-device virtio-net-pci,netdev=,mac=`,
//! legacy `-net`/`-nic`). Parsing is pure; the caller supplies argv and the process's tap fds.

use std::collections::HashMap;

use kvmnet_model::vm::{Vm, VmSource, VmState, Vnic, VnicType};
use kvmnet_model::MacAddr;

/// True when argv[0] (or the command name) is a QEMU system emulator.
pub fn is_qemu(comm: &str, argv: &[String]) -> bool {
    let exe = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a))
        .unwrap_or("");
    exe.starts_with("qemu-system-")
        || exe == "qemu-kvm"
        || exe == "kvm"
        || comm.starts_with("qemu-system")
        || comm == "qemu-kvm"
}

/// Splits a QEMU option string `a=1,b=2,,x` into (first positional, key/value map); `,,` is an
/// escaped comma.
fn split_opts(s: &str) -> (Option<String>, HashMap<String, String>) {
    let mut parts = vec![];
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    let mut first = None;
    let mut map = HashMap::new();
    for (i, p) in parts.into_iter().enumerate() {
        match p.split_once('=') {
            Some((k, v)) => {
                map.insert(k.to_string(), v.to_string());
            }
            None if i == 0 => first = Some(p),
            None => {
                map.insert(p, "on".to_string());
            }
        }
    }
    (first, map)
}

/// Parses a JSON-style option (`-device {"driver":...}`), as libvirt writes them, into the same
/// key/value shape. Values are flattened to strings.
fn json_opts(s: &str) -> Option<(Option<String>, HashMap<String, String>)> {
    let s = s.trim();
    if !s.starts_with('{') {
        return None;
    }
    // A small flat-object reader: libvirt's -netdev/-device objects are flat.
    let inner = s.trim_start_matches('{').trim_end_matches('}');
    let mut map = HashMap::new();
    let mut rest = inner;
    while let Some(kstart) = rest.find('"') {
        let after = &rest[kstart + 1..];
        let kend = after.find('"')?;
        let key = after[..kend].to_string();
        let after = after[kend + 1..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        let (value, next) = if let Some(v) = after.strip_prefix('"') {
            let vend = v.find('"')?;
            (v[..vend].to_string(), &v[vend + 1..])
        } else {
            let vend = after.find([',', '}']).unwrap_or(after.len());
            (after[..vend].trim().to_string(), &after[vend..])
        };
        map.insert(key, value);
        rest = next.trim_start().trim_start_matches(',');
    }
    let first = map.get("type").or_else(|| map.get("driver")).cloned();
    Some((first, map))
}

fn opts(s: &str) -> (Option<String>, HashMap<String, String>) {
    json_opts(s).unwrap_or_else(|| split_opts(s))
}

/// The short NIC model name for a QEMU device driver.
pub fn nic_model(driver: &str) -> Option<String> {
    let d = driver.trim();
    let m = if d.starts_with("virtio-net") {
        "virtio"
    } else {
        match d {
            "e1000" | "e1000-82540em" => "e1000",
            "e1000e" => "e1000e",
            "rtl8139" => "rtl8139",
            "vmxnet3" => "vmxnet3",
            "ne2k_pci" => "ne2k_pci",
            "pcnet" => "pcnet",
            "i82559er" | "i82551" | "i82557b" => "eepro100",
            "virtio" => "virtio",
            _ => return None,
        }
    };
    Some(m.to_string())
}

fn truthy(v: Option<&String>) -> Option<bool> {
    v.map(|v| matches!(v.as_str(), "on" | "true" | "yes" | "1"))
}

#[derive(Default)]
struct Netdev {
    kind: String,
    ifname: Option<String>,
    fd: Option<u32>,
    vhost: Option<bool>,
    queues: Option<u32>,
    bridge: Option<String>,
}

/// Builds a VM from a qemu command line. `fd_taps` maps this process's file descriptors to
/// the tap names they hold (from fdinfo), for `-netdev tap,fd=N`.
pub fn parse_qemu_cmdline(pid: u32, argv: &[String], fd_taps: &HashMap<u32, String>) -> Vm {
    let mut name = None;
    let mut uuid = None;
    let mut vcpus = None;
    let mut netdevs: Vec<(String, Netdev)> = vec![];
    let mut devices: Vec<(String, HashMap<String, String>)> = vec![];
    let mut legacy_nics: Vec<HashMap<String, String>> = vec![];
    let mut legacy_taps: Vec<Netdev> = vec![];
    // chardev id -> unix socket path, and the chardev the guest agent port uses
    let mut chardevs: HashMap<String, String> = HashMap::new();
    let mut agent_chardev: Option<String> = None;
    let mut i = 1;
    while i < argv.len() {
        let opt = argv[i].trim_start_matches('-');
        let val = argv.get(i + 1).map(String::as_str).unwrap_or("");
        match opt {
            "name" => {
                let (first, m) = split_opts(val);
                name = m.get("guest").cloned().or(first);
                i += 1;
            }
            "uuid" => {
                uuid = Some(val.to_string());
                i += 1;
            }
            "smp" => {
                let (first, m) = split_opts(val);
                vcpus = m
                    .get("cpus")
                    .or(first.as_ref())
                    .and_then(|v| v.parse().ok());
                i += 1;
            }
            "netdev" => {
                let (first, m) = opts(val);
                let nd = Netdev {
                    kind: first.unwrap_or_default(),
                    ifname: m.get("ifname").cloned(),
                    fd: m.get("fd").and_then(|f| f.split(':').next()?.parse().ok()),
                    vhost: truthy(m.get("vhost")),
                    queues: m.get("queues").and_then(|q| q.parse().ok()),
                    bridge: m.get("br").cloned(),
                };
                netdevs.push((m.get("id").cloned().unwrap_or_default(), nd));
                i += 1;
            }
            "device" => {
                let (first, m) = opts(val);
                if first.as_deref() == Some("virtserialport")
                    && m.get("name").map(String::as_str) == Some("org.qemu.guest_agent.0")
                {
                    agent_chardev = m.get("chardev").cloned();
                }
                if let Some(driver) = first {
                    devices.push((driver, m));
                }
                i += 1;
            }
            "chardev" => {
                let (first, m) = opts(val);
                if first.as_deref() == Some("socket") {
                    if let (Some(id), Some(path)) = (m.get("id"), m.get("path")) {
                        chardevs.insert(id.clone(), path.clone());
                    }
                }
                i += 1;
            }
            "nic" => {
                // -nic tap,ifname=X,model=virtio-net-pci,mac=...
                let (first, m) = split_opts(val);
                let nd = Netdev {
                    kind: first.unwrap_or_default(),
                    ifname: m.get("ifname").cloned(),
                    fd: m.get("fd").and_then(|f| f.parse().ok()),
                    vhost: truthy(m.get("vhost")),
                    queues: m.get("queues").and_then(|q| q.parse().ok()),
                    bridge: m.get("br").cloned(),
                };
                let id = format!("__nic{}", netdevs.len());
                let driver = m.get("model").cloned().unwrap_or_else(|| "e1000".into());
                let mut dm = HashMap::new();
                dm.insert("netdev".to_string(), id.clone());
                if let Some(mac) = m.get("mac") {
                    dm.insert("mac".to_string(), mac.clone());
                }
                netdevs.push((id, nd));
                devices.push((driver, dm));
                i += 1;
            }
            "net" => {
                let (first, m) = split_opts(val);
                match first.as_deref() {
                    Some("nic") => legacy_nics.push(m),
                    Some(kind) => legacy_taps.push(Netdev {
                        kind: kind.to_string(),
                        ifname: m.get("ifname").cloned(),
                        fd: m.get("fd").and_then(|f| f.parse().ok()),
                        vhost: truthy(m.get("vhost")),
                        queues: None,
                        bridge: m.get("br").cloned(),
                    }),
                    None => {}
                }
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }

    let agent = agent_chardev
        .and_then(|c| chardevs.get(&c).cloned())
        .map(|path| kvmnet_model::vm::AgentChannel {
            socket: Some(path),
            ..Default::default()
        });
    let mut vnics = vec![];
    let mut used = vec![false; netdevs.len()];
    for (driver, m) in &devices {
        let Some(model) = nic_model(driver) else {
            continue;
        };
        let nd_id = m.get("netdev").cloned().unwrap_or_default();
        let nd_pos = netdevs.iter().position(|(id, _)| *id == nd_id);
        if let Some(p) = nd_pos {
            used[p] = true;
        }
        let nd = nd_pos.map(|p| &netdevs[p].1);
        vnics.push(vnic_from(model, m.get("mac"), nd, fd_taps));
    }
    for (n, nic) in legacy_nics.iter().enumerate() {
        let model = nic
            .get("model")
            .and_then(|m| nic_model(m))
            .unwrap_or_else(|| "e1000".into());
        vnics.push(vnic_from(
            model,
            nic.get("macaddr"),
            legacy_taps.get(n),
            fd_taps,
        ));
    }
    Vm {
        name: name.unwrap_or_else(|| format!("qemu-{pid}")),
        source: VmSource::Qemu,
        uuid,
        state: VmState::Running,
        pid: Some(pid),
        netns: None,
        vnics,
        guest: None,
        vcpus: vcpus.or(Some(1)),
        agent,
    }
}

fn vnic_from(
    model: String,
    mac: Option<&String>,
    nd: Option<&Netdev>,
    fd_taps: &HashMap<u32, String>,
) -> Vnic {
    let mut v = Vnic {
        mac: mac.and_then(|m| m.parse::<MacAddr>().ok()),
        model: Some(model),
        iface_type: VnicType::Ethernet,
        ..Default::default()
    };
    if let Some(nd) = nd {
        v.host_dev = nd
            .ifname
            .clone()
            .or_else(|| nd.fd.and_then(|fd| fd_taps.get(&fd).cloned()));
        v.vhost = Some(nd.vhost.unwrap_or(false));
        v.queues = nd.queues;
        v.iface_type = match nd.kind.as_str() {
            "user" | "passt" | "stream" | "dgram" | "socket" => VnicType::User,
            "vhost-user" => VnicType::Vhostuser,
            "bridge" => VnicType::Bridge,
            _ => VnicType::Ethernet,
        };
        v.source_bridge = nd.bridge.clone();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn netdev_device_pairs() {
        let a = argv(
            "qemu-system-x86_64 -name guest=web1,debug-threads=on -smp 2 -m 128 \
            -netdev tap,id=n0,ifname=tap1,script=no,downscript=no,vhost=on,queues=2 \
            -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01 \
            -netdev tap,id=n1,fd=33 -device e1000,netdev=n1,mac=52:54:00:00:00:02 \
            -netdev user,id=n2 -device rtl8139,netdev=n2",
        );
        let mut fds = HashMap::new();
        fds.insert(33, "vnet7".to_string());
        let vm = parse_qemu_cmdline(42, &a, &fds);
        assert_eq!(vm.name, "web1");
        assert_eq!(vm.vcpus, Some(2));
        assert_eq!(vm.vnics.len(), 3);
        assert_eq!(vm.vnics[0].host_dev.as_deref(), Some("tap1"));
        assert_eq!(vm.vnics[0].model.as_deref(), Some("virtio"));
        assert_eq!(vm.vnics[0].vhost, Some(true));
        assert_eq!(vm.vnics[0].queues, Some(2));
        assert_eq!(vm.vnics[1].host_dev.as_deref(), Some("vnet7"));
        assert_eq!(vm.vnics[1].model.as_deref(), Some("e1000"));
        assert_eq!(vm.vnics[1].mac.unwrap().to_string(), "52:54:00:00:00:02");
        assert_eq!(vm.vnics[2].iface_type, VnicType::User);
        assert_eq!(vm.vnics[2].host_dev, None);
    }

    #[test]
    fn json_style_and_nic() {
        let a = vec![
            "/usr/bin/qemu-system-x86_64".to_string(),
            "-name".into(),
            "db".into(),
            "-netdev".into(),
            r#"{"type":"tap","fd":"35","vhost":true,"id":"hostnet0"}"#.into(),
            "-device".into(),
            r#"{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:aa:bb:cc","bus":"pci.0"}"#.into(),
            "-nic".into(),
            "tap,ifname=tap9,model=e1000,mac=52:54:00:00:00:09".into(),
            "-chardev".into(),
            "socket,id=qga0,path=/run/x/db.qga,server=on,wait=off".into(),
            "-device".into(),
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        ];
        let mut fds = HashMap::new();
        fds.insert(35, "vnet0".to_string());
        let vm = parse_qemu_cmdline(1, &a, &fds);
        assert_eq!(vm.name, "db");
        assert_eq!(vm.vnics[0].host_dev.as_deref(), Some("vnet0"));
        assert_eq!(vm.vnics[0].vhost, Some(true));
        assert_eq!(vm.vnics[0].mac.unwrap().to_string(), "52:54:00:aa:bb:cc");
        assert_eq!(vm.vnics[1].host_dev.as_deref(), Some("tap9"));
        assert_eq!(vm.vnics[1].model.as_deref(), Some("e1000"));
        assert!(is_qemu("qemu-system-x86", &a));
        assert_eq!(
            vm.agent.as_ref().and_then(|a| a.socket.as_deref()),
            Some("/run/x/db.qga")
        );
    }

    #[test]
    fn escaped_comma() {
        let (_, m) = split_opts("tap,id=a,script=/x,,y");
        assert_eq!(m.get("script").unwrap(), "/x,y");
    }
}
