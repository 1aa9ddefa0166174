//! The QEMU guest agent (qemu-ga) over its host-side unix socket: the guest's interfaces
//! (`guest-network-get-interfaces`) and, through `guest-exec`, its routes, link states and
//! resolvers — the guest's own view of its network, for doctor's guest layer — and commands
//! for probes run inside the guest.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kvmnet_model::ip::{Route, RouteKind, RT_TABLE_MAIN};
use kvmnet_model::vm::{GuestInterface, GuestSource, GuestView};
use kvmnet_model::MacAddr;
use serde_json::{json, Value};

/// Sends one agent command (JSON text) and returns the agent's whole answer (JSON text): a
/// transport other than the socket, such as libvirt's `virsh qemu-agent-command`.
pub type AgentCaller = Box<dyn FnMut(&str) -> Result<String, String> + Send>;

enum Transport {
    Socket {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    },
    Caller(AgentCaller),
}

/// A connected, synchronized agent session.
pub struct Agent {
    transport: Transport,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.transport {
            Transport::Socket { .. } => "Agent(socket)",
            Transport::Caller(_) => "Agent(caller)",
        })
    }
}

/// Decodes standard base64 (the agent's `guest-exec` output, HTTP basic auth); characters
/// outside the alphabet, padding included, are skipped.
pub fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let mut out = vec![];
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Agent {
    /// Connects to the agent socket and synchronizes (`guest-sync-delimited`).
    pub fn connect(path: &str, timeout: Duration) -> Result<Agent, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("{path}: {e}"))?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut a = Agent {
            transport: Transport::Socket {
                reader: BufReader::new(s),
                writer,
            },
        };
        let id = (std::process::id() & 0xffff) as u64 + 1;
        a.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))?;
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() > deadline {
                return Err(
                    "the agent does not answer (not running, or another client holds it)".into(),
                );
            }
            let mut line = vec![];
            let Transport::Socket { reader, .. } = &mut a.transport else {
                return Err("not a socket".into());
            };
            match self_read_line(reader, &mut line) {
                Ok(0) => return Err("the agent closed the connection".into()),
                Ok(_) => {}
                Err(_) => {
                    return Err(
                        "the agent does not answer (not running, or another client holds it)"
                            .into(),
                    )
                }
            }
            let text: Vec<u8> = line.into_iter().filter(|b| *b != 0xff).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&text) {
                if v.get("return").and_then(Value::as_u64) == Some(id) {
                    return Ok(a);
                }
            }
        }
    }

    /// An agent reached through `caller` (already synchronized by whoever holds the socket).
    pub fn via(caller: AgentCaller) -> Agent {
        Agent {
            transport: Transport::Caller(caller),
        }
    }

    fn send(&mut self, v: &Value) -> Result<(), String> {
        let mut line = v.to_string();
        line.push('\n');
        match &mut self.transport {
            Transport::Socket { writer, .. } => writer
                .write_all(line.as_bytes())
                .map_err(|e| format!("agent: {e}")),
            Transport::Caller(_) => Err("agent: send on a caller transport".into()),
        }
    }

    /// Runs one agent command and returns its `return` value.
    pub fn call(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let line: Vec<u8> = match &mut self.transport {
            Transport::Caller(f) => f(&msg.to_string())?.into_bytes(),
            Transport::Socket { .. } => {
                self.send(&msg)?;
                let mut line = vec![];
                if let Transport::Socket { reader, .. } = &mut self.transport {
                    self_read_line(reader, &mut line).map_err(|e| format!("agent: {e}"))?;
                }
                line
            }
        };
        let v: Value =
            serde_json::from_slice(&line).map_err(|e| format!("agent: bad answer: {e}"))?;
        if let Some(err) = v.get("error") {
            return Err(format!(
                "agent: {cmd}: {}",
                err.get("desc").and_then(Value::as_str).unwrap_or("error")
            ));
        }
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Runs a shell line in the guest; returns its exit code and standard output
    /// (standard error when the output is empty).
    pub fn exec(&mut self, shell: &str, timeout: Duration) -> Result<(i64, String), String> {
        let r = self.call(
            "guest-exec",
            Some(json!({"path": "/bin/sh", "arg": ["-c", shell], "capture-output": true})),
        )?;
        let pid = r
            .get("pid")
            .and_then(Value::as_i64)
            .ok_or("agent: guest-exec gave no pid")?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = self.call("guest-exec-status", Some(json!({ "pid": pid })))?;
            if st.get("exited").and_then(Value::as_bool) == Some(true) {
                let mut out = b64decode(st.get("out-data").and_then(Value::as_str).unwrap_or(""));
                if out.is_empty() {
                    out = b64decode(st.get("err-data").and_then(Value::as_str).unwrap_or(""));
                }
                let code = st.get("exitcode").and_then(Value::as_i64).unwrap_or(0);
                return Ok((code, String::from_utf8_lossy(&out).into_owned()));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        Err(format!("agent: `{shell}` did not finish in time"))
    }
}

fn self_read_line(r: &mut BufReader<UnixStream>, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    r.read_until(b'\n', buf)
}

/// Parses `guest-network-get-interfaces`.
pub fn parse_interfaces(v: &Value) -> Vec<GuestInterface> {
    let Some(list) = v.as_array() else {
        return vec![];
    };
    list.iter()
        .filter(|i| i.get("name").and_then(Value::as_str) != Some("lo"))
        .map(|i| GuestInterface {
            name: i.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            mac: i
                .get("hardware-address")
                .and_then(Value::as_str)
                .and_then(|m| m.parse::<MacAddr>().ok()),
            mtu: None,
            up: true,
            carrier: None,
            addresses: i
                .get("ip-addresses")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| {
                            let ip: IpAddr = x.get("ip-address")?.as_str()?.parse().ok()?;
                            let p = x.get("prefix")?.as_u64()? as u8;
                            IpNet::new(ip, p).ok()
                        })
                        .filter(|n| !matches!(n.addr(), IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Parses `ip route` text (iproute2 or busybox) into main-table routes.
pub fn parse_ip_route(text: &str) -> Vec<Route> {
    let mut out = vec![];
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = w.first() else { continue };
        let dst: IpNet = if *first == "default" {
            match "0.0.0.0/0".parse() {
                Ok(n) => n,
                Err(_) => continue,
            }
        } else if let Ok(n) = first.parse::<IpNet>() {
            n
        } else if let Ok(a) = first.parse::<IpAddr>() {
            IpNet::from(a)
        } else {
            continue;
        };
        let after = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1))
                .copied()
        };
        out.push(Route {
            table: RT_TABLE_MAIN,
            dst,
            gateway: after("via").and_then(|g| g.parse().ok()),
            dev: after("dev").map(String::from),
            prefsrc: after("src").and_then(|g| g.parse().ok()),
            metric: after("metric").and_then(|m| m.parse().ok()),
            kind: RouteKind::Unicast,
            protocol: after("proto").unwrap_or("boot").to_string(),
            scope: after("scope").unwrap_or("global").to_string(),
            nexthops: vec![],
            mtu: None,
        });
    }
    out
}

/// Parses `ip -o link` text: (name, up, mtu).
pub fn parse_ip_link(text: &str) -> Vec<(String, bool, Option<u32>)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _idx = parts.next()?;
            let name = parts.next()?.trim().split('@').next()?.to_string();
            let rest = parts.next()?;
            let flags = rest.split('<').nth(1)?.split('>').next()?;
            let up = flags.split(',').any(|f| f == "UP");
            let w: Vec<&str> = rest.split_whitespace().collect();
            let mtu = w
                .iter()
                .position(|x| *x == "mtu")
                .and_then(|i| w.get(i + 1))
                .and_then(|m| m.parse().ok());
            Some((name, up, mtu))
        })
        .collect()
}

