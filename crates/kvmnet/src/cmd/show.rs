//! `kvmnet show`: the VM view first, then the host's sections.

use crate::cli::{Format, Section, ShowArgs};
use crate::error::CliError;
use crate::render::show::{render_show, ShowOptions};

pub fn run(a: ShowArgs, color: bool) -> Result<i32, CliError> {
    let state = crate::source::load(a.source.netns.as_deref(), a.source.from.as_deref())?;
    let format = if a.json { Format::Json } else { a.output };
    let text = match format {
        Format::Json => crate::output::json(&filtered(&state, &a.sections)?)?,
        Format::Yaml => crate::output::yaml(&filtered(&state, &a.sections)?)?,
        Format::Table => render_show(
            &state,
            &ShowOptions {
                sections: a.sections,
                all: a.all,
                color,
            },
        ),
    };
    crate::output::print(&text)?;
    Ok(0)
}

/// The state as JSON, reduced to the requested sections (the header fields always stay).
fn filtered(
    state: &kvmnet_model::HostState,
    sections: &[Section],
) -> Result<serde_json::Value, CliError> {
    let mut v = serde_json::to_value(state)
        .map_err(|e| CliError::runtime(format!("cannot encode: {e}")))?;
    if sections.is_empty() {
        return Ok(v);
    }
    let keep: Vec<&str> = sections
        .iter()
        .map(|s| match s {
            Section::Vms => "vms",
            Section::Networks => "networks",
            Section::Links => "links",
            Section::Addrs => "addresses",
            Section::Routes => "routes",
            Section::Rules => "rules",
            Section::Neigh => "neighbours",
            Section::Fdb => "fdb",
            Section::Sysctl => "sysctls",
            Section::Nft => "nftables",
            Section::Qdisc => "qdiscs",
            Section::Ovs => "ovs",
            Section::Sockets => "sockets",
            Section::Warnings => "collection_warnings",
        })
        .collect();
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|k, _| {
            keep.contains(&k.as_str())
                || matches!(
                    k.as_str(),
                    "schema_version" | "hostname" | "netns" | "collected_at" | "kernel"
                )
        });
    }
    Ok(v)
}
