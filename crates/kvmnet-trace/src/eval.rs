//! Runs a packet through the base chains of one netfilter hook, as `nft_do_chain` does: rules in
//! order, each a program over registers; verdicts accept, drop, jump, goto, return; chain
//! policies; NAT recorded for the path to apply. Expressions whose value a simulation cannot
//! know make the result `Unknown` when they could change the verdict, never a guess.

use std::net::IpAddr;

use kvmnet_model::nft::{CmpOp, NftData, NftFamily};
use kvmnet_model::xt::{XtMatch, XtTarget};
use serde::Serialize;

use crate::compile::{Base, Code, Compiled, CtKey, Field, MetaKey, NatKind, Op};
use crate::packet::Packet;

/// Interface facts a hook sees.
#[derive(Clone, Debug, Default)]
pub struct Dev {
    pub name: String,
    pub index: u32,
    /// rtnetlink kind (`veth`, `bridge`, `tun`, ...; empty for physical).
    pub kind: String,
    /// ARPHRD type (1 Ethernet, 772 loopback).
    pub arptype: u16,
}

/// Answers `fib` expressions (routing lookups) for the evaluator.
pub trait Fib {
    /// The result of a fib lookup: `result` 1 = oif index, 2 = oifname, 3 = address type;
    /// `flags` as in `NFTA_FIB_FLAGS`.
    fn fib(
        &self,
        pkt: &Packet,
        iif: Option<&Dev>,
        oif: Option<&Dev>,
        result: u32,
        flags: u32,
    ) -> Option<Vec<u8>>;
    /// The `RTN_*` address type of an address (for xt addrtype).
    fn addrtype(&self, addr: IpAddr) -> u32;
}

/// What a hook's chains see besides the packet.
#[allow(missing_debug_implementations)]
pub struct HookCtx<'a> {
    pub iif: Option<&'a Dev>,
    pub oif: Option<&'a Dev>,
    /// For bridged frames: the bridge (`meta ibrname`, br_netfilter's logical device).
    pub bri_in: Option<&'a str>,
    pub bri_out: Option<&'a str>,
    /// For br_netfilter: the bridge ports (xt physdev).
    pub phys_in: Option<&'a str>,
    pub phys_out: Option<&'a str>,
    /// Original-direction tuple (src, dst, sport, dport) for `ct saddr` and friends.
    pub ct_orig: (IpAddr, IpAddr, u16, u16),
    pub fib: &'a dyn Fib,
}

/// A rule, as evidence.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct RuleRef {
    pub family: std::sync::Arc<str>,
    pub table: std::sync::Arc<str>,
    pub chain: std::sync::Arc<str>,
    /// The rule's handle; `None` when the chain's policy decided.
    pub handle: Option<u64>,
}

/// A NAT action a hook decided.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Nat {
    /// `snat`, `dnat`, `masquerade` or `redirect`.
    pub kind: String,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
    pub rule: RuleRef,
}

/// A hook's outcome.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum HookVerdict {
    Accept,
    Drop { rule: RuleRef, reject: bool },
    Unknown { rule: RuleRef, what: String },
}

/// The outcome of one hook: verdict, NAT decided, rules that accepted along the way.
#[derive(Clone, Debug, Serialize)]
pub struct HookResult {
    pub verdict: HookVerdict,
    pub nat: Option<Nat>,
    /// The rules or policies that accepted the packet, one per base chain that ran.
    pub accepted_by: Vec<RuleRef>,
    /// Base chains that ran.
    pub chains: usize,
}

const REGS: usize = 96;

struct Regs {
    data: [u8; REGS],
}

impl Load {
    fn val(v: impl AsRef<[u8]>) -> Load {
        let v = v.as_ref();
        let n = v.len().min(64);
        let mut b = [0u8; 64];
        b[..n].copy_from_slice(&v[..n]);
        Load::Value(Buf { b, n })
    }
}

impl Regs {
    fn get(&self, at: usize, len: usize) -> &[u8] {
        let end = (at + len).min(REGS);
        &self.data[at.min(end)..end]
    }
    fn set(&mut self, at: usize, v: &[u8]) {
        let end = (at + v.len()).min(REGS);
        if at < end {
            self.data[at..end].copy_from_slice(&v[..end - at]);
        }
    }
}

