//! Compiles a model ruleset once into an evaluation-friendly form: expressions with resolved
//! set and chain indices and enum keys instead of names, per-hook base-chain lists sorted by
//! priority, and for runs of rules that all start by comparing the same packet field with a
//! constant, an index from that constant to the rules, so a packet skips the rules that cannot
//! match without changing the order in which the others run.

use std::collections::HashMap;

use kvmnet_model::nft::{CmpOp, Expr, NftData, NftFamily, NftRuleset, NftSet};
use kvmnet_model::nft_text::reg_slot;
use kvmnet_model::xt::{self, XtMatch, XtTarget};

/// A verdict code as nf_tables uses it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Code {
    Continue,
    Break,
    Accept,
    Drop,
    Return,
    Jump(usize),
    Goto(usize),
    /// queue / stolen / repeat: the packet leaves the simulated path.
    Other,
}

/// Packet metadata keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MetaKey {
    Len,
    Protocol,
    Mark,
    Iif,
    Oif,
    IifName,
    OifName,
    IifType,
    OifType,
    NfProto,
    L4Proto,
    BriIifName,
    BriOifName,
    PktType,
    IifKind,
    OifKind,
    IifGroup,
    OifGroup,
    Secpath,
    Sdif,
    SdifName,
    /// Keys whose value kvmnet cannot know for a simulated packet (skuid, cpu, random, time...).
    Unknowable(&'static str),
}

fn meta_key(name: &str) -> MetaKey {
    match name {
        "len" => MetaKey::Len,
        "protocol" => MetaKey::Protocol,
        "mark" => MetaKey::Mark,
        "iif" => MetaKey::Iif,
        "oif" => MetaKey::Oif,
        "iifname" => MetaKey::IifName,
        "oifname" => MetaKey::OifName,
        "iiftype" => MetaKey::IifType,
        "oiftype" => MetaKey::OifType,
        "nfproto" => MetaKey::NfProto,
        "l4proto" => MetaKey::L4Proto,
        "bri_iifname" => MetaKey::BriIifName,
        "bri_oifname" => MetaKey::BriOifName,
        "pkttype" => MetaKey::PktType,
        "iifkind" => MetaKey::IifKind,
        "oifkind" => MetaKey::OifKind,
        "iifgroup" => MetaKey::IifGroup,
        "oifgroup" => MetaKey::OifGroup,
        "secpath" => MetaKey::Secpath,
        "sdif" => MetaKey::Sdif,
        "sdifname" => MetaKey::SdifName,
        "skuid" => MetaKey::Unknowable("meta skuid"),
        "skgid" => MetaKey::Unknowable("meta skgid"),
        "cpu" => MetaKey::Unknowable("meta cpu"),
        "random" => MetaKey::Unknowable("meta random"),
        "cgroup" => MetaKey::Unknowable("meta cgroup"),
        "time" | "day" | "hour" => MetaKey::Unknowable("meta time"),
        "priority" => MetaKey::Unknowable("meta priority"),
        "rtclassid" => MetaKey::Unknowable("meta rtclassid"),
        "secmark" => MetaKey::Unknowable("meta secmark"),
        "nftrace" => MetaKey::Unknowable("meta nftrace"),
        _ => MetaKey::Unknowable("meta (unknown key)"),
    }
}

/// Conntrack keys.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CtKey {
    State,
    Direction,
    Status,
    Mark,
    L3Proto,
    Saddr,
    Daddr,
    Protocol,
    ProtoSrc,
    ProtoDst,
    Zone,
    Unknowable(&'static str),
}

fn ct_key(name: &str) -> CtKey {
    match name {
        "state" => CtKey::State,
        "direction" => CtKey::Direction,
        "status" => CtKey::Status,
        "mark" => CtKey::Mark,
        "l3protocol" => CtKey::L3Proto,
        "saddr" | "ip saddr" | "ip6 saddr" => CtKey::Saddr,
        "daddr" | "ip daddr" | "ip6 daddr" => CtKey::Daddr,
        "protocol" => CtKey::Protocol,
        "proto-src" => CtKey::ProtoSrc,
        "proto-dst" => CtKey::ProtoDst,
        "zone" => CtKey::Zone,
        "helper" => CtKey::Unknowable("ct helper"),
        "expiration" => CtKey::Unknowable("ct expiration"),
        "label" => CtKey::Unknowable("ct label"),
        "packets" | "bytes" | "avgpkt" => CtKey::Unknowable("ct counters"),
        _ => CtKey::Unknowable("ct (unknown key)"),
    }
}

