//! Writing to stdout: broken pipes end quietly; colour only on a terminal and never with
//! NO_COLOR.

use std::io::{IsTerminal, Write};

use crate::error::CliError;

/// Writes text to stdout.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') && !text.is_empty() {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Pretty JSON of a value.
pub fn json<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(v)
        .map_err(|e| CliError::runtime(format!("cannot encode JSON: {e}")))
}

/// YAML of a value.
pub fn yaml<T: serde::Serialize>(v: &T) -> Result<String, CliError> {
    serde_saphyr::to_string(v).map_err(|e| CliError::runtime(format!("cannot encode YAML: {e}")))
}

/// Whether to colour output.
pub fn use_color(choice: crate::cli::ColorChoice) -> bool {
    match choice {
        crate::cli::ColorChoice::Always => true,
        crate::cli::ColorChoice::Never => false,
        crate::cli::ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stdout().is_terminal()
        }
    }
}
