//! libvirt domain XML -> `Vm` with its vNICs.

use kvmnet_model::vm::{Bandwidth, Rate, Vm, VmSource, VmState, Vnic, VnicType};
use kvmnet_model::MacAddr;
use roxmltree::{Document, Node};

use crate::xml::{child, child_attr, child_text, children, line_of, parse_xml, XmlError};

/// Parses a `<domain>` (or `<domstatus>`) document.
pub fn parse_domain(text: &str) -> Result<Vm, XmlError> {
    let doc = parse_xml(text)?;
    domain_from(&doc, doc.root_element())
}

fn rate(node: Option<Node>) -> Option<Rate> {
    let n = node?;
    let num = |a: &str| n.attribute(a).and_then(|v| v.parse().ok());
    Some(Rate {
        average_kbps: num("average"),
        peak_kbps: num("peak"),
        burst_kb: num("burst"),
    })
}

fn invalid(doc: &Document, node: Node, reason: String) -> XmlError {
    XmlError::Invalid {
        line: line_of(doc, node),
        element: node.tag_name().name().to_string(),
        reason,
    }
}

pub(crate) fn domain_from(doc: &Document, node: Node) -> Result<Vm, XmlError> {
    let (dom, state, pid) = if node.tag_name().name() == "domstatus" {
        let d = child(node, "domain")
            .ok_or_else(|| invalid(doc, node, "no <domain> inside <domstatus>".into()))?;
        (
            d,
            node.attribute("state").map(VmState::from_virsh),
            node.attribute("pid").and_then(|p| p.parse().ok()),
        )
    } else {
        (node, None, None)
    };
    let name = child_text(dom, "name").ok_or_else(|| invalid(doc, dom, "missing <name>".into()))?;
    let mut vm = Vm {
        name,
        source: VmSource::Libvirt,
        uuid: child_text(dom, "uuid"),
        // A live domain XML carries id='N'; an inactive definition does not.
        state: state.unwrap_or(if dom.attribute("id").is_some_and(|i| i != "-1") {
            VmState::Running
        } else {
            VmState::Unknown
        }),
        pid,
        netns: None,
        vnics: vec![],
        guest: None,
        vcpus: child(dom, "vcpu").and_then(|v| {
            v.attribute("current")
                .or(v.text())
                .and_then(|t| t.trim().parse().ok())
        }),
        agent: None,
    };
    if let Some(devices) = child(dom, "devices") {
        for iface in children(devices, "interface") {
            vm.vnics.push(interface(doc, iface)?);
        }
        // the guest agent's virtio channel (libvirt holds its socket)
        vm.agent = children(devices, "channel")
            .filter_map(|c| child(c, "target"))
            .find(|t| {
                t.attribute("type") == Some("virtio")
                    && t.attribute("name") == Some("org.qemu.guest_agent.0")
            })
            .map(|t| kvmnet_model::vm::AgentChannel {
                socket: None,
                libvirt: true,
                connected: t.attribute("state").map(|s| s == "connected"),
            });
    }
    Ok(vm)
}