/// Payload bases.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Base {
    Ll,
    Network,
    Transport,
    Other,
}

/// NAT actions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NatKind {
    Snat,
    Dnat,
    Masquerade,
    Redirect,
}

/// A compiled expression.
#[derive(Clone, Debug)]
pub enum Op {
    Payload {
        base: Base,
        offset: usize,
        len: usize,
        dreg: usize,
    },
    Meta {
        key: MetaKey,
        dreg: usize,
    },
    MetaSetMark {
        sreg: usize,
    },
    Cmp {
        sreg: usize,
        op: CmpOp,
        data: Vec<u8>,
    },
    Range {
        sreg: usize,
        neq: bool,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Bitwise {
        sreg: usize,
        dreg: usize,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Shift {
        sreg: usize,
        dreg: usize,
        len: usize,
        left: bool,
        amount: u32,
    },
    Byteorder {
        sreg: usize,
        dreg: usize,
        hton: bool,
        len: usize,
        size: usize,
    },
    Immediate {
        dreg: usize,
        data: Vec<u8>,
    },
    Verdict(Code),
    Lookup {
        sreg: usize,
        set: usize,
        dreg: Option<usize>,
        verdict_map: bool,
        invert: bool,
    },
    Ct {
        key: CtKey,
        dreg: usize,
    },
    /// counter, log, notrack, dynset, objref, ct set...: no effect on the path.
    Nop,
    /// `limit`: kvmnet assumes the traffic is within the limit.
    Limit {
        over: bool,
    },
    Nat {
        kind: NatKind,
        addr: Option<(usize, usize)>,
        proto: Option<(usize, usize)>,
        ipv6: bool,
    },
    Reject,
    Fib {
        dreg: usize,
        result: u32,
        flags: u32,
    },
    XtMatch(XtMatch),
    XtTarget(XtTarget),
    /// An expression kvmnet cannot evaluate; `name` says which.
    Unknown {
        name: String,
    },
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub handle: u64,
    pub ops: Vec<Op>,
    /// The rule can end traversal (has a verdict, NAT, reject or a verdict map).
    pub terminal: bool,
}

/// A compiled chain.
#[derive(Clone, Debug)]
pub struct Chain {
    pub table: usize,
    pub name: std::sync::Arc<str>,
    pub rules: Vec<Rule>,
    pub hook: Option<(String, i32, String, bool)>,
    /// Indexed runs of rules: (first rule, past-last rule, field, value -> rule indices).
    pub blocks: Vec<Block>,
}

/// A run of consecutive rules that all begin with `field == constant`.
#[derive(Clone, Debug)]
pub struct Block {
    pub start: usize,
    pub end: usize,
    pub field: Field,
    pub by_value: crate::fnv::FnvMap<Vec<u8>, Vec<usize>>,
}

/// A packet field a rule's first test reads.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Field {
    Payload(Base, usize, usize),
    Meta(MetaKey),
}

/// A compiled set.
#[derive(Clone, Debug)]
pub struct Set {
    pub set: NftSet,
    /// The table the set belongs to (verdict maps jump to chains of the same table).
    pub table: usize,
}

/// A compiled table.
#[derive(Clone, Debug)]
pub struct Table {
    pub family: NftFamily,
    pub name: std::sync::Arc<str>,
    /// The family's name, shared by every rule reference.
    pub family_name: std::sync::Arc<str>,
}

/// The compiled ruleset.
#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub tables: Vec<Table>,
    pub chains: Vec<Chain>,
    pub sets: Vec<Set>,
    /// Base chains per (family, hook), sorted by priority.
    pub hooks: crate::fnv::FnvMap<NftFamily, crate::fnv::FnvMap<String, Vec<usize>>>,
}

fn verdict_code(kind: &str, chain: Option<&String>, chains: &HashMap<String, usize>) -> Code {
    match kind {
        "accept" => Code::Accept,
        "drop" => Code::Drop,
        "continue" => Code::Continue,
        "break" => Code::Break,
        "return" => Code::Return,
        "jump" => chain
            .and_then(|c| chains.get(c))
            .map(|i| Code::Jump(*i))
            .unwrap_or(Code::Other),
        "goto" => chain
            .and_then(|c| chains.get(c))
            .map(|i| Code::Goto(*i))
            .unwrap_or(Code::Other),
        _ => Code::Other,
    }
}

