//! libvirt, read from its XML: domains (with their interfaces) and networks (forward mode,
//! bridge, addresses, DHCP, DNS, VLANs) become model `Vm`s and `Network`s; `virsh -r` provides
//! the XML of a running host. It never talks netlink and never uses libvirt's C library.

pub mod domain;
pub mod network;
pub mod virsh;
mod xml;

pub use domain::parse_domain;
pub use network::{network_to_xml, parse_network};
pub use virsh::{collect_libvirt, merge_into, LibvirtInventory};
pub use xml::{parse_document, LibvirtDoc, XmlError};
