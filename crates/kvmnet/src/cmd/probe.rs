//! `doctor --probe`: runs the active probes concurrently, each on a thread inside the right
//! namespace (host, namespace guests) or through the guest agent (QEMU/libvirt guests: ping and
//! TCP connect run inside the guest with `guest-exec`), and hands the results to doctor.

use std::net::IpAddr;
use std::time::Duration;

use kvmnet_doctor::{ProbeKind, ProbeResult};
use kvmnet_linux::probe::{self, ProbeOutcome};
use kvmnet_model::vm::GuestSource;
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

/// The shell line that runs one probe inside a guest (ping from iputils or busybox; TCP with
/// nc, else bash's /dev/tcp).
fn guest_command(kind: ProbeKind, target: IpAddr, port: Option<u16>, size: Option<u32>) -> String {
    match kind {
        ProbeKind::TcpConnect => {
            let p = port.unwrap_or(0);
            // OpenBSD nc and ncat know -z; busybox nc runs a program once connected
            format!(
                "h=$(nc -h 2>&1); case \"$h\" in *' -z'*) nc -z -w 2 {target} {p} ;; \
                 *'-e PROG'*) nc -w 2 {target} {p} -e true ;; \
                 *) timeout 2 bash -c 'exec 3<>/dev/tcp/{target}/{p}' ;; esac"
            )
        }
        _ => match size {
            Some(sz) => format!(
                "ping -c1 -W1 -n -q -M do -s {} {target}",
                sz.saturating_sub(28)
            ),
            None => format!("ping -c1 -W1 -n -q {target}"),
        },
    }
}

/// Runs one VM's probes, one after another, through its guest agent (it serves one client at
/// a time). Returns the results, or why the guest could not be probed.
fn run_agent_jobs(vm: &kvmnet_model::Vm, jobs: &[&Job]) -> Result<Vec<ProbeResult>, String> {
    let mut agent = crate::source::agent_for(vm)?;
    let wait = Duration::from_secs(6);
    let mut out = vec![];
    for j in jobs {
        let mut size = None;
        let (ok, detail) = match j.kind {
            ProbeKind::PathMtu => {
                let (code, text) =
                    agent.exec(&guest_command(j.kind, j.target, None, Some(j.mtu)), wait)?;
                if text.contains("invalid option") || text.contains("unrecognized option") {
                    // a ping that cannot set DF: path MTU is not measurable from this guest
                    continue;
                }
                if code == 0 {
                    size = Some(j.mtu);
                    (true, format!("{}-byte DF echo answered", j.mtu))
                } else {
                    for s in [1500u32, 1472, 1400, 1280, 576]
                        .into_iter()
                        .filter(|s| *s < j.mtu)
                    {
                        if agent
                            .exec(&guest_command(j.kind, j.target, None, Some(s)), wait)?
                            .0
                            == 0
                        {
                            size = Some(s);
                            break;
                        }
                    }
                    (
                        false,
                        format!("{}-byte DF echo failed ({})", j.mtu, last_line(&text)),
                    )
                }
            }
            kind => {
                let (code, text) =
                    agent.exec(&guest_command(kind, j.target, j.port, None), wait)?;
                let detail = match (kind, code) {
                    (ProbeKind::TcpConnect, 0) => "connected (from inside the guest)".to_string(),
                    (_, 0) => "echo reply (from inside the guest)".to_string(),
                    _ if text.to_lowercase().contains("refused") => "connection refused".into(),
                    _ => format!("no answer from inside the guest ({})", last_line(&text)),
                };
                (code == 0, detail)
            }
        };
        out.push(ProbeResult {
            from: j.from.clone(),
            kind: j.kind,
            target: j.target,
            port: j.port,
            ok,
            detail,
            macs: vec![],
            size,
        });
    }
    Ok(out)
}

fn last_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no output")
        .to_string()
}

