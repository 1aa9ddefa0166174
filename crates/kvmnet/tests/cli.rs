//! Black-box CLI behaviour that needs no privileges: help, bad input, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use assert_cmd::Command;

fn kvmnet() -> Command {
    Command::cargo_bin("kvmnet").unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn help_has_examples() {
    for args in [
        vec!["--help"],
        vec!["show", "--help"],
        vec!["snapshot", "--help"],
    ] {
        let out = kvmnet().args(&args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Examples:"), "{args:?}: {text}");
    }
}

#[test]
fn usage_error_exits_2() {
    kvmnet().args(["show", "--bogus"]).assert().code(2);
    kvmnet().args(["frobnicate"]).assert().code(2);
}

#[test]
fn bad_snapshots_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("notjson.json", "this is not json", "line 1, column 2: not valid JSON"),
        ("trunc.json", "{\"schema_version\": 1, \"links\": [{\"index\": 1,", "ends early"),
        ("version.json", "{\"schema_version\": 42}", "unsupported schema_version 42"),
        ("noversion.json", "{\"links\": []}", "missing schema_version"),
        (
            "shape.json",
            "{\"schema_version\": 1,\n\"links\": [{\"index\": \"x\", \"name\": \"a\", \"kind\": \"veth\"}]}",
            "line 2",
        ),
    ];
    for (name, text, expect) in cases {
        let p = write(&dir, name, text);
        let out = kvmnet().args(["show", "--from"]).arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name}: error names the file: {err}");
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
    }
    let out = kvmnet()
        .args(["show", "--from", "/nonexistent/x.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_namespace_is_a_clear_error() {
    let out = kvmnet()
        .args(["show", "--netns", "kvmnet-no-such-ns-xyz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kvmnet-no-such-ns-xyz") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn show_from_a_minimal_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "min.json",
        r#"{"schema_version": 1, "hostname": "hv1",
            "links": [{"index": 2, "name": "br0", "kind": "bridge", "admin_up": true, "oper_state": "up"},
                      {"index": 5, "name": "vnet0", "kind": "tap", "admin_up": true, "oper_state": "up", "master": "br0",
                       "tap": {"vnet_hdr": true, "holders": [{"pid": 4242, "name": "qemu-system-x86"}]}}],
            "vms": [{"name": "web1", "source": "libvirt", "state": "running",
                     "vnics": [{"mac": "52:54:00:00:00:01", "host_dev": "vnet0", "model": "virtio", "iface_type": "network", "network": "default"}]}]}"#,
    );
    let out = kvmnet().args(["show", "--from"]).arg(&p).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("web1"), "{text}");
    assert!(text.contains("vnet0 [up]"), "{text}");
    assert!(text.contains("br0 [up]"), "{text}");
    assert!(text.contains("qemu-system-x86[4242]"), "{text}");
    // sections filter; json keeps the schema
    let out = kvmnet()
        .args(["show", "links", "--from"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Links") && !text.contains("VMs"), "{text}");
    let out = kvmnet()
        .args(["show", "-o", "yaml", "--from"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema_version: 1"));
}

#[test]
fn version_names_the_revision_and_completions_and_man_page_come_out() {
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .arg("--version")
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("kvmnet 0."), "{v}");
    assert!(v.contains('(') && v.contains(')'), "the revision: {v}");
    for shell in ["bash", "zsh", "fish"] {
        let out = assert_cmd::Command::cargo_bin("kvmnet")
            .unwrap()
            .args(["completions", shell])
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        for sub in ["doctor", "trace", "apply", "exporter", "topo"] {
            assert!(t.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .arg("man")
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains(".TH kvmnet 1"), "{t}");
    assert!(t.contains("doctor"));
}

#[test]
fn every_command_has_help_with_examples() {
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&out.stdout).to_string();
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.starts_with("Options"))
        // command lines are indented by two; wrapped descriptions by more
        .filter(|l| l.starts_with("  ") && !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(String::from)
        .collect();
    assert!(commands.len() >= 14, "{commands:?}");
    for c in commands {
        let out = assert_cmd::Command::cargo_bin("kvmnet")
            .unwrap()
            .args([c.as_str(), "--help"])
            .output()
            .unwrap();
        let h = String::from_utf8_lossy(&out.stdout);
        assert!(
            h.contains("Examples:"),
            "`kvmnet {c} --help` has no examples:\n{h}"
        );
    }
}

/// Colour: on a terminal only, never with NO_COLOR, forced with --color always/never.
#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let fixture = format!(
        "{}/tests/fixtures/nat-lab-faults.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let bin = assert_cmd::cargo::cargo_bin("kvmnet");
    let esc = |b: &[u8]| b.windows(2).any(|w| w == b"\x1b[");
    // piped: no colour
    let out = kvmnet()
        .args(["doctor", "--from", &fixture])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!out.stdout.is_empty() && !esc(&out.stdout));
    // forced
    let out = kvmnet()
        .args(["doctor", "--from", &fixture, "--color", "always"])
        .output()
        .unwrap();
    assert!(esc(&out.stdout));
    // on a terminal (util-linux `script` gives the command a pseudo-terminal)
    let on_tty = |no_color: Option<&str>, extra: &str| {
        let mut c = std::process::Command::new("script");
        c.args([
            "-qec",
            &format!("{} doctor --from {fixture} {extra}", bin.display()),
            "/dev/null",
        ]);
        c.env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        c.output().expect("script (util-linux) runs")
    };
    let out = on_tty(None, "");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("guest-wrong-gateway"),
        "{out:?}"
    );
    assert!(esc(&out.stdout), "a terminal gets colour");
    assert!(
        !esc(&on_tty(Some("1"), "").stdout),
        "NO_COLOR=1 turns colour off"
    );
    assert!(!esc(&on_tty(None, "--color never").stdout));
}

/// `trace --ruleset`: a ruleset loads (through the kernel, or kvmnet's own reader where the
/// kernel or privileges are missing) and what cannot be evaluated is listed; a broken one is
/// one clear error naming the file and line.
#[test]
fn trace_ruleset_files_load_or_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        &dir,
        "fw.nft",
        "table inet fw {\n  chain fwd {\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    tcp dport 22 meta cpu 1 accept\n  }\n}\n",
    );
    let out = kvmnet()
        .args(["trace", "--explain-unsupported", "--json", "--ruleset"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["chain"], "fwd");
    assert!(list[0]["what"].as_str().unwrap().contains("cpu"), "{v}");
    let bad = write(
        &dir,
        "bad.nft",
        "table inet fw {\n  chain fwd {\n    tcp dport 22 accept\n",
    );
    let out = kvmnet()
        .args(["trace", "--explain-unsupported", "--ruleset"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.nft") && err.contains("line"), "{err}");
}
