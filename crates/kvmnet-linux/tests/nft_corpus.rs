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
/// for the simulator: through the kernel where it can, else with kvmnet's own reader; what
/// cannot be evaluated is listed. Where the kernel loads a file, kvmnet's own reader is checked
/// against it: the same tables, chains and rule counts, and the rule text of both compared.
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
    let (mut by_kernel, mut by_reader, mut failed) = (0, vec![], vec![]);
    let (mut unknown, mut opaque) = (0, 0);
    let (mut compared, mut same_structure, mut rules_total, mut rules_same) = (0, 0, 0, 0);
    let (mut differ, mut reader_failed) = (vec![], vec![]);
    let (mut verdicts_total, mut verdicts_same, mut verdict_differ) = (0, 0, vec![]);
    for f in &list {
        let mut files: Vec<&Path> = vec![];
        if f.extension().is_some_and(|x| x == "nftables") {
            files.push(&base);
        }
        files.push(f);
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let loaded = match kvmnet_linux::nft::load_or_parse_ruleset_files(&files) {
            Ok(l) => l,
            Err(e) => {
                failed.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        match &loaded.kernel_refused {
            None => {
                by_kernel += 1;
                // kvmnet's own reader against the kernel's compilation of the same file
                let ours = match kvmnet_linux::nft::parse_ruleset_files(&files) {
                    Ok(o) => o,
                    Err(e) => {
                        reader_failed.push(format!("{name}: {e}"));
                        continue;
                    }
                };
                compared += 1;
                let shape = |rs: &kvmnet_model::NftRuleset| {
                    let mut v: Vec<(String, String, String, usize)> = rs
                        .tables
                        .iter()
                        .flat_map(|t| {
                            t.chains.iter().map(move |c| {
                                (
                                    t.family.to_string(),
                                    t.name.clone(),
                                    c.name.clone(),
                                    c.rules.len(),
                                )
                            })
                        })
                        .collect();
                    v.sort();
                    v
                };
                if shape(&ours) == shape(&loaded.ruleset) {
                    same_structure += 1;
                    let (n, same, first) = verdicts_agree(&loaded.ruleset, &ours);
                    verdicts_total += n;
                    verdicts_same += same;
                    if let Some(d) = first {
                        verdict_differ.push(format!("{name}: {d}"));
                    }
                } else {
                    differ.push(format!(
                        "{name}: structure\n    kernel: {:?}\n    kvmnet: {:?}",
                        shape(&loaded.ruleset),
                        shape(&ours)
                    ));
                    continue;
                }
                for kt in &loaded.ruleset.tables {
                    let Some(ot) = ours.table(kt.family, &kt.name) else {
                        continue;
                    };
                    for kc in &kt.chains {
                        let Some(oc) = ot.chain(&kc.name) else {
                            continue;
                        };
                        for (kr, or) in kc.rules.iter().zip(&oc.rules) {
                            rules_total += 1;
                            let (a, b) =
                                (normalize(&rule_text(kt, kr)), normalize(&rule_text(ot, or)));
                            if a == b {
                                rules_same += 1;
                            } else {
                                differ.push(format!("{name}\n    kernel: {a}\n    kvmnet: {b}"));
                            }
                        }
                    }
                }
            }
            Some(why) => by_reader.push(format!("{name}: {}", why.lines().next().unwrap_or(""))),
        }
        let c = kvmnet_trace::compile(&loaded.ruleset);
        let u = kvmnet_trace::unsupported(&c);
        unknown += u.iter().filter(|x| x.kind == "unknown").count();
        for x in u.iter().filter(|x| x.kind == "unknown") {
            if x.what.contains("cannot read") {
                opaque += 1;
            }
            println!(
                "  unsupported in {name}: {} {} {} handle {}: {}",
                x.family, x.table, x.chain, x.handle, x.what
            );
        }
    }
    println!(
        "{}/{} corpus rulesets loaded: {by_kernel} through the kernel, {} with kvmnet's own reader (the kernel or nft here refused them); {unknown} expressions kvmnet cannot evaluate ({opaque} rules its reader keeps as text)",
        by_kernel + by_reader.len(),
        list.len(),
        by_reader.len()
    );
    for r in &by_reader {
        println!("  own reader: {r}");
    }
    println!(
        "kvmnet's reader vs the kernel on {compared} files: same tables/chains/rule counts in {same_structure}; rule text identical for {rules_same}/{rules_total}"
    );
    println!(
        "simulated verdicts, kvmnet's reader vs the kernel's compilation: {verdicts_same}/{verdicts_total} identical (packets x hooks x families)"
    );
    for d in &verdict_differ {
        println!("  verdict differs: {d}");
    }
    for d in differ.iter().take(300) {
        println!("  {d}");
    }
    assert!(
        reader_failed.is_empty(),
        "the kernel loads these but kvmnet's reader does not:\n{}",
        reader_failed.join("\n")
    );
    assert!(
        failed.is_empty(),
        "rulesets that did not load:\n{}",
        failed.join("\n")
    );
    assert_eq!(
        same_structure, compared,
        "kvmnet's reader and the kernel disagree on a ruleset's structure"
    );
    assert!(
        verdicts_total > 10_000,
        "too few verdicts compared: {verdicts_total}"
    );
    // a floor against regressions; the differences left are listed above
    assert!(
        verdicts_same * 1000 >= verdicts_total * 995,
        "verdict agreement fell to {verdicts_same}/{verdicts_total}"
    );
}

struct NoFib;

impl kvmnet_trace::eval::Fib for NoFib {
    fn fib(
        &self,
        _: &kvmnet_trace::Packet,
        _: Option<&kvmnet_trace::eval::Dev>,
        _: Option<&kvmnet_trace::eval::Dev>,
        _: u32,
        _: u32,
    ) -> Option<Vec<u8>> {
        None
    }
    fn addrtype(&self, _: std::net::IpAddr) -> u32 {
        1
    }
}

/// Runs the same packets through every hook of both rulesets and compares the outcomes: the
/// verdict, the position (chain, index) of the deciding rule, and the NAT decided. Returns
/// (compared, identical, first difference).
fn verdicts_agree(
    kernel: &kvmnet_model::NftRuleset,
    ours: &kvmnet_model::NftRuleset,
) -> (usize, usize, Option<String>) {
    use kvmnet_trace::eval::{Dev, HookCtx, HookVerdict};
    use kvmnet_trace::{CtState, Packet};
    use std::net::IpAddr;
    let (kc, oc) = (kvmnet_trace::compile(kernel), kvmnet_trace::compile(ours));
    // a rule by its place, since the two sides number handles differently
    let place = |rs: &kvmnet_model::NftRuleset, r: &kvmnet_trace::RuleRef| -> String {
        let pos = r.handle.and_then(|h| {
            rs.tables
                .iter()
                .filter(|t| t.family.as_str() == &*r.family && t.name == *r.table)
                .flat_map(|t| t.chains.iter().filter(|c| c.name == *r.chain))
                .find_map(|c| c.rules.iter().position(|x| x.handle == h))
        });
        format!("{} {} {} #{pos:?}", r.family, r.table, r.chain)
    };
    let outcome = |rs: &kvmnet_model::NftRuleset, res: &kvmnet_trace::HookResult| -> String {
        let v = match &res.verdict {
            HookVerdict::Accept => "accept".to_string(),
            HookVerdict::Drop { rule, reject } => format!(
                "drop{} by {}",
                if *reject { "(reject)" } else { "" },
                place(rs, rule)
            ),
            HookVerdict::Unknown { rule, .. } => format!("unknown at {}", place(rs, rule)),
        };
        let nat = res.nat.as_ref().map(|n| {
            format!(
                " nat {} {:?}:{:?} by {}",
                n.kind,
                n.addr,
                n.port,
                place(rs, &n.rule)
            )
        });
        format!("{v}{}", nat.unwrap_or_default())
    };
    let devs = [
        Dev {
            name: "lo".into(),
            index: 1,
            kind: String::new(),
            arptype: 772,
        },
        Dev {
            name: "eth0".into(),
            index: 2,
            kind: String::new(),
            arptype: 1,
        },
        Dev {
            name: "virbr0".into(),
            index: 3,
            kind: "bridge".into(),
            arptype: 1,
        },
    ];
    let v4: Vec<IpAddr> = [
        "10.0.0.1",
        "192.168.122.5",
        "127.0.0.1",
        "10.141.11.3",
        "1.1.1.1",
        "192.168.1.10",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let v6: Vec<IpAddr> = ["::1", "fe80::1", "2001:db8:1111::5", "2001:db8::1"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let l4 = [
        (6u8, 22u16),
        (6, 80),
        (6, 443),
        (6, 8080),
        (17, 53),
        (17, 67),
        (1, 0),
        (58, 0),
    ];
    let (mut n, mut same, mut first) = (0, 0, None);
    for addrs in [&v4, &v6] {
        let is6 = addrs[0].is_ipv6();
        for (src, dst) in addrs.iter().flat_map(|s| addrs.iter().map(move |d| (s, d))) {
            for &(proto, dport) in &l4 {
                if (proto == 1 && is6) || (proto == 58 && !is6) {
                    continue;
                }
                for ct in [CtState::New, CtState::Established] {
                    let mut pkt = Packet::new(*src, *dst, proto, dport);
                    pkt.ct = ct;
                    if ct == CtState::New && proto == 6 {
                        pkt.tcp_flags = 2;
                    }
                    for (hook, iif, oif) in [
                        ("prerouting", Some(&devs[1]), None),
                        ("input", Some(&devs[0]), None),
                        ("forward", Some(&devs[2]), Some(&devs[1])),
                        ("output", None, Some(&devs[1])),
                        ("postrouting", None, Some(&devs[2])),
                    ] {
                        let cx = HookCtx {
                            iif,
                            oif,
                            bri_in: None,
                            bri_out: None,
                            phys_in: None,
                            phys_out: None,
                            ct_orig: (*src, *dst, pkt.sport, dport),
                            fib: &NoFib,
                        };
                        let fams = kvmnet_trace::eval::ip_families(is6);
                        let a = outcome(
                            kernel,
                            &kvmnet_trace::eval_hook(&kc, &fams, hook, &pkt, &cx),
                        );
                        let b =
                            outcome(ours, &kvmnet_trace::eval_hook(&oc, &fams, hook, &pkt, &cx));
                        n += 1;
                        if a == b {
                            same += 1;
                        } else if first.is_none() {
                            first = Some(format!("{hook} {src} -> {dst} proto {proto} dport {dport} {ct:?}: kernel {a}, kvmnet {b}"));
                        }
                    }
                }
            }
        }
    }
    (n, same, first)
}
