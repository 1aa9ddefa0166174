//! Redaction for snapshots users attach to support tickets: MAC addresses are replaced by salted
//! hashes, public IP addresses by addresses from shared/documentation space, the hostname by a
//! hash. Every replacement is consistent within one snapshot (the same input maps to the same
//! output everywhere), so the redacted state still reasons the same way. Private, loopback,
//! link-local and documentation addresses are kept: they identify nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::nft::{Expr, NftData};
use crate::state::HostState;
use crate::types::{Bytes, MacAddr};

/// Consistent replacement tables for one snapshot.
#[derive(Debug)]
pub struct Redactor {
    salt: Vec<u8>,
    macs: HashMap<MacAddr, MacAddr>,
    v4_nets: HashMap<[u8; 3], u16>,
    v6_nets: HashMap<[u16; 3], u16>,
}

/// True for addresses that identify no one: RFC 1918, CGNAT, loopback, link-local,
/// documentation, multicast, unspecified, ULA.
pub fn is_shareable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_unspecified()
                || a.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 2)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || a.to_ipv4_mapped()
                    .is_some_and(|v4| is_shareable(IpAddr::V4(v4)))
        }
    }
}

impl Redactor {
    /// A redactor whose MAC hashes are keyed by `salt` (pass fresh random bytes per snapshot so
    /// hashes cannot be reversed by trying every MAC of a vendor).
    pub fn new(salt: &[u8]) -> Redactor {
        Redactor {
            salt: salt.to_vec(),
            macs: HashMap::new(),
            v4_nets: HashMap::new(),
            v6_nets: HashMap::new(),
        }
    }

    /// Replaces a MAC with a hash that keeps its multicast and locally-administered bits.
    pub fn mac(&mut self, m: MacAddr) -> MacAddr {
        if m.is_zero() || m.is_multicast() {
            return m;
        }
        let salt = &self.salt;
        *self.macs.entry(m).or_insert_with(|| {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(m.0);
            let d = h.finalize();
            let mut out = [0u8; 6];
            out.copy_from_slice(&d[..6]);
            // Keep it unicast and mark it locally administered, so it cannot collide with a
            // real vendor address.
            out[0] = (out[0] & 0xfc) | 0x02;
            MacAddr(out)
        })
    }

