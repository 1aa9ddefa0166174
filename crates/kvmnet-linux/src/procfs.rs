//! Facts from procfs: processes (command lines, namespaces, open taps and sockets), listening
//! sockets of the calling thread's namespace, and the resolver configuration.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use kvmnet_model::link::ProcessRef;
use kvmnet_model::state::Resolv;
use kvmnet_model::ListenSocket;

/// One process, as much as procfs tells without special privileges.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub netns_ino: Option<u64>,
    /// Interface names of tun/tap devices this process holds open (`iff:` in fdinfo), and
    /// ifindexes of macvtap character devices (/dev/tapN) it holds.
    pub taps: Vec<(u32, String)>,
    pub macvtaps: Vec<u32>,
    /// Inodes of sockets it holds.
    pub sockets: Vec<u64>,
}

/// Reads every process under /proc. `with_fds` also walks file descriptors (taps, sockets).
pub fn scan_processes(with_fds: bool) -> Vec<ProcInfo> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut out = vec![];
    for entry in rd.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = format!("/proc/{pid}");
        let comm = std::fs::read_to_string(format!("{base}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let cmdline: Vec<String> = std::fs::read(format!("{base}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let netns_ino = crate::netns::pid_netns_ino(pid);
        let mut info = ProcInfo {
            pid,
            comm,
            cmdline,
            netns_ino,
            taps: vec![],
            macvtaps: vec![],
            sockets: vec![],
        };
        if with_fds {
            read_fds(&base, &mut info);
        }
        out.push(info);
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn read_fds(base: &str, info: &mut ProcInfo) {
    let Ok(fds) = std::fs::read_dir(format!("{base}/fd")) else {
        return;
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(rest) = t.strip_prefix("socket:[") {
            if let Ok(ino) = rest.trim_end_matches(']').parse() {
                info.sockets.push(ino);
            }
        } else if t == "/dev/net/tun" {
            let fdinfo = format!("{base}/fdinfo/{}", fd.file_name().to_string_lossy());
            if let Ok(text) = std::fs::read_to_string(fdinfo) {
                let fdnum = fd.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
                for line in text.lines() {
                    if let Some(name) = line.strip_prefix("iff:") {
                        info.taps.push((fdnum, name.trim().to_string()));
                    }
                }
            }
        } else if let Some(n) = t.strip_prefix("/dev/tap") {
            if let Ok(idx) = n.parse() {
                info.macvtaps.push(idx);
            }
        }
    }
}

/// Maps tap names (in the namespace with inode `netns_ino`) to the processes holding them.
pub fn tap_holders(procs: &[ProcInfo], netns_ino: Option<u64>) -> HashMap<String, Vec<ProcessRef>> {
    let mut out: HashMap<String, Vec<ProcessRef>> = HashMap::new();
    for p in procs {
        if netns_ino.is_some() && p.netns_ino != netns_ino {
            continue;
        }
        for (_, t) in &p.taps {
            let holders = out.entry(t.clone()).or_default();
            if !holders.iter().any(|h| h.pid == p.pid) {
                holders.push(ProcessRef {
                    pid: p.pid,
                    name: p.comm.clone(),
                });
            }
        }
    }
    out
}

fn parse_v4(hex: &str) -> Option<Ipv4Addr> {
    let v = u32::from_str_radix(hex, 16).ok()?;
    // /proc/net prints the address as the host-endian u32 of network-order bytes
    Some(Ipv4Addr::from(v.to_ne_bytes()))
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    let mut o = [0u8; 16];
    for i in 0..4 {
        let w = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Some(Ipv6Addr::from(o))
}

/// Parses one /proc/net/{tcp,udp}{,6} table; returns (address, port, inode) of listening
/// (TCP state LISTEN) or bound (UDP) sockets.
pub fn parse_proc_net(text: &str, tcp: bool) -> Vec<(IpAddr, u16, u64)> {
    let mut out = vec![];
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let state = f[3];
        if tcp && state != "0A" {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        let ip = if addr.len() == 8 {
            parse_v4(addr).map(IpAddr::V4)
        } else {
            parse_v6(addr).map(IpAddr::V6)
        };
        let (Some(ip), Ok(inode)) = (ip, f[9].parse::<u64>()) else {
            continue;
        };
        out.push((ip, port, inode));
    }
    out
}

/// Listening TCP and bound UDP sockets of the calling thread's namespace; owners are filled
/// from `procs` when the socket inode is found among their descriptors.
pub fn listen_sockets(procs: &[ProcInfo]) -> Vec<ListenSocket> {
    let mut owner: HashMap<u64, ProcessRef> = HashMap::new();
    for p in procs {
        for ino in &p.sockets {
            owner.entry(*ino).or_insert_with(|| ProcessRef {
                pid: p.pid,
                name: p.comm.clone(),
            });
        }
    }
    let mut out = vec![];
    for (file, proto, tcp) in [
        ("tcp", "tcp", true),
        ("tcp6", "tcp", true),
        ("udp", "udp", false),
        ("udp6", "udp", false),
    ] {
        let path = format!("/proc/thread-self/net/{file}");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (address, port, inode) in parse_proc_net(&text, tcp) {
            out.push(ListenSocket {
                proto: proto.to_string(),
                address,
                port,
                process: owner.get(&inode).cloned(),
            });
        }
    }
    out.sort_by(|a, b| {
        (a.proto.as_str(), a.port, a.address).cmp(&(b.proto.as_str(), b.port, b.address))
    });
    out.dedup();
    out
}

/// Parses resolv.conf text.
pub fn parse_resolv(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next().and_then(|w| w.split('%').next()?.parse().ok()) {
                    r.nameservers.push(ip);
                }
            }
            Some("search") | Some("domain") => r.search.extend(words.map(String::from)),
            _ => {}
        }
    }
    r
}