/// Plans and runs the probes; returns their results and notes about what was not probed.
pub fn run_probes(
    s: &HostState,
    target: Option<IpAddr>,
    port: Option<u16>,
    vms: &[String],
) -> (Vec<ProbeResult>, Vec<String>) {
    let mut jobs = vec![];
    // jobs run through a guest agent, by agent socket
    let mut agent_jobs: Vec<(String, kvmnet_model::Vm, Vec<Job>)> = vec![];
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
        let via_agent = match (&vm.agent, &vm.guest) {
            _ if vm.source == VmSource::Netns && vm.netns.is_some() => None,
            (Some(_), Some(g)) if g.source == GuestSource::Agent => Some(vm.clone()),
            (Some(_), _) => {
                notes.push(format!(
                    "{}: not probed from inside: its guest agent does not answer",
                    vm.name
                ));
                continue;
            }
            (None, _) => {
                notes.push(format!(
                    "{}: not probed from inside: no guest agent (add a qemu-guest-agent channel to the domain)",
                    vm.name
                ));
                continue;
            }
        };
        let Some(g) = &vm.guest else { continue };
        let mut vm_jobs = vec![];
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
            // ARP needs a raw socket on the guest's interface: namespace guests only
            if via_agent.is_none() {
                vm_jobs.push(mk(ProbeKind::Dad, IpAddr::V4(own), None));
            }
            if let Some(gw) = gw {
                if via_agent.is_none() {
                    vm_jobs.push(mk(ProbeKind::Arp, gw, None));
                }
                vm_jobs.push(mk(ProbeKind::Ping, gw, None));
            }
            if let Some(t) = target {
                vm_jobs.push(mk(ProbeKind::Ping, t, None));
                vm_jobs.push(mk(ProbeKind::PathMtu, t, None));
                if let Some(p) = port {
                    vm_jobs.push(mk(ProbeKind::TcpConnect, t, Some(p)));
                }
            }
        }
        match via_agent {
            Some(path) => agent_jobs.push((vm.name.clone(), path, vm_jobs)),
            None => jobs.extend(vm_jobs),
        }
    }
    let total = jobs.len() + agent_jobs.iter().map(|a| a.2.len()).sum::<usize>();
    let show = total > 4 && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let finished = std::sync::atomic::AtomicBool::new(false);
    let (mut results, agent_results) = std::thread::scope(|sc| {
        // a progress line while probes wait for their answers (a second or more)
        let (done_ref, fin_ref) = (&done, &finished);
        if show {
            sc.spawn(move || {
                use std::sync::atomic::Ordering;
                let t0 = std::time::Instant::now();
                while !fin_ref.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if t0.elapsed() > Duration::from_millis(500) {
                        let d = done_ref.load(Ordering::Relaxed).min(total);
                        let n = d * 30 / total.max(1);
                        eprint!(
                            "\rkvmnet: probes [{}{}] {d}/{total}",
                            "#".repeat(n),
                            " ".repeat(30 - n)
                        );
                    }
                }
                if t0.elapsed() > Duration::from_millis(500) {
                    eprintln!("\rkvmnet: probes [{}] {total}/{total}", "#".repeat(30));
                }
            });
        }
        let hs: Vec<_> = jobs
            .iter()
            .map(|j| {
                sc.spawn(move || {
                    let r = run_job(j);
                    done_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    r
                })
            })
            .collect();
        let ahs: Vec<_> = agent_jobs
            .iter()
            .map(|(name, vm, js)| {
                sc.spawn(move || {
                    let refs: Vec<&Job> = js.iter().collect();
                    let r = (name.clone(), run_agent_jobs(vm, &refs));
                    done_ref.fetch_add(js.len(), std::sync::atomic::Ordering::Relaxed);
                    r
                })
            })
            .collect();
        let out = (
            hs.into_iter()
                .filter_map(|h| h.join().ok())
                .collect::<Vec<_>>(),
            ahs.into_iter()
                .filter_map(|h| h.join().ok())
                .collect::<Vec<_>>(),
        );
        fin_ref.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    });
    for (vm, r) in agent_results {
        match r {
            Ok(r) => results.extend(r),
            Err(e) => notes.push(format!("{vm}: not probed from inside: guest agent: {e}")),
        }
    }
    (results, notes)
}
