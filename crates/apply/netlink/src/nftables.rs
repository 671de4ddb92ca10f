//! Apply: nf_tables transactions over `NETLINK_NETFILTER` — one batch per call, sent in
//! one `sendmsg`, nothing listed.
//!
//! [`Nftables::apply`] encodes a [`podnet_nft::Transaction`] (podnet-nft does the bytes),
//! sends it and reads the kernel's answers: the kernel processes one batch per skb, so the
//! whole batch must go in one `sendmsg`, and the socket's send buffer is raised to fit it
//! (`SO_SNDBUFFORCE` as root, else `SO_SNDBUF`). Only the last operation asks for an ACK;
//! the kernel reports every failing message on its own, keeps processing the rest of the
//! batch (so later errors may be consequences of the first), then aborts the whole
//! transaction and delivers the errors followed by the last message's answer. The first
//! error (lowest sequence number) is returned, naming the operation's index, errno and
//! text (rendered as the `nft` command it corresponds to).
//!
//! Compared with running `nft -f` (what kube-proxy's nftables proxier does), nothing is
//! read from the kernel before or after the transaction: `nft` dumps every chain of the
//! table first, which costs seconds at tens of thousands of chains. See podnet-nft's crate
//! docs for the rest of the design.

use netlink_sys::Socket;
use nix::sys::socket::{setsockopt, sockopt};
use podnet_nft::{
    Batch, BatchEncoder, EncodeError, Family, Op, Transaction, encode_transaction, render_op,
};
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// Errors of [`Nftables`].
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The transaction was refused before anything was sent.
    #[error("invalid nftables transaction: {0}")]
    Invalid(#[from] EncodeError),
    /// The kernel refused operation `index`; nothing of the transaction was applied.
    #[error("nftables op {index} ({op}): {source}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Op {
        index: usize,
        op: String,
        source: io::Error,
        /// The kernel's extended-ack message, when it gave one.
        detail: Option<String>,
    },
    /// The kernel refused the batch as a whole (commit failure, memory); nothing applied.
    #[error("nftables batch: {source}")]
    Batch { source: io::Error },
    /// The socket failed.
    #[error("nftables socket: {op}: {source}")]
    Socket { op: &'static str, source: io::Error },
    #[error("nftables: cannot decode the kernel's reply: {0}")]
    Decode(String),
}

