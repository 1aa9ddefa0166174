//! Validated newtypes shared by every part of the model: MAC addresses, interface names, VLAN ids,
//! and byte strings that serialize as hex. Pure parsing; no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parse error for one of the model's newtypes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:12:34:56")]
    Mac(String),
    #[error("invalid interface name {0:?}: {1}")]
    IfName(String, &'static str),
    #[error("invalid VLAN id {0}: must be 1..=4094")]
    Vlan(u32),
    #[error("invalid hex string {0:?}")]
    Hex(String),
}

/// An Ethernet MAC address, written `52:54:00:12:34:56`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Builds a MAC from a byte slice of exactly six bytes.
    pub fn from_slice(b: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(b).ok().map(MacAddr)
    }
    /// True for the all-zero address (what taps and tunnels report before they get one).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
    /// True when the group bit is set (multicast or broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split([':', '-']) {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(TypeError::Mac(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| TypeError::Mac(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(TypeError::Mac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct IfName(String);

impl IfName {
    /// The kernel's limit (IFNAMSIZ - 1).
    pub const MAX_LEN: usize = 15;

    /// Validates a name as the kernel's `dev_valid_name` does.
    pub fn new(name: &str) -> Result<IfName, TypeError> {
        let bad = |why| Err(TypeError::IfName(name.to_string(), why));
        if name.is_empty() {
            return bad("empty");
        }
        if name.len() > Self::MAX_LEN {
            return bad("longer than 15 bytes");
        }
        if name == "." || name == ".." {
            return bad("reserved name");
        }
        if name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return bad("contains '/', ':' or whitespace");
        }
        Ok(IfName(name.to_string()))
    }
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for IfName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IfName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// An 802.1Q VLAN id, 1..=4094.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct VlanId(u16);

impl VlanId {
    /// Validates a VLAN id (0 and 4095 are reserved by 802.1Q).
    pub fn new(id: u32) -> Result<VlanId, TypeError> {
        if (1..=4094).contains(&id) {
            Ok(VlanId(id as u16))
        } else {
            Err(TypeError::Vlan(id))
        }
    }
    /// The numeric id.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl<'de> Deserialize<'de> for VlanId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        VlanId::new(v).map_err(serde::de::Error::custom)
    }
}

/// Raw bytes that serialize as a lowercase hex string (nftables data, set keys).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// The bytes as a slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
    /// Hex text of the bytes.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 15) as usize]));
        }
        s
    }
    /// Parses hex text (even length, no prefix).
    pub fn from_hex(s: &str) -> Result<Bytes, TypeError> {
        if !s.len().is_multiple_of(2) {
            return Err(TypeError::Hex(s.to_string()));
        }
        let mut out = Vec::with_capacity(s.len() / 2);
        for i in (0..s.len()).step_by(2) {
            let byte = s
                .get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| TypeError::Hex(s.to_string()))?;
            out.push(byte);
        }
        Ok(Bytes(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", self.to_hex())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Bytes::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:0f:11".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
        assert!("ff:ff:ff:ff:ff:ff"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast());
    }

    #[test]
    fn ifname_limits() {
        assert!(IfName::new("vnet0").is_ok());
        assert!(IfName::new("123456789012345").is_ok());
        assert!(IfName::new("1234567890123456").is_err());
        assert!(IfName::new("a/b").is_err());
        assert!(IfName::new("").is_err());
    }

    #[test]
    fn vlan_range() {
        assert!(VlanId::new(0).is_err());
        assert!(VlanId::new(4095).is_err());
        assert_eq!(VlanId::new(4094).unwrap().get(), 4094);
    }

    #[test]
    fn bytes_hex() {
        let b = Bytes(vec![0x0a, 0, 0, 0xff]);
        assert_eq!(b.to_hex(), "0a0000ff");
        assert_eq!(Bytes::from_hex("0a0000ff").unwrap(), b);
        assert!(Bytes::from_hex("0a0").is_err());
        assert!(Bytes::from_hex("zz").is_err());
    }
}
