//! The nftables ruleset in the kernel's own terms: tables, chains, sets and rules whose bodies
//! are the register-machine expressions nf_tables executes (payload/meta/ct loads, cmp, bitwise,
//! lookup, immediate verdicts, NAT...). Read losslessly for every table, whoever owns it:
//! expressions kvmnet does not model are kept as raw attributes. Pure data; no I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::Bytes;

/// The verdict register.
pub const NFT_REG_VERDICT: u32 = 0;

/// An nftables address family.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NftFamily {
    Inet,
    Ip,
    Arp,
    Netdev,
    Bridge,
    Ip6,
}

impl NftFamily {
    /// Maps an `NFPROTO_*` number.
    pub fn from_nfproto(v: u8) -> Option<NftFamily> {
        Some(match v {
            1 => NftFamily::Inet,
            2 => NftFamily::Ip,
            3 => NftFamily::Arp,
            5 => NftFamily::Netdev,
            7 => NftFamily::Bridge,
            10 => NftFamily::Ip6,
            _ => return None,
        })
    }
    /// The `NFPROTO_*` number.
    pub fn nfproto(self) -> u8 {
        match self {
            NftFamily::Inet => 1,
            NftFamily::Ip => 2,
            NftFamily::Arp => 3,
            NftFamily::Netdev => 5,
            NftFamily::Bridge => 7,
            NftFamily::Ip6 => 10,
        }
    }
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            NftFamily::Inet => "inet",
            NftFamily::Ip => "ip",
            NftFamily::Arp => "arp",
            NftFamily::Netdev => "netdev",
            NftFamily::Bridge => "bridge",
            NftFamily::Ip6 => "ip6",
        }
    }
    /// True for families whose hooks see IPv4 packets in the IP stack (`ip`, `inet`).
    pub fn sees_ipv4(self) -> bool {
        matches!(self, NftFamily::Ip | NftFamily::Inet)
    }
}

impl fmt::Display for NftFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole ruleset of one network namespace.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct NftRuleset {
    #[serde(default)]
    pub tables: Vec<NftTable>,
}

/// One nftables table.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftTable {
    pub family: NftFamily,
    pub name: String,
    #[serde(default)]
    pub handle: u64,
    /// `dormant`, `owner`, `persist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub chains: Vec<NftChain>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sets: Vec<NftSet>,
    /// Stateful objects (counters, quotas, ct helpers...) by kind and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<NftObject>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flowtables: Vec<String>,
}

impl NftTable {
    /// Looks up a chain by name.
    pub fn chain(&self, name: &str) -> Option<&NftChain> {
        self.chains.iter().find(|c| c.name == name)
    }
    /// Looks up a set or map by name (anonymous sets are named `__set%d`).
    pub fn set(&self, name: &str) -> Option<&NftSet> {
        self.sets.iter().find(|s| s.name == name)
    }
}

/// A stateful object.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftObject {
    /// `counter`, `quota`, `ct helper`, `limit`, `ct timeout`, `ct expectation`, `synproxy`, ...
    pub kind: String,
    pub name: String,
}

/// Where a base chain is attached.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftHook {
    /// `prerouting`, `input`, `forward`, `output`, `postrouting`, `ingress`, `egress`.
    pub hook: String,
    pub priority: i32,
    /// `filter`, `nat` or `route`.
    #[serde(default = "filter")]
    pub chain_type: String,
    /// `accept` or `drop`.
    #[serde(default = "accept")]
    pub policy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

fn filter() -> String {
    "filter".to_string()
}

fn accept() -> String {
    "accept".to_string()
}

/// A chain; a base chain when `hook` is set.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftChain {
    pub name: String,
    #[serde(default)]
    pub handle: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<NftHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub rules: Vec<NftRule>,
}

/// One rule: a program of expressions run in order until one breaks or sets a verdict.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftRule {
    pub handle: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub exprs: Vec<Expr>,
}