fn ifname_bytes(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = name.as_bytes();
    let l = n.len().min(15);
    b[..l].copy_from_slice(&n[..l]);
    b
}

fn kind_name(kind: &str) -> &str {
    match kind {
        "tap" | "tun" => "tun",
        k => k,
    }
}

/// A loaded value: up to 64 bytes, kept on the stack.
struct Buf {
    b: [u8; 64],
    n: usize,
}

impl Buf {
    fn as_slice(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

enum Load {
    Value(Buf),
    /// The key has no value here (no input device on output...): the rule stops.
    Break,
    Unknown(String),
}

struct Frame<'p> {
    pkt: &'p Packet,
    hdr: crate::packet::Headers,
    mark: u32,
}

fn meta(key: MetaKey, f: &Frame, cx: &HookCtx) -> Load {
    let p = f.pkt;
    let dev_name = |d: Option<&Dev>| match d {
        Some(d) => Load::val(ifname_bytes(&d.name)),
        None => Load::Break,
    };
    match key {
        MetaKey::Len => Load::val(p.len.to_ne_bytes()),
        MetaKey::Protocol => Load::val((if p.is_v6() { 0x86ddu16 } else { 0x0800 }).to_be_bytes()),
        MetaKey::Mark => Load::val(f.mark.to_ne_bytes()),
        MetaKey::Iif => match cx.iif {
            Some(d) => Load::val(d.index.to_ne_bytes()),
            None => Load::Break,
        },
        MetaKey::Oif => match cx.oif {
            Some(d) => Load::val(d.index.to_ne_bytes()),
            None => Load::Break,
        },
        MetaKey::IifName => dev_name(cx.iif),
        MetaKey::OifName => dev_name(cx.oif),
        MetaKey::IifType => match cx.iif {
            Some(d) => Load::val(d.arptype.to_ne_bytes()),
            None => Load::Break,
        },
        MetaKey::OifType => match cx.oif {
            Some(d) => Load::val(d.arptype.to_ne_bytes()),
            None => Load::Break,
        },
        MetaKey::NfProto => Load::val(vec![if p.is_v6() { 10 } else { 2 }]),
        MetaKey::L4Proto => Load::val(vec![p.proto]),
        MetaKey::BriIifName => match cx.bri_in {
            Some(b) => Load::val(ifname_bytes(b)),
            None => Load::Break,
        },
        MetaKey::BriOifName => match cx.bri_out {
            Some(b) => Load::val(ifname_bytes(b)),
            None => Load::Break,
        },
        MetaKey::PktType => Load::val(vec![0]),
        MetaKey::IifKind => match cx.iif {
            Some(d) => Load::val(ifname_bytes(kind_name(&d.kind))),
            None => Load::Break,
        },
        MetaKey::OifKind => match cx.oif {
            Some(d) => Load::val(ifname_bytes(kind_name(&d.kind))),
            None => Load::Break,
        },
        MetaKey::IifGroup | MetaKey::OifGroup | MetaKey::Sdif => Load::val(0u32.to_ne_bytes()),
        MetaKey::Secpath => Load::val(vec![0]),
        MetaKey::SdifName => Load::val([0u8; 16]),
        MetaKey::Unknowable(what) => Load::Unknown(what.to_string()),
    }
}

fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ct(key: CtKey, f: &Frame, cx: &HookCtx) -> Load {
    let p = f.pkt;
    match key {
        CtKey::State => Load::val(p.ct.bit().to_ne_bytes()),
        CtKey::Direction => Load::val(vec![p.ct_dir]),
        CtKey::Status => Load::val(p.ct_status.to_ne_bytes()),
        CtKey::Mark => Load::val(0u32.to_ne_bytes()),
        CtKey::L3Proto => Load::val(vec![if p.is_v6() { 10 } else { 2 }]),
        CtKey::Protocol => Load::val(vec![p.proto]),
        CtKey::Saddr => Load::val(ip_bytes(cx.ct_orig.0)),
        CtKey::Daddr => Load::val(ip_bytes(cx.ct_orig.1)),
        CtKey::ProtoSrc => Load::val(cx.ct_orig.2.to_be_bytes()),
        CtKey::ProtoDst => Load::val(cx.ct_orig.3.to_be_bytes()),
        CtKey::Zone => Load::val(0u16.to_ne_bytes()),
        CtKey::Unknowable(w) => Load::Unknown(w.to_string()),
    }
}

fn payload(base: Base, offset: usize, len: usize, f: &Frame) -> Load {
    let hdr: &[u8] = match base {
        Base::Network => &f.hdr.net[..f.hdr.net_len],
        Base::Transport => &f.hdr.transport[..f.hdr.transport_len],
        Base::Ll => match &f.hdr.link {
            Some(l) => l,
            None => return Load::Break,
        },
        Base::Other => return Load::Unknown("payload (inner/tunnel header)".into()),
    };
    let n = len.min(64);
    let mut b = [0u8; 64];
    for (i, x) in b.iter_mut().take(n).enumerate() {
        *x = hdr.get(offset + i).copied().unwrap_or(0);
    }
    Load::Value(Buf { b, n })
}

fn port_in(p: u16, r: kvmnet_model::xt::PortRange) -> bool {
    r.contains(p)
}

/// Evaluates a decoded xt match.
fn xt_match(m: &XtMatch, f: &Frame, cx: &HookCtx) -> Result<bool, String> {
    let p = f.pkt;
    Ok(match m {
        XtMatch::Comment(_) => true,
        XtMatch::CtState { mask, invert } => (mask & p.ct.bit() != 0) != *invert,
        XtMatch::Conntrack {
            state,
            status,
            other,
        } => {
            if *other {
                return Err("xt conntrack (options other than --ctstate/--ctstatus)".into());
            }
            let s_ok = state.is_none_or(|(m, inv)| (m & p.ct.bit() != 0) != inv);
            let st_ok = status.is_none_or(|(m, inv)| (m & p.ct_status != 0) != inv);
            s_ok && st_ok
        }
        XtMatch::Tcp {
            sport,
            dport,
            sport_inv,
            dport_inv,
            flags,
        } => {
            if p.proto != crate::packet::TCP {
                return Ok(false);
            }
            let fl = flags.is_none_or(|(mask, cmp, inv)| ((p.tcp_flags & mask) == cmp) != inv);
            (port_in(p.sport, *sport) != *sport_inv)
                && (port_in(p.dport, *dport) != *dport_inv)
                && fl
        }
        XtMatch::Udp {
            sport,
            dport,
            sport_inv,
            dport_inv,
        } => {
            if p.proto != crate::packet::UDP {
                return Ok(false);
            }
            (port_in(p.sport, *sport) != *sport_inv) && (port_in(p.dport, *dport) != *dport_inv)
        }
        XtMatch::Multiport { dir, ports, invert } => {
            let hit = ports.iter().any(|r| {
                (dir & 1 != 0 && r.contains(p.sport)) || (dir & 2 != 0 && r.contains(p.dport))
            });
            hit != *invert
        }
        XtMatch::Addrtype {
            src,
            dst,
            src_inv,
            dst_inv,
        } => {
            let ok = |mask: u16, inv: bool, a: IpAddr| {
                mask == 0 || ((mask & (1 << cx.fib.addrtype(a)) as u16 != 0) != inv)
            };
            ok(*src, *src_inv, p.src) && ok(*dst, *dst_inv, p.dst)
        }
        XtMatch::Physdev {
            in_dev,
            out_dev,
            bitmask,
            invert,
        } => {
            // XT_PHYSDEV_OP_IN 1, OUT 2, BRIDGED 4, ISIN 8, ISOUT 16
            let test = |bit: u8, v: bool| bitmask & bit == 0 || (v != (invert & bit != 0));
            let in_ok = match in_dev {
                Some(d) => cx.phys_in.is_some_and(|i| wildcard(d, i)),
                None => true,
            };
            let out_ok = match out_dev {
                Some(d) => cx.phys_out.is_some_and(|o| wildcard(d, o)),
                None => true,
            };
            test(1, in_ok)
                && test(2, out_ok)
                && test(4, cx.phys_out.is_some())
                && test(8, cx.phys_in.is_some())
                && test(16, cx.phys_out.is_some())
        }
        XtMatch::Unknown { name } => return Err(format!("xt match {name}")),
    })
}

/// iptables interface names: a trailing `+` is a prefix wildcard.
fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// What a single rule did.
enum RuleOutcome {
    /// The rule did not match or had no terminal effect.
    Next,
    Code(Code),
    Nat(Nat),
    Reject,
    Unknown(String),
}

fn run_rule(
    c: &Compiled,
    rule: &crate::compile::Rule,
    rref: &dyn Fn() -> RuleRef,
    f: &mut Frame,
    cx: &HookCtx,
) -> RuleOutcome {
    let mut regs = Regs { data: [0; REGS] };
    for op in &rule.ops {
        match op {
            Op::Payload {
                base,
                offset,
                len,
                dreg,
            } => match payload(*base, *offset, *len, f) {
                Load::Value(v) => regs.set(*dreg, v.as_slice()),
                Load::Break => return RuleOutcome::Next,
                Load::Unknown(w) => return unknown(rule, w),
            },
            Op::Meta { key, dreg } => match meta(*key, f, cx) {
                Load::Value(v) => regs.set(*dreg, v.as_slice()),
                Load::Break => return RuleOutcome::Next,
                Load::Unknown(w) => return unknown(rule, w),
            },
            Op::Ct { key, dreg } => match ct(*key, f, cx) {
                Load::Value(v) => regs.set(*dreg, v.as_slice()),
                Load::Break => return RuleOutcome::Next,
                Load::Unknown(w) => return unknown(rule, w),
            },
            Op::MetaSetMark { sreg } => {
                let b = regs.get(*sreg, 4);
                f.mark = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            }
            Op::Cmp { sreg, op, data } => {
                let d = cmp_bytes(regs.get(*sreg, data.len()), data);
                let ok = match op {
                    CmpOp::Eq => d.is_eq(),
                    CmpOp::Neq => d.is_ne(),
                    CmpOp::Lt => d.is_lt(),
                    CmpOp::Lte => d.is_le(),
                    CmpOp::Gt => d.is_gt(),
                    CmpOp::Gte => d.is_ge(),
                };
                if !ok {
                    return RuleOutcome::Next;
                }
            }
            Op::Range {
                sreg,
                neq,
                from,
                to,
            } => {
                let v = regs.get(*sreg, from.len());
                let inside = v >= from.as_slice() && v <= to.as_slice();
                if inside == *neq {
                    return RuleOutcome::Next;
                }
            }
            Op::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let v: Vec<u8> = regs
                    .get(*sreg, mask.len())
                    .iter()
                    .zip(mask)
                    .zip(xor)
                    .map(|((b, m), x)| (b & m) ^ x)
                    .collect();
                regs.set(*dreg, &v);
            }
            Op::Shift {
                sreg,
                dreg,
                len,
                left,
                amount,
            } => {
                let src = regs.get(*sreg, *len).to_vec();
                let mut out = vec![0u8; src.len()];
                for (i, w) in src.chunks(4).enumerate() {
                    let mut a = [0u8; 4];
                    a[..w.len()].copy_from_slice(w);
                    let x = u32::from_ne_bytes(a);
                    let y = if *left {
                        x.checked_shl(*amount).unwrap_or(0)
                    } else {
                        x.checked_shr(*amount).unwrap_or(0)
                    };
                    let yb = y.to_ne_bytes();
                    let n = w.len();
                    out[i * 4..i * 4 + n].copy_from_slice(&yb[..n]);
                }
                regs.set(*dreg, &out);
            }
            Op::Byteorder {
                sreg,
                dreg,
                hton,
                len,
                size,
            } => {
                let mut v = regs.get(*sreg, *len).to_vec();
                if cfg!(target_endian = "little") && (*size == 2 || *size == 4 || *size == 8) {
                    for ch in v.chunks_mut(*size) {
                        ch.reverse();
                    }
                }
                let _ = hton;
                regs.set(*dreg, &v);
            }
            Op::Immediate { dreg, data } => regs.set(*dreg, data),
            Op::Verdict(code) => return RuleOutcome::Code(*code),
            Op::Lookup {
                sreg,
                set,
                dreg,
                verdict_map,
                invert,
            } => {
                let s = &c.sets[*set].set;
                let key = regs.get(*sreg, s.key_len as usize).to_vec();
                let found = s.lookup(&key);
                if found.is_some() == *invert {
                    return RuleOutcome::Next;
                }
                if let Some(e) = found {
                    match (&e.data, verdict_map, dreg) {
                        (Some(NftData::Verdict(v)), true, _) => {
                            let code = match v.kind.as_str() {
                                "accept" => Code::Accept,
                                "drop" => Code::Drop,
                                "return" => Code::Return,
                                "continue" => Code::Continue,
                                "jump" | "goto" => {
                                    let table = c.sets[*set].table;
                                    let target = v.chain.as_deref().and_then(|n| {
                                        c.chains
                                            .iter()
                                            .position(|ch| ch.table == table && &*ch.name == n)
                                    });
                                    match (target, v.kind.as_str()) {
                                        (Some(t), "jump") => Code::Jump(t),
                                        (Some(t), _) => Code::Goto(t),
                                        (None, _) => Code::Other,
                                    }
                                }
                                _ => Code::Other,
                            };
                            return RuleOutcome::Code(code);
                        }
                        (Some(NftData::Value(b)), false, Some(d)) => regs.set(*d, &b.0),
                        _ => {}
                    }
                }
            }
            Op::Nop => {}
            Op::Limit { over } => {
                if *over {
                    return RuleOutcome::Next;
                }
            }
            Op::Nat {
                kind,
                addr,
                proto,
                ipv6,
            } => {
                let addr = addr.map(|(a, _)| {
                    let b = regs.get(a, if *ipv6 { 16 } else { 4 });
                    if *ipv6 {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(b);
                        IpAddr::V6(o.into())
                    } else {
                        IpAddr::V4([b[0], b[1], b[2], b[3]].into())
                    }
                });
                let port = proto.map(|(p, _)| {
                    let b = regs.get(p, 2);
                    u16::from_be_bytes([b[0], b[1]])
                });
                let kind = match kind {
                    NatKind::Snat => "snat",
                    NatKind::Dnat => "dnat",
                    NatKind::Masquerade => "masquerade",
                    NatKind::Redirect => "redirect",
                };
                return RuleOutcome::Nat(Nat {
                    kind: kind.into(),
                    addr,
                    port,
                    rule: rref(),
                });
            }
            Op::Reject => return RuleOutcome::Reject,
            Op::Fib {
                dreg,
                result,
                flags,
            } => match cx.fib.fib(f.pkt, cx.iif, cx.oif, *result, *flags) {
                Some(v) => regs.set(*dreg, &v),
                None => return RuleOutcome::Next,
            },
            Op::XtMatch(m) => match xt_match(m, f, cx) {
                Ok(true) => {}
                Ok(false) => return RuleOutcome::Next,
                Err(w) => return unknown(rule, w),
            },
            Op::XtTarget(t) => match t {
                XtTarget::Masquerade { ports } => {
                    return RuleOutcome::Nat(Nat {
                        kind: "masquerade".into(),
                        addr: None,
                        port: ports.map(|p| p.min),
                        rule: rref(),
                    })
                }
                XtTarget::Snat { addr, ports } | XtTarget::Dnat { addr, ports } => {
                    let kind = if matches!(t, XtTarget::Snat { .. }) {
                        "snat"
                    } else {
                        "dnat"
                    };
                    return RuleOutcome::Nat(Nat {
                        kind: kind.into(),
                        addr: addr.map(|a| a.0),
                        port: ports.map(|p| p.min),
                        rule: rref(),
                    });
                }
                XtTarget::Reject { .. } => return RuleOutcome::Reject,
                XtTarget::NonTerminal { .. } => {}
                XtTarget::Unknown { name } => return unknown(rule, format!("xt target {name}")),
            },
            Op::Unknown { name } => return unknown(rule, name.clone()),
        }
    }
    RuleOutcome::Next
}

