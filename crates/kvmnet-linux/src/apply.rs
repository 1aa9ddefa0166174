//! The single write path: executes plan steps in a namespace, writing each step's inverse to a
//! journal before touching the kernel, verifying the result by reading it back, and rolling
//! everything back in reverse on any failure. Only kvmnet's own nftables table is ever written.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use kvmnet_model::plan::PlanStep;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netns::run_in_netns;
use crate::rtnl::RtSocket;
use crate::Error;

/// Where journals live (`KVMNET_RUN_DIR` overrides, for tests).
pub fn run_dir() -> PathBuf {
    std::env::var_os("KVMNET_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kvmnet"))
}

/// Why an apply failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A step failed; everything done before it was undone.
    #[error("step {index} ({step}) failed: {reason}; {rolled_back} earlier step(s) rolled back")]
    RolledBack {
        index: usize,
        step: String,
        reason: String,
        rolled_back: usize,
    },
    /// A step failed and undoing the earlier ones failed too: the journal says what is left.
    #[error("step {index} ({step}) failed: {reason}; rollback failed too ({rollback}): see journal {journal}")]
    RollbackFailed {
        index: usize,
        step: String,
        reason: String,
        rollback: String,
        journal: String,
    },
    #[error("cannot write the journal {0}: {1}")]
    Journal(String, std::io::Error),
    #[error(transparent)]
    Setup(#[from] Error),
}