fn interface(doc: &Document, iface: Node) -> Result<Vnic, XmlError> {
    let itype = iface.attribute("type").unwrap_or("ethernet");
    let mac = match child_attr(iface, "mac", "address") {
        Some(m) => Some(
            m.parse::<MacAddr>()
                .map_err(|e| invalid(doc, iface, e.to_string()))?,
        ),
        None => None,
    };
    let source = child(iface, "source");
    let src = |a: &str| source.and_then(|s| s.attribute(a)).map(String::from);
    let mut v = Vnic {
        mac,
        host_dev: child_attr(iface, "target", "dev").map(String::from),
        model: child_attr(iface, "model", "type").map(String::from),
        iface_type: match itype {
            "network" => VnicType::Network,
            "bridge" => VnicType::Bridge,
            "direct" => VnicType::Direct,
            "ethernet" => VnicType::Ethernet,
            "user" => VnicType::User,
            "vhostuser" => VnicType::Vhostuser,
            "hostdev" => VnicType::Hostdev,
            _ => VnicType::Other,
        },
        network: src("network"),
        // a running domain's XML names the bridge of its network too
        source_bridge: src("bridge"),
        source_dev: src("dev"),
        portgroup: src("portgroup"),
        mtu: child_attr(iface, "mtu", "size").and_then(|s| s.parse().ok()),
        link_up: child_attr(iface, "link", "state").map(|s| s != "down"),
        filterref: child_attr(iface, "filterref", "filter").map(String::from),
        virtualport: child_attr(iface, "virtualport", "type").map(String::from),
        ..Default::default()
    };
    // libvirt's default model for x86 guests without <model> is rtl8139 on old machine types;
    // we record only what the XML says.
    if let Some(driver) = child(iface, "driver") {
        v.vhost = match driver.attribute("name") {
            Some("vhost") => Some(true),
            Some("qemu") => Some(false),
            _ => None,
        };
        v.queues = driver.attribute("queues").and_then(|q| q.parse().ok());
    }
    if let Some(vlan) = child(iface, "vlan") {
        v.vlan_trunk = vlan.attribute("trunk") == Some("yes");
        v.vlan_tags = children(vlan, "tag")
            .filter_map(|t| t.attribute("id").and_then(|i| i.parse().ok()))
            .collect();
    }
    if let Some(bw) = child(iface, "bandwidth") {
        v.bandwidth = Some(Bandwidth {
            inbound: rate(child(bw, "inbound")),
            outbound: rate(child(bw, "outbound")),
        });
    }
    if v.iface_type == VnicType::Hostdev {
        v.host_dev = None;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces() {
        let xml = r#"<domain type='kvm' id='3'>
          <name>web1</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid><vcpu>2</vcpu>
          <devices>
            <interface type='network'>
              <mac address='52:54:00:12:34:56'/>
              <source network='default' bridge='virbr0'/>
              <target dev='vnet0'/>
              <model type='virtio'/>
              <driver name='vhost' queues='2'/>
              <mtu size='9000'/>
              <link state='down'/>
              <vlan trunk='yes'><tag id='42'/><tag id='48'/></vlan>
              <bandwidth><inbound average='1000' peak='5000' burst='1024'/></bandwidth>
              <filterref filter='clean-traffic'/>
            </interface>
            <interface type='bridge'><source bridge='br0'/><model type='e1000'/></interface>
          </devices></domain>"#;
        let vm = parse_domain(xml).unwrap();
        assert_eq!(vm.name, "web1");
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.vcpus, Some(2));
        let n = &vm.vnics[0];
        assert_eq!(n.iface_type, VnicType::Network);
        assert_eq!(n.network.as_deref(), Some("default"));
        assert_eq!(n.host_dev.as_deref(), Some("vnet0"));
        assert_eq!(n.vhost, Some(true));
        assert_eq!(n.queues, Some(2));
        assert_eq!(n.mtu, Some(9000));
        assert_eq!(n.link_up, Some(false));
        assert_eq!(n.vlan_tags, vec![42, 48]);
        assert!(n.vlan_trunk);
        assert_eq!(
            n.bandwidth
                .as_ref()
                .unwrap()
                .inbound
                .as_ref()
                .unwrap()
                .average_kbps,
            Some(1000)
        );
        assert_eq!(n.filterref.as_deref(), Some("clean-traffic"));
        assert_eq!(vm.vnics[1].source_bridge.as_deref(), Some("br0"));
        assert_eq!(vm.vnics[1].model.as_deref(), Some("e1000"));
    }

    #[test]
    fn errors_have_lines() {
        let e = parse_domain("<domain>\n<devices>\n</domain>").unwrap_err();
        assert!(matches!(e, XmlError::Syntax { line: 3, .. }), "{e}");
        let e = parse_domain("<domain>\n <uuid>x</uuid>\n</domain>").unwrap_err();
        assert!(e.to_string().contains("missing <name>"), "{e}");
        let e = parse_domain(
            "<domain><name>a</name><devices>\n<interface type='network'>\n<mac address='zz'/></interface></devices></domain>",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("line 2"), "{e}");
    }
}
