//! `kvmnet topo`: the host drawn left to right — VMs, their host devices (taps, veths),
//! switches (Linux bridges, Open vSwitch bridges) grouped with their networks, the host's
//! routing and NAT, the uplinks and what lies beyond — with the hops doctor finds faulty in
//! red, labelled with their finding code. As SVG (laid out here, one row per vNIC, so 200 VMs
//! stay readable) or as Graphviz DOT.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use kvmnet_doctor::Report;
use kvmnet_model::HostState;

/// The picture as nodes and edges, before layout.
struct Graph {
    /// (id, label, sublabel, column, fault codes)
    nodes: Vec<Node>,
    edges: Vec<(String, String, Vec<String>)>,
}

#[derive(Clone)]
struct Node {
    id: String,
    label: String,
    sub: String,
    col: usize,
    faults: Vec<String>,
}

const COLS: [&str; 6] = [
    "VMs",
    "host devices",
    "switches",
    "host routing",
    "uplinks",
    "beyond",
];

fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The switch a host device is on: a Linux bridge, or an OVS bridge.
fn switch_of(s: &HostState, dev: &str) -> Option<String> {
    if let Some((b, _)) = s.ovs.as_ref().and_then(|o| o.port_of(dev)) {
        return Some(b.name.clone());
    }
    s.link(dev)
        .and_then(|l| l.master.clone())
        .filter(|m| m != "ovs-system")
}

