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
        state.nftables = kvmnet_linux::nft::load_ruleset_files(&paths).map_err(|e| match e {
            kvmnet_linux::nft::LoadError::Read(..)
            | kvmnet_linux::nft::LoadError::Refused { .. } => CliError::input(e.to_string()),
            other => CliError::runtime(other.to_string()),
        })?;
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
    let trace = tracer
        .trace(&spec)
        .map_err(|e| CliError::input(e.to_string()))?;
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