/// memcmp for the few bytes a register comparison covers (a libc call costs more).
#[inline]
fn cmp_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

fn unknown(rule: &crate::compile::Rule, what: String) -> RuleOutcome {
    if rule.terminal {
        RuleOutcome::Unknown(what)
    } else {
        // the rule cannot end traversal: whatever it matches, the path goes on
        RuleOutcome::Next
    }
}

/// Field value for a block index lookup.
fn field_value(field: &Field, f: &Frame, cx: &HookCtx) -> Option<Buf> {
    match field {
        Field::Payload(base, off, len) => match payload(*base, *off, *len, f) {
            Load::Value(v) => Some(v),
            _ => None,
        },
        Field::Meta(k) => match meta(*k, f, cx) {
            Load::Value(v) => Some(v),
            _ => None,
        },
    }
}

/// Families whose tables run at IP hooks for this packet.
pub fn ip_families(v6: bool) -> [NftFamily; 2] {
    if v6 {
        [NftFamily::Ip6, NftFamily::Inet]
    } else {
        [NftFamily::Ip, NftFamily::Inet]
    }
}

/// Runs every base chain of `families` on `hook`, in priority order, skipping NAT chains for
/// packets of established connections (NAT is decided on a connection's first packet).
pub fn eval_hook(
    c: &Compiled,
    families: &[NftFamily],
    hook: &str,
    pkt: &Packet,
    cx: &HookCtx,
) -> HookResult {
    // the base chains of every family, in priority order (one family's list is sorted already)
    let mut lists = families
        .iter()
        .filter_map(|fam| c.hooks.get(fam).and_then(|m| m.get(hook)))
        .filter(|l| !l.is_empty());
    let merged: Vec<usize>;
    let bases: &[usize] = match (lists.next(), lists.next()) {
        (None, _) => {
            return HookResult {
                verdict: HookVerdict::Accept,
                nat: None,
                accepted_by: vec![],
                chains: 0,
            }
        }
        (Some(a), None) => a,
        (Some(a), Some(b)) => {
            let mut m: Vec<usize> = a.iter().chain(b.iter()).copied().collect();
            for rest in lists {
                m.extend(rest);
            }
            m.sort_by_key(|i| c.chains[*i].hook.as_ref().map(|h| h.1).unwrap_or(0));
            merged = m;
            &merged
        }
    };
    let mut frame = Frame {
        pkt,
        hdr: pkt.headers(),
        mark: pkt.mark,
    };
    let mut result = HookResult {
        verdict: HookVerdict::Accept,
        nat: None,
        accepted_by: vec![],
        chains: 0,
    };
    for &base in bases {
        let Some((_, _, ctype, policy_drop)) = c.chains[base].hook.as_ref() else {
            continue;
        };
        let policy_drop = *policy_drop;
        if ctype == "nat" && (pkt.ct != crate::packet::CtState::New || result.nat.is_some()) {
            continue;
        }
        result.chains += 1;
        match run_base(c, base, policy_drop, &mut frame, cx) {
            BaseOutcome::Accept(r) => result.accepted_by.push(r),
            BaseOutcome::Nat(n) => {
                result.accepted_by.push(n.rule.clone());
                result.nat = Some(n);
            }
            BaseOutcome::Drop(r, reject) => {
                result.verdict = HookVerdict::Drop { rule: r, reject };
                return result;
            }
            BaseOutcome::Unknown(r, what) => {
                result.verdict = HookVerdict::Unknown { rule: r, what };
                return result;
            }
        }
    }
    result
}

