//! A blocking rtnetlink socket with a dump helper. Collection runs on a dedicated thread per
//! namespace, so a plain blocking socket is the simplest correct tool; there is no async runtime
//! to keep off the namespace.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::Error;

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct RtSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RtSocket {
    /// Opens a socket bound in the current thread's namespace.
    pub fn open() -> Result<RtSocket, Error> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("netlink socket", e))?;
        sock.bind_auto().map_err(|e| Error::io("netlink bind", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("netlink connect", e))?;
        // Large dumps arrive faster with a big receive buffer; failure to raise it is harmless.
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
        let _ = sock.set_ext_ack(true);
        Ok(RtSocket {
            sock,
            seq: 1,
            buf: vec![0u8; 1 << 20],
        })
    }

    /// Sends a change request and waits for the kernel's acknowledgement.
    pub fn execute(&mut self, msg: RouteNetlinkMessage, what: &'static str) -> Result<(), Error> {
        self.execute_flags(msg, 0, what)
    }

    /// [`RtSocket::execute`] with extra header flags (`NLM_F_CREATE | NLM_F_EXCL` to create).
    pub fn execute_flags(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &'static str,
    ) -> Result<(), Error> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | netlink_packet_core::NLM_F_ACK | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out_buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out_buf);
        self.sock
            .send(&out_buf, 0)
            .map_err(|e| Error::io(what, e))?;
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::io(what, e))?;
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[..n])
                .map_err(|e| Error::Decode(what, e.to_string()))?;
            if msg.header.sequence_number != self.seq {
                continue;
            }
            if let NetlinkPayload::Error(e) = msg.payload {
                return match e.code {
                    Some(code) => Err(Error::netlink(what, -code.get())),
                    None => Ok(()),
                };
            }
        }
    }

    /// Sends a request and collects every reply message until `NLMSG_DONE` (dumps) or the
    /// single answer (non-dump requests with `NLM_F_ACK` unset).
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
        what: &'static str,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let mut out = Vec::new();
        self.request_each(msg, dump, what, |m| out.push(m))?;
        Ok(out)
    }

    /// Like [`RtSocket::request`], but hands each reply to `each` as it is decoded, so a large
    /// dump is never held in memory twice.
    pub fn request_each(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
        what: &'static str,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), Error> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out_buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out_buf);
        self.sock
            .send(&out_buf, 0)
            .map_err(|e| Error::io(what, e))?;

        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::io(what, e))?;
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| Error::Decode(what, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode(what, "zero-length netlink message".into()));
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(Error::netlink(what, -code.get()));
                        }
                        return Ok(());
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        each(m);
                        if !dump {
                            return Ok(());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
