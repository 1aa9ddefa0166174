//! The validated desired state: plain values, every cross-reference resolved. Built by
//! [`validate`], which reports the first problem with its file, line and column.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kvmnet_model::MacAddr;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::load::{Config, ConfigError};
use crate::schema::{NetworkType, PortSpec};

/// A validated network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Net {
    pub name: String,
    pub kind: NetworkType,
    pub bridge: String,
    /// The guests' subnet (nat, routed, isolated).
    pub subnet: Option<IpNet>,
    /// The host's address on the bridge, with the subnet's prefix.
    pub gateway: Option<IpNet>,
    /// nat/routed: the uplink named in the file (else the default route's device at plan time).
    pub uplink: Option<String>,
    /// bridged: the host's ports in the bridge.
    pub ports: Vec<String>,
    pub mtu: Option<u32>,
    pub stp: bool,
    pub dhcp: Option<Dhcp>,
    pub dns_forwarders: Vec<IpAddr>,
    /// The host's IPv6 address on the bridge, with its prefix.
    pub ipv6: Option<IpNet>,
    /// `ovs`: the datapath type.
    #[serde(default)]
    pub datapath: Option<String>,
    /// `ovs`: VLANs and the host's address in each (an internal port `<bridge>.<id>`).
    #[serde(default)]
    pub vlans: Vec<OvsVlan>,
    /// `ovs`: bond mode and LACP of the uplink when it has several ports.
    #[serde(default)]
    pub bond_mode: Option<String>,
    #[serde(default)]
    pub lacp: Option<String>,
}

/// A VLAN of an `ovs` network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OvsVlan {
    pub id: u16,
    /// The host's address in the VLAN, with the subnet's prefix.
    pub gateway: Option<IpNet>,
}

impl Net {
    /// The internal port carrying the host's address in VLAN `id` of an `ovs` network.
    pub fn vlan_port(&self, id: u16) -> String {
        format!("{}.{id}", self.bridge)
    }
}

/// DHCP for a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dhcp {
    pub start: IpAddr,
    pub end: IpAddr,
    pub lease_secs: u32,
    pub hosts: Vec<DhcpHost>,
}

/// A static lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpHost {
    pub mac: MacAddr,
    pub ip: IpAddr,
    pub name: Option<String>,
}

/// A validated vNIC attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vnic {
    pub vm: String,
    /// The host-side device; empty until the plan finds it from the running VM.
    pub tap: String,
    pub network: String,
    pub mac: Option<MacAddr>,
    pub ip: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub vlan: Option<u16>,
    /// (bits per second, burst bytes).
    pub qos: Option<(u64, u32)>,
    pub antispoof: bool,
}

/// A validated port forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub proto: String,
    pub host_port: u16,
    pub to: IpAddr,
    pub to_port: u16,
    pub from: Vec<IpNet>,
    pub hairpin: bool,
    /// The network the guest address belongs to.
    pub network: String,
}

/// Whom a firewall section protects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FwTarget {
    Network(String),
    Vm(String),
}

/// A validated firewall section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    pub target: FwTarget,
    /// Traffic toward the guests that no rule allows is dropped.
    pub drop_by_default: bool,
    pub rules: Vec<FwRule>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRule {
    pub allow: bool,
    /// `tcp`, `udp`, `icmp`, or any.
    pub proto: Option<String>,
    pub ports: Vec<(u16, u16)>,
    pub from: Vec<IpNet>,
}

/// The whole validated desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub networks: Vec<Net>,
    pub vnics: Vec<Vnic>,
    pub forwards: Vec<Forward>,
    pub firewall: Vec<Firewall>,
}

impl Desired {
    pub fn network(&self, name: &str) -> Option<&Net> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name `{name}` is {} characters long; Linux allows at most 15",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name `{name}` contains {c:?}, which Linux does not allow"
        ));
    }
    Ok(())
}

/// `100mbit`, `1gbit`, `500kbit`, `10mbps` (bytes), or a plain number of bits per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a rate (try 100mbit, 1gbit, 500kbit)"))?;
    let mult: f64 = match unit.trim() {
        "" | "bit" | "bps" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        u => {
            return Err(format!(
                "unknown rate unit `{u}` in `{s}` (use kbit, mbit, gbit)"
            ))
        }
    };
    let v = n * mult;
    if !(8000.0..=1e12).contains(&v) {
        return Err(format!("rate `{s}` is out of range (8kbit to 1000gbit)"));
    }
    Ok(v as u64)
}

/// `64k`, `1m`, `1500`, `32kb` in bytes.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 64k, 1m)"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        u => return Err(format!("unknown size unit `{u}` in `{s}` (use k or m)")),
    };
    let v = n * mult;
    if !(1500..=64 * 1024 * 1024).contains(&v) {
        return Err(format!("burst `{s}` is out of range (1500 bytes to 64m)"));
    }
    Ok(v as u32)
}

