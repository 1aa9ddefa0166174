//! The single write path: executes plan steps in a namespace, writing each step's inverse to a
//! journal before touching the kernel, checking each change, and rolling everything back in
//! reverse on any failure. An apply interrupted by a crash leaves its journal behind; the next
//! apply or rollback finds it and undoes it first. Only kvmnet's own nftables tables, bridges,
//! qdiscs and dnsmasq processes are ever created or removed.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use kvmnet_model::plan::PlanStep;
use kvmnet_model::{LinkKind, MacAddr};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgeStpState, InfoBridge, InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netns::run_in_netns;
use crate::rtnl::RtSocket;
use crate::Error;

/// Where journals and kvmnet's runtime files live (`KVMNET_RUN_DIR` overrides, for tests).
pub fn run_dir() -> PathBuf {
    std::env::var_os("KVMNET_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kvmnet"))
}

/// The runtime directory of one namespace (`host` for our own).
pub fn ns_dir(netns: Option<&str>) -> PathBuf {
    run_dir().join(match netns {
        Some(n) => format!("ns-{}", n.replace('/', "_")),
        None => "host".into(),
    })
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A step failed; everything done before it was undone.
    #[error("step {index} ({step}) failed: {reason}; {rolled_back} earlier step(s) rolled back")]
    RolledBack {
        index: usize,
        step: String,
        reason: String,
        rolled_back: usize,
    },
    /// A step failed and undoing the earlier ones failed too: the journal says what is left.
    #[error("step {index} ({step}) failed: {reason}; rollback failed too ({rollback}): see journal {journal}")]
    RollbackFailed {
        index: usize,
        step: String,
        reason: String,
        rollback: String,
        journal: String,
    },
    #[error("cannot write the journal {0}: {1}")]
    Journal(String, std::io::Error),
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Setup(#[from] Error),
}

fn sysctl_path(key: &str) -> PathBuf {
    // net.ipv4.conf.br0.forwarding -> /proc/sys/net/ipv4/conf/br0/forwarding
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Result<String, String> {
    std::fs::read_to_string(sysctl_path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {key}: {e}"))
}

#[derive(Debug, Clone)]
struct Row {
    index: u32,
    up: bool,
    mtu: u32,
    master: Option<String>,
    kind: LinkKind,
    stp: bool,
}

/// Root qdiscs the kernel installs by itself: replacing them needs no record to restore.
const DEFAULT_QDISCS: &[&str] = &["noqueue", "pfifo_fast", "fq_codel", "mq", "fq", ""];

struct Kernel {
    sock: RtSocket,
    links: HashMap<String, Row>,
    addrs: HashSet<(String, IpNet)>,
    /// Root qdisc per link: (kind, rate, burst).
    qdiscs: HashMap<String, (String, Option<u64>, Option<u32>)>,
    dir: PathBuf,
    /// The Open vSwitch serving this namespace, connected on first use.
    ovs: Option<crate::ovsdb::Ovsdb>,
    own_ns: bool,
}

impl Kernel {
    fn open(dir: PathBuf) -> Result<Kernel, Error> {
        // the caller's own namespace when kvmnet's runtime directory is the host's
        let own_ns = dir.file_name().is_some_and(|n| n == "host");
        let mut sock = RtSocket::open()?;
        let dumped = crate::rtnl_decode::dump_links(&mut sock)?;
        let names: HashMap<u32, String> = dumped
            .iter()
            .map(|(l, _)| (l.index, l.name.clone()))
            .collect();
        let links = dumped
            .into_iter()
            .map(|(l, _)| {
                (
                    l.name.clone(),
                    Row {
                        index: l.index,
                        up: l.admin_up,
                        mtu: l.mtu,
                        master: l.master.clone(),
                        kind: l.kind,
                        stp: l.bridge.as_ref().is_some_and(|b| b.stp_state != 0),
                    },
                )
            })
            .collect();
        let addrs = crate::rtnl_decode::dump_addresses(&mut sock, &names)?
            .into_iter()
            .filter_map(|a| {
                IpNet::new(a.address, a.prefix_len)
                    .ok()
                    .map(|n| (a.ifname, n))
            })
            .collect();
        let qdiscs = crate::rtnl_decode::dump_qdiscs(&mut sock, &names)?
            .into_iter()
            .filter(|q| q.parent == "root")
            .map(|q| (q.ifname, (q.kind, q.rate_bps, q.burst_bytes)))
            .collect();
        Ok(Kernel {
            sock,
            links,
            addrs,
            qdiscs,
            dir,
            ovs: None,
            own_ns,
        })
    }

    /// The Open vSwitch database of this namespace (its ovs-vswitchd decides which).
    fn ovsdb(&mut self) -> Result<&mut crate::ovsdb::Ovsdb, String> {
        if self.ovs.is_none() {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| m.ino())
                .map_err(|e| e.to_string())?;
            let procs = crate::procfs::scan_processes(false);
            let loc = crate::ovsdb::locate(&procs, ino, self.own_ns).ok_or(
                "no Open vSwitch serves this namespace (ovsdb-server / ovs-vswitchd not found)",
            )?;
            self.ovs = Some(crate::ovsdb::Ovsdb::connect(&loc.db)?);
        }
        self.ovs
            .as_mut()
            .ok_or_else(|| "no Open vSwitch".to_string())
    }

    /// The switch's current configuration (for inverses).
    fn ovs_state(&mut self) -> Result<kvmnet_model::ovs::OvsState, String> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| m.ino())
            .map_err(|e| e.to_string())?;
        let procs = crate::procfs::scan_processes(false);
        let loc = crate::ovsdb::locate(&procs, ino, self.own_ns)
            .ok_or("no Open vSwitch serves this namespace")?;
        crate::ovsdb::read_state(&loc.db)
    }

    /// A link the kernel has but the cache does not know yet (made by another daemon, such as
    /// an Open vSwitch internal port).
    fn ensure_row(&mut self, name: &str) -> Result<(), String> {
        if !self.links.contains_key(name) {
            self.refresh(name)?;
        }
        Ok(())
    }

    fn row(&self, name: &str) -> Result<&Row, String> {
        self.links
            .get(name)
            .ok_or_else(|| format!("no link named {name}"))
    }

    /// Re-reads one link from the kernel (after a change).
    fn refresh(&mut self, name: &str) -> Result<Option<Row>, String> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = match self
            .sock
            .request(RouteNetlinkMessage::GetLink(msg), false, "get link")
        {
            Ok(r) => r,
            Err(Error::Netlink { code, .. }) if code == libc_enodev() => {
                self.links.remove(name);
                return Ok(None);
            }
            Err(e) => return Err(e.to_string()),
        };
        for r in replies {
            if let RouteNetlinkMessage::NewLink(m) = r {
                let mut row = Row {
                    index: m.header.index,
                    up: m.header.flags.contains(LinkFlags::Up),
                    mtu: 0,
                    master: None,
                    kind: LinkKind::Physical,
                    stp: false,
                };
                for a in &m.attributes {
                    match a {
                        LinkAttribute::Mtu(v) => row.mtu = *v,
                        LinkAttribute::Controller(i) => {
                            row.master = self
                                .links
                                .iter()
                                .find(|(_, r)| r.index == *i)
                                .map(|(n, _)| n.clone());
                        }
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                match i {
                                    LinkInfo::Kind(InfoKind::Bridge) => row.kind = LinkKind::Bridge,
                                    LinkInfo::Data(InfoData::Bridge(b)) => {
                                        row.stp = b.iter().any(|x| {
                                            matches!(x, InfoBridge::StpState(s) if *s != BridgeStpState::Disabled)
                                        });
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(old) = self.links.get(name) {
                    if row.kind != LinkKind::Bridge {
                        row.kind = old.kind.clone();
                    }
                }
                self.links.insert(name.to_string(), row.clone());
                return Ok(Some(row));
            }
        }
        Ok(None)
    }

    /// Sends one link change; the kernel's acknowledgement means it took effect, and the
    /// cached row is updated from the change itself (the whole result is compared by
    /// collecting again after the apply).
    fn set_link(&mut self, name: &str, f: impl FnOnce(&mut LinkMessage)) -> Result<(), String> {
        let index = self.row(name)?.index;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg);
        let (flags, mask) = (msg.header.flags, msg.header.change_mask);
        let attrs = msg.attributes.clone();
        self.sock
            .execute(RouteNetlinkMessage::SetLink(msg), "set link")
            .map_err(|e| e.to_string())?;
        let master_name = |i: u32, links: &HashMap<String, Row>| {
            links
                .iter()
                .find(|(_, r)| r.index == i)
                .map(|(n, _)| n.clone())
        };
        let new_master = attrs.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        });
        let master = new_master.map(|i| {
            if i == 0 {
                None
            } else {
                master_name(i, &self.links)
            }
        });
        if let Some(row) = self.links.get_mut(name) {
            if mask.contains(LinkFlags::Up) {
                row.up = flags.contains(LinkFlags::Up);
            }
            for a in &attrs {
                if let LinkAttribute::Mtu(m) = a {
                    row.mtu = *m;
                }
            }
            if let Some(m) = master {
                row.master = m;
            }
        }
        Ok(())
    }

    fn address_msg(&self, ifname: &str, address: &IpNet) -> Result<AddressMessage, String> {
        let index = self.row(ifname)?.index;
        let mut m = AddressMessage::default();
        m.header.family = match address.addr() {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.prefix_len = address.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(address.addr()));
        m.attributes.push(AddressAttribute::Address(address.addr()));
        if let (IpAddr::V4(_), IpNet::V4(n)) = (address.addr(), address) {
            if n.prefix_len() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(n.broadcast()));
            }
        }
        Ok(m)
    }

    /// The inverse of a step, from the current state.
    fn inverse(&mut self, step: &PlanStep) -> Result<Vec<PlanStep>, String> {
        match step {
            PlanStep::LinkUp { ifname }
            | PlanStep::LinkDown { ifname }
            | PlanStep::SetMtu { ifname, .. }
            | PlanStep::AddAddress { ifname, .. } => self.ensure_row(ifname)?,
            _ => {}
        }
        Ok(match step {
            PlanStep::SetSysctl { key, .. } => vec![PlanStep::SetSysctl {
                key: key.clone(),
                value: read_sysctl(key)?,
            }],
            PlanStep::LinkUp { ifname } | PlanStep::LinkDown { ifname } => {
                let up = self.row(ifname)?.up;
                vec![if up {
                    PlanStep::LinkUp {
                        ifname: ifname.clone(),
                    }
                } else {
                    PlanStep::LinkDown {
                        ifname: ifname.clone(),
                    }
                }]
            }
            PlanStep::SetMaster { ifname, .. } | PlanStep::NoMaster { ifname } => {
                vec![match self.row(ifname)?.master.clone() {
                    Some(m) => PlanStep::SetMaster {
                        ifname: ifname.clone(),
                        master: m,
                    },
                    None => PlanStep::NoMaster {
                        ifname: ifname.clone(),
                    },
                }]
            }
            PlanStep::SetMtu { ifname, .. } => vec![PlanStep::SetMtu {
                ifname: ifname.clone(),
                mtu: self.row(ifname)?.mtu,
            }],
            PlanStep::AddMasquerade { subnet, oifname } => {
                if masquerade_handle(subnet, oifname)?.is_some() {
                    vec![]
                } else {
                    vec![PlanStep::DelMasquerade {
                        subnet: *subnet,
                        oifname: oifname.clone(),
                    }]
                }
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                if masquerade_handle(subnet, oifname)?.is_some() {
                    vec![PlanStep::AddMasquerade {
                        subnet: *subnet,
                        oifname: oifname.clone(),
                    }]
                } else {
                    vec![]
                }
            }
            PlanStep::CreateBridge { name, .. } => {
                if self.links.contains_key(name) {
                    vec![]
                } else {
                    vec![PlanStep::DeleteLink { name: name.clone() }]
                }
            }
            PlanStep::DeleteLink { name } => {
                let Some(row) = self.links.get(name).cloned() else {
                    return Ok(vec![]);
                };
                let mut inv = vec![PlanStep::CreateBridge {
                    name: name.clone(),
                    mtu: Some(row.mtu),
                    stp: row.stp,
                }];
                let mut addrs: Vec<&(String, IpNet)> =
                    self.addrs.iter().filter(|(i, _)| i == name).collect();
                addrs.sort();
                for (_, a) in addrs {
                    // the kernel's own IPv6 link-local comes back by itself
                    if !matches!(a.addr(), IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80) {
                        inv.push(PlanStep::AddAddress {
                            ifname: name.clone(),
                            address: *a,
                        });
                    }
                }
                let mut ports: Vec<&String> = self
                    .links
                    .iter()
                    .filter(|(_, r)| r.master.as_deref() == Some(name.as_str()))
                    .map(|(n, _)| n)
                    .collect();
                ports.sort();
                for p in ports {
                    inv.push(PlanStep::SetMaster {
                        ifname: p.clone(),
                        master: name.clone(),
                    });
                }
                if row.up {
                    inv.push(PlanStep::LinkUp {
                        ifname: name.clone(),
                    });
                }
                inv
            }
            PlanStep::SetBridgeStp { name, .. } => vec![PlanStep::SetBridgeStp {
                name: name.clone(),
                stp: self.row(name)?.stp,
            }],
            PlanStep::AddAddress { ifname, address } => {
                if self.addrs.contains(&(ifname.clone(), *address)) {
                    vec![]
                } else {
                    vec![PlanStep::DelAddress {
                        ifname: ifname.clone(),
                        address: *address,
                    }]
                }
            }
            PlanStep::DelAddress { ifname, address } => {
                if self.addrs.contains(&(ifname.clone(), *address)) {
                    vec![PlanStep::AddAddress {
                        ifname: ifname.clone(),
                        address: *address,
                    }]
                } else {
                    vec![]
                }
            }
            PlanStep::ReplaceNftTable { family, name, .. }
            | PlanStep::DeleteNftTable { family, name } => match nft_list_table(family, name)? {
                Some(old) => vec![PlanStep::ReplaceNftTable {
                    family: family.clone(),
                    name: name.clone(),
                    script: old,
                }],
                None => match step {
                    PlanStep::ReplaceNftTable { .. } => vec![PlanStep::DeleteNftTable {
                        family: family.clone(),
                        name: name.clone(),
                    }],
                    _ => vec![],
                },
            },
            PlanStep::DelNeighbour { ifname, address } | PlanStep::SetNeighbour { ifname, address, .. } => {
                match static_neighbour(ifname, *address)? {
                    Some((lladdr, noarp)) => vec![PlanStep::SetNeighbour {
                        ifname: ifname.clone(),
                        address: *address,
                        lladdr,
                        noarp,
                    }],
                    None => match step {
                        PlanStep::SetNeighbour { .. } => vec![PlanStep::DelNeighbour {
                            ifname: ifname.clone(),
                            address: *address,
                        }],
                        _ => vec![],
                    },
                }
            }
            PlanStep::DelFdb { mac, ifname } | PlanStep::AddFdb { mac, ifname, .. } => {
                match fdb_entry(ifname, *mac)? {
                    Some(sticky) => vec![PlanStep::AddFdb {
                        mac: *mac,
                        ifname: ifname.clone(),
                        sticky,
                    }],
                    None => match step {
                        PlanStep::AddFdb { .. } => vec![PlanStep::DelFdb {
                            mac: *mac,
                            ifname: ifname.clone(),
                        }],
                        _ => vec![],
                    },
                }
            }
            PlanStep::SetRateLimit { ifname, .. } | PlanStep::DelRateLimit { ifname } => {
                match self.qdiscs.get(ifname) {
                    Some((kind, Some(rate), Some(burst))) if kind == "tbf" => {
                        vec![PlanStep::SetRateLimit {
                            ifname: ifname.clone(),
                            rate_bps: *rate,
                            burst_bytes: *burst,
                        }]
                    }
                    Some((kind, ..)) if !DEFAULT_QDISCS.contains(&kind.as_str()) => {
                        return Err(format!(
                            "{ifname} has a {kind} root qdisc kvmnet did not make: refusing to replace it"
                        ))
                    }
                    _ => match step {
                        PlanStep::SetRateLimit { .. } => vec![PlanStep::DelRateLimit {
                            ifname: ifname.clone(),
                        }],
                        _ => vec![],
                    },
                }
            }
            PlanStep::OvsAddBridge { name, .. } | PlanStep::OvsDelBridge { name } => {
                let st = self.ovs_state()?;
                match crate::ovsdb::bridge_config(&st, name) {
                    None => match step {
                        PlanStep::OvsAddBridge { .. } => vec![PlanStep::OvsDelBridge { name: name.clone() }],
                        _ => vec![],
                    },
                    Some(_) if matches!(step, PlanStep::OvsAddBridge { .. }) => vec![],
                    Some((datapath, ports)) => {
                        let mut inv = vec![PlanStep::OvsAddBridge {
                            name: name.clone(),
                            datapath,
                        }];
                        for (port, (interfaces, internal, settings)) in ports {
                            inv.push(PlanStep::OvsAddPort {
                                bridge: name.clone(),
                                port,
                                interfaces,
                                internal,
                                settings,
                            });
                        }
                        inv
                    }
                }
            }
            PlanStep::OvsAddPort { bridge, port, .. } | PlanStep::OvsDelPort { bridge, port } => {
                let st = self.ovs_state()?;
                let existing = st
                    .bridge(bridge)
                    .and_then(|b| b.ports.iter().find(|p| &p.name == port))
                    .map(crate::ovsdb::port_config);
                match (existing, step) {
                    (None, PlanStep::OvsAddPort { .. }) => vec![PlanStep::OvsDelPort {
                        bridge: bridge.clone(),
                        port: port.clone(),
                    }],
                    (None, _) | (Some(_), PlanStep::OvsAddPort { .. }) => vec![],
                    (Some((interfaces, internal, settings)), _) => vec![PlanStep::OvsAddPort {
                        bridge: bridge.clone(),
                        port: port.clone(),
                        interfaces,
                        internal,
                        settings,
                    }],
                }
            }
            PlanStep::OvsSetPort { port, .. } => {
                let st = self.ovs_state()?;
                let p = st
                    .bridges
                    .iter()
                    .flat_map(|b| b.ports.iter())
                    .find(|p| &p.name == port)
                    .ok_or_else(|| format!("ovs: no port {port}"))?;
                vec![PlanStep::OvsSetPort {
                    port: port.clone(),
                    settings: crate::ovsdb::port_config(p).2,
                }]
            }
            PlanStep::StartDhcp { network, .. } | PlanStep::StopDhcp { network } => {
                match self.dhcp_running(network) {
                    Some((bridge, config)) => vec![PlanStep::StartDhcp {
                        network: network.clone(),
                        bridge,
                        config,
                    }],
                    None => match step {
                        PlanStep::StartDhcp { .. } => vec![PlanStep::StopDhcp {
                            network: network.clone(),
                        }],
                        _ => vec![],
                    },
                }
            }
        })
    }

    fn execute(&mut self, step: &PlanStep) -> Result<(), String> {
        match step {
            PlanStep::LinkUp { ifname }
            | PlanStep::LinkDown { ifname }
            | PlanStep::SetMtu { ifname, .. }
            | PlanStep::AddAddress { ifname, .. } => self.ensure_row(ifname)?,
            _ => {}
        }
        match step {
            PlanStep::SetSysctl { key, value } => std::fs::write(sysctl_path(key), value)
                .map_err(|e| format!("cannot write {key}: {e}")),
            PlanStep::LinkUp { ifname } => self.set_link(ifname, |m| {
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
            }),
            PlanStep::LinkDown { ifname } => self.set_link(ifname, |m| {
                m.header.flags = LinkFlags::empty();
                m.header.change_mask = LinkFlags::Up;
            }),
            PlanStep::SetMaster { ifname, master } => {
                let mi = self.row(master)?.index;
                self.set_link(ifname, |m| m.attributes.push(LinkAttribute::Controller(mi)))
            }
            PlanStep::NoMaster { ifname } => {
                self.set_link(ifname, |m| m.attributes.push(LinkAttribute::Controller(0)))
            }
            PlanStep::SetMtu { ifname, mtu } => {
                let mtu = *mtu;
                self.set_link(ifname, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
            }
            PlanStep::AddMasquerade { subnet, oifname } => {
                if masquerade_handle(subnet, oifname)?.is_some() {
                    return Ok(());
                }
                let fam = if subnet.addr().is_ipv6() { "ip6" } else { "ip" };
                nft(&format!(
                    "table inet kvmnet {{\n chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n}}\n\
                     add rule inet kvmnet postrouting {fam} saddr {subnet} oifname \"{oifname}\" masquerade comment \"{}\"\n",
                    masq_comment(subnet, oifname)
                ))
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                if let Some(h) = masquerade_handle(subnet, oifname)? {
                    nft(&format!("delete rule inet kvmnet postrouting handle {h}\n"))?;
                }
                // kvmnet's own table goes away with its last rule
                let rs = crate::nft::dump_ruleset().map_err(|e| e.to_string())?;
                if rs
                    .table(kvmnet_model::NftFamily::Inet, "kvmnet")
                    .is_some_and(|t| {
                        t.chains.iter().all(|c| c.rules.is_empty()) && t.sets.is_empty()
                    })
                {
                    nft("delete table inet kvmnet\n")?;
                }
                Ok(())
            }
            PlanStep::CreateBridge { name, mtu, stp } => {
                if self.links.contains_key(name) {
                    return Ok(());
                }
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(name.clone()));
                if let Some(mtu) = mtu {
                    m.attributes.push(LinkAttribute::Mtu(*mtu));
                }
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Bridge),
                    LinkInfo::Data(InfoData::Bridge(vec![
                        InfoBridge::StpState(if *stp {
                            BridgeStpState::KernelStp
                        } else {
                            BridgeStpState::Disabled
                        }),
                        // no listening/learning delay for VM ports when STP is off
                        InfoBridge::ForwardDelay(if *stp { 1500 } else { 0 }),
                    ])),
                ]));
                self.sock
                    .execute_flags(
                        RouteNetlinkMessage::NewLink(m),
                        NLM_F_CREATE | NLM_F_EXCL,
                        "create bridge",
                    )
                    .map_err(|e| e.to_string())?;
                match self.refresh(name)? {
                    Some(_) => {
                        if let Some(r) = self.links.get_mut(name) {
                            r.kind = LinkKind::Bridge;
                            r.stp = *stp;
                        }
                        Ok(())
                    }
                    None => Err(format!("bridge {name} did not appear")),
                }
            }
            PlanStep::DeleteLink { name } => {
                let Some(row) = self.links.get(name).cloned() else {
                    return Ok(());
                };
                if row.kind != LinkKind::Bridge {
                    return Err(format!(
                        "{name} is not a bridge: kvmnet deletes only its own bridges"
                    ));
                }
                let mut m = LinkMessage::default();
                m.header.index = row.index;
                self.sock
                    .execute(RouteNetlinkMessage::DelLink(m), "delete link")
                    .map_err(|e| e.to_string())?;
                self.links.remove(name);
                self.addrs.retain(|(i, _)| i != name);
                for r in self.links.values_mut() {
                    if r.master.as_deref() == Some(name.as_str()) {
                        r.master = None;
                    }
                }
                Ok(())
            }
            PlanStep::SetBridgeStp { name, stp } => {
                let index = self.row(name)?.index;
                let mut m = LinkMessage::default();
                m.header.index = index;
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Bridge),
                    LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::StpState(if *stp {
                        BridgeStpState::KernelStp
                    } else {
                        BridgeStpState::Disabled
                    })])),
                ]));
                self.sock
                    .execute(RouteNetlinkMessage::NewLink(m), "set bridge stp")
                    .map_err(|e| e.to_string())?;
                if let Some(r) = self.links.get_mut(name) {
                    r.stp = *stp;
                }
                Ok(())
            }
            PlanStep::AddAddress { ifname, address } => {
                if self.addrs.contains(&(ifname.clone(), *address)) {
                    return Ok(());
                }
                let m = self.address_msg(ifname, address)?;
                self.sock
                    .execute_flags(
                        RouteNetlinkMessage::NewAddress(m),
                        NLM_F_CREATE | NLM_F_EXCL,
                        "add address",
                    )
                    .map_err(|e| e.to_string())?;
                self.addrs.insert((ifname.clone(), *address));
                Ok(())
            }
            PlanStep::DelAddress { ifname, address } => {
                if !self.addrs.contains(&(ifname.clone(), *address)) {
                    return Ok(());
                }
                let m = self.address_msg(ifname, address)?;
                self.sock
                    .execute(RouteNetlinkMessage::DelAddress(m), "delete address")
                    .map_err(|e| e.to_string())?;
                self.addrs.remove(&(ifname.clone(), *address));
                Ok(())
            }
            PlanStep::ReplaceNftTable {
                family,
                name,
                script,
            } => {
                // one transaction: make sure it exists, drop it, load the new body
                nft(&format!(
                    "table {family} {name}\ndelete table {family} {name}\n{script}\n"
                ))
            }
            PlanStep::DeleteNftTable { family, name } => {
                if nft_list_table(family, name)?.is_none() {
                    return Ok(());
                }
                nft(&format!("delete table {family} {name}\n"))
            }
            PlanStep::SetRateLimit {
                ifname,
                rate_bps,
                burst_bytes,
            } => {
                tc(&[
                    "qdisc",
                    "replace",
                    "dev",
                    ifname,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{rate_bps}bit"),
                    "burst",
                    &burst_bytes.to_string(),
                    "latency",
                    "50ms",
                ])?;
                self.qdiscs.insert(
                    ifname.clone(),
                    ("tbf".into(), Some(*rate_bps), Some(*burst_bytes)),
                );
                Ok(())
            }
            PlanStep::DelNeighbour { ifname, address } => {
                if static_neighbour(ifname, *address)?.is_some()
                    || neighbour_exists(ifname, *address)?
                {
                    tool("ip", &["neigh", "del", &address.to_string(), "dev", ifname])?;
                }
                Ok(())
            }
            PlanStep::SetNeighbour {
                ifname,
                address,
                lladdr,
                noarp,
            } => tool(
                "ip",
                &[
                    "neigh",
                    "replace",
                    &address.to_string(),
                    "lladdr",
                    &lladdr.to_string(),
                    "dev",
                    ifname,
                    "nud",
                    if *noarp { "noarp" } else { "permanent" },
                ],
            ),
            PlanStep::DelFdb { mac, ifname } => {
                if fdb_entry(ifname, *mac)?.is_some() {
                    tool(
                        "bridge",
                        &["fdb", "del", &mac.to_string(), "dev", ifname, "master"],
                    )?;
                }
                Ok(())
            }
            PlanStep::AddFdb {
                mac,
                ifname,
                sticky,
            } => {
                let mut args = vec!["fdb", "replace"];
                let m = mac.to_string();
                args.extend([m.as_str(), "dev", ifname, "master", "static"]);
                if *sticky {
                    args.push("sticky");
                }
                tool("bridge", &args)
            }
            PlanStep::DelRateLimit { ifname } => {
                if self.qdiscs.get(ifname).is_some_and(|(k, ..)| k == "tbf") {
                    tc(&["qdisc", "del", "dev", ifname, "root"])?;
                }
                self.qdiscs.remove(ifname);
                Ok(())
            }
            PlanStep::StartDhcp {
                network,
                bridge,
                config,
            } => self.start_dhcp(network, bridge, config),
            PlanStep::StopDhcp { network } => {
                self.stop_dhcp(network);
                Ok(())
            }
            PlanStep::OvsAddBridge { name, datapath } => {
                let exists = self.ovs_state()?.bridge(name).is_some();
                if !exists {
                    self.ovsdb()?.add_bridge(name, datapath.as_deref())?;
                }
                self.refresh(name)?;
                Ok(())
            }
            PlanStep::OvsDelBridge { name } => {
                self.ovsdb()?.del_bridge(name)?;
                self.links.remove(name);
                self.addrs.retain(|(i, _)| i != name);
                Ok(())
            }
            PlanStep::OvsAddPort {
                bridge,
                port,
                interfaces,
                internal,
                settings,
            } => {
                let exists = self
                    .ovs_state()?
                    .bridge(bridge)
                    .is_some_and(|b| b.ports.iter().any(|p| &p.name == port));
                if !exists {
                    self.ovsdb()?
                        .add_port(bridge, port, interfaces, *internal, settings)?;
                }
                if *internal {
                    self.refresh(port)?;
                }
                Ok(())
            }
            PlanStep::OvsDelPort { bridge, port } => {
                self.ovsdb()?.del_port(bridge, port)?;
                Ok(())
            }
            PlanStep::OvsSetPort { port, settings } => self.ovsdb()?.set_port(port, settings),
        }
    }

    /// Reads back what a step should have produced, where that is cheap and telling.
    fn verify(&mut self, step: &PlanStep) -> Result<(), String> {
        let ok = match step {
            PlanStep::SetSysctl { key, value } => read_sysctl(key)? == *value,
            PlanStep::LinkUp { ifname } => self.row(ifname)?.up,
            PlanStep::LinkDown { ifname } => !self.row(ifname)?.up,
            PlanStep::SetMaster { ifname, master } => {
                self.row(ifname)?.master.as_deref() == Some(master.as_str())
            }
            PlanStep::NoMaster { ifname } => self.row(ifname)?.master.is_none(),
            PlanStep::SetMtu { ifname, mtu } => self.row(ifname)?.mtu == *mtu,
            PlanStep::AddMasquerade { subnet, oifname } => {
                masquerade_handle(subnet, oifname)?.is_some()
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                masquerade_handle(subnet, oifname)?.is_none()
            }
            PlanStep::CreateBridge { name, .. } => self
                .links
                .get(name)
                .is_some_and(|r| r.kind == LinkKind::Bridge),
            PlanStep::DeleteLink { name } => !self.links.contains_key(name),
            PlanStep::DelNeighbour { ifname, address } => {
                static_neighbour(ifname, *address)?.is_none()
            }
            PlanStep::SetNeighbour {
                ifname,
                address,
                lladdr,
                ..
            } => static_neighbour(ifname, *address)?.is_some_and(|(l, _)| l == *lladdr),
            PlanStep::DelFdb { mac, ifname } => fdb_entry(ifname, *mac)?.is_none(),
            PlanStep::AddFdb { mac, ifname, .. } => fdb_entry(ifname, *mac)?.is_some(),
            PlanStep::StartDhcp { network, .. } => self.dhcp_running(network).is_some(),
            PlanStep::StopDhcp { network } => self.dhcp_running(network).is_none(),
            // acknowledged by the kernel (netlink ACK, nft/tc exit status); the whole result
            // is compared by re-collecting after the apply
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "read back after {}: not in effect",
                step.describe()
            ))
        }
    }

    fn dhcp_files(&self, network: &str) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.dir.join(format!("dnsmasq-{network}.conf")),
            self.dir.join(format!("dnsmasq-{network}.pid")),
            self.dir.join(format!("dnsmasq-{network}.leases")),
        )
    }

    /// The PID of kvmnet's dnsmasq for `network` when it runs (checked against its command
    /// line: the PID file alone proves nothing).
    fn dhcp_pid(&self, network: &str) -> Option<u32> {
        let (conf, pidf, _) = self.dhcp_files(network);
        let pid: u32 = std::fs::read_to_string(pidf).ok()?.trim().parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .contains(&*conf.to_string_lossy())
            .then_some(pid)
    }

    /// (bridge, config) of a running dnsmasq of `network`.
    fn dhcp_running(&self, network: &str) -> Option<(String, String)> {
        self.dhcp_pid(network)?;
        let (conf, ..) = self.dhcp_files(network);
        let config = std::fs::read_to_string(conf).ok()?;
        let bridge = config
            .lines()
            .find_map(|l| l.strip_prefix("interface="))
            .unwrap_or_default()
            .to_string();
        Some((bridge, config))
    }

    fn stop_dhcp(&self, network: &str) {
        let (conf, pidf, _) = self.dhcp_files(network);
        if let Some(pid) = self.dhcp_pid(network) {
            terminate(pid);
        }
        let _ = std::fs::remove_file(pidf);
        let _ = std::fs::remove_file(conf);
    }

    fn start_dhcp(&mut self, network: &str, bridge: &str, config: &str) -> Result<(), String> {
        self.stop_dhcp(network);
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let (conf, pidf, leases) = self.dhcp_files(network);
        // the file paths belong to the runtime directory, not to the plan
        let full = format!(
            "{config}pid-file={}\ndhcp-leasefile={}\n",
            pidf.display(),
            leases.display()
        );
        std::fs::write(&conf, &full).map_err(|e| format!("{}: {e}", conf.display()))?;
        let out = std::process::Command::new("dnsmasq")
            .arg(format!("--conf-file={}", conf.display()))
            .output()
            .map_err(|e| format!("cannot run dnsmasq: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dnsmasq for {network} on {bridge}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        for _ in 0..100 {
            if self.dhcp_pid(network).is_some() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!("dnsmasq for {network} did not start"))
    }
}

