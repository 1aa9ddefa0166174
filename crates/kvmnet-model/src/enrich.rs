//! Derivations that complete a collected state from facts already in it: guest addresses from
//! the host's neighbour table (what `virsh domifaddr --source arp` does), and a stable order.

use crate::state::HostState;
use crate::vm::{AddrOrigin, GuestAddr};

/// Adds to each vNIC the addresses the host's neighbour table maps to its MAC, then sorts VMs
/// and networks by name so output and snapshots are stable.
pub fn enrich(state: &mut HostState) {
    let neigh: Vec<_> = state
        .neighbours
        .iter()
        .filter(|n| n.state.is_valid())
        .filter_map(|n| n.lladdr.map(|m| (m, n.address)))
        .collect();
    for vm in state.vms.iter_mut() {
        for vnic in vm.vnics.iter_mut() {
            let Some(mac) = vnic.mac else { continue };
            for (m, ip) in &neigh {
                if *m == mac && !vnic.addresses.iter().any(|a| a.address == *ip) {
                    vnic.addresses.push(GuestAddr {
                        address: *ip,
                        prefix_len: None,
                        origin: AddrOrigin::Neigh,
                    });
                }
            }
        }
    }
    state.vms.sort_by(|a, b| a.name.cmp(&b.name));
    state.networks.sort_by(|a, b| a.name.cmp(&b.name));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::{NeighState, Neighbour};
    use crate::vm::{Vm, VmSource, VmState, Vnic};

    #[test]
    fn neighbour_addresses_by_mac() {
        let mac = "52:54:00:00:00:01".parse().unwrap();
        let mut s = HostState::default();
        s.neighbours.push(Neighbour {
            ifname: "br0".into(),
            address: "10.0.0.11".parse().unwrap(),
            lladdr: Some(mac),
            state: NeighState::Reachable,
            router: false,
        });
        s.neighbours.push(Neighbour {
            ifname: "br0".into(),
            address: "10.0.0.99".parse().unwrap(),
            lladdr: Some(mac),
            state: NeighState::Failed,
            router: false,
        });
        s.vms.push(Vm {
            name: "web1".into(),
            source: VmSource::Qemu,
            uuid: None,
            state: VmState::Running,
            pid: None,
            netns: None,
            vnics: vec![Vnic {
                mac: Some(mac),
                ..Default::default()
            }],
            guest: None,
            vcpus: None,
            agent: None,
        });
        enrich(&mut s);
        let a = &s.vms[0].vnics[0].addresses;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].address.to_string(), "10.0.0.11");
        assert_eq!(a[0].origin, AddrOrigin::Neigh);
    }
}