/// `3600`, `90m`, `12h`, `1d` in seconds (at least 2 minutes, as dnsmasq requires).
pub fn parse_duration(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        Some('d') => (&t[..t.len() - 1], 86400),
        _ => (t, 1),
    };
    let n: u32 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 3600, 90m, 12h)"))?;
    let v = n.saturating_mul(mult);
    if v < 120 {
        return Err(format!(
            "lease time `{s}` is below dnsmasq's minimum of 2 minutes"
        ));
    }
    Ok(v)
}

fn parse_mac(cfg: &Config, src: usize, m: &Spanned<String>) -> Result<MacAddr, ConfigError> {
    let mac: MacAddr = m
        .value
        .parse()
        .map_err(|_| cfg.error(src, m, format!("`{}` is not a MAC address", m.value)))?;
    if mac.is_multicast() {
        return Err(cfg.error(
            src,
            m,
            format!(
                "{} is a multicast MAC address; a NIC needs a unicast one",
                m.value
            ),
        ));
    }
    if mac.0 == [0; 6] {
        return Err(cfg.error(src, m, "00:00:00:00:00:00 is not a usable MAC address"));
    }
    Ok(mac)
}

fn check_mtu(cfg: &Config, src: usize, m: &Spanned<u32>) -> Result<u32, ConfigError> {
    if !(68..=65535).contains(&m.value) {
        return Err(cfg.error(
            src,
            m,
            format!("MTU {} is out of range: Linux takes 68 to 65535", m.value),
        ));
    }
    Ok(m.value)
}

fn port16(cfg: &Config, src: usize, p: &Spanned<u32>, what: &str) -> Result<u16, ConfigError> {
    match u16::try_from(p.value) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(cfg.error(
            src,
            p,
            format!("{what} {} is out of range (1 to 65535)", p.value),
        )),
    }
}

fn net_bounds(n: &IpNet) -> (IpAddr, IpAddr) {
    (n.network(), n.broadcast())
}

