//! nf_tables dumps (NFT_MSG_GET*) and their decoding into the model.

use std::collections::HashMap;

use kvmnet_model::nft::{
    CmpOp, Expr, NftChain, NftData, NftFamily, NftHook, NftObject, NftRule, NftRuleset, NftSet,
    NftSetElem, NftTable, NftVerdict,
};
use kvmnet_model::Bytes;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::attr::{put_attr, Attr, AttrIter};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_GETGEN: u16 = 16;
const NFT_MSG_GETOBJ: u16 = 19;
const NFT_MSG_GETFLOWTABLE: u16 = 23;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

/// A blocking NETLINK_NETFILTER socket.
struct NfSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// One nfnetlink message: its nfgen family and attributes (borrowed from the receive buffer).
struct NfMsg<'a> {
    family: u8,
    payload: &'a [u8],
}

impl<'a> NfMsg<'a> {
    fn attrs(&self) -> AttrIter<'a> {
        AttrIter { buf: self.payload }
    }
}

impl NfSocket {
    fn open() -> Result<NfSocket, Error> {
        let mut sock =
            Socket::new(NETLINK_NETFILTER).map_err(|e| Error::io("nfnetlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::io("nfnetlink bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("nfnetlink connect", e))?;
        let _ = sock.set_rx_buf_sz(8 * 1024 * 1024);
        Ok(NfSocket {
            sock,
            seq: 0,
            buf: vec![0u8; 1 << 20],
        })
    }

    /// Sends a GET request (dump or single) and hands each reply to `each`, straight from the
    /// receive buffer (a 10,000-rule dump is never copied as a whole).
    fn request(
        &mut self,
        msg: u16,
        family: u8,
        attrs: &[u8],
        dump: bool,
        what: &'static str,
        mut each: impl FnMut(NfMsg<'_>),
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + 4 + attrs.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&self.seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[family, 0, 0, 0]);
        req.extend_from_slice(attrs);
        self.sock.send(&req, 0).map_err(|e| Error::io(what, e))?;

        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::io(what, e))?;
            let mut off = 0;
            while off + 16 <= n {
                let b = &self.buf[off..n];
                let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let mtype = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if mlen < 16 || mlen > b.len() {
                    return Err(Error::Decode(what, "bad netlink message length".into()));
                }
                off += (mlen + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                match mtype {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = b
                            .get(16..20)
                            .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                            .unwrap_or(0);
                        if code != 0 {
                            return Err(Error::netlink(what, code));
                        }
                        return Ok(());
                    }
                    _ => {
                        if mlen < 20 {
                            continue;
                        }
                        each(NfMsg {
                            family: b[16],
                            payload: &b[20..mlen],
                        });
                        if !dump {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

fn hook_name(family: NftFamily, num: u32) -> String {
    match family {
        NftFamily::Netdev => match num {
            0 => "ingress",
            1 => "egress",
            _ => "unknown",
        },
        NftFamily::Arp => match num {
            0 => "input",
            1 => "output",
            2 => "forward",
            _ => "unknown",
        },
        _ => match num {
            0 => "prerouting",
            1 => "input",
            2 => "forward",
            3 => "output",
            4 => "postrouting",
            5 => "ingress",
            _ => "unknown",
        },
    }
    .to_string()
}

fn userdata_comment(ud: &[u8]) -> Option<String> {
    // TLVs of (u8 type, u8 len, value); type 0 is the comment in tables, chains and rules.
    let mut i = 0;
    while i + 2 <= ud.len() {
        let (t, l) = (ud[i], ud[i + 1] as usize);
        let v = ud.get(i + 2..i + 2 + l)?;
        if t == 0 {
            let end = v.iter().position(|c| *c == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
        i += 2 + l;
    }
    None
}

fn decode_data(a: &Attr) -> Option<NftData> {
    for d in a.nested() {
        match d.kind {
            1 => return Some(NftData::Value(Bytes(d.value.to_vec()))),
            2 => {
                let mut code = 0i32;
                let mut chain = None;
                for v in d.nested() {
                    match v.kind {
                        1 => code = v.be32().unwrap_or(0) as i32,
                        2 => chain = Some(v.string()),
                        _ => {}
                    }
                }
                return Some(NftData::Verdict(NftVerdict::from_code(code, chain)));
            }
            _ => {}
        }
    }
    None
}

fn data_bytes(a: &Attr) -> Bytes {
    match decode_data(a) {
        Some(NftData::Value(b)) => b,
        _ => Bytes::default(),
    }
}

const META_KEYS: &[&str] = &[
    "len",
    "protocol",
    "priority",
    "mark",
    "iif",
    "oif",
    "iifname",
    "oifname",
    "iiftype",
    "oiftype",
    "skuid",
    "skgid",
    "nftrace",
    "rtclassid",
    "secmark",
    "nfproto",
    "l4proto",
    "bri_iifname",
    "bri_oifname",
    "pkttype",
    "cpu",
    "iifgroup",
    "oifgroup",
    "cgroup",
    "random",
    "secpath",
    "iifkind",
    "oifkind",
    "bri_iifpvid",
    "bri_iifvproto",
    "time",
    "day",
    "hour",
    "sdif",
    "sdifname",
    "broute",
];

const CT_KEYS: &[&str] = &[
    "state",
    "direction",
    "status",
    "mark",
    "secmark",
    "expiration",
    "helper",
    "l3protocol",
    "saddr",
    "daddr",
    "protocol",
    "proto-src",
    "proto-dst",
    "label",
    "packets",
    "bytes",
    "avgpkt",
    "zone",
    "event",
    "ip saddr",
    "ip daddr",
    "ip6 saddr",
    "ip6 daddr",
    "id",
];

fn key_name(table: &[&str], k: u32) -> String {
    table
        .get(k as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("key{k}"))
}

fn decode_expr(name: &str, data: &[u8]) -> Expr {
    let attrs: Vec<Attr> = AttrIter { buf: data }.collect();
    let get = |k: u16| attrs.iter().find(|a| a.kind == k);
    let u32_of = |k: u16| get(k).and_then(|a| a.be32());
    let other = || Expr::Other {
        name: name.to_string(),
        data: Bytes(data.to_vec()),
    };
    match name {
        "immediate" => match (u32_of(1), get(2).and_then(decode_data)) {
            (Some(dreg), Some(data)) => Expr::Immediate { dreg, data },
            _ => other(),
        },
        "cmp" => match (u32_of(1), u32_of(2).and_then(CmpOp::from_code), get(3)) {
            (Some(sreg), Some(op), Some(d)) => Expr::Cmp {
                sreg,
                op,
                data: data_bytes(d),
            },
            _ => other(),
        },
        "payload" => {
            let base = match u32_of(2) {
                Some(0) => "ll",
                Some(1) => "network",
                Some(2) => "transport",
                Some(3) => "inner",
                Some(4) => "tunnel",
                _ => return other(),
            }
            .to_string();
            let (offset, len) = (u32_of(3).unwrap_or(0), u32_of(4).unwrap_or(0));
            match (u32_of(1), u32_of(5)) {
                (Some(dreg), _) => Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                },
                (None, Some(sreg)) => Expr::PayloadSet {
                    base,
                    offset,
                    len,
                    sreg,
                },
                _ => other(),
            }
        }
        "meta" => {
            let key = key_name(META_KEYS, u32_of(2).unwrap_or(u32::MAX));
            match (u32_of(1), u32_of(3)) {
                (Some(dreg), _) => Expr::Meta { key, dreg },
                (None, Some(sreg)) => Expr::MetaSet { key, sreg },
                _ => other(),
            }
        }
        "bitwise" => {
            let (Some(sreg), Some(dreg), Some(len)) = (u32_of(1), u32_of(2), u32_of(3)) else {
                return other();
            };
            match u32_of(6).unwrap_or(0) {
                0 => Expr::Bitwise {
                    sreg,
                    dreg,
                    len,
                    mask: get(4).map(data_bytes).unwrap_or_default(),
                    xor: get(5).map(data_bytes).unwrap_or_default(),
                },
                op @ (1 | 2) => {
                    let amount = get(7)
                        .map(data_bytes)
                        .and_then(|b| {
                            b.0.get(..4)
                                .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
                        })
                        .unwrap_or(0);
                    Expr::Shift {
                        sreg,
                        dreg,
                        len,
                        op: if op == 1 { "lshift" } else { "rshift" }.into(),
                        amount,
                    }
                }
                _ => other(),
            }
        }
        "byteorder" => match (u32_of(1), u32_of(2), u32_of(3), u32_of(4), u32_of(5)) {
            (Some(sreg), Some(dreg), Some(op), Some(len), Some(size)) => Expr::Byteorder {
                sreg,
                dreg,
                op: if op == 0 { "ntoh" } else { "hton" }.into(),
                len,
                size,
            },
            _ => other(),
        },
        "lookup" => match (get(1), u32_of(2)) {
            (Some(set), Some(sreg)) => Expr::Lookup {
                sreg,
                dreg: u32_of(3),
                set: set.string(),
                invert: u32_of(5).unwrap_or(0) & 1 != 0,
            },
            _ => other(),
        },
        "range" => match (u32_of(1), u32_of(2), get(3), get(4)) {
            (Some(sreg), Some(op), Some(f), Some(t)) => Expr::Range {
                sreg,
                op: if op == 0 { CmpOp::Eq } else { CmpOp::Neq },
                from: data_bytes(f),
                to: data_bytes(t),
            },
            _ => other(),
        },
        "ct" => Expr::Ct {
            key: key_name(CT_KEYS, u32_of(2).unwrap_or(u32::MAX)),
            dreg: u32_of(1),
            sreg: u32_of(4),
            direction: get(3).and_then(|a| a.value.first().copied()),
        },
        "counter" => Expr::Counter {
            bytes: get(1).and_then(|a| a.be64()).unwrap_or(0),
            packets: get(2).and_then(|a| a.be64()).unwrap_or(0),
        },
        "log" => Expr::Log {
            group: get(1).and_then(|a| a.be16()),
            prefix: get(2).map(|a| a.string()),
            level: u32_of(5),
        },
        "nat" => Expr::Nat {
            nat_type: if u32_of(1) == Some(1) { "dnat" } else { "snat" }.into(),
            family: u32_of(2).unwrap_or(2) as u8,
            addr_min: u32_of(3),
            addr_max: u32_of(4),
            proto_min: u32_of(5),
            proto_max: u32_of(6),
            flags: u32_of(7).unwrap_or(0),
        },
        "masq" => Expr::Masq {
            flags: u32_of(1).unwrap_or(0),
            proto_min: u32_of(2),
            proto_max: u32_of(3),
        },
        "redir" => Expr::Redir {
            proto_min: u32_of(1),
            proto_max: u32_of(2),
            flags: u32_of(3).unwrap_or(0),
        },
        "reject" => Expr::Reject {
            reject_type: u32_of(1).unwrap_or(0),
            icmp_code: get(2).and_then(|a| a.value.first().copied()).unwrap_or(0),
        },
        "fib" => match (u32_of(1), u32_of(2), u32_of(3)) {
            (Some(dreg), Some(result), Some(flags)) => Expr::Fib {
                dreg,
                result,
                flags,
            },
            _ => other(),
        },
        "limit" => Expr::Limit {
            rate: get(1).and_then(|a| a.be64()).unwrap_or(0),
            unit: get(2).and_then(|a| a.be64()).unwrap_or(0),
            burst: u32_of(3).unwrap_or(0),
            limit_type: u32_of(4).unwrap_or(0),
            flags: u32_of(5).unwrap_or(0),
        },
        "dynset" => match (get(1), u32_of(3), u32_of(4)) {
            (Some(set), Some(op), Some(sreg_key)) => Expr::Dynset {
                set: set.string(),
                op,
                sreg_key,
                sreg_data: u32_of(5),
            },
            _ => other(),
        },
        "objref" => Expr::Objref {
            obj_type: u32_of(1).unwrap_or(0),
            name: get(2).or(get(4)).map(|a| a.string()),
        },
        "match" | "target" => {
            let n = get(1).map(|a| a.string()).unwrap_or_default();
            let rev = u32_of(2).unwrap_or(0);
            let info = Bytes(get(3).map(|a| a.value.to_vec()).unwrap_or_default());
            if name == "match" {
                Expr::Match { name: n, rev, info }
            } else {
                Expr::Target { name: n, rev, info }
            }
        }
        "notrack" => Expr::Notrack,
        "numgen" => match (u32_of(1), u32_of(2)) {
            (Some(dreg), Some(modulus)) => Expr::Numgen {
                dreg,
                modulus,
                ng_type: u32_of(3).unwrap_or(0),
                offset: u32_of(4).unwrap_or(0),
            },
            _ => other(),
        },
        "exthdr" => Expr::Exthdr {
            dreg: u32_of(1),
            exthdr_type: get(2).and_then(|a| a.value.first().copied()).unwrap_or(0),
            offset: u32_of(3).unwrap_or(0),
            len: u32_of(4).unwrap_or(0),
            flags: u32_of(5).unwrap_or(0),
            op: u32_of(6).unwrap_or(0),
        },
        _ => other(),
    }
}

fn decode_rule(msg: &NfMsg) -> Option<(String, String, NftRule)> {
    let mut table = None;
    let mut chain = None;
    let mut rule = NftRule {
        handle: 0,
        comment: None,
        exprs: vec![],
    };
    for a in msg.attrs() {
        match a.kind {
            1 => table = Some(a.string()),
            2 => chain = Some(a.string()),
            3 => rule.handle = a.be64().unwrap_or(0),
            4 => {
                for elem in a.nested() {
                    let mut name = String::new();
                    let mut data: &[u8] = &[];
                    for e in elem.nested() {
                        match e.kind {
                            1 => name = e.string(),
                            2 => data = e.value,
                            _ => {}
                        }
                    }
                    rule.exprs.push(decode_expr(&name, data));
                }
            }
            7 => rule.comment = userdata_comment(a.value),
            _ => {}
        }
    }
    Some((table?, chain?, rule))
}

fn set_flags(f: u32) -> Vec<String> {
    let mut out = vec![];
    for (bit, n) in [
        (1, "anonymous"),
        (2, "constant"),
        (4, "interval"),
        (8, "map"),
        (0x10, "timeout"),
        (0x20, "eval"),
        (0x40, "object"),
        (0x80, "concat"),
    ] {
        if f & bit != 0 {
            out.push(n.to_string());
        }
    }
    out
}

fn decode_set(msg: &NfMsg) -> Option<(String, NftSet)> {
    let mut table = None;
    let mut set = NftSet {
        name: String::new(),
        handle: 0,
        flags: vec![],
        key_type: 0,
        key_len: 0,
        data_type: None,
        data_len: None,
        concat: vec![],
        elements: vec![],
    };
    for a in msg.attrs() {
        match a.kind {
            1 => table = Some(a.string()),
            2 => set.name = a.string(),
            3 => set.flags = set_flags(a.be32().unwrap_or(0)),
            4 => set.key_type = a.be32().unwrap_or(0),
            5 => set.key_len = a.be32().unwrap_or(0),
            6 => set.data_type = a.be32(),
            7 => set.data_len = a.be32(),
            9 => {
                for d in a.nested() {
                    if d.kind == 2 {
                        for elem in d.nested() {
                            for f in elem.nested() {
                                if f.kind == 1 {
                                    set.concat.push(f.be32().unwrap_or(0) as u8);
                                }
                            }
                        }
                    }
                }
            }
            16 => set.handle = a.be64().unwrap_or(0),
            _ => {}
        }
    }
    Some((table?, set))
}

fn decode_elems(msg: &NfMsg, out: &mut Vec<NftSetElem>) {
    for a in msg.attrs() {
        if a.kind != 3 {
            continue;
        }
        for elem in a.nested() {
            let mut e = NftSetElem {
                key: Bytes::default(),
                key_end: None,
                data: None,
                interval_end: false,
                catchall: false,
            };
            for f in elem.nested() {
                match f.kind {
                    1 => e.key = data_bytes(&f),
                    2 => e.data = decode_data(&f),
                    3 => {
                        let flags = f.be32().unwrap_or(0);
                        e.interval_end = flags & 1 != 0;
                        e.catchall = flags & 2 != 0;
                    }
                    10 => e.key_end = Some(data_bytes(&f)),
                    _ => {}
                }
            }
            out.push(e);
        }
    }
}

fn obj_kind(t: u32) -> String {
    match t {
        1 => "counter",
        2 => "quota",
        3 => "ct helper",
        4 => "limit",
        5 => "connlimit",
        6 => "tunnel",
        7 => "ct timeout",
        8 => "secmark",
        9 => "ct expectation",
        10 => "synproxy",
        _ => "object",
    }
    .to_string()
}

fn generation(sock: &mut NfSocket) -> Option<u32> {
    let mut gen = None;
    sock.request(NFT_MSG_GETGEN, 0, &[], false, "nftables generation", |m| {
        gen = m.attrs().find(|a| a.kind == 1).and_then(|a| a.be32());
    })
    .ok()?;
    gen
}

/// Dumps the whole ruleset of the calling thread's namespace. Retries when the ruleset changes
/// during the dump (generation id moved), so the result is one consistent generation.
pub fn dump_ruleset() -> Result<NftRuleset, Error> {
    let mut sock = NfSocket::open()?;
    let mut last = None;
    for _ in 0..3 {
        let before = generation(&mut sock);
        let rs = dump_once(&mut sock)?;
        if before.is_some() && generation(&mut sock) == before {
            return Ok(rs);
        }
        last = Some(rs);
    }
    last.ok_or(Error::Decode("nftables", "ruleset kept changing".into()))
}

fn decode_table(m: &NfMsg) -> Option<NftTable> {
    let family = NftFamily::from_nfproto(m.family)?;
    let mut t = NftTable {
        family,
        name: String::new(),
        handle: 0,
        flags: vec![],
        comment: None,
        chains: vec![],
        sets: vec![],
        objects: vec![],
        flowtables: vec![],
    };
    for a in m.attrs() {
        match a.kind {
            1 => t.name = a.string(),
            2 => {
                let f = a.be32().unwrap_or(0);
                for (bit, n) in [(1, "dormant"), (2, "owner"), (4, "persist")] {
                    if f & bit != 0 {
                        t.flags.push(n.to_string());
                    }
                }
            }
            4 => t.handle = a.be64().unwrap_or(0),
            6 => t.comment = userdata_comment(a.value),
            _ => {}
        }
    }
    Some(t)
}

/// Decodes a chain message into (table name, chain), resolving the hook name by family.
fn decode_chain(m: &NfMsg, family: NftFamily) -> Option<(String, NftChain)> {
    let mut tname = None;
    let mut c = NftChain {
        name: String::new(),
        handle: 0,
        hook: None,
        comment: None,
        rules: vec![],
    };
    let mut hooknum = None;
    let mut prio = 0i32;
    let mut devices = vec![];
    let mut policy = None;
    let mut ctype = None;
    for a in m.attrs() {
        match a.kind {
            1 => tname = Some(a.string()),
            2 => c.handle = a.be64().unwrap_or(0),
            3 => c.name = a.string(),
            4 => {
                for h in a.nested() {
                    match h.kind {
                        1 => hooknum = h.be32(),
                        2 => prio = h.be32().unwrap_or(0) as i32,
                        3 => devices.push(h.string()),
                        4 => devices.extend(h.nested().map(|d| d.string())),
                        _ => {}
                    }
                }
            }
            5 => policy = a.be32(),
            7 => ctype = Some(a.string()),
            12 => c.comment = userdata_comment(a.value),
            _ => {}
        }
    }
    if let Some(num) = hooknum {
        c.hook = Some(NftHook {
            hook: hook_name(family, num),
            priority: prio,
            chain_type: ctype.unwrap_or_else(|| "filter".into()),
            policy: if policy == Some(0) { "drop" } else { "accept" }.into(),
            devices,
        });
    }
    Some((tname?, c))
}

/// (table, name) of an object or flowtable message.
fn decode_named(m: &NfMsg) -> (Option<String>, Option<String>, u32) {
    let (mut tname, mut name, mut kind) = (None, None, 0);
    for a in m.attrs() {
        match a.kind {
            1 => tname = Some(a.string()),
            2 => name = Some(a.string()),
            3 => kind = a.be32().unwrap_or(0),
            _ => {}
        }
    }
    (tname, name, kind)
}

/// Fetches the elements of every set. The kernel answers one set per request and finds the set
/// by a linear walk, so this is the costly part of a large ruleset; with more than a few hundred
/// sets the work is split over two sockets on two threads (same namespace: threads inherit it).
fn fetch_elements(sock: &mut NfSocket, tables: &mut [NftTable]) -> Result<(), Error> {
    let mut jobs: Vec<(u8, String, &mut NftSet)> = vec![];
    for t in tables.iter_mut() {
        let family = t.family.nfproto();
        let tname = t.name.clone();
        for set in t.sets.iter_mut() {
            jobs.push((family, tname.clone(), set));
        }
    }
    fn run(sock: &mut NfSocket, jobs: &mut [(u8, String, &mut NftSet)]) -> Result<(), Error> {
        let mut attrs = Vec::with_capacity(64);
        for (family, tname, set) in jobs.iter_mut() {
            attrs.clear();
            put_attr(&mut attrs, 1, format!("{tname}\0").as_bytes());
            put_attr(&mut attrs, 2, format!("{}\0", set.name).as_bytes());
            let elements = &mut set.elements;
            sock.request(
                NFT_MSG_GETSETELEM,
                *family,
                &attrs,
                true,
                "dump nftables set elements",
                |m| decode_elems(&m, elements),
            )?;
        }
        Ok(())
    }
    if jobs.len() < 256 {
        return run(sock, &mut jobs);
    }
    let mid = jobs.len() / 2;
    let (a, b) = jobs.split_at_mut(mid);
    std::thread::scope(|s| {
        let other = s.spawn(|| -> Result<(), Error> {
            let mut second = NfSocket::open()?;
            run(&mut second, b)
        });
        let first = run(sock, a);
        let second = other.join().unwrap_or(Err(Error::Thread));
        first.and(second)
    })
}

fn dump_once(sock: &mut NfSocket) -> Result<NftRuleset, Error> {
    let debug = std::env::var_os("KVMNET_DEBUG_TIMING").is_some();
    let t0 = std::time::Instant::now();
    let mark = |what: &str| {
        if debug {
            eprintln!("kvmnet: nftables {what}: {:.1?}", t0.elapsed());
        }
    };
    let mut tables: Vec<NftTable> = vec![];
    sock.request(
        NFT_MSG_GETTABLE,
        0,
        &[],
        true,
        "dump nftables tables",
        |m| {
            if let Some(t) = decode_table(&m) {
                tables.push(t);
            }
        },
    )?;
    let index: HashMap<(u8, String), usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.family.nfproto(), t.name.clone()), i))
        .collect();

    sock.request(
        NFT_MSG_GETCHAIN,
        0,
        &[],
        true,
        "dump nftables chains",
        |m| {
            let Some(family) = NftFamily::from_nfproto(m.family) else {
                return;
            };
            if let Some((tname, c)) = decode_chain(&m, family) {
                if let Some(&ti) = index.get(&(m.family, tname)) {
                    tables[ti].chains.push(c);
                }
            }
        },
    )?;

    let mut chain_index: HashMap<(usize, String), usize> = HashMap::new();
    for (ti, t) in tables.iter().enumerate() {
        for (ci, c) in t.chains.iter().enumerate() {
            chain_index.insert((ti, c.name.clone()), ci);
        }
    }
    sock.request(NFT_MSG_GETRULE, 0, &[], true, "dump nftables rules", |m| {
        let Some((tname, cname, rule)) = decode_rule(&m) else {
            return;
        };
        let Some(&ti) = index.get(&(m.family, tname)) else {
            return;
        };
        if let Some(&ci) = chain_index.get(&(ti, cname)) {
            tables[ti].chains[ci].rules.push(rule);
        }
    })?;

    mark("tables, chains, rules");
    sock.request(NFT_MSG_GETSET, 0, &[], true, "dump nftables sets", |m| {
        if let Some((tname, set)) = decode_set(&m) {
            if let Some(&ti) = index.get(&(m.family, tname)) {
                tables[ti].sets.push(set);
            }
        }
    })?;
    fetch_elements(sock, &mut tables)?;
    mark("sets and elements");
    // Objects and flowtables are listed by name only; a kernel without them is fine.
    let mut objects = vec![];
    let _ = sock.request(NFT_MSG_GETOBJ, 0, &[], true, "dump nftables objects", |m| {
        if let (Some(tn), Some(n), kind) = decode_named(&m) {
            objects.push((m.family, tn, n, kind));
        }
    });
    for (family, tn, name, kind) in objects {
        if let Some(&ti) = index.get(&(family, tn)) {
            tables[ti].objects.push(NftObject {
                kind: obj_kind(kind),
                name,
            });
        }
    }
    let mut flowtables = vec![];
    let _ = sock.request(
        NFT_MSG_GETFLOWTABLE,
        0,
        &[],
        true,
        "dump nftables flowtables",
        |m| {
            if let (Some(tn), Some(n), _) = decode_named(&m) {
                flowtables.push((m.family, tn, n));
            }
        },
    );
    for (family, tn, name) in flowtables {
        if let Some(&ti) = index.get(&(family, tn)) {
            tables[ti].flowtables.push(name);
        }
    }
    Ok(NftRuleset { tables })
}
