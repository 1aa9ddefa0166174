//! `doctor --probe`: runs the active probes concurrently, each on a thread inside the right
//! namespace, and hands the results to doctor.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use kvmnet_doctor::{ProbeKind, ProbeResult};
use kvmnet_linux::probe::{self, ProbeOutcome};
use kvmnet_model::{HostState, VmSource};

const WAIT: Duration = Duration::from_millis(900);

struct Job {
    from: String,
    netns: Option<String>,
    kind: ProbeKind,
    target: IpAddr,
    port: Option<u16>,
    ifname: Option<String>,
    mtu: u32,
}

fn run_job(j: &Job) -> ProbeResult {
    let ns = j.netns.as_deref();
    let v4 = match j.target {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    };
    let mut size = None;
    let out: ProbeOutcome = match (j.kind, v4) {
        (ProbeKind::Arp, Some(t)) | (ProbeKind::Dad, Some(t)) => {
            let ifname = j.ifname.clone().unwrap_or_default();
            let dad = j.kind == ProbeKind::Dad;
            probe::in_netns(ns, move || probe::arp(&ifname, t, dad, WAIT))
        }
        (ProbeKind::Ping, Some(t)) => probe::in_netns(ns, move || probe::ping(t, 84, false, WAIT)),
        (ProbeKind::PathMtu, Some(t)) => {
            let mtu = j.mtu;
            let full = probe::in_netns(ns, move || probe::ping(t, mtu, true, WAIT));
            if full.ok {
                size = Some(mtu);
                full
            } else {
                let mut best = None;
                for s in [1500u32, 1472, 1400, 1280, 576]
                    .into_iter()
                    .filter(|s| *s < mtu)
                {
                    if probe::in_netns(ns, move || probe::ping(t, s, true, WAIT)).ok {
                        best = Some(s);
                        break;
                    }
                }
                size = best;
                ProbeOutcome {
                    ok: false,
                    detail: format!("{mtu}-byte DF echo failed ({})", full.detail),
                    macs: vec![],
                }
            }
        }
        (ProbeKind::TcpConnect, _) => {
            let (t, p) = (j.target, j.port.unwrap_or(0));
            probe::in_netns(ns, move || Ok(probe::tcp_connect(t, p, WAIT)))
        }
        _ => ProbeOutcome {
            ok: true,
            detail: "IPv6 probes are not run".into(),
            macs: vec![],
        },
    };
    ProbeResult {
        from: j.from.clone(),
        kind: j.kind,
        target: j.target,
        port: j.port,
        ok: out.ok,
        detail: out.detail,
        macs: out.macs,
        size,
    }
}

/// Plans and runs the probes; returns their results and notes about what was not probed.
pub fn run_probes(
    s: &HostState,
    target: Option<IpAddr>,
    port: Option<u16>,
    vms: &[String],
) -> (Vec<ProbeResult>, Vec<String>) {
    let mut jobs = vec![];
    let mut notes = vec![];
    // from the host
    if let Some(r) = s.default_route(false) {
        if let (Some(gw), Some(dev)) = (
            r.first_gateway(),
            r.devices().first().map(|d| d.to_string()),
        ) {
            for kind in [ProbeKind::Arp, ProbeKind::Ping] {
                jobs.push(Job {
                    from: "host".into(),
                    netns: s.netns.clone(),
                    kind,
                    target: gw,
                    port: None,
                    ifname: Some(dev.clone()),
                    mtu: 1500,
                });
            }
        }
    }
    for vm in s
        .vms
        .iter()
        .filter(|v| vms.is_empty() || vms.contains(&v.name))
    {
        if vm.source != VmSource::Netns || vm.netns.is_none() {
            notes.push(format!(
                "{}: not probed from inside: probes into QEMU/libvirt guests need the guest agent",
                vm.name
            ));
            continue;
        }
        let Some(g) = &vm.guest else { continue };
        for n in &vm.vnics {
            let Some(gi) = n.guest_ifname.as_deref() else {
                continue;
            };
            let Some(iface) = g.interfaces.iter().find(|i| i.name == gi) else {
                continue;
            };
            let Some(own) = iface.addresses.iter().find_map(|a| match a.addr() {
                IpAddr::V4(v) => Some(v),
                _ => None,
            }) else {
                continue;
            };
            let gw: Option<IpAddr> = g
                .routes
                .as_ref()
                .and_then(|rs| rs.iter().find(|r| r.is_default() && r.dst.addr().is_ipv4()))
                .and_then(|r| r.first_gateway());
            let mk = |kind, target, port| Job {
                from: vm.name.clone(),
                netns: vm.netns.clone(),
                kind,
                target,
                port,
                ifname: Some(gi.to_string()),
                mtu: iface.mtu.unwrap_or(1500),
            };
            jobs.push(mk(ProbeKind::Dad, IpAddr::V4(own), None));
            if let Some(gw) = gw {
                jobs.push(mk(ProbeKind::Arp, gw, None));
                jobs.push(mk(ProbeKind::Ping, gw, None));
            }
            if let Some(t) = target {
                jobs.push(mk(ProbeKind::Ping, t, None));
                jobs.push(mk(ProbeKind::PathMtu, t, None));
                if let Some(p) = port {
                    jobs.push(mk(ProbeKind::TcpConnect, t, Some(p)));
                }
            }
            let _ = Ipv4Addr::UNSPECIFIED;
        }
    }
    if jobs.len() > 4 && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("kvmnet: running {} probes...", jobs.len());
    }
    let results = std::thread::scope(|sc| {
        let hs: Vec<_> = jobs.iter().map(|j| sc.spawn(move || run_job(j))).collect();
        hs.into_iter()
            .filter_map(|h| h.join().ok())
            .collect::<Vec<_>>()
    });
    (results, notes)
}
