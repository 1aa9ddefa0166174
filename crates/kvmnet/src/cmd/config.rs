//! `plan`, `apply`, `confirm`, `rollback`, `import`, `export`: desired state onto the host
//! through the single apply path.

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmnet_config::{Desired, Observed, Owned, Plan};
use kvmnet_linux::apply::{self, ApplyError};
use kvmnet_model::plan::PlanStep;
use kvmnet_model::HostState;

use crate::cli::{ApplyArgs, ExportArgs, ImportArgs, NetnsArgs, PlanArgs, WatchdogArgs};
use crate::error::CliError;

fn load(file: &Path) -> Result<Desired, CliError> {
    kvmnet_config::load_desired(file)
        .map(|(_, d)| d)
        .map_err(|e| CliError::input(e.to_string()))
}

fn owned_path(netns: Option<&str>) -> PathBuf {
    apply::ns_dir(netns).join("owned.json")
}

fn read_owned(path: &Path) -> Result<Owned, CliError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| {
            CliError::runtime(format!(
                "{}: kvmnet's ownership record is damaged: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Owned::default()),
        Err(e) => Err(CliError::runtime(format!("{}: {e}", path.display()))),
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::runtime(format!("{}: {e}", dir.display())))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| CliError::runtime(format!("{}: {e}", path.display())))
}

fn write_owned(path: &Path, o: &Owned) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(o).map_err(|e| CliError::runtime(e.to_string()))?;
    write_file(path, &text)
}

/// Collects the host and plans `d` on it.
fn observe_and_plan(
    netns: Option<&str>,
    d: &Desired,
    owned: &Owned,
    force: bool,
) -> Result<(HostState, Plan), CliError> {
    // vNICs given by their VM need the VMs (processes, libvirt); Open vSwitch needs its
    // daemons found
    let ovs = d
        .networks
        .iter()
        .any(|n| n.kind == kvmnet_config::schema::NetworkType::Ovs)
        || !owned.ovs_bridges.is_empty()
        || !owned.ovs_ports.is_empty();
    let state = if d.vnics.iter().any(|v| v.tap.is_empty()) {
        crate::source::collect_live(netns)?
    } else {
        crate::source::collect_for_config(netns, ovs)?
    };
    let mut dhcp = std::collections::BTreeMap::new();
    let nets: std::collections::BTreeSet<&str> = d
        .networks
        .iter()
        .filter(|n| n.dhcp.is_some())
        .map(|n| n.name.as_str())
        .chain(owned.dhcp.iter().map(String::as_str))
        .collect();
    for n in nets {
        if let Some(conf) = apply::dhcp_status(netns, n) {
            dhcp.insert(n.to_string(), conf);
        }
    }
    // SSH sessions: port 22, and the server port of the session kvmnet runs in
    let sshd_ports: Vec<u16> = std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|v| v.split_whitespace().nth(3).and_then(|p| p.parse().ok()))
        .into_iter()
        .collect();
    let sessions = if force {
        vec![]
    } else {
        apply::management_addresses(netns, &sshd_ports)
    };
    let management = sessions.into_iter().find_map(|ip: IpAddr| {
        state
            .addresses
            .iter()
            .find(|a| a.address == ip)
            .map(|a| (ip, a.ifname.clone()))
    });
    let vlan_capable =
        !d.vnics.iter().any(|v| v.vlan.is_some()) || apply::bridge_vlan_filtering_supported();
    let obs = Observed {
        state: &state,
        owned,
        dhcp: &dhcp,
        management,
        vlan_capable,
    };
    let plan = kvmnet_config::plan(d, &obs, force).map_err(|e| CliError::input(e.to_string()))?;
    Ok((state, plan))
}

fn where_(netns: Option<&str>) -> String {
    netns.map(|n| format!(" in netns {n}")).unwrap_or_default()
}

