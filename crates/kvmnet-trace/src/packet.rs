//! The simulated packet: addresses, ports, flags, conntrack state, and its headers as real
//! bytes, so nf_tables payload loads read exactly what the kernel would.

use std::net::IpAddr;

use kvmnet_model::MacAddr;
use serde::Serialize;

/// IP protocol numbers.
pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;

/// Conntrack state of the packet as netfilter sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    /// The `ct state` bit (`NF_CT_STATE_BIT`).
    pub fn bit(self) -> u32 {
        match self {
            CtState::Invalid => 1,
            CtState::Established => 2,
            CtState::Related => 4,
            CtState::New => 8,
            CtState::Untracked => 64,
        }
    }
}

/// One packet in flight.
#[derive(Clone, Debug, Serialize)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol (1 icmp, 6 tcp, 17 udp, 58 icmpv6).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type (echo request 8 / ICMPv6 128 by default).
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
    /// Total IP length in bytes.
    pub len: u32,
    /// Don't-fragment bit (IPv4); IPv6 never fragments in flight.
    pub df: bool,
    pub ttl: u8,
    pub src_mac: Option<MacAddr>,
    pub dst_mac: Option<MacAddr>,
    pub mark: u32,
    pub ct: CtState,
    /// Conntrack status bits (`IPS_*`: 16 SNAT, 32 DNAT, 2 seen reply, 8 confirmed...).
    pub ct_status: u32,
    /// 0 original, 1 reply.
    pub ct_dir: u8,
}

