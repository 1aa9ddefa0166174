//! kvmnet's model: the typed picture of a KVM host's network (links, bridges, taps, addresses,
//! routes, neighbours, FDB, sysctls, nftables, qdiscs, VMs, networks) that collection produces,
//! snapshots store, and doctor, trace and plan reason over.
//!
//! This crate is pure: no I/O, no netlink, no async, no `unsafe`. Everything here can be built
//! and tested from a snapshot file on any machine.

pub mod enrich;
pub mod ip;
pub mod link;
pub mod network;
pub mod nft;
pub mod nft_json;
pub mod nft_script;
pub mod nft_text;
pub mod ovs;
pub mod plan;
pub mod redact;
pub mod snapshot;
pub mod state;
pub mod sysctl;
pub mod types;
pub mod vm;
pub mod xt;

pub use ip::{Address, FdbEntry, ListenSocket, Neighbour, PolicyRule, Qdisc, Route};
pub use link::{Link, LinkKind, OperState, PortState};
pub use network::{ForwardMode, Network, NetworkOrigin};
pub use nft::{Expr, NftChain, NftFamily, NftRule, NftRuleset, NftSet, NftTable};
pub use snapshot::{parse_snapshot, write_snapshot, write_snapshot_to, SnapshotError};
pub use state::{CollectionWarning, HostState, SCHEMA_VERSION};
pub use sysctl::Sysctls;
pub use types::{Bytes, IfName, MacAddr, VlanId};
pub use vm::{Vm, VmSource, VmState, Vnic};