fn sysctl_path(key: &str) -> PathBuf {
    // net.ipv4.conf.br0.forwarding -> /proc/sys/net/ipv4/conf/br0/forwarding
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Result<String, String> {
    std::fs::read_to_string(sysctl_path(key))
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read {key}: {e}"))
}

struct Kernel {
    sock: RtSocket,
}

impl Kernel {
    fn link_index(&mut self, name: &str) -> Result<(u32, bool, u32, Option<String>), String> {
        let links = crate::rtnl_decode::dump_links(&mut self.sock).map_err(|e| e.to_string())?;
        links
            .iter()
            .find(|(l, _)| l.name == name)
            .map(|(l, _)| (l.index, l.admin_up, l.mtu, l.master.clone()))
            .ok_or_else(|| format!("no link named {name}"))
    }

    fn set_link(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut LinkMessage, &mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        let (index, ..) = self.link_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        f(&mut msg, self)?;
        self.sock
            .execute(RouteNetlinkMessage::SetLink(msg), "set link")
            .map_err(|e| e.to_string())
    }

    /// The inverse of a step, from the kernel's current state.
    fn inverse(&mut self, step: &PlanStep) -> Result<Vec<PlanStep>, String> {
        Ok(match step {
            PlanStep::SetSysctl { key, .. } => vec![PlanStep::SetSysctl {
                key: key.clone(),
                value: read_sysctl(key)?,
            }],
            PlanStep::LinkUp { ifname } => {
                let (_, up, ..) = self.link_index(ifname)?;
                if up {
                    vec![]
                } else {
                    vec![PlanStep::LinkDown {
                        ifname: ifname.clone(),
                    }]
                }
            }
            PlanStep::LinkDown { ifname } => {
                let (_, up, ..) = self.link_index(ifname)?;
                if up {
                    vec![PlanStep::LinkUp {
                        ifname: ifname.clone(),
                    }]
                } else {
                    vec![]
                }
            }
            PlanStep::SetMaster { ifname, .. } | PlanStep::NoMaster { ifname } => {
                let (_, _, _, master) = self.link_index(ifname)?;
                vec![match master {
                    Some(m) => PlanStep::SetMaster {
                        ifname: ifname.clone(),
                        master: m,
                    },
                    None => PlanStep::NoMaster {
                        ifname: ifname.clone(),
                    },
                }]
            }
            PlanStep::SetMtu { ifname, .. } => {
                let (_, _, mtu, _) = self.link_index(ifname)?;
                vec![PlanStep::SetMtu {
                    ifname: ifname.clone(),
                    mtu,
                }]
            }
            PlanStep::AddMasquerade { subnet, oifname } => {
                if masquerade_handle(subnet, oifname)?.is_some() {
                    vec![]
                } else {
                    vec![PlanStep::DelMasquerade {
                        subnet: *subnet,
                        oifname: oifname.clone(),
                    }]
                }
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                if masquerade_handle(subnet, oifname)?.is_some() {
                    vec![PlanStep::AddMasquerade {
                        subnet: *subnet,
                        oifname: oifname.clone(),
                    }]
                } else {
                    vec![]
                }
            }
        })
    }

    fn execute(&mut self, step: &PlanStep) -> Result<(), String> {
        match step {
            PlanStep::SetSysctl { key, value } => std::fs::write(sysctl_path(key), value)
                .map_err(|e| format!("cannot write {key}: {e}")),
            PlanStep::LinkUp { ifname } => self.set_link(ifname, |m, _| {
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
                Ok(())
            }),
            PlanStep::LinkDown { ifname } => self.set_link(ifname, |m, _| {
                m.header.flags = LinkFlags::empty();
                m.header.change_mask = LinkFlags::Up;
                Ok(())
            }),
            PlanStep::SetMaster { ifname, master } => {
                let (mi, ..) = self.link_index(master)?;
                self.set_link(ifname, |m, _| {
                    m.attributes.push(LinkAttribute::Controller(mi));
                    Ok(())
                })
            }
            PlanStep::NoMaster { ifname } => self.set_link(ifname, |m, _| {
                m.attributes.push(LinkAttribute::Controller(0));
                Ok(())
            }),
            PlanStep::SetMtu { ifname, mtu } => self.set_link(ifname, |m, _| {
                m.attributes.push(LinkAttribute::Mtu(*mtu));
                Ok(())
            }),
            PlanStep::AddMasquerade { subnet, oifname } => {
                if masquerade_handle(subnet, oifname)?.is_some() {
                    return Ok(());
                }
                let fam = if subnet.addr().is_ipv6() { "ip6" } else { "ip" };
                nft(&format!(
                    "table inet kvmnet {{\n chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n}}\n\
                     add rule inet kvmnet postrouting {fam} saddr {subnet} oifname \"{oifname}\" masquerade comment \"{}\"\n",
                    masq_comment(subnet, oifname)
                ))
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                if let Some(h) = masquerade_handle(subnet, oifname)? {
                    nft(&format!("delete rule inet kvmnet postrouting handle {h}\n"))?;
                }
                // kvmnet's own table goes away with its last rule
                let rs = crate::nft::dump_ruleset().map_err(|e| e.to_string())?;
                if rs
                    .table(kvmnet_model::NftFamily::Inet, "kvmnet")
                    .is_some_and(|t| {
                        t.chains.iter().all(|c| c.rules.is_empty()) && t.sets.is_empty()
                    })
                {
                    nft("delete table inet kvmnet\n")?;
                }
                Ok(())
            }
        }
    }

    /// Reads back what a step should have produced.
    fn verify(&mut self, step: &PlanStep) -> Result<(), String> {
        let ok = match step {
            PlanStep::SetSysctl { key, value } => read_sysctl(key)? == *value,
            PlanStep::LinkUp { ifname } => self.link_index(ifname)?.1,
            PlanStep::LinkDown { ifname } => !self.link_index(ifname)?.1,
            PlanStep::SetMaster { ifname, master } => {
                self.link_index(ifname)?.3.as_deref() == Some(master.as_str())
            }
            PlanStep::NoMaster { ifname } => self.link_index(ifname)?.3.is_none(),
            PlanStep::SetMtu { ifname, mtu } => self.link_index(ifname)?.2 == *mtu,
            PlanStep::AddMasquerade { subnet, oifname } => {
                masquerade_handle(subnet, oifname)?.is_some()
            }
            PlanStep::DelMasquerade { subnet, oifname } => {
                masquerade_handle(subnet, oifname)?.is_none()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "read back after {}: not in effect",
                step.describe()
            ))
        }
    }
}

fn masq_comment(subnet: &IpNet, oifname: &str) -> String {
    format!("kvmnet masquerade {subnet} {oifname}")
}