fn build(s: &HostState, r: Option<&Report>) -> Graph {
    // faults: every root-cause error and warning, by the names in its subject and affects
    let mut faults: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut host_faults: BTreeSet<String> = BTreeSet::new();
    if let Some(r) = r {
        for f in r
            .findings
            .iter()
            .filter(|f| f.caused_by.is_none() && f.severity != kvmnet_doctor::Severity::Info)
        {
            let mut hit = false;
            for n in &f.subject {
                faults.entry(n.clone()).or_default().insert(f.code.clone());
                hit = true;
            }
            if f.layer == kvmnet_doctor::Layer::Host
                || f.code.starts_with("ip-forward")
                || f.code.starts_with("nat-")
                || f.code == "forward-blocked"
                || f.code == "no-default-route"
            {
                host_faults.insert(f.code.clone());
            }
            if !hit {
                for a in &f.affects {
                    faults.entry(a.clone()).or_default().insert(f.code.clone());
                }
            }
        }
    }
    let fault_of = |name: &str| -> Vec<String> {
        faults
            .get(name)
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    };
    let mut g = Graph {
        nodes: vec![],
        edges: vec![],
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut add = |g: &mut Graph, n: Node| {
        if seen.insert(n.id.clone()) {
            g.nodes.push(n);
        }
    };
    // VMs in switch order, so edges run mostly straight
    let mut vms: Vec<_> = s.vms.iter().collect();
    vms.sort_by_key(|v| {
        (
            v.vnics
                .first()
                .and_then(|n| n.host_dev.as_deref())
                .and_then(|d| switch_of(s, d))
                .unwrap_or_default(),
            v.name.clone(),
        )
    });
    let networks_of = |br: &str| -> String {
        let net = s
            .networks
            .iter()
            .find(|n| n.bridge.as_deref() == Some(br))
            .map(|n| n.name.clone());
        let addrs: Vec<String> = s
            .addresses_of(br)
            .filter(|a| a.scope == "global")
            .map(|a| format!("{}/{}", a.address, a.prefix_len))
            .collect();
        let ovs = s.ovs.as_ref().and_then(|o| o.bridge(br)).is_some();
        let mut parts = vec![];
        if ovs {
            parts.push("ovs".to_string());
        }
        if let Some(n) = net {
            if n != br {
                parts.push(format!("network {n}"));
            }
        }
        parts.extend(addrs);
        parts.join(", ")
    };
    for vm in vms {
        let vid = format!("vm-{}", ident(&vm.name));
        let addrs: Vec<String> = vm
            .vnics
            .iter()
            .flat_map(|n| n.addresses.iter().map(|a| a.address.to_string()))
            .collect();
        add(
            &mut g,
            Node {
                id: vid.clone(),
                label: vm.name.clone(),
                sub: format!("{} {}", vm.source.as_str(), addrs.join(" ")),
                col: 0,
                faults: fault_of(&vm.name),
            },
        );
        for n in &vm.vnics {
            let Some(dev) = n.host_dev.clone() else {
                continue;
            };
            let did = format!("dev-{}", ident(&dev));
            let l = s.link(&dev);
            let state = l
                .map(|l| if l.admin_up { "up" } else { "down" })
                .unwrap_or("missing");
            add(
                &mut g,
                Node {
                    id: did.clone(),
                    label: dev.clone(),
                    sub: format!(
                        "{} {}{}",
                        n.model.clone().unwrap_or_default(),
                        state,
                        n.vlan_tags
                            .first()
                            .map(|t| format!(" vlan {t}"))
                            .unwrap_or_default()
                    ),
                    col: 1,
                    faults: fault_of(&dev),
                },
            );
            g.edges.push((vid.clone(), did.clone(), vec![]));
            match switch_of(s, &dev) {
                Some(br) => {
                    let bid = format!("sw-{}", ident(&br));
                    add(
                        &mut g,
                        Node {
                            id: bid.clone(),
                            label: br.clone(),
                            sub: networks_of(&br),
                            col: 2,
                            faults: fault_of(&br),
                        },
                    );
                    g.edges.push((did, bid, fault_of(&dev)));
                }
                None => {
                    // not attached: an edge to where it should be, in red
                    if let Some(br) = n.source_bridge.clone().filter(|b| s.link(b).is_some()) {
                        let bid = format!("sw-{}", ident(&br));
                        add(
                            &mut g,
                            Node {
                                id: bid.clone(),
                                label: br.clone(),
                                sub: networks_of(&br),
                                col: 2,
                                faults: fault_of(&br),
                            },
                        );
                        let mut f = fault_of(&dev);
                        if f.is_empty() {
                            f.push("not attached".into());
                        }
                        g.edges.push((did, bid, f));
                    }
                }
            }
        }
    }
    // every bridge, also without VMs
    for b in s.bridges() {
        add(
            &mut g,
            Node {
                id: format!("sw-{}", ident(&b.name)),
                label: b.name.clone(),
                sub: networks_of(&b.name),
                col: 2,
                faults: fault_of(&b.name),
            },
        );
    }
    if let Some(o) = &s.ovs {
        for b in &o.bridges {
            add(
                &mut g,
                Node {
                    id: format!("sw-{}", ident(&b.name)),
                    label: b.name.clone(),
                    sub: networks_of(&b.name),
                    col: 2,
                    faults: fault_of(&b.name),
                },
            );
        }
    }
    // the host's routing and NAT
    let fwd = s.sysctls.ip_forward == Some(true);
    let masq = s.nftables.tables.iter().any(|t| {
        t.chains.iter().any(|c| {
            c.hook.as_ref().is_some_and(|h| h.hook == "postrouting")
                && c.rules.iter().any(|r| {
                    let x = kvmnet_model::nft_text::rule_text(t, r);
                    x.contains("masquerade") || x.contains("snat")
                })
        })
    });
    let host_id = "host-routing".to_string();
    add(
        &mut g,
        Node {
            id: host_id.clone(),
            label: "routing".into(),
            sub: format!(
                "ip_forward {}{}",
                if fwd { "on" } else { "off" },
                if masq { ", NAT" } else { "" }
            ),
            col: 3,
            faults: host_faults.iter().cloned().collect(),
        },
    );
    let switches: Vec<String> = g
        .nodes
        .iter()
        .filter(|n| n.col == 2)
        .map(|n| n.id.clone())
        .collect();
    for sw in switches {
        g.edges.push((sw, host_id.clone(), vec![]));
    }
    // uplinks and beyond
    for r in s.routes.iter().filter(|r| r.is_default()) {
        for dev in r.devices() {
            let uid = format!("up-{}", ident(dev));
            let l = s.link(dev);
            add(
                &mut g,
                Node {
                    id: uid.clone(),
                    label: dev.to_string(),
                    sub: l
                        .map(|l| if l.admin_up { "up" } else { "down" })
                        .unwrap_or("missing")
                        .to_string(),
                    col: 4,
                    faults: fault_of(dev),
                },
            );
            g.edges.push((host_id.clone(), uid.clone(), fault_of(dev)));
            let gw = r
                .first_gateway()
                .map(|g| g.to_string())
                .unwrap_or_else(|| "on-link".into());
            let bid = format!("gw-{}", ident(&gw));
            add(
                &mut g,
                Node {
                    id: bid.clone(),
                    label: format!("gateway {gw}"),
                    sub: "the outside".into(),
                    col: 5,
                    faults: vec![],
                },
            );
            g.edges.push((uid, bid, vec![]));
        }
    }
    // uplinks that lost their default route (the route goes with the link)
    if let Some(r) = r {
        for f in r.findings.iter().filter(|f| f.code == "uplink-down") {
            if let Some(dev) = f.subject.first() {
                let uid = format!("up-{}", ident(dev));
                add(
                    &mut g,
                    Node {
                        id: uid.clone(),
                        label: dev.clone(),
                        sub: "down".into(),
                        col: 4,
                        faults: vec![f.code.clone()],
                    },
                );
                g.edges.push((host_id.clone(), uid, vec![f.code.clone()]));
            }
        }
    }
    g
}

/// The picture as Graphviz DOT.
pub fn dot(s: &HostState, r: Option<&Report>) -> String {
    let g = build(s, r);
    let mut out = String::from(
        "digraph kvmnet {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"monospace\", fontsize=10];\n",
    );
    for (col, title) in COLS.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{col} {{\n    label=\"{title}\"; style=dashed; color=gray;"
        );
        for n in g.nodes.iter().filter(|n| n.col == col) {
            let label = if n.faults.is_empty() {
                format!("{}\\n{}", n.label, n.sub)
            } else {
                format!("{}\\n{}\\n{}", n.label, n.sub, n.faults.join(", "))
            };
            let color = if n.faults.is_empty() { "black" } else { "red" };
            let _ = writeln!(
                out,
                "    \"{}\" [label=\"{}\", color={color}, fontcolor={color}];",
                n.id,
                label.replace('"', "'")
            );
        }
        out.push_str("  }\n");
    }
    for (a, b, f) in &g.edges {
        if f.is_empty() {
            let _ = writeln!(out, "  \"{a}\" -> \"{b}\";");
        } else {
            let _ = writeln!(
                out,
                "  \"{a}\" -> \"{b}\" [color=red, fontcolor=red, label=\"{}\"];",
                f.join(", ")
            );
        }
    }
    out.push_str("}\n");
    out
}

/// The picture as SVG.
pub fn svg(s: &HostState, r: Option<&Report>) -> String {
    let g = build(s, r);
    const W: [f64; 6] = [250.0, 170.0, 230.0, 170.0, 150.0, 190.0];
    const GAP: f64 = 50.0;
    const ROW: f64 = 50.0;
    const TOP: f64 = 60.0;
    let x_of = |c: usize| -> f64 { 20.0 + W[..c].iter().sum::<f64>() + GAP * c as f64 };
    // rows: VMs and devices one per row; a switch spans its devices' rows; the host spans all
    let mut y: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut row = 0usize;
    let vm_nodes: Vec<&Node> = g.nodes.iter().filter(|n| n.col == 0).collect();
    for vm in &vm_nodes {
        let devs: Vec<&String> = g
            .edges
            .iter()
            .filter(|(a, _, _)| a == &vm.id)
            .map(|(_, b, _)| b)
            .collect();
        let start = row;
        for d in &devs {
            y.insert((*d).clone(), (TOP + row as f64 * ROW, ROW - 8.0));
            row += 1;
        }
        if devs.is_empty() {
            row += 1;
        }
        let h = (row - start) as f64 * ROW - 8.0;
        y.insert(vm.id.clone(), (TOP + start as f64 * ROW, h));
    }
    // switches: span their devices, or a row of their own below
    let mut extra = row;
    for sw in g.nodes.iter().filter(|n| n.col == 2) {
        let ys: Vec<f64> = g
            .edges
            .iter()
            .filter(|(_, b, _)| b == &sw.id)
            .filter_map(|(a, _, _)| y.get(a).map(|(yy, _)| *yy))
            .collect();
        let (top, h) = if ys.is_empty() {
            extra += 1;
            (TOP + (extra - 1) as f64 * ROW, ROW - 8.0)
        } else {
            let lo = ys.iter().cloned().fold(f64::MAX, f64::min);
            let hi = ys.iter().cloned().fold(f64::MIN, f64::max);
            (lo, hi - lo + ROW - 8.0)
        };
        y.insert(sw.id.clone(), (top, h));
    }
    let rows_total = extra.max(row).max(3);
    let height = TOP + rows_total as f64 * ROW + 20.0;
    let mid = TOP + (rows_total as f64 * ROW) / 2.0 - 40.0;
    for n in g.nodes.iter().filter(|n| n.col >= 3) {
        let k = g
            .nodes
            .iter()
            .filter(|m| m.col == n.col && m.id < n.id)
            .count() as f64;
        y.insert(n.id.clone(), (mid + k * 70.0, 60.0));
    }
    let width = x_of(6) + 10.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"monospace\" font-size=\"12\">\n\
         <style>.n rect{{fill:#f7f9fc;stroke:#44546a;stroke-width:1.2}} .f rect{{fill:#fdecea;stroke:#c62828;stroke-width:2}} \
         .l{{fill:#1f2d3d}} .s{{fill:#607080;font-size:10px}} .c{{fill:#c62828;font-weight:bold;font-size:10px}} \
         .e{{stroke:#8a99ab;stroke-width:1.2;fill:none}} .ef{{stroke:#c62828;stroke-width:2.2;fill:none;stroke-dasharray:6 3}} \
         .h{{fill:#44546a;font-weight:bold}}</style>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (c, t) in COLS.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text class=\"h\" x=\"{:.0}\" y=\"30\">{}</text>",
            x_of(c),
            esc(t)
        );
    }
    // edges first, under the boxes
    for (a, b, f) in &g.edges {
        let (Some(na), Some(nb)) = (
            g.nodes.iter().find(|n| &n.id == a),
            g.nodes.iter().find(|n| &n.id == b),
        ) else {
            continue;
        };
        let (Some(&(ya, ha)), Some(&(yb, hb))) = (y.get(a), y.get(b)) else {
            continue;
        };
        let x1 = x_of(na.col) + W[na.col];
        let x2 = x_of(nb.col);
        // a device row meets its switch at its own height
        let y1 = ya + ha / 2.0;
        let y2 = if nb.col == 2 && na.col == 1 {
            y1
        } else {
            yb + hb / 2.0
        };
        let cls = if f.is_empty() { "e" } else { "ef" };
        let _ = writeln!(
            out,
            "<path id=\"edge-{}-{}\" class=\"{cls}\" d=\"M{x1:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {x2:.1},{y2:.1}\"><title>{}</title></path>",
            esc(a),
            esc(b),
            x1 + GAP / 2.0,
            x2 - GAP / 2.0,
            esc(&f.join(", "))
        );
        if !f.is_empty() {
            let _ = writeln!(
                out,
                "<text class=\"c\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x1 + 4.0,
                y1.min(y2) - 3.0,
                esc(&f.join(", "))
            );
        }
    }
    for n in &g.nodes {
        let Some(&(top, h)) = y.get(&n.id) else {
            continue;
        };
        let x = x_of(n.col);
        let cls = if n.faults.is_empty() { "n" } else { "n f" };
        let _ = write!(
            out,
            "<g id=\"node-{}\" class=\"{cls}\"><title>{}{}</title><rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.0}\" height=\"{h:.1}\" rx=\"6\"/>\
             <text class=\"l\" x=\"{:.1}\" y=\"{:.1}\">{}</text><text class=\"s\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            esc(&n.id),
            esc(&n.label),
            if n.faults.is_empty() { String::new() } else { format!(": {}", esc(&n.faults.join(", "))) },
            W[n.col],
            x + 8.0,
            top + 15.0,
            esc(&truncate(&n.label, 30)),
            x + 8.0,
            top + 27.0,
            esc(&truncate(&n.sub, 34)),
        );
        if !n.faults.is_empty() {
            let _ = write!(
                out,
                "<text class=\"c\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 8.0,
                top + 39.0,
                esc(&truncate(&n.faults.join(", "), 34))
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}
