//! Open vSwitch over its database protocol (OVSDB JSON-RPC, RFC 7047) on the unix socket of
//! ovsdb-server: reads bridges, ports, interfaces, mirrors and controllers with one
//! `transact` of `select`s, and runs configuration transactions. OpenFlow rules are not in the
//! database; they are read from ovs-vswitchd with `ovs-ofctl dump-flows`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvmnet_model::ovs::{OvsBridge, OvsInterface, OvsPort, OvsState};
use serde_json::{json, Value};

use crate::procfs::ProcInfo;

/// A connection to ovsdb-server.
pub struct Ovsdb {
    writer: UnixStream,
    reader: serde_json::StreamDeserializer<
        'static,
        serde_json::de::IoRead<BufReader<UnixStream>>,
        Value,
    >,
    id: u64,
}

impl std::fmt::Debug for Ovsdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ovsdb(request {})", self.id)
    }
}

impl Ovsdb {
    /// Connects to the database socket.
    pub fn connect(path: &Path) -> Result<Ovsdb, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let reader = serde_json::Deserializer::from_reader(BufReader::new(s)).into_iter();
        Ok(Ovsdb {
            writer,
            reader,
            id: 0,
        })
    }

    /// Sends one request and waits for its reply (answering the server's echo requests).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.id += 1;
        let id = self.id;
        let msg = json!({"method": method, "params": params, "id": id});
        self.writer
            .write_all(msg.to_string().as_bytes())
            .map_err(|e| format!("ovsdb: {e}"))?;
        loop {
            let v = match self.reader.next() {
                Some(Ok(v)) => v,
                Some(Err(e)) => return Err(format!("ovsdb: {e}")),
                None => return Err("ovsdb: the server closed the connection".into()),
            };
            if v.get("method").and_then(Value::as_str) == Some("echo") {
                let reply = json!({"result": v["params"], "error": null, "id": v["id"]});
                let _ = self.writer.write_all(reply.to_string().as_bytes());
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if !v["error"].is_null() {
                return Err(format!("ovsdb: {}", v["error"]));
            }
            return Ok(v["result"].clone());
        }
    }

    /// Runs a transaction on the Open_vSwitch database; fails when any operation failed.
    pub fn transact(&mut self, ops: Vec<Value>) -> Result<Vec<Value>, String> {
        let mut params = vec![json!("Open_vSwitch")];
        params.extend(ops);
        let r = self.call("transact", Value::Array(params))?;
        let results = r.as_array().cloned().unwrap_or_default();
        for res in &results {
            if let Some(err) = res.get("error") {
                return Err(format!(
                    "ovsdb transaction: {}{}",
                    err.as_str().unwrap_or("error"),
                    res.get("details")
                        .and_then(Value::as_str)
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ));
            }
        }
        Ok(results)
    }
}

/// The atoms of an OVSDB set (a bare atom is a set of one).
pub fn set_atoms(v: &Value) -> Vec<Value> {
    match v.as_array() {
        Some(a) if a.first().and_then(Value::as_str) == Some("set") => a
            .get(1)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ if v.is_null() => vec![],
        _ => vec![v.clone()],
    }
}

/// The uuid of a `["uuid", "..."]` atom.
pub fn uuid(v: &Value) -> Option<String> {
    let a = v.as_array()?;
    (a.first()?.as_str()? == "uuid").then(|| a.get(1)?.as_str().map(String::from))?
}

fn opt_str(v: &Value) -> Option<String> {
    set_atoms(v)
        .first()
        .and_then(|x| x.as_str().map(String::from))
        .filter(|s| !s.is_empty())
}

fn opt_i64(v: &Value) -> Option<i64> {
    set_atoms(v).first().and_then(Value::as_i64)
}

fn opt_bool(v: &Value) -> Option<bool> {
    set_atoms(v).first().and_then(Value::as_bool)
}

fn map<T>(v: &Value, f: impl Fn(&Value) -> Option<T>) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    if let Some(pairs) = v
        .as_array()
        .filter(|a| a.first().and_then(Value::as_str) == Some("map"))
        .and_then(|a| a.get(1))
        .and_then(Value::as_array)
    {
        for p in pairs {
            if let (Some(k), Some(val)) = (p.get(0).and_then(Value::as_str), p.get(1).and_then(&f))
            {
                out.insert(k.to_string(), val);
            }
        }
    }
    out
}

