//! Shared XML helpers and the document classifier.

use kvmnet_model::{Network, Vm};
use roxmltree::{Document, Node};

/// An XML input that kvmnet cannot use, with its position.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("line {line}, column {col}: malformed XML: {reason}")]
    Syntax { line: u32, col: u32, reason: String },
    #[error("line {line}: <{element}>: {reason}")]
    Invalid {
        line: u32,
        element: String,
        reason: String,
    },
}

/// Parses XML text, turning syntax errors into positioned errors.
pub fn parse_xml(text: &str) -> Result<Document<'_>, XmlError> {
    Document::parse(text).map_err(|e| {
        let p = e.pos();
        XmlError::Syntax {
            line: p.row,
            col: p.col,
            reason: e.to_string(),
        }
    })
}

/// The 1-based line of a node.
pub fn line_of(doc: &Document, node: Node) -> u32 {
    doc.text_pos_at(node.range().start).row
}

/// The first child element with a tag name.
pub fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// All child elements with a tag name.
pub fn children<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// An attribute of a child element (`<child attr='...'/>`).
pub fn child_attr<'a>(node: Node<'a, '_>, name: &str, attr: &str) -> Option<&'a str> {
    child(node, name).and_then(|c| c.attribute(attr))
}

/// The trimmed text of a child element.
pub fn child_text(node: Node, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// What a libvirt XML file contained.
#[derive(Debug, Default)]
pub struct LibvirtDoc {
    pub domains: Vec<Vm>,
    pub networks: Vec<Network>,
    /// The root element when it is neither a domain nor a network (nwfilter, capabilities...).
    pub other_root: Option<String>,
}

/// Parses any libvirt XML document: `<domain>`, `<domstatus>` (a running domain's status file),
/// `<network>`, `<networkstatus>`, or a test-driver `<node>` holding several of them.
pub fn parse_document(text: &str) -> Result<LibvirtDoc, XmlError> {
    let doc = parse_xml(text)?;
    let root = doc.root_element();
    let mut out = LibvirtDoc::default();
    match root.tag_name().name() {
        "domain" | "domstatus" => out.domains.push(crate::domain::domain_from(&doc, root)?),
        "network" | "networkstatus" => out.networks.push(crate::network::network_from(&doc, root)?),
        "node" => {
            for d in children(root, "domain") {
                out.domains.push(crate::domain::domain_from(&doc, d)?);
            }
            for n in children(root, "network") {
                out.networks.push(crate::network::network_from(&doc, n)?);
            }
        }
        other => out.other_root = Some(other.to_string()),
    }
    Ok(out)
}
