//! Collection: one namespace's whole kernel-side network state, the QEMU processes attached to
//! it, and the namespace guests joined to it by veth (each read on its own thread).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use kvmnet_model::link::LinkKind;
use kvmnet_model::network::{Network, NetworkIp, NetworkOrigin};
use kvmnet_model::vm::{
    AddrOrigin, GuestAddr, GuestInterface, GuestSource, GuestView, Vm, VmSource, VmState, Vnic,
    VnicType,
};
use kvmnet_model::{HostState, Link};

use crate::netns::{list_netns, netns_id, open_netns, run_in_netns};
use crate::ovsdb;
use crate::procfs::{self, ProcInfo};
use crate::rtnl::RtSocket;
use crate::{qemu, rtnl_decode as rd, sysctl, Error};

/// What to collect.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// The namespace to read (a name under /run/netns or a path); `None` = our own.
    pub netns: Option<String>,
    /// Also read each namespace guest's own view (its addresses, routes, neighbours).
    pub guests: bool,
    /// Read nftables (the expensive part on large rulesets).
    pub nftables: bool,
    /// Scan processes and sockets (VM discovery, tap holders, listening sockets). Planning a
    /// configuration does not need them.
    pub processes: bool,
}

impl CollectOptions {
    /// Everything, for the given namespace.
    pub fn full(netns: Option<String>) -> CollectOptions {
        CollectOptions {
            netns,
            guests: true,
            nftables: true,
            processes: true,
        }
    }

    /// What planning a configuration reads: links, addresses, routes, qdiscs, sysctls and
    /// nftables; no processes, sockets or guests.
    pub fn config(netns: Option<String>) -> CollectOptions {
        CollectOptions {
            netns,
            guests: false,
            nftables: true,
            processes: false,
        }
    }
}

/// Kernel-side state of one namespace plus the nsid -> name map of named namespaces.
struct Kernel {
    state: HostState,
    nsids: HashMap<i32, String>,
}

/// Prints phase timings to stderr when `KVMNET_DEBUG_TIMING` is set.
struct PhaseTimer {
    on: bool,
    last: std::time::Instant,
}

impl PhaseTimer {
    fn new() -> PhaseTimer {
        PhaseTimer {
            on: std::env::var_os("KVMNET_DEBUG_TIMING").is_some(),
            last: std::time::Instant::now(),
        }
    }
    fn mark(&mut self, what: &str) {
        if self.on {
            eprintln!("kvmnet: {what}: {:.1?}", self.last.elapsed());
        }
        self.last = std::time::Instant::now();
    }
}

fn collect_kernel(
    procs: &[ProcInfo],
    own_id: (u64, u64),
    netns: Option<&str>,
    sockets: bool,
) -> Result<Kernel, Error> {
    let mut t = PhaseTimer::new();
    let mut sock = RtSocket::open()?;
    let mut state = HostState::default();
    let links = rd::dump_links(&mut sock)?;
    t.mark("links");
    let names: HashMap<u32, String> = links
        .iter()
        .map(|(l, _)| (l.index, l.name.clone()))
        .collect();
    let (sysctls, missing) = sysctl::read_sysctls();
    state.sysctls = sysctls;
    for m in missing {
        state.warn("sysctl", format!("cannot read {m}"));
    }
    for (l, extra) in &links {
        if let Some(sc) = &extra.sysctls {
            state.sysctls.interfaces.insert(l.name.clone(), sc.clone());
        }
    }
    state.links = links.into_iter().map(|(l, _)| l).collect();
    // VLAN memberships, where a bridge filters VLANs
    if state
        .links
        .iter()
        .any(|l| l.bridge.as_ref().is_some_and(|b| b.vlan_filtering))
    {
        match rd::dump_bridge_vlans(&mut sock) {
            Ok(mut by_index) => {
                for l in &mut state.links {
                    let Some(v) = by_index.remove(&l.index) else {
                        continue;
                    };
                    if let Some(b) = l.bridge.as_mut() {
                        b.self_vlans = v;
                    } else if let Some(p) = l.bridge_port.as_mut() {
                        p.vlans = v;
                    }
                }
            }
            Err(e) => state.warn("bridge vlans", e.to_string()),
        }
    }
    state.addresses = rd::dump_addresses(&mut sock, &names)?;
    state.routes = rd::dump_routes(&mut sock, &names)?;
    match rd::dump_rules(&mut sock) {
        Ok(r) => state.rules = r,
        Err(e) => state.warn("rules", e.to_string()),
    }
    state.neighbours = rd::dump_neighbours(&mut sock, &names)?;
    match rd::dump_fdb(&mut sock, &names) {
        Ok(f) => state.fdb = f,
        Err(e) => state.warn("fdb", e.to_string()),
    }
    match rd::dump_qdiscs(&mut sock, &names) {
        Ok(q) => state.qdiscs = q,
        Err(e) => state.warn("qdisc", e.to_string()),
    }
    t.mark("addresses, routes, rules, neighbours, fdb, qdiscs");
    // Sockets belong to this namespace; owners come from processes in it.
    let local: Vec<ProcInfo> = procs
        .iter()
        .filter(|p| p.netns_ino == Some(own_id.1))
        .cloned()
        .collect();
    if sockets {
        state.sockets = procfs::listen_sockets(&local);
    }
    t.mark("sockets");
    // nsids of every named namespace, as this namespace numbers them
    let mut nsids = HashMap::new();
    for name in list_netns() {
        if Some(name.as_str()) == netns {
            continue;
        }
        if let Ok(file) = open_netns(&name) {
            if let Some(id) = rd::nsid_of(&mut sock, &file) {
                nsids.insert(id, name);
            }
        }
    }
    Ok(Kernel { state, nsids })
}

