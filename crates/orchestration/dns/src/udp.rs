//! Orchestration: the UDP side — one `SO_REUSEPORT` socket per worker thread, each a
//! blocking loop: `recvmmsg` (up to 32 queries per system call) → answer → `sendmmsg`.
//! Zone answers and cache hits are written on the thread into reused buffers, metrics
//! counted in thread-local integers and added to the shared ones every few hundred
//! queries; misses and aliases are handed to the
//! tokio runtime (`crate::answer_slow`), which replies through a clone of the socket.
//! A read timeout of 200 ms lets the thread notice `Shared::stop`.

use crate::Shared;
use crate::metrics::LocalStats;
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, MultiHeaders, SockFlag, SockType, SockaddrStorage,
    bind as nix_bind, recvmmsg, sendmmsg, setsockopt, socket, sockopt,
};
use podnet_dns::wire::{self, Rcode};
use podnet_dns::{Outcome, answer_query};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a blocked worker checks whether the server stopped.
const POLL: Duration = Duration::from_millis(200);

fn reuseport_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .context("create a UDP socket")?;
    setsockopt(&fd, sockopt::ReusePort, &true).context("SO_REUSEPORT")?;
    // Bursts of queries queue here while a worker is busy.
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
    nix_bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .with_context(|| format!("bind UDP {addr}"))?;
    let sock = UdpSocket::from(fd);
    sock.set_read_timeout(Some(POLL))?;
    Ok(sock)
}

/// `n` sockets on one address (an ephemeral port is chosen by the first).
pub fn bind(addr: SocketAddr, n: usize) -> Result<Vec<UdpSocket>> {
    let first = reuseport_socket(addr)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n.max(1) {
        all.push(reuseport_socket(addr)?);
    }
    Ok(all)
}

/// Datagrams read (and replies sent) per system call at most.
const BATCH: usize = 32;
/// The largest query read; a longer datagram is cut (and then malformed: FORMERR).
const QUERY_MAX: usize = 4096;
/// Forwarded queries in flight at once; beyond, SERVFAIL at once (a dead upstream must
/// not pile up tasks without bound).
pub const MAX_IN_FLIGHT: usize = 4096;

/// One worker's loop; returns when the server stops. Queries are read up to [`BATCH`] per
/// `recvmmsg` and their replies sent with one `sendmmsg`.
pub fn serve(sock: UdpSocket, shared: Arc<Shared>, rt: tokio::runtime::Handle) {
    let reply_sock = match sock.try_clone() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "clone UDP socket");
            return;
        }
    };
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; QUERY_MAX]; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut stats = LocalStats::default();
    while !shared.stop.load(Ordering::Relaxed) {
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(res) => got.extend(res.map(|r| (r.bytes, r.address))),
                Err(Errno::EAGAIN | Errno::EINTR) => {
                    stats.flush(&shared.metrics, true);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive");
                    continue;
                }
            }
        }
        let started = Instant::now();
        let zone = shared.zone.load();
        to.clear();
        for (i, &(n, addr)) in got.iter().enumerate() {
            let Some(addr) = addr else { continue };
            let packet = &bufs[i][..n.min(QUERY_MAX)];
            let out = &mut outs[to.len()];
            let rcode = match answer_query(zone.as_deref(), &shared.apex, packet, false, out) {
                Outcome::Reply(rcode) => rcode,
                Outcome::Drop => continue,
                Outcome::Forward => match cached(&shared, packet, out) {
                    Some(rcode) => rcode,
                    None => {
                        slow(&rt, &shared, &reply_sock, packet, addr, out);
                        continue;
                    }
                },
                Outcome::Alias => {
                    slow(&rt, &shared, &reply_sock, packet, addr, out);
                    continue;
                }
            };
            to.push(Some(addr));
            stats.observe(wire::peek_qtype(packet), rcode, started.elapsed());
        }
        send_all(fd, &mut send_headers, &outs, &to);
        stats.flush(&shared.metrics, false);
    }
}

/// Sends `outs[..to.len()]` to `to` with `sendmmsg` (again for what a short count left).
fn send_all(
    fd: std::os::fd::RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    outs: &[Vec<u8>],
    to: &[Option<SockaddrStorage>],
) {
    let mut sent = 0;
    while sent < to.len() {
        let slices: Vec<[IoSlice<'_>; 1]> = outs[sent..to.len()]
            .iter()
            .map(|o| [IoSlice::new(o)])
            .collect();
        match sendmmsg(
            fd,
            headers,
            slices.iter(),
            &to[sent..],
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        ) {
            Ok(res) => {
                let n = res.count();
                if n == 0 {
                    return;
                }
                sent += n;
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                // One bad destination fails the call: skip it, send the rest.
                tracing::debug!(error = %e, "UDP send");
                sent += 1;
            }
        }
    }
}

/// A cache hit answered on the worker thread.
fn cached(shared: &Shared, packet: &[u8], out: &mut Vec<u8>) -> Option<Rcode> {
    let q = wire::parse_query(packet).ok()?;
    let mut nb = [0u8; wire::MAX_NAME];
    let mut kb = [0u8; podnet_dns::cache::MAX_KEY];
    let key = podnet_dns::cache::key(q.lower_name(&mut nb), q.qtype, q.qclass, &mut kb);
    let rcode = {
        let mut cache = shared.cache.lock().ok()?;
        let (stored, elapsed) = cache.get(key, shared.now())?;
        stored.write_reply(&q, elapsed, out)
    };
    shared.metrics.cache_hits.inc();
    wire::fit_udp(out, &q);
    Some(rcode)
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Hands a query to the runtime; the reply goes out through a clone of the socket.
/// Beyond [`MAX_IN_FLIGHT`] the client gets SERVFAIL at once.
fn slow(
    rt: &tokio::runtime::Handle,
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    packet: &[u8],
    addr: SockaddrStorage,
    scratch: &mut Vec<u8>,
) {
    let Some(peer) = socket_addr(&addr) else {
        return;
    };
    if shared.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(q) = wire::parse_query(packet) {
            wire::rcode_reply(scratch, &q, Rcode::ServFail);
            let _ = sock.send_to(scratch, peer);
        }
        return;
    }
    let shared = shared.clone();
    let sock = sock.clone();
    let packet = packet.to_vec();
    rt.spawn(async move {
        if let Some(reply) = crate::answer_slow(&shared, &packet, false).await {
            let _ = sock.send_to(&reply, peer);
        }
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    });
}
