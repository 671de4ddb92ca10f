//! Apply: ctnetlink conntrack cleanup — no entry keeps DNATing to a removed endpoint.
//!
//! A UDP client that keeps sending from one source port keeps its conntrack entry alive
//! for as long as it sends; that entry still holds the DNAT to the endpoint chosen for the
//! first packet, so after the endpoint is removed (or the Service's rules changed) every
//! datagram goes on to the old address — a black hole that never ends on its own
//! (kubernetes#19029). The agent therefore deletes, right after the change, every entry
//! DNATed to a removed endpoint: [`Conntrack::delete_dnat_to`] for one endpoint,
//! [`Conntrack::delete_dnat_to_any`] for all endpoints removed by one sync.
//!
//! An entry is "DNATed to `endpoint`" when its reply tuple's source is `endpoint` (the
//! kernel expects the answers from there) while its original destination is something else
//! (the client sent to a Service address). Entries whose original destination *is* the
//! endpoint (a client talking to the pod directly) are not NATed and are left alone.
//!
//! How: one `NETLINK_NETFILTER` socket speaking the ctnetlink subsystem
//! (`NFNL_SUBSYS_CTNETLINK`). A dump (`IPCTNL_MSG_CT_GET` + `NLM_F_DUMP`, family
//! `AF_INET`) carries a kernel-side filter (`CTA_FILTER`, Linux ≥ 5.8; used and tested on
//! 6.18): for one endpoint `CTA_FILTER_REPLY_FLAGS` = reply source address + protocol +
//! reply source port with the values in `CTA_TUPLE_REPLY`, so the kernel sends only the
//! entries whose replies come from the endpoint; for several endpoints
//! `CTA_FILTER_ORIG_FLAGS` = protocol, so only that protocol's entries are sent. The kernel
//! compares ports only for TCP and UDP and older kernels ignore `CTA_FILTER`, so every
//! condition is checked again here: a kernel that filters less costs time, never
//! correctness. Confirmed on 6.18: with the check here reduced to "not NATed", the
//! endpoint test in tests/conntrack.rs still gets only A's entries. (Filtered *deletion* —
//! `IPCTNL_MSG_CT_DELETE` with `CTA_FILTER` and no tuple — is refused with `EOPNOTSUPP`
//! by `ctnetlink_flush_conntrack` in net/netfilter/nf_conntrack_netlink.c, and could not
//! express "original destination differs" anyway.)
//!
//! The matches are then deleted with `IPCTNL_MSG_CT_DELETE`, each naming its original
//! tuple, zone and `CTA_ID` (so an entry replaced meanwhile by a new one with the same
//! tuple is not touched), up to [`DELETES_PER_SEND`] messages per `sendmsg` and only the
//! last one asking for an ACK: the kernel handles the messages of one `sendmsg` in order
//! and answers only the failing ones, so the ACK of the last closes the exchange. `ENOENT`
//! (the entry expired or was deleted by someone else meanwhile) counts as done.
//!
//! Compared with kube-proxy: it used to exec the `conntrack` tool once per stale endpoint
//! and Service port (a process and a table walk each); here one sync costs one
//! filtered dump and one `sendmsg` per [`DELETES_PER_SEND`] entries, whatever the number
//! of endpoints removed.

use netlink_sys::Socket;
use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::time::Duration;

/// Errors of [`Conntrack`].
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The protocol has no ports, so an endpoint (ip, port) cannot name its entries.
    #[error("conntrack: protocol {0} has no ports (expected 6, 17, 33, 132 or 136)")]
    Unsupported(u8),
    /// The kernel refused a request.
    #[error("conntrack {op}: {source}")]
    Kernel { op: String, source: io::Error },
    /// The socket failed.
    #[error("conntrack socket: {op}: {source}")]
    Socket { op: &'static str, source: io::Error },
    #[error("conntrack: cannot decode the kernel's reply: {0}")]
    Decode(String),
}

