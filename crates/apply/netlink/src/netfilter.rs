//! Apply: the one `NETLINK_NETFILTER` socket set-up shared by `nftables` and `conntrack`.
//! Invariant: a socket returned here is connected to the kernel, asks for capped and
//! extended ACKs (best effort), and never blocks a read for longer than `timeout`.

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// A `NETLINK_NETFILTER` socket in the calling thread's namespace, with a receive buffer
/// of `rcvbuf` bytes (`SO_RCVBUFFORCE` as root, else `SO_RCVBUF`). On failure, the
/// operation that failed and its error.
pub(crate) fn open(rcvbuf: usize, timeout: Duration) -> Result<Socket, (&'static str, io::Error)> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| ("socket", e))?;
    socket.bind_auto().map_err(|e| ("bind", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| ("connect", e))?;
    // Errors carry only the failing message's header (not its up to 64 KiB body), and the
    // kernel's explanation when it has one. Both are best effort.
    let _ = socket.set_cap_ack(true);
    let _ = socket.set_ext_ack(true);
    if setsockopt(&socket.as_fd(), sockopt::RcvBufForce, &rcvbuf).is_err() {
        let _ = setsockopt(&socket.as_fd(), sockopt::RcvBuf, &rcvbuf);
    }
    let timeout = nix::sys::time::TimeVal::new(timeout.as_secs() as _, 0);
    setsockopt(&socket.as_fd(), sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| ("SO_RCVTIMEO", e.into()))?;
    Ok(socket)
}