fn libc_enodev() -> i32 {
    19
}

/// Stops a process kvmnet started (SIGTERM, then SIGKILL after a second), by PID.
fn terminate(pid: u32) {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = kill_process(p, Signal::TERM);
    // gone, or a zombie waiting for its parent (init) to reap it
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    for _ in 0..50 {
        if exited() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = kill_process(p, Signal::KILL);
}

fn masq_comment(subnet: &IpNet, oifname: &str) -> String {
    format!("kvmnet masquerade {subnet} {oifname}")
}

/// The handle of kvmnet's masquerade rule for (subnet, oif), if present.
fn masquerade_handle(subnet: &IpNet, oifname: &str) -> Result<Option<u64>, String> {
    let rs = crate::nft::dump_ruleset().map_err(|e| e.to_string())?;
    let want = masq_comment(subnet, oifname);
    Ok(rs
        .table(kvmnet_model::NftFamily::Inet, "kvmnet")
        .and_then(|t| t.chain("postrouting"))
        .and_then(|c| {
            c.rules
                .iter()
                .find(|r| r.comment.as_deref() == Some(want.as_str()))
        })
        .map(|r| r.handle))
}

/// `nft list table FAMILY NAME` (as nft prints it, loadable again), or None when absent.
fn nft_list_table(family: &str, name: &str) -> Result<Option<String>, String> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", family, name])
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if out.status.success() {
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        Ok(None)
    }
}

