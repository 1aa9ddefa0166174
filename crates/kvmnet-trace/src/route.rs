//! The routing decision as the kernel makes it: policy rules in priority order, then the
//! longest-prefix match in the chosen table (route types local, unicast, blackhole,
//! unreachable, prohibit, throw), plus reverse-path filtering.

use std::net::IpAddr;

use kvmnet_model::ip::{PolicyRule, Route, RouteKind, RuleAction, RT_TABLE_LOCAL};
use kvmnet_model::HostState;

/// Where the kernel sends a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteResult {
    /// Delivered to the host itself.
    Local {
        dev: Option<String>,
    },
    Unicast {
        dev: String,
        gateway: Option<IpAddr>,
        prefsrc: Option<IpAddr>,
        mtu: Option<u32>,
        table: u32,
        dst: ipnet::IpNet,
    },
    /// blackhole, unreachable or prohibit route: `kind` says which.
    Reject {
        kind: String,
        table: u32,
        dst: ipnet::IpNet,
        /// The policy rule that led there, when it is not one of the default rules.
        rule: Option<String>,
    },
    NoRoute,
}

fn rule_matches(
    r: &PolicyRule,
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    iif: Option<&str>,
    mark: u32,
) -> bool {
    if (r.family == "inet6") != v6 {
        return false;
    }
    let mut ok = r.src.is_none_or(|n| n.contains(&src))
        && r.dst.is_none_or(|n| n.contains(&dst))
        && r.iif
            .as_deref()
            .is_none_or(|i| Some(i) == iif || (i == "lo" && iif.is_none()))
        && r.fwmark
            .is_none_or(|m| mark & r.fwmask.unwrap_or(u32::MAX) == m);
    if r.oif.is_some() {
        // oif rules only apply to locally generated traffic bound to a device
        ok = false;
    }
    ok != r.invert
}

fn lpm(routes: &[Route], table: u32, dst: IpAddr) -> Option<&Route> {
    kvmnet_model::ip::lookup_route(routes, table, dst)
}

/// The kernel's default rules when none were collected (a snapshot without rules).
fn default_rules(v6: bool) -> Vec<PolicyRule> {
    let fam = if v6 { "inet6" } else { "inet" };
    [(0, RT_TABLE_LOCAL), (32766, 254), (32767, 253)]
        .iter()
        .map(|(p, t)| PolicyRule {
            family: fam.into(),
            priority: *p,
            src: None,
            dst: None,
            iif: None,
            oif: None,
            fwmark: None,
            fwmask: None,
            table: *t,
            action: RuleAction::ToTable,
            invert: false,
            suppress_prefixlen: None,
        })
        .collect()
}

/// Looks up the route for a packet. `iif` is the input interface (`None` for locally
/// generated packets).
pub fn route(s: &HostState, src: IpAddr, dst: IpAddr, iif: Option<&str>, mark: u32) -> RouteResult {
    let v6 = dst.is_ipv6();
    let defaults;
    let mut rules: Vec<&PolicyRule> = s
        .rules
        .iter()
        .filter(|r| (r.family == "inet6") == v6)
        .collect();
    if rules.is_empty() {
        defaults = default_rules(v6);
        rules = defaults.iter().collect();
    }
    rules.sort_by_key(|r| r.priority);
    // an address on an interface that is up has a local route (a snapshot may lack the
    // local table; the kernel removes those routes while the interface is down)
    if let Some(a) = s
        .addresses
        .iter()
        .find(|a| a.address == dst && s.link(&a.ifname).is_none_or(|l| l.admin_up))
    {
        return RouteResult::Local {
            dev: Some(a.ifname.clone()),
        };
    }
    for &r in &rules {
        if !rule_matches(r, v6, src, dst, iif, mark) {
            continue;
        }
        match r.action {
            RuleAction::ToTable => {}
            RuleAction::Blackhole | RuleAction::Unreachable | RuleAction::Prohibit => {
                return RouteResult::Reject {
                    kind: format!("{:?}", r.action).to_lowercase(),
                    table: 0,
                    dst: ipnet::IpNet::from(dst),
                    rule: Some(r.describe()),
                }
            }
            _ => continue,
        }
        let Some(rt) = lpm(&s.routes, r.table, dst) else {
            continue;
        };
        if let Some(sp) = r.suppress_prefixlen {
            if u32::from(rt.dst.prefix_len()) <= sp {
                continue;
            }
        }
        match rt.kind {
            RouteKind::Local => {
                return RouteResult::Local {
                    dev: rt.dev.clone(),
                }
            }
            RouteKind::Broadcast | RouteKind::Multicast | RouteKind::Anycast => {
                return RouteResult::Local {
                    dev: rt.dev.clone(),
                }
            }
            RouteKind::Throw => continue,
            RouteKind::Blackhole | RouteKind::Unreachable | RouteKind::Prohibit => {
                return RouteResult::Reject {
                    kind: format!("{:?}", rt.kind).to_lowercase(),
                    table: rt.table,
                    dst: rt.dst,
                    rule: (!r.is_default()).then(|| r.describe()),
                }
            }
            _ => {
                let dev = rt
                    .dev
                    .clone()
                    .or_else(|| rt.nexthops.first().and_then(|n| n.dev.clone()));
                let Some(dev) = dev else { continue };
                return RouteResult::Unicast {
                    dev,
                    gateway: rt.first_gateway(),
                    prefsrc: rt.prefsrc,
                    mtu: rt.mtu,
                    table: rt.table,
                    dst: rt.dst,
                };
            }
        }
    }
    RouteResult::NoRoute
}

/// Reverse-path filter: would the kernel accept `src` arriving on `iif`? Mode 1 (strict)
/// requires the route back to `src` to use `iif`; mode 2 (loose) requires any route back.
pub fn rp_filter_ok(s: &HostState, mode: u8, src: IpAddr, dst: IpAddr, iif: &str) -> bool {
    if mode == 0 || src.is_unspecified() {
        return true;
    }
    match route(s, dst, src, None, 0) {
        RouteResult::Unicast { dev, .. } => mode == 2 || dev == iif,
        RouteResult::Local { .. } => mode == 2,
        _ => false,
    }
}

/// The source address the kernel picks for traffic out of `dev` towards `towards`
/// (`inet_select_addr`): an address of `dev` on the same subnet, else its first address.
pub fn select_source(
    s: &HostState,
    dev: &str,
    towards: IpAddr,
    prefsrc: Option<IpAddr>,
) -> Option<IpAddr> {
    if let Some(p) = prefsrc {
        return Some(p);
    }
    let v6 = towards.is_ipv6();
    let mine: Vec<_> = s
        .addresses_of(dev)
        .filter(|a| a.address.is_ipv6() == v6 && a.scope == "global")
        .filter(|a| {
            !a.flags
                .iter()
                .any(|f| f == "secondary" || f == "tentative" || f == "dadfailed")
        })
        .collect();
    mine.iter()
        .find(|a| a.network().contains(&towards))
        .or(mine.first())
        .map(|a| a.address)
        .or_else(|| {
            s.addresses
                .iter()
                .find(|a| a.address.is_ipv6() == v6 && a.scope == "global")
                .map(|a| a.address)
        })
}
