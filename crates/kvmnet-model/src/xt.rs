//! Decoding of the iptables extensions that iptables-nft runs through nf_tables' xtables
//! compatibility expressions (`match` / `target` with a binary `info` struct). Only extensions
//! whose meaning is clear and that real hosts use (libvirt, docker, firewalld, ufw) are decoded;
//! the rest stay `Unknown` and readers must say so rather than guess. Pure; no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::types::Bytes;

/// Conntrack state bits, shared by nft `ct state` and xt `state`/`conntrack`.
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;

    /// Names of the bits set in `mask`, in nft's order.
    pub fn names(mask: u32) -> Vec<&'static str> {
        let mut out = vec![];
        for (bit, name) in [
            (INVALID, "invalid"),
            (ESTABLISHED, "established"),
            (RELATED, "related"),
            (NEW, "new"),
            (UNTRACKED, "untracked"),
        ] {
            if mask & bit != 0 {
                out.push(name);
            }
        }
        out
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// True for the full 0-65535 range (iptables' "any port").
    pub fn is_any(self) -> bool {
        self.min == 0 && self.max == 0xffff
    }
    /// True when `p` is inside the range.
    pub fn contains(self, p: u16) -> bool {
        p >= self.min && p <= self.max
    }
}

/// A decoded xt match.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum XtMatch {
    Comment(String),
    /// `-m state --state` / `-m conntrack --ctstate`: a mask of [`ct_state`] bits.
    CtState {
        mask: u32,
        invert: bool,
    },
    /// `-m conntrack` with options other than ctstate.
    Conntrack {
        state: Option<(u32, bool)>,
        /// conntrack status bits (`--ctstatus`) with inversion.
        status: Option<(u32, bool)>,
        other: bool,
    },
    Tcp {
        sport: PortRange,
        dport: PortRange,
        sport_inv: bool,
        dport_inv: bool,
        /// (mask, compare, invert) of `--tcp-flags`.
        flags: Option<(u8, u8, bool)>,
    },
    Udp {
        sport: PortRange,
        dport: PortRange,
        sport_inv: bool,
        dport_inv: bool,
    },
    /// `-m multiport`: `dir` is 1 source, 2 destination, 3 either.
    Multiport {
        dir: u8,
        ports: Vec<PortRange>,
        invert: bool,
    },
    /// `-m addrtype`: `RTN_*`-style type bitmasks (LOCAL = 4, UNICAST = 2, ...).
    Addrtype {
        src: u16,
        dst: u16,
        src_inv: bool,
        dst_inv: bool,
    },
    Physdev {
        in_dev: Option<String>,
        out_dev: Option<String>,
        bitmask: u8,
        invert: u8,
    },
    Unknown {
        name: String,
    },
}

/// A decoded xt target.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum XtTarget {
    Masquerade {
        ports: Option<PortRange>,
    },
    Snat {
        addr: Option<(IpAddr, IpAddr)>,
        ports: Option<PortRange>,
    },
    Dnat {
        addr: Option<(IpAddr, IpAddr)>,
        ports: Option<PortRange>,
    },
    /// `-j REJECT --reject-with ...`: the ipt_reject_with code.
    Reject {
        with: u32,
    },
    /// Targets that do not end rule traversal and do not change routing or filtering:
    /// CHECKSUM, LOG, MARK, CONNMARK, TCPMSS, ...
    NonTerminal {
        name: String,
    },
    Unknown {
        name: String,
    },
}

fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Decodes an xt match's info.
pub fn decode_match(name: &str, rev: u32, info: &Bytes, ipv6: bool) -> XtMatch {
    let b = info.as_slice();
    let unknown = || XtMatch::Unknown {
        name: name.to_string(),
    };
    match name {
        "comment" => XtMatch::Comment(cstr(b)),
        "state" => match u32_ne(b, 0) {
            Some(mask) => XtMatch::CtState {
                mask: state_bits(mask),
                invert: false,
            },
            None => unknown(),
        },
        "conntrack" if (1..=3).contains(&rev) => {
            // xt_conntrack_mtinfo{1,2,3}: 8 addresses (128 bytes), expires (8), l4proto (2),
            // 4 ports (8), match_flags (2), invert_flags (2), then state/status masks.
            let (Some(mflags), Some(iflags)) = (u16_ne(b, 146), u16_ne(b, 148)) else {
                return unknown();
            };
            let (state, status) = if rev == 1 {
                (
                    b.get(150).map(|v| u32::from(*v)),
                    b.get(151).map(|v| u32::from(*v)),
                )
            } else {
                (u16_ne(b, 150).map(u32::from), u16_ne(b, 152).map(u32::from))
            };
            const STATE: u16 = 1;
            const STATUS: u16 = 1 << 6;
            let st = (mflags & STATE != 0)
                .then(|| state.map(|s| (state_bits(s), iflags & STATE != 0)))
                .flatten();
            let stat = (mflags & STATUS != 0)
                .then(|| status.map(|s| (s, iflags & STATUS != 0)))
                .flatten();
            let other = mflags & !(STATE | STATUS) != 0;
            match (st, stat, other) {
                (Some((mask, invert)), None, false) => XtMatch::CtState { mask, invert },
                _ => XtMatch::Conntrack {
                    state: st,
                    status: stat,
                    other,
                },
            }
        }
        "tcp" => {
            let (Some(s0), Some(s1), Some(d0), Some(d1)) =
                (u16_ne(b, 0), u16_ne(b, 2), u16_ne(b, 4), u16_ne(b, 6))
            else {
                return unknown();
            };
            let flg_mask = b.get(9).copied().unwrap_or(0);
            let flg_cmp = b.get(10).copied().unwrap_or(0);
            let inv = b.get(11).copied().unwrap_or(0);
            XtMatch::Tcp {
                sport: PortRange { min: s0, max: s1 },
                dport: PortRange { min: d0, max: d1 },
                sport_inv: inv & 1 != 0,
                dport_inv: inv & 2 != 0,
                flags: (flg_mask != 0).then_some((flg_mask, flg_cmp, inv & 4 != 0)),
            }
        }
        "udp" => {
            let (Some(s0), Some(s1), Some(d0), Some(d1)) =
                (u16_ne(b, 0), u16_ne(b, 2), u16_ne(b, 4), u16_ne(b, 6))
            else {
                return unknown();
            };
            let inv = b.get(8).copied().unwrap_or(0);
            XtMatch::Udp {
                sport: PortRange { min: s0, max: s1 },
                dport: PortRange { min: d0, max: d1 },
                sport_inv: inv & 1 != 0,
                dport_inv: inv & 2 != 0,
            }
        }
        "multiport" if rev >= 1 => {
            // xt_multiport_v1: flags u8, count u8, ports[15] u16, pflags[15] u8, invert u8.
            let (Some(&dir), Some(&count)) = (b.first(), b.get(1)) else {
                return unknown();
            };
            let count = usize::from(count).min(15);
            let mut ports = vec![];
            let mut i = 0;
            while i < count {
                let Some(p) = u16_ne(b, 2 + 2 * i) else {
                    return unknown();
                };
                let is_range = b.get(32 + i).copied().unwrap_or(0) != 0;
                if is_range && i + 1 < count {
                    let hi = u16_ne(b, 2 + 2 * (i + 1)).unwrap_or(p);
                    ports.push(PortRange { min: p, max: hi });
                    i += 2;
                } else {
                    ports.push(PortRange { min: p, max: p });
                    i += 1;
                }
            }
            XtMatch::Multiport {
                dir,
                ports,
                invert: b.get(47).copied().unwrap_or(0) != 0,
            }
        }
        "addrtype" if rev == 1 => {
            let (Some(src), Some(dst), Some(flags)) = (u16_ne(b, 0), u16_ne(b, 2), u32_ne(b, 4))
            else {
                return unknown();
            };
            XtMatch::Addrtype {
                src,
                dst,
                src_inv: flags & 1 != 0,
                dst_inv: flags & 2 != 0,
            }
        }
        "physdev" if b.len() >= 66 => {
            let in_dev = cstr(&b[0..16]);
            let out_dev = cstr(&b[32..48]);
            XtMatch::Physdev {
                in_dev: (!in_dev.is_empty()).then_some(in_dev),
                out_dev: (!out_dev.is_empty()).then_some(out_dev),
                invert: b[64],
                bitmask: b[65],
            }
        }
        _ => {
            let _ = ipv6;
            unknown()
        }
    }
}

/// xt_state / xt_conntrack encode ctinfo states as 1 << (ctinfo + 1) with INVALID = 1, which
/// matches nft's `ct state` bits for the states that matter; UNTRACKED differs.
fn state_bits(mask: u32) -> u32 {
    // XT_STATE_UNTRACKED = 1 << (IP_CT_NUMBER + 1) = 1 << 6 for xt_state; conntrack's is 1 << 8.
    let mut out = mask & 0x0f;
    if mask & (1 << 6) != 0 || mask & (1 << 8) != 0 {
        out |= ct_state::UNTRACKED;
    }
    out
}

fn v4(b: &[u8], at: usize) -> Option<IpAddr> {
    b.get(at..at + 4)
        .map(|s| IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])))
}

fn addr16(b: &[u8], at: usize, ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        let s = b.get(at..at + 16)?;
        let mut o = [0u8; 16];
        o.copy_from_slice(s);
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        v4(b, at)
    }
}

const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

/// A NAT range: addresses (min, max) and ports, each when the rule maps them.
type NatRange = (Option<(IpAddr, IpAddr)>, Option<PortRange>);

