//! Differential test of the nf_tables reader and the rule renderer against the real `nft`:
//! every ruleset of the shared corpus is loaded into a fresh namespace with `nft -f`, read back
//! by kvmnet over netlink, and compared with `nft list ruleset` (tables, chains, hooks, rule
//! counts exactly; rule text as a reported agreement figure). Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kvmnet_linux::netns::run_in_netns;
use kvmnet_linux::nft::dump_ruleset;
use kvmnet_model::nft_text::rule_text;
use kvmnet_testkit::{require_cmd, require_root, Netns};

fn corpus_dir() -> PathBuf {
    match std::env::var_os("KVMNET_CORPUS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "nft" || x == "nftables") {
                out.push(p);
            }
        }
    }
}

/// The chains of `nft list ruleset` text: ((family, table, chain), rule lines).
fn parse_listing(text: &str) -> Vec<((String, String, String), Vec<String>)> {
    let mut out = vec![];
    let (mut fam, mut table) = (String::new(), String::new());
    let mut cur: Option<((String, String, String), Vec<String>)> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("table ") {
            let mut w = rest.split_whitespace();
            fam = w.next().unwrap_or("").to_string();
            table = w.next().unwrap_or("").to_string();
        } else if let Some(rest) = l.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            cur = Some(((fam.clone(), table.clone(), name), vec![]));
        } else if l == "}" {
            if let Some(c) = cur.take() {
                out.push(c);
            }
        } else if let Some(c) = cur.as_mut() {
            if !l.is_empty()
                && !l.starts_with("type ")
                && !l.starts_with("policy ")
                && !l.starts_with("comment ")
                && !l.starts_with("devices ")
            {
                c.1.push(l.to_string());
            }
        }
    }
    out
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn corpus_rulesets_read_back_like_nft_lists_them() {
    if !require_root("corpus_rulesets_read_back_like_nft_lists_them") {
        return;
    }
    require_cmd("nft");
    let mut list = vec![];
    files(&corpus_dir(), &mut list);
    list.sort();
    assert!(
        list.len() > 30,
        "corpus rulesets not found under {}",
        corpus_dir().display()
    );
    let (mut loaded, mut rules_total, mut rules_same) = (0, 0, 0);
    let mut differ = vec![];
    for f in &list {
        let ns = Netns::create(&Netns::unique_prefix(), "nft").unwrap();
        let text = std::fs::read_to_string(f).unwrap();
        if let Err(e) = ns.nft(&text) {
            // This kernel lacks some features (flowtables, tunnels, osf...): the file is
            // reported, not silently dropped.
            println!(
                "not loadable here: {}: {}",
                f.display(),
                e.to_string().lines().next().unwrap_or("")
            );
            continue;
        }
        loaded += 1;
        let listing = ns.exec(&["nft", "list", "ruleset"]).unwrap();
        let expected = parse_listing(&listing);
        let rs = run_in_netns(Some(ns.name()), dump_ruleset)
            .unwrap()
            .unwrap();
        let mut ours = vec![];
        for t in &rs.tables {
            for c in &t.chains {
                let rules: Vec<String> = c.rules.iter().map(|r| rule_text(t, r)).collect();
                ours.push((
                    (t.family.to_string(), t.name.clone(), c.name.clone()),
                    rules,
                ));
            }
        }
        // exact structure: the same chains, each with the same number of rules
        let mut e_keys: Vec<_> = expected.iter().map(|(k, r)| (k.clone(), r.len())).collect();
        let mut o_keys: Vec<_> = ours.iter().map(|(k, r)| (k.clone(), r.len())).collect();
        e_keys.sort();
        o_keys.sort();
        assert_eq!(o_keys, e_keys, "{}: chains/rule counts differ", f.display());
        for (k, rules) in &ours {
            let exp = &expected.iter().find(|(ek, _)| ek == k).unwrap().1;
            for (a, b) in rules.iter().zip(exp) {
                rules_total += 1;
                if normalize(a) == normalize(b) {
                    rules_same += 1;
                } else {
                    differ.push(format!(
                        "{}\n    nft:    {b}\n    kvmnet: {a}",
                        f.file_name().unwrap().to_string_lossy()
                    ));
                }
            }
        }
    }
    println!("{loaded}/{} corpus rulesets loaded; rule text identical to nft for {rules_same}/{rules_total}", list.len());
    for d in differ.iter().take(400) {
        println!("  {d}");
    }
    assert!(loaded >= 20, "too few rulesets loaded");
    // a floor, so a regression in the renderer fails this test
    assert!(
        rules_same * 100 >= rules_total * 65,
        "rule text agreement fell to {rules_same}/{rules_total}"
    );
}

fn all_rulesets(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                all_rulesets(&p, out);
            } else if p.extension().is_some_and(|x| {
                x == "nft"
                    || x == "nftables"
                    || x == "json-nft"
                    || (x == "json" && p.to_string_lossy().contains("nftables"))
            }) && !p.ends_with("base.nftables")
            {
                out.push(p);
            }
        }
    }
}

/// Every ruleset of the corpus (nft scripts, nft JSON, libvirt's recorded nft commands) loads
/// through the kernel and compiles for the simulator; what cannot be evaluated is listed.
#[test]
fn every_corpus_ruleset_loads_for_trace() {
    if !require_root("every_corpus_ruleset_loads_for_trace") {
        return;
    }
    require_cmd("nft");
    let mut list = vec![];
    all_rulesets(&corpus_dir(), &mut list);
    list.sort();
    assert!(list.len() > 60, "{} rulesets found", list.len());
    let base = corpus_dir().join("libvirt__libvirt/tests/networkxml2firewalldata/base.nftables");
    let (mut loaded, mut kernel, mut syntax) = (0, vec![], vec![]);
    let mut unknown = 0;
    for f in &list {
        let mut files: Vec<&Path> = vec![];
        if f.extension().is_some_and(|x| x == "nftables") {
            files.push(&base);
        }
        files.push(f);
        match kvmnet_linux::nft::load_ruleset_files(&files) {
            Ok(rs) => {
                loaded += 1;
                let c = kvmnet_trace::compile(&rs);
                let u = kvmnet_trace::unsupported(&c);
                unknown += u.iter().filter(|x| x.kind == "unknown").count();
                for x in u.iter().filter(|x| x.kind == "unknown") {
                    println!(
                        "  unsupported in {}: {} {} {} handle {}: {}",
                        f.file_name().unwrap().to_string_lossy(),
                        x.family,
                        x.table,
                        x.chain,
                        x.handle,
                        x.what
                    );
                }
            }
            Err(kvmnet_linux::nft::LoadError::Refused { reason, .. }) => {
                // the kernel (no flowtables, tunnels...) or this nft version (newer syntax)
                // refused it: reported, not kvmnet's failure
                if reason.contains("No such file or directory")
                    || reason.contains("Operation not supported")
                {
                    kernel.push(f.clone());
                } else {
                    syntax.push((f.clone(), reason));
                }
            }
            Err(e) => panic!("{}: {e}", f.display()),
        }
    }
    println!(
        "{loaded}/{} corpus rulesets loaded and compiled; {} need kernel features this machine lacks; {} use syntax this nft cannot parse; {unknown} expressions kvmnet cannot evaluate",
        list.len(),
        kernel.len(),
        syntax.len()
    );
    for (f, r) in &syntax {
        println!("  nft cannot parse {}: {r}", f.display());
    }
    // a floor against regressions in the loader (the rest is the kernel or nft refusing)
    assert!(loaded >= 80, "only {loaded} of {} loaded", list.len());
}
