//! kvmnet's own nftables front end: nft JSON (libnftables-json(5), as `nft -j list ruleset`
//! prints it and `nft -j -f` takes it) compiled into the kernel's register-machine expressions,
//! the way nft linearizes rules (payload/meta/ct loads with their protocol dependencies, cmp,
//! bitwise prefix masks, ranges, anonymous sets and verdict maps, NAT with registers). Used when
//! the kernel of this machine or the installed nft cannot load a ruleset (a feature this kernel
//! lacks, syntax newer than the nft binary), and without privileges. What it cannot compile is
//! kept as an `Other` expression naming it, so the simulator reports it instead of guessing.
//! Pure; no I/O.

use serde_json::Value;

use crate::nft::{
    datatype, CmpOp, Expr, NftChain, NftData, NftFamily, NftHook, NftObject, NftRule, NftRuleset,
    NftSet, NftSetElem, NftTable, NftVerdict,
};
use crate::types::Bytes;

/// First 16-byte register (`NFT_REG_1`); 32-bit registers start at `NFT_REG32_00` = 8.
const REG1: u32 = 1;
const REG32_00: u32 = 8;

/// How a value of a field is encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ty {
    Ipv4,
    Ipv6,
    Ether,
    EtherType,
    Proto,
    Service,
    IfName,
    /// Host-endian integer of this many bytes (meta mark, ct mark, fib type...).
    HostInt(u32),
    /// Big-endian integer of this many bytes (packet fields).
    BeInt(u32),
    NfProto,
    CtState,
    CtStatus,
    CtDir,
    TcpFlags,
    IcmpType,
    Icmpv6Type,
    PktType,
    FibAddrType,
    Verdict,
}

impl Ty {
    /// Length in bytes of a value of the type.
    pub fn width(self) -> u32 {
        match self {
            Ty::Ipv4 => 4,
            Ty::Ipv6 => 16,
            Ty::Ether => 6,
            Ty::EtherType | Ty::Service => 2,
            Ty::Proto
            | Ty::NfProto
            | Ty::CtDir
            | Ty::TcpFlags
            | Ty::IcmpType
            | Ty::Icmpv6Type
            | Ty::PktType => 1,
            Ty::IfName => 16,
            Ty::HostInt(n) | Ty::BeInt(n) => n,
            Ty::CtState | Ty::CtStatus | Ty::FibAddrType => 4,
            Ty::Verdict => 4,
        }
    }
    fn is_bitmask(self) -> bool {
        matches!(self, Ty::CtState | Ty::CtStatus | Ty::TcpFlags)
    }
    fn datatype_id(self) -> u32 {
        match self {
            Ty::Ipv4 => datatype::IPV4_ADDR,
            Ty::Ipv6 => datatype::IPV6_ADDR,
            Ty::Ether => datatype::ETHER_ADDR,
            Ty::EtherType => datatype::ETHER_TYPE,
            Ty::Proto => datatype::INET_PROTO,
            Ty::Service => datatype::INET_SERVICE,
            Ty::IfName => datatype::IFNAME,
            Ty::CtState => datatype::CT_STATE,
            Ty::Verdict => datatype::VERDICT,
            Ty::HostInt(4) => datatype::MARK,
            _ => 0,
        }
    }
    fn from_name(name: &str) -> Option<Ty> {
        Some(match name {
            "ipv4_addr" => Ty::Ipv4,
            "ipv6_addr" => Ty::Ipv6,
            "ether_addr" => Ty::Ether,
            "ether_type" => Ty::EtherType,
            "inet_proto" => Ty::Proto,
            "inet_service" => Ty::Service,
            "ifname" => Ty::IfName,
            "mark" | "iface_index" | "integer" | "uid" | "gid" | "classid" | "realm"
            | "devgroup" => Ty::HostInt(4),
            "ct_state" => Ty::CtState,
            "ct_status" => Ty::CtStatus,
            "ct_dir" => Ty::CtDir,
            "tcp_flag" => Ty::TcpFlags,
            "icmp_type" => Ty::IcmpType,
            "icmpv6_type" => Ty::Icmpv6Type,
            "pkt_type" => Ty::PktType,
            "nf_proto" => Ty::NfProto,
            "fib_addrtype" => Ty::FibAddrType,
            "verdict" => Ty::Verdict,
            "vlan_id" => Ty::BeInt(2),
            "dscp" | "ecn" | "ipv4_dscp" => Ty::BeInt(1),
            "time" | "day" | "hour" => Ty::HostInt(8),
            _ => return None,
        })
    }
}

/// Why a JSON ruleset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonRulesetError {
    #[error("line {line}, column {column}: {msg}")]
    Syntax {
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{0}")]
    Structure(String),
}

/// Reads an nft JSON document into `rs` (objects are added, commands applied in order).
pub fn load_json(text: &str, rs: &mut NftRuleset) -> Result<(), JsonRulesetError> {
    let v: Value = serde_json::from_str(text).map_err(|e| JsonRulesetError::Syntax {
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let list = v.get("nftables").and_then(Value::as_array).ok_or_else(|| {
        JsonRulesetError::Structure("the document has no \"nftables\" array".into())
    })?;
    let mut b = Builder { rs };
    for (i, item) in list.iter().enumerate() {
        b.command(item)
            .map_err(|e| JsonRulesetError::Structure(format!("nftables[{i}]: {e}")))?;
    }
    Ok(())
}

struct Builder<'a> {
    rs: &'a mut NftRuleset,
}

fn family(v: &Value) -> Result<NftFamily, String> {
    Ok(
        match v.get("family").and_then(Value::as_str).unwrap_or("ip") {
            "ip" => NftFamily::Ip,
            "ip6" => NftFamily::Ip6,
            "inet" => NftFamily::Inet,
            "arp" => NftFamily::Arp,
            "bridge" => NftFamily::Bridge,
            "netdev" => NftFamily::Netdev,
            f => return Err(format!("unknown family {f:?}")),
        },
    )
}

/// `family`, `table` and `name` of an object that lives in a table.
fn table_and_name(v: &Value) -> Result<(NftFamily, &str, &str), String> {
    Ok((family(v)?, str_of(v, "table")?, str_of(v, "name")?))
}

fn str_of<'v>(v: &'v Value, key: &str) -> Result<&'v str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing \"{key}\""))
}

/// The standard priority names.
pub fn priority_value(name: &str, fam: NftFamily) -> Option<i32> {
    let (base, rest) = match name.find(['+', '-']) {
        Some(i) if i > 0 => (name[..i].trim(), Some(name[i..].replace(' ', ""))),
        _ => (name.trim(), None),
    };
    let b = if fam == NftFamily::Bridge {
        match base {
            "dstnat" => -300,
            "filter" => -200,
            "out" => 100,
            "srcnat" => 300,
            _ => base.parse().ok()?,
        }
    } else {
        match base {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => base.parse().ok()?,
        }
    };
    let off: i32 = match rest {
        Some(r) => r.parse().ok()?,
        None => 0,
    };
    Some(b + off)
}

