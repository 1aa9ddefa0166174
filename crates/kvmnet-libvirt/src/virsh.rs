//! Reading a live libvirt through `virsh -r` (read-only connection) and merging what it says
//! into a collected `HostState`.

use std::net::IpAddr;
use std::process::Command;

use kvmnet_model::network::NetworkOrigin;
use kvmnet_model::vm::{AddrOrigin, GuestAddr, VmState, VnicType};
use kvmnet_model::{HostState, MacAddr, Network, Vm};

use crate::xml::parse_document;

/// A DHCP lease handed out by a libvirt network's dnsmasq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub network: String,
    pub mac: MacAddr,
    pub ip: IpAddr,
    pub prefix_len: Option<u8>,
    pub hostname: Option<String>,
}

/// Everything read from libvirt.
#[derive(Debug, Default)]
pub struct LibvirtInventory {
    pub domains: Vec<Vm>,
    pub networks: Vec<Network>,
    pub leases: Vec<Lease>,
    pub warnings: Vec<String>,
}

/// How to reach libvirt: the connection URI and, for a daemon in another mount namespace,
/// the PID to enter (`nsenter -t PID -m`).
#[derive(Debug, Clone)]
pub struct Connection {
    pub uri: String,
    pub mount_ns_pid: Option<u32>,
}

impl Connection {
    fn virsh(&self, args: &[&str]) -> Result<String, String> {
        self.run_virsh(true, args)
    }

    /// A caller for the guest agent of `domain` through libvirt (`virsh qemu-agent-command`,
    /// which needs a read-write connection; the commands kvmnet sends only read the guest's
    /// state or run ping inside it).
    pub fn agent_caller(&self, domain: &str) -> impl FnMut(&str) -> Result<String, String> + Send {
        let conn = self.clone();
        let domain = domain.to_string();
        move |json: &str| {
            conn.run_virsh(
                false,
                &["qemu-agent-command", "--timeout", "5", &domain, json],
            )
            .map(|s| s.trim().to_string())
        }
    }

    fn run_virsh(&self, read_only: bool, args: &[&str]) -> Result<String, String> {
        let mut cmd = match self.mount_ns_pid {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.args(["-t", &pid.to_string(), "-m", "--", "virsh"]);
                c
            }
            None => Command::new("virsh"),
        };
        if read_only {
            cmd.arg("-r");
        }
        cmd.args(["-q", "-c", &self.uri]).args(args);
        let out = cmd.output().map_err(|e| format!("cannot run virsh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "virsh {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Parses `virsh list --all` rows: (name, state).
pub fn parse_list(text: &str) -> Vec<(String, VmState)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with("Id") || l.starts_with("--") {
                return None;
            }
            let mut parts = l.split_whitespace();
            let _id = parts.next()?;
            let name = parts.next()?.to_string();
            let state: Vec<&str> = parts.collect();
            Some((name, VmState::from_virsh(&state.join(" "))))
        })
        .collect()
}

/// Parses `virsh net-list --all` rows: (name, active, autostart).
pub fn parse_net_list(text: &str) -> Vec<(String, bool, bool)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with("Name") || l.starts_with("--") {
                return None;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_string(), f[1] == "active", f[2] == "yes"))
        })
        .collect()
}

/// Parses `virsh net-dhcp-leases NET` rows.
pub fn parse_leases(network: &str, text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // date time mac proto ip/prefix hostname [client-id]
            if f.len() < 5 {
                return None;
            }
            let mac: MacAddr = f[2].parse().ok()?;
            let (ip, prefix) = match f[4].split_once('/') {
                Some((a, p)) => (a.parse().ok()?, p.parse().ok()),
                None => (f[4].parse().ok()?, None),
            };
            Some(Lease {
                network: network.to_string(),
                mac,
                ip,
                prefix_len: prefix,
                hostname: f.get(5).filter(|h| **h != "-").map(|h| h.to_string()),
            })
        })
        .collect()
}

