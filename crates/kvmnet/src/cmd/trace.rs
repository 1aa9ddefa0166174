//! `kvmnet trace`: one simulated packet, hop by hop.

use std::net::IpAddr;

use kvmnet_trace::{Endpoint, FlowSpec, Tracer, Verdict};

use crate::cli::{Proto, TraceArgs};
use crate::error::CliError;

/// Parses `vm:NAME[:N]`, `host` or an address.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, CliError> {
    if s == "host" {
        return Ok(Endpoint::Host);
    }
    if let Some(rest) = s.strip_prefix("vm:") {
        let (name, vnic) = match rest.rsplit_once(':') {
            Some((n, i)) if i.parse::<usize>().is_ok() => (n, i.parse().ok()),
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(CliError::input(format!(
                "endpoint {s:?}: missing VM name after vm:"
            )));
        }
        return Ok(Endpoint::Vm {
            name: name.to_string(),
            vnic,
        });
    }
    s.parse::<IpAddr>().map(Endpoint::Addr).map_err(|_| {
        CliError::input(format!(
            "endpoint {s:?}: expected vm:NAME, host or an IP address"
        ))
    })
}

pub fn run(a: TraceArgs, color: bool) -> Result<i32, CliError> {
    let mut state = if a.explain_unsupported
        && !a.ruleset.is_empty()
        && a.netns.is_none()
        && a.from_snapshot.is_none()
    {
        kvmnet_model::HostState::default()
    } else {
        crate::source::load(a.netns.as_deref(), a.from_snapshot.as_deref())?
    };
    if !a.ruleset.is_empty() {
        let paths: Vec<&std::path::Path> = a.ruleset.iter().map(|p| p.as_path()).collect();
        let loaded =
            kvmnet_linux::nft::load_or_parse_ruleset_files(&paths).map_err(|e| match e {
                kvmnet_linux::nft::LoadError::Read(..)
                | kvmnet_linux::nft::LoadError::Refused { .. }
                | kvmnet_linux::nft::LoadError::Parse { .. } => CliError::input(e.to_string()),
                other => CliError::runtime(other.to_string()),
            })?;
        if let Some(why) = &loaded.kernel_refused {
            eprintln!(
                "kvmnet: the kernel here could not load the ruleset ({why}); it was read with kvmnet's own nft reader instead: `--explain-unsupported` lists what it cannot evaluate"
            );
        }
        state.nftables = loaded.ruleset;
    }
    let tracer = Tracer::new(&state);
    if a.explain_unsupported {
        let list = kvmnet_trace::unsupported(&tracer.compiled);
        let text = if a.json {
            crate::output::json(&list)?
        } else if list.is_empty() {
            format!(
                "every expression of the ruleset ({} rules) is evaluated exactly",
                state.nftables.rule_count()
            )
        } else {
            let mut t = format!(
                "{} expression(s) kvmnet cannot evaluate exactly:\n",
                list.len()
            );
            for u in &list {
                t.push_str(&format!(
                    "  {} {} {} handle {}: {} ({})\n",
                    u.family, u.table, u.chain, u.handle, u.what, u.kind
                ));
            }
            t
        };
        crate::output::print(&text)?;
        return Ok(0);
    }
    let from = parse_endpoint(a.from.as_deref().unwrap_or_default())?;
    let to = parse_endpoint(a.to.as_deref().unwrap_or_default())?;
    let spec = FlowSpec {
        from,
        to,
        proto: match a.proto {
            Proto::Icmp => 1,
            Proto::Tcp => 6,
            Proto::Udp => 17,
        },
        dport: a.dport,
        sport: a.sport,
        size: a.size,
        df: !a.no_df,
    };
    let mut trace = tracer
        .trace(&spec)
        .map_err(|e| CliError::input(e.to_string()))?;
    // an Open vSwitch hop with custom OpenFlow rules: the live switch answers for itself
    if a.from_snapshot.is_none() {
        if let Some(ovs) = &state.ovs {
            delegate_to_ovs(&mut trace, ovs);
        }
    }
    let text = if a.json {
        crate::output::json(&trace)?
    } else {
        crate::render::trace::render_trace(&trace, color)
    };
    crate::output::print(&text)?;
    Ok(match trace.verdict {
        Verdict::Delivered { .. } => 0,
        _ => 3,
    })
}

/// Asks ovs-vswitchd's own `ofproto/trace` about the hop kvmnet cannot simulate (a bridge with
/// custom OpenFlow rules), and adds its answer: a drop becomes the verdict, an output is told.
fn delegate_to_ovs(trace: &mut kvmnet_trace::Trace, ovs: &kvmnet_model::ovs::OvsState) {
    let Verdict::Unknown { at, what, .. } = &trace.verdict else {
        return;
    };
    let Some(cmd) = what
        .split("`ovs-appctl ofproto/trace ")
        .nth(1)
        .and_then(|r| r.split('`').next())
    else {
        return;
    };
    let mut parts = cmd.split_whitespace();
    let (Some(bridge), Some(flow)) = (parts.next(), parts.next()) else {
        return;
    };
    // the control socket of ovs-vswitchd, next to its database socket
    let dir = std::path::Path::new(&ovs.db)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let ctl = std::fs::read_dir(&dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ovs-vswitchd.") && n.ends_with(".ctl"))
        })
    });
    let mut c = std::process::Command::new("ovs-appctl");
    if let Some(ctl) = &ctl {
        c.arg("-t").arg(ctl);
    }
    let Ok(out) = c.args(["ofproto/trace", bridge, flow]).output() else {
        return;
    };
    if !out.status.success() {
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(actions) = text
        .lines()
        .find_map(|l| l.strip_prefix("Datapath actions: "))
        .map(|a| a.trim().to_string())
    else {
        return;
    };
    let at = at.clone();
    trace.hops.push(kvmnet_trace::Hop {
        stage: at.clone(),
        decision: format!("ovs-appctl ofproto/trace: datapath actions {actions}"),
        facts: vec![format!("ofproto/trace {bridge} {flow}")],
        rule: None,
    });
    if actions == "drop" {
        trace.verdict = Verdict::Dropped {
            at,
            cause: "ovs-flow".into(),
            reason: format!("the OpenFlow rules of {bridge} drop it (ovs-appctl ofproto/trace)"),
            rule: None,
            reply: false,
        };
    }
}