/// Validates a loaded configuration into the desired state.
pub fn validate(cfg: &Config) -> Result<Desired, ConfigError> {
    let mut d = Desired::default();
    // where each network / vm was defined, for duplicate and reference errors
    let mut net_at: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let mut bridge_of: BTreeMap<String, String> = BTreeMap::new();
    let mut macs: BTreeMap<MacAddr, String> = BTreeMap::new();
    let mut ips: BTreeMap<IpAddr, String> = BTreeMap::new();

    for (src, f) in &cfg.files {
        let src = *src;
        for n in &f.networks {
            let name = &n.name;
            if name.value.is_empty()
                || !name
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(cfg.error(
                    src,
                    name,
                    format!(
                        "network name `{}`: use letters, digits, '-', '_' or '.'",
                        name.value
                    ),
                ));
            }
            if let Some((s, line)) = net_at.get(&name.value) {
                return Err(cfg.error(
                    src,
                    name,
                    format!(
                        "network `{}` is defined twice (first in {} line {line})",
                        name.value,
                        cfg.sources[*s].path.display()
                    ),
                ));
            }
            net_at.insert(name.value.clone(), (src, name.referenced.line()));
            check_ifname(&n.bridge.value).map_err(|e| cfg.error(src, &n.bridge, e))?;
            if let Some(other) = bridge_of.get(&n.bridge.value) {
                return Err(cfg.error(
                    src,
                    &n.bridge,
                    format!(
                        "bridge {} is already used by network `{other}`: one network per bridge",
                        n.bridge.value
                    ),
                ));
            }
            bridge_of.insert(n.bridge.value.clone(), name.value.clone());
            let kind = n.kind.value;
            let mtu = n.mtu.as_ref().map(|m| check_mtu(cfg, src, m)).transpose()?;
            // subnet and gateway
            let (subnet, gateway) = match (kind, &n.subnet) {
                (NetworkType::Ovs, Some(s)) => {
                    return Err(cfg.error(
                        src,
                        s,
                        "an ovs network has its subnets per VLAN: put `subnet` under `vlans`",
                    ))
                }
                (NetworkType::Ovs, None) => (None, None),
                (NetworkType::Bridged, Some(s)) => {
                    return Err(cfg.error(
                        src,
                        s,
                        "a bridged network has no subnet of its own (guests live on the LAN's); give `gateway` with a prefix for a host address, or use type nat/routed/isolated",
                    ))
                }
                (NetworkType::Bridged, None) => (None, None),
                (_, None) => {
                    return Err(cfg.error(
                        src,
                        &n.kind,
                        format!(
                            "a {} network needs `subnet` (e.g. 10.10.0.0/24)",
                            kind.as_str()
                        ),
                    ))
                }
                (_, Some(s)) => {
                    if s.value != s.value.trunc() {
                        return Err(cfg.error(
                            src,
                            s,
                            format!(
                                "subnet {} has host bits set: did you mean {}?",
                                s.value,
                                s.value.trunc()
                            ),
                        ));
                    }
                    if s.value.addr().is_ipv6() {
                        return Err(cfg.error(
                            src,
                            s,
                            "`subnet` is the IPv4 subnet; put an IPv6 one under `ipv6`",
                        ));
                    }
                    if s.value.prefix_len() > 30 {
                        return Err(cfg.error(
                            src,
                            s,
                            format!(
                                "subnet {} is too small for a gateway and guests (at most /30)",
                                s.value
                            ),
                        ));
                    }
                    let (net, bcast) = net_bounds(&s.value);
                    let gw = match &n.gateway {
                        Some(g) => {
                            if !s.value.contains(&g.value) {
                                return Err(cfg.error(
                                    src,
                                    g,
                                    format!(
                                        "gateway {} is outside its subnet {}",
                                        g.value, s.value
                                    ),
                                ));
                            }
                            if g.value == net || g.value == bcast {
                                return Err(cfg.error(
                                    src,
                                    g,
                                    format!(
                                        "gateway {} is the {} address of {}",
                                        g.value,
                                        if g.value == net { "network" } else { "broadcast" },
                                        s.value
                                    ),
                                ));
                            }
                            g.value
                        }
                        None => s.value.hosts().next().unwrap_or(net),
                    };
                    let gw_net = IpNet::new(gw, s.value.prefix_len()).unwrap_or(s.value);
                    (Some(s.value), Some(gw_net))
                }
            };
            // overlapping subnets
            if let Some(sn) = subnet {
                for other in &d.networks {
                    if let Some(os) = other.subnet {
                        if os.contains(&sn.network()) || sn.contains(&os.network()) {
                            let at = n.subnet.as_ref().map(|s| &s.referenced);
                            return Err(cfg.error_at(
                                crate::load::pos(src, at.unwrap_or(&n.name.referenced)),
                                format!("subnet {sn} overlaps {os} of network `{}`", other.name),
                            ));
                        }
                    }
                }
            }
            // Open vSwitch specifics
            let mut vlans: Vec<OvsVlan> = vec![];
            let (mut bond_mode, mut lacp) = (None, None);
            let mut datapath = None;
            if kind == NetworkType::Ovs {
                if let Some(d) = &n.datapath {
                    if !matches!(d.value.as_str(), "system" | "netdev") {
                        return Err(cfg.error(
                            src,
                            d,
                            format!(
                                "datapath `{}`: use system (the kernel's) or netdev (userspace)",
                                d.value
                            ),
                        ));
                    }
                    datapath = Some(d.value.clone());
                }
                let mut seen = BTreeSet::new();
                for v in &n.vlans {
                    if !(1..=4094).contains(&v.id.value) {
                        return Err(cfg.error(src, &v.id, format!("VLAN {} is out of range: 802.1Q ids are 1 to 4094 (0 and 4095 are reserved)", v.id.value)));
                    }
                    let id = v.id.value as u16;
                    if !seen.insert(id) {
                        return Err(cfg.error(src, &v.id, format!("VLAN {id} is listed twice")));
                    }
                    check_ifname(&format!("{}.{id}", n.bridge.value)).map_err(|e| {
                        cfg.error(
                            src,
                            &n.bridge,
                            format!("{e} (the internal port of VLAN {id})"),
                        )
                    })?;
                    let gateway =
                        match (&v.subnet, &v.gateway) {
                            (Some(sn), Some(g)) => {
                                if sn.value != sn.value.trunc() {
                                    return Err(cfg.error(
                                        src,
                                        sn,
                                        format!(
                                            "subnet {} has host bits set: did you mean {}?",
                                            sn.value,
                                            sn.value.trunc()
                                        ),
                                    ));
                                }
                                if !sn.value.contains(&g.value) {
                                    return Err(cfg.error(
                                        src,
                                        g,
                                        format!(
                                            "gateway {} is outside its subnet {}",
                                            g.value, sn.value
                                        ),
                                    ));
                                }
                                for other in d.networks.iter().filter_map(|x| x.subnet).chain(
                                    vlans.iter().filter_map(|x| x.gateway.map(|g| g.trunc())),
                                ) {
                                    if other.contains(&sn.value.network())
                                        || sn.value.contains(&other.network())
                                    {
                                        return Err(cfg.error(
                                            src,
                                            sn,
                                            format!("subnet {} overlaps {other}", sn.value),
                                        ));
                                    }
                                }
                                IpNet::new(g.value, sn.value.prefix_len()).ok()
                            }
                            (Some(sn), None) => sn
                                .value
                                .hosts()
                                .next()
                                .and_then(|h| IpNet::new(h, sn.value.prefix_len()).ok()),
                            (None, Some(g)) => {
                                return Err(cfg.error(
                                    src,
                                    g,
                                    "a VLAN gateway needs the VLAN's `subnet`",
                                ))
                            }
                            (None, None) => None,
                        };
                    vlans.push(OvsVlan { id, gateway });
                }
                if let Some(b) = &n.bond {
                    if let Some(m) = &b.mode {
                        if !matches!(
                            m.value.as_str(),
                            "active-backup" | "balance-slb" | "balance-tcp"
                        ) {
                            return Err(cfg.error(
                                src,
                                m,
                                format!(
                                    "bond mode `{}`: use active-backup, balance-slb or balance-tcp",
                                    m.value
                                ),
                            ));
                        }
                        bond_mode = Some(m.value.clone());
                    }
                    if let Some(l) = &b.lacp {
                        if !matches!(l.value.as_str(), "active" | "passive" | "off") {
                            return Err(cfg.error(
                                src,
                                l,
                                format!("lacp `{}`: use active, passive or off", l.value),
                            ));
                        }
                        lacp = Some(l.value.clone());
                    }
                    if bond_mode.as_deref() == Some("balance-tcp")
                        && !matches!(lacp.as_deref(), Some("active" | "passive"))
                    {
                        return Err(cfg.error(
                            src,
                            b.mode.as_ref().unwrap_or(&n.bridge),
                            "balance-tcp needs LACP (lacp: active)",
                        ));
                    }
                    if n.ports.len() < 2 {
                        return Err(cfg.error(src, &n.bridge, "`bond` needs at least two `ports`"));
                    }
                }
            } else {
                if let Some(v) = n.vlans.first() {
                    return Err(cfg.error(
                        src,
                        &v.id,
                        format!(
                            "`vlans` belong to ovs networks; a {} network is one segment",
                            kind.as_str()
                        ),
                    ));
                }
                if let Some(d) = &n.datapath {
                    return Err(cfg.error(src, d, "`datapath` belongs to ovs networks"));
                }
            }
            if kind == NetworkType::Bridged && n.ports.is_empty() {
                return Err(cfg.error(
                    src,
                    &n.kind,
                    "a bridged network needs `ports`: the host interface(s) that join the LAN",
                ));
            }
            if !matches!(kind, NetworkType::Bridged | NetworkType::Ovs) {
                if let Some(p) = n.ports.first() {
                    return Err(cfg.error(
                        src,
                        p,
                        format!(
                            "`ports` puts host interfaces into a bridged network; a {} network reaches out through `uplink`",
                            kind.as_str()
                        ),
                    ));
                }
            }
            for p in &n.ports {
                check_ifname(&p.value).map_err(|e| cfg.error(src, p, e))?;
                if p.value == n.bridge.value {
                    return Err(cfg.error(src, p, "a bridge cannot be its own port"));
                }
            }
            if let Some(u) = &n.uplink {
                check_ifname(&u.value).map_err(|e| cfg.error(src, u, e))?;
                if matches!(
                    kind,
                    NetworkType::Isolated | NetworkType::Bridged | NetworkType::Ovs
                ) {
                    return Err(cfg.error(
                        src,
                        u,
                        format!("a {} network has no uplink", kind.as_str()),
                    ));
                }
                if u.value == n.bridge.value {
                    return Err(cfg.error(src, u, "the uplink cannot be the network's own bridge"));
                }
            }
            let gateway = match (kind, &n.gateway) {
                (NetworkType::Bridged, Some(g)) => {
                    return Err(cfg.error(
                        src,
                        g,
                        "a bridged network's host address is not managed here: keep it on the LAN's own configuration",
                    ))
                }
                _ => gateway,
            };
            // DHCP
            let dhcp = match &n.dhcp {
                None => None,
                Some(dh) => {
                    let Some(sn) = subnet else {
                        return Err(cfg.error(
                            src,
                            dh,
                            "DHCP on a bridged network would compete with the LAN's own DHCP server",
                        ));
                    };
                    let v = &dh.value;
                    for a in [&v.start, &v.end] {
                        if !sn.contains(&a.value) {
                            return Err(cfg.error(
                                src,
                                a,
                                format!(
                                    "DHCP range address {} is outside the subnet {sn}",
                                    a.value
                                ),
                            ));
                        }
                        let (net, bcast) = net_bounds(&sn);
                        if a.value == net || a.value == bcast {
                            return Err(cfg.error(
                                src,
                                a,
                                format!("DHCP range address {} is the subnet's network or broadcast address", a.value),
                            ));
                        }
                    }
                    if v.start.value > v.end.value {
                        return Err(cfg.error(
                            src,
                            &v.end,
                            format!(
                                "DHCP range ends ({}) before it starts ({})",
                                v.end.value, v.start.value
                            ),
                        ));
                    }
                    if let Some(g) = gateway {
                        if v.start.value <= g.addr() && g.addr() <= v.end.value {
                            return Err(cfg.error(
                                src,
                                &v.start,
                                format!(
                                    "the DHCP range {}-{} contains the gateway {}",
                                    v.start.value,
                                    v.end.value,
                                    g.addr()
                                ),
                            ));
                        }
                    }
                    let lease_secs = match &v.lease_time {
                        Some(t) => parse_duration(&t.value).map_err(|e| cfg.error(src, t, e))?,
                        None => 3600,
                    };
                    let mut hosts = vec![];
                    for h in &v.hosts {
                        let mac = parse_mac(cfg, src, &h.mac)?;
                        if !sn.contains(&h.ip.value) {
                            return Err(cfg.error(
                                src,
                                &h.ip,
                                format!("static lease {} is outside the subnet {sn}", h.ip.value),
                            ));
                        }
                        if let Some(prev) = macs.get(&mac) {
                            return Err(cfg.error(
                                src,
                                &h.mac,
                                format!("MAC {mac} is already used by {prev}"),
                            ));
                        }
                        macs.insert(mac, format!("a static lease of network `{}`", name.value));
                        if let Some(prev) = ips.get(&h.ip.value) {
                            return Err(cfg.error(
                                src,
                                &h.ip,
                                format!("address {} is already used by {prev}", h.ip.value),
                            ));
                        }
                        ips.insert(
                            h.ip.value,
                            format!("a static lease of network `{}`", name.value),
                        );
                        hosts.push(DhcpHost {
                            mac,
                            ip: h.ip.value,
                            name: h.name.clone(),
                        });
                    }
                    Some(Dhcp {
                        start: v.start.value,
                        end: v.end.value,
                        lease_secs,
                        hosts,
                    })
                }
            };
            let ipv6 = match &n.ipv6 {
                None => None,
                Some(v6) => {
                    if !v6.value.addr().is_ipv6() {
                        return Err(cfg.error(
                            src,
                            v6,
                            format!("{} is not an IPv6 address", v6.value),
                        ));
                    }
                    if v6.value.addr() == v6.value.network() {
                        return Err(cfg.error(
                            src,
                            v6,
                            format!(
                                "`ipv6` is the host's address with its prefix (e.g. {}), not the subnet",
                                IpNet::new(
                                    v6.value.hosts().next().unwrap_or(v6.value.addr()),
                                    v6.value.prefix_len()
                                )
                                .unwrap_or(v6.value)
                            ),
                        ));
                    }
                    Some(v6.value)
                }
            };
            d.networks.push(Net {
                name: name.value.clone(),
                kind,
                bridge: n.bridge.value.clone(),
                subnet,
                gateway,
                uplink: n.uplink.as_ref().map(|u| u.value.clone()),
                ports: n.ports.iter().map(|p| p.value.clone()).collect(),
                mtu,
                stp: n.stp.unwrap_or(false),
                dhcp,
                dns_forwarders: n
                    .dns
                    .as_ref()
                    .map(|x| x.forwarders.iter().map(|f| f.value).collect())
                    .unwrap_or_default(),
                ipv6,
                datapath,
                vlans,
                bond_mode,
                lacp,
            });
        }
    }

    // a bridge must not also be another network's port or uplink
    for n in &d.networks {
        for p in &n.ports {
            if let Some(other) = bridge_of.get(p) {
                let (src, def) = find_net(cfg, &n.name);
                let at = def
                    .and_then(|nd| nd.ports.iter().find(|x| &x.value == p))
                    .map(|x| x.referenced);
                return Err(cfg.error_at(
                    crate::load::pos(src, &at.unwrap_or(serde_saphyr::Location::UNKNOWN)),
                    format!("port {p} is the bridge of network `{other}`"),
                ));
            }
        }
    }

    // vNICs
    let mut taps: BTreeSet<String> = BTreeSet::new();
    let mut by_vm: BTreeSet<(String, Option<String>)> = BTreeSet::new();
    for (src, f) in &cfg.files {
        let src = *src;
        for v in &f.vnics {
            // where to point at this vNIC: its tap, or else its VM
            let at: &Spanned<String> = v.tap.as_ref().unwrap_or(&v.vm);
            let tap_name = v.tap.as_ref().map(|t| t.value.clone()).unwrap_or_default();
            if let Some(t) = &v.tap {
                check_ifname(&t.value).map_err(|e| cfg.error(src, t, e))?;
                if !taps.insert(t.value.clone()) {
                    return Err(cfg.error(src, t, format!("tap {} is attached twice", t.value)));
                }
                if bridge_of.contains_key(&t.value) {
                    return Err(cfg.error(
                        src,
                        t,
                        format!("{} is a network's bridge, not a vNIC", t.value),
                    ));
                }
            } else if !by_vm.insert((v.vm.value.clone(), v.mac.as_ref().map(|m| m.value.clone()))) {
                return Err(cfg.error(
                    src,
                    &v.vm,
                    format!(
                        "vm `{}` has two vNICs without `tap`: give each its `mac` (or its tap)",
                        v.vm.value
                    ),
                ));
            }
            let Some(net) = d.network(&v.network.value).cloned() else {
                return Err(cfg.error(
                    src,
                    &v.network,
                    format!(
                        "no network named `{}`{}",
                        v.network.value,
                        suggestion(&v.network.value, d.networks.iter().map(|n| n.name.as_str()))
                    ),
                ));
            };
            if net.ports.contains(&tap_name) {
                return Err(cfg.error(
                    src,
                    at,
                    format!("{tap_name} is already a port of network `{}`", net.name),
                ));
            }
            let mac = v.mac.as_ref().map(|m| parse_mac(cfg, src, m)).transpose()?;
            if let (Some(mac), Some(m)) = (mac, &v.mac) {
                if let Some(prev) = macs.get(&mac) {
                    // the static lease of the same VM is the same NIC
                    let same_nic = net.dhcp.as_ref().is_some_and(|dh| {
                        dh.hosts
                            .iter()
                            .any(|h| h.mac == mac && Some(h.ip) == v.ip.as_ref().map(|i| i.value))
                    });
                    if !same_nic {
                        return Err(cfg.error(
                            src,
                            m,
                            format!("MAC {mac} is already used by {prev}"),
                        ));
                    }
                } else {
                    macs.insert(mac, format!("vm `{}`", v.vm.value));
                }
            }
            if let Some(ip) = &v.ip {
                if let Some(sn) = net.subnet {
                    if !sn.contains(&ip.value) {
                        return Err(cfg.error(
                            src,
                            ip,
                            format!(
                                "address {} is outside network `{}`'s subnet {sn}",
                                ip.value, net.name
                            ),
                        ));
                    }
                    if Some(ip.value) == net.gateway.map(|g| g.addr()) {
                        return Err(cfg.error(
                            src,
                            ip,
                            format!("address {} is the network's gateway (the host)", ip.value),
                        ));
                    }
                }
                if let Some(prev) = ips.get(&ip.value) {
                    let same_nic = net.dhcp.as_ref().is_some_and(|dh| {
                        dh.hosts
                            .iter()
                            .any(|h| h.ip == ip.value && Some(h.mac) == mac)
                    });
                    if !same_nic {
                        return Err(cfg.error(
                            src,
                            ip,
                            format!("address {} is already used by {prev}", ip.value),
                        ));
                    }
                } else {
                    ips.insert(ip.value, format!("vm `{}`", v.vm.value));
                }
            }
            let mtu = v.mtu.as_ref().map(|m| check_mtu(cfg, src, m)).transpose()?;
            let vlan = match &v.vlan {
                None => None,
                Some(t)
                    if net.kind == NetworkType::Ovs
                        && !net.vlans.is_empty()
                        && !net.vlans.iter().any(|x| u32::from(x.id) == t.value) =>
                {
                    return Err(cfg.error(
                        src,
                        t,
                        format!(
                            "VLAN {} is not one of network `{}`'s VLANs ({})",
                            t.value,
                            net.name,
                            net.vlans.iter().map(|x| x.id.to_string()).collect::<Vec<_>>().join(", ")
                        ),
                    ))
                }
                Some(t) if (1..=4094).contains(&t.value) => Some(t.value as u16),
                Some(t) => {
                    return Err(cfg.error(
                        src,
                        t,
                        format!(
                            "VLAN {} is out of range: 802.1Q ids are 1 to 4094 (0 and 4095 are reserved)",
                            t.value
                        ),
                    ))
                }
            };
            let qos = match &v.qos {
                None => None,
                Some(q) => {
                    let rate = parse_rate(&q.value.rate.value)
                        .map_err(|e| cfg.error(src, &q.value.rate, e))?;
                    let burst = match &q.value.burst {
                        Some(b) => parse_size(&b.value).map_err(|e| cfg.error(src, b, e))?,
                        None => ((rate / 8 / 250) as u32).max(16 * 1024),
                    };
                    Some((rate, burst))
                }
            };
            if v.antispoof && (mac.is_none() || v.ip.is_none()) {
                return Err(cfg.error(
                    src,
                    at,
                    "antispoof needs the vNIC's `mac` and `ip`: they are what may leave the tap",
                ));
            }
            d.vnics.push(Vnic {
                vm: v.vm.value.clone(),
                tap: tap_name,
                network: net.name.clone(),
                mac,
                ip: v.ip.as_ref().map(|i| i.value),
                mtu,
                vlan,
                qos,
                antispoof: v.antispoof,
            });
        }
    }

    // port forwards
    let mut fwd_keys: BTreeSet<(String, u16)> = BTreeSet::new();
    for (src, f) in &cfg.files {
        let src = *src;
        for p in &f.port_forwards {
            let proto = p.proto.value.to_ascii_lowercase();
            if proto != "tcp" && proto != "udp" {
                return Err(cfg.error(
                    src,
                    &p.proto,
                    format!("protocol `{}`: port forwards are tcp or udp", p.proto.value),
                ));
            }
            let host_port = port16(cfg, src, &p.host_port, "host port")?;
            if !fwd_keys.insert((proto.clone(), host_port)) {
                return Err(cfg.error(
                    src,
                    &p.host_port,
                    format!("{proto} port {host_port} is forwarded twice"),
                ));
            }
            let to_port = match &p.to_port {
                Some(tp) => port16(cfg, src, tp, "guest port")?,
                None => host_port,
            };
            let Some(net) = d
                .networks
                .iter()
                .find(|n| n.subnet.is_some_and(|s| s.contains(&p.to.value)))
            else {
                return Err(cfg.error(
                    src,
                    &p.to,
                    format!(
                        "{} is in no network defined here: forward to a guest address in a nat or routed network",
                        p.to.value
                    ),
                ));
            };
            if net.kind == NetworkType::Isolated {
                return Err(cfg.error(
                    src,
                    &p.to,
                    format!(
                        "{} is in isolated network `{}`, which forwards nothing",
                        p.to.value, net.name
                    ),
                ));
            }
            if Some(p.to.value) == net.gateway.map(|g| g.addr()) {
                return Err(cfg.error(src, &p.to, format!("{} is the host itself", p.to.value)));
            }
            d.forwards.push(Forward {
                proto,
                host_port,
                to: p.to.value,
                to_port,
                from: p.from.iter().map(|x| x.value).collect(),
                hairpin: p.hairpin,
                network: net.name.clone(),
            });
        }
    }

    // firewall
    for (src, f) in &cfg.files {
        let src = *src;
        for fw in &f.firewall {
            let target = match (&fw.network, &fw.vm) {
                (Some(n), None) => {
                    if d.network(&n.value).is_none() {
                        return Err(cfg.error(
                            src,
                            n,
                            format!(
                                "no network named `{}`{}",
                                n.value,
                                suggestion(&n.value, d.networks.iter().map(|x| x.name.as_str()))
                            ),
                        ));
                    }
                    FwTarget::Network(n.value.clone())
                }
                (None, Some(v)) => {
                    let nic = d.vnics.iter().find(|x| x.vm == v.value);
                    match nic {
                        None => {
                            return Err(cfg.error(
                                src,
                                v,
                                format!(
                                    "no vm named `{}` under vnics{}",
                                    v.value,
                                    suggestion(&v.value, d.vnics.iter().map(|x| x.vm.as_str()))
                                ),
                            ))
                        }
                        Some(x) if x.ip.is_none() => {
                            return Err(cfg.error(
                                src,
                                v,
                                format!(
                                    "firewall rules for vm `{}` need its `ip` under vnics",
                                    v.value
                                ),
                            ))
                        }
                        Some(_) => FwTarget::Vm(v.value.clone()),
                    }
                }
                (Some(n), Some(_)) => {
                    return Err(cfg.error(
                        src,
                        n,
                        "a firewall section names a `network` or a `vm`, not both",
                    ))
                }
                (None, None) => {
                    let at = fw
                        .policy
                        .as_ref()
                        .map(|p| p.referenced)
                        .or_else(|| fw.rules.first().map(|r| r.action.referenced))
                        .unwrap_or(serde_saphyr::Location::UNKNOWN);
                    return Err(cfg.error_at(
                        crate::load::pos(src, &at),
                        "a firewall section needs `network` or `vm`",
                    ));
                }
            };
            let drop_by_default = match &fw.policy {
                None => false,
                Some(p) => match p.value.as_str() {
                    "accept" => false,
                    "drop" => true,
                    other => {
                        return Err(cfg.error(
                            src,
                            p,
                            format!("policy `{other}`: use accept or drop"),
                        ))
                    }
                },
            };
            let mut rules = vec![];
            for r in &fw.rules {
                let allow = match r.action.value.as_str() {
                    "allow" | "accept" => true,
                    "deny" | "drop" => false,
                    other => {
                        return Err(cfg.error(
                            src,
                            &r.action,
                            format!("action `{other}`: use allow or deny"),
                        ))
                    }
                };
                let proto = match &r.proto {
                    None => None,
                    Some(p) => match p.value.to_ascii_lowercase().as_str() {
                        "any" => None,
                        x @ ("tcp" | "udp" | "icmp") => Some(x.to_string()),
                        other => {
                            return Err(cfg.error(
                                src,
                                p,
                                format!("protocol `{other}`: use tcp, udp, icmp or any"),
                            ))
                        }
                    },
                };
                let mut ports = vec![];
                for p in &r.ports {
                    let range = match &p.value {
                        PortSpec::One(n) => {
                            u16::try_from(*n).ok().filter(|x| *x > 0).map(|x| (x, x))
                        }
                        PortSpec::Range(s) => s.split_once('-').and_then(|(a, b)| {
                            let a: u16 = a.trim().parse().ok()?;
                            let b: u16 = b.trim().parse().ok()?;
                            (a > 0 && a <= b).then_some((a, b))
                        }),
                    };
                    let Some(range) = range else {
                        return Err(cfg.error(
                            src,
                            p,
                            "a port is 1 to 65535, or a range `from-to` with from <= to",
                        ));
                    };
                    ports.push(range);
                }
                if !ports.is_empty() && !matches!(proto.as_deref(), Some("tcp" | "udp")) {
                    return Err(cfg.error(
                        src,
                        &r.action,
                        "rules with `ports` need `proto: tcp` or `proto: udp`",
                    ));
                }
                rules.push(FwRule {
                    allow,
                    proto,
                    ports,
                    from: r.from.iter().map(|x| x.value).collect(),
                });
            }
            d.firewall.push(Firewall {
                target,
                drop_by_default,
                rules,
            });
        }
    }
    Ok(d)
}