impl ConntrackError {
    /// The errno of a kernel refusal or socket failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConntrackError::Kernel { source, .. } | ConntrackError::Socket { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

type Result<T, E = ConntrackError> = std::result::Result<T, E>;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

/// An IPv4 conntrack entry of a protocol with ports, as dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, …).
    pub proto: u8,
    /// The direction of the first packet (client → what it sent to).
    pub orig: Tuple,
    /// The direction the kernel expects answers in (after NAT: endpoint → client).
    pub reply: Tuple,
    /// Conntrack zone (0 unless a rule put the connection in another one).
    pub zone: u16,
    /// The kernel's id of the entry (`CTA_ID`), when it gave one.
    pub id: Option<u32>,
}

impl Entry {
    /// Whether the connection was DNATed to `endpoint`: its answers come from there but the
    /// client did not send there.
    pub fn is_dnat_to(&self, endpoint: SocketAddrV4) -> bool {
        self.reply.src == endpoint && self.orig.dst != endpoint
    }
}

/// A ctnetlink socket in one network namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    rbuf: Vec<u8>,
}

/// How many deletes go in one `sendmsg` (at ~90 bytes each, far below the default send
/// buffer; their possible error answers fit the receive buffer set in [`Conntrack::open`]).
pub const DELETES_PER_SEND: usize = 256;
/// How long to wait for the kernel's answer before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const RCVBUF: usize = 1024 * 1024;

// include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h, linux/netlink.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNETLINK_V0: u8 = 0;
const AF_INET: u8 = libc::AF_INET as u8;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
const CTA_MAX: usize = 26;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_TUPLE_MAX: usize = 3;

const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_MAX: usize = 4;

const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_MAX: usize = 3;

const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_F_CTA_IP_SRC: u32 = 1 << 0;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
const CTA_FILTER_F_CTA_PROTO_SRC_PORT: u32 = 1 << 4;

/// Protocols whose conntrack tuples carry ports: TCP, UDP, DCCP, SCTP, UDP-Lite.
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

fn sock_err(op: &'static str) -> impl FnOnce(io::Error) -> ConntrackError {
    move |source| ConntrackError::Socket { op, source }
}