fn plan_text(p: &Plan, netns: Option<&str>, file: &Path) -> String {
    let mut t = String::new();
    if p.steps.is_empty() {
        t.push_str(&format!(
            "no changes: the host{} matches {}\n",
            where_(netns),
            file.display()
        ));
    } else {
        t.push_str(&format!(
            "{} change{}{}:\n",
            p.steps.len(),
            if p.steps.len() == 1 { "" } else { "s" },
            where_(netns)
        ));
        for (i, s) in p.steps.iter().enumerate() {
            t.push_str(&format!("  {:>3}. {}\n", i + 1, s.describe()));
        }
    }
    for n in &p.notes {
        t.push_str(&format!("note: {n}\n"));
    }
    t
}

/// `kvmnet plan`.
pub fn plan(a: PlanArgs) -> Result<i32, CliError> {
    let d = load(&a.file)?;
    let owned = read_owned(&owned_path(a.netns.as_deref()))?;
    let (_, p) = observe_and_plan(a.netns.as_deref(), &d, &owned, a.force)?;
    if a.json {
        let v = serde_json::json!({
            "changes": p.steps.len(),
            "steps": p.steps,
            "notes": p.notes,
        });
        crate::output::print(&serde_json::to_string_pretty(&v).unwrap_or_default())?;
    } else {
        crate::output::print(plan_text(&p, a.netns.as_deref(), &a.file).trim_end())?;
    }
    Ok(if a.detailed_exitcode && !p.steps.is_empty() {
        3
    } else {
        0
    })
}

fn pending_path(netns: Option<&str>) -> PathBuf {
    apply::ns_dir(netns).join("pending-confirm")
}

/// `kvmnet apply`.
pub fn apply(a: ApplyArgs) -> Result<i32, CliError> {
    let netns = a.netns.as_deref();
    let d = load(&a.file)?;
    if pending_path(netns).exists() {
        return Err(CliError::input(format!(
            "the last apply{} awaits confirmation: run `kvmnet confirm` or `kvmnet rollback` first",
            where_(netns)
        )));
    }
    let recovered = apply::recover(netns).map_err(|e| CliError::runtime(e.to_string()))?;
    if recovered > 0 {
        eprintln!(
            "kvmnet: undid {recovered} step{} of an apply that was interrupted",
            if recovered == 1 { "" } else { "s" }
        );
    }
    let opath = owned_path(netns);
    let owned = read_owned(&opath)?;
    let (_, p) = observe_and_plan(netns, &d, &owned, a.force)?;
    if p.steps.is_empty() {
        if a.json {
            crate::output::print(&serde_json::json!({"applied": 0, "notes": p.notes}).to_string())?;
        } else {
            crate::output::print(plan_text(&p, netns, &a.file).trim_end())?;
        }
        // what is owned may still change (an object that already matched)
        if p.owned != owned {
            write_owned(&opath, &p.owned)?;
        }
        return Ok(0);
    }
    if !a.json {
        crate::output::print(plan_text(&p, netns, &a.file).trim_end())?;
    }
    let total = p.steps.len();
    let tty = std::io::stderr().is_terminal() && total > 20;
    let mut progress = |i: usize, _: &PlanStep| {
        if tty && (i.is_multiple_of(10) || i == total) {
            eprint!("\rkvmnet: applying {i}/{total}");
            let _ = std::io::stderr().flush();
        }
    };
    let started = std::time::Instant::now();
    let report = match apply::apply_plan_with(netns, &p.steps, &mut progress) {
        Ok(r) => r,
        Err(e @ ApplyError::RolledBack { .. }) => {
            if tty {
                eprintln!();
            }
            eprintln!("kvmnet: error: {e}\nthe host is as it was before");
            return Ok(4);
        }
        Err(e) => return Err(CliError::runtime(e.to_string())),
    };
    if tty {
        eprintln!();
    }
    let took = started.elapsed();
    // verify: the host collected again must need no further step
    let (_, again) = observe_and_plan(netns, &d, &p.owned, true)?;
    if !again.steps.is_empty() {
        let diffs: Vec<String> = again.steps.iter().map(|s| s.describe()).collect();
        let rb = apply::rollback_last(netns);
        eprintln!(
            "kvmnet: error: verification failed: after applying, the host still differs: {}\n{}",
            diffs.join("; "),
            match rb {
                Ok(r) => format!(
                    "rolled back {} step(s): the host is as it was before",
                    r.undone
                ),
                Err(e) => format!("and the rollback failed: {e}"),
            }
        );
        return Ok(4);
    }
    let dir = apply::ns_dir(netns);
    write_owned(&dir.join("owned-prev.json"), &owned)?;
    write_owned(&opath, &p.owned)?;
    // what was applied, for `kvmnet import` (port forwards and firewall rules cannot be read
    // back from the kernel unambiguously)
    let desired_path = dir.join("desired.json");
    match std::fs::read_to_string(&desired_path) {
        Ok(prev) => write_file(&dir.join("desired-prev.json"), &prev)?,
        Err(_) => {
            let _ = std::fs::remove_file(dir.join("desired-prev.json"));
        }
    }
    write_file(
        &desired_path,
        &serde_json::to_string_pretty(&d).map_err(|e| CliError::runtime(e.to_string()))?,
    )?;
    if a.json {
        crate::output::print(
            &serde_json::json!({
                "applied": report.applied,
                "journal": report.journal,
                "seconds": took.as_secs_f64(),
                "notes": p.notes,
                "confirm_timeout": a.confirm_timeout,
            })
            .to_string(),
        )?;
    } else {
        crate::output::print(&format!(
            "applied {} change{} in {:.2} s, verified (journal {})",
            report.applied,
            if report.applied == 1 { "" } else { "s" },
            took.as_secs_f64(),
            report.journal.display()
        ))?;
    }
    if let Some(secs) = a.confirm_timeout {
        arm_watchdog(netns, secs)?;
        if !a.json {
            crate::output::print(&format!(
                "run `kvmnet confirm{}` within {secs} s to keep it; otherwise it is rolled back",
                netns.map(|n| format!(" --netns {n}")).unwrap_or_default()
            ))?;
        }
    }
    Ok(0)
}

