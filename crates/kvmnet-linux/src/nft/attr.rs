//! A minimal netlink attribute (TLV) reader for nfnetlink messages, whose integers are
//! big-endian.

/// One attribute: its type (flags masked off) and value bytes.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub kind: u16,
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    /// Nested attributes of this attribute.
    pub fn nested(&self) -> AttrIter<'a> {
        AttrIter { buf: self.value }
    }
    /// A big-endian u32 value.
    pub fn be32(&self) -> Option<u32> {
        self.value
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A big-endian u64 value.
    pub fn be64(&self) -> Option<u64> {
        self.value.get(..8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    }
    /// A big-endian u16 value.
    pub fn be16(&self) -> Option<u16> {
        self.value
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A NUL-terminated string value.
    pub fn string(&self) -> String {
        let end = self
            .value
            .iter()
            .position(|c| *c == 0)
            .unwrap_or(self.value.len());
        String::from_utf8_lossy(&self.value[..end]).into_owned()
    }
}

/// Iterates the attributes in a buffer; stops at the first malformed header.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    pub buf: &'a [u8],
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Attr<'a>;
    fn next(&mut self) -> Option<Attr<'a>> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let kind = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & 0x3fff;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let value = &self.buf[4..len];
        let adv = ((len + 3) & !3).min(self.buf.len());
        self.buf = &self.buf[adv..];
        Some(Attr { kind, value })
    }
}

/// Appends an attribute to a message buffer (used to build requests).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_nesting() {
        let mut inner = vec![];
        put_attr(&mut inner, 1, &7u32.to_be_bytes());
        put_attr(&mut inner, 2, b"abc\0");
        let mut outer = vec![];
        put_attr(&mut outer, 0x8000 | 3, &inner);
        let attrs: Vec<Attr> = AttrIter { buf: &outer }.collect();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].kind, 3);
        let n: Vec<Attr> = attrs[0].nested().collect();
        assert_eq!(n[0].be32(), Some(7));
        assert_eq!(n[1].string(), "abc");
    }

    #[test]
    fn malformed_stops() {
        let buf = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(AttrIter { buf: &buf }.count(), 0);
    }
}