impl Conntrack {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let socket = crate::netfilter::open(RCVBUF, REPLY_TIMEOUT)
            .map_err(|(op, source)| ConntrackError::Socket { op, source })?;
        Ok(Conntrack {
            socket,
            seq: 0,
            rbuf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens a socket inside the namespace `ns` (the calling thread returns to its own
    /// namespace before this returns).
    pub fn open_in(ns: impl AsFd) -> Result<Self> {
        let _guard = crate::netns::enter(ns).map_err(|e| ConntrackError::Socket {
            op: "enter namespace",
            source: io::Error::other(e.to_string()),
        })?;
        Conntrack::open()
    }

    /// Deletes every IPv4 entry of protocol `proto` (17 UDP, 6 TCP, 132 SCTP, …) whose
    /// reply source is `endpoint` and whose original destination differs from it — the
    /// connections DNATed to that endpoint. Returns how many this call deleted.
    pub fn delete_dnat_to(&mut self, proto: u8, endpoint: SocketAddrV4) -> Result<usize> {
        let entries = self.dump_dnat_to(proto, endpoint)?;
        self.delete(&entries)
    }

    /// [`Conntrack::delete_dnat_to`] for several endpoints in one dump (filtered by
    /// protocol only) and one batch of deletes: what one sync that removed them calls.
    pub fn delete_dnat_to_any(&mut self, proto: u8, endpoints: &[SocketAddrV4]) -> Result<usize> {
        let entries = match endpoints {
            [] => return Ok(0),
            [one] => self.dump_dnat_to(proto, *one)?,
            many => {
                let wanted: HashSet<SocketAddrV4> = many.iter().copied().collect();
                let mut all = self.dump(proto)?;
                all.retain(|e| wanted.contains(&e.reply.src) && e.orig.dst != e.reply.src);
                all
            }
        };
        self.delete(&entries)
    }

    /// The IPv4 entries DNATed to `endpoint` (see [`Entry::is_dnat_to`]); the kernel sends
    /// only those whose replies come from `endpoint`.
    pub fn dump_dnat_to(&mut self, proto: u8, endpoint: SocketAddrV4) -> Result<Vec<Entry>> {
        if !has_ports(proto) {
            return Err(ConntrackError::Unsupported(proto));
        }
        let filter = TupleAttrs {
            src_ip: Some(*endpoint.ip()),
            dst_ip: None,
            proto,
            src_port: Some(endpoint.port()),
            dst_port: None,
        };
        let flags =
            CTA_FILTER_F_CTA_IP_SRC | CTA_FILTER_F_CTA_PROTO_NUM | CTA_FILTER_F_CTA_PROTO_SRC_PORT;
        let mut entries = self.dump_filtered(CTA_TUPLE_REPLY, &filter, flags)?;
        entries.retain(|e| e.proto == proto && e.is_dnat_to(endpoint));
        Ok(entries)
    }

    /// All IPv4 entries of protocol `proto` (the kernel sends only those).
    pub fn dump(&mut self, proto: u8) -> Result<Vec<Entry>> {
        if !has_ports(proto) {
            return Err(ConntrackError::Unsupported(proto));
        }
        let filter = TupleAttrs {
            src_ip: None,
            dst_ip: None,
            proto,
            src_port: None,
            dst_port: None,
        };
        let mut entries =
            self.dump_filtered(CTA_TUPLE_ORIG, &filter, CTA_FILTER_F_CTA_PROTO_NUM)?;
        entries.retain(|e| e.proto == proto);
        Ok(entries)
    }

    /// Deletes `entries` (as dumped); returns how many this call deleted — entries already
    /// gone (`ENOENT`) are not counted and are no error.
    pub fn delete(&mut self, entries: &[Entry]) -> Result<usize> {
        let mut deleted = 0;
        for chunk in entries.chunks(DELETES_PER_SEND) {
            deleted += self.delete_chunk(chunk)?;
        }
        Ok(deleted)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// One dump request with `CTA_FILTER` on tuple `which` (orig or reply).
    fn dump_filtered(&mut self, which: u16, filter: &TupleAttrs, flags: u32) -> Result<Vec<Entry>> {
        let seq = self.next_seq();
        let mut msg = Msg::new(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq);
        filter.put(&mut msg, which);
        let nest = msg.nest(CTA_FILTER);
        let flags_attr = if which == CTA_TUPLE_REPLY {
            CTA_FILTER_REPLY_FLAGS
        } else {
            CTA_FILTER_ORIG_FLAGS
        };
        msg.attr(flags_attr, &flags.to_ne_bytes());
        msg.end_nest(nest);
        let bytes = msg.finish();
        self.send(&bytes)?;

        let mut entries = Vec::new();
        loop {
            self.recv()?;
            for m in Messages::new(&self.rbuf) {
                let (ty, mseq, body) = m?;
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        if code < 0 {
                            return Err(kernel_err("dump", -code));
                        }
                        return Ok(entries);
                    }
                    NLMSG_ERROR => {
                        let code = error_code(body)?;
                        if code != 0 {
                            return Err(kernel_err("dump", -code));
                        }
                    }
                    t if t == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                        if let Some(e) = parse_entry(body)? {
                            entries.push(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends up to [`DELETES_PER_SEND`] deletes in one `sendmsg`, the last asking for an
    /// ACK; the kernel answers the others only when they fail.
    fn delete_chunk(&mut self, chunk: &[Entry]) -> Result<usize> {
        if chunk.is_empty() {
            return Ok(0);
        }
        let first = self.seq.wrapping_add(1);
        let mut bytes = Vec::with_capacity(chunk.len() * 96);
        for (i, e) in chunk.iter().enumerate() {
            let seq = self.next_seq();
            let last = i + 1 == chunk.len();
            let flags = NLM_F_REQUEST | if last { NLM_F_ACK } else { 0 };
            let mut msg = Msg::new(IPCTNL_MSG_CT_DELETE, flags, seq);
            TupleAttrs::full(e.proto, &e.orig).put(&mut msg, CTA_TUPLE_ORIG);
            if e.zone != 0 {
                msg.attr(CTA_ZONE, &e.zone.to_be_bytes());
            }
            if let Some(id) = e.id {
                msg.attr(CTA_ID, &id.to_be_bytes());
            }
            bytes.extend_from_slice(&msg.finish());
        }
        let last_seq = self.seq;
        self.send(&bytes)?;

        let mut failed = 0;
        let mut first_err: Option<(u32, ConntrackError)> = None;
        loop {
            self.recv()?;
            let mut done = false;
            for m in Messages::new(&self.rbuf) {
                let (ty, seq, body) = m?;
                let index = seq.wrapping_sub(first) as usize;
                if ty != NLMSG_ERROR || index >= chunk.len() {
                    continue;
                }
                let code = error_code(body)?;
                if code != 0 {
                    failed += 1;
                    if code != -libc::ENOENT && first_err.as_ref().is_none_or(|(s, _)| seq < *s) {
                        let e = &chunk[index];
                        let op =
                            format!("delete proto {} {} -> {}", e.proto, e.orig.src, e.orig.dst);
                        first_err = Some((seq, kernel_err(op, -code)));
                    }
                }
                if seq == last_seq {
                    done = true;
                }
            }
            if done {
                return match first_err {
                    Some((_, e)) => Err(e),
                    None => Ok(chunk.len() - failed),
                };
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let sent = self.socket.send(bytes, 0).map_err(sock_err("sendmsg"))?;
        if sent != bytes.len() {
            return Err(ConntrackError::Decode(format!(
                "sent {sent} of {} bytes",
                bytes.len()
            )));
        }
        Ok(())
    }

    /// Reads one datagram into `rbuf`.
    fn recv(&mut self) -> Result<()> {
        self.rbuf.clear();
        let got = self
            .socket
            .recv(&mut self.rbuf, libc::MSG_TRUNC)
            .map_err(sock_err("recv"))?;
        if got > self.rbuf.len() {
            return Err(ConntrackError::Decode(format!(
                "reply of {got} bytes truncated"
            )));
        }
        Ok(())
    }
}

fn kernel_err(op: impl Into<String>, errno: i32) -> ConntrackError {
    ConntrackError::Kernel {
        op: op.into(),
        source: io::Error::from_raw_os_error(errno),
    }
}

/// The error code of an `NLMSG_ERROR` body (0 = ACK, else a negative errno).
fn error_code(body: &[u8]) -> Result<i32> {
    body.get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| ConntrackError::Decode("short NLMSG_ERROR".into()))
}

/// The fields of a tuple to put in a request (the filter names which ones count).
struct TupleAttrs {
    src_ip: Option<Ipv4Addr>,
    dst_ip: Option<Ipv4Addr>,
    proto: u8,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

impl TupleAttrs {
    fn full(proto: u8, t: &Tuple) -> TupleAttrs {
        TupleAttrs {
            src_ip: Some(*t.src.ip()),
            dst_ip: Some(*t.dst.ip()),
            proto,
            src_port: Some(t.src.port()),
            dst_port: Some(t.dst.port()),
        }
    }

    /// `which { CTA_TUPLE_IP { src, dst }, CTA_TUPLE_PROTO { num, sport, dport } }`,
    /// addresses and ports in network byte order.
    fn put(&self, msg: &mut Msg, which: u16) {
        let tuple = msg.nest(which);
        if self.src_ip.is_some() || self.dst_ip.is_some() {
            let ip = msg.nest(CTA_TUPLE_IP);
            if let Some(a) = self.src_ip {
                msg.attr(CTA_IP_V4_SRC, &a.octets());
            }
            if let Some(a) = self.dst_ip {
                msg.attr(CTA_IP_V4_DST, &a.octets());
            }
            msg.end_nest(ip);
        }
        let proto = msg.nest(CTA_TUPLE_PROTO);
        msg.attr(CTA_PROTO_NUM, &[self.proto]);
        if let Some(p) = self.src_port {
            msg.attr(CTA_PROTO_SRC_PORT, &p.to_be_bytes());
        }
        if let Some(p) = self.dst_port {
            msg.attr(CTA_PROTO_DST_PORT, &p.to_be_bytes());
        }
        msg.end_nest(proto);
        msg.end_nest(tuple);
    }
}

/// One ctnetlink request under construction: netlink header, `nfgenmsg`, attributes.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish()
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        // nfgenmsg: family, version, res_id (big endian).
        buf.extend_from_slice(&[AF_INET, NFNETLINK_V0, 0, 0]);
        Msg { buf }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// The netlink messages of one datagram: (type, sequence number, body after the header).
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(u16, u32, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let b = self.rest;
        let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.rest = &[];
            return Some(Err(ConntrackError::Decode(format!(
                "bad message length {len}"
            ))));
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
        self.rest = &b[len.next_multiple_of(4).min(b.len())..];
        Some(Ok((ty, seq, &b[NLMSG_HDRLEN..len])))
    }
}

/// The attributes of `data` by type (`tb[type]`, like the kernel's `nla_parse`); types
/// above `N - 1` are ignored, a later duplicate wins.
fn attr_table<const N: usize>(data: &[u8]) -> Result<[Option<&[u8]>; N]> {
    let mut tb = [None; N];
    let mut off = 0;
    while off + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[off], data[off + 1]]) as usize;
        let ty = (u16::from_ne_bytes([data[off + 2], data[off + 3]]) & NLA_TYPE_MASK) as usize;
        if len < 4 || off + len > data.len() {
            return Err(ConntrackError::Decode(format!(
                "bad attribute length {len} at {off}"
            )));
        }
        if ty < N {
            tb[ty] = Some(&data[off + 4..off + len]);
        }
        off += len.next_multiple_of(4);
    }
    Ok(tb)
}

fn be16(b: Option<&[u8]>) -> Option<u16> {
    Some(u16::from_be_bytes(b?.get(0..2)?.try_into().ok()?))
}

fn be32(b: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_be_bytes(b?.get(0..4)?.try_into().ok()?))
}

fn ipv4(b: Option<&[u8]>) -> Option<Ipv4Addr> {
    be32(b).map(Ipv4Addr::from)
}

/// A conntrack message body (after the netlink header) → an entry, or `None` when it is
/// not an IPv4 entry with addresses and a protocol.
fn parse_entry(body: &[u8]) -> Result<Option<Entry>> {
    let Some((nfgen, attrs)) = body.split_at_checked(4) else {
        return Err(ConntrackError::Decode("short conntrack message".into()));
    };
    if nfgen[0] != AF_INET {
        return Ok(None);
    }
    let tb = attr_table::<{ CTA_MAX + 1 }>(attrs)?;
    let (Some((proto, orig)), Some((_, reply))) = (
        parse_tuple(tb[CTA_TUPLE_ORIG as usize])?,
        parse_tuple(tb[CTA_TUPLE_REPLY as usize])?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Entry {
        proto,
        orig,
        reply,
        zone: be16(tb[CTA_ZONE as usize]).unwrap_or(0),
        id: be32(tb[CTA_ID as usize]),
    }))
}

fn parse_tuple(data: Option<&[u8]>) -> Result<Option<(u8, Tuple)>> {
    let Some(data) = data else { return Ok(None) };
    let tb = attr_table::<{ CTA_TUPLE_MAX + 1 }>(data)?;
    let (Some(ip), Some(proto)) = (tb[CTA_TUPLE_IP as usize], tb[CTA_TUPLE_PROTO as usize]) else {
        return Ok(None);
    };
    let ip = attr_table::<{ CTA_IP_MAX + 1 }>(ip)?;
    let proto = attr_table::<{ CTA_PROTO_MAX + 1 }>(proto)?;
    let (Some(src), Some(dst), Some(&[num])) = (
        ipv4(ip[CTA_IP_V4_SRC as usize]),
        ipv4(ip[CTA_IP_V4_DST as usize]),
        proto[CTA_PROTO_NUM as usize],
    ) else {
        return Ok(None);
    };
    let sport = be16(proto[CTA_PROTO_SRC_PORT as usize]).unwrap_or(0);
    let dport = be16(proto[CTA_PROTO_DST_PORT as usize]).unwrap_or(0);
    Ok(Some((
        num,
        Tuple {
            src: SocketAddrV4::new(src, sport),
            dst: SocketAddrV4::new(dst, dport),
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            proto: 17,
            orig: Tuple {
                src: "10.0.0.1:40000".parse().unwrap(),
                dst: "10.96.0.10:53".parse().unwrap(),
            },
            reply: Tuple {
                src: "10.244.1.5:5353".parse().unwrap(),
                dst: "10.0.0.1:40000".parse().unwrap(),
            },
            zone: 7,
            id: Some(0xdead_beef),
        }
    }

    /// A dumped message as the kernel would send it (type CT_NEW), built with the same
    /// encoder, parses back to the entry; the request layout matches the uapi header.
    #[test]
    fn encoded_entry_parses_back() {
        let e = entry();
        let mut msg = Msg::new(IPCTNL_MSG_CT_NEW, 0, 9);
        TupleAttrs::full(e.proto, &e.orig).put(&mut msg, CTA_TUPLE_ORIG);
        TupleAttrs::full(e.proto, &e.reply).put(&mut msg, CTA_TUPLE_REPLY);
        msg.attr(CTA_ZONE, &e.zone.to_be_bytes());
        msg.attr(CTA_ID, &e.id.unwrap().to_be_bytes());
        let bytes = msg.finish();

        let mut it = Messages::new(&bytes);
        let (ty, seq, body) = it.next().unwrap().unwrap();
        assert!(it.next().is_none());
        assert_eq!((ty, seq), (0x100, 9));
        assert_eq!(parse_entry(body).unwrap(), Some(e));
        // nfgenmsg: AF_INET, version 0; then CTA_TUPLE_ORIG (nested) holding
        // CTA_TUPLE_IP (nested) holding CTA_IP_V4_SRC = 10.0.0.1.
        assert_eq!(&body[0..4], &[2, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes([body[6], body[7]]), 0x8001);
        assert_eq!(u16::from_ne_bytes([body[10], body[11]]), 0x8001);
        assert_eq!(&body[12..20], &[8, 0, 1, 0, 10, 0, 0, 1]);
    }

    #[test]
    fn dnat_means_reply_source_is_not_the_original_destination() {
        let e = entry();
        assert!(e.is_dnat_to("10.244.1.5:5353".parse().unwrap()));
        assert!(!e.is_dnat_to("10.244.1.5:5354".parse().unwrap()));
        let direct = Entry {
            orig: Tuple {
                src: e.orig.src,
                dst: e.reply.src,
            },
            ..e
        };
        assert!(!direct.is_dnat_to(e.reply.src));
    }

    #[test]
    fn malformed_attributes_are_decode_errors() {
        assert!(matches!(
            attr_table::<4>(&[3, 0, 1, 0]),
            Err(ConntrackError::Decode(_))
        ));
        assert!(matches!(
            attr_table::<4>(&[12, 0, 1, 0, 0, 0, 0, 0]),
            Err(ConntrackError::Decode(_))
        ));
        assert!(matches!(
            Messages::new(&[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .next()
                .unwrap(),
            Err(ConntrackError::Decode(_))
        ));
    }

    #[test]
    fn portless_protocols_are_refused() {
        assert!(has_ports(17) && has_ports(6) && has_ports(132));
        assert!(!has_ports(1));
    }
}
