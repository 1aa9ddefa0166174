//! Reading and writing snapshot files: the whole `HostState` as JSON. Reading reports one clear
//! error naming the position and the reason (not JSON, truncated, wrong shape, unknown schema
//! version). The caller does the file I/O; this module works on text.

use serde::Deserialize;

use crate::state::{HostState, SCHEMA_VERSION};

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("line {line}, column {column}: not valid JSON: {reason}")]
    Syntax {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("line {line}, column {column}: the file ends early (truncated?)")]
    Truncated { line: usize, column: usize },
    #[error("line {line}, column {column}: {reason}")]
    Shape {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("unsupported schema_version {found} (this kvmnet reads version {SCHEMA_VERSION})")]
    Version { found: u64 },
    #[error("missing schema_version: not a kvmnet snapshot")]
    NoVersion,
}

#[derive(Deserialize)]
struct Header {
    schema_version: Option<serde_json::Value>,
}

fn classify(e: serde_json::Error) -> SnapshotError {
    use serde_json::error::Category;
    let (line, column) = (e.line(), e.column());
    let reason = strip_position(&e.to_string());
    match e.classify() {
        Category::Eof => SnapshotError::Truncated { line, column },
        Category::Syntax | Category::Io => SnapshotError::Syntax {
            line,
            column,
            reason,
        },
        Category::Data => SnapshotError::Shape {
            line,
            column,
            reason,
        },
    }
}

/// serde_json appends " at line X column Y"; we print the position ourselves.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Parses snapshot text.
pub fn parse_snapshot(text: &str) -> Result<HostState, SnapshotError> {
    let header: Header = serde_json::from_str(text).map_err(classify)?;
    match header.schema_version {
        None => return Err(SnapshotError::NoVersion),
        Some(v) => match v.as_u64() {
            Some(n) if n == u64::from(SCHEMA_VERSION) => {}
            Some(n) => return Err(SnapshotError::Version { found: n }),
            None => {
                return Err(SnapshotError::Shape {
                    line: 1,
                    column: 1,
                    reason: format!("schema_version must be a number, found {v}"),
                })
            }
        },
    }
    serde_json::from_str(text).map_err(classify)
}

/// Streams a state as compact JSON into a writer (what `kvmnet snapshot` writes), without
/// building the whole text in memory.
pub fn write_snapshot_to<W: std::io::Write>(state: &HostState, w: W) -> std::io::Result<()> {
    serde_json::to_writer(w, state).map_err(std::io::Error::other)
}

/// Serializes a state as pretty JSON.
pub fn write_snapshot(state: &HostState) -> String {
    // Serializing plain data with string keys cannot fail.
    serde_json::to_string_pretty(state).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_default() {
        let s = HostState::default();
        let text = write_snapshot(&s);
        assert_eq!(parse_snapshot(&text).unwrap(), s);
    }

    #[test]
    fn errors_are_specific() {
        assert!(matches!(
            parse_snapshot("{\"schema_version\": 1, \"links\": ["),
            Err(SnapshotError::Truncated { .. })
        ));
        assert!(matches!(
            parse_snapshot("hello"),
            Err(SnapshotError::Syntax { line: 1, .. })
        ));
        assert!(matches!(
            parse_snapshot("{\"schema_version\": 99}"),
            Err(SnapshotError::Version { found: 99 })
        ));
        assert!(matches!(
            parse_snapshot("{\"links\": []}"),
            Err(SnapshotError::NoVersion)
        ));
        let e =
            parse_snapshot("{\"schema_version\": 1,\n \"links\": [{\"name\": 3}]}").unwrap_err();
        match e {
            SnapshotError::Shape { line, .. } => assert_eq!(line, 2),
            other => panic!("unexpected {other:?}"),
        }
    }
}