/// Runs `nft -f -` in the calling thread's namespace (the child inherits it).
fn nft(script: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `tc ARGS` in the calling thread's namespace.
/// Runs `ip`/`bridge` in the calling thread's namespace.
fn tool(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// JSON from `ip -j ...` / `bridge -j ...`.
fn tool_json(cmd: &str, args: &[&str]) -> Result<Vec<serde_json::Value>, String> {
    let out = std::process::Command::new(cmd)
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(vec![]);
    }
    serde_json::from_str(&text).map_err(|e| format!("{cmd} {}: {e}", args.join(" ")))
}

/// The static (permanent/noarp) neighbour entry for `address` on `ifname`: (lladdr, noarp).
fn static_neighbour(ifname: &str, address: IpAddr) -> Result<Option<(MacAddr, bool)>, String> {
    let a = address.to_string();
    for n in tool_json("ip", &["neigh", "show", &a, "dev", ifname])? {
        let states: Vec<&str> = n["state"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let (perm, noarp) = (states.contains(&"PERMANENT"), states.contains(&"NOARP"));
        if let (true, Some(l)) = (
            perm || noarp,
            n["lladdr"].as_str().and_then(|l| l.parse::<MacAddr>().ok()),
        ) {
            return Ok(Some((l, noarp && !perm)));
        }
    }
    Ok(None)
}

fn neighbour_exists(ifname: &str, address: IpAddr) -> Result<bool, String> {
    Ok(!tool_json(
        "ip",
        &["neigh", "show", &address.to_string(), "dev", ifname],
    )?
    .is_empty())
}

/// The bridge FDB entry for `mac` on port `ifname` (not the port's own table): sticky?
fn fdb_entry(ifname: &str, mac: MacAddr) -> Result<Option<bool>, String> {
    let m = mac.to_string();
    for f in tool_json("bridge", &["fdb", "show", "dev", ifname])? {
        let flags: Vec<&str> = f["flags"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if f["mac"].as_str() == Some(m.as_str())
            && !flags.contains(&"self")
            && f["master"].is_string()
        {
            return Ok(Some(flags.contains(&"sticky")));
        }
    }
    Ok(None)
}

fn tc(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("tc")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run tc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The journal of one apply: the boot it belongs to, then a JSON line per step with its
/// inverse, written before the step runs.
struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JournalLine {
    step: PlanStep,
    inverse: Vec<PlanStep>,
}

impl Journal {
    fn open(dir: &Path) -> Result<Journal, ApplyError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ApplyError::Journal(dir.display().to_string(), e))?;
        let path = dir.join("journal.jsonl");
        let mut file = std::fs::File::create(&path)
            .map_err(|e| ApplyError::Journal(path.display().to_string(), e))?;
        file.write_all(format!("{{\"boot\":\"{}\"}}\n", boot_id()).as_bytes())
            .map_err(|e| ApplyError::Journal(path.display().to_string(), e))?;
        Ok(Journal { path, file })
    }

    fn record(&mut self, step: &PlanStep, inverse: &[PlanStep]) -> Result<(), ApplyError> {
        let line = format!(
            "{{\"step\":{},\"inverse\":{}}}\n",
            kvmnet_model::plan::to_json(step),
            kvmnet_model::plan::to_json_list(inverse)
        );
        // written before the step, not synced: a killed process leaves it in the page cache,
        // and a reboot (which could lose it) also discards every change it describes
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| ApplyError::Journal(self.path.display().to_string(), e))
    }

    /// Keeps the journal of a finished apply as `last.jsonl` (what `kvmnet rollback` undoes).
    fn finish(self) -> PathBuf {
        let last = self.path.with_file_name("last.jsonl");
        let _ = std::fs::rename(&self.path, &last);
        last
    }
}

/// This boot's id: kernel network state does not survive a reboot, so neither does a journal.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// True when a journal was written during this boot.
fn same_boot(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        })
        .and_then(|v| v.get("boot").and_then(|b| b.as_str().map(String::from)))
        .is_some_and(|b| b == boot_id())
}

