//! `kvmnet show`: the VM view first, then the host's sections.

use crate::cli::{Format, ShowArgs};
use crate::error::CliError;
use crate::render::show::{render_show, ShowOptions};

pub fn run(a: ShowArgs, color: bool) -> Result<i32, CliError> {
    let state = crate::source::load(a.source.netns.as_deref(), a.source.from.as_deref())?;
    let format = if a.json { Format::Json } else { a.output };
    let text = match format {
        Format::Json => crate::output::json(&state)?,
        Format::Yaml => crate::output::yaml(&state)?,
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
