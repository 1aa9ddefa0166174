//! docs/doctor.md documents every finding code doctor can emit, and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

/// Codes in the sources: `Finding::new("code"` (also across a line break) and `on_vm("code"`,
/// and the codes chosen by a variable before `Finding::new(code, ...)`.
fn source_codes() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        // `Finding::new("code", ...)`, and paths.rs's `on_vm("code", ...)` shorthand for it
        for call in ["Finding::new(", "on_vm("] {
            let mut rest = text.as_str();
            while let Some(i) = rest.find(call) {
                rest = &rest[i + call.len()..];
                let arg = rest.trim_start();
                if let Some(lit) = arg.strip_prefix('"') {
                    out.insert(lit.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    // chosen by variable (see paths.rs: nft-rule drops)
    out.extend(["forward-blocked", "host-input-blocked"].map(String::from));
    out
}

fn documented() -> BTreeSet<String> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/doctor.md");
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| l.split('`').next().unwrap().to_string())
        .collect()
}

#[test]
fn every_code_is_documented_and_only_those() {
    let (src, doc) = (source_codes(), documented());
    assert!(src.len() > 40, "{src:?}");
    let undocumented: Vec<_> = src.difference(&doc).collect();
    assert!(
        undocumented.is_empty(),
        "codes missing from docs/doctor.md: {undocumented:?}"
    );
    let stale: Vec<_> = doc.difference(&src).collect();
    assert!(
        stale.is_empty(),
        "docs/doctor.md documents codes doctor never emits: {stale:?}"
    );
}