fn rows(r: &Value) -> Vec<Value> {
    r.get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Reads the whole switch configuration and state from the database at `path`.
pub fn read_state(path: &Path) -> Result<OvsState, String> {
    let mut db = Ovsdb::connect(path)?;
    let tables = [
        "Open_vSwitch",
        "Bridge",
        "Port",
        "Interface",
        "Mirror",
        "Controller",
    ];
    let ops: Vec<Value> = tables
        .iter()
        .map(|t| json!({"op": "select", "table": t, "where": []}))
        .collect();
    let res = db.transact(ops)?;
    let by_uuid = |i: usize| -> HashMap<String, Value> {
        res.get(i)
            .map(rows)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| uuid(&r["_uuid"]).map(|u| (u, r)))
            .collect()
    };
    let (ports, ifaces, mirrors, ctrls) = (by_uuid(2), by_uuid(3), by_uuid(4), by_uuid(5));
    let version = res
        .first()
        .map(rows)
        .and_then(|r| r.first().and_then(|x| opt_str(&x["ovs_version"])));
    let mut bridges = vec![];
    for b in res.get(1).map(rows).unwrap_or_default() {
        let mut br = OvsBridge {
            name: b["name"].as_str().unwrap_or_default().to_string(),
            datapath_type: opt_str(&b["datapath_type"]),
            fail_mode: opt_str(&b["fail_mode"]),
            controllers: set_atoms(&b["controller"])
                .iter()
                .filter_map(uuid)
                .filter_map(|u| ctrls.get(&u).and_then(|c| opt_str(&c["target"])))
                .collect(),
            mirrors: set_atoms(&b["mirrors"])
                .iter()
                .filter_map(uuid)
                .filter_map(|u| mirrors.get(&u).and_then(|m| opt_str(&m["name"])))
                .collect(),
            ..Default::default()
        };
        for pu in set_atoms(&b["ports"]).iter().filter_map(uuid) {
            let Some(p) = ports.get(&pu) else { continue };
            let mut port = OvsPort {
                name: p["name"].as_str().unwrap_or_default().to_string(),
                tag: opt_i64(&p["tag"]).and_then(|t| u16::try_from(t).ok()),
                trunks: set_atoms(&p["trunks"])
                    .iter()
                    .filter_map(Value::as_i64)
                    .filter_map(|t| u16::try_from(t).ok())
                    .collect(),
                vlan_mode: opt_str(&p["vlan_mode"]),
                bond_mode: opt_str(&p["bond_mode"]),
                lacp: opt_str(&p["lacp"]),
                interfaces: vec![],
            };
            port.trunks.sort_unstable();
            for iu in set_atoms(&p["interfaces"]).iter().filter_map(uuid) {
                let Some(i) = ifaces.get(&iu) else { continue };
                port.interfaces.push(OvsInterface {
                    name: i["name"].as_str().unwrap_or_default().to_string(),
                    kind: i["type"].as_str().unwrap_or_default().to_string(),
                    ofport: opt_i64(&i["ofport"]),
                    link_state: opt_str(&i["link_state"]),
                    admin_state: opt_str(&i["admin_state"]),
                    mtu: opt_i64(&i["mtu"]).and_then(|m| u32::try_from(m).ok()),
                    error: opt_str(&i["error"]),
                    lacp_current: opt_bool(&i["lacp_current"]),
                    external_ids: map(&i["external_ids"], |v| v.as_str().map(String::from)),
                    statistics: map(&i["statistics"], |v| {
                        v.as_i64().and_then(|n| u64::try_from(n).ok())
                    }),
                });
            }
            port.interfaces.sort_by(|a, b| a.name.cmp(&b.name));
            br.ports.push(port);
        }
        br.ports.sort_by(|a, b| a.name.cmp(&b.name));
        bridges.push(br);
    }
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(OvsState {
        db: path.display().to_string(),
        version,
        db_running: true,
        vswitchd_running: false,
        bridges,
    })
}

/// Where a namespace's Open vSwitch lives: the database socket, and whether ovs-vswitchd
/// runs for it. `KVMNET_OVSDB` names the socket explicitly.
#[derive(Debug, Clone)]
pub struct OvsLocation {
    pub db: PathBuf,
    pub vswitchd: bool,
}

fn db_arg(cmdline: &[String]) -> Option<PathBuf> {
    // ovs-vswitchd unix:/run/openvswitch/db.sock; ovsdb-server --remote=punix:/path
    cmdline.iter().skip(1).find_map(|a| {
        a.strip_prefix("unix:")
            .or_else(|| a.strip_prefix("--remote=punix:"))
            .map(PathBuf::from)
    })
}