impl Builder<'_> {
    fn table_mut(&mut self, fam: NftFamily, name: &str) -> &mut NftTable {
        let pos = match self
            .rs
            .tables
            .iter()
            .position(|t| t.family == fam && t.name == name)
        {
            Some(p) => p,
            None => {
                let handle = self.rs.tables.len() as u64 + 1;
                self.rs.tables.push(NftTable {
                    family: fam,
                    name: name.to_string(),
                    handle,
                    flags: vec![],
                    comment: None,
                    chains: vec![],
                    sets: vec![],
                    objects: vec![],
                    flowtables: vec![],
                });
                self.rs.tables.len() - 1
            }
        };
        &mut self.rs.tables[pos]
    }

    fn command(&mut self, item: &Value) -> Result<(), String> {
        let Some(obj) = item.as_object() else {
            return Err("not an object".into());
        };
        let mut keys = obj.iter();
        match (keys.next(), keys.next()) {
            (Some((k, v)), None) => match k.as_str() {
                "metainfo" | "list" | "reset" | "rename" => Ok(()),
                "add" | "create" => self.add(v, false),
                "insert" => self.add(v, true),
                "replace" => self.replace(v),
                "delete" | "destroy" => self.delete(v),
                "flush" => self.flush(v),
                _ => self.add(item, false),
            },
            _ => Err("expected one object or command".into()),
        }
    }

    fn add(&mut self, v: &Value, insert: bool) -> Result<(), String> {
        let Some(obj) = v.as_object() else {
            return Err("not an object".into());
        };
        for (kind, body) in obj {
            match kind.as_str() {
                "table" => {
                    let fam = family(body)?;
                    let name = str_of(body, "name")?.to_string();
                    let t = self.table_mut(fam, &name);
                    if let Some(c) = body.get("comment").and_then(Value::as_str) {
                        t.comment = Some(c.to_string());
                    }
                    if let Some(f) = body.get("flags") {
                        t.flags = strings(f);
                    }
                }
                "chain" => self.add_chain(body)?,
                "rule" => self.add_rule(body, insert)?,
                "set" | "map" => self.add_set(body, kind == "map")?,
                "element" => {
                    let (fam, tn, name) = table_and_name(body)?;
                    let t = self.table_mut(fam, tn);
                    let Some(si) = t.sets.iter().position(|s| s.name == name) else {
                        return Err(format!("element: no set {name} in table {fam} {tn}"));
                    };
                    let elems = body.get("elem").cloned().unwrap_or(Value::Null);
                    let tys = t_set_types(&t.sets[si]);
                    add_elements(&mut t.sets[si], &elems, &tys)?;
                }
                "flowtable" => {
                    let (fam, tn, name) = table_and_name(body)?;
                    let t = self.table_mut(fam, tn);
                    if !t.flowtables.iter().any(|f| f == name) {
                        t.flowtables.push(name.to_string());
                    }
                }
                "counter" | "quota" | "ct helper" | "limit" | "ct timeout" | "ct expectation"
                | "secmark" | "synproxy" | "tunnel" => {
                    let (fam, tn, name) = table_and_name(body)?;
                    let t = self.table_mut(fam, tn);
                    if !t.objects.iter().any(|o| o.kind == *kind && o.name == name) {
                        t.objects.push(NftObject {
                            kind: kind.clone(),
                            name: name.to_string(),
                        });
                    }
                }
                other => return Err(format!("unknown object {other:?}")),
            }
        }
        Ok(())
    }

    fn add_chain(&mut self, body: &Value) -> Result<(), String> {
        let (fam, tn, name) = table_and_name(body)?;
        let hook = match body.get("hook").and_then(Value::as_str) {
            Some(h) => {
                let prio = match body.get("prio") {
                    Some(Value::Number(n)) => n.as_i64().unwrap_or(0) as i32,
                    Some(Value::String(s)) => priority_value(s, fam)
                        .ok_or_else(|| format!("chain {name}: unknown priority {s:?}"))?,
                    _ => 0,
                };
                let devices = match body.get("dev") {
                    Some(Value::String(d)) => vec![d.clone()],
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect(),
                    _ => vec![],
                };
                Some(NftHook {
                    hook: h.to_string(),
                    priority: prio,
                    chain_type: body
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("filter")
                        .to_string(),
                    policy: body
                        .get("policy")
                        .and_then(Value::as_str)
                        .unwrap_or("accept")
                        .to_string(),
                    devices,
                })
            }
            None => None,
        };
        let comment = body
            .get("comment")
            .and_then(Value::as_str)
            .map(str::to_string);
        let t = self.table_mut(fam, tn);
        match t.chains.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                if hook.is_some() {
                    c.hook = hook;
                }
            }
            None => {
                let handle = t.chains.len() as u64 + 1;
                t.chains.push(NftChain {
                    name: name.to_string(),
                    handle,
                    hook,
                    comment,
                    rules: vec![],
                });
            }
        }
        Ok(())
    }

    fn add_rule(&mut self, body: &Value, insert: bool) -> Result<(), String> {
        let fam = family(body)?;
        let (tn, cn) = (str_of(body, "table")?, str_of(body, "chain")?);
        let exprs = body
            .get("expr")
            .and_then(Value::as_array)
            .ok_or("rule: missing \"expr\"")?;
        let t = self.table_mut(fam, tn);
        if t.chain(cn).is_none() {
            return Err(format!("rule: no chain {cn} in table {fam} {tn}"));
        }
        let mut cx = RuleCx {
            fam,
            sets: &mut t.sets,
            set_seq: 0,
            out: vec![],
            skip_deps: false,
        };
        for e in exprs {
            cx.stmt(e);
        }
        let out = std::mem::take(&mut cx.out);
        let next = t
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .map(|r| r.handle)
            .max()
            .unwrap_or(0)
            .max(t.chains.len() as u64 + t.sets.len() as u64)
            + 1;
        let handle = match body.get("handle").and_then(Value::as_u64) {
            Some(h)
                if h > 0
                    && !t
                        .chains
                        .iter()
                        .flat_map(|c| &c.rules)
                        .any(|r| r.handle == h) =>
            {
                h
            }
            _ => next,
        };
        let rule = NftRule {
            handle,
            comment: body
                .get("comment")
                .and_then(Value::as_str)
                .map(str::to_string),
            exprs: out,
        };
        let Some(chain) = t.chains.iter_mut().find(|c| c.name == cn) else {
            return Err(format!("rule: no chain {cn}"));
        };
        let at = body
            .get("index")
            .and_then(Value::as_u64)
            .map(|i| i as usize);
        match (insert, at) {
            (true, Some(i)) => chain.rules.insert(i.min(chain.rules.len()), rule),
            (true, None) => chain.rules.insert(0, rule),
            (false, Some(i)) => chain.rules.insert((i + 1).min(chain.rules.len()), rule),
            (false, None) => chain.rules.push(rule),
        }
        Ok(())
    }

    fn add_set(&mut self, body: &Value, map: bool) -> Result<(), String> {
        let (fam, tn, name) = table_and_name(body)?;
        let key = body
            .get("type")
            .ok_or_else(|| format!("set {name}: missing \"type\""))?;
        let Some(key_tys) = types_of(key, fam) else {
            // a key kvmnet does not model (e.g. `typeof numgen ...`): the set exists, without
            // elements, flagged so lookups into it are reported as not evaluable
            let t = self.table_mut(fam, tn);
            if !t.sets.iter().any(|s| s.name == name) {
                let handle = t.sets.len() as u64 + 1;
                t.sets.push(NftSet {
                    name: name.to_string(),
                    handle,
                    flags: vec!["untyped".into()],
                    key_type: 0,
                    key_len: 0,
                    data_type: None,
                    data_len: None,
                    concat: vec![],
                    elements: vec![],
                });
            }
            return Ok(());
        };
        let data_ty = if map {
            let d = body
                .get("map")
                .ok_or_else(|| format!("map {name}: missing \"map\""))?;
            Some(types_of(d, fam).ok_or_else(|| format!("map {name}: unknown data type {d}"))?)
        } else {
            None
        };
        let mut flags = body.get("flags").map(strings).unwrap_or_default();
        if map {
            flags.push("map".into());
        }
        if key_tys.len() > 1 {
            flags.push("concat".into());
        }
        let mut set = NftSet {
            name: name.to_string(),
            handle: 0,
            flags,
            key_type: key_tys.iter().fold(0, |a, t| (a << 6) | t.datatype_id()),
            key_len: key_tys
                .iter()
                .map(|t| t.width().div_ceil(4) * 4)
                .sum::<u32>()
                .max(1),
            data_type: data_ty.as_ref().map(|d| {
                if d == &[Ty::Verdict] {
                    datatype::VERDICT_MAP
                } else {
                    d.iter().fold(0, |a, t| (a << 6) | t.datatype_id())
                }
            }),
            data_len: data_ty
                .as_ref()
                .map(|d| d.iter().map(|t| t.width().div_ceil(4) * 4).sum()),
            concat: if key_tys.len() > 1 {
                key_tys.iter().map(|t| t.width() as u8).collect()
            } else {
                vec![]
            },
            elements: vec![],
        };
        if key_tys.len() == 1 {
            set.key_len = key_tys[0].width();
        }
        let tys = SetTypes {
            key: key_tys,
            data: data_ty,
        };
        if let Some(e) = body.get("elem") {
            add_elements(&mut set, e, &tys)?;
        }
        let t = self.table_mut(fam, tn);
        set.handle = t.sets.len() as u64 + 1;
        match t.sets.iter_mut().find(|s| s.name == name) {
            Some(s) => s.elements.extend(set.elements),
            None => t.sets.push(set),
        }
        Ok(())
    }

    fn replace(&mut self, v: &Value) -> Result<(), String> {
        if let Some(r) = v.get("rule") {
            let fam = family(r)?;
            let (tn, cn) = (str_of(r, "table")?, str_of(r, "chain")?);
            let h = r
                .get("handle")
                .and_then(Value::as_u64)
                .ok_or("replace rule: missing handle")?;
            self.add_rule(r, false)?;
            let t = self.table_mut(fam, tn);
            if let Some(c) = t.chains.iter_mut().find(|c| c.name == cn) {
                if let Some(new) = c.rules.pop() {
                    match c.rules.iter_mut().find(|x| x.handle == h) {
                        Some(old) => *old = NftRule { handle: h, ..new },
                        None => c.rules.push(new),
                    }
                }
            }
            return Ok(());
        }
        self.add(v, false)
    }

    fn delete(&mut self, v: &Value) -> Result<(), String> {
        let Some(obj) = v.as_object() else {
            return Err("not an object".into());
        };
        for (kind, body) in obj {
            let fam = family(body)?;
            match kind.as_str() {
                "table" => {
                    let name = str_of(body, "name")?;
                    self.rs
                        .tables
                        .retain(|t| !(t.family == fam && t.name == name));
                }
                "chain" => {
                    let (tn, name) = (str_of(body, "table")?, str_of(body, "name")?);
                    self.table_mut(fam, tn).chains.retain(|c| c.name != name);
                }
                "rule" => {
                    let (tn, cn) = (str_of(body, "table")?, str_of(body, "chain")?);
                    let h = body.get("handle").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(c) = self
                        .table_mut(fam, tn)
                        .chains
                        .iter_mut()
                        .find(|c| c.name == cn)
                    {
                        c.rules.retain(|r| r.handle != h);
                    }
                }
                "set" | "map" => {
                    let (tn, name) = (str_of(body, "table")?, str_of(body, "name")?);
                    self.table_mut(fam, tn).sets.retain(|s| s.name != name);
                }
                "flowtable" => {
                    let (tn, name) = (str_of(body, "table")?, str_of(body, "name")?);
                    self.table_mut(fam, tn).flowtables.retain(|f| f != name);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn flush(&mut self, v: &Value) -> Result<(), String> {
        let Some(obj) = v.as_object() else {
            return Err("not an object".into());
        };
        for (kind, body) in obj {
            match kind.as_str() {
                "ruleset" => self.rs.tables.clear(),
                "table" => {
                    let fam = family(body)?;
                    let name = str_of(body, "name")?;
                    for c in &mut self.table_mut(fam, name).chains {
                        c.rules.clear();
                    }
                }
                "chain" => {
                    let (fam, tn, name) = table_and_name(body)?;
                    if let Some(c) = self
                        .table_mut(fam, tn)
                        .chains
                        .iter_mut()
                        .find(|c| c.name == name)
                    {
                        c.rules.clear();
                    }
                }
                "set" | "map" => {
                    let (fam, tn, name) = table_and_name(body)?;
                    if let Some(s) = self
                        .table_mut(fam, tn)
                        .sets
                        .iter_mut()
                        .find(|s| s.name == name)
                    {
                        s.elements.clear();
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

/// Key and data types of a set.
struct SetTypes {
    key: Vec<Ty>,
    data: Option<Vec<Ty>>,
}

/// The types of an existing set, from its recorded datatype ids.
fn t_set_types(s: &NftSet) -> SetTypes {
    fn unpack(id: u32, n: usize, lens: &[u8]) -> Vec<Ty> {
        let by_id = |i: u32, len: u32| match i {
            datatype::IPV4_ADDR => Ty::Ipv4,
            datatype::IPV6_ADDR => Ty::Ipv6,
            datatype::ETHER_ADDR => Ty::Ether,
            datatype::ETHER_TYPE => Ty::EtherType,
            datatype::INET_PROTO => Ty::Proto,
            datatype::INET_SERVICE => Ty::Service,
            datatype::IFNAME => Ty::IfName,
            datatype::CT_STATE => Ty::CtState,
            datatype::VERDICT => Ty::Verdict,
            _ => Ty::HostInt(len),
        };
        if n <= 1 {
            return vec![by_id(id, lens.first().map(|l| u32::from(*l)).unwrap_or(4))];
        }
        (0..n)
            .map(|i| by_id((id >> (6 * (n - 1 - i))) & 0x3f, u32::from(lens[i])))
            .collect()
    }
    let key = if s.concat.is_empty() {
        unpack(s.key_type, 1, &[s.key_len as u8])
    } else {
        unpack(s.key_type, s.concat.len(), &s.concat)
    };
    let data = s.data_type.map(|d| {
        if d == datatype::VERDICT_MAP {
            vec![Ty::Verdict]
        } else {
            unpack(d, 1, &[s.data_len.unwrap_or(4) as u8])
        }
    });
    SetTypes { key, data }
}

/// The types named by a set's `type` / `map` field (a name, a list of names for a
/// concatenation, or `{"typeof": expr}`).
fn types_of(v: &Value, fam: NftFamily) -> Option<Vec<Ty>> {
    match v {
        Value::String(s) => Some(vec![Ty::from_name(s)?]),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().and_then(Ty::from_name))
            .collect(),
        Value::Object(o) => {
            let e = o.get("typeof")?;
            match e.get("concat").and_then(Value::as_array) {
                Some(parts) => parts.iter().map(|p| expr_type(p, fam)).collect(),
                None => Some(vec![expr_type(e, fam)?]),
            }
        }
        _ => None,
    }
}

/// Adds the elements of a set or map.
fn add_elements(set: &mut NftSet, v: &Value, tys: &SetTypes) -> Result<(), String> {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    };
    for e in list {
        let (k, d) = match (&tys.data, e) {
            (Some(_), Value::Array(pair)) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
            _ => (e, None),
        };
        let k = unwrap_elem(k);
        if k.as_str() == Some("*") {
            set.elements.push(NftSetElem {
                key: Bytes(vec![]),
                key_end: None,
                data: d.map(|d| data_value(d, tys)).transpose()?,
                interval_end: false,
                catchall: true,
            });
            continue;
        }
        let (lo, hi) = encode_key(k, &tys.key)?;
        if lo != hi && !set.has_flag("interval") {
            set.flags.push("interval".into());
        }
        set.elements.push(NftSetElem {
            key_end: (lo != hi || set.has_flag("interval")).then(|| Bytes(hi.clone())),
            key: Bytes(lo),
            data: d.map(|d| data_value(d, tys)).transpose()?,
            interval_end: false,
            catchall: false,
        });
    }
    Ok(())
}

fn unwrap_elem(v: &Value) -> &Value {
    match v.get("elem").and_then(|e| e.get("val")) {
        Some(inner) => unwrap_elem(inner),
        None => v,
    }
}

fn data_value(d: &Value, tys: &SetTypes) -> Result<NftData, String> {
    let d = unwrap_elem(d);
    match tys.data.as_deref() {
        Some([Ty::Verdict]) => verdict_of(d)
            .map(NftData::Verdict)
            .ok_or_else(|| format!("not a verdict: {d}")),
        Some(t) => Ok(NftData::Value(Bytes(encode_key(d, t)?.0))),
        None => Err("data in a set".into()),
    }
}

fn verdict_of(v: &Value) -> Option<NftVerdict> {
    let o = v.as_object()?;
    let (k, body) = o.iter().next()?;
    match k.as_str() {
        "accept" | "drop" | "continue" | "return" => Some(NftVerdict {
            kind: k.clone(),
            chain: None,
        }),
        "jump" | "goto" => Some(NftVerdict {
            kind: k.clone(),
            chain: body
                .get("target")
                .and_then(Value::as_str)
                .map(str::to_string),
        }),
        _ => None,
    }
}

/// Encodes a key (a value, prefix, range or concatenation) as an inclusive (low, high) pair of
/// register images, each field padded to 4 bytes when concatenated.
fn encode_key(v: &Value, tys: &[Ty]) -> Result<(Vec<u8>, Vec<u8>), String> {
    if tys.len() > 1 {
        let parts = v
            .get("concat")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("expected a concatenation for {} fields: {v}", tys.len()))?;
        if parts.len() != tys.len() {
            return Err(format!(
                "{} fields in {v}, the type has {}",
                parts.len(),
                tys.len()
            ));
        }
        let (mut lo, mut hi) = (vec![], vec![]);
        for (p, t) in parts.iter().zip(tys) {
            let (mut a, mut b) = encode_range(p, *t)?;
            let pad = (t.width().div_ceil(4) * 4) as usize;
            a.resize(pad, 0);
            b.resize(pad, 0);
            lo.extend(a);
            hi.extend(b);
        }
        return Ok((lo, hi));
    }
    let t = tys.first().copied().ok_or("no type")?;
    encode_range(v, t)
}

/// One field's inclusive range.
fn encode_range(v: &Value, t: Ty) -> Result<(Vec<u8>, Vec<u8>), String> {
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        if r.len() == 2 {
            return Ok((encode(&r[0], t)?, encode(&r[1], t)?));
        }
    }
    if let Some(p) = v.get("prefix") {
        let addr = encode(p.get("addr").ok_or("prefix without addr")?, t)?;
        let len = p
            .get("len")
            .and_then(Value::as_u64)
            .ok_or("prefix without len")? as usize;
        let (mut lo, mut hi) = (addr.clone(), addr);
        for i in 0..lo.len() * 8 {
            if i >= len {
                lo[i / 8] &= !(0x80 >> (i % 8));
                hi[i / 8] |= 0x80 >> (i % 8);
            }
        }
        return Ok((lo, hi));
    }
    if let (Ty::IfName, Some(prefix)) = (t, v.as_str().and_then(|s| s.strip_suffix('*'))) {
        let (mut lo, mut hi) = (prefix.as_bytes().to_vec(), prefix.as_bytes().to_vec());
        lo.resize(16, 0);
        hi.resize(16, 0xff);
        return Ok((lo, hi));
    }
    if let Some(s) = v.as_str() {
        // "10.0.0.0/8" and "1-1024" spelled as strings
        if let Some((a, l)) = s.split_once('/') {
            if let Ok(len) = l.parse::<u64>() {
                return encode_range(&serde_json::json!({"prefix": {"addr": a, "len": len}}), t);
            }
        }
    }
    let x = encode(v, t)?;
    Ok((x.clone(), x))
}

fn named(s: &str, table: &[(&str, u64)]) -> Option<u64> {
    table.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
}

const PROTOS: &[(&str, u64)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("tcp", 6),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("sctp", 132),
    ("udplite", 136),
    ("dccp", 33),
    ("ipip", 4),
    ("ipv6", 41),
    ("ospf", 89),
    ("pim", 103),
    ("vrrp", 112),
    ("l2tp", 115),
    ("comp", 108),
    ("mptcp", 262),
];
const SERVICES: &[(&str, u64)] = &[
    ("ssh", 22),
    ("http", 80),
    ("https", 443),
    ("domain", 53),
    ("bootps", 67),
    ("bootpc", 68),
    ("ftp", 21),
    ("ftp-data", 20),
    ("telnet", 23),
    ("smtp", 25),
    ("ntp", 123),
    ("snmp", 161),
    ("ldap", 389),
    ("imap", 143),
    ("pop3", 110),
    ("tftp", 69),
    ("mysql", 3306),
    ("postgresql", 5432),
    ("http-alt", 8080),
    ("dhcpv6-client", 546),
    ("dhcpv6-server", 547),
    ("submission", 587),
    ("imaps", 993),
    ("pop3s", 995),
    ("microsoft-ds", 445),
    ("rsync", 873),
    ("kerberos", 88),
    ("netbios-ns", 137),
    ("sip", 5060),
    ("domain-s", 853),
];
const ETHERTYPES: &[(&str, u64)] = &[
    ("ip", 0x0800),
    ("ip6", 0x86dd),
    ("arp", 0x0806),
    ("vlan", 0x8100),
    ("8021q", 0x8100),
    ("8021ad", 0x88a8),
    ("rarp", 0x8035),
];
const CT_STATES: &[(&str, u64)] = &[
    ("invalid", 1),
    ("established", 2),
    ("related", 4),
    ("new", 8),
    ("untracked", 64),
];
const CT_STATUS: &[(&str, u64)] = &[
    ("expected", 1),
    ("seen-reply", 2),
    ("assured", 4),
    ("confirmed", 8),
    ("snat", 16),
    ("dnat", 32),
    ("dying", 512),
];
const TCP_FLAGS: &[(&str, u64)] = &[
    ("fin", 1),
    ("syn", 2),
    ("rst", 4),
    ("psh", 8),
    ("ack", 16),
    ("urg", 32),
    ("ecn", 64),
    ("cwr", 128),
];
const ICMP_TYPES: &[(&str, u64)] = &[
    ("echo-reply", 0),
    ("destination-unreachable", 3),
    ("source-quench", 4),
    ("redirect", 5),
    ("echo-request", 8),
    ("router-advertisement", 9),
    ("router-solicitation", 10),
    ("time-exceeded", 11),
    ("parameter-problem", 12),
    ("timestamp-request", 13),
    ("timestamp-reply", 14),
    ("info-request", 15),
    ("info-reply", 16),
    ("address-mask-request", 17),
    ("address-mask-reply", 18),
];
const ICMPV6_TYPES: &[(&str, u64)] = &[
    ("destination-unreachable", 1),
    ("packet-too-big", 2),
    ("time-exceeded", 3),
    ("parameter-problem", 4),
    ("echo-request", 128),
    ("echo-reply", 129),
    ("mld-listener-query", 130),
    ("mld-listener-report", 131),
    ("mld-listener-done", 132),
    ("mld-listener-reduction", 132),
    ("nd-router-solicit", 133),
    ("nd-router-advert", 134),
    ("nd-neighbor-solicit", 135),
    ("nd-neighbor-advert", 136),
    ("nd-redirect", 137),
    ("router-renumbering", 138),
    ("ind-neighbor-solicit", 141),
    ("ind-neighbor-advert", 142),
    ("mld2-listener-report", 143),
];
const PKT_TYPES: &[(&str, u64)] = &[
    ("host", 0),
    ("broadcast", 1),
    ("multicast", 2),
    ("other", 3),
    ("unicast", 0),
];
const FIB_TYPES: &[(&str, u64)] = &[
    ("unspec", 0),
    ("unicast", 1),
    ("local", 2),
    ("broadcast", 3),
    ("anycast", 4),
    ("multicast", 5),
    ("blackhole", 6),
    ("unreachable", 7),
    ("prohibit", 8),
];

fn int_bytes(n: u64, len: u32, big_endian: bool) -> Vec<u8> {
    let b = if big_endian {
        n.to_be_bytes()
    } else {
        n.to_le_bytes()
    };
    if big_endian {
        b[8 - len.min(8) as usize..].to_vec()
    } else {
        b[..len.min(8) as usize].to_vec()
    }
}

fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Encodes one scalar value of a type as the register image nft would produce.
pub fn encode(v: &Value, t: Ty) -> Result<Vec<u8>, String> {
    // flag lists ("established,related" or ["established", "related"]) for bitmask types
    if let Value::Array(a) = v {
        if t.is_bitmask() {
            let mut acc = vec![0u8; t.width() as usize];
            for x in a {
                for (i, b) in encode(x, t)?.into_iter().enumerate() {
                    acc[i] |= b;
                }
            }
            return Ok(acc);
        }
        return Err(format!("a list where one value was expected: {v}"));
    }
    if let Some(parts) = v.get("|").and_then(Value::as_array) {
        let mut acc = vec![0u8; t.width() as usize];
        for x in parts {
            for (i, b) in encode(x, t)?.into_iter().enumerate() {
                if let Some(a) = acc.get_mut(i) {
                    *a |= b;
                }
            }
        }
        return Ok(acc);
    }
    if let Some(n) = v.as_u64() {
        return Ok(match t {
            Ty::Ipv4 | Ty::Ipv6 | Ty::Ether | Ty::IfName => {
                return Err(format!(
                    "a number where an address or name was expected: {n}"
                ))
            }
            Ty::HostInt(l) => int_bytes(n, l, false),
            Ty::CtState | Ty::CtStatus | Ty::FibAddrType => int_bytes(n, 4, false),
            Ty::NfProto => vec![n as u8],
            _ => int_bytes(n, t.width(), true),
        });
    }
    if let Some(b) = v.as_bool() {
        return Ok(int_bytes(u64::from(b), t.width(), false));
    }
    let s = v
        .as_str()
        .ok_or_else(|| format!("cannot use {v} as a value"))?;
    let bad = || format!("{s:?} is not a valid {t:?} value");
    if t.is_bitmask() && s.contains([',', '|']) {
        let parts: Vec<Value> = s
            .split([',', '|'])
            .map(|p| Value::String(p.trim().to_string()))
            .filter(|p| p != "")
            .collect();
        return encode(&Value::Array(parts), t);
    }
    Ok(match t {
        Ty::Ipv4 => s
            .parse::<std::net::Ipv4Addr>()
            .map_err(|_| bad())?
            .octets()
            .to_vec(),
        Ty::Ipv6 => s
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad())?
            .octets()
            .to_vec(),
        Ty::Ether => {
            let b: Vec<u8> = s
                .split(':')
                .filter_map(|x| u8::from_str_radix(x, 16).ok())
                .collect();
            if b.len() != 6 {
                return Err(bad());
            }
            b
        }
        Ty::IfName => {
            let mut b = s.as_bytes().to_vec();
            if b.len() > 15 {
                return Err(bad());
            }
            b.resize(16, 0);
            b
        }
        Ty::EtherType => int_bytes(
            named(s, ETHERTYPES)
                .or_else(|| parse_int(s))
                .ok_or_else(bad)?,
            2,
            true,
        ),
        Ty::Proto => vec![named(s, PROTOS).or_else(|| parse_int(s)).ok_or_else(bad)? as u8],
        Ty::Service => int_bytes(
            named(s, SERVICES)
                .or_else(|| parse_int(s))
                .ok_or_else(bad)?,
            2,
            true,
        ),
        Ty::NfProto => vec![match s {
            "ipv4" => 2,
            "ipv6" => 10,
            _ => parse_int(s).ok_or_else(bad)? as u8,
        }],
        Ty::CtState => int_bytes(named(s, CT_STATES).ok_or_else(bad)?, 4, false),
        Ty::CtStatus => int_bytes(named(s, CT_STATUS).ok_or_else(bad)?, 4, false),
        Ty::CtDir => vec![match s {
            "original" => 0,
            "reply" => 1,
            _ => return Err(bad()),
        }],
        Ty::TcpFlags => vec![named(s, TCP_FLAGS).ok_or_else(bad)? as u8],
        Ty::IcmpType => vec![named(s, ICMP_TYPES)
            .or_else(|| parse_int(s))
            .ok_or_else(bad)? as u8],
        Ty::Icmpv6Type => vec![named(s, ICMPV6_TYPES)
            .or_else(|| parse_int(s))
            .ok_or_else(bad)? as u8],
        Ty::PktType => vec![named(s, PKT_TYPES).ok_or_else(bad)? as u8],
        Ty::FibAddrType => int_bytes(named(s, FIB_TYPES).ok_or_else(bad)?, 4, false),
        Ty::HostInt(l) => int_bytes(parse_int(s).ok_or_else(bad)?, l, false),
        Ty::BeInt(l) => int_bytes(parse_int(s).ok_or_else(bad)?, l, true),
        Ty::Verdict => return Err(bad()),
    })
}

/// A packet field: payload base/offset/len (bytes), an optional mask, and the protocol
/// dependency nft adds.
struct Field {
    base: &'static str,
    offset: u32,
    len: u32,
    mask: Option<Vec<u8>>,
    ty: Ty,
    /// `ip`/`ip6`/`arp`/`vlan` network protocol, or the L4 protocol number.
    l3: Option<&'static str>,
    l4: Option<u8>,
}

fn payload_field(proto: &str, field: &str) -> Option<Field> {
    let f = |base, offset, len, ty| Field {
        base,
        offset,
        len,
        mask: None,
        ty,
        l3: None,
        l4: None,
    };
    let (mut fd, l3, l4) = match (proto, field) {
        ("ether", "daddr") => (f("ll", 0, 6, Ty::Ether), None, None),
        ("ether", "saddr") => (f("ll", 6, 6, Ty::Ether), None, None),
        ("ether", "type") => (f("ll", 12, 2, Ty::EtherType), None, None),
        ("vlan", "id") => {
            let mut x = f("ll", 14, 2, Ty::BeInt(2));
            x.mask = Some(vec![0x0f, 0xff]);
            (x, Some("vlan"), None)
        }
        ("vlan", "type") => (f("ll", 16, 2, Ty::EtherType), Some("vlan"), None),
        ("arp", "operation") => (f("network", 6, 2, Ty::BeInt(2)), Some("arp"), None),
        ("arp", "htype") => (f("network", 0, 2, Ty::BeInt(2)), Some("arp"), None),
        ("arp", "ptype") => (f("network", 2, 2, Ty::EtherType), Some("arp"), None),
        ("arp", "saddr ip") => (f("network", 14, 4, Ty::Ipv4), Some("arp"), None),
        ("arp", "daddr ip") => (f("network", 24, 4, Ty::Ipv4), Some("arp"), None),
        ("arp", "saddr ether") => (f("network", 8, 6, Ty::Ether), Some("arp"), None),
        ("arp", "daddr ether") => (f("network", 18, 6, Ty::Ether), Some("arp"), None),
        ("ip", "length") => (f("network", 2, 2, Ty::BeInt(2)), Some("ip"), None),
        ("ip", "id") => (f("network", 4, 2, Ty::BeInt(2)), Some("ip"), None),
        ("ip", "frag-off") => (f("network", 6, 2, Ty::BeInt(2)), Some("ip"), None),
        ("ip", "ttl") => (f("network", 8, 1, Ty::BeInt(1)), Some("ip"), None),
        ("ip", "protocol") => (f("network", 9, 1, Ty::Proto), Some("ip"), None),
        ("ip", "checksum") => (f("network", 10, 2, Ty::BeInt(2)), Some("ip"), None),
        ("ip", "saddr") => (f("network", 12, 4, Ty::Ipv4), Some("ip"), None),
        ("ip", "daddr") => (f("network", 16, 4, Ty::Ipv4), Some("ip"), None),
        ("ip", "dscp") => {
            let mut x = f("network", 1, 1, Ty::BeInt(1));
            x.mask = Some(vec![0xfc]);
            (x, Some("ip"), None)
        }
        ("ip6", "length") => (f("network", 4, 2, Ty::BeInt(2)), Some("ip6"), None),
        ("ip6", "nexthdr") => (f("network", 6, 1, Ty::Proto), Some("ip6"), None),
        ("ip6", "hoplimit") => (f("network", 7, 1, Ty::BeInt(1)), Some("ip6"), None),
        ("ip6", "saddr") => (f("network", 8, 16, Ty::Ipv6), Some("ip6"), None),
        ("ip6", "daddr") => (f("network", 24, 16, Ty::Ipv6), Some("ip6"), None),
        ("tcp" | "udp" | "udplite" | "sctp" | "dccp" | "th", "sport") => {
            (f("transport", 0, 2, Ty::Service), None, l4_of(proto))
        }
        ("tcp" | "udp" | "udplite" | "sctp" | "dccp" | "th", "dport") => {
            (f("transport", 2, 2, Ty::Service), None, l4_of(proto))
        }
        ("tcp", "sequence") => (f("transport", 4, 4, Ty::BeInt(4)), None, Some(6)),
        ("tcp", "ackseq") => (f("transport", 8, 4, Ty::BeInt(4)), None, Some(6)),
        ("tcp", "flags") => (f("transport", 13, 1, Ty::TcpFlags), None, Some(6)),
        ("tcp", "window") => (f("transport", 14, 2, Ty::BeInt(2)), None, Some(6)),
        ("udp" | "udplite", "length") => (f("transport", 4, 2, Ty::BeInt(2)), None, l4_of(proto)),
        ("icmp", "type") => (f("transport", 0, 1, Ty::IcmpType), None, Some(1)),
        ("icmp", "code") => (f("transport", 1, 1, Ty::BeInt(1)), None, Some(1)),
        ("icmp", "id") => (f("transport", 4, 2, Ty::BeInt(2)), None, Some(1)),
        ("icmp", "sequence") => (f("transport", 6, 2, Ty::BeInt(2)), None, Some(1)),
        ("icmp", "mtu") => (f("transport", 6, 2, Ty::BeInt(2)), None, Some(1)),
        ("icmp", "gateway") => (f("transport", 4, 4, Ty::Ipv4), None, Some(1)),
        ("icmpv6", "type") => (f("transport", 0, 1, Ty::Icmpv6Type), None, Some(58)),
        ("icmpv6", "code") => (f("transport", 1, 1, Ty::BeInt(1)), None, Some(58)),
        ("icmpv6", "mtu") => (f("transport", 4, 4, Ty::BeInt(4)), None, Some(58)),
        ("icmpv6", "id") => (f("transport", 4, 2, Ty::BeInt(2)), None, Some(58)),
        ("icmpv6", "sequence") => (f("transport", 6, 2, Ty::BeInt(2)), None, Some(58)),
        _ => return None,
    };
    fd.l3 = l3;
    fd.l4 = l4;
    Some(fd)
}

fn l4_of(proto: &str) -> Option<u8> {
    match proto {
        "tcp" => Some(6),
        "udp" => Some(17),
        "udplite" => Some(136),
        "sctp" => Some(132),
        "dccp" => Some(33),
        _ => None,
    }
}

fn meta_type(key: &str) -> Option<(String, Ty)> {
    let k = match key {
        "length" => "len",
        "ibrname" | "ibriport" => "bri_iifname",
        "obrname" | "obriport" => "bri_oifname",
        k => k,
    };
    let ty = match k {
        "iifname" | "oifname" | "bri_iifname" | "bri_oifname" | "iifkind" | "oifkind"
        | "sdifname" => Ty::IfName,
        "l4proto" => Ty::Proto,
        "nfproto" => Ty::NfProto,
        "protocol" => Ty::EtherType,
        "pkttype" => Ty::PktType,
        "iiftype" | "oiftype" => Ty::HostInt(2),
        "mark" | "len" | "iif" | "oif" | "iifgroup" | "oifgroup" | "skuid" | "skgid" | "cpu"
        | "priority" | "rtclassid" | "secmark" | "random" | "sdif" | "cgroup" => Ty::HostInt(4),
        "nftrace" | "secpath" => Ty::HostInt(1),
        "time" => Ty::HostInt(8),
        "day" => Ty::HostInt(1),
        "hour" => Ty::HostInt(4),
        _ => return None,
    };
    Some((k.to_string(), ty))
}

fn ct_type(key: &str, fam: NftFamily) -> Option<Ty> {
    Some(match key {
        "state" => Ty::CtState,
        "status" => Ty::CtStatus,
        "direction" => Ty::CtDir,
        "mark" | "expiration" | "zone" | "id" => Ty::HostInt(4),
        "l3proto" | "l3protocol" => Ty::NfProto,
        "protocol" => Ty::Proto,
        "proto-src" | "proto-dst" => Ty::Service,
        "saddr" | "daddr" => {
            if fam == NftFamily::Ip6 {
                Ty::Ipv6
            } else {
                Ty::Ipv4
            }
        }
        "ip saddr" | "ip daddr" => Ty::Ipv4,
        "ip6 saddr" | "ip6 daddr" => Ty::Ipv6,
        "packets" | "bytes" | "avgpkt" => Ty::HostInt(8),
        "helper" => Ty::IfName,
        "label" => Ty::HostInt(16),
        _ => return None,
    })
}

/// The type of an expression (for `typeof` sets and comparisons).
fn expr_type(e: &Value, fam: NftFamily) -> Option<Ty> {
    if let Some(p) = e.get("payload") {
        return payload_field(p.get("protocol")?.as_str()?, p.get("field")?.as_str()?)
            .map(|f| f.ty);
    }
    if let Some(m) = e.get("meta") {
        return meta_type(m.get("key")?.as_str()?).map(|x| x.1);
    }
    if let Some(c) = e.get("ct") {
        let key = c.get("key")?.as_str()?;
        let f = c.get("family").and_then(Value::as_str);
        let key = match f {
            Some(f) => format!("{f} {key}"),
            None => key.to_string(),
        };
        return ct_type(&key, fam);
    }
    if let Some(f) = e.get("fib") {
        return Some(match f.get("result")?.as_str()? {
            "type" => Ty::FibAddrType,
            "oifname" => Ty::IfName,
            _ => Ty::HostInt(4),
        });
    }
    for op in ["&", "|", "^", ">>", "<<"] {
        if let Some(a) = e.get(op).and_then(Value::as_array) {
            return expr_type(a.first()?, fam);
        }
    }
    None
}

/// Compiles one rule.
struct RuleCx<'a> {
    fam: NftFamily,
    sets: &'a mut Vec<NftSet>,
    set_seq: usize,
    out: Vec<Expr>,
    skip_deps: bool,
}

/// A loaded value: its register, types (one per concatenated field) and total length.
struct Loaded {
    reg: u32,
    tys: Vec<Ty>,
}

impl RuleCx<'_> {
    fn other(&mut self, what: String) {
        self.out.push(Expr::Other {
            name: what,
            data: Bytes(vec![]),
        });
    }

    fn stmt(&mut self, s: &Value) {
        let Some((k, body)) = s.as_object().and_then(|o| o.iter().next()) else {
            self.other(format!("statement {s}"));
            return;
        };
        let r = match k.as_str() {
            "match" => self.match_stmt(body),
            "accept" | "drop" | "continue" | "return" | "jump" | "goto" => match verdict_of(s) {
                Some(v) => {
                    self.out.push(Expr::Immediate {
                        dreg: 0,
                        data: NftData::Verdict(v),
                    });
                    Ok(())
                }
                None => Err(format!("verdict {s}")),
            },
            "counter" => {
                if body.is_string() {
                    self.out.push(Expr::Objref {
                        obj_type: 1,
                        name: body.as_str().map(str::to_string),
                    });
                } else {
                    self.out.push(Expr::Counter {
                        packets: 0,
                        bytes: 0,
                    });
                }
                Ok(())
            }
            "log" => {
                self.out.push(Expr::Log {
                    prefix: body
                        .get("prefix")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    group: body.get("group").and_then(Value::as_u64).map(|g| g as u16),
                    level: None,
                });
                Ok(())
            }
            "limit" => {
                let per = match body.get("per").and_then(Value::as_str).unwrap_or("second") {
                    "minute" => 60,
                    "hour" => 3600,
                    "day" => 86400,
                    "week" => 604800,
                    _ => 1,
                };
                self.out.push(Expr::Limit {
                    rate: body.get("rate").and_then(Value::as_u64).unwrap_or(0),
                    unit: per,
                    // nft's default burst: 5 packets (none for byte rates)
                    burst: body.get("burst").and_then(Value::as_u64).unwrap_or(
                        if body
                            .get("rate_unit")
                            .and_then(Value::as_str)
                            .is_some_and(|u| u != "packets")
                        {
                            0
                        } else {
                            5
                        },
                    ) as u32,
                    limit_type: u32::from(
                        body.get("rate_unit")
                            .and_then(Value::as_str)
                            .is_some_and(|u| u != "packets"),
                    ),
                    flags: u32::from(body.get("inv").and_then(Value::as_bool).unwrap_or(false)),
                });
                Ok(())
            }
            "notrack" => {
                self.out.push(Expr::Notrack);
                Ok(())
            }
            "reject" => {
                let kind = body.get("type").and_then(Value::as_str);
                let ty = match kind {
                    Some("tcp reset") => 1,
                    Some("icmpx") => 2,
                    Some(_) => 0,
                    None if matches!(
                        self.fam,
                        NftFamily::Inet | NftFamily::Bridge | NftFamily::Netdev
                    ) =>
                    {
                        2
                    }
                    None => 0,
                };
                let mut codes: &[(&str, u64)] = match (ty, kind) {
                    (2, _) => &[
                        ("no-route", 0),
                        ("port-unreachable", 1),
                        ("host-unreachable", 2),
                        ("admin-prohibited", 3),
                    ],
                    (_, Some("icmpv6")) => &[
                        ("no-route", 0),
                        ("admin-prohibited", 1),
                        ("addr-unreachable", 3),
                        ("port-unreachable", 4),
                        ("policy-fail", 5),
                        ("reject-route", 6),
                    ],
                    _ => &[
                        ("net-unreachable", 0),
                        ("host-unreachable", 1),
                        ("prot-unreachable", 2),
                        ("port-unreachable", 3),
                        ("net-prohibited", 9),
                        ("host-prohibited", 10),
                        ("admin-prohibited", 13),
                    ],
                };
                let v6 = kind == Some("icmpv6") || (kind.is_none() && self.fam == NftFamily::Ip6);
                if v6 && ty == 0 {
                    codes = &[
                        ("no-route", 0),
                        ("admin-prohibited", 1),
                        ("addr-unreachable", 3),
                        ("port-unreachable", 4),
                        ("policy-fail", 5),
                        ("reject-route", 6),
                    ];
                }
                let default = if ty == 2 {
                    1
                } else if v6 {
                    4
                } else {
                    3
                };
                let code = match body.get("expr") {
                    Some(Value::Number(n)) => n.as_u64().unwrap_or(default),
                    Some(Value::String(s)) => {
                        named(s, codes).or_else(|| parse_int(s)).unwrap_or(default)
                    }
                    _ => default,
                };
                self.out.push(Expr::Reject {
                    reject_type: ty,
                    icmp_code: code as u8,
                });
                Ok(())
            }
            "snat" | "dnat" => self.nat(k, body),
            "masquerade" | "redirect" => self.masq(k, body),
            "vmap" => self.vmap(body),
            "mangle" => self.mangle(body),
            "set" | "map" => {
                let name = body
                    .get("set")
                    .or_else(|| body.get("map"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .trim_start_matches('@');
                self.out.push(Expr::Dynset {
                    set: name.to_string(),
                    op: 0,
                    sreg_key: REG1,
                    sreg_data: None,
                });
                Ok(())
            }
            "quota" | "ct helper" | "ct timeout" | "ct expectation" | "secmark" | "synproxy"
            | "tunnel"
                if body.is_string() =>
            {
                let obj_type = match k.as_str() {
                    "quota" => 2,
                    "ct helper" => 3,
                    "tunnel" => 6,
                    "ct timeout" => 7,
                    "secmark" => 8,
                    "ct expectation" => 9,
                    _ => 10,
                };
                self.out.push(Expr::Objref {
                    obj_type,
                    name: body.as_str().map(str::to_string),
                });
                Ok(())
            }
            "__unparsed" => {
                // whether the unread rule can end traversal: it can if it names a verdict or
                // an action that takes the packet
                let text = body.as_str().unwrap_or("");
                let ends = text.split_whitespace().any(|w| {
                    matches!(
                        w,
                        "accept"
                            | "drop"
                            | "reject"
                            | "jump"
                            | "goto"
                            | "return"
                            | "queue"
                            | "masquerade"
                            | "snat"
                            | "dnat"
                            | "redirect"
                            | "vmap"
                            | "synproxy"
                            | "tproxy"
                            | "fwd"
                    )
                });
                self.other(format!(
                    "rule kvmnet cannot read{}: {text}",
                    if ends { "" } else { " (no verdict in it)" }
                ));
                Ok(())
            }
            "__nop" => Ok(()),
            "ct count" | "last" => {
                self.out.push(Expr::Other {
                    name: k.clone(),
                    data: Bytes(vec![]),
                });
                Ok(())
            }
            other => Err(other.to_string()),
        };
        if let Err(what) = r {
            self.other(what);
        }
    }

    /// Loads an expression into a register (with its dependencies), or says what it cannot.
    fn load(&mut self, e: &Value, reg: u32) -> Result<Loaded, String> {
        if let Some(p) = e.get("payload") {
            if let (Some(proto), Some(field)) = (
                p.get("protocol").and_then(Value::as_str),
                p.get("field").and_then(Value::as_str),
            ) {
                let f = payload_field(proto, field)
                    .ok_or_else(|| format!("payload {proto} {field}"))?;
                self.dependency(&f);
                self.out.push(Expr::Payload {
                    base: f.base.into(),
                    offset: f.offset,
                    len: f.len,
                    dreg: reg,
                });
                if let Some(m) = &f.mask {
                    self.out.push(Expr::Bitwise {
                        sreg: reg,
                        dreg: reg,
                        len: f.len,
                        mask: Bytes(m.clone()),
                        xor: Bytes(vec![0; f.len as usize]),
                    });
                }
                return Ok(Loaded {
                    reg,
                    tys: vec![f.ty],
                });
            }
            // raw payload: @ll,offset,len in bits
            let base = match p.get("base").and_then(Value::as_str) {
                Some("ll") => "ll",
                Some("nh") => "network",
                Some("th") => "transport",
                b => return Err(format!("payload base {b:?}")),
            };
            let off = p.get("offset").and_then(Value::as_u64).unwrap_or(0);
            let len = p.get("len").and_then(Value::as_u64).unwrap_or(0);
            if off % 8 != 0 || len % 8 != 0 || len == 0 {
                return Err(format!(
                    "raw payload @{base},{off},{len} (not byte-aligned)"
                ));
            }
            self.out.push(Expr::Payload {
                base: base.into(),
                offset: (off / 8) as u32,
                len: (len / 8) as u32,
                dreg: reg,
            });
            return Ok(Loaded {
                reg,
                tys: vec![Ty::BeInt((len / 8) as u32)],
            });
        }
        if let Some(m) = e.get("meta") {
            let key = m.get("key").and_then(Value::as_str).unwrap_or("");
            let (k, ty) = meta_type(key).ok_or_else(|| format!("meta {key}"))?;
            self.out.push(Expr::Meta { key: k, dreg: reg });
            return Ok(Loaded { reg, tys: vec![ty] });
        }
        if let Some(c) = e.get("ct") {
            let key = c.get("key").and_then(Value::as_str).unwrap_or("");
            let full = match c.get("family").and_then(Value::as_str) {
                Some(f) => format!("{f} {key}"),
                None => key.to_string(),
            };
            let ty = ct_type(&full, self.fam).ok_or_else(|| format!("ct {key}"))?;
            let direction = match c.get("dir").and_then(Value::as_str) {
                Some("original") => Some(0),
                Some("reply") => Some(1),
                _ => None,
            };
            self.out.push(Expr::Ct {
                key: key.to_string(),
                dreg: Some(reg),
                sreg: None,
                direction,
            });
            return Ok(Loaded { reg, tys: vec![ty] });
        }
        if let Some(f) = e.get("fib") {
            let result = match f.get("result").and_then(Value::as_str) {
                Some("oif") => 1,
                Some("oifname") => 2,
                Some("type") => 3,
                r => return Err(format!("fib result {r:?}")),
            };
            let mut flags = 0;
            for fl in f.get("flags").map(strings).unwrap_or_default() {
                flags |= match fl.as_str() {
                    "saddr" => 1,
                    "daddr" => 2,
                    "mark" => 4,
                    "iif" => 8,
                    "oif" => 16,
                    "present" => 32,
                    _ => 0,
                };
            }
            self.out.push(Expr::Fib {
                dreg: reg,
                result,
                flags,
            });
            let ty = match result {
                3 => Ty::FibAddrType,
                2 => Ty::IfName,
                _ => Ty::HostInt(4),
            };
            return Ok(Loaded { reg, tys: vec![ty] });
        }
        if let Some(parts) = e.get("concat").and_then(Value::as_array) {
            // the protocol dependencies of every part first: they use the first register
            for p in parts {
                if let Some(pl) = p.get("payload") {
                    if let (Some(proto), Some(field)) = (
                        pl.get("protocol").and_then(Value::as_str),
                        pl.get("field").and_then(Value::as_str),
                    ) {
                        if let Some(f) = payload_field(proto, field) {
                            self.dependency(&f);
                        }
                    }
                }
            }
            let was = std::mem::replace(&mut self.skip_deps, true);
            let r = self.load_concat(parts, reg);
            self.skip_deps = was;
            return r;
        }
        self.load_rest(e, reg)
    }

    fn load_concat(&mut self, parts: &[Value], reg: u32) -> Result<Loaded, String> {
        {
            let mut r = if reg == REG1 { REG32_00 } else { reg };
            let start = r;
            let mut tys = vec![];
            for p in parts {
                let l = self.load(p, r)?;
                for t in &l.tys {
                    r += t.width().div_ceil(4);
                }
                tys.extend(l.tys);
            }
            Ok(Loaded { reg: start, tys })
        }
    }

    fn load_rest(&mut self, e: &Value, reg: u32) -> Result<Loaded, String> {
        for op in ["&", "|", "^"] {
            if let Some(a) = e.get(op).and_then(Value::as_array) {
                if a.len() != 2 {
                    return Err(format!("binary {op}"));
                }
                let l = self.load(&a[0], reg)?;
                let ty = *l.tys.first().ok_or("binary op")?;
                if l.tys.len() != 1 {
                    return Err(format!("{op} on a concatenation"));
                }
                let val = encode(&a[1], ty)?;
                let n = val.len();
                let (mask, xor) = match op {
                    "&" => (val, vec![0; n]),
                    "|" => (val.iter().map(|b| !b).collect(), val),
                    _ => (vec![0xff; n], val),
                };
                self.out.push(Expr::Bitwise {
                    sreg: reg,
                    dreg: reg,
                    len: n as u32,
                    mask: Bytes(mask),
                    xor: Bytes(xor),
                });
                return Ok(Loaded { reg, tys: vec![ty] });
            }
        }
        let name = e
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_else(|| e.to_string());
        Err(name)
    }

    /// `meta KEY == data`, in the first register.
    fn meta_eq(&mut self, key: &str, data: Vec<u8>) {
        self.out.push(Expr::Meta {
            key: key.into(),
            dreg: REG1,
        });
        self.out.push(Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Eq,
            data: Bytes(data),
        });
    }

    /// The protocol dependency nft inserts before a payload load.
    fn dependency(&mut self, f: &Field) {
        if self.skip_deps {
            return;
        }
        let fam = self.fam;
        let l3 = f.l3.or(match f.l4 {
            Some(1) => Some("ip"),
            Some(58) => Some("ip6"),
            _ => None,
        });
        if l3 == Some("vlan") {
            // `ether type vlan`
            self.out.push(Expr::Payload {
                base: "ll".into(),
                offset: 12,
                len: 2,
                dreg: REG1,
            });
            self.out.push(Expr::Cmp {
                sreg: REG1,
                op: CmpOp::Eq,
                data: Bytes(vec![0x81, 0x00]),
            });
            return;
        }
        if let Some(l3) = l3 {
            match fam {
                NftFamily::Inet => {
                    let v = match l3 {
                        "ip" => 2u8,
                        "ip6" => 10,
                        _ => return,
                    };
                    self.meta_eq("nfproto", vec![v]);
                }
                NftFamily::Bridge | NftFamily::Netdev => {
                    let v: u16 = match l3 {
                        "ip" => 0x0800,
                        "ip6" => 0x86dd,
                        "arp" => 0x0806,
                        _ => return,
                    };
                    self.meta_eq("protocol", v.to_be_bytes().to_vec());
                }
                _ => {}
            }
        }
        if let Some(p) = f.l4 {
            self.meta_eq("l4proto", vec![p]);
        }
    }

    fn new_set(&mut self, tys: &SetTypes, elems: &Value) -> Result<String, String> {
        let mut set = NftSet {
            name: String::new(),
            handle: 0,
            flags: vec!["anonymous".into(), "constant".into()],
            key_type: tys.key.iter().fold(0, |a, t| (a << 6) | t.datatype_id()),
            key_len: if tys.key.len() == 1 {
                tys.key[0].width()
            } else {
                tys.key.iter().map(|t| t.width().div_ceil(4) * 4).sum()
            },
            data_type: tys.data.as_ref().map(|d| {
                if d == &[Ty::Verdict] {
                    datatype::VERDICT_MAP
                } else {
                    d.iter().fold(0, |a, t| (a << 6) | t.datatype_id())
                }
            }),
            data_len: tys.data.as_ref().map(|d| d.iter().map(|t| t.width()).sum()),
            concat: if tys.key.len() > 1 {
                tys.key.iter().map(|t| t.width() as u8).collect()
            } else {
                vec![]
            },
            elements: vec![],
        };
        if tys.data.is_some() {
            set.flags.push("map".into());
        }
        if tys.key.len() > 1 {
            set.flags.push("concat".into());
        }
        // JSON anonymous maps list [key, data] pairs
        add_elements(&mut set, elems, tys)?;
        if set.elements.iter().any(|e| e.key_end.is_some()) && !set.has_flag("interval") {
            set.flags.push("interval".into());
        }
        let mut n = self.set_seq;
        while self.sets.iter().any(|s| s.name == format!("__set{n}")) {
            n += 1;
        }
        self.set_seq = n + 1;
        set.name = format!("__set{n}");
        set.handle = self.sets.len() as u64 + 1;
        self.sets.push(set);
        Ok(format!("__set{n}"))
    }

    fn match_stmt(&mut self, m: &Value) -> Result<(), String> {
        let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
        let left = m.get("left").ok_or("match without left")?;
        let right = m.get("right").ok_or("match without right")?;
        let mark = self.out.len();
        let res = self.match_inner(op, left, right);
        if res.is_err() {
            self.out.truncate(mark);
        }
        res
    }

    fn match_inner(&mut self, op: &str, left: &Value, right: &Value) -> Result<(), String> {
        // `iif "eth0"`: nft resolves the name to its index when it loads the rule; offline the
        // name is what identifies the device
        let by_name;
        let left = match by_device_name(left, right) {
            Some(l) => {
                by_name = l;
                &by_name
            }
            None => left,
        };
        let l = self.load(left, REG1)?;
        let neq = op == "!=";
        // a named set
        if let Some(name) = right.as_str().and_then(|s| s.strip_prefix('@')) {
            self.out.push(Expr::Lookup {
                sreg: l.reg,
                dreg: None,
                set: name.to_string(),
                invert: neq,
            });
            return Ok(());
        }
        // an anonymous set (of one plain value: a comparison, as nft makes it)
        if let Some(one) = right
            .get("set")
            .and_then(Value::as_array)
            .filter(|a| a.len() == 1)
            .map(|a| &a[0])
        {
            let one = unwrap_elem(one);
            let plain = !one.is_object()
                && !one
                    .as_str()
                    .is_some_and(|s| s.contains(['/', '*']) || s.starts_with('@'))
                && !(ty_is_range_word(one));
            if plain && l.tys.len() == 1 {
                let v = encode(one, l.tys[0])?;
                self.out.push(Expr::Cmp {
                    sreg: l.reg,
                    op: if neq { CmpOp::Neq } else { CmpOp::Eq },
                    data: Bytes(v),
                });
                return Ok(());
            }
        }
        if let Some(elems) = right.get("set") {
            let tys = SetTypes {
                key: l.tys.clone(),
                data: None,
            };
            let name = self.new_set(&tys, elems)?;
            self.out.push(Expr::Lookup {
                sreg: l.reg,
                dreg: None,
                set: name,
                invert: neq,
            });
            return Ok(());
        }
        if l.tys.len() > 1 {
            let (lo, hi) = encode_key(right, &l.tys)?;
            if lo != hi {
                return Err("range on a concatenation".into());
            }
            self.out.push(Expr::Cmp {
                sreg: l.reg,
                op: if neq { CmpOp::Neq } else { CmpOp::Eq },
                data: Bytes(lo),
            });
            return Ok(());
        }
        let ty = l.tys[0];
        // `tcp flags & (syn|ack) == syn` compares the masked value as it is
        let masked = ["&", "|", "^"].iter().any(|o| left.get(*o).is_some());
        // flag tests: `ct state established,related`, `tcp flags syn`
        if !masked && ty.is_bitmask() && (neq || op == "in" || (right.is_array() && op != "==")) {
            // any of the flags set (`!=`: none of them)
            let mask = encode(right, ty)?;
            let zero = vec![0; mask.len()];
            self.masked_cmp(l.reg, mask, if neq { CmpOp::Eq } else { CmpOp::Neq }, zero);
            return Ok(());
        }
        if let Some(r) = right.get("range").and_then(Value::as_array) {
            if r.len() != 2 {
                return Err("range".into());
            }
            let (a, b) = (encode(&r[0], ty)?, encode(&r[1], ty)?);
            self.out.push(Expr::Range {
                sreg: l.reg,
                op: if neq { CmpOp::Neq } else { CmpOp::Eq },
                from: Bytes(a),
                to: Bytes(b),
            });
            return Ok(());
        }
        // interface-name wildcards
        if ty == Ty::IfName {
            if let Some(s) = right.as_str() {
                if let Some(prefix) = s.strip_suffix('*').filter(|p| !p.ends_with('\\')) {
                    self.out.push(Expr::Cmp {
                        sreg: l.reg,
                        op: if neq { CmpOp::Neq } else { CmpOp::Eq },
                        data: Bytes(prefix.as_bytes().to_vec()),
                    });
                    return Ok(());
                }
            }
        }
        let is_prefix = right.get("prefix").is_some()
            || right
                .as_str()
                .is_some_and(|s| s.contains('/') && matches!(ty, Ty::Ipv4 | Ty::Ipv6));
        if is_prefix {
            let (lo, hi) = encode_range(right, ty)?;
            if lo == hi {
                self.out.push(Expr::Cmp {
                    sreg: l.reg,
                    op: if neq { CmpOp::Neq } else { CmpOp::Eq },
                    data: Bytes(lo),
                });
                return Ok(());
            }
            let mask: Vec<u8> = lo.iter().zip(&hi).map(|(a, b)| !(a ^ b)).collect();
            self.masked_cmp(l.reg, mask, if neq { CmpOp::Neq } else { CmpOp::Eq }, lo);
            return Ok(());
        }
        let v = encode(right, ty)?;
        let cmp = match op {
            "==" | "in" => CmpOp::Eq,
            "!=" => CmpOp::Neq,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Lte,
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Gte,
            o => return Err(format!("operator {o}")),
        };
        // host-endian integers compare with a byte-order conversion in nft; equality does not
        self.out.push(Expr::Cmp {
            sreg: l.reg,
            op: cmp,
            data: Bytes(v),
        });
        Ok(())
    }

    /// `(reg & mask) op data`.
    fn masked_cmp(&mut self, reg: u32, mask: Vec<u8>, op: CmpOp, data: Vec<u8>) {
        let n = mask.len();
        self.out.push(Expr::Bitwise {
            sreg: reg,
            dreg: reg,
            len: n as u32,
            mask: Bytes(mask),
            xor: Bytes(vec![0; n]),
        });
        self.out.push(Expr::Cmp {
            sreg: reg,
            op,
            data: Bytes(data),
        });
    }

    fn vmap(&mut self, body: &Value) -> Result<(), String> {
        let key = body.get("key").ok_or("vmap without key")?;
        let data = body.get("data").ok_or("vmap without data")?;
        let by_name = by_device_name(key, data);
        let key = by_name.as_ref().unwrap_or(key);
        let mark = self.out.len();
        let l = match self.load(key, REG1) {
            Ok(l) => l,
            Err(e) => {
                self.out.truncate(mark);
                return Err(format!("vmap on {e}"));
            }
        };
        let set = match data.as_str().and_then(|s| s.strip_prefix('@')) {
            Some(n) => n.to_string(),
            None => {
                let elems = data.get("set").unwrap_or(data);
                let tys = SetTypes {
                    key: l.tys.clone(),
                    data: Some(vec![Ty::Verdict]),
                };
                match self.new_set(&tys, elems) {
                    Ok(n) => n,
                    Err(e) => {
                        self.out.truncate(mark);
                        return Err(format!("vmap: {e}"));
                    }
                }
            }
        };
        self.out.push(Expr::Lookup {
            sreg: l.reg,
            dreg: Some(0),
            set,
            invert: false,
        });
        Ok(())
    }

    /// Loads a NAT address or port operand into `reg`: a constant or a map lookup.
    fn operand(&mut self, v: &Value, ty: Ty, reg: u32) -> Result<(u32, Option<u32>), String> {
        if let Some(m) = v.get("map") {
            let key = m.get("key").ok_or("map without key")?;
            let l = self.load(key, reg)?;
            let data = m.get("data").ok_or("map without data")?;
            let set = match data.as_str().and_then(|s| s.strip_prefix('@')) {
                Some(n) => {
                    // a map to address . port (both translated from one lookup) is not modelled
                    if self.sets.iter().any(|s| {
                        s.name == n && s.data_len.is_some_and(|d| d > ty.width().div_ceil(4) * 4)
                    }) {
                        return Err(format!("map @{n} to a concatenation"));
                    }
                    n.to_string()
                }
                None => {
                    let tys = SetTypes {
                        key: l.tys.clone(),
                        data: Some(vec![ty]),
                    };
                    self.new_set(&tys, data.get("set").unwrap_or(data))?
                }
            };
            self.out.push(Expr::Lookup {
                sreg: l.reg,
                dreg: Some(reg),
                set,
                invert: false,
            });
            return Ok((reg, None));
        }
        let (lo, hi) = encode_range(v, ty)?;
        self.out.push(Expr::Immediate {
            dreg: reg,
            data: NftData::Value(Bytes(lo.clone())),
        });
        if lo != hi {
            let r2 = reg + 1;
            self.out.push(Expr::Immediate {
                dreg: r2,
                data: NftData::Value(Bytes(hi)),
            });
            return Ok((reg, Some(r2)));
        }
        Ok((reg, None))
    }

    fn nat(&mut self, kind: &str, body: &Value) -> Result<(), String> {
        let fam = match body.get("family").and_then(Value::as_str) {
            Some("ip6") => 10,
            Some("ip") => 2,
            _ if self.fam == NftFamily::Ip6 => 10,
            _ => 2,
        };
        let aty = if fam == 10 { Ty::Ipv6 } else { Ty::Ipv4 };
        let mark = self.out.len();
        let mut flags = nat_flags(body);
        let mut addr = (None, None);
        if let Some(a) = body.get("addr") {
            match self.operand(a, aty, REG1) {
                Ok((lo, hi)) => {
                    addr = (Some(lo), Some(hi.unwrap_or(lo)));
                    flags |= 1;
                }
                Err(e) => {
                    self.out.truncate(mark);
                    return Err(format!("{kind} to {e}"));
                }
            }
        }
        let mut proto = (None, None);
        if let Some(p) = body.get("port") {
            match self.operand(p, Ty::Service, 3) {
                Ok((lo, hi)) => {
                    proto = (Some(lo), Some(hi.unwrap_or(lo)));
                    flags |= 2;
                }
                Err(e) => {
                    self.out.truncate(mark);
                    return Err(format!("{kind} port {e}"));
                }
            }
        }
        self.out.push(Expr::Nat {
            nat_type: kind.to_string(),
            family: fam,
            addr_min: addr.0,
            addr_max: addr.1,
            proto_min: proto.0,
            proto_max: proto.1,
            flags,
        });
        Ok(())
    }

    fn masq(&mut self, kind: &str, body: &Value) -> Result<(), String> {
        let mut flags = nat_flags(body);
        let mark = self.out.len();
        let mut proto = (None, None);
        if let Some(p) = body.get("port") {
            match self.operand(p, Ty::Service, REG1) {
                Ok((lo, hi)) => {
                    proto = (Some(lo), Some(hi.unwrap_or(lo)));
                    flags |= 2;
                }
                Err(e) => {
                    self.out.truncate(mark);
                    return Err(format!("{kind} to {e}"));
                }
            }
        }
        self.out.push(if kind == "masquerade" {
            Expr::Masq {
                flags,
                proto_min: proto.0,
                proto_max: proto.1,
            }
        } else {
            Expr::Redir {
                flags,
                proto_min: proto.0,
                proto_max: proto.1,
            }
        });
        Ok(())
    }

    fn mangle(&mut self, body: &Value) -> Result<(), String> {
        let key = body.get("key").ok_or("mangle without key")?;
        let value = body.get("value").ok_or("mangle without value")?;
        let mark = self.out.len();
        let res = (|| -> Result<(), String> {
            if let Some(m) = key.get("meta") {
                let k = m.get("key").and_then(Value::as_str).unwrap_or("");
                let (k, ty) = meta_type(k).ok_or_else(|| format!("meta {k} set"))?;
                self.value_into(value, ty, REG1)?;
                self.out.push(Expr::MetaSet { key: k, sreg: REG1 });
                return Ok(());
            }
            if let Some(c) = key.get("ct") {
                let k = c.get("key").and_then(Value::as_str).unwrap_or("");
                let ty = ct_type(k, self.fam).ok_or_else(|| format!("ct {k} set"))?;
                self.value_into(value, ty, REG1)?;
                self.out.push(Expr::Ct {
                    key: k.to_string(),
                    dreg: None,
                    sreg: Some(REG1),
                    direction: None,
                });
                return Ok(());
            }
            if let Some(p) = key.get("payload") {
                let (proto, field) = (
                    p.get("protocol").and_then(Value::as_str).unwrap_or(""),
                    p.get("field").and_then(Value::as_str).unwrap_or(""),
                );
                let f = payload_field(proto, field)
                    .ok_or_else(|| format!("payload {proto} {field} set"))?;
                self.value_into(value, f.ty, REG1)?;
                self.out.push(Expr::PayloadSet {
                    base: f.base.into(),
                    offset: f.offset,
                    len: f.len,
                    sreg: REG1,
                });
                return Ok(());
            }
            Err(format!("mangle of {key}"))
        })();
        if res.is_err() {
            self.out.truncate(mark);
        }
        res
    }

    /// A statement's value: a constant, or an expression loaded from the packet.
    fn value_into(&mut self, v: &Value, ty: Ty, reg: u32) -> Result<(), String> {
        if v.is_object() && v.get("prefix").is_none() && v.get("range").is_none() {
            self.load(v, reg)?;
            return Ok(());
        }
        let b = encode(v, ty)?;
        self.out.push(Expr::Immediate {
            dreg: reg,
            data: NftData::Value(Bytes(b)),
        });
        Ok(())
    }
}

/// `iif "eth0"` / `iif { "lo" }`: nft resolves names to interface indexes when it loads the
/// rule; offline, the name is what identifies the device, so the match is made on the name.
fn by_device_name(left: &Value, right: &Value) -> Option<Value> {
    let k = left.get("meta")?.get("key")?.as_str()?;
    if !matches!(k, "iif" | "oif") {
        return None;
    }
    let is_name = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.parse::<u64>().is_err() && !s.starts_with('@'))
    };
    let named = is_name(right)
        || right.get("set").and_then(Value::as_array).is_some_and(|a| {
            a.iter().any(|e| match e {
                Value::Array(pair) => pair.first().is_some_and(|k| is_name(unwrap_elem(k))),
                e => is_name(unwrap_elem(e)),
            })
        });
    named.then(|| serde_json::json!({"meta": {"key": format!("{k}name")}}))
}

/// `"1-1024"` spelled as one string.
fn ty_is_range_word(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.find('-')
            .is_some_and(|i| i > 0 && s[..i].parse::<u64>().is_ok())
    })
}

