//! The floor of a UDP DNS server on this machine: a loop that does no DNS work at all.
//! One thread, one socket, `recvmmsg` (up to 32 datagrams) → each query sent back as its
//! own reply (QR set, NXDOMAIN, no records: two bytes changed) → `sendmmsg`. No parsing,
//! no lookups, no metrics, no clock reads.
//!
//! `scripts/bench-dns` runs it beside the real contenders (`FLOOR=1`) under the same CPU
//! budget: what the kernel's UDP path costs per query here, which no server that answers
//! through sockets can go below. If the floor itself answers fewer than 2× the q/s of
//! dnsmasq or unbound, no sockets-based server can reach that ratio on this machine.
//!
//! `LISTEN=127.0.0.1:5053 cargo run --release -p podnet-dns-server --example reflect`
//! (`BATCH=N`: datagrams per system call, 32 by default as in `podnet dns`).

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, setsockopt,
    sockopt,
};
use std::io::{IoSlice, IoSliceMut};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

fn main() -> anyhow::Result<()> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:5053".into());
    let sock = UdpSocket::bind(&listen)?;
    // The receive buffer `podnet dns` asks for (bursts of queries wait here).
    setsockopt(&sock, sockopt::RcvBuf, &(4 << 20))?;
    let fd = sock.as_raw_fd();
    let batch: usize = match std::env::var("BATCH") {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("BATCH={v}: not a count"))?,
        Err(_) => 32,
    };
    let batch = batch.clamp(1, 1024);
    let mut bufs = vec![[0u8; 512]; batch];
    let mut lens = vec![0usize; batch];
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(batch, None);
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(batch);
    loop {
        to.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let got = recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            )?;
            for (i, r) in got.enumerate() {
                lens[i] = r.bytes;
                to.push(r.address);
            }
        }
        for (b, &n) in bufs.iter_mut().zip(&lens).take(to.len()) {
            if n >= 12 {
                b[2] |= 0x80; // QR: a response
                b[3] = (b[3] & 0xf0) | 3; // NXDOMAIN
            }
        }
        let slices: Vec<[IoSlice<'_>; 1]> = bufs
            .iter()
            .zip(&lens)
            .take(to.len())
            .map(|(b, &n)| [IoSlice::new(&b[..n.min(512)])])
            .collect();
        sendmmsg(
            fd,
            &mut send_headers,
            slices.iter(),
            &to,
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        )?;
    }
}