enum BaseOutcome {
    Accept(RuleRef),
    Nat(Nat),
    Drop(RuleRef, bool),
    Unknown(RuleRef, String),
}

fn rule_ref(c: &Compiled, chain: usize, handle: Option<u64>) -> RuleRef {
    let ch = &c.chains[chain];
    let t = &c.tables[ch.table];
    RuleRef {
        family: t.family_name.clone(),
        table: t.name.clone(),
        chain: ch.name.clone(),
        handle,
    }
}

fn run_base(
    c: &Compiled,
    base: usize,
    policy_drop: bool,
    f: &mut Frame,
    cx: &HookCtx,
) -> BaseOutcome {
    let mut stack: Vec<(usize, usize)> = vec![];
    let (mut chain, mut idx) = (base, 0usize);
    let mut steps = 0usize;
    loop {
        steps += 1;
        if steps > 100_000 {
            return BaseOutcome::Unknown(
                rule_ref(c, chain, None),
                "rule traversal did not end (jump loop?)".into(),
            );
        }
        let ch = &c.chains[chain];
        if idx >= ch.rules.len() {
            match stack.pop() {
                Some((pc, pi)) => {
                    chain = pc;
                    idx = pi;
                    continue;
                }
                None => {
                    let r = rule_ref(c, base, None);
                    return if policy_drop {
                        BaseOutcome::Drop(r, false)
                    } else {
                        BaseOutcome::Accept(r)
                    };
                }
            }
        }
        // skip rules of an indexed block that cannot match this packet
        if let Some(b) = ch.blocks.iter().find(|b| b.start == idx) {
            let candidates = field_value(&b.field, f, cx)
                .and_then(|v| b.by_value.get(v.as_slice()))
                .map(|v| v.as_slice())
                .unwrap_or(&[]);
            let mut jumped = None;
            for &ri in candidates {
                let rule = &ch.rules[ri];
                let rr = || rule_ref(c, chain, Some(rule.handle));
                match run_rule(c, rule, &rr, f, cx) {
                    RuleOutcome::Next
                    | RuleOutcome::Code(Code::Continue)
                    | RuleOutcome::Code(Code::Break) => {}
                    other => {
                        jumped = Some((ri, other));
                        break;
                    }
                }
            }
            match jumped {
                None => {
                    idx = b.end;
                    continue;
                }
                Some((ri, outcome)) => {
                    match handle_outcome(c, outcome, chain, ri, &mut stack, base) {
                        Flow::Next(nc, ni) => {
                            chain = nc;
                            idx = ni;
                            continue;
                        }
                        Flow::Done(o) => return o,
                    }
                }
            }
        }
        let rule = &ch.rules[idx];
        let rr = || rule_ref(c, chain, Some(rule.handle));
        let outcome = run_rule(c, rule, &rr, f, cx);
        match handle_outcome(c, outcome, chain, idx, &mut stack, base) {
            Flow::Next(nc, ni) => {
                chain = nc;
                idx = ni;
            }
            Flow::Done(o) => return o,
        }
    }
}