/// Finds the Open vSwitch serving the namespace with inode `netns_ino` (`own` when it is the
/// caller's own namespace).
pub fn locate(procs: &[ProcInfo], netns_ino: u64, own: bool) -> Option<OvsLocation> {
    if let Some(p) = std::env::var_os("KVMNET_OVSDB") {
        let db = PathBuf::from(p);
        let vswitchd = procs
            .iter()
            .any(|p| p.comm == "ovs-vswitchd" && db_arg(&p.cmdline).as_deref() == Some(&db));
        return Some(OvsLocation { db, vswitchd });
    }
    let here = |p: &&ProcInfo| p.netns_ino == Some(netns_ino);
    if let Some(v) = procs.iter().filter(here).find(|p| p.comm == "ovs-vswitchd") {
        let db = db_arg(&v.cmdline).unwrap_or_else(default_db);
        return Some(OvsLocation { db, vswitchd: true });
    }
    if let Some(s) = procs.iter().filter(here).find(|p| p.comm == "ovsdb-server") {
        if let Some(db) = db_arg(&s.cmdline) {
            return Some(OvsLocation {
                db,
                vswitchd: false,
            });
        }
    }
    // the host's own installation
    let db = default_db();
    (own && db.exists()).then(|| OvsLocation {
        db,
        vswitchd: procs.iter().any(|p| p.comm == "ovs-vswitchd"),
    })
}

fn default_db() -> PathBuf {
    for p in ["/run/openvswitch/db.sock", "/var/run/openvswitch/db.sock"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("/run/openvswitch/db.sock")
}

/// OpenFlow rules of a bridge other than the default NORMAL one, from ovs-vswitchd's
/// management socket next to the database socket; None when they cannot be read.
pub fn custom_flows(db: &Path, bridge: &str) -> Option<Vec<String>> {
    let dir = db.parent()?;
    let mgmt = dir.join(format!("{bridge}.mgmt"));
    let target = if mgmt.exists() {
        format!("unix:{}", mgmt.display())
    } else {
        bridge.to_string()
    };
    let out = std::process::Command::new("ovs-ofctl")
        .args(["--no-stats", "dump-flows", &target])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty() && !l.starts_with("NXST_FLOW") && !l.starts_with("OFPST_FLOW")
            })
            .filter(|l| *l != "priority=0 actions=NORMAL" && *l != "actions=NORMAL")
            .map(String::from)
            .collect(),
    )
}

/// Reads the Open vSwitch of a located instance; a database that does not answer is reported
/// as not running (its bridges may still exist in the kernel).
pub fn collect(loc: &OvsLocation) -> OvsState {
    match read_state(&loc.db) {
        Ok(mut s) => {
            s.vswitchd_running = loc.vswitchd;
            if loc.vswitchd {
                for b in s.bridges.iter_mut() {
                    b.custom_flows = custom_flows(&loc.db, &b.name);
                }
            }
            s
        }
        Err(_) => OvsState {
            db: loc.db.display().to_string(),
            db_running: false,
            vswitchd_running: loc.vswitchd,
            ..Default::default()
        },
    }
}

/// A port's VLAN/bond columns as OVSDB values.
fn port_columns(s: &kvmnet_model::plan::OvsPortSettings) -> serde_json::Map<String, Value> {
    let mut row = serde_json::Map::new();
    row.insert(
        "tag".into(),
        json!(["set", s.tag.map(|t| vec![json!(t)]).unwrap_or_default()]),
    );
    row.insert(
        "trunks".into(),
        json!(["set", s.trunks.iter().map(|t| json!(t)).collect::<Vec<_>>()]),
    );
    row.insert(
        "bond_mode".into(),
        json!([
            "set",
            s.bond_mode.iter().map(|m| json!(m)).collect::<Vec<_>>()
        ]),
    );
    row.insert(
        "lacp".into(),
        json!(["set", s.lacp.iter().map(|m| json!(m)).collect::<Vec<_>>()]),
    );
    row
}

