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
pub mod conntrack;
mod link;
mod neigh;
mod netfilter;
pub mod netns;
pub mod nftables;
mod route;
mod vxlan;

pub use addr::Address;
pub use link::format_mac;
pub use link::{Link, VethSpec};
pub use neigh::{FdbEntry, Neighbour};
pub use route::{MultipathRouteSpec, NextHop, RouteSpec};
pub use vxlan::{VxlanLink, VxlanSpec};

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
        let mut results = self.transact(vec![(msg, flags)], &|_| op())?;
        results.pop().expect("one result per request")
    }

    /// Sends several requests in one `sendmsg` and waits for all their answers. The kernel
    /// runs them in order, as if sent one by one, but the round trips are paid once — the
    /// CNI plugin's pod-side setup is a single batch. Each operation gets its own result;
    /// an `Err` here is a socket failure.
    pub fn batch(&mut self, ops: Vec<Op>) -> Result<Vec<Result<()>>> {
        let names: Vec<String> = ops.iter().map(|o| o.what.clone()).collect();
        let results = self.transact(ops.into_iter().map(|o| (o.msg, o.flags)).collect(), &|i| {
            names[i].clone()
        })?;
        Ok(results.into_iter().map(|r| r.map(drop)).collect())
    }

    /// Runs one [`Op`].
    pub fn run(&mut self, op: Op) -> Result<()> {
        let what = op.what;
        self.request(op.msg, op.flags, || what.clone()).map(drop)
    }

    /// The engine under [`Netlink::request`] and [`Netlink::batch`]: one buffer with
    /// consecutive sequence numbers, then replies sorted by sequence number until each
    /// request has its ACK, error, or end of dump.
    #[allow(clippy::type_complexity)]
    fn transact(
        &mut self,
        msgs: Vec<(RouteNetlinkMessage, u16)>,
        op: &dyn Fn(usize) -> String,
    ) -> Result<Vec<Result<Vec<RouteNetlinkMessage>>>> {
        let first = self.seq.wrapping_add(1);
        let mut buf = Vec::new();
        let mut dump = Vec::with_capacity(msgs.len());
        for (msg, flags) in msgs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            header.sequence_number = self.seq;
            let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
            nl.finalize();
            let at = buf.len();
            buf.resize(at + nl.buffer_len(), 0);
            nl.serialize(&mut buf[at..]);
            dump.push(flags & NLM_F_DUMP == NLM_F_DUMP);
        }
        let n = dump.len();
        let index_of = |seq: u32| {
            let i = seq.wrapping_sub(first) as usize;
            (i < n).then_some(i)
        };
        self.socket
            .send(&buf, 0)
            .map_err(|e| Error::from_io(op(0), e))?;
        let mut out: Vec<Result<Vec<RouteNetlinkMessage>>> =
            (0..n).map(|_| Ok(Vec::new())).collect();
        let mut done = vec![false; n];
        let mut pending = n;
        while pending > 0 {
            self.rbuf.clear();
            let got = self
                .socket
                .recv(&mut self.rbuf, 0)
                .map_err(|e| Error::from_io(op(0), e))?;
            if got > self.rbuf.len() {
                return Err(Error::Decode {
                    op: op(0),
                    msg: format!("reply of {got} bytes truncated"),
                });
            }
            let mut offset = 0;
            while offset < self.rbuf.len() {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.rbuf[offset..])
                        .map_err(|e| Error::Decode {
                            op: op(0),
                            msg: e.to_string(),
                        })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode {
                        op: op(0),
                        msg: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                let Some(i) = index_of(reply.header.sequence_number) else {
                    continue;
                };
                if done[i] {
                    continue;
                }
                let finish = match reply.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        if let Ok(v) = &mut out[i] {
                            v.push(m);
                        }
                        false
                    }
                    NetlinkPayload::Done(_) => true,
                    NetlinkPayload::Error(e) => match e.code {
                        None => !dump[i],
                        Some(code) => {
                            out[i] = Err(Error::from_io(
                                op(i),
                                io::Error::from_raw_os_error(-code.get()),
                            ));
                            true
                        }
                    },
                    _ => false,
                };
                if finish {
                    done[i] = true;
                    pending -= 1;
                }
            }
        }
        Ok(out)
    }
}

/// One kernel write, built but not yet sent: run it alone with [`Netlink::run`] or with
/// others in one round trip with [`Netlink::batch`].
#[derive(Debug, Clone)]
pub struct Op {
    msg: RouteNetlinkMessage,
    flags: u16,
    what: String,
}

impl Op {
    pub(crate) fn new(msg: RouteNetlinkMessage, flags: u16, what: String) -> Op {
        Op { msg, flags, what }
    }

    /// What the operation does, as errors name it.
    pub fn what(&self) -> &str {
        &self.what
    }
}