/// The current time as RFC 3339 UTC (no external time crate needed for this one format).
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // civil-from-days (H. Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The namespace's own view, as a guest sees it.
fn guest_view(name: &str) -> Result<(GuestView, Vec<Link>), Error> {
    let (links, addrs, routes, neigh) = run_in_netns(Some(name), || -> Result<_, Error> {
        let mut sock = RtSocket::open()?;
        let links = rd::dump_links(&mut sock)?;
        let names: HashMap<u32, String> = links
            .iter()
            .map(|(l, _)| (l.index, l.name.clone()))
            .collect();
        let addrs = rd::dump_addresses(&mut sock, &names)?;
        let routes = rd::dump_routes(&mut sock, &names)?;
        let neigh = rd::dump_neighbours(&mut sock, &names)?;
        Ok((links, addrs, routes, neigh))
    })??;
    let links: Vec<Link> = links.into_iter().map(|(l, _)| l).collect();
    let interfaces = links
        .iter()
        .filter(|l| l.kind != LinkKind::Loopback)
        .map(|l| GuestInterface {
            name: l.name.clone(),
            mac: l.mac,
            mtu: Some(l.mtu),
            up: l.admin_up,
            carrier: l.carrier.or(Some(l.is_usable())),
            addresses: addrs
                .iter()
                .filter(|a| a.ifindex == l.index && a.scope != "link" && a.scope != "host")
                .map(|a| a.cidr())
                .collect(),
        })
        .collect();
    let main: Vec<_> = routes
        .into_iter()
        .filter(|r| r.table == kvmnet_model::ip::RT_TABLE_MAIN)
        .collect();
    let view = GuestView {
        source: GuestSource::Netns,
        interfaces,
        routes: Some(main),
        nameservers: procfs::read_resolv(Some(name)).map(|r| r.nameservers),
        neighbours: neigh,
    };
    Ok((view, links))
}

/// The result of a collection: the state, and the libvirt daemon managing the namespace (if any),
/// for the caller to read domains and networks from.
#[derive(Debug)]
pub struct Collected {
    pub state: HostState,
    pub libvirt: Option<procfs::LibvirtDaemon>,
}

