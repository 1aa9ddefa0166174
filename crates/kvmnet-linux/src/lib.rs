//! kvmnet's Linux adapter: reads a host's (or a network namespace's) network state from the
//! kernel — rtnetlink for links, addresses, routes, rules, neighbours, FDB and qdiscs; nf_tables
//! over netlink for the ruleset; procfs for sysctls, sockets, taps' holders and QEMU command
//! lines — and turns it into `kvmnet_model::HostState`.
//!
//! It knows nothing of doctor rules or the CLI. Work in another namespace always runs on a
//! dedicated thread that called `setns` once (namespaces are per thread).

pub mod agent;
pub mod apply;
pub mod collect;
pub mod netns;
pub mod nft;
pub mod ovsdb;
pub mod probe;
pub mod procfs;
pub mod qemu;
pub mod rtnl;
mod rtnl_decode;
pub mod sysctl;

pub use collect::{collect, CollectOptions, Collected};

/// Errors of the Linux adapter. Messages name what was being read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("{what}: kernel answered {}", errno_name(*code))]
    Netlink { what: &'static str, code: i32 },
    #[error("{0}: cannot decode kernel message: {1}")]
    Decode(&'static str, String),
    #[error("network namespace {0:?} does not exist (see `ip netns list`)")]
    NoSuchNetns(String),
    #[error("cannot enter network namespace {0:?}: {1}")]
    Setns(String, std::io::Error),
    #[error("the collection thread panicked")]
    Thread,
}

impl Error {
    pub(crate) fn netlink(what: &'static str, code: i32) -> Error {
        Error::Netlink { what, code }
    }

    pub(crate) fn io(what: &'static str, e: std::io::Error) -> Error {
        Error::Io(what, e)
    }
}

/// A readable name for a negative errno from netlink.
pub fn errno_name(code: i32) -> String {
    let e = std::io::Error::from_raw_os_error(code.abs());
    format!("{} (errno {})", e, code.abs())
}

/// Hands memory the allocator keeps after a large, short-lived collection back to the
/// kernel (glibc keeps freed pages of every thread's arena otherwise). For long-running
/// processes such as the exporter.
pub fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