    /// Replaces a public address: each public IPv4 /24 maps to its own /24 in 100.64.0.0/10
    /// (host byte kept); each public IPv6 /48 to its own /48 in 2001:db8::/32.
    pub fn ip(&mut self, ip: IpAddr) -> IpAddr {
        if is_shareable(ip) {
            return ip;
        }
        match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                let next = self.v4_nets.len() as u16;
                let n = *self.v4_nets.entry([o[0], o[1], o[2]]).or_insert(next);
                // 100.64.0.0/10 has 16384 /24s.
                let n = n & 0x3fff;
                IpAddr::V4(Ipv4Addr::new(
                    100,
                    64 | (n >> 8) as u8,
                    (n & 0xff) as u8,
                    o[3],
                ))
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                let next = self.v6_nets.len() as u16;
                let n = *self.v6_nets.entry([s[0], s[1], s[2]]).or_insert(next);
                IpAddr::V6(Ipv6Addr::new(
                    0x2001, 0x0db8, n, s[3], s[4], s[5], s[6], s[7],
                ))
            }
        }
    }

    /// Redacts a prefix's address, keeping its length.
    pub fn net(&mut self, n: IpNet) -> IpNet {
        if n.prefix_len() == 0 {
            return n;
        }
        let a = self.ip(n.addr());
        IpNet::new(a, n.prefix_len()).unwrap_or(n)
    }

    fn bytes_ip(&mut self, b: &mut Bytes) {
        match b.0.len() {
            4 => {
                let a = Ipv4Addr::new(b.0[0], b.0[1], b.0[2], b.0[3]);
                if let IpAddr::V4(r) = self.ip(IpAddr::V4(a)) {
                    b.0 = r.octets().to_vec();
                }
            }
            16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b.0);
                if let IpAddr::V6(r) = self.ip(IpAddr::V6(Ipv6Addr::from(o))) {
                    b.0 = r.octets().to_vec();
                }
            }
            _ => {}
        }
    }

    fn hostname(&self, name: &str) -> String {
        if name.is_empty() {
            return String::new();
        }
        let mut h = Sha256::new();
        h.update(&self.salt);
        h.update(name.as_bytes());
        let d = h.finalize();
        format!("host-{}", Bytes(d[..4].to_vec()).to_hex())
    }

    /// Redacts a whole state in place.
    pub fn redact_state(&mut self, s: &mut HostState) {
        s.hostname = self.hostname(&s.hostname);
        for l in &mut s.links {
            if let Some(m) = l.mac {
                l.mac = Some(self.mac(m));
            }
            if let Some(b) = &mut l.bond {
                if let Some(m) = b.ad_partner_mac {
                    b.ad_partner_mac = Some(self.mac(m));
                }
            }
            if let Some(v) = &mut l.vxlan {
                v.remote = v.remote.map(|a| self.ip(a));
                v.local = v.local.map(|a| self.ip(a));
            }
        }
        for a in &mut s.addresses {
            a.address = self.ip(a.address);
        }
        for r in &mut s.routes {
            self.route(r);
        }
        for r in &mut s.rules {
            r.src = r.src.map(|n| self.net(n));
            r.dst = r.dst.map(|n| self.net(n));
        }
        for n in &mut s.neighbours {
            n.address = self.ip(n.address);
            n.lladdr = n.lladdr.map(|m| self.mac(m));
        }
        for f in &mut s.fdb {
            f.mac = self.mac(f.mac);
            f.dst = f.dst.map(|a| self.ip(a));
        }
        s.resolv.nameservers = s.resolv.nameservers.iter().map(|a| self.ip(*a)).collect();
        for so in &mut s.sockets {
            so.address = self.ip(so.address);
        }
        for vm in &mut s.vms {
            for n in &mut vm.vnics {
                n.mac = n.mac.map(|m| self.mac(m));
                for a in &mut n.addresses {
                    a.address = self.ip(a.address);
                }
            }
            if let Some(g) = &mut vm.guest {
                for i in &mut g.interfaces {
                    i.mac = i.mac.map(|m| self.mac(m));
                    i.addresses = i.addresses.iter().map(|n| self.net(*n)).collect();
                }
                if let Some(routes) = &mut g.routes {
                    for r in routes {
                        self.route(r);
                    }
                }
                if let Some(ns) = &mut g.nameservers {
                    *ns = ns.iter().map(|a| self.ip(*a)).collect();
                }
                for n in &mut g.neighbours {
                    n.address = self.ip(n.address);
                    n.lladdr = n.lladdr.map(|m| self.mac(m));
                }
            }
        }
        for net in &mut s.networks {
            for ip in &mut net.ips {
                ip.address = self.net(ip.address);
                for r in &mut ip.dhcp_ranges {
                    r.start = self.ip(r.start);
                    r.end = self.ip(r.end);
                }
                for h in &mut ip.dhcp_hosts {
                    h.mac = h.mac.map(|m| self.mac(m));
                    h.ip = h.ip.map(|a| self.ip(a));
                }
            }
            for pf in &mut net.port_forwards {
                pf.host_address = pf.host_address.map(|a| self.ip(a));
                pf.guest_ip = self.ip(pf.guest_ip);
                pf.allow_from = pf.allow_from.iter().map(|n| self.net(*n)).collect();
            }
            for (a, _) in &mut net.dns.hosts {
                *a = self.ip(*a);
            }
        }
        self.nftables(s);
    }

    fn route(&mut self, r: &mut crate::ip::Route) {
        r.dst = self.net(r.dst);
        r.gateway = r.gateway.map(|a| self.ip(a));
        r.prefsrc = r.prefsrc.map(|a| self.ip(a));
        for nh in &mut r.nexthops {
            nh.gateway = nh.gateway.map(|a| self.ip(a));
        }
    }

    /// Addresses inside rules: constants compared against an address load, constants loaded
    /// for NAT, and elements of address-typed sets.
    fn nftables(&mut self, s: &mut HostState) {
        for t in &mut s.nftables.tables {
            for set in &mut t.sets {
                if set.key_type == 7 || set.key_type == 8 {
                    for e in &mut set.elements {
                        self.bytes_ip(&mut e.key);
                        if let Some(k) = &mut e.key_end {
                            self.bytes_ip(k);
                        }
                    }
                }
            }
            for c in &mut t.chains {
                for r in &mut c.rules {
                    let has_nat = r.exprs.iter().any(|e| matches!(e, Expr::Nat { .. }));
                    let mut addr_regs: Vec<u32> = Vec::new();
                    for e in &mut r.exprs {
                        match e {
                            Expr::Payload {
                                base,
                                offset,
                                len,
                                dreg,
                            } if base == "network" && is_addr_field(*offset, *len) => {
                                addr_regs.push(*dreg)
                            }
                            Expr::Cmp { sreg, data, .. } if addr_regs.contains(sreg) => {
                                self.bytes_ip(data)
                            }
                            Expr::Range { sreg, from, to, .. } if addr_regs.contains(sreg) => {
                                self.bytes_ip(from);
                                self.bytes_ip(to);
                            }
                            Expr::Immediate {
                                data: NftData::Value(v),
                                ..
                            } if has_nat => self.bytes_ip(v),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

fn is_addr_field(offset: u32, len: u32) -> bool {
    matches!((offset, len), (12, 4) | (16, 4) | (8, 16) | (24, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistent_and_private_kept() {
        let mut r = Redactor::new(b"salt");
        let p: IpAddr = "8.8.8.8".parse().unwrap();
        let q: IpAddr = "8.8.8.9".parse().unwrap();
        let a = r.ip(p);
        assert_ne!(a, p);
        assert_eq!(r.ip(p), a);
        // same /24 -> same redacted /24, host byte kept
        let b = r.ip(q);
        assert_eq!(
            a.to_string().rsplit_once('.').unwrap().0,
            b.to_string().rsplit_once('.').unwrap().0
        );
        for keep in [
            "10.1.2.3",
            "192.168.1.1",
            "127.0.0.1",
            "198.51.100.7",
            "fe80::1",
            "fd00::1",
        ] {
            let ip: IpAddr = keep.parse().unwrap();
            assert_eq!(r.ip(ip), ip, "{keep}");
        }
        let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let h = r.mac(m);
        assert_ne!(h, m);
        assert_eq!(r.mac(m), h);
        assert!(!h.is_multicast());
        assert_eq!(h.0[0] & 2, 2);
    }

    #[test]
    fn different_salt_different_mac() {
        let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_ne!(Redactor::new(b"a").mac(m), Redactor::new(b"b").mac(m));
    }
}
