//! `kvmnet bench`: throughput (TCP, several streams), packet rate (UDP) and round-trip time
//! (TCP ping-pong) between the host and guests, built in: sockets are opened inside each
//! side's network namespace and driven from here. QEMU/libvirt guests take part through their
//! guest agent (TCP into or out of the guest with its `nc`, RTT with its `ping`). Then tuning
//! advice from the model: NIC model, vhost, multiqueue, MTU, offloads, qdisc.

use std::io::{IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvmnet_linux::netns::run_in_netns;
use kvmnet_model::{HostState, Vm};
use serde::Serialize;

use crate::cli::BenchArgs;
use crate::error::CliError;

/// One side of the measurement.
#[derive(Debug, Clone)]
struct Side {
    label: String,
    netns: Option<String>,
    addr: IpAddr,
    vm: Option<Vm>,
}

#[derive(Debug, Serialize)]
struct Results {
    from: String,
    to: String,
    src: IpAddr,
    dst: IpAddr,
    duration_s: f64,
    streams: usize,
    tcp_bits_per_second: Option<f64>,
    udp_packets_per_second: Option<f64>,
    udp_loss: Option<f64>,
    rtt_p50_us: Option<f64>,
    rtt_p99_us: Option<f64>,
    advice: Vec<String>,
    notes: Vec<String>,
}

fn err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> CliError + '_ {
    move |e| CliError::runtime(format!("{what}: {e}"))
}

/// The host's address on the way to `peer` (the address a guest would use as gateway).
fn host_addr_towards(s: &HostState, peer: IpAddr) -> Option<IpAddr> {
    s.addresses
        .iter()
        .find(|a| a.scope == "global" && a.network().contains(&peer))
        .map(|a| a.address)
}

fn vm_side(s: &HostState, name: &str) -> Result<Side, CliError> {
    let vm =
        s.vms.iter().find(|v| v.name == name).ok_or_else(|| {
            CliError::input(format!("no VM named {name} (see `kvmnet show vms`)"))
        })?;
    let addr = vm
        .vnics
        .iter()
        .flat_map(|n| n.addresses.iter().map(|a| a.address))
        .find(|a| a.is_ipv4())
        .ok_or_else(|| CliError::input(format!("{name} has no known IPv4 address")))?;
    Ok(Side {
        label: format!("vm:{name}"),
        netns: vm.netns.clone(),
        addr,
        vm: Some(vm.clone()),
    })
}

fn sides(s: &HostState, from: &str, to: &str) -> Result<(Side, Side), CliError> {
    let host = |peer: &Side| -> Result<Side, CliError> {
        Ok(Side {
            label: "host".into(),
            netns: s.netns.clone(),
            addr: host_addr_towards(s, peer.addr).ok_or_else(|| {
                CliError::input(format!(
                    "the host has no address on {}'s subnet",
                    peer.label
                ))
            })?,
            vm: None,
        })
    };
    let parse = |e: &str| -> Result<Option<Side>, CliError> {
        if e == "host" {
            Ok(None)
        } else if let Some(n) = e.strip_prefix("vm:") {
            vm_side(s, n).map(Some)
        } else {
            Err(CliError::input(format!(
                "endpoint `{e}`: use host or vm:NAME"
            )))
        }
    };
    match (parse(from)?, parse(to)?) {
        (Some(a), Some(b)) => Ok((a, b)),
        (Some(a), None) => {
            let h = host(&a)?;
            Ok((a, h))
        }
        (None, Some(b)) => Ok((host(&b)?, b)),
        (None, None) => Err(CliError::input(
            "measure between the host and a VM, or two VMs",
        )),
    }
}

/// Whether a side can run sockets directly (the host, or a namespace guest).
fn direct(s: &Side) -> bool {
    s.vm.as_ref().is_none_or(|v| v.netns.is_some())
}

fn progress(on: bool, what: &str, done: f64) {
    let done = done.clamp(0.0, 1.0);
    if on {
        let n = (done * 30.0) as usize;
        eprint!(
            "\r{what:<14} [{}{}] {:>3.0}%",
            "#".repeat(n.min(30)),
            " ".repeat(30 - n.min(30)),
            done * 100.0
        );
        let _ = std::io::stderr().flush();
    }
}