/// A verdict as nf_tables encodes it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftVerdict {
    /// `accept`, `drop`, `continue`, `return`, `jump`, `goto`, `break`, `queue`, `stolen`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
}

impl NftVerdict {
    /// Decodes a kernel verdict code (`NF_*` / `NFT_*`).
    pub fn from_code(code: i32, chain: Option<String>) -> NftVerdict {
        let kind = match code {
            0 => "drop",
            1 => "accept",
            2 => "stolen",
            3 => "queue",
            4 => "repeat",
            -1 => "continue",
            -2 => "break",
            -3 => "jump",
            -4 => "goto",
            -5 => "return",
            c if c & 0xffff == 3 => "queue",
            c if c & 0xffff == 0 => "drop",
            _ => "unknown",
        };
        NftVerdict {
            kind: kind.to_string(),
            chain,
        }
    }
}

impl fmt::Display for NftVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.chain {
            Some(c) => write!(f, "{} {}", self.kind, c),
            None => f.write_str(&self.kind),
        }
    }
}

/// Data held in a register or a set element: raw bytes or a verdict.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NftData {
    Value(Bytes),
    Verdict(NftVerdict),
}

/// Comparison operators (`NFT_CMP_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    /// Maps `NFT_CMP_*`.
    pub fn from_code(v: u32) -> Option<CmpOp> {
        Some(match v {
            0 => CmpOp::Eq,
            1 => CmpOp::Neq,
            2 => CmpOp::Lt,
            3 => CmpOp::Lte,
            4 => CmpOp::Gt,
            5 => CmpOp::Gte,
            _ => return None,
        })
    }
    /// The nft operator text (empty for `==`, which nft omits).
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "",
            CmpOp::Neq => "!= ",
            CmpOp::Lt => "< ",
            CmpOp::Lte => "<= ",
            CmpOp::Gt => "> ",
            CmpOp::Gte => ">= ",
        }
    }
}

/// One nf_tables expression. Register numbers are the kernel's (`NFT_REG_*`, `NFT_REG32_*`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "expr", rename_all = "snake_case")]
pub enum Expr {
    /// Load `len` bytes at `offset` of a header (`ll`, `network`, `transport`, `inner`).
    Payload {
        base: String,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// Write a register into the packet (mangling).
    PayloadSet {
        base: String,
        offset: u32,
        len: u32,
        sreg: u32,
    },
    /// Load packet metadata (`iifname`, `oifname`, `l4proto`, `nfproto`, `mark`, ...).
    Meta {
        key: String,
        dreg: u32,
    },
    /// Set packet metadata from a register.
    MetaSet {
        key: String,
        sreg: u32,
    },
    /// Compare a register with a constant; a mismatch ends the rule.
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Bytes,
    },
    /// Inclusive range check.
    Range {
        sreg: u32,
        op: CmpOp,
        from: Bytes,
        to: Bytes,
    },
    /// `dreg = (sreg & mask) ^ xor` over `len` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Bytes,
        xor: Bytes,
    },
    /// Bit shift of 32-bit words.
    Shift {
        sreg: u32,
        dreg: u32,
        len: u32,
        /// `lshift` or `rshift`.
        op: String,
        amount: u32,
    },
    /// Byte-order conversion.
    Byteorder {
        sreg: u32,
        dreg: u32,
        /// `ntoh` or `hton`.
        op: String,
        len: u32,
        size: u32,
    },
    /// Load a constant or set the verdict.
    Immediate {
        dreg: u32,
        data: NftData,
    },
    /// Set membership test, or map lookup into `dreg` (verdict maps use the verdict register).
    Lookup {
        sreg: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dreg: Option<u32>,
        set: String,
        #[serde(default)]
        invert: bool,
    },
    /// Load (or set) conntrack state (`state`, `status`, `mark`, `direction`, ...).
    Ct {
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dreg: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sreg: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        direction: Option<u8>,
    },
    Counter {
        packets: u64,
        bytes: u64,
    },
    Log {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        level: Option<u32>,
    },
    /// SNAT or DNAT to addresses/ports held in registers.
    Nat {
        /// `snat` or `dnat`.
        nat_type: String,
        family: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr_min: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr_max: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto_min: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto_max: Option<u32>,
        #[serde(default)]
        flags: u32,
    },
    Masq {
        #[serde(default)]
        flags: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto_min: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto_max: Option<u32>,
    },
    Redir {
        #[serde(default)]
        flags: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto_min: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto_max: Option<u32>,
    },
    /// `reject`: type 0 icmp unreachable, 1 tcp reset, 2 icmpx.
    Reject {
        reject_type: u32,
        icmp_code: u8,
    },
    /// FIB lookup: result 1 oif, 2 oifname, 3 addrtype; flags saddr/daddr/mark/iif/oif/present.
    Fib {
        dreg: u32,
        result: u32,
        flags: u32,
    },
    Limit {
        rate: u64,
        unit: u64,
        burst: u32,
        /// 0 packets, 1 bytes.
        limit_type: u32,
        #[serde(default)]
        flags: u32,
    },
    /// Add or update an element of a set from the packet path.
    Dynset {
        set: String,
        op: u32,
        sreg_key: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sreg_data: Option<u32>,
    },
    /// Reference to a stateful object (counter, quota, ct helper...).
    Objref {
        obj_type: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// An iptables match run through the xtables compatibility layer (iptables-nft).
    Match {
        name: String,
        rev: u32,
        info: Bytes,
    },
    /// An iptables target run through the xtables compatibility layer (iptables-nft).
    Target {
        name: String,
        rev: u32,
        info: Bytes,
    },
    Notrack,
    /// Number generator (`numgen random mod N`).
    Numgen {
        dreg: u32,
        modulus: u32,
        ng_type: u32,
        offset: u32,
    },
    /// Extension header / TCP option load.
    Exthdr {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dreg: Option<u32>,
        exthdr_type: u8,
        offset: u32,
        len: u32,
        op: u32,
        flags: u32,
    },
    /// An expression kvmnet keeps but does not model: its name and raw `NFTA_EXPR_DATA`.
    Other {
        name: String,
        data: Bytes,
    },
}