/// Compiles a ruleset.
pub fn compile(rs: &NftRuleset) -> Compiled {
    let mut c = Compiled::default();
    for (ti, t) in rs.tables.iter().enumerate() {
        c.tables.push(Table {
            family: t.family,
            name: t.name.as_str().into(),
            family_name: t.family.as_str().into(),
        });
        let set_base = c.sets.len();
        let sets: HashMap<String, usize> = t
            .sets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), set_base + i))
            .collect();
        for s in &t.sets {
            c.sets.push(Set {
                set: s.clone(),
                table: ti,
            });
        }
        let chain_base = c.chains.len();
        let chains: HashMap<String, usize> = t
            .chains
            .iter()
            .enumerate()
            .map(|(i, ch)| (ch.name.clone(), chain_base + i))
            .collect();
        let ipv6 = t.family == NftFamily::Ip6;
        for ch in &t.chains {
            let mut rules = vec![];
            for r in &ch.rules {
                let ops: Vec<Op> = r
                    .exprs
                    .iter()
                    .map(|e| compile_expr(e, &sets, &chains, &c.sets, ipv6))
                    .collect();
                let terminal = ops.iter().any(|o| {
                    matches!(
                        o,
                        Op::Verdict(_)
                            | Op::Nat { .. }
                            | Op::Reject
                            | Op::Lookup {
                                verdict_map: true,
                                ..
                            }
                            | Op::XtTarget(XtTarget::Masquerade { .. })
                            | Op::XtTarget(XtTarget::Snat { .. })
                            | Op::XtTarget(XtTarget::Dnat { .. })
                            | Op::XtTarget(XtTarget::Reject { .. })
                            | Op::XtTarget(XtTarget::Unknown { .. })
                    )
                    // a rule kvmnet's nft reader kept as text could do anything
                    || matches!(o, Op::Unknown { name } if name.starts_with("rule kvmnet cannot read:"))
                });
                rules.push(Rule {
                    handle: r.handle,
                    ops,
                    terminal,
                });
            }
            let blocks = index_blocks(&rules);
            c.chains.push(Chain {
                table: ti,
                name: ch.name.as_str().into(),
                rules,
                hook: ch.hook.as_ref().map(|h| {
                    (
                        h.hook.clone(),
                        h.priority,
                        h.chain_type.clone(),
                        h.policy == "drop",
                    )
                }),
                blocks,
            });
        }
        if !t.flags.iter().any(|f| f == "dormant") {
            for (i, ch) in t.chains.iter().enumerate() {
                if let Some(h) = &ch.hook {
                    c.hooks
                        .entry(t.family)
                        .or_default()
                        .entry(h.hook.clone())
                        .or_default()
                        .push(chain_base + i);
                }
            }
        }
    }
    let prio: Vec<i32> = c
        .chains
        .iter()
        .map(|ch| ch.hook.as_ref().map(|h| h.1).unwrap_or(0))
        .collect();
    for list in c.hooks.values_mut().flat_map(|m| m.values_mut()) {
        list.sort_by_key(|i| prio[*i]);
    }
    c
}

