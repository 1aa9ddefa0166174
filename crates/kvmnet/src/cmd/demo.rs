//! `kvmnet demo`: a throwaway KVM-like host in network namespaces — a hypervisor with a bridge
//! and NAT to a fake upstream, three guests — broken one way, diagnosed, traced, fixed through
//! the journaled apply path, shown healthy, and removed (also on Ctrl-C). Nothing outside the
//! namespaces it creates is touched; only 10.0.0.0/24, 198.51.100.0/24 and 203.0.113.0/24 are
//! used inside them.

use std::process::Command;
use std::sync::Mutex;

use kvmnet_doctor::{diagnose, Options, Report};
use kvmnet_model::plan::PlanStep;
use kvmnet_trace::{Endpoint, FlowSpec, Tracer};

use crate::cli::DemoArgs;
use crate::error::CliError;

/// Namespaces the demo created, removed at the end or on Ctrl-C.
static CREATED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The faults the demo can inject, with what an admin would have done to cause them.
const FAULTS: &[(&str, &str)] = &[
    (
        "ip-forward-disabled",
        "someone ran `sysctl -w net.ipv4.ip_forward=0` on the host",
    ),
    (
        "nat-masquerade-missing",
        "a firewall reload dropped the NAT table",
    ),
    (
        "tap-not-in-bridge",
        "web2's host-side interface fell out of the bridge",
    ),
    ("tap-down", "db1's host-side interface was set down"),
    ("bridge-down", "the bridge br0 was set down"),
];

const UPSTREAM: &str = "203.0.113.1";