impl Expr {
    /// The expression's kernel name.
    pub fn name(&self) -> &str {
        match self {
            Expr::Payload { .. } | Expr::PayloadSet { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Range { .. } => "range",
            Expr::Bitwise { .. } | Expr::Shift { .. } => "bitwise",
            Expr::Byteorder { .. } => "byteorder",
            Expr::Immediate { .. } => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::Ct { .. } => "ct",
            Expr::Counter { .. } => "counter",
            Expr::Log { .. } => "log",
            Expr::Nat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Redir { .. } => "redir",
            Expr::Reject { .. } => "reject",
            Expr::Fib { .. } => "fib",
            Expr::Limit { .. } => "limit",
            Expr::Dynset { .. } => "dynset",
            Expr::Objref { .. } => "objref",
            Expr::Match { .. } => "match",
            Expr::Target { .. } => "target",
            Expr::Notrack => "notrack",
            Expr::Numgen { .. } => "numgen",
            Expr::Exthdr { .. } => "exthdr",
            Expr::Other { name, .. } => name,
        }
    }
}

/// A set or map.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftSet {
    pub name: String,
    #[serde(default)]
    pub handle: u64,
    /// `anonymous`, `constant`, `interval`, `map`, `timeout`, `eval`, `object`, `concat`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// nft's datatype id of the key (7 ipv4_addr, 8 ipv6_addr, 13 inet_service, ...; concatenations
    /// pack 6 bits per part).
    #[serde(default)]
    pub key_type: u32,
    #[serde(default)]
    pub key_len: u32,
    /// Map data type (`0xffffff00` for verdict maps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_len: Option<u32>,
    /// Byte lengths of each field of a concatenated key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concat: Vec<u8>,
    #[serde(default)]
    pub elements: Vec<NftSetElem>,
}

