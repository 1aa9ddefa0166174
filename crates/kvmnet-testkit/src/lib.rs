//! kvmnet's test lab: builds hypervisors inside network namespaces that the test creates — a
//! hypervisor namespace with a bridge, an upstream namespace playing the internet, guests joined
//! by veth — injects faults, and removes everything on drop (also on panic).
//!
//! Network safety: everything happens inside namespaces this crate created; nothing is added to
//! the machine's root namespace; only 10.0.0.0/8, 198.51.100.0/24 and 203.0.113.0/24 are used;
//! no packet leaves the lab. Processes are stopped only by the PIDs this crate started.

mod lab;
pub mod libvirt;
mod netns;
pub mod ovs;
pub mod qemu;
pub mod synth;

pub use lab::{Guest, Lab, LabSpec};
pub use netns::{run, Netns, TcpServer};
pub use ovs::Ovs;
pub use qemu::{GuestImage, NicModel, QemuGuest, QemuSpec};

/// True when running as root. Root-only tests call [`require_root`] instead.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Guards a root-only test. Without root the test fails (CI runs as root, so a missing
/// privilege must not pass silently), unless `KVMNET_SKIP_ROOT_TESTS=1` is set, in which case
/// it prints why it skips and returns false.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("KVMNET_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIP {test}: needs root (KVMNET_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!("{test} needs root: run the tests as root, or set KVMNET_SKIP_ROOT_TESTS=1 to skip");
}

/// Fails the test when a required command is missing (a missing package must fail CI).
pub fn require_cmd(cmd: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "required command `{cmd}` is not installed (see .ci/run)"
    );
}
