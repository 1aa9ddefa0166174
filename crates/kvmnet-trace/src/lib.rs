//! kvmnet's packet-path simulator: takes one packet through the guest's routing, its vNIC,
//! the bridge, bridge netfilter, prerouting (DNAT), the routing decision, the forward filter,
//! postrouting (SNAT/masquerade), the egress link and back along the reply path, from the
//! model alone (nothing is sent), and names what decides the packet's fate.
//!
//! Pure: no I/O. nf_tables rules are evaluated as the kernel runs them: register programs.

pub mod compile;
pub mod eval;
pub mod fnv;
pub mod packet;
pub mod path;
pub mod route;

pub use compile::{compile, unsupported, Compiled, Unsupported};
pub use eval::{eval_hook, HookCtx, HookResult, HookVerdict, RuleRef};
pub use packet::{CtState, Packet};
pub use path::{Endpoint, FlowSpec, Hop, RuleEvidence, Trace, TraceError, Tracer, Verdict};