/// The handle of kvmnet's masquerade rule for (subnet, oif), if present.
fn masquerade_handle(subnet: &IpNet, oifname: &str) -> Result<Option<u64>, String> {
    let rs = crate::nft::dump_ruleset().map_err(|e| e.to_string())?;
    let want = masq_comment(subnet, oifname);
    Ok(rs
        .table(kvmnet_model::NftFamily::Inet, "kvmnet")
        .and_then(|t| t.chain("postrouting"))
        .and_then(|c| {
            c.rules
                .iter()
                .find(|r| r.comment.as_deref() == Some(want.as_str()))
        })
        .map(|r| r.handle))
}

/// Runs `nft -f -` in the calling thread's namespace (the child inherits it).
fn nft(script: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The journal of one apply: a JSON line per step, written before the step runs.
struct Journal {
    path: PathBuf,
    file: std::fs::File,
}

impl Journal {
    fn open(netns: Option<&str>) -> Result<Journal, ApplyError> {
        let dir = run_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApplyError::Journal(dir.display().to_string(), e))?;
        let name = format!(
            "journal-{}.jsonl",
            netns
                .map(|n| n.replace('/', "_"))
                .unwrap_or_else(|| "host".into())
        );
        let path = dir.join(name);
        let file = std::fs::File::create(&path)
            .map_err(|e| ApplyError::Journal(path.display().to_string(), e))?;
        Ok(Journal { path, file })
    }

    fn record(&mut self, step: &PlanStep, inverse: &[PlanStep]) -> Result<(), ApplyError> {
        let line = format!(
            "{{\"step\":{},\"inverse\":{}}}\n",
            kvmnet_model::plan::to_json(step),
            kvmnet_model::plan::to_json_list(inverse)
        );
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| ApplyError::Journal(self.path.display().to_string(), e))
    }

    /// Keeps the journal of a finished apply as `last-*.jsonl` (what `kvmnet rollback` undoes).
    fn finish(self) -> PathBuf {
        let last = self.path.with_file_name(
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().replace("journal-", "last-"))
                .unwrap_or_else(|| "last.jsonl".into()),
        );
        let _ = std::fs::rename(&self.path, &last);
        last
    }
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub applied: usize,
    pub journal: PathBuf,
}

/// Applies steps in a namespace (ours when `None`): journal, execute, verify; on failure roll
/// back what was done, in reverse.
pub fn apply_plan(netns: Option<&str>, steps: &[PlanStep]) -> Result<ApplyReport, ApplyError> {
    let mut journal = Journal::open(netns)?;
    let j = &mut journal;
    let applied = run_in_netns(netns, move || -> Result<usize, ApplyError> {
        let mut k = Kernel {
            sock: RtSocket::open()?,
        };
        let mut done: Vec<Vec<PlanStep>> = vec![];
        for (i, step) in steps.iter().enumerate() {
            let outcome = k
                .inverse(step)
                .and_then(|inv| {
                    j.record(step, &inv).map_err(|e| e.to_string())?;
                    Ok(inv)
                })
                .and_then(|inv| {
                    k.execute(step)?;
                    done.push(inv);
                    k.verify(step)
                });
            if let Err(reason) = outcome {
                let n = done.len();
                let mut rollback_err = None;
                for inv in done.iter().rev() {
                    for s in inv {
                        if let Err(e) = k.execute(s) {
                            rollback_err = Some(format!("{}: {e}", s.describe()));
                        }
                    }
                }
                return Err(match rollback_err {
                    None => ApplyError::RolledBack {
                        index: i + 1,
                        step: step.describe(),
                        reason,
                        rolled_back: n,
                    },
                    Some(rollback) => ApplyError::RollbackFailed {
                        index: i + 1,
                        step: step.describe(),
                        reason,
                        rollback,
                        journal: j.path.display().to_string(),
                    },
                });
            }
        }
        Ok(done.len())
    })??;
    Ok(ApplyReport {
        applied,
        journal: journal.finish(),
    })
}