fn nat_flags(body: &Value) -> u32 {
    let mut f = 0;
    for fl in body.get("flags").map(strings).unwrap_or_default() {
        f |= match fl.as_str() {
            "random" => 4,
            "persistent" => 8,
            "fully-random" => 16,
            "netmap" => 64,
            _ => 0,
        };
    }
    f
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn load(text: &str) -> NftRuleset {
        let mut rs = NftRuleset::default();
        load_json(text, &mut rs).unwrap();
        rs
    }

    #[test]
    fn rules_compile_like_nft_linearizes_them() {
        let rs = load(
            r#"{"nftables": [
            {"table": {"family": "inet", "name": "f"}},
            {"chain": {"family": "inet", "table": "f", "name": "fwd", "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "inet", "table": "f", "chain": "fwd", "expr": [
                {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                {"accept": null}]}},
            {"rule": {"family": "inet", "table": "f", "chain": "fwd", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [22, "https", {"range": [8000, 8080]}]}}},
                {"counter": null}, {"accept": null}]}},
            {"rule": {"family": "inet", "table": "f", "chain": "fwd", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "vnet*"}},
                {"vmap": {"key": {"meta": {"key": "l4proto"}}, "data": {"set": [["tcp", {"jump": {"target": "tcpchain"}}], ["udp", {"drop": null}]]}}}]}}
            ]}"#,
        );
        let t = &rs.tables[0];
        let r = &t.chains[0].rules;
        assert_eq!(r.len(), 3);
        // ct state established,related: load, mask 6, != 0
        assert!(matches!(&r[0].exprs[1], Expr::Bitwise { mask, .. } if mask.0 == vec![6, 0, 0, 0]));
        assert!(
            matches!(&r[0].exprs[2], Expr::Cmp { op: CmpOp::Neq, data, .. } if data.0 == vec![0; 4])
        );
        // ip saddr 10.0.0.0/8 in inet: nfproto dependency, load 4 bytes at 12, mask, cmp
        assert!(matches!(&r[1].exprs[0], Expr::Meta { key, .. } if key == "nfproto"));
        assert!(matches!(
            &r[1].exprs[2],
            Expr::Payload {
                offset: 12,
                len: 4,
                ..
            }
        ));
        assert!(
            matches!(&r[1].exprs[3], Expr::Bitwise { mask, .. } if mask.0 == vec![255, 0, 0, 0])
        );
        assert!(matches!(&r[1].exprs[4], Expr::Cmp { data, .. } if data.0 == vec![10, 0, 0, 0]));
        // tcp dport { 22, https, 8000-8080 }: l4proto dependency and an interval set
        let Expr::Lookup { set, .. } = &r[1].exprs[8] else {
            panic!("{:?}", r[1].exprs)
        };
        let s = t.set(set).unwrap();
        assert!(s.has_flag("interval") && s.has_flag("anonymous"));
        assert!(s.lookup(&443u16.to_be_bytes()).is_some());
        assert!(s.lookup(&8042u16.to_be_bytes()).is_some());
        assert!(s.lookup(&8081u16.to_be_bytes()).is_none());
        // wildcard and verdict map
        assert!(matches!(&r[2].exprs[1], Expr::Cmp { data, .. } if data.0 == b"vnet".to_vec()));
        let Expr::Lookup {
            set, dreg: Some(0), ..
        } = &r[2].exprs[3]
        else {
            panic!("{:?}", r[2].exprs)
        };
        let m = t.set(set).unwrap();
        assert_eq!(m.data_type, Some(datatype::VERDICT_MAP));
        assert!(
            matches!(&m.lookup(&[6]).unwrap().data, Some(NftData::Verdict(v)) if v.kind == "jump")
        );
    }

    #[test]
    fn nat_and_typed_sets() {
        let rs = load(
            r#"{"nftables": [
            {"add": {"table": {"family": "ip", "name": "nat"}}},
            {"add": {"chain": {"family": "ip", "table": "nat", "name": "pre", "type": "nat", "hook": "prerouting", "prio": "dstnat"}}},
            {"add": {"set": {"family": "ip", "table": "nat", "name": "s", "type": ["ipv4_addr", "inet_service"], "flags": ["interval"],
                "elem": [{"concat": ["10.0.0.0/24", {"range": [1, 1024]}]}]}}},
            {"add": {"rule": {"family": "ip", "table": "nat", "chain": "pre", "expr": [
                {"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"payload": {"protocol": "tcp", "field": "dport"}}]}, "right": "@s"}},
                {"dnat": {"addr": "10.0.0.5", "port": 8080}}]}}},
            {"add": {"rule": {"family": "ip", "table": "nat", "chain": "pre", "expr": [{"xt": {"type": "match", "name": "string"}}]}}}
            ]}"#,
        );
        let t = &rs.tables[0];
        assert_eq!(t.chains[0].hook.as_ref().unwrap().priority, -100);
        let s = t.set("s").unwrap();
        let mut key = vec![10, 0, 0, 7];
        key.extend([0, 22, 0, 0]);
        assert!(s.lookup(&key).is_some());
        key[5] = 0;
        key[4] = 8;
        assert!(s.lookup(&key).is_none(), "port 2048 is outside 1-1024");
        let r = &t.chains[0].rules[0].exprs;
        assert!(
            matches!(r.last().unwrap(), Expr::Nat { nat_type, addr_min: Some(1), proto_min: Some(3), .. } if nat_type == "dnat")
        );
        assert!(matches!(&t.chains[0].rules[1].exprs[0], Expr::Other { name, .. } if name == "xt"));
    }

    #[test]
    fn bad_documents_are_reported() {
        let mut rs = NftRuleset::default();
        let e = load_json("{\"nftables\": [\n{\"table\": }]}", &mut rs).unwrap_err();
        assert!(e.to_string().starts_with("line 2"), "{e}");
        let e = load_json(
            r#"{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": []}}]}"#,
            &mut rs,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no chain c"), "{e}");
        assert!(load_json("[]", &mut rs).is_err());
    }
}
