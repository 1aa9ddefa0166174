//! Active probes, run inside a namespace on their own threads: ARP for an address (and ARP
//! duplicate-address detection), ICMP echo (optionally with DF and a size, for path MTU), and
//! TCP connect. They report what happened; what it means is doctor's business.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::netns::run_in_netns;
use crate::rtnl::RtSocket;

const ETH_P_ARP: u16 = 0x0806;

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub detail: String,
    /// MACs that answered (ARP, DAD).
    pub macs: Vec<String>,
}

fn fd_guard(fd: i32) -> Fd {
    Fd(fd)
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was returned by socket() and is closed exactly once here.
        unsafe {
            libc::close(self.0);
        }
    }
}

fn set_timeout(fd: i32, t: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: fd is a valid socket; tv is a properly initialized timeval that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Interface index, MAC and first IPv4 address of `ifname`, from rtnetlink.
fn iface(ifname: &str) -> io::Result<(u32, [u8; 6], Option<Ipv4Addr>)> {
    let mut sock = RtSocket::open().map_err(|e| io::Error::other(e.to_string()))?;
    let links =
        crate::rtnl_decode::dump_links(&mut sock).map_err(|e| io::Error::other(e.to_string()))?;
    let (l, _) = links
        .into_iter()
        .find(|(l, _)| l.name == ifname)
        .ok_or_else(|| io::Error::other(format!("no interface {ifname}")))?;
    let names = std::collections::HashMap::from([(l.index, l.name.clone())]);
    let addrs = crate::rtnl_decode::dump_addresses(&mut sock, &names)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let v4 = addrs
        .iter()
        .find_map(|a| match (a.ifindex == l.index, a.address) {
            (true, IpAddr::V4(v)) => Some(v),
            _ => None,
        });
    Ok((l.index, l.mac.map(|m| m.0).unwrap_or_default(), v4))
}

/// Sends ARP requests for `target` out of `ifname` and collects who answers. With
/// `dad == true` the request is a probe (sender address 0.0.0.0), as duplicate-address
/// detection sends it: any answer means someone else holds `target`.
pub fn arp(ifname: &str, target: Ipv4Addr, dad: bool, wait: Duration) -> io::Result<ProbeOutcome> {
    let (index, mac, own) = iface(ifname)?;
    let spa = if dad {
        Ipv4Addr::UNSPECIFIED
    } else {
        own.unwrap_or(Ipv4Addr::UNSPECIFIED)
    };
    // SAFETY: plain socket(2) call; the result is checked and owned by the guard.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let _g = fd_guard(fd);
    // SAFETY: sockaddr_ll is plain old data; zeroed is a valid initial value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mut pkt = Vec::with_capacity(28);
    pkt.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    pkt.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    pkt.extend_from_slice(&[6, 4]);
    pkt.extend_from_slice(&1u16.to_be_bytes()); // request
    pkt.extend_from_slice(&mac);
    pkt.extend_from_slice(&spa.octets());
    pkt.extend_from_slice(&[0; 6]);
    pkt.extend_from_slice(&target.octets());
    set_timeout(fd, Duration::from_millis(100))?;
    let deadline = Instant::now() + wait;
    let mut macs: Vec<String> = vec![];
    let mut sends = 0;
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send && sends < 3 {
            // SAFETY: fd is valid; pkt and sll live across the call with the lengths given.
            let r = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr() as *const libc::c_void,
                    pkt.len(),
                    0,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            sends += 1;
            next_send = Instant::now() + wait / 3;
        }
        let mut buf = [0u8; 128];
        // SAFETY: buf is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let b = &buf[..n as usize];
        let op = u16::from_be_bytes([b[6], b[7]]);
        let sender_ip = Ipv4Addr::new(b[14], b[15], b[16], b[17]);
        if op == 2 && sender_ip == target {
            let m = format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[8], b[9], b[10], b[11], b[12], b[13]
            );
            if b[8..14] != mac && !macs.contains(&m) {
                macs.push(m);
            }
        }
    }
    Ok(if dad {
        ProbeOutcome {
            ok: macs.is_empty(),
            detail: if macs.is_empty() {
                format!("no one else answers for {target}")
            } else {
                format!("{target} is answered by {}", macs.join(", "))
            },
            macs,
        }
    } else {
        ProbeOutcome {
            ok: !macs.is_empty(),
            detail: if macs.is_empty() {
                format!("no ARP reply for {target} on {ifname}")
            } else {
                format!("{target} is at {}", macs.join(", "))
            },
            macs,
        }
    })
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum = sum.wrapping_add(u32::from(w));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends ICMP echo requests to `dst` (total IP size `size`, DF set when `df`), and waits for a
/// reply.
pub fn ping(dst: Ipv4Addr, size: u32, df: bool, wait: Duration) -> io::Result<ProbeOutcome> {
    // SAFETY: plain socket(2) call; the result is checked and owned by the guard.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let _g = fd_guard(fd);
    let mode: libc::c_int = if df {
        libc::IP_PMTUDISC_PROBE
    } else {
        libc::IP_PMTUDISC_DONT
    };
    // SAFETY: fd is valid; mode is an int that outlives the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &mode as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    set_timeout(fd, Duration::from_millis(100))?;
    let id = (std::process::id() as u16) ^ (dst.octets()[3] as u16) << 8;
    let payload = size.saturating_sub(28).max(8) as usize;
    let mut pkt = vec![0u8; 8 + payload];
    pkt[0] = 8;
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let deadline = Instant::now() + wait;
    let mut seq = 0u16;
    let mut next_send = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_send && seq < 3 {
            seq += 1;
            pkt[6..8].copy_from_slice(&seq.to_be_bytes());
            pkt[2..4].copy_from_slice(&[0, 0]);
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: fd is valid; pkt and sa live across the call with the lengths given.
            let r = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr() as *const libc::c_void,
                    pkt.len(),
                    0,
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                return Ok(ProbeOutcome {
                    ok: false,
                    detail: format!("send failed: {e}"),
                    macs: vec![],
                });
            }
            next_send = Instant::now() + wait / 3;
        }
        let mut buf = vec![0u8; 70_000];
        // SAFETY: buf is a valid writable buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let b = &buf[..n as usize];
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if b.len() < ihl + 8 {
            continue;
        }
        let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let icmp = &b[ihl..];
        if icmp[0] == 0 && src == dst && u16::from_be_bytes([icmp[4], icmp[5]]) == id {
            return Ok(ProbeOutcome {
                ok: true,
                detail: format!("{size}-byte echo answered by {dst}"),
                macs: vec![],
            });
        }
        if icmp[0] == 3 && icmp.len() >= 8 + 20 {
            // an error about our packet: destination unreachable / fragmentation needed
            let inner = &icmp[8..];
            let inner_dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
            if inner_dst == dst {
                let what = match icmp[1] {
                    4 => format!(
                        "fragmentation needed (mtu {})",
                        u16::from_be_bytes([icmp[6], icmp[7]])
                    ),
                    13 => "administratively prohibited".to_string(),
                    1 => "host unreachable".to_string(),
                    0 => "net unreachable".to_string(),
                    3 => "port unreachable".to_string(),
                    c => format!("unreachable code {c}"),
                };
                return Ok(ProbeOutcome {
                    ok: false,
                    detail: format!("{src} answered: {what}"),
                    macs: vec![],
                });
            }
        }
    }
    Ok(ProbeOutcome {
        ok: false,
        detail: format!("no reply from {dst} within {} ms", wait.as_millis()),
        macs: vec![],
    })
}

/// Opens a TCP connection to `dst:port`.
pub fn tcp_connect(dst: IpAddr, port: u16, wait: Duration) -> ProbeOutcome {
    match TcpStream::connect_timeout(&SocketAddr::new(dst, port), wait) {
        Ok(_) => ProbeOutcome {
            ok: true,
            detail: format!("connected to {dst}:{port}"),
            macs: vec![],
        },
        Err(e) => ProbeOutcome {
            ok: false,
            detail: format!("{dst}:{port}: {e}"),
            macs: vec![],
        },
    }
}

/// Runs `f` inside namespace `ns` and flattens the errors into a failed outcome.
pub fn in_netns(
    ns: Option<&str>,
    f: impl FnOnce() -> io::Result<ProbeOutcome> + Send,
) -> ProbeOutcome {
    match run_in_netns(ns, f) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => ProbeOutcome {
            ok: false,
            detail: format!("probe failed: {e}"),
            macs: vec![],
        },
        Err(e) => ProbeOutcome {
            ok: false,
            detail: format!("probe failed: {e}"),
            macs: vec![],
        },
    }
}