/// Collects the whole state of one namespace.
pub fn collect(opts: &CollectOptions) -> Result<Collected, Error> {
    let netns = opts.netns.as_deref();
    let own_id = match netns {
        Some(n) => netns_id(Some(n))?,
        None => netns_id(None)?,
    };
    let mut t = PhaseTimer::new();
    let procs = if opts.processes {
        procfs::scan_processes(true)
    } else {
        vec![]
    };
    t.mark("processes");
    // nf_tables is dumped on its own thread (in the same namespace) while rtnetlink is read:
    // on a large ruleset it is the longest part.
    let (kernel, nft) = std::thread::scope(|sc| {
        let nft = opts
            .nftables
            .then(|| sc.spawn(|| run_in_netns(netns, crate::nft::dump_ruleset)));
        let kernel = run_in_netns(netns, || {
            collect_kernel(&procs, own_id, netns, opts.processes)
        });
        (kernel, nft.map(|h| h.join()))
    });
    let Kernel { mut state, nsids } = kernel??;
    match nft {
        Some(Ok(Ok(Ok(rs)))) => state.nftables = rs,
        Some(Ok(Ok(Err(e)))) => state.warn("nftables", e.to_string()),
        Some(Ok(Err(e))) => state.warn("nftables", e.to_string()),
        Some(Err(_)) => state.warn("nftables", "the nftables reader panicked"),
        None => {}
    }
    t.mark("kernel state and nftables");
    state.netns = opts.netns.clone();
    state.collected_at = Some(now_rfc3339());
    state.hostname = read_trim("/proc/sys/kernel/hostname").unwrap_or_default();
    state.kernel = read_trim("/proc/sys/kernel/osrelease");
    match procfs::read_resolv(netns) {
        Some(r) => state.resolv = r,
        None => state.warn("resolv", "no /etc/resolv.conf"),
    }

    // veth peers: name the namespace they live in
    for l in state.links.iter_mut() {
        if let Some(p) = l.veth_peer.as_mut() {
            if let Some(id) = p.netnsid {
                p.netns = nsids.get(&id).cloned();
            }
        }
    }

    // taps: who holds them open
    let holders = procfs::tap_holders(&procs, Some(own_id.1));
    for l in state.links.iter_mut() {
        if let Some(t) = l.tap.as_mut() {
            if let Some(h) = holders.get(&l.name) {
                t.holders = h.clone();
            }
        }
    }

    // bare QEMU processes in this namespace
    for p in procs
        .iter()
        .filter(|p| p.netns_ino == Some(own_id.1) && qemu::is_qemu(&p.comm, &p.cmdline))
    {
        let fd_taps: HashMap<u32, String> = p.taps.iter().cloned().collect();
        let mut vm = qemu::parse_qemu_cmdline(p.pid, &p.cmdline, &fd_taps);
        // macvtap vNICs: qemu holds /dev/tapN where N is the macvtap's ifindex
        for idx in &p.macvtaps {
            if let Some(l) = state.link_by_index(*idx) {
                if let Some(n) = vm.vnics.iter_mut().find(|n| n.host_dev.is_none()) {
                    n.host_dev = Some(l.name.clone());
                    n.iface_type = VnicType::Direct;
                    n.source_dev = l.parent.clone();
                }
            }
        }
        for n in vm.vnics.iter_mut() {
            if let Some(dev) = n.host_dev.as_deref().and_then(|d| state.link(d)) {
                if n.source_bridge.is_none() {
                    n.source_bridge = dev.master.clone();
                }
            }
        }
        state.vms.push(vm);
    }

    t.mark("kernel state");
    // Open vSwitch: the instance whose vswitchd serves this namespace
    if opts.processes {
        match ovsdb::locate(&procs, own_id.1, netns.is_none()) {
            Some(loc) => state.ovs = Some(ovsdb::collect(&loc)),
            None if state.links.iter().any(|l| l.kind == LinkKind::Openvswitch) => {
                // kernel datapath devices, but nothing manages them
                state.ovs = Some(kvmnet_model::ovs::OvsState::default());
            }
            None => {}
        }
        t.mark("open vswitch");
    }
    if opts.guests {
        attach_agent_views(&mut state);
        t.mark("guest agents");
    }
    namespace_guests(&mut state, opts.guests);
    ovs_vnics(&mut state);
    bridge_networks(&mut state);
    t.mark("guests and networks");
    let libvirt = procfs::find_libvirt_daemon(&procs, own_id.1);
    Ok(Collected { state, libvirt })
}

/// Gives a VM its guest's own view (read through the agent), and fills its vNICs' guest-side
/// names, MTUs and addresses from it (matched by MAC).
pub fn apply_guest_view(vm: &mut Vm, v: GuestView) {
    for n in vm.vnics.iter_mut() {
        let Some(iface) = n
            .mac
            .and_then(|m| v.interfaces.iter().find(|x| x.mac == Some(m)))
        else {
            continue;
        };
        n.guest_ifname = Some(iface.name.clone());
        n.mtu = iface.mtu.or(n.mtu);
        for a in &iface.addresses {
            if !n.addresses.iter().any(|x| x.address == a.addr()) {
                n.addresses.push(GuestAddr {
                    address: a.addr(),
                    prefix_len: Some(a.prefix_len()),
                    origin: AddrOrigin::Agent,
                });
            }
        }
    }
    vm.guest = Some(v);
}

