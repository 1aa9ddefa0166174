//! Reads the VM-networking sysctls from /proc/sys of the calling thread's network namespace
//! (/proc/sys/net follows the opener's namespace, so this runs on the namespace thread).

use std::path::Path;

use kvmnet_model::sysctl::{IfSysctls, Sysctls};

const ROOT: &str = "/proc/sys/net";

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn read_bool(path: &str) -> Option<bool> {
    read_u64(path).map(|v| v != 0)
}

fn read_u8(path: &str) -> Option<u8> {
    read_u64(path).and_then(|v| u8::try_from(v).ok())
}

/// Reads the global sysctls and the `all`/`default` pseudo-interfaces from /proc/sys (the
/// per-interface values come with each link over rtnetlink). Values that cannot be read stay
/// `None`; `missing` lists the global ones.
pub fn read_sysctls() -> (Sysctls, Vec<String>) {
    let mut s = Sysctls {
        ip_forward: read_bool("ipv4/ip_forward"),
        ipv6_forwarding: read_bool("ipv6/conf/all/forwarding"),
        bridge_nf_call_iptables: read_bool("bridge/bridge-nf-call-iptables"),
        bridge_nf_call_ip6tables: read_bool("bridge/bridge-nf-call-ip6tables"),
        bridge_nf_call_arptables: read_bool("bridge/bridge-nf-call-arptables"),
        nf_conntrack_count: read_u64("netfilter/nf_conntrack_count"),
        nf_conntrack_max: read_u64("netfilter/nf_conntrack_max")
            .or_else(|| read_u64("nf_conntrack_max")),
        interfaces: Default::default(),
    };
    let mut missing = vec![];
    if s.ip_forward.is_none() {
        missing.push("net.ipv4.ip_forward".to_string());
    }
    if s.bridge_nf_call_iptables.is_none() {
        missing.push("net.bridge.bridge-nf-call-iptables (br_netfilter not loaded?)".to_string());
    }
    for name in ["all", "default"] {
        let v4 = format!("ipv4/conf/{name}");
        let v6 = format!("ipv6/conf/{name}");
        let i = IfSysctls {
            forwarding: read_bool(&format!("{v4}/forwarding")),
            rp_filter: read_u8(&format!("{v4}/rp_filter")),
            proxy_arp: read_bool(&format!("{v4}/proxy_arp")),
            arp_ignore: read_u8(&format!("{v4}/arp_ignore")),
            arp_announce: read_u8(&format!("{v4}/arp_announce")),
            ipv6_forwarding: read_bool(&format!("{v6}/forwarding")),
            disable_ipv6: read_bool(&format!("{v6}/disable_ipv6")),
        };
        if i != IfSysctls::default() {
            s.interfaces.insert(name.to_string(), i);
        }
    }
    (s, missing)
}