impl Ovsdb {
    /// Runs `ops` with a configuration bump, then waits until ovs-vswitchd has applied it
    /// (its `cur_cfg` catches up), as `ovs-vsctl` does.
    pub fn transact_and_wait(&mut self, mut ops: Vec<Value>) -> Result<(), String> {
        ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
            "mutations": [["next_cfg", "+=", 1]]}));
        ops.push(json!({"op": "select", "table": "Open_vSwitch", "where": [],
            "columns": ["next_cfg"]}));
        let res = self.transact(ops)?;
        let next = res
            .last()
            .map(rows)
            .and_then(|r| r.first().and_then(|x| x["next_cfg"].as_i64()))
            .unwrap_or(0);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.transact(vec![json!({"op": "select", "table": "Open_vSwitch",
                "where": [], "columns": ["cur_cfg"]})])?;
            let cur = r
                .first()
                .map(rows)
                .and_then(|r| r.first().and_then(|x| x["cur_cfg"].as_i64()))
                .unwrap_or(0);
            if cur >= next {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(
                    "ovs-vswitchd did not apply the change in 15 s (is it running?)".into(),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn uuid_of(&mut self, table: &str, name: &str) -> Result<Option<String>, String> {
        let r = self.transact(vec![json!({"op": "select", "table": table,
            "where": [["name", "==", name]], "columns": ["_uuid"]})])?;
        Ok(r.first()
            .map(rows)
            .and_then(|r| r.first().and_then(|x| uuid(&x["_uuid"]))))
    }

    /// Creates a bridge with its internal port.
    pub fn add_bridge(&mut self, name: &str, datapath: Option<&str>) -> Result<(), String> {
        let mut br = json!({"name": name, "ports": ["named-uuid", "p"]});
        if let Some(d) = datapath {
            br["datapath_type"] = json!(d);
        }
        self.transact_and_wait(vec![
            json!({"op": "insert", "table": "Interface", "row": {"name": name, "type": "internal"}, "uuid-name": "i"}),
            json!({"op": "insert", "table": "Port", "row": {"name": name, "interfaces": ["named-uuid", "i"]}, "uuid-name": "p"}),
            json!({"op": "insert", "table": "Bridge", "row": br, "uuid-name": "b"}),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                "mutations": [["bridges", "insert", ["set", [["named-uuid", "b"]]]]]}),
        ])
    }

    /// Deletes a bridge (its ports and interfaces go with it).
    pub fn del_bridge(&mut self, name: &str) -> Result<(), String> {
        let Some(u) = self.uuid_of("Bridge", name)? else {
            return Ok(());
        };
        self.transact_and_wait(vec![
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
            "mutations": [["bridges", "delete", ["set", [["uuid", u]]]]]}),
        ])
    }

    /// Adds a port with its interfaces.
    pub fn add_port(
        &mut self,
        bridge: &str,
        port: &str,
        interfaces: &[String],
        internal: bool,
        settings: &kvmnet_model::plan::OvsPortSettings,
    ) -> Result<(), String> {
        let mut ops = vec![];
        let mut refs = vec![];
        for (k, i) in interfaces.iter().enumerate() {
            let mut row = json!({"name": i});
            if internal {
                row["type"] = json!("internal");
            }
            ops.push(json!({"op": "insert", "table": "Interface", "row": row, "uuid-name": format!("i{k}")}));
            refs.push(json!(["named-uuid", format!("i{k}")]));
        }
        let mut row = port_columns(settings);
        row.insert("name".into(), json!(port));
        row.insert("interfaces".into(), json!(["set", refs]));
        ops.push(json!({"op": "insert", "table": "Port", "row": row, "uuid-name": "p"}));
        ops.push(
            json!({"op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
            "mutations": [["ports", "insert", ["set", [["named-uuid", "p"]]]]]}),
        );
        self.transact_and_wait(ops)
    }

    /// Removes a port from a bridge.
    pub fn del_port(&mut self, bridge: &str, port: &str) -> Result<(), String> {
        let Some(u) = self.uuid_of("Port", port)? else {
            return Ok(());
        };
        self.transact_and_wait(vec![json!({"op": "mutate", "table": "Bridge",
            "where": [["name", "==", bridge]],
            "mutations": [["ports", "delete", ["set", [["uuid", u]]]]]})])
    }

    /// Sets a port's VLAN and bond columns.
    pub fn set_port(
        &mut self,
        port: &str,
        settings: &kvmnet_model::plan::OvsPortSettings,
    ) -> Result<(), String> {
        self.transact_and_wait(vec![json!({"op": "update", "table": "Port",
            "where": [["name", "==", port]], "row": port_columns(settings)})])
    }
}

/// A port as a plan would (re)create it: (interfaces, internal, settings).
pub type PortConfig = (Vec<String>, bool, kvmnet_model::plan::OvsPortSettings);

/// A bridge as a plan would re-create it: its datapath and its ports by name.
pub type BridgeConfig = (Option<String>, Vec<(String, PortConfig)>);

/// The configuration of `bridge`: its datapath and its ports (but the bridge's own internal
/// port), to re-create it.
pub fn bridge_config(state: &OvsState, bridge: &str) -> Option<BridgeConfig> {
    let b = state.bridge(bridge)?;
    let ports = b
        .ports
        .iter()
        .filter(|p| p.name != b.name)
        .map(|p| (p.name.clone(), port_config(p)))
        .collect();
    Some((b.datapath_type.clone(), ports))
}

/// A port's configuration, to re-create or restore it.
pub fn port_config(p: &OvsPort) -> PortConfig {
    (
        p.interfaces.iter().map(|i| i.name.clone()).collect(),
        p.interfaces.iter().any(|i| i.kind == "internal"),
        kvmnet_model::plan::OvsPortSettings {
            tag: p.tag,
            trunks: p.trunks.clone(),
            bond_mode: p.bond_mode.clone(),
            lacp: p.lacp.clone(),
        },
    )
}