fn read_journal(path: &Path) -> Result<Vec<JournalLine>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // a line cut short by a crash is the step that never started
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<JournalLine>(l).ok())
        .collect())
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub applied: usize,
    pub journal: PathBuf,
    /// Steps of an interrupted earlier apply that were undone first.
    pub recovered: usize,
}

/// Undoes an apply interrupted by a crash (its journal is still there), if any; returns how
/// many steps it undid. Runs inside the namespace.
fn recover_in(k: &mut Kernel) -> Result<usize, String> {
    let path = k.dir.join("journal.jsonl");
    if !path.exists() {
        return Ok(0);
    }
    if !same_boot(&path) {
        // from before a reboot: the changes it describes are gone with that boot
        let _ = std::fs::rename(&path, k.dir.join("stale.jsonl"));
        return Ok(0);
    }
    let lines = read_journal(&path)?;
    let n = lines.len();
    undo(k, &lines)?;
    let _ = std::fs::rename(&path, k.dir.join("recovered.jsonl"));
    Ok(n)
}

fn undo(k: &mut Kernel, lines: &[JournalLine]) -> Result<(), String> {
    let mut err = None;
    for l in lines.iter().rev() {
        for s in &l.inverse {
            if let Err(e) = k.execute(s) {
                err = Some(format!("{}: {e}", s.describe()));
            }
        }
    }
    match err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Applies steps in a namespace (ours when `None`): journal, execute, check; on failure roll
/// back what was done, in reverse. An interrupted earlier apply is undone first.
pub fn apply_plan(netns: Option<&str>, steps: &[PlanStep]) -> Result<ApplyReport, ApplyError> {
    apply_plan_with(netns, steps, &mut |_, _| {})
}

/// [`apply_plan`] with a progress callback (step number, step) called before each step.
pub fn apply_plan_with(
    netns: Option<&str>,
    steps: &[PlanStep],
    progress: &mut (dyn FnMut(usize, &PlanStep) + Send),
) -> Result<ApplyReport, ApplyError> {
    let dir = ns_dir(netns);
    let (applied, recovered, journal) = run_in_netns(netns, move || {
        let mut k = Kernel::open(dir.clone())?;
        let recovered = recover_in(&mut k).map_err(|e| {
            ApplyError::Other(format!(
                "an interrupted apply was found and could not be fully undone: {e}"
            ))
        })?;
        if recovered > 0 {
            // the undo changed the kernel: start from a fresh view
            k = Kernel::open(dir.clone())?;
        }
        let mut journal = Journal::open(&dir)?;
        let mut done: Vec<JournalLine> = vec![];
        for (i, step) in steps.iter().enumerate() {
            progress(i + 1, step);
            let outcome = k
                .inverse(step)
                .and_then(|inv| {
                    journal.record(step, &inv).map_err(|e| e.to_string())?;
                    Ok(inv)
                })
                .and_then(|inv| {
                    done.push(JournalLine {
                        step: step.clone(),
                        inverse: inv,
                    });
                    k.execute(step)?;
                    k.verify(step)
                });
            stall_for_tests(i + 1);
            if let Err(reason) = outcome {
                let n = done.len().saturating_sub(1);
                return Err(match undo(&mut k, &done) {
                    Ok(()) => {
                        let _ = std::fs::rename(&journal.path, dir.join("failed.jsonl"));
                        ApplyError::RolledBack {
                            index: i + 1,
                            step: step.describe(),
                            reason,
                            rolled_back: n,
                        }
                    }
                    Err(rollback) => ApplyError::RollbackFailed {
                        index: i + 1,
                        step: step.describe(),
                        reason,
                        rollback,
                        journal: journal.path.display().to_string(),
                    },
                });
            }
        }
        Ok::<_, ApplyError>((done.len(), recovered, journal.finish()))
    })??;
    Ok(ApplyReport {
        applied,
        journal,
        recovered,
    })
}

/// Fault injection for the crash tests: with `KVMNET_TEST_STALL_AFTER_STEP=N`, the apply
/// stops for a minute after step N, so a test can kill it there.
fn stall_for_tests(done: usize) {
    if std::env::var("KVMNET_TEST_STALL_AFTER_STEP")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(done)
    {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// What a rollback did.
#[derive(Debug, Clone)]
pub struct RollbackReport {
    /// Steps of an interrupted apply that were undone.
    pub recovered: usize,
    /// Steps of the last finished apply that were undone.
    pub undone: usize,
}

/// Undoes the last apply in a namespace (and first any apply a crash interrupted).
pub fn rollback_last(netns: Option<&str>) -> Result<RollbackReport, ApplyError> {
    let dir = ns_dir(netns);
    run_in_netns(netns, move || {
        let mut k = Kernel::open(dir.clone())?;
        let recovered = recover_in(&mut k).map_err(ApplyError::Other)?;
        if recovered > 0 {
            k = Kernel::open(dir.clone())?;
        }
        let last = dir.join("last.jsonl");
        let mut undone = 0;
        if last.exists() && !same_boot(&last) {
            let _ = std::fs::rename(&last, dir.join("stale.jsonl"));
        }
        if last.exists() {
            let lines = read_journal(&last).map_err(ApplyError::Other)?;
            undone = lines.len();
            undo(&mut k, &lines).map_err(|e| {
                ApplyError::Other(format!(
                    "rollback incomplete: {e} (journal {})",
                    last.display()
                ))
            })?;
            let _ = std::fs::rename(&last, dir.join("rolled-back.jsonl"));
        }
        Ok(RollbackReport { recovered, undone })
    })?
}

/// True when an interrupted apply's journal is waiting to be undone.
pub fn interrupted(netns: Option<&str>) -> bool {
    ns_dir(netns).join("journal.jsonl").exists()
}

/// The runtime files of a network's dnsmasq, and whether it runs (for planning).
pub fn dhcp_status(netns: Option<&str>, network: &str) -> Option<String> {
    let dir = ns_dir(netns);
    let conf = dir.join(format!("dnsmasq-{network}.conf"));
    let pid: u32 = std::fs::read_to_string(dir.join(format!("dnsmasq-{network}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if !String::from_utf8_lossy(&cmd).contains(&*conf.to_string_lossy()) {
        return None;
    }
    std::fs::read_to_string(conf).ok()
}

/// Local addresses of SSH sessions into a namespace (ours when `None`; there the
/// `SSH_CONNECTION` of the calling shell counts too).
pub fn management_addresses(netns: Option<&str>, sshd_ports: &[u16]) -> Vec<IpAddr> {
    let ports = sshd_ports.to_vec();
    let mut out = run_in_netns(netns, move || crate::procfs::ssh_session_addresses(&ports))
        .unwrap_or_default();
    if netns.is_none() {
        // "client_ip client_port server_ip server_port"
        if let Some(ip) = std::env::var("SSH_CONNECTION")
            .ok()
            .and_then(|v| v.split_whitespace().nth(2).and_then(|a| a.parse().ok()))
        {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// Whether this kernel can filter VLANs on a Linux bridge: creates a bridge with
/// `vlan_filtering 1` in a private throwaway namespace and reads it back.
pub fn bridge_vlan_filtering_supported() -> bool {
    std::thread::scope(|s| {
        s.spawn(|| -> Option<bool> {
            // SAFETY: only CLONE_NEWNET is unshared, on a thread of our own: the file-table
            // hazard `unshare_unsafe` guards against (CLONE_FILES) does not apply.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }.ok()?;
            let mut sock = RtSocket::open().ok()?;
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName("kvprobe0".into()));
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Bridge),
                LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])),
            ]));
            if sock
                .execute_flags(
                    RouteNetlinkMessage::NewLink(m),
                    NLM_F_CREATE | NLM_F_EXCL,
                    "probe bridge",
                )
                .is_err()
            {
                return Some(false);
            }
            let links = crate::rtnl_decode::dump_links(&mut sock).ok()?;
            Some(links.iter().any(|(l, _)| {
                l.name == "kvprobe0" && l.bridge.as_ref().is_some_and(|b| b.vlan_filtering)
            }))
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or(false)
    })
}

/// Undoes an apply a crash interrupted (its journal is still there); returns the number of
/// steps undone (0 when there was none).
pub fn recover(netns: Option<&str>) -> Result<usize, ApplyError> {
    if !interrupted(netns) {
        return Ok(0);
    }
    let dir = ns_dir(netns);
    run_in_netns(netns, move || {
        let mut k = Kernel::open(dir)?;
        recover_in(&mut k).map_err(ApplyError::Other)
    })?
}