/// The resolver configuration a process in namespace `netns` sees (`ip netns exec` bind-mounts
/// /etc/netns/NAME/resolv.conf over /etc/resolv.conf).
pub fn read_resolv(netns: Option<&str>) -> Option<Resolv> {
    let candidates: Vec<String> = match netns {
        Some(n) if !n.starts_with('/') => {
            vec![
                format!("/etc/netns/{n}/resolv.conf"),
                "/etc/resolv.conf".into(),
            ]
        }
        _ => vec!["/etc/resolv.conf".into()],
    };
    for c in candidates {
        if Path::new(&c).exists() {
            let text = std::fs::read_to_string(&c).ok()?;
            let mut r = parse_resolv(&text);
            r.path = Some(c);
            return Some(r);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_listen() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100000A:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 12345 2 0000000000000000 0\n   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1\n   2: 00000000:0017 00000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 998 1\n";
        let udp = parse_proc_net(text, false);
        assert_eq!(udp[0], ("10.0.0.1".parse().unwrap(), 67, 12345));
        let tcp = parse_proc_net(text, true);
        assert_eq!(tcp, vec![("0.0.0.0".parse().unwrap(), 22, 999)]);
    }

    #[test]
    fn resolv() {
        let r = parse_resolv("# c\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nsearch a b\n");
        assert_eq!(r.nameservers.len(), 2);
        assert_eq!(r.search, vec!["a", "b"]);
    }
}

/// A running libvirt daemon that manages the namespace with inode `netns_ino`: its PID and
/// whether it shares our mount namespace (otherwise `virsh` must run inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibvirtDaemon {
    pub pid: u32,
    pub same_mount_ns: bool,
}

/// Finds libvirtd (or the modular virtqemud/virtnetworkd) living in namespace `netns_ino`.
pub fn find_libvirt_daemon(procs: &[ProcInfo], netns_ino: u64) -> Option<LibvirtDaemon> {
    let own_mnt = std::fs::metadata("/proc/self/ns/mnt").ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.ino()
    });
    procs
        .iter()
        .filter(|p| matches!(p.comm.as_str(), "libvirtd" | "virtqemud" | "virtnetworkd"))
        .find(|p| p.netns_ino == Some(netns_ino))
        .map(|p| {
            let mnt = std::fs::metadata(format!("/proc/{}/ns/mnt", p.pid))
                .ok()
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                });
            LibvirtDaemon {
                pid: p.pid,
                same_mount_ns: mnt == own_mnt,
            }
        })
}

/// Local addresses of established TCP sessions to an SSH server in the calling thread's
/// namespace (local port 22, or a port sshd listens on): the management path an apply must
/// not cut.
pub fn ssh_session_addresses(sshd_ports: &[u16]) -> Vec<IpAddr> {
    let mut out = vec![];
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != "01" {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else {
                continue;
            };
            let Ok(port) = u16::from_str_radix(port, 16) else {
                continue;
            };
            if port != 22 && !sshd_ports.contains(&port) {
                continue;
            }
            let ip = if v6 {
                parse_v6(addr).map(|a| match a.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(a),
                })
            } else {
                parse_v4(addr).map(IpAddr::V4)
            };
            if let Some(ip) = ip.filter(|i| !i.is_loopback()) {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    out
}