fn compile_expr(
    e: &Expr,
    sets: &HashMap<String, usize>,
    chains: &HashMap<String, usize>,
    all_sets: &[Set],
    ipv6: bool,
) -> Op {
    match e {
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => Op::Payload {
            base: match base.as_str() {
                "ll" => Base::Ll,
                "network" => Base::Network,
                "transport" => Base::Transport,
                _ => Base::Other,
            },
            offset: *offset as usize,
            len: *len as usize,
            dreg: reg_slot(*dreg) * 4,
        },
        Expr::Meta { key, dreg } => Op::Meta {
            key: meta_key(key),
            dreg: reg_slot(*dreg) * 4,
        },
        Expr::MetaSet { key, sreg } if key == "mark" => Op::MetaSetMark {
            sreg: reg_slot(*sreg) * 4,
        },
        Expr::MetaSet { .. } => Op::Nop,
        Expr::Cmp { sreg, op, data } => Op::Cmp {
            sreg: reg_slot(*sreg) * 4,
            op: *op,
            data: data.0.clone(),
        },
        Expr::Range { sreg, op, from, to } => Op::Range {
            sreg: reg_slot(*sreg) * 4,
            neq: *op == CmpOp::Neq,
            from: from.0.clone(),
            to: to.0.clone(),
        },
        Expr::Bitwise {
            sreg,
            dreg,
            len,
            mask,
            xor,
        } => {
            let l = *len as usize;
            let mut m = mask.0.clone();
            m.resize(l, 0);
            let mut x = xor.0.clone();
            x.resize(l, 0);
            Op::Bitwise {
                sreg: reg_slot(*sreg) * 4,
                dreg: reg_slot(*dreg) * 4,
                mask: m,
                xor: x,
            }
        }
        Expr::Shift {
            sreg,
            dreg,
            len,
            op,
            amount,
        } => Op::Shift {
            sreg: reg_slot(*sreg) * 4,
            dreg: reg_slot(*dreg) * 4,
            len: *len as usize,
            left: op == "lshift",
            amount: *amount,
        },
        Expr::Byteorder {
            sreg,
            dreg,
            op,
            len,
            size,
        } => Op::Byteorder {
            sreg: reg_slot(*sreg) * 4,
            dreg: reg_slot(*dreg) * 4,
            hton: op == "hton",
            len: *len as usize,
            size: *size as usize,
        },
        Expr::Immediate { dreg, data } => match data {
            NftData::Verdict(v) => Op::Verdict(verdict_code(&v.kind, v.chain.as_ref(), chains)),
            NftData::Value(b) => Op::Immediate {
                dreg: reg_slot(*dreg) * 4,
                data: b.0.clone(),
            },
        },
        Expr::Lookup {
            sreg,
            dreg,
            set,
            invert,
        } => match sets.get(set) {
            Some(&si) if all_sets.get(si).is_some_and(|s| s.set.has_flag("untyped")) => {
                Op::Unknown {
                    name: format!("lookup in set {set}, whose key kvmnet does not model"),
                }
            }
            Some(&si) => {
                let verdict_map = *dreg == Some(0)
                    || all_sets.get(si).is_some_and(|s| {
                        s.set.data_type == Some(kvmnet_model::nft::datatype::VERDICT_MAP)
                    });
                Op::Lookup {
                    sreg: reg_slot(*sreg) * 4,
                    set: si,
                    dreg: dreg.filter(|d| *d != 0).map(|d| reg_slot(d) * 4),
                    verdict_map,
                    invert: *invert,
                }
            }
            None => Op::Unknown {
                name: format!("lookup in missing set {set}"),
            },
        },
        Expr::Ct {
            key, dreg: Some(d), ..
        } => Op::Ct {
            key: ct_key(key),
            dreg: reg_slot(*d) * 4,
        },
        Expr::Ct { .. } => Op::Nop,
        Expr::Counter { .. }
        | Expr::Log { .. }
        | Expr::Notrack
        | Expr::Dynset { .. }
        | Expr::Objref { .. } => Op::Nop,
        Expr::Limit { flags, .. } => Op::Limit {
            over: flags & 1 != 0,
        },
        Expr::Nat {
            nat_type,
            family,
            addr_min,
            addr_max,
            proto_min,
            proto_max,
            ..
        } => Op::Nat {
            kind: if nat_type == "dnat" {
                NatKind::Dnat
            } else {
                NatKind::Snat
            },
            addr: addr_min.map(|a| (reg_slot(a) * 4, reg_slot(addr_max.unwrap_or(a)) * 4)),
            proto: proto_min.map(|p| (reg_slot(p) * 4, reg_slot(proto_max.unwrap_or(p)) * 4)),
            ipv6: *family == 10,
        },
        Expr::Masq {
            proto_min,
            proto_max,
            ..
        } => Op::Nat {
            kind: NatKind::Masquerade,
            addr: None,
            proto: proto_min.map(|p| (reg_slot(p) * 4, reg_slot(proto_max.unwrap_or(p)) * 4)),
            ipv6,
        },
        Expr::Redir {
            proto_min,
            proto_max,
            ..
        } => Op::Nat {
            kind: NatKind::Redirect,
            addr: None,
            proto: proto_min.map(|p| (reg_slot(p) * 4, reg_slot(proto_max.unwrap_or(p)) * 4)),
            ipv6,
        },
        Expr::Reject { .. } => Op::Reject,
        Expr::Fib {
            dreg,
            result,
            flags,
        } => Op::Fib {
            dreg: reg_slot(*dreg) * 4,
            result: *result,
            flags: *flags,
        },
        Expr::Match { name, rev, info } => match xt::decode_match(name, *rev, info, ipv6) {
            XtMatch::Unknown { name } => Op::Unknown {
                name: format!("xt match {name}"),
            },
            m => Op::XtMatch(m),
        },
        Expr::Target { name, rev, info } => Op::XtTarget(xt::decode_target(name, *rev, info, ipv6)),
        Expr::Numgen { .. } => Op::Unknown {
            name: "numgen".into(),
        },
        Expr::Exthdr { .. } => Op::Unknown {
            name: "exthdr".into(),
        },
        Expr::PayloadSet { .. } => Op::Nop,
        Expr::Other { name, .. } => Op::Unknown { name: name.clone() },
    }
}