fn sh(args: &[&str]) -> Result<(), CliError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| {
            CliError::runtime(format!(
                "cannot run {}: {e} (is iproute2/nftables installed?)",
                args[0]
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CliError::runtime(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ns_add(name: &str) -> Result<(), CliError> {
    sh(&["ip", "netns", "add", name])?;
    if let Ok(mut c) = CREATED.lock() {
        c.push(name.to_string());
    }
    sh(&["ip", "-n", name, "link", "set", "lo", "up"])
}

/// Removes every namespace the demo made.
fn teardown() {
    let names: Vec<String> = CREATED
        .lock()
        .map(|mut c| std::mem::take(&mut *c))
        .unwrap_or_default();
    for n in names.iter().rev() {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
}

fn pings(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-n", "-q", dst])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct DemoLab {
    hv: String,
    guests: Vec<(String, String)>,
}

fn build(prefix: &str) -> Result<DemoLab, CliError> {
    let hv = format!("{prefix}-hv");
    let up = format!("{prefix}-up");
    ns_add(&hv)?;
    ns_add(&up)?;
    let ip = |ns: &str, args: &[&str]| {
        let mut v = vec!["ip", "-n", ns];
        v.extend_from_slice(args);
        sh(&v)
    };
    ip(&hv, &["link", "add", "br0", "type", "bridge"])?;
    ip(&hv, &["link", "set", "br0", "address", "02:00:0a:00:00:01"])?;
    ip(&hv, &["addr", "add", "10.0.0.1/24", "dev", "br0"])?;
    ip(&hv, &["link", "set", "br0", "up"])?;
    ip(
        &hv,
        &[
            "link", "add", "uplink", "type", "veth", "peer", "name", "down0", "netns", &up,
        ],
    )?;
    ip(&hv, &["addr", "add", "198.51.100.2/24", "dev", "uplink"])?;
    ip(&hv, &["link", "set", "uplink", "up"])?;
    ip(&up, &["addr", "add", "198.51.100.1/24", "dev", "down0"])?;
    ip(
        &up,
        &["addr", "add", &format!("{UPSTREAM}/32"), "dev", "lo"],
    )?;
    ip(&up, &["link", "set", "down0", "up"])?;
    ip(&hv, &["route", "add", "default", "via", "198.51.100.1"])?;
    sh(&[
        "ip",
        "netns",
        "exec",
        &hv,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])?;
    let mut c = Command::new("ip")
        .args(["netns", "exec", &hv, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CliError::runtime(format!("cannot run nft: {e}")))?;
    if let Some(mut i) = c.stdin.take() {
        use std::io::Write;
        let _ = i.write_all(b"table ip demo_nat {\n chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n  ip saddr 10.0.0.0/24 oifname \"uplink\" masquerade\n }\n}\n");
    }
    if !c.wait().is_ok_and(|s| s.success()) {
        return Err(CliError::runtime("nft could not load the demo's NAT table"));
    }
    let mut guests = vec![];
    for (i, name) in ["web1", "web2", "db1"].iter().enumerate() {
        let g = format!("{prefix}-{name}");
        ns_add(&g)?;
        let dev = format!("vnet{}", i + 1);
        ip(
            &hv,
            &[
                "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &g,
            ],
        )?;
        ip(&hv, &["link", "set", &dev, "master", "br0"])?;
        ip(&hv, &["link", "set", &dev, "up"])?;
        ip(
            &g,
            &[
                "link",
                "set",
                "eth0",
                "address",
                &format!("52:54:00:00:00:0{}", i + 1),
            ],
        )?;
        ip(
            &g,
            &[
                "addr",
                "add",
                &format!("10.0.0.1{}/24", i + 1),
                "dev",
                "eth0",
            ],
        )?;
        ip(&g, &["link", "set", "eth0", "up"])?;
        ip(&g, &["route", "add", "default", "via", "10.0.0.1"])?;
        guests.push((g, dev));
    }
    Ok(DemoLab { hv, guests })
}

fn inject(lab: &DemoLab, code: &str) -> Result<(), CliError> {
    let hv = lab.hv.as_str();
    match code {
        "ip-forward-disabled" => sh(&[
            "ip",
            "netns",
            "exec",
            hv,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ]),
        "nat-masquerade-missing" => sh(&[
            "ip", "netns", "exec", hv, "nft", "delete", "table", "ip", "demo_nat",
        ]),
        "tap-not-in-bridge" => sh(&["ip", "-n", hv, "link", "set", &lab.guests[1].1, "nomaster"]),
        "tap-down" => sh(&["ip", "-n", hv, "link", "set", &lab.guests[2].1, "down"]),
        "bridge-down" => sh(&["ip", "-n", hv, "link", "set", "br0", "down"]),
        _ => Err(CliError::input(format!("unknown fault {code}"))),
    }
}

fn heading(t: &str, color: bool) -> String {
    if color {
        format!("\n\x1b[1m== {t}\x1b[0m\n")
    } else {
        format!("\n== {t}\n")
    }
}

fn reach_table(lab: &DemoLab) -> String {
    let mut t = String::new();
    for (g, _) in &lab.guests {
        let short = g.rsplit('-').next().unwrap_or(g);
        t.push_str(&format!(
            "  {short:<5} gateway 10.0.0.1: {:<4}  internet {UPSTREAM}: {}\n",
            if pings(g, "10.0.0.1") { "ok" } else { "FAIL" },
            if pings(g, UPSTREAM) { "ok" } else { "FAIL" }
        ));
    }
    t
}

fn fix_steps(r: &Report) -> Vec<PlanStep> {
    let mut out: Vec<PlanStep> = vec![];
    for f in r.findings.iter().filter(|f| f.caused_by.is_none()) {
        for s in &f.fix.steps {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
    }
    out
}

/// Runs the demo.
pub fn run(a: DemoArgs, color: bool) -> Result<i32, CliError> {
    let fault = match &a.fault {
        Some(f) => FAULTS.iter().find(|(c, _)| c == f).ok_or_else(|| {
            CliError::input(format!(
                "--fault {f}: the demo knows {}",
                FAULTS
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
        None => {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as usize)
                .unwrap_or(0);
            &FAULTS[n % FAULTS.len()]
        }
    };
    if !crate::cmd::is_root() {
        return Err(CliError::runtime(
            "kvmnet demo builds network namespaces: run it as root (nothing outside them is touched)",
        ));
    }
    let _ = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        teardown();
        eprintln!("\nkvmnet demo: interrupted; the lab is removed");
        std::process::exit(130);
    });
    let prefix = format!("kvmnet-demo-{}", std::process::id());
    let result = (|| -> Result<i32, CliError> {
        let p = |t: &str| crate::output::print(t);
        p(&format!(
            "{}kvmnet builds a small KVM host inside network namespaces (removed at the end):\n  \
             hypervisor {prefix}-hv: bridge br0 10.0.0.1/24, NAT out of its uplink to {UPSTREAM}\n  \
             guests web1 10.0.0.11, web2 10.0.0.12, db1 10.0.0.13 on br0",
            heading("1. A healthy host", color)
        ))?;
        let lab = build(&prefix)?;
        p(&reach_table(&lab))?;
        p(&format!(
            "{}Breaking it: {} ({})",
            heading("2. Something breaks", color),
            fault.1,
            fault.0
        ))?;
        inject(&lab, fault.0)?;
        p(&format!("What the guests see now:\n{}", reach_table(&lab)))?;

        p(&heading("3. kvmnet doctor", color))?;
        let state = crate::source::collect_live(Some(&lab.hv))?;
        let opts = Options {
            target: Some(
                UPSTREAM
                    .parse()
                    .map_err(|_| CliError::runtime("bad address"))?,
            ),
            ..Default::default()
        };
        let report = diagnose(&state, &opts);
        p(&crate::render::doctor::render_report(
            &state, &report, color,
        ))?;

        // trace the first guest the fault cuts off
        if let Some(v) = report.verdicts.iter().find(|v| !v.ok) {
            p(&format!(
                "{}kvmnet trace --from vm:{} --to {UPSTREAM} (simulated, nothing sent):",
                heading("4. kvmnet trace", color),
                v.vm
            ))?;
            let tracer = Tracer::new(&state);
            if let Ok(t) = tracer.trace(&FlowSpec {
                from: Endpoint::Vm {
                    name: v.vm.clone(),
                    vnic: None,
                },
                to: Endpoint::Addr(
                    UPSTREAM
                        .parse()
                        .map_err(|_| CliError::runtime("bad address"))?,
                ),
                proto: 1,
                dport: 0,
                sport: None,
                size: None,
                df: true,
            }) {
                p(&crate::render::trace::render_trace(&t, color))?;
            }
        }

        let steps = fix_steps(&report);
        p(&heading("5. kvmnet doctor --fix", color))?;
        if steps.is_empty() {
            p("nothing kvmnet can fix by itself here")?;
        } else {
            for (i, s) in steps.iter().enumerate() {
                p(&format!("  {}. {}", i + 1, s.describe()))?;
            }
            match kvmnet_linux::apply::apply_plan(Some(&lab.hv), &steps) {
                Ok(r) => p(&format!(
                    "applied {} change(s) through the journaled apply path (undo steps in {})",
                    r.applied,
                    r.journal.display()
                ))?,
                Err(e) => p(&format!("the fix did not apply: {e}"))?,
            }
        }
        // the ports that came back need their carrier event before they forward
        std::thread::sleep(std::time::Duration::from_millis(1200));
        p(&heading("6. Healthy again", color))?;
        let after = crate::source::collect_live(Some(&lab.hv))?;
        let r2 = diagnose(&after, &opts);
        for v in &r2.verdicts {
            let short = v.vm.rsplit('-').next().unwrap_or(&v.vm);
            p(&format!(
                "  {short}: {}",
                if v.ok {
                    "ok".to_string()
                } else {
                    format!("still broken: {}", v.summary)
                }
            ))?;
        }
        p(&reach_table(&lab))?;
        let ok = r2.root_errors() == 0;
        p(&format!(
            "{}{}",
            heading("Done", color),
            if ok {
                "The lab is removed. Next: `sudo kvmnet doctor` on a real host, `kvmnet show vms`, `kvmnet topo -o svg > host.svg`."
            } else {
                "The lab is removed."
            }
        ))?;
        // the fix's journal belongs to the namespace that goes away
        let _ = std::fs::remove_dir_all(kvmnet_linux::apply::ns_dir(Some(&lab.hv)));
        Ok(if ok { 0 } else { 3 })
    })();
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        // the handler is removing the lab (which is why a step may have failed just now) and
        // ends the process with 130
        loop {
            std::thread::park();
        }
    }
    teardown();
    result
}

/// Set by the Ctrl-C handler before it removes the lab.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
