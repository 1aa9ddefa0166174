//! kvmnet's desired state: a YAML file (or a directory of them) describing networks (bridged,
//! NAT, routed, isolated), vNIC attachments, port forwards and firewall rules; validated with
//! errors that name file, line and column; planned against a collected host into typed steps
//! for the single apply path; imported from a host and exported to libvirt. Pure: no I/O but
//! reading the configuration files.

pub mod desired;
pub mod import;
pub mod load;
mod ovsplan;
pub mod plan;
pub mod render;
pub mod schema;

pub use desired::{model_networks, validate, Desired};
pub use load::{Config, ConfigError};
pub use plan::{plan, Observed, Owned, Plan, PlanError};

/// Loads and validates a configuration file or directory.
pub fn load_desired(path: &std::path::Path) -> Result<(Config, Desired), ConfigError> {
    let cfg = Config::load(path)?;
    let d = validate(&cfg)?;
    Ok((cfg, d))
}