impl Packet {
    /// A fresh packet of a new connection with default sizes.
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, dport: u16) -> Packet {
        let v6 = src.is_ipv6();
        let l4 = match proto {
            TCP => 20,
            UDP => 8,
            _ => 8,
        };
        let l3 = if v6 { 40 } else { 20 };
        Packet {
            src,
            dst,
            proto,
            sport: if matches!(proto, TCP | UDP) { 40000 } else { 0 },
            dport,
            icmp_type: if v6 { 128 } else { 8 },
            icmp_code: 0,
            tcp_flags: if proto == TCP { 0x02 } else { 0 },
            len: l3
                + l4
                + if proto == ICMP || proto == ICMPV6 {
                    56
                } else {
                    0
                },
            df: true,
            ttl: 64,
            src_mac: None,
            dst_mac: None,
            mark: 0,
            ct: CtState::New,
            ct_status: 0,
            ct_dir: 0,
        }
    }

    /// True for IPv6.
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// The reply packet of this one (addresses and ports swapped, conntrack established).
    pub fn reply(&self) -> Packet {
        let mut r = self.clone();
        r.src = self.dst;
        r.dst = self.src;
        r.sport = self.dport;
        r.dport = self.sport;
        r.src_mac = None;
        r.dst_mac = None;
        r.ct = CtState::Established;
        r.ct_dir = 1;
        r.ct_status = self.ct_status | 2 | 8;
        r.tcp_flags = if self.proto == TCP { 0x12 } else { 0 };
        if self.proto == ICMP {
            r.icmp_type = 0;
            // Linux sends echo replies without DF: routers on the way fragment them
            r.df = false;
        } else if self.proto == ICMPV6 {
            r.icmp_type = 129;
        }
        r
    }

    /// The headers, in fixed buffers (no allocation): network, transport, link.
    pub fn headers(&self) -> Headers {
        let mut h = Headers {
            net: [0; 40],
            net_len: 0,
            transport: [0; 20],
            transport_len: 0,
            link: None,
        };
        let n = self.network_header();
        h.net[..n.len()].copy_from_slice(&n);
        h.net_len = n.len();
        let t = self.transport_header();
        h.transport[..t.len()].copy_from_slice(&t);
        h.transport_len = t.len();
        h.link = self.link_header_array();
        h
    }

    fn link_header_array(&self) -> Option<[u8; 14]> {
        let (s, d) = (self.src_mac?, self.dst_mac?);
        let mut h = [0u8; 14];
        h[0..6].copy_from_slice(&d.0);
        h[6..12].copy_from_slice(&s.0);
        h[12..14].copy_from_slice(&(if self.is_v6() { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
        Some(h)
    }

    /// The network header bytes.
    pub fn network_header(&self) -> smallvec_lite::Hdr {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = smallvec_lite::Hdr::zeroed(20);
                h[0] = 0x45;
                h[2..4].copy_from_slice(&(self.len.min(65535) as u16).to_be_bytes());
                if self.df {
                    h[6] = 0x40;
                }
                h[8] = self.ttl;
                h[9] = self.proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                h
            }
            (s, d) => {
                let mut h = smallvec_lite::Hdr::zeroed(40);
                h[0] = 0x60;
                let plen = self.len.saturating_sub(40).min(65535) as u16;
                h[4..6].copy_from_slice(&plen.to_be_bytes());
                h[6] = self.proto;
                h[7] = self.ttl;
                if let IpAddr::V6(s) = s {
                    h[8..24].copy_from_slice(&s.octets());
                }
                if let IpAddr::V6(d) = d {
                    h[24..40].copy_from_slice(&d.octets());
                }
                h
            }
        }
    }

    /// The transport header bytes.
    pub fn transport_header(&self) -> smallvec_lite::Hdr {
        match self.proto {
            TCP => {
                let mut h = smallvec_lite::Hdr::zeroed(20);
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                h[12] = 0x50;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h
            }
            UDP => {
                let mut h = smallvec_lite::Hdr::zeroed(8);
                h[0..2].copy_from_slice(&self.sport.to_be_bytes());
                h[2..4].copy_from_slice(&self.dport.to_be_bytes());
                let l =
                    (self.len.saturating_sub(if self.is_v6() { 40 } else { 20 })).min(65535) as u16;
                h[4..6].copy_from_slice(&l.to_be_bytes());
                h
            }
            _ => {
                let mut h = smallvec_lite::Hdr::zeroed(8);
                h[0] = self.icmp_type;
                h[1] = self.icmp_code;
                h
            }
        }
    }

    /// The Ethernet header bytes, when both MACs are known.
    pub fn link_header(&self) -> Option<Vec<u8>> {
        let (s, d) = (self.src_mac?, self.dst_mac?);
        let mut h = vec![0u8; 14];
        h[0..6].copy_from_slice(&d.0);
        h[6..12].copy_from_slice(&s.0);
        h[12..14].copy_from_slice(&(if self.is_v6() { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
        Some(h)
    }
}

/// Packet headers in fixed buffers.
#[derive(Clone, Copy, Debug)]
pub struct Headers {
    pub net: [u8; 40],
    pub net_len: usize,
    pub transport: [u8; 20],
    pub transport_len: usize,
    pub link: Option<[u8; 14]>,
}

/// A header of at most 40 bytes on the stack, indexable like a slice.
pub mod smallvec_lite {
    /// Header bytes.
    #[derive(Clone, Copy, Debug)]
    pub struct Hdr {
        b: [u8; 40],
        n: usize,
    }

    impl Hdr {
        /// `n` zero bytes.
        pub fn zeroed(n: usize) -> Hdr {
            Hdr {
                b: [0; 40],
                n: n.min(40),
            }
        }
    }

    impl std::ops::Deref for Hdr {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            &self.b[..self.n]
        }
    }

    impl std::ops::DerefMut for Hdr {
        fn deref_mut(&mut self) -> &mut [u8] {
            &mut self.b[..self.n]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let p = Packet::new(
            "10.0.0.11".parse().unwrap(),
            "203.0.113.1".parse().unwrap(),
            TCP,
            443,
        );
        let n = p.network_header();
        assert_eq!(n[9], TCP);
        assert_eq!(&n[12..16], &[10, 0, 0, 11]);
        assert_eq!(n[6] & 0x40, 0x40);
        let t = p.transport_header();
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 443);
        assert_eq!(t[13], 0x02);
        let r = p.reply();
        assert_eq!(r.dport, 40000);
        assert_eq!(r.ct, CtState::Established);
    }
}
