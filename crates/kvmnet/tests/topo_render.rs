//! `kvmnet topo` rendered by a real browser (headless Chromium): the expected nodes exist and
//! are visible, faulty hops are marked, and a 200-VM host stays readable (no overlapping VM
//! boxes, text at least 10 px). Needs Debian's chromium (CI installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kvmnet_testkit::require_cmd;
use serde_json::Value;

fn topo(snapshot: &Path) -> String {
    let out = assert_cmd::Command::cargo_bin("kvmnet")
        .unwrap()
        .args(["topo", "--from", snapshot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Loads the SVG in headless Chromium and returns what the page's script found.
fn inspect(svg: &str, ids: &[String], dir: &Path) -> Value {
    let ids_json = serde_json::to_string(ids).unwrap();
    let html = format!(
        r#"<!doctype html><html><body style="margin:0">{svg}<pre id="result">pending</pre>
<script>
const res = {{nodes: {{}}, overlaps: 0, smallest_font: 1000, vms: 0}};
for (const id of {ids_json}) {{
  const el = document.getElementById(id);
  if (!el) {{ res.nodes[id] = "missing"; continue; }}
  const r = el.getBoundingClientRect();
  const st = getComputedStyle(el);
  const visible = r.width > 0 && r.height > 0 && st.visibility !== "hidden" && st.display !== "none";
  res.nodes[id] = visible ? (el.classList.contains("f") ? "visible-faulty" : "visible") : "hidden";
}}
const vmRects = [...document.querySelectorAll('g[id^="node-vm-"] rect')].map(e => e.getBoundingClientRect());
res.vms = vmRects.length;
vmRects.sort((a, b) => a.top - b.top);
for (let i = 1; i < vmRects.length; i++) if (vmRects[i].top < vmRects[i - 1].bottom - 0.5) res.overlaps++;
for (const t of document.querySelectorAll("svg text")) {{
  const f = parseFloat(getComputedStyle(t).fontSize);
  if (f < res.smallest_font) res.smallest_font = f;
}}
document.getElementById("result").textContent = JSON.stringify(res);
</script></body></html>"#
    );
    let page = dir.join("topo.html");
    std::fs::write(&page, html).unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let json = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("no result in the page: {}", &dom[..dom.len().min(500)]))
        .replace("&quot;", "\"");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn topo_renders_in_a_browser_with_faults_marked_and_stays_readable_at_200_vms() {
    require_cmd("chromium");
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");

    // the faulty NAT lab: web2's tap is down, db1's gateway is wrong
    let svg = topo(&fixtures.join("nat-lab-faults.json"));
    let ids: Vec<String> = [
        "node-vm-web1",
        "node-vm-web2",
        "node-vm-db1",
        "node-dev-vnet2",
        "node-sw-br0",
        "node-host-routing",
        "node-up-uplink",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = inspect(&svg, &ids, dir.path());
    let n = &r["nodes"];
    for id in &ids {
        assert!(
            n[id].as_str().unwrap_or("").starts_with("visible"),
            "{id}: {}",
            n[id]
        );
    }
    assert_eq!(n["node-dev-vnet2"], "visible-faulty", "{r}");
    assert_eq!(n["node-vm-web2"], "visible-faulty", "{r}");
    assert_eq!(n["node-vm-web1"], "visible", "{r}");
    assert!(
        svg.contains("tap-down"),
        "the finding code is written on the hop"
    );

    // a large host: 200 VMs
    let big = kvmnet_testkit::synth::large_host(200, 1, 10, 100);
    let p = dir.path().join("big.json");
    std::fs::write(&p, kvmnet_model::write_snapshot(&big)).unwrap();
    let svg = topo(&p);
    let vm_ids: Vec<String> = big
        .vms
        .iter()
        .step_by(20)
        .map(|v| {
            format!(
                "node-vm-{}",
                v.name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect::<String>()
            )
        })
        .collect();
    let r = inspect(&svg, &vm_ids, dir.path());
    assert_eq!(r["vms"], 200, "{r}");
    assert_eq!(r["overlaps"], 0, "VM boxes overlap: {r}");
    assert!(r["smallest_font"].as_f64().unwrap() >= 10.0, "{r}");
    for id in &vm_ids {
        assert!(
            r["nodes"][id].as_str().unwrap_or("").starts_with("visible"),
            "{id}: {r}"
        );
    }
}