/// Reads each QEMU guest's own view through its guest agent (in parallel), and fills the
/// vNICs' guest-side names, MTUs and addresses from it.
pub fn attach_agent_views(state: &mut HostState) {
    let jobs: Vec<(usize, String)> = state
        .vms
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.agent
                .as_ref()
                .filter(|a| !a.libvirt)
                .and_then(|a| a.socket.clone())
                .map(|a| (i, a))
        })
        .collect();
    let views: Vec<(usize, Result<GuestView, String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .map(|(i, path)| (*i, s.spawn(move || crate::agent::guest_view(path))))
            .collect();
        hs.into_iter()
            .map(|(i, h)| {
                (
                    i,
                    h.join().unwrap_or(Err("the agent reader panicked".into())),
                )
            })
            .collect()
    });
    for (i, view) in views {
        match view {
            Ok(v) => apply_guest_view(&mut state.vms[i], v),
            Err(e) => {
                let name = state.vms[i].name.clone();
                state.warn("agent", format!("{name}: guest agent: {e}"));
            }
        }
    }
}

/// Veths whose peer lives in another namespace are vNICs of a guest named after it, unless the
/// veth carries a default route, or that namespace is at the other end of one (then it is the
/// host's upstream, not a guest).
fn namespace_guests(state: &mut HostState, read_guests: bool) {
    let uplinks: Vec<String> = state
        .routes
        .iter()
        .filter(|r| r.is_default())
        .flat_map(|r| {
            r.devices()
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    // the namespace at the other end of an uplink is the host's upstream (a router), also
    // where it has a leg in one of the host's bridges
    let upstream: Vec<Option<i32>> = state
        .links
        .iter()
        .filter(|l| uplinks.contains(&l.name))
        .filter_map(|l| l.veth_peer.as_ref().map(|p| p.netnsid))
        .filter(|id| id.is_some())
        .collect();
    let mut guests: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for l in &state.links {
        let Some(p) = &l.veth_peer else { continue };
        if p.netnsid.is_none() || uplinks.contains(&l.name) || upstream.contains(&p.netnsid) {
            continue;
        }
        // a member of an Open vSwitch bond is a link to a switch, not a guest's NIC
        if state
            .ovs
            .as_ref()
            .and_then(|o| o.port_of(&l.name))
            .is_some_and(|(_, port)| port.is_bond())
        {
            continue;
        }
        let name = p
            .netns
            .clone()
            .unwrap_or_else(|| format!("netnsid-{}", p.netnsid.unwrap_or(-1)));
        guests
            .entry(name)
            .or_default()
            .push((l.name.clone(), p.index));
    }
    let names: Vec<String> = guests.keys().cloned().collect();
    // read every guest namespace in parallel: one thread each
    let views: HashMap<String, Result<(GuestView, Vec<Link>), Error>> = if read_guests {
        std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .filter(|n| !n.starts_with("netnsid-"))
                .map(|n| (n.clone(), s.spawn(move || guest_view(n))))
                .collect();
            handles
                .into_iter()
                .map(|(n, h)| (n, h.join().unwrap_or(Err(Error::Thread))))
                .collect()
        })
    } else {
        HashMap::new()
    };
    for (name, devs) in guests {
        // a namespace reached over a routed veth (the host side has an address and no bridge)
        // is a guest only if it uses this host as its gateway; otherwise it is a neighbour
        // network (an upstream, a peer router) that happens to be a namespace
        if let Some(Ok((gv, _))) = views.get(&name) {
            let routed: Vec<&String> = devs
                .iter()
                .map(|(d, _)| d)
                .filter(|d| {
                    state.link(d).is_some_and(|l| l.master.is_none())
                        && state.addresses_of(d).any(|a| a.scope == "global")
                })
                .collect();
            if routed.len() == devs.len() {
                let host_addrs: Vec<IpAddr> = routed
                    .iter()
                    .flat_map(|d| state.addresses_of(d).map(|a| a.address))
                    .collect();
                let uses_host = gv.routes.as_ref().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r.is_default() && r.first_gateway().is_some_and(|g| host_addrs.contains(&g))
                    })
                });
                if !uses_host {
                    continue;
                }
            }
        }
        let mut vm = Vm {
            name: name.clone(),
            source: VmSource::Netns,
            uuid: None,
            state: VmState::Running,
            pid: None,
            netns: (!name.starts_with("netnsid-")).then(|| name.clone()),
            vnics: vec![],
            guest: None,
            vcpus: None,
            agent: None,
        };
        let view = match views.get(&name) {
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                state.warn("netns", format!("cannot read guest namespace {name}: {e}"));
                None
            }
            None => None,
        };
        for (dev, peer_index) in devs {
            let host = state.link(&dev);
            let mut n = Vnic {
                host_dev: Some(dev.clone()),
                model: Some("veth".into()),
                iface_type: VnicType::Veth,
                source_bridge: host.and_then(|h| h.master.clone()),
                ..Default::default()
            };
            if let Some((gv, glinks)) = view {
                if let Some(gl) = glinks.iter().find(|l| l.index == peer_index) {
                    n.mac = gl.mac;
                    n.guest_ifname = Some(gl.name.clone());
                    n.mtu = Some(gl.mtu);
                    if let Some(gi) = gv.interfaces.iter().find(|i| i.name == gl.name) {
                        n.addresses = gi
                            .addresses
                            .iter()
                            .map(|a| GuestAddr {
                                address: a.addr(),
                                prefix_len: Some(a.prefix_len()),
                                origin: AddrOrigin::Netns,
                            })
                            .collect();
                    }
                }
            }
            vm.vnics.push(n);
        }
        vm.guest = view.map(|(v, _)| v.clone());
        for n in &vm.vnics {
            if let (Some(dev), Some(g)) = (&n.host_dev, &n.guest_ifname) {
                if let Some(p) = state
                    .links
                    .iter_mut()
                    .find(|l| &l.name == dev)
                    .and_then(|l| l.veth_peer.as_mut())
                {
                    p.name = Some(g.clone());
                }
            }
        }
        state.vms.push(vm);
    }
}