const MARK: &str = "@@kvmnet@@";

/// Reads the guest's own network view through the agent.
pub fn guest_view(path: &str) -> Result<GuestView, String> {
    let t = Duration::from_millis(1500);
    let mut a = Agent::connect(path, t)?;
    guest_view_of(&mut a)
}

/// Reads the guest's own network view through a connected agent.
pub fn guest_view_of(a: &mut Agent) -> Result<GuestView, String> {
    let t = Duration::from_millis(1500);
    let ifaces = a.call("guest-network-get-interfaces", None)?;
    let mut interfaces = parse_interfaces(&ifaces);
    let mut view = GuestView {
        source: GuestSource::Agent,
        interfaces: vec![],
        routes: None,
        nameservers: None,
        neighbours: vec![],
    };
    // routes, link states and resolvers, when the agent allows guest-exec
    if let Ok((_, out)) = a.exec(
        &format!("ip -4 route show; echo {MARK}; ip -o link; echo {MARK}; cat /etc/resolv.conf 2>/dev/null; true"),
        t,
    ) {
        let parts: Vec<&str> = out.split(MARK).collect();
        if let [routes, links, resolv] = parts.as_slice() {
            view.routes = Some(parse_ip_route(routes));
            for (name, up, mtu) in parse_ip_link(links) {
                if let Some(i) = interfaces.iter_mut().find(|i| i.name == name) {
                    i.up = up;
                    i.mtu = mtu;
                }
            }
            view.nameservers = Some(crate::procfs::parse_resolv(resolv).nameservers);
        }
    }
    view.interfaces = std::mem::take(&mut interfaces);
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_and_ip_output() {
        let v: Value = serde_json::from_str(
            r#"[{"name":"lo","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"127.0.0.1","prefix":8}],"hardware-address":"00:00:00:00:00:00"},
                {"name":"eth0","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"10.0.0.17","prefix":24},{"ip-address-type":"ipv6","ip-address":"fe80::1","prefix":64}],"hardware-address":"52:54:00:00:07:07"}]"#,
        )
        .unwrap();
        let i = parse_interfaces(&v);
        assert_eq!(i.len(), 1);
        assert_eq!(
            i[0].addresses,
            vec!["10.0.0.17/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(i[0].mac.unwrap().to_string(), "52:54:00:00:07:07");
        let r = parse_ip_route(
            "default via 10.0.0.1 dev eth0 \n10.0.0.0/24 dev eth0 scope link  src 10.0.0.17 \n",
        );
        assert_eq!(r.len(), 2);
        assert!(r[0].is_default());
        assert_eq!(r[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r[1].dev.as_deref(), Some("eth0"));
        let l = parse_ip_link("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000\\    link/loopback\n2: eth0: <BROADCAST,MULTICAST> mtu 9000 qdisc pfifo_fast qlen 1000\\    link/ether 52:54:00:00:07:07 brd ff:ff:ff:ff:ff:ff\n");
        assert_eq!(l[1], ("eth0".to_string(), false, Some(9000)));
        assert_eq!(b64decode("aGVsbG8K"), b"hello\n");
    }
}
