//! Apply: a thin, typed, synchronous rtnetlink facade, plus network-namespace handling.
//!
//! Why synchronous: the CNI plugin lives for a few milliseconds and does a dozen requests
//! in a fixed order; an async runtime would only add start-up cost. The agent calls it from
//! blocking threads.
//!
//! Each [`Netlink`] is bound to the network namespace it was opened in (a netlink socket
//! belongs to the namespace of the thread that created it), so one process can hold a
//! socket for the node and one for a pod at once without moving threads around.
//!
//! Errors are typed: [`Error::Exists`] and [`Error::NotFound`] are what idempotent callers
//! match on, never message strings.

mod addr;
mod link;
pub mod netns;
mod route;

pub use addr::Address;
pub use link::{Link, VethSpec};
pub use route::RouteSpec;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::os::fd::AsFd;

/// Errors of kernel operations, each naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: already exists")]
    Exists { op: String },
    #[error("{op}: not found")]
    NotFound { op: String },
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("{op}: cannot decode the kernel's reply: {msg}")]
    Decode { op: String, msg: String },
}

impl Error {
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Exists { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    pub(crate) fn from_io(op: impl Into<String>, source: io::Error) -> Self {
        let op = op.into();
        match source.raw_os_error() {
            Some(libc::EEXIST) => Error::Exists { op },
            Some(libc::ENOENT)
            | Some(libc::ENODEV)
            | Some(libc::ESRCH)
            | Some(libc::EADDRNOTAVAIL) => Error::NotFound { op },
            _ => Error::Kernel { op, source },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A route-netlink socket in one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    rbuf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let op = "open rtnetlink socket";
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| Error::from_io(op, e))?;
        socket.bind_auto().map_err(|e| Error::from_io(op, e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::from_io(op, e))?;
        // Extended acks make the kernel explain refusals; failure to enable is harmless.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            rbuf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens a socket inside the namespace `ns` (the calling thread returns to its own
    /// namespace before this returns).
    pub fn open_in(ns: impl AsFd) -> Result<Self> {
        let _guard = netns::enter(ns)?;
        Netlink::open()
    }

    /// Sends one request and collects the replies until the ACK (or the end of a dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| Error::from_io(op(), e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            self.rbuf.clear();
            let n = self
                .socket
                .recv(&mut self.rbuf, 0)
                .map_err(|e| Error::from_io(op(), e))?;
            if n > self.rbuf.len() {
                return Err(Error::Decode {
                    op: op(),
                    msg: format!("reply of {n} bytes truncated"),
                });
            }
            let mut offset = 0;
            while offset < self.rbuf.len() {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rbuf[offset..])
                        .map_err(|e| Error::Decode {
                            op: op(),
                            msg: e.to_string(),
                        })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode {
                        op: op(),
                        msg: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => match e.code {
                        None if !dump => return Ok(out),
                        None => {}
                        Some(code) => {
                            return Err(Error::from_io(
                                op(),
                                io::Error::from_raw_os_error(-code.get()),
                            ));
                        }
                    },
                    _ => {}
                }
            }
        }
    }
}