enum Flow {
    Next(usize, usize),
    Done(BaseOutcome),
}

fn handle_outcome(
    c: &Compiled,
    outcome: RuleOutcome,
    chain: usize,
    idx: usize,
    stack: &mut Vec<(usize, usize)>,
    base: usize,
) -> Flow {
    let handle = c.chains[chain].rules.get(idx).map(|r| r.handle);
    let here = rule_ref(c, chain, handle);
    match outcome {
        RuleOutcome::Next | RuleOutcome::Code(Code::Continue) | RuleOutcome::Code(Code::Break) => {
            Flow::Next(chain, idx + 1)
        }
        RuleOutcome::Code(Code::Accept) => Flow::Done(BaseOutcome::Accept(here)),
        RuleOutcome::Code(Code::Drop) => Flow::Done(BaseOutcome::Drop(here, false)),
        RuleOutcome::Reject => Flow::Done(BaseOutcome::Drop(here, true)),
        RuleOutcome::Nat(n) => Flow::Done(BaseOutcome::Nat(n)),
        RuleOutcome::Code(Code::Jump(t)) => {
            stack.push((chain, idx + 1));
            if stack.len() > 64 {
                return Flow::Done(BaseOutcome::Unknown(here, "jump depth over 64".into()));
            }
            Flow::Next(t, 0)
        }
        RuleOutcome::Code(Code::Goto(t)) => Flow::Next(t, 0),
        RuleOutcome::Code(Code::Return) => match stack.pop() {
            Some((pc, pi)) => Flow::Next(pc, pi),
            None => {
                // return from the base chain: its policy decides
                let policy_drop = c.chains[base].hook.as_ref().is_some_and(|h| h.3);
                let r = rule_ref(c, base, None);
                Flow::Done(if policy_drop {
                    BaseOutcome::Drop(r, false)
                } else {
                    BaseOutcome::Accept(r)
                })
            }
        },
        RuleOutcome::Code(Code::Other) => Flow::Done(BaseOutcome::Unknown(
            here,
            "verdict queue/stolen or a jump to a missing chain".into(),
        )),
        RuleOutcome::Unknown(w) => Flow::Done(BaseOutcome::Unknown(here, w)),
    }
}