fn tcp_throughput(
    a: &Side,
    b: &Side,
    streams: usize,
    dur: Duration,
    tty: bool,
) -> Result<f64, CliError> {
    let bind: SocketAddr = SocketAddr::new(b.addr, 0);
    let listener: TcpListener = run_in_netns(b.netns.as_deref(), move || TcpListener::bind(bind))
        .map_err(err("receiver namespace"))?
        .map_err(err("receiver"))?;
    let port = listener.local_addr().map_err(err("receiver"))?.port();
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = vec![];
    // receivers
    let t2 = total.clone();
    let accept = std::thread::spawn(move || {
        let mut rs = vec![];
        for _ in 0..streams {
            let Ok((mut c, _)) = listener.accept() else {
                break;
            };
            let t = t2.clone();
            rs.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    t.fetch_add(n as u64, Ordering::Relaxed);
                }
            }));
        }
        for r in rs {
            let _ = r.join();
        }
    });
    // senders
    let dst = SocketAddr::new(b.addr, port);
    for _ in 0..streams {
        let conn: TcpStream = run_in_netns(a.netns.as_deref(), move || {
            TcpStream::connect_timeout(&dst, Duration::from_secs(3))
        })
        .map_err(err("sender namespace"))?
        .map_err(|e| CliError::runtime(format!("{} cannot connect to {dst}: {e}", a.label)))?;
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || {
            let mut c = conn;
            let buf = vec![0x5au8; 128 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if c.write_all(&buf).is_err() {
                    break;
                }
            }
        }));
    }
    // measure after a short warm-up
    std::thread::sleep(Duration::from_millis(300));
    let start_bytes = total.load(Ordering::Relaxed);
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        std::thread::sleep(Duration::from_millis(100));
        progress(tty, "TCP", t0.elapsed().as_secs_f64() / dur.as_secs_f64());
    }
    progress(tty, "TCP", 1.0);
    let bytes = total.load(Ordering::Relaxed) - start_bytes;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let _ = accept.join();
    if tty {
        eprintln!();
    }
    Ok(bytes as f64 * 8.0 / secs)
}

fn udp_rate(a: &Side, b: &Side, dur: Duration, tty: bool) -> Result<(f64, f64), CliError> {
    let bind = SocketAddr::new(b.addr, 0);
    let rx: UdpSocket = run_in_netns(b.netns.as_deref(), move || UdpSocket::bind(bind))
        .map_err(err("receiver namespace"))?
        .map_err(err("receiver"))?;
    let dst = SocketAddr::new(b.addr, rx.local_addr().map_err(err("receiver"))?.port());
    let src = SocketAddr::new(a.addr, 0);
    let tx: UdpSocket = run_in_netns(a.netns.as_deref(), move || {
        let s = UdpSocket::bind(src)?;
        s.connect(dst)?;
        Ok::<_, std::io::Error>(s)
    })
    .map_err(err("sender namespace"))?
    .map_err(err("sender"))?;
    let _ = rx.set_read_timeout(Some(Duration::from_millis(200)));
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (g2, d2) = (got.clone(), done.clone());
    let r = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !d2.load(Ordering::Relaxed) {
            if rx.recv(&mut buf).is_ok() {
                g2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let payload = [0u8; 64];
    let mut sent = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        for _ in 0..256 {
            if tx.send(&payload).is_ok() {
                sent += 1;
            }
        }
        if sent.is_multiple_of(256 * 64) {
            progress(tty, "UDP", t0.elapsed().as_secs_f64() / dur.as_secs_f64());
        }
    }
    progress(tty, "UDP", 1.0);
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    let _ = r.join();
    if tty {
        eprintln!();
    }
    let received = got.load(Ordering::Relaxed) as f64;
    Ok((
        received / secs,
        if sent > 0 {
            1.0 - received / sent as f64
        } else {
            0.0
        },
    ))
}

fn rtt(a: &Side, b: &Side, samples: usize) -> Result<(f64, f64), CliError> {
    let bind = SocketAddr::new(b.addr, 0);
    let listener: TcpListener = run_in_netns(b.netns.as_deref(), move || TcpListener::bind(bind))
        .map_err(err("receiver namespace"))?
        .map_err(err("receiver"))?;
    let dst = SocketAddr::new(
        b.addr,
        listener.local_addr().map_err(err("receiver"))?.port(),
    );
    let echo = std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.set_nodelay(true);
            let mut b = [0u8; 1];
            while let Ok(1) = c.read(&mut b) {
                if c.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
    let mut c: TcpStream = run_in_netns(a.netns.as_deref(), move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(3))
    })
    .map_err(err("sender namespace"))?
    .map_err(|e| CliError::runtime(format!("{} cannot connect to {dst}: {e}", a.label)))?;
    let _ = c.set_nodelay(true);
    let mut lat = Vec::with_capacity(samples);
    let mut b = [7u8; 1];
    for _ in 0..samples {
        let t = Instant::now();
        c.write_all(&b).map_err(err("rtt"))?;
        c.read_exact(&mut b).map_err(err("rtt"))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(c);
    let _ = echo.join();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100]))
}