fn find_net<'a>(cfg: &'a Config, name: &str) -> (usize, Option<&'a crate::schema::NetworkDef>) {
    for (src, f) in &cfg.files {
        if let Some(n) = f.networks.iter().find(|n| n.name.value == name) {
            return (*src, Some(n));
        }
    }
    (0, None)
}

/// ` (did you mean `x`?)` for a close name.
fn suggestion<'a>(want: &str, have: impl Iterator<Item = &'a str>) -> String {
    let best = have
        .map(|h| (edit_distance(want, h), h))
        .filter(|(d, _)| *d <= 2)
        .min();
    match best {
        Some((_, h)) => format!(" (did you mean `{h}`?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let v = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The networks of an applied desired state as the model describes networks (origin
/// `kvmnet`): bridge, forwarding mode, gateway address, DHCP range and static leases, port
/// forwards. Lets doctor hold the host to what kvmnet was asked to build (a DHCP server that
/// should run, a forward that should exist).
pub fn model_networks(d: &Desired) -> Vec<kvmnet_model::Network> {
    use kvmnet_model::network::{
        DhcpHost as MHost, DhcpRange, ForwardMode, NetworkIp, NetworkOrigin, PortForward,
    };
    d.networks
        .iter()
        .map(|n| {
            let mut m = kvmnet_model::Network::new(&n.name, NetworkOrigin::Kvmnet);
            m.bridge = Some(n.bridge.clone());
            m.forward = match n.kind {
                crate::schema::NetworkType::Nat => ForwardMode::Nat,
                crate::schema::NetworkType::Routed => ForwardMode::Route,
                crate::schema::NetworkType::Isolated => ForwardMode::Isolated,
                _ => ForwardMode::Bridge,
            };
            m.forward_dev = n.uplink.clone();
            m.mtu = n.mtu;
            if let Some(gw) = n.gateway {
                m.ips.push(NetworkIp {
                    address: gw,
                    dhcp_ranges: n
                        .dhcp
                        .iter()
                        .map(|h| DhcpRange {
                            start: h.start,
                            end: h.end,
                        })
                        .collect(),
                    dhcp_hosts: n
                        .dhcp
                        .iter()
                        .flat_map(|h| &h.hosts)
                        .map(|h| MHost {
                            mac: Some(h.mac),
                            name: h.name.clone(),
                            ip: Some(h.ip),
                        })
                        .collect(),
                });
            }
            m.port_forwards = d
                .forwards
                .iter()
                .filter(|f| f.network == n.name)
                .map(|f| PortForward {
                    proto: f.proto.clone(),
                    host_port: f.host_port,
                    host_address: None,
                    guest_ip: f.to,
                    guest_port: f.to_port,
                    allow_from: f.from.clone(),
                })
                .collect();
            m
        })
        .collect()
}