/// Decodes a NAT range: revision 0 uses `nf_nat_ipv4_multi_range_compat`, revisions 1 and 2
/// `nf_nat_range` / `nf_nat_range2`.
fn nat_range(b: &[u8], rev: u32, ipv6: bool) -> Option<NatRange> {
    if rev == 0 && !ipv6 {
        // u32 rangesize; { u32 flags; be32 min_ip, max_ip; be16 min, max }
        let flags = u32_ne(b, 4)?;
        let addr = if flags & NF_NAT_RANGE_MAP_IPS != 0 {
            Some((v4(b, 8)?, v4(b, 12)?))
        } else {
            None
        };
        let ports = if flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0 {
            Some(PortRange {
                min: be16(b, 16)?,
                max: be16(b, 18)?,
            })
        } else {
            None
        };
        Some((addr, ports))
    } else {
        // u32 flags; nf_inet_addr min, max (16 each); be16 min_proto, max_proto
        let flags = u32_ne(b, 0)?;
        let addr = if flags & NF_NAT_RANGE_MAP_IPS != 0 {
            Some((addr16(b, 4, ipv6)?, addr16(b, 20, ipv6)?))
        } else {
            None
        };
        let ports = if flags & NF_NAT_RANGE_PROTO_SPECIFIED != 0 {
            Some(PortRange {
                min: be16(b, 36)?,
                max: be16(b, 38)?,
            })
        } else {
            None
        };
        Some((addr, ports))
    }
}

/// Decodes an xt target's info.
pub fn decode_target(name: &str, rev: u32, info: &Bytes, ipv6: bool) -> XtTarget {
    let b = info.as_slice();
    let unknown = || XtTarget::Unknown {
        name: name.to_string(),
    };
    match name {
        "MASQUERADE" => match nat_range(b, rev, ipv6) {
            Some((_, ports)) => XtTarget::Masquerade { ports },
            None => unknown(),
        },
        "SNAT" => match nat_range(b, rev, ipv6) {
            Some((addr, ports)) => XtTarget::Snat { addr, ports },
            None => unknown(),
        },
        "DNAT" => match nat_range(b, rev, ipv6) {
            Some((addr, ports)) => XtTarget::Dnat { addr, ports },
            None => unknown(),
        },
        "REJECT" => match u32_ne(b, 0) {
            Some(with) => XtTarget::Reject { with },
            None => unknown(),
        },
        "CHECKSUM" | "LOG" | "NFLOG" | "MARK" | "CONNMARK" | "TCPMSS" | "CT" | "TOS" | "DSCP"
        | "TRACE" | "AUDIT" | "CLASSIFY" | "SECMARK" | "CONNSECMARK" => XtTarget::NonTerminal {
            name: name.to_string(),
        },
        _ => unknown(),
    }
}

/// iptables' `--reject-with` names for IPv4 `ipt_reject_with` codes.
pub fn reject_with_name(with: u32) -> &'static str {
    match with {
        0 => "icmp-net-unreachable",
        1 => "icmp-host-unreachable",
        2 => "icmp-proto-unreachable",
        3 => "icmp-port-unreachable",
        5 => "icmp-net-prohibited",
        6 => "icmp-host-prohibited",
        7 => "tcp-reset",
        8 => "icmp-admin-prohibited",
        _ => "icmp-unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_match() {
        let mut info = vec![];
        for v in [0u16, 0xffff, 22, 22] {
            info.extend_from_slice(&v.to_ne_bytes());
        }
        info.extend_from_slice(&[0, 0, 0, 0]);
        match decode_match("tcp", 0, &Bytes(info), false) {
            XtMatch::Tcp { sport, dport, .. } => {
                assert!(sport.is_any());
                assert_eq!(dport, PortRange { min: 22, max: 22 });
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conntrack_ctstate() {
        let mut info = vec![0u8; 156];
        info[146..148].copy_from_slice(&1u16.to_ne_bytes()); // match STATE
        info[150..152].copy_from_slice(&6u16.to_ne_bytes()); // ESTABLISHED|RELATED
        match decode_match("conntrack", 3, &Bytes(info), false) {
            XtMatch::CtState { mask, invert } => {
                assert_eq!(mask, ct_state::ESTABLISHED | ct_state::RELATED);
                assert!(!invert);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn masquerade_ports() {
        let mut info = vec![];
        info.extend_from_slice(&1u32.to_ne_bytes());
        info.extend_from_slice(&NF_NAT_RANGE_PROTO_SPECIFIED.to_ne_bytes());
        info.extend_from_slice(&[0; 8]);
        info.extend_from_slice(&1024u16.to_be_bytes());
        info.extend_from_slice(&65535u16.to_be_bytes());
        assert_eq!(
            decode_target("MASQUERADE", 0, &Bytes(info), false),
            XtTarget::Masquerade {
                ports: Some(PortRange {
                    min: 1024,
                    max: 65535
                })
            }
        );
    }
}