/// vNICs on Open vSwitch ports: their bridge and VLAN come from the switch's database (with
/// the userspace datapath the kernel knows no master; with the kernel one it is ovs-system).
fn ovs_vnics(state: &mut HostState) {
    let Some(ovs) = state.ovs.clone() else { return };
    for vm in state.vms.iter_mut() {
        for n in vm.vnics.iter_mut() {
            let Some((b, p)) = n.host_dev.as_deref().and_then(|d| ovs.port_of(d)) else {
                continue;
            };
            if n.source_bridge.is_none() || n.source_bridge.as_deref() == Some("ovs-system") {
                n.source_bridge = Some(b.name.clone());
            }
            if n.vlan_tags.is_empty() {
                match (p.tag, p.is_trunk()) {
                    (Some(t), false) => n.vlan_tags = vec![t],
                    (_, true) => {
                        n.vlan_tags = p.trunks.clone();
                        n.vlan_trunk = true;
                    }
                    _ => {}
                }
            }
            if n.virtualport.is_none() {
                n.virtualport = Some("openvswitch".into());
            }
        }
    }
}

/// Every bridge with addresses is a network (libvirt definitions, when read, refine these).
fn bridge_networks(state: &mut HostState) {
    let mut nets = vec![];
    for b in state.bridges() {
        let ips: Vec<NetworkIp> = state
            .addresses_of(&b.name)
            .filter(|a| a.scope == "global")
            .filter_map(|a| IpNet::new(a.address, a.prefix_len).ok())
            .map(|address| NetworkIp {
                address,
                dhcp_ranges: vec![],
                dhcp_hosts: vec![],
            })
            .collect();
        let mut n = Network::new(&b.name, NetworkOrigin::Bridge);
        n.bridge = Some(b.name.clone());
        n.active = Some(b.admin_up);
        n.ips = ips;
        n.mtu = Some(b.mtu);
        nets.push(n);
    }
    state.networks.extend(nets);
}

/// True for addresses worth showing as a guest address (not link-local).
pub fn is_guest_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_link_local() && !a.is_loopback(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) != 0xfe80 && !a.is_loopback(),
    }
}