impl NftError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Op { source, .. }
            | NftError::Batch { source }
            | NftError::Socket { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// The index of the refused operation.
    pub fn op_index(&self) -> Option<usize> {
        match self {
            NftError::Op { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// An nf_tables netlink socket in one network namespace.
pub struct Nftables {
    socket: Socket,
    seq: u32,
    sndbuf: usize,
    rbuf: Vec<u8>,
}

const NLMSG_ERROR: u16 = 2;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// The send buffer below which we do not bother to raise it.
const MIN_SNDBUF: usize = 256 * 1024;
/// Enough for many error messages of a failing big batch.
const RCVBUF: usize = 4 * 1024 * 1024;

fn sock_err(op: &'static str) -> impl FnOnce(io::Error) -> NftError {
    move |source| NftError::Socket { op, source }
}

impl Nftables {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        let socket = crate::netfilter::open(RCVBUF, REPLY_TIMEOUT)
            .map_err(|(op, source)| NftError::Socket { op, source })?;
        Ok(Nftables {
            socket,
            seq: 0,
            sndbuf: 0,
            rbuf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens a socket inside the namespace `ns` (the calling thread returns to its own
    /// namespace before this returns).
    pub fn open_in(ns: impl AsFd) -> Result<Self, NftError> {
        let _guard = crate::netns::enter(ns).map_err(|e| NftError::Socket {
            op: "enter namespace",
            source: io::Error::other(e.to_string()),
        })?;
        Nftables::open()
    }

    /// Applies `tx` atomically: all of it, or (on error) nothing.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), NftError> {
        let first = self.seq.wrapping_add(1);
        let batch = encode_transaction(tx, first)?;
        self.seq = batch.end_seq();
        self.send_batch(&batch, &|i| {
            describe(tx.family, &tx.table, &tx.ops[i], elements(&tx.ops[i]))
        })
    }

    /// Applies, as one atomic transaction on `table`, the ops `parts` yields, in order.
    /// Each part is encoded and dropped before the next one is made, so a big
    /// transaction (a whole-table replace of 300k elements) exists whole only as its
    /// batch, never as IR. Returns the number of ops sent.
    pub fn apply_parts(
        &mut self,
        family: Family,
        table: &str,
        parts: impl IntoIterator<Item = Vec<Op>>,
    ) -> Result<usize, NftError> {
        let mut encoder = BatchEncoder::new(family, table, self.seq.wrapping_add(1))?;
        // What an error message names: the ops with their element lists cut short, and
        // how many elements they had.
        let mut shown: Vec<(Op, usize)> = Vec::new();
        for part in parts {
            for op in part {
                encoder.push(&op)?;
                let n = elements(&op);
                shown.push((shortened(op), n));
            }
        }
        let batch = encoder.finish();
        self.seq = batch.end_seq();
        self.send_batch(&batch, &|i| {
            describe(family, table, &shown[i].0, shown[i].1)
        })?;
        Ok(shown.len())
    }

    /// Sends an encoded batch and waits for its outcome; `what(i)` names operation `i`.
    pub fn send_batch(
        &mut self,
        batch: &Batch,
        what: &dyn Fn(usize) -> String,
    ) -> Result<(), NftError> {
        let Some(ack_seq) = batch.ack_seq() else {
            return Ok(());
        };
        self.fit_sndbuf(batch.bytes.len())?;
        let sent = self
            .socket
            .send(&batch.bytes, 0)
            .map_err(sock_err("sendmsg"))?;
        if sent != batch.bytes.len() {
            return Err(NftError::Decode(format!(
                "sent {sent} of {} bytes",
                batch.bytes.len()
            )));
        }
        // The first error by sequence number, and whether the outcome is known.
        let mut first_err: Option<(u32, NftError)> = None;
        loop {
            self.rbuf.clear();
            let got = match self.socket.recv(&mut self.rbuf, 0) {
                Ok(n) => n,
                // Replies overflowed the receive buffer: only errors come in numbers, so
                // the batch failed (and was aborted as a whole).
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(first_err
                        .map(|(_, e)| e)
                        .unwrap_or(NftError::Batch { source: e }));
                }
                Err(e) => return Err(sock_err("recv")(e)),
            };
            if got > self.rbuf.len() {
                return Err(NftError::Decode(format!("reply of {got} bytes truncated")));
            }
            let mut off = 0;
            let mut done = false;
            while off + 16 <= self.rbuf.len() {
                let b = &self.rbuf[off..];
                let len = u32::from_ne_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
                if len < 16 || len > b.len() {
                    return Err(NftError::Decode(format!("bad message length {len}")));
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let flags = u16::from_ne_bytes([b[6], b[7]]);
                let seq = u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes"));
                let msg = &b[16..len];
                off += (len + 3) & !3;
                let ours = seq.wrapping_sub(batch.first_seq)
                    <= batch.end_seq().wrapping_sub(batch.first_seq);
                if ty != NLMSG_ERROR || msg.len() < 4 || !ours {
                    // Not an answer to this batch (e.g. left over from an earlier one).
                    continue;
                }
                let code = i32::from_ne_bytes(msg[0..4].try_into().expect("4 bytes"));
                if code != 0 {
                    let source = io::Error::from_raw_os_error(-code);
                    let err = match batch.op_of_seq(seq) {
                        Some(index) => NftError::Op {
                            index,
                            op: what(index),
                            source,
                            detail: ext_ack_msg(flags, msg),
                        },
                        None => NftError::Batch { source },
                    };
                    if seq == batch.first_seq || seq == batch.end_seq() {
                        // The batch as a whole was refused: no per-message answers follow.
                        return Err(err);
                    }
                    if first_err.as_ref().is_none_or(|(s, _)| seq < *s) {
                        first_err = Some((seq, err));
                    }
                }
                if seq == ack_seq {
                    done = true;
                }
            }
            if done {
                return match first_err {
                    Some((_, e)) => Err(e),
                    None => Ok(()),
                };
            }
        }
    }

    /// Raises the send buffer so that `len` bytes go in one `sendmsg` (the kernel
    /// refuses a netlink message larger than `sk_sndbuf - 32` with EMSGSIZE; it doubles
    /// the value given).
    fn fit_sndbuf(&mut self, len: usize) -> Result<(), NftError> {
        let want = (len + 64 * 1024).max(MIN_SNDBUF);
        if want <= self.sndbuf {
            return Ok(());
        }
        let fd = self.socket.as_fd();
        if setsockopt(&fd, sockopt::SndBufForce, &want).is_err() {
            setsockopt(&fd, sockopt::SndBuf, &want).map_err(|e| NftError::Socket {
                op: "SO_SNDBUF",
                source: e.into(),
            })?;
        }
        self.sndbuf = want;
        Ok(())
    }
}

/// How many elements an error message shows of an element operation.
const SHOWN: usize = 3;

/// The number of elements of an element operation (0 for the others).
fn elements(op: &Op) -> usize {
    match op {
        Op::AddElements { elems, .. } | Op::DeleteElements { elems, .. } => elems.len(),
        _ => 0,
    }
}

/// `op` with its element list cut to the [`SHOWN`] elements [`describe`] shows (a new
/// list: the old one's capacity is freed).
fn shortened(op: Op) -> Op {
    // Copied: `into_iter().take(n).collect()` would keep the whole list's allocation.
    let few = |elems: Vec<podnet_nft::Element>| elems[..elems.len().min(SHOWN)].to_vec();
    match op {
        Op::AddElements { set, elems } => Op::AddElements {
            set,
            elems: few(elems),
        },
        Op::DeleteElements { set, elems } => Op::DeleteElements {
            set,
            elems: few(elems),
        },
        op => op,
    }
}

/// An operation of `total` elements (0 for other operations) as its nft command; element
/// lists cut after a few elements (an error about a 250k-element operation should not
/// carry megabytes of text).
fn describe(family: Family, table: &str, op: &Op, total: usize) -> String {
    match op {
        Op::AddElements { set, elems } | Op::DeleteElements { set, elems } if total > SHOWN => {
            let few = elems[..SHOWN].to_vec();
            let short = match op {
                Op::AddElements { .. } => Op::AddElements {
                    set: set.clone(),
                    elems: few,
                },
                _ => Op::DeleteElements {
                    set: set.clone(),
                    elems: few,
                },
            };
            format!(
                "{} (and {} more elements)",
                render_op(family, table, &short),
                total - SHOWN
            )
        }
        _ => render_op(family, table, op),
    }
}

/// The extended-ack text of an NLMSG_ERROR payload (`msg` starts at the error code).
fn ext_ack_msg(flags: u16, msg: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // error code, then the original header (and body unless capped), then TLVs.
    let orig_len = if msg.len() >= 8 {
        u32::from_ne_bytes(msg[4..8].try_into().ok()?) as usize
    } else {
        return None;
    };
    let mut off = 4 + if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        orig_len
    };
    while off + 4 <= msg.len() {
        let len = u16::from_ne_bytes([msg[off], msg[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([msg[off + 2], msg[off + 3]]) & 0x3fff;
        if len < 4 || off + len > msg.len() {
            break;
        }
        if ty == NLMSGERR_ATTR_MSG {
            let s = &msg[off + 4..off + len];
            let s = s.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        off += (len + 3) & !3;
    }
    None
}

/// How long to wait for the kernel's answer before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