/// Starts the process that rolls back an unconfirmed apply: in a session of its own, so it
/// outlives the shell that ran apply.
fn arm_watchdog(netns: Option<&str>, secs: u64) -> Result<(), CliError> {
    let token = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    write_file(&pending_path(netns), &token)?;
    let exe = std::env::current_exe().map_err(|e| CliError::runtime(e.to_string()))?;
    let mut cmd = std::process::Command::new("setsid");
    cmd.arg("-f").arg(exe).args([
        "confirm-watchdog",
        "--seconds",
        &secs.to_string(),
        "--token",
        &token,
    ]);
    if let Some(n) = netns {
        cmd.args(["--netns", n]);
    }
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| CliError::runtime(format!("cannot start the confirm watchdog (setsid): {e}")));
    match status {
        Ok(s) if s.success() => Ok(()),
        other => {
            // no watchdog, no safety net: undo now rather than leave an unguarded change
            let _ = std::fs::remove_file(pending_path(netns));
            let _ = undo_last(netns);
            Err(match other {
                Err(e) => e,
                Ok(s) => CliError::runtime(format!(
                    "the confirm watchdog did not start ({s}): rolled back"
                )),
            })
        }
    }
}

/// Rolls back the last apply and restores the ownership record from before it.
fn undo_last(netns: Option<&str>) -> Result<apply::RollbackReport, CliError> {
    let r = apply::rollback_last(netns).map_err(|e| CliError::runtime(e.to_string()))?;
    let dir = apply::ns_dir(netns);
    if r.undone > 0 {
        let prev = dir.join("owned-prev.json");
        if prev.exists() {
            let _ = std::fs::rename(&prev, dir.join("owned.json"));
        }
        let prev = dir.join("desired-prev.json");
        if prev.exists() {
            let _ = std::fs::rename(&prev, dir.join("desired.json"));
        } else {
            let _ = std::fs::remove_file(dir.join("desired.json"));
        }
    }
    Ok(r)
}

