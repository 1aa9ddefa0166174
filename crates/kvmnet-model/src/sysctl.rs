//! The kernel settings that decide whether VM traffic is forwarded, filtered or answered:
//! forwarding, reverse-path filtering, ARP behaviour, br_netfilter and conntrack limits.
//! `None` means "could not be read" (the reason is in the state's collection warnings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per-namespace and global sysctls relevant to VM networking.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Sysctls {
    /// `net.ipv4.ip_forward`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forward: Option<bool>,
    /// `net.ipv6.conf.all.forwarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_forwarding: Option<bool>,
    /// `net.bridge.bridge-nf-call-iptables`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_nf_call_iptables: Option<bool>,
    /// `net.bridge.bridge-nf-call-ip6tables`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_nf_call_ip6tables: Option<bool>,
    /// `net.bridge.bridge-nf-call-arptables`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_nf_call_arptables: Option<bool>,
    /// `net.netfilter.nf_conntrack_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nf_conntrack_count: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nf_conntrack_max: Option<u64>,
    /// `net.ipv4.conf.<if>.*` and `net.ipv6.conf.<if>.*`, keyed by interface name, including
    /// the `all` and `default` pseudo-interfaces.
    #[serde(default)]
    pub interfaces: BTreeMap<String, IfSysctls>,
}

/// Per-interface sysctls.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct IfSysctls {
    /// `net.ipv4.conf.<if>.forwarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<bool>,
    /// `net.ipv4.conf.<if>.rp_filter`: 0 off, 1 strict, 2 loose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rp_filter: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_arp: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_ignore: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arp_announce: Option<u8>,
    /// `net.ipv6.conf.<if>.forwarding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_forwarding: Option<bool>,
    /// `net.ipv6.conf.<if>.disable_ipv6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_ipv6: Option<bool>,
}

impl Sysctls {
    /// The effective rp_filter mode for an interface: the kernel uses the maximum of
    /// `conf.all.rp_filter` and `conf.<if>.rp_filter`.
    pub fn effective_rp_filter(&self, ifname: &str) -> Option<u8> {
        let all = self.interfaces.get("all").and_then(|i| i.rp_filter);
        let dev = self.interfaces.get(ifname).and_then(|i| i.rp_filter);
        match (all, dev) {
            (None, None) => None,
            (a, d) => Some(a.unwrap_or(0).max(d.unwrap_or(0))),
        }
    }

    /// Whether IPv4 forwarding is enabled on an interface (`conf.<if>.forwarding`; falls back to
    /// the global switch when the per-interface value is unknown).
    pub fn if_forwarding(&self, ifname: &str) -> Option<bool> {
        self.interfaces
            .get(ifname)
            .and_then(|i| i.forwarding)
            .or(self.ip_forward)
    }

    /// The effective `arp_ignore` for an interface (maximum of `all` and the interface's).
    pub fn effective_arp_ignore(&self, ifname: &str) -> u8 {
        let all = self
            .interfaces
            .get("all")
            .and_then(|i| i.arp_ignore)
            .unwrap_or(0);
        let dev = self
            .interfaces
            .get(ifname)
            .and_then(|i| i.arp_ignore)
            .unwrap_or(0);
        all.max(dev)
    }

    /// Whether proxy ARP is on for an interface (`all` OR the interface's).
    pub fn effective_proxy_arp(&self, ifname: &str) -> bool {
        let all = self
            .interfaces
            .get("all")
            .and_then(|i| i.proxy_arp)
            .unwrap_or(false);
        let dev = self
            .interfaces
            .get(ifname)
            .and_then(|i| i.proxy_arp)
            .unwrap_or(false);
        all || dev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rp_filter_is_max_of_all_and_dev() {
        let mut s = Sysctls::default();
        s.interfaces.insert(
            "all".into(),
            IfSysctls {
                rp_filter: Some(2),
                ..Default::default()
            },
        );
        s.interfaces.insert(
            "br0".into(),
            IfSysctls {
                rp_filter: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(s.effective_rp_filter("br0"), Some(2));
        assert_eq!(s.effective_rp_filter("eth9"), Some(2));
    }

    #[test]
    fn if_forwarding_falls_back_to_global() {
        let s = Sysctls {
            ip_forward: Some(true),
            ..Default::default()
        };
        assert_eq!(s.if_forwarding("br0"), Some(true));
    }
}
