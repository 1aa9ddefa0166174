//! Every YAML example in docs/configure.md is a valid configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvmnet_config::{validate, Config};

#[test]
fn every_documented_example_validates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configure.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut n = 0;
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").unwrap();
        let mut cfg = Config::default();
        cfg.add_source(
            format!("docs example {}", n + 1).into(),
            body[..end].to_string(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let d = validate(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert!(!d.networks.is_empty());
        n += 1;
        rest = &body[end..];
    }
    assert!(n >= 4, "only {n} examples found");
}