/// The width of a metadata value in a register.
pub fn meta_len(key: MetaKey) -> Option<usize> {
    Some(match key {
        MetaKey::IifName
        | MetaKey::OifName
        | MetaKey::BriIifName
        | MetaKey::BriOifName
        | MetaKey::IifKind
        | MetaKey::OifKind
        | MetaKey::SdifName => 16,
        MetaKey::NfProto | MetaKey::L4Proto | MetaKey::PktType | MetaKey::Secpath => 1,
        MetaKey::Protocol | MetaKey::IifType | MetaKey::OifType => 2,
        MetaKey::Len
        | MetaKey::Mark
        | MetaKey::Iif
        | MetaKey::Oif
        | MetaKey::IifGroup
        | MetaKey::OifGroup
        | MetaKey::Sdif => 4,
        MetaKey::Unknowable(_) => return None,
    })
}

/// The field and constant a rule starts with (`payload/meta` load then `cmp eq` on the same
/// register, without a mask), if it does.
fn leading_test(r: &Rule) -> Option<(Field, Vec<u8>)> {
    let mut ops = r.ops.iter();
    let (field, reg, len) = match ops.next()? {
        Op::Payload {
            base,
            offset,
            len,
            dreg,
        } => (Field::Payload(*base, *offset, *len), *dreg, *len),
        Op::Meta { key, dreg } => (Field::Meta(*key), *dreg, meta_len(*key)?),
        _ => return None,
    };
    match ops.next()? {
        // only full-width comparisons: a shorter one is a prefix (wildcard) match
        Op::Cmp {
            sreg,
            op: CmpOp::Eq,
            data,
        } if *sreg == reg && data.len() == len => Some((field, data.clone())),
        _ => None,
    }
}

/// Groups runs of at least 8 consecutive rules starting with an equality test on the same
/// field into indexed blocks.
fn index_blocks(rules: &[Rule]) -> Vec<Block> {
    let mut blocks = vec![];
    let mut i = 0;
    while i < rules.len() {
        let Some((field, _)) = leading_test(&rules[i]) else {
            i += 1;
            continue;
        };
        let mut j = i;
        let mut by_value: crate::fnv::FnvMap<Vec<u8>, Vec<usize>> = Default::default();
        while j < rules.len() {
            match leading_test(&rules[j]) {
                Some((f, v)) if f == field => {
                    by_value.entry(v).or_default().push(j);
                    j += 1;
                }
                _ => break,
            }
        }
        if j - i >= 8 {
            blocks.push(Block {
                start: i,
                end: j,
                field,
                by_value,
            });
        }
        i = j.max(i + 1);
    }
    blocks
}

/// Something in a ruleset kvmnet cannot evaluate, or evaluates under an assumption.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unsupported {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    /// What it is (`xt match string`, `meta skuid`, `numgen`, `limit`...).
    pub what: String,
    /// `unknown` (the verdict of a rule with it is undecidable) or `assumed` (kvmnet assumes
    /// the common case, e.g. traffic within a limit).
    pub kind: String,
}

/// Every expression of the ruleset that kvmnet cannot evaluate exactly.
pub fn unsupported(c: &Compiled) -> Vec<Unsupported> {
    let mut out = vec![];
    for ch in &c.chains {
        let t = &c.tables[ch.table];
        for r in &ch.rules {
            for op in &r.ops {
                let (what, kind) = match op {
                    Op::Unknown { name } => (name.clone(), "unknown"),
                    Op::Meta {
                        key: MetaKey::Unknowable(w),
                        ..
                    } => (w.to_string(), "unknown"),
                    Op::Ct {
                        key: CtKey::Unknowable(w),
                        ..
                    } => (w.to_string(), "unknown"),
                    Op::XtTarget(XtTarget::Unknown { name }) => {
                        (format!("xt target {name}"), "unknown")
                    }
                    Op::Limit { .. } => ("limit (assumed within the rate)".to_string(), "assumed"),
                    _ => continue,
                };
                out.push(Unsupported {
                    family: t.family.to_string(),
                    table: t.name.to_string(),
                    chain: ch.name.to_string(),
                    handle: r.handle,
                    what,
                    kind: kind.into(),
                });
            }
        }
    }
    out
}