impl NftSet {
    /// True for a set with the given flag.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// A set element: a key (or interval start), optional interval end, optional mapped data.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NftSetElem {
    pub key: Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_end: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<NftData>,
    /// Marks the end of an interval in sets that encode intervals as start/end pairs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interval_end: bool,
    /// The catch-all element (`*`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catchall: bool,
}

impl NftRuleset {
    /// Every base chain attached to `hook` in tables of the given families, sorted by priority
    /// (the order the kernel runs them in), with its table.
    pub fn base_chains<'a>(
        &'a self,
        families: &[NftFamily],
        hook: &str,
    ) -> Vec<(&'a NftTable, &'a NftChain)> {
        let mut out: Vec<(&NftTable, &NftChain)> = self
            .tables
            .iter()
            .filter(|t| families.contains(&t.family) && !t.flags.iter().any(|f| f == "dormant"))
            .flat_map(|t| t.chains.iter().map(move |c| (t, c)))
            .filter(|(_, c)| c.hook.as_ref().is_some_and(|h| h.hook == hook))
            .collect();
        out.sort_by_key(|(_, c)| c.hook.as_ref().map(|h| h.priority).unwrap_or(0));
        out
    }

    /// Total number of rules in all tables.
    pub fn rule_count(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum()
    }

    /// Looks up a table.
    pub fn table(&self, family: NftFamily, name: &str) -> Option<&NftTable> {
        self.tables
            .iter()
            .find(|t| t.family == family && t.name == name)
    }
}

/// nft datatype ids used in set keys.
pub mod datatype {
    pub const VERDICT: u32 = 1;
    pub const IPV4_ADDR: u32 = 7;
    pub const IPV6_ADDR: u32 = 8;
    pub const ETHER_ADDR: u32 = 9;
    pub const ETHER_TYPE: u32 = 10;
    pub const INET_PROTO: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const MARK: u32 = 19;
    pub const IFINDEX: u32 = 20;
    pub const IFNAME: u32 = 41;
    pub const CT_STATE: u32 = 24;
    /// Map data type of verdict maps.
    pub const VERDICT_MAP: u32 = 0xffff_ff00;
}

impl NftSet {
    /// Finds the element matching `key` (the register bytes, `key_len` long) the way the
    /// kernel's set backends do: exact match for hash sets, "greatest start <= key and not an
    /// end marker" for interval (rbtree) sets, field-wise `key <= x <= key_end` for concatenated
    /// intervals (pipapo). The catch-all element matches when nothing else does.
    pub fn lookup(&self, key: &[u8]) -> Option<&NftSetElem> {
        let klen = (self.key_len as usize).min(key.len());
        let key = &key[..klen];
        let found = if self.has_flag("interval") {
            if self.elements.iter().any(|e| e.key_end.is_some()) {
                let fields = self.field_lens();
                self.elements.iter().find(|e| {
                    !e.catchall
                        && match &e.key_end {
                            Some(end) => {
                                in_range_fieldwise(key, e.key.as_slice(), end.as_slice(), &fields)
                            }
                            None => e.key.as_slice() == key,
                        }
                })
            } else {
                self.elements
                    .iter()
                    .filter(|e| !e.catchall && e.key.as_slice() <= key)
                    .max_by(|a, b| {
                        a.key
                            .as_slice()
                            .cmp(b.key.as_slice())
                            // a start and an end marker on the same key: the start wins
                            .then_with(|| b.interval_end.cmp(&a.interval_end))
                    })
                    .filter(|e| !e.interval_end)
            }
        } else {
            self.elements
                .iter()
                .find(|e| !e.catchall && e.key.as_slice() == key)
        };
        found.or_else(|| self.elements.iter().find(|e| e.catchall))
    }

    /// Byte lengths of each key field, padded to 4 bytes as registers hold them.
    pub fn field_lens(&self) -> Vec<usize> {
        if self.concat.is_empty() {
            vec![self.key_len as usize]
        } else {
            self.concat
                .iter()
                .map(|l| (usize::from(*l)).div_ceil(4) * 4)
                .collect()
        }
    }