/// TCP into or out of a QEMU/libvirt guest through its agent, with the guest's `nc`.
fn agent_tcp(vm: &Vm, guest_sends: bool, host: &Side, dur: Duration) -> Result<f64, CliError> {
    let mut agent = crate::source::agent_for(vm).map_err(CliError::runtime)?;
    let secs = dur.as_secs().max(1);
    if guest_sends {
        let bind = SocketAddr::new(host.addr, 0);
        let listener: TcpListener =
            run_in_netns(host.netns.as_deref(), move || TcpListener::bind(bind))
                .map_err(err("receiver namespace"))?
                .map_err(err("receiver"))?;
        let port = listener.local_addr().map_err(err("receiver"))?.port();
        let _ = listener.set_nonblocking(true);
        let deadline = Instant::now() + dur + Duration::from_secs(15);
        let recv = std::thread::spawn(move || -> (u64, f64) {
            // the guest may never connect: wait for it until the deadline only
            let mut c = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => return (0, 1.0),
                }
            };
            let _ = c.set_nonblocking(false);
            let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            let t0 = Instant::now();
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 || Instant::now() > deadline {
                    break;
                }
                n += k as u64;
            }
            (n, t0.elapsed().as_secs_f64())
        });
        let cmd = format!(
            "timeout {secs} sh -c 'cat /dev/zero | nc {} {port}' > /dev/null 2>&1 ; true",
            host.addr
        );
        let _ = agent.exec(&cmd, dur + Duration::from_secs(10));
        let (n, t) = recv
            .join()
            .map_err(|_| CliError::runtime("receiver failed"))?;
        Ok(n as f64 * 8.0 / t.max(0.001))
    } else {
        let port = 47_123u16;
        let guest = vm
            .vnics
            .iter()
            .flat_map(|n| n.addresses.iter().map(|a| a.address))
            .find(|a| a.is_ipv4())
            .ok_or_else(|| CliError::input("the guest has no IPv4 address"))?;
        // the guest's sink, left running in the background by the agent's shell
        let _ = agent.exec(
            &format!(
                "(timeout {} nc -l -p {port} > /dev/null 2>&1 < /dev/null &) ; sleep 0.3",
                secs + 5
            ),
            Duration::from_secs(5),
        );
        let dst = SocketAddr::new(guest, port);
        let mut c: TcpStream = run_in_netns(host.netns.as_deref(), move || {
            TcpStream::connect_timeout(&dst, Duration::from_secs(3))
        })
        .map_err(err("sender namespace"))?
        .map_err(|e| {
            CliError::runtime(format!("cannot connect to the guest's nc at {dst}: {e}"))
        })?;
        let _ = c.set_write_timeout(Some(Duration::from_secs(3)));
        let buf = vec![0x5au8; 128 * 1024];
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed() < dur {
            if c.write_all(&buf).is_err() {
                break;
            }
            n += buf.len() as u64;
        }
        Ok(n as f64 * 8.0 / t0.elapsed().as_secs_f64())
    }
}

