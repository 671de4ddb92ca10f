//! Orchestration: SCTP for the echo workload without the kernel's SCTP stack — the first
//! exchange of an association (INIT → INIT-ACK, RFC 9260 §5.1) spoken on raw
//! `IPPROTO_SCTP` sockets. Invariant: every packet sent carries a correct CRC32c and every
//! packet accepted had one.
//!
//! The packet layer ([`crc32c`], [`Packet::encode`], [`Packet::decode`], [`answer`]) is pure;
//! [`Listener`] (the echo side) and [`probe`] (the client side) do the I/O.
//!
//! The echo side answers an INIT addressed to one of its ports with an INIT-ACK whose State
//! Cookie is the echo line ([`crate::echo::render_reply`]): who answered and which
//! address:port the INIT came from. The client side sends an INIT, reads that cookie out of
//! the matching INIT-ACK (source = the address and port it sent to, verification tag = its
//! own initiate tag) and ends the attempt with an ABORT. No association is ever
//! established: nothing is kept on either side.
//!
//! Kernel (6.18 here, `# CONFIG_IP_SCTP is not set`, confirmed by `socket(AF_INET,
//! SOCK_STREAM, 132)` → EPROTONOSUPPORT): a raw socket of protocol 132 still receives every
//! SCTP packet for the namespace (the kernel, having no SCTP handler, drops its own copy
//! without an ICMP error as long as a raw socket took one) and may send any. The packet
//! includes the IPv4 header on receive, not on send (no `IP_HDRINCL`).

use anyhow::{Context, Result, bail};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, connect,
    recvfrom, sendmsg, setsockopt, socket, sockopt,
};
use nix::sys::time::{TimeVal, TimeValLike};
use std::io::{IoSlice, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::echo::{EchoReply, Identity, parse_reply, render_reply};

/// The IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

const CHUNK_INIT: u8 = 1;
const CHUNK_INIT_ACK: u8 = 2;
const CHUNK_ABORT: u8 = 6;
/// The State Cookie parameter of an INIT-ACK.
const PARAM_STATE_COOKIE: u16 = 7;
const COMMON_HEADER: usize = 12;
/// Chunk header (4) + the fixed INIT / INIT-ACK fields (16).
const INIT_FIXED: usize = 20;

/// The CRC32c (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
static CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// Pure: CRC32c of `data` (RFC 9260 Appendix A; `crc32c(b"123456789") == 0xE306_9283`).
/// SCTP stores it in the common header's checksum field least significant byte first.
pub fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| {
        CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// The fixed fields shared by INIT and INIT-ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Init {
    /// The tag the peer must put in every packet it sends to us (never 0).
    pub initiate_tag: u32,
    pub a_rwnd: u32,
    pub outbound_streams: u16,
    pub inbound_streams: u16,
    pub initial_tsn: u32,
}

impl Init {
    /// The fields of an INIT or INIT-ACK we send: one stream each way.
    pub fn with_tag(initiate_tag: u32) -> Init {
        Init {
            initiate_tag,
            a_rwnd: 65535,
            outbound_streams: 1,
            inbound_streams: 1,
            initial_tsn: initiate_tag,
        }
    }
}

/// The chunks this module speaks; anything else is kept as its type only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Init(Init),
    InitAck {
        init: Init,
        cookie: Vec<u8>,
    },
    /// ABORT without error causes; `reflected` is the T bit (tag of the receiver's own).
    Abort {
        reflected: bool,
    },
    Other {
        kind: u8,
    },
}

/// One SCTP packet: the common header and its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src_port: u16,
    pub dst_port: u16,
    pub verification_tag: u32,
    pub chunks: Vec<Chunk>,
}

