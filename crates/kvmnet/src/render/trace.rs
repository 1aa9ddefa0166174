//! `kvmnet trace` as text.

use std::fmt::Write;

use kvmnet_trace::{Trace, Verdict};

use crate::render::table::heading;

/// Renders a trace: one numbered line per hop, its facts indented, then the verdict.
pub fn render_trace(t: &Trace, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        heading(
            &format!("trace {} {} -> {}, {} bytes", t.proto, t.from, t.to, t.size),
            color
        )
    );
    let width = t
        .hops
        .iter()
        .map(|h| h.stage.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    for (i, h) in t.hops.iter().enumerate() {
        let _ = writeln!(out, "{:>3}  {:<width$}  {}", i + 1, h.stage, h.decision);
        for f in &h.facts {
            let _ = writeln!(out, "     {:<width$}    {}", "", f);
        }
        if let Some(r) = &h.rule {
            if !h.decision.contains(&*r.text) && !h.facts.iter().any(|f| f.contains(&*r.text)) {
                let _ = writeln!(
                    out,
                    "     {:<width$}    rule: {} {} {} {}: {}",
                    "",
                    r.rule.family,
                    r.rule.table,
                    r.rule.chain,
                    r.rule
                        .handle
                        .map(|h| format!("handle {h}"))
                        .unwrap_or_else(|| "policy".into()),
                    r.text
                );
            }
        }
    }
    let v = match &t.verdict {
        Verdict::Delivered { to } => format!("delivered to {to}, and the reply came back"),
        Verdict::Dropped {
            at,
            cause,
            reason,
            reply,
            ..
        } => format!(
            "dropped{} at {at} ({cause}): {reason}",
            if *reply { " on the way back" } else { "" }
        ),
        Verdict::Unknown { at, what, .. } => {
            format!("unknown at {at}: kvmnet cannot evaluate {what}")
        }
    };
    let _ = writeln!(out, "{}", heading(&format!("verdict: {v}"), color));
    out
}