/// `kvmnet confirm`.
pub fn confirm(a: NetnsArgs) -> Result<i32, CliError> {
    let p = pending_path(a.netns.as_deref());
    if std::fs::remove_file(&p).is_ok() {
        crate::output::print(&format!(
            "confirmed: the last apply{} stays",
            where_(a.netns.as_deref())
        ))?;
        Ok(0)
    } else {
        crate::output::print("nothing awaits confirmation")?;
        Ok(0)
    }
}

/// `kvmnet rollback`.
pub fn rollback(a: NetnsArgs) -> Result<i32, CliError> {
    let netns = a.netns.as_deref();
    let _ = std::fs::remove_file(pending_path(netns));
    let r = undo_last(netns)?;
    let mut t = String::new();
    if r.recovered > 0 {
        t.push_str(&format!(
            "undid {} step(s) of an interrupted apply\n",
            r.recovered
        ));
    }
    if r.undone > 0 {
        t.push_str(&format!(
            "rolled back the last apply{}: {} step(s) undone",
            where_(netns),
            r.undone
        ));
    } else if r.recovered == 0 {
        t.push_str("nothing to roll back");
    }
    crate::output::print(t.trim_end())?;
    Ok(0)
}

/// The hidden watchdog behind `apply --confirm-timeout`.
pub fn watchdog(a: WatchdogArgs) -> Result<i32, CliError> {
    let netns = a.netns.as_deref();
    std::thread::sleep(Duration::from_secs(a.seconds));
    let p = pending_path(netns);
    let log = apply::ns_dir(netns).join("watchdog.log");
    match std::fs::read_to_string(&p) {
        Ok(t) if t.trim() == a.token => {
            let _ = std::fs::remove_file(&p);
            let msg = match undo_last(netns) {
                Ok(r) => format!(
                    "not confirmed within {} s: rolled back {} step(s)\n",
                    a.seconds, r.undone
                ),
                Err(e) => format!(
                    "not confirmed within {} s: rollback failed: {e}\n",
                    a.seconds
                ),
            };
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .and_then(|mut f| f.write_all(msg.as_bytes()));
        }
        _ => {}
    }
    Ok(0)
}

/// `kvmnet import`.
pub fn import(a: ImportArgs) -> Result<i32, CliError> {
    let state = crate::source::load(a.source.netns.as_deref(), a.source.from.as_deref())?;
    // what kvmnet applied here last (live hosts only)
    let applied: Option<Desired> = match &a.source.from {
        Some(_) => None,
        None => {
            std::fs::read_to_string(apply::ns_dir(a.source.netns.as_deref()).join("desired.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        }
    };
    let (d, notes) = kvmnet_config::import::import(&state, applied.as_ref());
    let mut header = format!(
        "kvmnet desired state imported from {}{}",
        if state.hostname.is_empty() {
            "the host"
        } else {
            &state.hostname
        },
        where_(state.netns.as_deref())
    );
    for n in &notes {
        header.push('\n');
        header.push_str(n);
    }
    let y = kvmnet_config::import::to_yaml(&d, &header);
    match &a.output {
        Some(p) => {
            std::fs::write(p, &y).map_err(|e| CliError::runtime(format!("{}: {e}", p.display())))?
        }
        None => crate::output::print(y.trim_end())?,
    }
    Ok(0)
}

/// `kvmnet export`.
pub fn export(a: ExportArgs) -> Result<i32, CliError> {
    let d = load(&a.file)?;
    let Some(x) = kvmnet_config::import::libvirt_xml(&d, &a.network) else {
        return Err(CliError::input(format!(
            "{}: no network named `{}` (there are: {})",
            a.file.display(),
            a.network,
            d.networks
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    crate::output::print(x.trim_end())?;
    Ok(0)
}