/// Why bytes are not an SCTP packet we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    Checksum { carried: u32, computed: u32 },
    ChunkLength { offset: usize, length: usize },
    NoStateCookie,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "{n} bytes is shorter than the common header"),
            DecodeError::Checksum { carried, computed } => write!(
                f,
                "bad CRC32c: carried {carried:#010x}, computed {computed:#010x}"
            ),
            DecodeError::ChunkLength { offset, length } => {
                write!(f, "chunk at byte {offset} has bad length {length}")
            }
            DecodeError::NoStateCookie => write!(f, "INIT-ACK without a State Cookie"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put_init(out: &mut Vec<u8>, init: &Init) {
    out.extend_from_slice(&init.initiate_tag.to_be_bytes());
    out.extend_from_slice(&init.a_rwnd.to_be_bytes());
    out.extend_from_slice(&init.outbound_streams.to_be_bytes());
    out.extend_from_slice(&init.inbound_streams.to_be_bytes());
    out.extend_from_slice(&init.initial_tsn.to_be_bytes());
}

fn get_init(b: &[u8]) -> Init {
    Init {
        initiate_tag: be32(b, 0),
        a_rwnd: be32(b, 4),
        outbound_streams: be16(b, 8),
        inbound_streams: be16(b, 10),
        initial_tsn: be32(b, 12),
    }
}

impl Packet {
    /// Pure: the wire bytes, CRC32c included. The chunk length counts neither the chunk's
    /// own padding nor the last parameter's (RFC 9260 §3.2).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.src_port.to_be_bytes());
        out.extend_from_slice(&self.dst_port.to_be_bytes());
        out.extend_from_slice(&self.verification_tag.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        for chunk in &self.chunks {
            let start = out.len();
            let (kind, flags) = match chunk {
                Chunk::Init(_) => (CHUNK_INIT, 0),
                Chunk::InitAck { .. } => (CHUNK_INIT_ACK, 0),
                Chunk::Abort { reflected } => (CHUNK_ABORT, u8::from(*reflected)),
                Chunk::Other { kind } => (*kind, 0),
            };
            out.extend_from_slice(&[kind, flags, 0, 0]);
            match chunk {
                Chunk::Init(init) => put_init(&mut out, init),
                Chunk::InitAck { init, cookie } => {
                    put_init(&mut out, init);
                    out.extend_from_slice(&PARAM_STATE_COOKIE.to_be_bytes());
                    out.extend_from_slice(&((4 + cookie.len()) as u16).to_be_bytes());
                    out.extend_from_slice(cookie);
                }
                Chunk::Abort { .. } | Chunk::Other { .. } => {}
            }
            let length = (out.len() - start) as u16;
            out[start + 2..start + 4].copy_from_slice(&length.to_be_bytes());
            out.resize(start + pad4(out.len() - start), 0);
        }
        let crc = crc32c(&out);
        out[8..12].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Pure: parses an SCTP packet (the IP payload), checking its CRC32c and every chunk's
    /// length.
    pub fn decode(b: &[u8]) -> Result<Packet, DecodeError> {
        if b.len() < COMMON_HEADER {
            return Err(DecodeError::Short(b.len()));
        }
        let carried = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let mut zeroed = b.to_vec();
        zeroed[8..12].fill(0);
        let computed = crc32c(&zeroed);
        if carried != computed {
            return Err(DecodeError::Checksum { carried, computed });
        }
        let mut chunks = Vec::new();
        let mut offset = COMMON_HEADER;
        while offset + 4 <= b.len() {
            let (kind, flags, length) =
                (b[offset], b[offset + 1], usize::from(be16(b, offset + 2)));
            let min = if matches!(kind, CHUNK_INIT | CHUNK_INIT_ACK) {
                INIT_FIXED
            } else {
                4
            };
            if length < min || offset + length > b.len() {
                return Err(DecodeError::ChunkLength { offset, length });
            }
            let chunk = &b[offset..offset + length];
            chunks.push(match kind {
                CHUNK_INIT => Chunk::Init(get_init(&chunk[4..])),
                CHUNK_INIT_ACK => Chunk::InitAck {
                    init: get_init(&chunk[4..]),
                    cookie: state_cookie(&chunk[INIT_FIXED..])
                        .ok_or(DecodeError::NoStateCookie)?
                        .to_vec(),
                },
                CHUNK_ABORT => Chunk::Abort {
                    reflected: flags & 1 == 1,
                },
                kind => Chunk::Other { kind },
            });
            offset += pad4(length);
        }
        Ok(Packet {
            src_port: be16(b, 0),
            dst_port: be16(b, 2),
            verification_tag: be32(b, 4),
            chunks,
        })
    }
}

/// The State Cookie among an INIT-ACK's variable parameters.
fn state_cookie(mut params: &[u8]) -> Option<&[u8]> {
    while params.len() >= 4 {
        let (kind, length) = (be16(params, 0), usize::from(be16(params, 2)));
        if length < 4 || length > params.len() {
            return None;
        }
        if kind == PARAM_STATE_COOKIE {
            return Some(&params[4..length]);
        }
        params = params.get(pad4(length)..).unwrap_or_default();
    }
    None
}

/// Pure: source, destination and payload of an IPv4 SCTP datagram as a raw socket reads
/// it (IP header included).
pub fn split_ipv4(d: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, &[u8])> {
    let header = usize::from(d.first()? & 0x0f) * 4;
    if d[0] >> 4 != 4 || header < 20 || d.len() < header || d[9] != IPPROTO_SCTP {
        return None;
    }
    let total = usize::from(be16(d, 2)).clamp(header, d.len());
    let ip = |at: usize| Ipv4Addr::new(d[at], d[at + 1], d[at + 2], d[at + 3]);
    Some((ip(12), ip(16), &d[header..total]))
}

/// Pure: the echo side's answer to `sctp` (sent from address `src`): an INIT-ACK carrying the
/// echo line as its State Cookie when it is a lone INIT (verification tag 0, nonzero
/// initiate tag, at least one stream each way) to one of `ports`; `None` for anything else.
/// `own_tag` becomes our initiate tag (nonzero).
pub fn answer(
    id: &Identity,
    ports: &[u16],
    src: Ipv4Addr,
    sctp: &[u8],
    own_tag: u32,
) -> Option<Vec<u8>> {
    let p = Packet::decode(sctp).ok()?;
    let [Chunk::Init(init)] = p.chunks.as_slice() else {
        return None;
    };
    if p.verification_tag != 0
        || init.initiate_tag == 0
        || init.outbound_streams == 0
        || init.inbound_streams == 0
        || !ports.contains(&p.dst_port)
    {
        return None;
    }
    let peer = SocketAddr::from((src, p.src_port));
    let reply = Packet {
        src_port: p.dst_port,
        dst_port: p.src_port,
        verification_tag: init.initiate_tag,
        chunks: vec![Chunk::InitAck {
            init: Init::with_tag(own_tag),
            cookie: render_reply(id, peer).into_bytes(),
        }],
    };
    Some(reply.encode())
}

/// A nonzero random 32-bit value (initiate tags, source ports).
fn random_u32() -> Result<u32> {
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    loop {
        let mut b = [0u8; 4];
        f.read_exact(&mut b).context("reading /dev/urandom")?;
        let v = u32::from_ne_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

fn raw_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Sctp,
    )
    .context("opening a raw IPPROTO_SCTP socket (needs CAP_NET_RAW)")
}

/// Sends `sctp` to `dst` from `src` (`None`: the address routing picks).
fn send(fd: &OwnedFd, src: Option<Ipv4Addr>, dst: Ipv4Addr, sctp: &[u8]) -> Result<()> {
    let to = SockaddrIn::from(SocketAddrV4::new(dst, 0));
    let info = src.map(|s| libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(s).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    });
    let cmsgs: Vec<ControlMessage> = info.iter().map(ControlMessage::Ipv4PacketInfo).collect();
    sendmsg(
        fd.as_raw_fd(),
        &[IoSlice::new(sctp)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )
    .with_context(|| format!("sending SCTP to {dst}"))?;
    Ok(())
}

/// The echo side: a raw SCTP socket of the namespace it was opened in.
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Opens the socket (in the calling thread's network namespace).
    pub fn open() -> Result<Listener> {
        Ok(Listener { fd: raw_socket()? })
    }

    /// Answers INITs to `ports` until the socket fails for good (blocking). The INIT-ACK
    /// leaves from the address the INIT was sent to, whatever routing would pick.
    pub fn serve(self, id: &Identity, ports: &[u16]) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match recvfrom::<SockaddrIn>(self.fd.as_raw_fd(), &mut buf) {
                Ok((n, _)) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e).context("receiving SCTP"),
            };
            let Some((src, dst, sctp)) = split_ipv4(&buf[..n]) else {
                continue;
            };
            if let Some(reply) = answer(id, ports, src, sctp, random_u32()?)
                && let Err(e) = send(&self.fd, Some(dst), src, &reply)
            {
                eprintln!("echo: sctp: {e:#}");
            }
        }
    }
}