/// Tuning advice for the VMs of a measurement, from the model.
/// Host-side offloads that are off, per device, read with ethtool inside the host's namespace.
fn offloads_off(s: &HostState, dev: &str) -> Vec<String> {
    let mut cmd = match &s.netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, "ethtool", "-k", dev]);
            c
        }
        None => {
            let mut c = std::process::Command::new("ethtool");
            c.args(["-k", dev]);
            c
        }
    };
    let Ok(o) = cmd.stderr(std::process::Stdio::null()).output() else {
        return vec![];
    };
    if !o.status.success() {
        return vec![];
    }
    parse_offloads_off(&String::from_utf8_lossy(&o.stdout))
}

/// The segmentation/receive offloads `ethtool -k` reports as off (not those it cannot change).
fn parse_offloads_off(text: &str) -> Vec<String> {
    [
        "tcp-segmentation-offload",
        "generic-segmentation-offload",
        "generic-receive-offload",
    ]
    .into_iter()
    .filter(|k| {
        text.lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix(k)
                .and_then(|r| r.strip_prefix(": off"))
                .is_some_and(|r| !r.contains("[fixed]"))
        })
    })
    .map(str::to_string)
    .collect()
}

/// Tuning advice for one VM from the model, each with the gain to expect.
/// `offloads` gives the host-side offloads that are off for a device.
fn advice(
    s: &HostState,
    vm: &Vm,
    measured_bps: Option<f64>,
    offloads: &dyn Fn(&str) -> Vec<String>,
) -> Vec<String> {
    let mut out = vec![];
    let vcpus = vm.vcpus.unwrap_or(1);
    for n in &vm.vnics {
        let dev = n.host_dev.clone().unwrap_or_default();
        let link = s.link(&dev);
        match n.model.as_deref() {
            Some(m @ ("e1000" | "e1000e" | "rtl8139" | "ne2k_pci" | "pcnet")) => out.push(format!(
                "{}/{dev}: the {m} NIC is emulated register by register: model virtio (`<model type='virtio'/>`, guest driver virtio_net) typically gives 3-10x the throughput at a fraction of the CPU",
                vm.name
            )),
            Some("virtio") => {
                if n.vhost == Some(false) {
                    out.push(format!(
                        "{}/{dev}: virtio without vhost-net copies every packet through QEMU's main loop: vhost (`<driver name='vhost'/>`, needs /dev/vhost-net) typically adds 30-60% and halves the latency",
                        vm.name
                    ));
                }
                if vcpus > 1 && n.queues.unwrap_or(1) < vcpus {
                    out.push(format!(
                        "{}/{dev}: {} queue(s) for {vcpus} vCPUs: multiqueue (`<driver queues='{vcpus}'/>`, then `ethtool -L eth0 combined {vcpus}` in the guest) spreads streams over the vCPUs: up to {}x with {} or more streams",
                        vm.name,
                        n.queues.unwrap_or(1),
                        vcpus.min(4),
                        vcpus
                    ));
                }
            }
            _ => {}
        }
        if let Some(l) = link {
            let bridge_ok = l
                .master
                .as_deref()
                .map(|m| s.ports_of(m).all(|p| p.mtu >= 9000))
                .unwrap_or(false);
            if l.mtu < 9000 && measured_bps.is_some_and(|b| b > 1e9) {
                out.push(format!(
                    "{}/{dev}: MTU {}: for bulk transfers inside the host, jumbo frames (MTU 9000 on the bridge, its ports and the guests) cut the per-packet cost: typically 10-30% more throughput{}",
                    vm.name,
                    l.mtu,
                    if bridge_ok { "" } else { " (every port of the bridge must take 9000)" }
                ));
            }
            if let Some(q) = s
                .qdiscs
                .iter()
                .find(|q| q.ifname == dev && q.parent == "root" && q.kind == "tbf")
            {
                if let Some(r) = q.rate_bps {
                    let capped = measured_bps.is_some_and(|b| b >= r as f64 * 0.8);
                    out.push(format!(
                        "{}/{dev}: a {} rate limit (tbf) caps what the VM receives{}",
                        vm.name,
                        kvmnet_model::plan::human_rate(r),
                        if capped { ": it is what this measurement hit; raise or remove it (`tc qdisc del dev DEV root`) if it is not intended" } else { "" }
                    ));
                }
            }
        }
        let off = offloads(&dev);
        if !off.is_empty() {
            out.push(format!(
                "{}/{dev}: {} off on the host side: `ethtool -K {dev} tso on gso on gro on` lets the kernel move 64 KB at a time: typically 2-5x for TCP",
                vm.name,
                off.join(", ")
            ));
        }
    }
    out
}