    /// The elements as inclusive `(start, end)` ranges (hash sets: `start == end`), for display.
    pub fn ranges(&self) -> Vec<(Vec<u8>, Vec<u8>, Option<&NftData>)> {
        let mut out = vec![];
        if self.has_flag("interval") && !self.elements.iter().any(|e| e.key_end.is_some()) {
            let mut sorted: Vec<&NftSetElem> =
                self.elements.iter().filter(|e| !e.catchall).collect();
            sorted.sort_by(|a, b| {
                a.key
                    .as_slice()
                    .cmp(b.key.as_slice())
                    .then_with(|| b.interval_end.cmp(&a.interval_end))
            });
            let mut i = 0;
            while i < sorted.len() {
                let e = sorted[i];
                if e.interval_end {
                    i += 1;
                    continue;
                }
                let end = match sorted.get(i + 1) {
                    Some(n) if n.interval_end => {
                        i += 1;
                        decrement(n.key.as_slice())
                    }
                    _ => vec![0xff; e.key.0.len()],
                };
                out.push((e.key.0.clone(), end, e.data.as_ref()));
                i += 1;
            }
        } else {
            for e in self.elements.iter().filter(|e| !e.catchall) {
                let end = e.key_end.as_ref().unwrap_or(&e.key);
                out.push((e.key.0.clone(), end.0.clone(), e.data.as_ref()));
            }
        }
        out
    }
}

fn in_range_fieldwise(key: &[u8], lo: &[u8], hi: &[u8], fields: &[usize]) -> bool {
    let mut at = 0;
    for &len in fields {
        let end = (at + len).min(key.len());
        let (k, l, h) = (key.get(at..end), lo.get(at..end), hi.get(at..end));
        match (k, l, h) {
            (Some(k), Some(l), Some(h)) if l <= k && k <= h => {}
            _ => return false,
        }
        at = end;
    }
    true
}

/// Big-endian decrement (the inclusive end of an interval whose exclusive end is `b`).
fn decrement(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    for byte in v.iter_mut().rev() {
        if *byte == 0 {
            *byte = 0xff;
        } else {
            *byte -= 1;
            break;
        }
    }
    v
}

#[cfg(test)]
mod set_tests {
    use super::*;

    fn elem(key: &[u8], end: bool) -> NftSetElem {
        NftSetElem {
            key: Bytes(key.to_vec()),
            key_end: None,
            data: None,
            interval_end: end,
            catchall: false,
        }
    }

    #[test]
    fn rbtree_interval_lookup() {
        // 10.0.0.0/24 encoded as start 10.0.0.0 and end marker 10.0.1.0
        let set = NftSet {
            name: "s".into(),
            handle: 1,
            flags: vec!["interval".into()],
            key_type: datatype::IPV4_ADDR,
            key_len: 4,
            data_type: None,
            data_len: None,
            concat: vec![],
            elements: vec![elem(&[10, 0, 1, 0], true), elem(&[10, 0, 0, 0], false)],
        };
        assert!(set.lookup(&[10, 0, 0, 7]).is_some());
        assert!(set.lookup(&[10, 0, 0, 255]).is_some());
        assert!(set.lookup(&[10, 0, 1, 0]).is_none());
        assert!(set.lookup(&[9, 255, 255, 255]).is_none());
        let r = set.ranges();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1, vec![10, 0, 0, 255]);
    }

    #[test]
    fn hash_and_catchall() {
        let mut set = NftSet {
            name: "s".into(),
            handle: 1,
            flags: vec![],
            key_type: datatype::INET_SERVICE,
            key_len: 2,
            data_type: None,
            data_len: None,
            concat: vec![],
            elements: vec![elem(&[0, 22], false)],
        };
        assert!(set.lookup(&[0, 22, 0, 0]).is_some());
        assert!(set.lookup(&[0, 80]).is_none());
        set.elements.push(NftSetElem {
            key: Bytes(vec![]),
            key_end: None,
            data: None,
            interval_end: false,
            catchall: true,
        });
        assert!(set.lookup(&[0, 80]).unwrap().catchall);
    }
}