/// Reads domains, networks and leases through `conn`.
pub fn collect_libvirt(conn: &Connection) -> LibvirtInventory {
    let mut inv = LibvirtInventory::default();
    match conn.virsh(&["list", "--all"]) {
        Ok(text) => {
            for (name, state) in parse_list(&text) {
                match conn.virsh(&["dumpxml", &name]).map(|x| parse_document(&x)) {
                    Ok(Ok(doc)) => {
                        for mut vm in doc.domains {
                            vm.state = state;
                            inv.domains.push(vm);
                        }
                    }
                    Ok(Err(e)) => inv.warnings.push(format!("domain {name}: {e}")),
                    Err(e) => inv.warnings.push(e),
                }
            }
        }
        Err(e) => inv.warnings.push(e),
    }
    match conn.virsh(&["net-list", "--all"]) {
        Ok(text) => {
            for (name, active, autostart) in parse_net_list(&text) {
                match conn
                    .virsh(&["net-dumpxml", &name])
                    .map(|x| parse_document(&x))
                {
                    Ok(Ok(doc)) => {
                        for mut n in doc.networks {
                            n.active = Some(active);
                            n.autostart = Some(autostart);
                            inv.networks.push(n);
                        }
                    }
                    Ok(Err(e)) => inv.warnings.push(format!("network {name}: {e}")),
                    Err(e) => inv.warnings.push(e),
                }
                if active {
                    if let Ok(text) = conn.virsh(&["net-dhcp-leases", &name]) {
                        inv.leases.extend(parse_leases(&name, &text));
                    }
                }
            }
        }
        Err(e) => inv.warnings.push(e),
    }
    inv
}

/// Merges libvirt's view into a collected state: libvirt networks replace the plain-bridge
/// networks on the same bridge; domains absorb the bare-QEMU entries of their own processes;
/// leases become vNIC addresses.
pub fn merge_into(state: &mut HostState, inv: LibvirtInventory) {
    for w in inv.warnings {
        state.warn("libvirt", w);
    }
    for n in inv.networks {
        state.networks.retain(|o| {
            !(o.origin == NetworkOrigin::Bridge && o.bridge.is_some() && o.bridge == n.bridge)
        });
        state.networks.push(n);
    }
    for mut vm in inv.domains {
        if let Some(pos) = state.vms.iter().position(|q| {
            q.source == kvmnet_model::VmSource::Qemu
                && (q.name == vm.name || (q.uuid.is_some() && q.uuid == vm.uuid))
        }) {
            let q = state.vms.remove(pos);
            vm.pid = vm.pid.or(q.pid);
            // libvirt holds the agent socket: a path seen on QEMU's command line is not ours
            if vm.agent.is_none() {
                vm.agent = q.agent;
            }
            vm.vcpus = vm.vcpus.or(q.vcpus);
            for n in vm.vnics.iter_mut() {
                if n.vhost.is_none() {
                    n.vhost = q
                        .vnics
                        .iter()
                        .find(|x| x.mac.is_some() && x.mac == n.mac)
                        .and_then(|x| x.vhost);
                }
            }
        }
        for n in vm.vnics.iter_mut() {
            if n.iface_type == VnicType::Network && n.source_bridge.is_none() {
                n.source_bridge = n
                    .network
                    .as_deref()
                    .and_then(|net| state.network(net))
                    .and_then(|net| net.bridge.clone());
            }
        }
        state.vms.push(vm);
    }
    for lease in inv.leases {
        for vm in state.vms.iter_mut() {
            for n in vm.vnics.iter_mut().filter(|n| n.mac == Some(lease.mac)) {
                if !n.addresses.iter().any(|a| a.address == lease.ip) {
                    n.addresses.push(GuestAddr {
                        address: lease.ip,
                        prefix_len: lease.prefix_len,
                        origin: AddrOrigin::Lease,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_tables() {
        let l = parse_list(" 1    web1   running\n -    db     shut off\n");
        assert_eq!(
            l,
            vec![
                ("web1".into(), VmState::Running),
                ("db".into(), VmState::ShutOff)
            ]
        );
        let n = parse_net_list(" default   active   yes   yes\n iso   inactive   no   yes\n");
        assert_eq!(n[0], ("default".into(), true, true));
        assert_eq!(n[1], ("iso".into(), false, false));
        let leases = parse_leases(
            "labnat",
            " 2026-11-22 10:00:00   52:54:00:aa:bb:cc   ipv4   10.77.0.100/24   lv1   01:52:54:00:aa:bb:cc\n",
        );
        assert_eq!(leases[0].ip.to_string(), "10.77.0.100");
        assert_eq!(leases[0].prefix_len, Some(24));
        assert_eq!(leases[0].hostname.as_deref(), Some("lv1"));
    }
}