fn human_bps(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} Gbit/s", b / 1e9)
    } else {
        format!("{:.1} Mbit/s", b / 1e6)
    }
}

/// `kvmnet bench`.
pub fn run(a: BenchArgs) -> Result<i32, CliError> {
    let dur = crate::exporter::parse_duration(&a.duration)
        .map_err(|e| CliError::input(format!("--duration: {e}")))?;
    if a.streams == 0 || a.streams > 64 {
        return Err(CliError::input("--streams: 1 to 64"));
    }
    let state = crate::source::collect_live(a.netns.as_deref())?;
    let (from, to) = sides(&state, &a.from, &a.to)?;
    let tty = std::io::stderr().is_terminal() && !a.json;
    let mut r = Results {
        from: from.label.clone(),
        to: to.label.clone(),
        src: from.addr,
        dst: to.addr,
        duration_s: dur.as_secs_f64(),
        streams: a.streams,
        tcp_bits_per_second: None,
        udp_packets_per_second: None,
        udp_loss: None,
        rtt_p50_us: None,
        rtt_p99_us: None,
        advice: vec![],
        notes: vec![],
    };
    if direct(&from) && direct(&to) {
        r.tcp_bits_per_second = Some(tcp_throughput(&from, &to, a.streams, dur, tty)?);
        let (pps, loss) = udp_rate(&from, &to, (dur / 3).max(Duration::from_secs(1)), tty)?;
        r.udp_packets_per_second = Some(pps);
        r.udp_loss = Some(loss);
        let (p50, p99) = rtt(&from, &to, 2000)?;
        r.rtt_p50_us = Some(p50);
        r.rtt_p99_us = Some(p99);
    } else {
        // a QEMU/libvirt guest: through its agent, one TCP stream, RTT by its ping
        let (vm_side, host_side, guest_sends) = if direct(&from) {
            (&to, &from, false)
        } else {
            (&from, &to, true)
        };
        if !direct(host_side) || host_side.vm.is_some() {
            return Err(CliError::input(
                "between two QEMU guests, measure each against the host",
            ));
        }
        let vm = vm_side
            .vm
            .clone()
            .ok_or_else(|| CliError::runtime("no VM"))?;
        r.tcp_bits_per_second = Some(agent_tcp(&vm, guest_sends, host_side, dur)?);
        r.notes.push(format!(
            "{} is reached through its guest agent: one TCP stream with the guest's nc; UDP rate and RTT need a namespace guest or the host on both sides",
            vm_side.label
        ));
    }
    for side in [&from, &to] {
        if let Some(vm) = &side.vm {
            r.advice
                .extend(advice(&state, vm, r.tcp_bits_per_second, &|d| {
                    offloads_off(&state, d)
                }));
        }
    }
    if a.json {
        crate::output::print(&serde_json::to_string_pretty(&r).unwrap_or_default())?;
        return Ok(0);
    }
    let mut t = format!(
        "kvmnet bench {} -> {} ({} -> {}), {:.0} s\n",
        r.from, r.to, r.src, r.dst, r.duration_s
    );
    if let Some(b) = r.tcp_bits_per_second {
        t.push_str(&format!(
            "  TCP throughput   {:>14}   ({} stream{})\n",
            human_bps(b),
            r.streams,
            if r.streams == 1 { "" } else { "s" }
        ));
    }
    if let (Some(p), Some(l)) = (r.udp_packets_per_second, r.udp_loss) {
        t.push_str(&format!(
            "  UDP packet rate  {:>10.0}k/s   (64-byte payloads, {:.1}% lost)\n",
            p / 1e3,
            l * 100.0
        ));
    }
    if let (Some(p50), Some(p99)) = (r.rtt_p50_us, r.rtt_p99_us) {
        t.push_str(&format!("  RTT              p50 {p50:.0} µs, p99 {p99:.0} µs (TCP ping-pong, 2000 round trips)\n"));
    }
    for n in &r.notes {
        t.push_str(&format!("note: {n}\n"));
    }
    if r.advice.is_empty() {
        t.push_str("Tuning: nothing to suggest from this host's configuration\n");
    } else {
        t.push_str("Tuning:\n");
        for x in &r.advice {
            t.push_str(&format!("  - {x}\n"));
        }
    }
    crate::output::print(t.trim_end())?;
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kvmnet_model::{Link, LinkKind, Qdisc, VmSource, Vnic};

    fn host(
        model: &str,
        vhost: Option<bool>,
        queues: Option<u32>,
        vcpus: u32,
        mtu: u32,
    ) -> (HostState, Vm) {
        let mut s = HostState::default();
        let mut br = Link::new(2, "br0", LinkKind::Bridge);
        br.mtu = mtu;
        let mut tap = Link::new(3, "vnet0", LinkKind::Tap);
        tap.mtu = mtu;
        tap.master = Some("br0".into());
        s.links = vec![br, tap];
        let vm = Vm {
            name: "db1".into(),
            source: VmSource::Libvirt,
            vcpus: Some(vcpus),
            vnics: vec![Vnic {
                host_dev: Some("vnet0".into()),
                model: Some(model.into()),
                vhost,
                queues,
                ..Default::default()
            }],
            uuid: None,
            state: Default::default(),
            pid: None,
            netns: None,
            guest: None,
            agent: None,
        };
        (s, vm)
    }

    fn none(_: &str) -> Vec<String> {
        vec![]
    }

    #[test]
    fn advice_names_the_slow_parts_with_their_gain() {
        let (s, vm) = host("e1000", None, None, 2, 1500);
        let a = advice(&s, &vm, Some(5e8), &none);
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].contains("db1/vnet0") && a[0].contains("e1000") && a[0].contains("3-10x"),
            "{a:?}"
        );

        let (s, vm) = host("virtio", Some(false), Some(1), 4, 1500);
        let a = advice(&s, &vm, Some(2e9), &none);
        assert!(
            a.iter()
                .any(|l| l.contains("vhost") && l.contains("30-60%")),
            "{a:?}"
        );
        assert!(
            a.iter()
                .any(|l| l.contains("1 queue(s) for 4 vCPUs") && l.contains("queues='4'")),
            "{a:?}"
        );
        assert!(
            a.iter()
                .any(|l| l.contains("MTU 1500") && l.contains("10-30%")),
            "{a:?}"
        );

        // a well-tuned VM gets no advice; jumbo frames are not advised below 1 Gbit/s
        let (s, vm) = host("virtio", Some(true), Some(4), 4, 9000);
        assert!(advice(&s, &vm, Some(2e9), &none).is_empty());
        let (s, vm) = host("virtio", Some(true), None, 1, 1500);
        assert!(advice(&s, &vm, Some(5e8), &none).is_empty());

        // a rate limit the measurement hit, and offloads turned off
        let (mut s, vm) = host("virtio", Some(true), None, 1, 1500);
        s.qdiscs.push(Qdisc {
            ifname: "vnet0".into(),
            kind: "tbf".into(),
            handle: "8001:".into(),
            parent: "root".into(),
            rate_bps: Some(100_000_000),
            burst_bytes: None,
        });
        let a = advice(&s, &vm, Some(9.5e7), &|d| {
            if d == "vnet0" {
                vec!["tcp-segmentation-offload".into()]
            } else {
                vec![]
            }
        });
        assert!(
            a.iter()
                .any(|l| l.contains("100 Mbit/s rate limit")
                    && l.contains("what this measurement hit")),
            "{a:?}"
        );
        assert!(
            a.iter()
                .any(|l| l.contains("tcp-segmentation-offload off")
                    && l.contains("ethtool -K vnet0")),
            "{a:?}"
        );
    }

    #[test]
    fn ethtool_output_is_read_for_changeable_offloads_only() {
        let t = "Features for vnet0:\ntcp-segmentation-offload: off\n\ttx-tcp-segmentation: off\ngeneric-segmentation-offload: on\ngeneric-receive-offload: off [fixed]\n";
        assert_eq!(
            parse_offloads_off(t),
            vec!["tcp-segmentation-offload".to_string()]
        );
        assert!(parse_offloads_off("generic-receive-offload: on\n").is_empty());
    }
}