/// The client side: one INIT to `dst` from the calling thread's namespace (random source
/// port and initiate tag), the echo line out of the matching INIT-ACK's State Cookie, then
/// an ABORT. Fails on timeout, on an ICMP error (port unreachable from a Service without
/// endpoints: `ECONNREFUSED`; protocol unreachable from a host serving no SCTP:
/// `ENOPROTOOPT`), or when the cookie is not an echo line.
pub fn probe(dst: SocketAddrV4, timeout: Duration) -> Result<EchoReply> {
    let fd = raw_socket()?;
    // Connected, the raw socket sees only packets from `dst`'s address, and the kernel
    // reports ICMP errors about our INIT on it (`raw_err` ignores them on an unconnected
    // raw socket without IP_RECVERR).
    connect(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(*dst.ip(), 0)),
    )
    .with_context(|| format!("connecting a raw SCTP socket to {}", dst.ip()))?;
    let tag = random_u32()?;
    let src_port = 49152 + (random_u32()? % 16384) as u16;
    let init = Packet {
        src_port,
        dst_port: dst.port(),
        verification_tag: 0,
        chunks: vec![Chunk::Init(Init::with_tag(tag))],
    };
    send(&fd, None, *dst.ip(), &init.encode())?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no INIT-ACK from {dst} within {timeout:?}");
        }
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::microseconds(left.as_micros().max(1) as i64),
        )
        .context("SO_RCVTIMEO")?;
        let n = match recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) {
            Ok((n, _)) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(e).with_context(|| format!("SCTP INIT to {dst}")),
        };
        let Some((src, _, sctp)) = split_ipv4(&buf[..n]) else {
            continue;
        };
        let Ok(p) = Packet::decode(sctp) else {
            continue;
        };
        if src != *dst.ip()
            || p.src_port != dst.port()
            || p.dst_port != src_port
            || p.verification_tag != tag
        {
            continue;
        }
        let [Chunk::InitAck { init, cookie }] = p.chunks.as_slice() else {
            continue;
        };
        let abort = Packet {
            src_port,
            dst_port: dst.port(),
            verification_tag: init.initiate_tag,
            chunks: vec![Chunk::Abort { reflected: false }],
        };
        // The answer is in hand; a lost ABORT only leaves conntrack to time the flow out.
        let _ = send(&fd, None, *dst.ip(), &abort.encode());
        let line = String::from_utf8_lossy(cookie);
        return parse_reply(&line).with_context(|| {
            format!("INIT-ACK from {dst}: the State Cookie {line:?} is no echo line")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            pod: "web-1".into(),
            namespace: "default".into(),
            ip: "10.244.1.5".into(),
            node: "worker-1".into(),
            container: "echo".into(),
        }
    }

    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // RFC 3720 B.4 (iSCSI uses the same CRC and byte order as SCTP).
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&up), 0x46DD_794E);
        let down: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&down), 0x113F_DB5C);
    }

    #[test]
    fn init_encodes_to_the_rfc_layout() {
        let p = Packet {
            src_port: 0xc001,
            dst_port: 80,
            verification_tag: 0,
            chunks: vec![Chunk::Init(Init {
                initiate_tag: 0x0102_0304,
                a_rwnd: 0x0001_0000,
                outbound_streams: 10,
                inbound_streams: 2048,
                initial_tsn: 0xa0b0_c0d0,
            })],
        };
        let b = p.encode();
        #[rustfmt::skip]
        let want_but_crc: [u8; 32] = [
            0xc0, 0x01, 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0, 20,
            0x01, 0x02, 0x03, 0x04, 0x00, 0x01, 0x00, 0x00,
            0x00, 0x0a, 0x08, 0x00, 0xa0, 0xb0, 0xc0, 0xd0,
        ];
        let mut zeroed = b.clone();
        zeroed[8..12].fill(0);
        assert_eq!(zeroed, want_but_crc);
        assert_eq!(b[8..12], crc32c(&want_but_crc).to_le_bytes());
        assert_eq!(Packet::decode(&b).unwrap(), p);
    }

    #[test]
    fn init_ack_pads_the_cookie_and_round_trips() {
        let p = Packet {
            src_port: 80,
            dst_port: 50000,
            verification_tag: 7,
            chunks: vec![Chunk::InitAck {
                init: Init::with_tag(9),
                cookie: b"hello".to_vec(),
            }],
        };
        let b = p.encode();
        // 12 header + 20 fixed + 4 parameter header + 5 cookie, padded to 44.
        assert_eq!(b.len(), 44);
        assert_eq!(be16(&b, 14), 20 + 4 + 5, "chunk length excludes padding");
        assert_eq!(be16(&b, 32), PARAM_STATE_COOKIE);
        assert_eq!(be16(&b, 34), 9);
        assert_eq!(&b[41..], &[0, 0, 0]);
        assert_eq!(Packet::decode(&b).unwrap(), p);
    }

    #[test]
    fn decode_rejects_bad_crc_and_lengths() {
        let mut b = Packet {
            src_port: 1,
            dst_port: 2,
            verification_tag: 3,
            chunks: vec![Chunk::Abort { reflected: true }],
        }
        .encode();
        assert_eq!(
            Packet::decode(&b).unwrap().chunks,
            vec![Chunk::Abort { reflected: true }]
        );
        b[5] ^= 1;
        assert!(matches!(
            Packet::decode(&b),
            Err(DecodeError::Checksum { .. })
        ));
        assert_eq!(Packet::decode(&b[..11]), Err(DecodeError::Short(11)));
        // An INIT chunk claiming 8 bytes (less than its fixed fields), CRC fixed up.
        let mut short = Packet {
            src_port: 1,
            dst_port: 2,
            verification_tag: 0,
            chunks: vec![Chunk::Init(Init::with_tag(5))],
        }
        .encode();
        short[14..16].copy_from_slice(&8u16.to_be_bytes());
        short[8..12].fill(0);
        let crc = crc32c(&short);
        short[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Packet::decode(&short),
            Err(DecodeError::ChunkLength {
                offset: 12,
                length: 8
            })
        );
    }

    fn init_to(port: u16, vtag: u32, tag: u32) -> Vec<u8> {
        Packet {
            src_port: 40000,
            dst_port: port,
            verification_tag: vtag,
            chunks: vec![Chunk::Init(Init::with_tag(tag))],
        }
        .encode()
    }

    #[test]
    fn answer_carries_the_echo_line_in_the_cookie() {
        let src = Ipv4Addr::new(10, 244, 2, 7);
        let reply = answer(&id(), &[8080], src, &init_to(8080, 0, 0xabcd), 0x1234).unwrap();
        let p = Packet::decode(&reply).unwrap();
        assert_eq!((p.src_port, p.dst_port), (8080, 40000));
        assert_eq!(p.verification_tag, 0xabcd, "the INIT's initiate tag");
        let [Chunk::InitAck { init, cookie }] = p.chunks.as_slice() else {
            panic!("{p:?}");
        };
        assert_eq!(init.initiate_tag, 0x1234);
        let r = parse_reply(std::str::from_utf8(cookie).unwrap()).unwrap();
        assert_eq!(r.pod, "web-1");
        assert_eq!(r.peer, "10.244.2.7:40000".parse().unwrap());
    }

    #[test]
    fn answer_ignores_what_is_not_a_lone_init_to_a_served_port() {
        let src = Ipv4Addr::LOCALHOST;
        assert_eq!(answer(&id(), &[8080], src, &init_to(9090, 0, 1), 2), None);
        assert_eq!(answer(&id(), &[8080], src, &init_to(8080, 5, 1), 2), None);
        assert_eq!(answer(&id(), &[8080], src, &init_to(8080, 0, 0), 2), None);
        let mut bad_crc = init_to(8080, 0, 1);
        bad_crc[8] ^= 0xff;
        assert_eq!(answer(&id(), &[8080], src, &bad_crc, 2), None);
        let abort = Packet {
            src_port: 40000,
            dst_port: 8080,
            verification_tag: 0,
            chunks: vec![Chunk::Abort { reflected: false }],
        }
        .encode();
        assert_eq!(answer(&id(), &[8080], src, &abort, 2), None);
    }

    #[test]
    fn ipv4_header_is_split_off() {
        let sctp = init_to(80, 0, 1);
        let mut d = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, IPPROTO_SCTP, 0, 0];
        d.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let total = (d.len() + sctp.len()) as u16;
        d[2..4].copy_from_slice(&total.to_be_bytes());
        d.extend_from_slice(&sctp);
        let (src, dst, payload) = split_ipv4(&d).unwrap();
        assert_eq!(src, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(payload, sctp.as_slice());
        d[9] = 6;
        assert_eq!(split_ipv4(&d), None);
        assert_eq!(split_ipv4(&[]), None);
    }
}
