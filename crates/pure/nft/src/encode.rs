//! Pure: IR → one nf_tables netlink batch (bytes), as nft 1.0.6 / libnftnl encode it.
//!
//! Layout (linux `include/uapi/linux/netfilter/nf_tables.h`, `nfnetlink.h`):
//! `NFNL_MSG_BATCH_BEGIN` (res_id `NFNL_SUBSYS_NFTABLES`), one message per operation
//! (an element operation may take several, each under 64 KiB: the `NFTA_SET_ELEM_LIST_ELEMENTS`
//! attribute length is 16 bits), `NFNL_MSG_BATCH_END`. Message `i` of the batch carries
//! sequence number `first_seq + i`; [`Batch::op_of_seq`] maps a kernel error (which
//! carries the failing message's sequence number) back to the operation. Only the last
//! operation message asks for an ACK: the kernel reports every failing message anyway,
//! so the ACK of the last one tells the batch is through.
//!
//! Registers are numbered as nft numbers them (`netlink_put_register`): 32-bit slot `i`
//! is `NFT_REG_1 + i/4` when `i` is a multiple of 4, else `NFT_REG32_00 + i`, and each
//! component of a concatenation takes its width padded to 4 bytes — so
//! `nft --debug=netlink` output and ours read the same.
//!
//! Confirmed against nft 1.0.6 `--debug=netlink,mnl` on kernel 6.18 (see the byte tests in
//! `tests/encode.rs`) and end to end by listing both paths in podnet-netlink's
//! `tests/nftables.rs`.

use crate::ir::*;
use crate::types::{
    BYTEORDER_NONE, TypeInfo, VERDICT_TYPE, concat_id, expr_len, expr_type, padded, type_info,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a transaction cannot be encoded (checked before any byte goes to the kernel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("op {op}: invalid name {name:?}")]
    Name { op: usize, name: String },
    #[error("op {op}: {what}")]
    Invalid { op: usize, what: String },
}

// --- netlink constants -------------------------------------------------------------

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// `NFT_MSG_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
enum Msg {
    NewTable = 0,
    DelTable = 2,
    NewChain = 3,
    DelChain = 5,
    NewRule = 6,
    DelRule = 8,
    NewSet = 9,
    DelSet = 11,
    NewSetElem = 12,
    DelSetElem = 14,
}

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_HOOK_DEV: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG32_00: u32 = 8;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// The ELEMENTS attribute of one message stays below this (its length field is 16 bits).
const ELEMENTS_LIMIT: usize = 60_000;

/// nft's set userdata types (`NFTNL_UDATA_SET_*`).
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_SET_KEY_TYPEOF: u8 = 3;
const UDATA_SET_DATA_TYPEOF: u8 = 4;
const UDATA_SET_DATA_INTERVAL: u8 = 6;
const UDATA_SET_COMMENT: u8 = 7;
const UDATA_RULE_COMMENT: u8 = 0;
/// nft's `enum expr_types` numbers of the expressions a `typeof` can name.
/// nft's `enum expr_types` (src/expression.h), as stored in typeof user data.
const EXPR_VERDICT: u32 = 1;
const EXPR_PAYLOAD: u32 = 7;
const EXPR_META: u32 = 9;
const EXPR_CONCAT: u32 = 13;
const EXPR_NUMGEN: u32 = 23;

// --- the batch ------------------------------------------------------------------------

/// An encoded transaction: the bytes of one `sendmsg`, and which operation each message
/// belongs to.
#[derive(Debug, Clone)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// Sequence number of `BATCH_BEGIN`; operation messages follow it.
    pub first_seq: u32,
    /// For message `i` after `BATCH_BEGIN` (sequence `first_seq + 1 + i`): its op index.
    msg_ops: Vec<usize>,
}

impl Batch {
    /// The operation a kernel reply's sequence number belongs to (`None` for the batch
    /// begin/end messages and foreign numbers).
    pub fn op_of_seq(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        self.msg_ops.get(i).copied()
    }

    /// Number of operation messages (without begin/end).
    pub fn messages(&self) -> usize {
        self.msg_ops.len()
    }

    /// The sequence number of the last operation message: the one that asks for an ACK.
    /// `None` for an empty batch (nothing to send).
    pub fn ack_seq(&self) -> Option<u32> {
        (!self.msg_ops.is_empty()).then(|| self.first_seq.wrapping_add(self.msg_ops.len() as u32))
    }

    /// Sequence number of `BATCH_END`.
    pub fn end_seq(&self) -> u32 {
        self.first_seq
            .wrapping_add(self.msg_ops.len() as u32)
            .wrapping_add(1)
    }
}

/// Encodes `tx` as one batch whose `BATCH_BEGIN` has sequence number `first_seq`.
/// Validates first: names, value/expression widths, typeof support, interval elements.
pub fn encode_transaction(tx: &Transaction, first_seq: u32) -> Result<Batch, EncodeError> {
    validate(tx)?;
    let mut e = BatchEncoder::with_capacity(tx.family, &tx.table, first_seq, estimate(tx))?;
    for op in &tx.ops {
        e.encode(op);
    }
    Ok(e.finish())
}

/// Encodes a transaction op by op into one batch, so that a big transaction (a whole
/// table of 300k elements) never needs to exist whole as IR: its producer hands the ops
/// over in parts and drops each part once it is encoded. The batch is the same as
/// [`encode_transaction`]'s of the same ops.
pub struct BatchEncoder {
    w: Writer,
    family: Family,
    fam: u8,
    table: String,
    first_seq: u32,
    set_id: u32,
    ops: usize,
}

impl BatchEncoder {
    /// A batch on `table`, whose `BATCH_BEGIN` has sequence number `first_seq`.
    pub fn new(family: Family, table: &str, first_seq: u32) -> Result<Self, EncodeError> {
        BatchEncoder::with_capacity(family, table, first_seq, 64 * 1024)
    }

    fn with_capacity(
        family: Family,
        table: &str,
        first_seq: u32,
        capacity: usize,
    ) -> Result<Self, EncodeError> {
        if !is_valid_name(table) {
            return Err(EncodeError::Name {
                op: 0,
                name: table.to_string(),
            });
        }
        let mut w = Writer {
            buf: Vec::with_capacity(capacity),
            seq: first_seq,
            msg_ops: Vec::new(),
            last_msg_at: None,
            set_ids: HashMap::new(),
        };
        // BATCH_BEGIN: AF_UNSPEC, res_id = NFNL_SUBSYS_NFTABLES (big endian).
        let at = w.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        w.finish(at);
        Ok(BatchEncoder {
            w,
            family,
            fam: nfproto(family),
            table: table.to_string(),
            first_seq,
            set_id: 0,
            ops: 0,
        })
    }

    /// Checks `op` (as [`validate`] does) and appends it as the next operation.
    pub fn push(&mut self, op: &Op) -> Result<(), EncodeError> {
        validate_op(self.family, self.ops, op)?;
        self.encode(op);
        Ok(())
    }

    fn encode(&mut self, op: &Op) {
        encode_op(
            &mut self.w,
            self.fam,
            &self.table,
            self.ops,
            op,
            &mut self.set_id,
        );
        self.ops += 1;
    }

    /// Operations appended so far.
    pub fn len(&self) -> usize {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The batch: the ACK flag on the last operation message, then `BATCH_END`.
    pub fn finish(self) -> Batch {
        let mut w = self.w;
        if let Some(at) = w.last_msg_at {
            let flags = u16::from_ne_bytes([w.buf[at + 6], w.buf[at + 7]]) | NLM_F_ACK;
            w.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        w.seq = w.seq.wrapping_add(1);
        let at = w.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        w.finish(at);
        Batch {
            bytes: w.buf,
            first_seq: self.first_seq,
            msg_ops: w.msg_ops,
        }
    }
}

/// A rough size, so the buffer is allocated once for big batches.
fn estimate(tx: &Transaction) -> usize {
    tx.ops
        .iter()
        .map(|op| match op {
            Op::AddElements { elems, .. } | Op::DeleteElements { elems, .. } => 64 * elems.len(),
            Op::AddRule { rule, .. } => 64 + 96 * rule.stmts.len(),
            _ => 96,
        })
        .sum::<usize>()
        + 64
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ip => 2,
        Family::Ip6 => 10,
        Family::Inet => 1,
        Family::Netdev => 5,
    }
}

struct Writer {
    buf: Vec<u8>,
    seq: u32,
    msg_ops: Vec<usize>,
    last_msg_at: Option<usize>,
    /// `NFTA_SET_ID`s of the sets created in this batch: nft refers to them by id too.
    set_ids: HashMap<String, u32>,
}

impl Writer {
    /// nlmsghdr + nfgenmsg; returns the message start for [`Writer::finish`].
    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    /// Starts the message of operation `op`.
    fn msg(&mut self, msg: Msg, flags: u16, family: u8, op: usize) -> usize {
        self.seq = self.seq.wrapping_add(1);
        self.msg_ops.push(op);
        let at = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg as u16,
            NLM_F_REQUEST | flags,
            family,
            0,
        );
        self.last_msg_at = Some(at);
        at
    }

    fn finish(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
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

    /// `NFTA_DATA_VALUE` inside attribute `ty`.
    fn data_value(&mut self, ty: u16, bytes: &[u8]) {
        let n = self.nest(ty);
        self.attr(NFTA_DATA_VALUE, bytes);
        self.end_nest(n);
    }

    /// `NFTA_DATA_VERDICT` inside attribute `ty`.
    fn data_verdict(&mut self, ty: u16, v: &Verdict) {
        let n = self.nest(ty);
        let vn = self.nest(NFTA_DATA_VERDICT);
        let (code, chain) = match v {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (NFT_JUMP, Some(c)),
            Verdict::Goto(c) => (NFT_GOTO, Some(c)),
        };
        self.be32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            self.str(NFTA_VERDICT_CHAIN, c);
        }
        self.end_nest(vn);
        self.end_nest(n);
    }
}

fn encode_op(w: &mut Writer, fam: u8, table: &str, i: usize, op: &Op, set_id: &mut u32) {
    match op {
        Op::AddTable => {
            let at = w.msg(Msg::NewTable, NLM_F_CREATE, fam, i);
            w.str(NFTA_TABLE_NAME, table);
            w.be32(NFTA_TABLE_FLAGS, 0);
            w.finish(at);
        }
        Op::DeleteTable => {
            let at = w.msg(Msg::DelTable, 0, fam, i);
            w.str(NFTA_TABLE_NAME, table);
            w.finish(at);
        }
        Op::AddChain(c) => {
            let at = w.msg(Msg::NewChain, NLM_F_CREATE, fam, i);
            w.str(NFTA_CHAIN_TABLE, table);
            w.str(NFTA_CHAIN_NAME, &c.name);
            if let Some(b) = &c.base {
                w.str(
                    NFTA_CHAIN_TYPE,
                    match b.kind {
                        ChainKind::Filter => "filter",
                        ChainKind::Nat => "nat",
                    },
                );
                w.be32(
                    NFTA_CHAIN_POLICY,
                    match b.policy {
                        Policy::Accept => NF_ACCEPT as u32,
                        Policy::Drop => NF_DROP as u32,
                    },
                );
                let n = w.nest(NFTA_CHAIN_HOOK);
                w.be32(NFTA_HOOK_HOOKNUM, hooknum(b.hook));
                w.be32(NFTA_HOOK_PRIORITY, b.priority as u32);
                if let Some(d) = &b.device {
                    w.str(NFTA_HOOK_DEV, d);
                }
                w.end_nest(n);
            }
            w.finish(at);
        }
        Op::FlushChain(c) => {
            let at = w.msg(Msg::DelRule, 0, fam, i);
            w.str(NFTA_RULE_TABLE, table);
            w.str(NFTA_RULE_CHAIN, c);
            w.finish(at);
        }
        Op::DeleteChain(c) => {
            let at = w.msg(Msg::DelChain, 0, fam, i);
            w.str(NFTA_CHAIN_TABLE, table);
            w.str(NFTA_CHAIN_NAME, c);
            w.finish(at);
        }
        Op::AddRule { chain, rule } => {
            let at = w.msg(Msg::NewRule, NLM_F_CREATE | NLM_F_APPEND, fam, i);
            w.str(NFTA_RULE_TABLE, table);
            w.str(NFTA_RULE_CHAIN, chain);
            let n = w.nest(NFTA_RULE_EXPRESSIONS);
            let mut deps = Deps {
                by: if fam == nfproto(Family::Inet) {
                    DepBy::NfProto
                } else if fam == nfproto(Family::Netdev) {
                    DepBy::EtherType
                } else {
                    DepBy::None
                },
                ..Deps::default()
            };
            for s in &rule.stmts {
                deps.before(w, s);
                encode_stmt(w, s);
            }
            w.end_nest(n);
            if let Some(c) = &rule.comment {
                let mut u = Vec::new();
                udata_str(&mut u, UDATA_RULE_COMMENT, c);
                w.attr(NFTA_RULE_USERDATA, &u);
            }
            w.finish(at);
        }
        Op::AddSet(s) => {
            *set_id += 1;
            w.set_ids.insert(s.name.clone(), *set_id);
            encode_set(w, fam, table, i, s, *set_id);
        }
        Op::FlushSet(s) | Op::FlushMap(s) => {
            let at = w.msg(Msg::DelSetElem, 0, fam, i);
            w.str(NFTA_SET_ELEM_LIST_TABLE, table);
            w.str(NFTA_SET_ELEM_LIST_SET, s);
            w.finish(at);
        }
        Op::DeleteSet(s) => {
            let at = w.msg(Msg::DelSet, 0, fam, i);
            w.str(NFTA_SET_TABLE, table);
            w.str(NFTA_SET_NAME, s);
            w.finish(at);
        }
        Op::AddElements { set, elems } => {
            encode_elems(w, fam, table, i, set, elems, Msg::NewSetElem);
        }
        Op::DeleteElements { set, elems } => {
            encode_elems(w, fam, table, i, set, elems, Msg::DelSetElem);
        }
    }
}

fn hooknum(h: Hook) -> u32 {
    match h {
        Hook::Prerouting => 0,
        Hook::Input => 1,
        Hook::Forward => 2,
        Hook::Output => 3,
        Hook::Postrouting => 4,
        Hook::Ingress => 0, // NF_NETDEV_INGRESS
    }
}

// --- sets and elements ------------------------------------------------------------------

/// The datatypes of a key or data declaration.
fn decl_types(d: &KeyDecl) -> Vec<TypeInfo> {
    match d {
        KeyDecl::Types(ts) => ts.iter().map(|t| type_info(*t)).collect(),
        KeyDecl::Typeof(es) => es
            .iter()
            .map(|e| expr_type(*e).expect("validated"))
            .collect(),
    }
}

fn width(types: &[TypeInfo]) -> u32 {
    if types.len() == 1 {
        types[0].len
    } else {
        types.iter().map(|t| padded(t.len)).sum()
    }
}

fn encode_set(w: &mut Writer, fam: u8, table: &str, i: usize, s: &Set, id: u32) {
    let key = decl_types(&s.key);
    let data = match &s.data {
        None => None,
        Some(SetData::Verdict) => Some(None),
        Some(SetData::Types(ts)) => Some(Some(decl_types(&KeyDecl::Types(ts.clone())))),
        Some(SetData::Typeof(es)) => Some(Some(decl_types(&KeyDecl::Typeof(es.clone())))),
    };
    let concat_interval = s.flags.interval && key.len() > 1;
    let mut flags = 0;
    if s.flags.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if data.is_some() {
        flags |= NFT_SET_MAP;
    }
    if s.flags.timeout {
        flags |= NFT_SET_TIMEOUT;
    }
    if s.flags.dynamic {
        flags |= NFT_SET_EVAL;
    }
    if concat_interval {
        flags |= NFT_SET_CONCAT;
    }
    let at = w.msg(Msg::NewSet, NLM_F_CREATE, fam, i);
    w.str(NFTA_SET_TABLE, table);
    w.str(NFTA_SET_NAME, &s.name);
    w.be32(NFTA_SET_FLAGS, flags);
    w.be32(NFTA_SET_KEY_TYPE, concat_id(&key));
    w.be32(NFTA_SET_KEY_LEN, width(&key));
    match &data {
        None => {}
        Some(None) => {
            w.be32(NFTA_SET_DATA_TYPE, VERDICT_TYPE);
            w.be32(NFTA_SET_DATA_LEN, 0);
        }
        Some(Some(d)) => {
            w.be32(NFTA_SET_DATA_TYPE, concat_id(d));
            w.be32(NFTA_SET_DATA_LEN, width(d));
        }
    }
    w.be32(NFTA_SET_ID, id);
    if let Some(t) = s.timeout {
        w.be64(NFTA_SET_TIMEOUT, t.as_millis() as u64);
    }
    if s.size.is_some() || concat_interval {
        let n = w.nest(NFTA_SET_DESC);
        if let Some(size) = s.size {
            w.be32(NFTA_SET_DESC_SIZE, size);
        }
        if concat_interval {
            let c = w.nest(NFTA_SET_DESC_CONCAT);
            for t in &key {
                let e = w.nest(NFTA_LIST_ELEM);
                w.be32(NFTA_SET_FIELD_LEN, t.len);
                w.end_nest(e);
            }
            w.end_nest(c);
        }
        w.end_nest(n);
    }
    w.attr(NFTA_SET_USERDATA, &set_udata(s, &key, data.as_ref()));
    w.finish(at);
}

/// The userdata nft 1.0.6 stores with a set (byte orders, `typeof` expressions, comment):
/// without it `nft list` would print types it cannot parse back.
fn set_udata(s: &Set, key: &[TypeInfo], data: Option<&Option<Vec<TypeInfo>>>) -> Vec<u8> {
    let order = |ts: &[TypeInfo]| {
        if ts.len() == 1 {
            ts[0].byteorder
        } else {
            BYTEORDER_NONE
        }
    };
    let mut u = Vec::new();
    udata_u32(&mut u, UDATA_SET_KEYBYTEORDER, order(key));
    if let Some(d) = data {
        udata_u32(
            &mut u,
            UDATA_SET_DATABYTEORDER,
            d.as_deref().map(order).unwrap_or(BYTEORDER_NONE),
        );
    }
    match &s.key {
        KeyDecl::Typeof(es) => typeof_udata(&mut u, UDATA_SET_KEY_TYPEOF, es),
        KeyDecl::Types(ts) if ts.len() > 1 => concat_marker(&mut u, UDATA_SET_KEY_TYPEOF),
        KeyDecl::Types(_) => {}
    }
    match &s.data {
        Some(SetData::Typeof(es)) => typeof_udata(&mut u, UDATA_SET_DATA_TYPEOF, es),
        Some(SetData::Types(ts)) if ts.len() > 1 => concat_marker(&mut u, UDATA_SET_DATA_TYPEOF),
        // nft writes a verdict "expression" for the data of a typeof-keyed map; without it
        // nft lists the key as `type 0` and cannot read its own listing back.
        Some(SetData::Verdict) if matches!(s.key, KeyDecl::Typeof(_)) => {
            udata_nest(&mut u, UDATA_SET_DATA_TYPEOF, |u| {
                udata_u32(u, 0, EXPR_VERDICT);
                udata_nest(u, 1, |_| {});
            })
        }
        _ => {}
    }
    if s.data.is_some() {
        udata_u32(&mut u, UDATA_SET_DATA_INTERVAL, 0);
    }
    if let Some(c) = &s.comment {
        udata_str(&mut u, UDATA_SET_COMMENT, c);
    }
    u
}

fn udata_u32(u: &mut Vec<u8>, ty: u8, v: u32) {
    u.push(ty);
    u.push(4);
    u.extend_from_slice(&v.to_ne_bytes());
}

fn udata_str(u: &mut Vec<u8>, ty: u8, s: &str) {
    u.push(ty);
    u.push((s.len() + 1) as u8);
    u.extend_from_slice(s.as_bytes());
    u.push(0);
}

fn udata_nest(u: &mut Vec<u8>, ty: u8, f: impl FnOnce(&mut Vec<u8>)) {
    u.push(ty);
    let at = u.len();
    u.push(0);
    f(u);
    u[at] = (u.len() - at - 1) as u8;
}

/// What nft stores for a `type a . b` concatenation: "a concatenation", no parts.
fn concat_marker(u: &mut Vec<u8>, ty: u8) {
    udata_nest(u, ty, |u| {
        udata_u32(u, 0, EXPR_CONCAT);
        udata_nest(u, 1, |_| {});
    });
}

/// `typeof` expressions as nft's `expr_ops.build_udata` write them.
fn typeof_udata(u: &mut Vec<u8>, ty: u8, es: &[Expr]) {
    udata_nest(u, ty, |u| {
        if es.len() == 1 {
            expr_udata(u, es[0]);
        } else {
            udata_u32(u, 0, EXPR_CONCAT);
            udata_nest(u, 1, |u| {
                for (i, e) in es.iter().enumerate() {
                    udata_nest(u, i as u8, |u| expr_udata(u, *e));
                }
            });
        }
    });
}

/// One expression: `{0: expr type, 1: {its attributes}}`.
fn expr_udata(u: &mut Vec<u8>, e: Expr) {
    // payload: {0: proto desc id, 1: field id} (nft's enum proto_desc_id and header fields).
    let payload = |desc: u32, field: u32| (EXPR_PAYLOAD, vec![desc, field]);
    let (kind, attrs) = match e {
        Expr::IpSaddr => payload(12, 11),
        Expr::IpDaddr => payload(12, 12),
        Expr::IpTtl => payload(12, 8),
        Expr::Ip6Saddr => payload(13, 8),
        Expr::Ip6Daddr => payload(13, 9),
        Expr::ThSport => payload(11, 1),
        Expr::ThDport => payload(11, 2),
        Expr::MetaL4Proto => (EXPR_META, vec![META_L4PROTO]),
        Expr::MetaMark => (EXPR_META, vec![META_MARK]),
        Expr::MetaIifname => (EXPR_META, vec![META_IIFNAME]),
        Expr::MetaOifname => (EXPR_META, vec![META_OIFNAME]),
        Expr::Numgen { modulus, offset } => (EXPR_NUMGEN, vec![NG_RANDOM, modulus, offset]),
        Expr::FibDaddrType | Expr::CtStatus | Expr::CtState => unreachable!("validated"),
    };
    udata_u32(u, 0, kind);
    udata_nest(u, 1, |u| {
        for (i, a) in attrs.iter().enumerate() {
            udata_u32(u, i as u8, *a);
        }
    });
}

/// The bytes of one value; `end` gives the last value of a prefix (for `KEY_END`).
fn value_bytes(v: &Value, end: bool, out: &mut Vec<u8>) {
    match v {
        Value::Ipv4(a) => out.extend_from_slice(&a.octets()),
        Value::Ipv6(a) => out.extend_from_slice(&a.octets()),
        Value::Proto(p) => out.push(*p),
        Value::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
        Value::Mark(m) | Value::Integer(m) => out.extend_from_slice(&m.to_ne_bytes()),
        Value::Byte(n) => out.push(*n),
        Value::AddrType(t) => out.extend_from_slice(&(*t as u32).to_ne_bytes()),
        Value::IfName(n) => {
            let mut b = [0u8; 16];
            b[..n.len()].copy_from_slice(n.as_bytes());
            out.extend_from_slice(&b);
        }
        Value::Ipv4Prefix(a, l) => {
            let (first, last) = v4_range(*a, *l);
            out.extend_from_slice(&if end { last } else { first }.octets());
        }
        Value::Ipv6Prefix(a, l) => {
            let (first, last) = v6_range(*a, *l);
            out.extend_from_slice(&if end { last } else { first }.octets());
        }
        Value::Ipv4Range(first, last) => {
            out.extend_from_slice(&if end { last } else { first }.octets());
        }
        Value::PortRange(first, last) => {
            out.extend_from_slice(&if end { last } else { first }.to_be_bytes());
        }
    }
}

fn v4_range(a: Ipv4Addr, len: u8) -> (Ipv4Addr, Ipv4Addr) {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    let first = u32::from(a) & mask;
    (Ipv4Addr::from(first), Ipv4Addr::from(first | !mask))
}

fn v6_range(a: Ipv6Addr, len: u8) -> (Ipv6Addr, Ipv6Addr) {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    let first = u128::from(a) & mask;
    (Ipv6Addr::from(first), Ipv6Addr::from(first | !mask))
}

/// Whether a value is a range (a prefix or a port range): interval sets only.
fn is_prefix(v: &Value) -> bool {
    matches!(
        v,
        Value::Ipv4Prefix(..) | Value::Ipv6Prefix(..) | Value::Ipv4Range(..) | Value::PortRange(..)
    )
}

/// A key, each component padded to 4 bytes when there are several.
fn key_bytes(vs: &[Value], end: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for v in vs {
        value_bytes(v, end, &mut out);
        if vs.len() > 1 {
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        }
    }
    out
}

/// `last + 1` of a single prefix (the rbtree interval end), `None` at the top of the
/// address space (the interval is then open-ended, as nft leaves it).
fn after_prefix(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Ipv4Prefix(a, l) => {
            let (_, last) = v4_range(*a, *l);
            u32::from(last)
                .checked_add(1)
                .map(|n| Ipv4Addr::from(n).octets().to_vec())
        }
        Value::Ipv6Prefix(a, l) => {
            let (_, last) = v6_range(*a, *l);
            u128::from(last)
                .checked_add(1)
                .map(|n| Ipv6Addr::from(n).octets().to_vec())
        }
        Value::Ipv4Range(_, last) => u32::from(*last)
            .checked_add(1)
            .map(|n| Ipv4Addr::from(n).octets().to_vec()),
        Value::PortRange(_, last) => last.checked_add(1).map(|n| n.to_be_bytes().to_vec()),
        _ => None,
    }
}

fn encode_elems(
    w: &mut Writer,
    fam: u8,
    table: &str,
    i: usize,
    set: &str,
    elems: &[Element],
    msg: Msg,
) {
    if elems.is_empty() {
        return;
    }
    let flags = if msg == Msg::NewSetElem {
        NLM_F_CREATE
    } else {
        0
    };
    let set_id = w.set_ids.get(set).copied();
    let open = |w: &mut Writer| {
        let at = w.msg(msg, flags, fam, i);
        w.str(NFTA_SET_ELEM_LIST_TABLE, table);
        w.str(NFTA_SET_ELEM_LIST_SET, set);
        if let Some(id) = set_id {
            w.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        let n = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        (at, n)
    };
    let (mut at, mut n) = open(w);
    // Like libnftnl, the list entries are numbered 1, 2, … in each message.
    let mut index = 0u16;
    for e in elems {
        let before = (w.buf.len(), index);
        encode_elem(w, e, msg == Msg::DelSetElem, &mut index);
        if w.buf.len() - n > ELEMENTS_LIMIT {
            w.buf.truncate(before.0);
            w.end_nest(n);
            w.finish(at);
            (at, n) = open(w);
            index = 0;
            encode_elem(w, e, msg == Msg::DelSetElem, &mut index);
        }
    }
    w.end_nest(n);
    w.finish(at);
}

fn encode_elem(w: &mut Writer, e: &Element, delete: bool, index: &mut u16) {
    let interval = e.key.iter().any(is_prefix);
    let data = |w: &mut Writer| {
        if delete {
            return;
        }
        match &e.data {
            None => {}
            Some(ElemData::Verdict(v)) => w.data_verdict(NFTA_SET_ELEM_DATA, v),
            Some(ElemData::Values(vs)) => w.data_value(NFTA_SET_ELEM_DATA, &key_bytes(vs, false)),
        }
    };
    *index += 1;
    let l = w.nest(*index);
    w.data_value(NFTA_SET_ELEM_KEY, &key_bytes(&e.key, false));
    if interval && e.key.len() > 1 {
        // pipapo (concatenated ranges): the range's last key in KEY_END.
        w.data_value(NFTA_SET_ELEM_KEY_END, &key_bytes(&e.key, true));
    }
    data(w);
    w.end_nest(l);
    if interval
        && e.key.len() == 1
        && let Some(end) = after_prefix(&e.key[0])
    {
        // rbtree: the range is [start, end) with a separate end element.
        *index += 1;
        let l = w.nest(*index);
        w.be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        w.data_value(NFTA_SET_ELEM_KEY, &end);
        w.end_nest(l);
    }
}

// --- rules ------------------------------------------------------------------------------

const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const META_MARK: u32 = 3;
const META_NFPROTO: u32 = 15;
const META_PROTOCOL: u32 = 1;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_L4PROTO: u32 = 16;
const CT_STATE: u32 = 0;
const CT_STATUS: u32 = 2;
const NG_RANDOM: u32 = 1;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const FIB_F_DADDR: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_GT: u32 = 4;
/// `NFTA_FWD_*` (net/netfilter/nft_fwd_netdev.c) and the IPv4 `NFPROTO_*`.
const NFTA_FWD_SREG_DEV: u16 = 1;
const NFTA_FWD_SREG_ADDR: u16 = 2;
const NFTA_FWD_NFPROTO: u16 = 3;
const NFPROTO_IPV4: u32 = 2;
const NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;
const LOOKUP_F_INV: u32 = 1;
const DYNSET_OP_UPDATE: u32 = 1;

/// nft's register number of 32-bit slot `i`.
fn reg(slot: u32) -> u32 {
    if slot.is_multiple_of(4) {
        NFT_REG_1 + slot / 4
    } else {
        NFT_REG32_00 + slot
    }
}

/// One `NFTA_LIST_ELEM { NAME, DATA { … } }` expression.
fn expr(w: &mut Writer, name: &str, body: impl FnOnce(&mut Writer)) {
    let l = w.nest(NFTA_LIST_ELEM);
    w.str(NFTA_EXPR_NAME, name);
    let d = w.nest(NFTA_EXPR_DATA);
    body(w);
    w.end_nest(d);
    w.end_nest(l);
}

/// Payload location of a header field: (base, offset, len).
fn payload_of(e: Expr) -> Option<(u32, u32, u32)> {
    Some(match e {
        Expr::IpSaddr => (PAYLOAD_NETWORK, 12, 4),
        Expr::IpDaddr => (PAYLOAD_NETWORK, 16, 4),
        Expr::IpTtl => (PAYLOAD_NETWORK, 8, 1),
        Expr::Ip6Saddr => (PAYLOAD_NETWORK, 8, 16),
        Expr::Ip6Daddr => (PAYLOAD_NETWORK, 24, 16),
        Expr::ThSport => (PAYLOAD_TRANSPORT, 0, 2),
        Expr::ThDport => (PAYLOAD_TRANSPORT, 2, 2),
        _ => return None,
    })
}

fn load_payload(w: &mut Writer, dreg: u32, base: u32, offset: u32, len: u32) {
    expr(w, "payload", |w| {
        w.be32(1, dreg); // NFTA_PAYLOAD_DREG
        w.be32(2, base); // NFTA_PAYLOAD_BASE
        w.be32(3, offset); // NFTA_PAYLOAD_OFFSET
        w.be32(4, len); // NFTA_PAYLOAD_LEN
    });
}

/// Loads `e` into register `dreg`.
fn load(w: &mut Writer, e: Expr, dreg: u32) {
    if let Some((base, offset, len)) = payload_of(e) {
        return load_payload(w, dreg, base, offset, len);
    }
    // Attribute order as libnftnl writes them (the kernel does not care).
    let meta = |w: &mut Writer, key: u32| {
        expr(w, "meta", |w| {
            w.be32(2, key); // NFTA_META_KEY
            w.be32(1, dreg); // NFTA_META_DREG
        })
    };
    let ct = |w: &mut Writer, key: u32| {
        expr(w, "ct", |w| {
            w.be32(2, key); // NFTA_CT_KEY
            w.be32(1, dreg); // NFTA_CT_DREG
        })
    };
    match e {
        Expr::MetaL4Proto => meta(w, META_L4PROTO),
        Expr::MetaMark => meta(w, META_MARK),
        Expr::MetaIifname => meta(w, META_IIFNAME),
        Expr::MetaOifname => meta(w, META_OIFNAME),
        Expr::CtState => ct(w, CT_STATE),
        Expr::CtStatus => ct(w, CT_STATUS),
        Expr::FibDaddrType => expr(w, "fib", |w| {
            w.be32(3, FIB_F_DADDR); // NFTA_FIB_FLAGS
            w.be32(2, FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
            w.be32(1, dreg); // NFTA_FIB_DREG
        }),
        Expr::Numgen { modulus, offset } => expr(w, "numgen", |w| {
            w.be32(1, dreg); // NFTA_NG_DREG
            w.be32(2, modulus); // NFTA_NG_MODULUS
            w.be32(3, NG_RANDOM); // NFTA_NG_TYPE
            // nft 1.0.6 sends the offset even when it is 0 (`--debug=mnl`, see the
            // pickers fixture in tests/encode.rs).
            w.be32(4, offset); // NFTA_NG_OFFSET
        }),
        _ => unreachable!("payload expressions handled above"),
    }
}

/// Loads a concatenation into consecutive slots from 0; returns the first register.
fn load_concat(w: &mut Writer, keys: &[Expr]) -> u32 {
    load_concat_at(w, keys, 0)
}

/// Loads a concatenation into consecutive slots from `first`; returns its register.
fn load_concat_at(w: &mut Writer, keys: &[Expr], first: u32) -> u32 {
    let mut slot = first;
    for k in keys {
        load(w, *k, reg(slot));
        slot += padded(expr_len(*k)) / 4;
    }
    reg(first)
}

fn cmp(w: &mut Writer, sreg: u32, op: CmpOp, data: &[u8]) {
    expr(w, "cmp", |w| {
        w.be32(1, sreg); // NFTA_CMP_SREG
        w.be32(
            2,
            match op {
                CmpOp::Eq => CMP_EQ,
                CmpOp::Ne => CMP_NEQ,
                CmpOp::Gt => CMP_GT,
            },
        ); // NFTA_CMP_OP
        w.data_value(3, data); // NFTA_CMP_DATA
    });
}

/// `with_op`: nft 1.0.6 names the operation (`NFT_BITWISE_BOOL`, the default) for an
/// explicit binary operation in the rule text (`meta mark & …`, `meta mark | …`), not
/// for implicit flag matches or prefixes.
fn bitwise(w: &mut Writer, r: u32, mask: &[u8], xor: &[u8], with_op: bool) {
    expr(w, "bitwise", |w| {
        w.be32(1, r); // NFTA_BITWISE_SREG
        w.be32(2, r); // NFTA_BITWISE_DREG
        if with_op {
            w.be32(6, 0); // NFTA_BITWISE_OP
        }
        w.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
        w.data_value(4, mask); // NFTA_BITWISE_MASK
        w.data_value(5, xor); // NFTA_BITWISE_XOR
    });
}

fn lookup(w: &mut Writer, set: &str, sreg: u32, dreg: Option<u32>, negate: bool) {
    let id = w.set_ids.get(set).copied();
    expr(w, "lookup", |w| {
        w.be32(2, sreg); // NFTA_LOOKUP_SREG
        if let Some(d) = dreg {
            w.be32(3, d); // NFTA_LOOKUP_DREG
        }
        w.str(1, set); // NFTA_LOOKUP_SET
        if let Some(id) = id {
            w.be32(4, id); // NFTA_LOOKUP_SET_ID
        }
        if negate {
            w.be32(5, LOOKUP_F_INV); // NFTA_LOOKUP_FLAGS
        }
    });
}

fn immediate_value(w: &mut Writer, dreg: u32, data: &[u8]) {
    expr(w, "immediate", |w| {
        w.be32(1, dreg); // NFTA_IMMEDIATE_DREG
        w.data_value(2, data); // NFTA_IMMEDIATE_DATA
    });
}

/// The network-protocol dependencies nft adds where a table sees more than one network
/// protocol: before the first statement of a rule that reads an IPv4 (IPv6) header field,
/// in inet tables `meta nfproto ipv4` (`ipv6`), in netdev tables `meta protocol ip`
/// (`ip6`, the frame's EtherType) — otherwise the payload offsets would be read from
/// packets of the other protocol. (`nft --debug=netlink`: `[ meta load nfproto => reg 1 ]
/// [ cmp eq reg 1 0x0000000a ]`; netdev: `[ meta load protocol => reg 1 ] [ cmp eq reg 1
/// 0x00000008 ]`.)
#[derive(Default)]
struct Deps {
    by: DepBy,
    v4: bool,
    v6: bool,
}

/// Which dependency a table's family needs (none in ip and ip6 tables).
#[derive(Default, PartialEq)]
enum DepBy {
    #[default]
    None,
    NfProto,
    EtherType,
}

impl Deps {
    fn before(&mut self, w: &mut Writer, s: &Stmt) {
        if self.by == DepBy::None {
            return;
        }
        let exprs: &[Expr] = match s {
            Stmt::Match { expr, .. } | Stmt::MatchBits { expr, .. } => std::slice::from_ref(expr),
            Stmt::InSet { keys, .. }
            | Stmt::Vmap { keys, .. }
            | Stmt::DnatMap { keys, .. }
            | Stmt::SetUpdate { keys, .. }
            | Stmt::Fwd {
                to: FwdTo::Map { keys, .. },
                ..
            } => keys,
            Stmt::Fwd {
                to: FwdTo::Key(e), ..
            } => std::slice::from_ref(e),
            _ => &[],
        };
        let v4 = exprs
            .iter()
            .any(|e| matches!(e, Expr::IpSaddr | Expr::IpDaddr | Expr::IpTtl));
        let v6 = exprs
            .iter()
            .any(|e| matches!(e, Expr::Ip6Saddr | Expr::Ip6Daddr));
        let ether = self.by == DepBy::EtherType;
        for (need, done, nfproto, ethertype) in [
            (v4, &mut self.v4, 2u8, 0x0800u16),
            (v6, &mut self.v6, 10u8, 0x86dd),
        ] {
            if need && !*done {
                *done = true;
                let r1 = reg(0);
                let key = if ether { META_PROTOCOL } else { META_NFPROTO };
                expr(w, "meta", |w| {
                    w.be32(2, key); // NFTA_META_KEY
                    w.be32(1, r1); // NFTA_META_DREG
                });
                if ether {
                    cmp(w, r1, CmpOp::Eq, &ethertype.to_be_bytes());
                } else {
                    cmp(w, r1, CmpOp::Eq, &[nfproto]);
                }
            }
        }
    }
}

fn encode_stmt(w: &mut Writer, s: &Stmt) {
    let r1 = reg(0);
    match s {
        Stmt::Match {
            expr: e,
            op,
            value: v,
        } => match v {
            Value::Ipv4Prefix(..) | Value::Ipv6Prefix(..) => {
                let (base, offset, len) = payload_of(*e).expect("validated");
                let plen = match v {
                    Value::Ipv4Prefix(_, l) | Value::Ipv6Prefix(_, l) => u32::from(*l),
                    _ => unreachable!(),
                };
                let net = key_bytes(std::slice::from_ref(v), false);
                if plen.is_multiple_of(8) {
                    // nft loads only the prefix's bytes when the prefix is byte-aligned.
                    load_payload(w, r1, base, offset, plen / 8);
                    cmp(w, r1, *op, &net[..(plen / 8) as usize]);
                } else {
                    load_payload(w, r1, base, offset, len);
                    let mut mask = vec![0u8; len as usize];
                    for (bit, byte) in (0..len * 8).map(|b| (b, (b / 8) as usize)) {
                        if bit < plen {
                            mask[byte] |= 0x80 >> (bit % 8);
                        }
                    }
                    bitwise(w, r1, &mask, &vec![0u8; len as usize], false);
                    cmp(w, r1, *op, &net);
                }
            }
            _ => {
                load(w, *e, r1);
                let mut b = Vec::new();
                value_bytes(v, false, &mut b);
                cmp(w, r1, *op, &b);
            }
        },
        Stmt::MatchBits {
            expr: e,
            mask,
            op,
            value,
        } => {
            load(w, *e, r1);
            let flag_form =
                *op == CmpOp::Ne && *value == 0 && matches!(e, Expr::CtState | Expr::CtStatus);
            bitwise(w, r1, &mask.to_ne_bytes(), &0u32.to_ne_bytes(), !flag_form);
            cmp(w, r1, *op, &value.to_ne_bytes());
        }
        Stmt::InSet { keys, set, negate } => {
            let r = load_concat(w, keys);
            lookup(w, set, r, None, *negate);
        }
        Stmt::Vmap { keys, map } => {
            let r = load_concat(w, keys);
            lookup(w, map, r, Some(NFT_REG_VERDICT), false);
        }
        Stmt::Dnat { addr, port } => {
            let (family, bytes) = match addr {
                IpAddr::V4(a) => (2u32, a.octets().to_vec()),
                IpAddr::V6(a) => (10u32, a.octets().to_vec()),
            };
            immediate_value(w, r1, &bytes);
            let r2 = reg(4);
            if let Some(p) = port {
                immediate_value(w, r2, &p.to_be_bytes());
            }
            expr(w, "nat", |w| {
                w.be32(1, NAT_DNAT); // NFTA_NAT_TYPE
                w.be32(2, family); // NFTA_NAT_FAMILY
                w.be32(3, r1); // NFTA_NAT_REG_ADDR_MIN
                if port.is_some() {
                    w.be32(5, r2); // NFTA_NAT_REG_PROTO_MIN
                    w.be32(7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
                }
            });
        }
        Stmt::DnatMap { keys, map, ipv6 } => {
            let r = load_concat(w, keys);
            lookup(w, map, r, Some(r), false);
            let (family, addr_slots) = if *ipv6 { (10u32, 4) } else { (2u32, 1) };
            expr(w, "nat", |w| {
                w.be32(1, NAT_DNAT);
                w.be32(2, family);
                w.be32(3, r);
                w.be32(5, reg(addr_slots));
            });
        }
        Stmt::Masquerade { fully_random } => expr(w, "masq", |w| {
            if *fully_random {
                w.be32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY); // NFTA_MASQ_FLAGS
            }
        }),
        Stmt::MarkSetOr(bits) => {
            load(w, Expr::MetaMark, r1);
            bitwise(w, r1, &(!bits).to_ne_bytes(), &bits.to_ne_bytes(), true);
            expr(w, "meta", |w| {
                w.be32(2, META_MARK); // NFTA_META_KEY
                w.be32(3, r1); // NFTA_META_SREG
            });
        }
        Stmt::Reject(r) => {
            let (ty, code) = match r {
                Reject::IcmpPortUnreachable => (0u32, 3u8),
                Reject::TcpReset => (1, 0),
                Reject::IcmpxPortUnreachable => (2, 1),
                Reject::IcmpAdminProhibited => (0, 13),
            };
            expr(w, "reject", |w| {
                w.be32(1, ty); // NFTA_REJECT_TYPE
                w.attr(2, &[code]); // NFTA_REJECT_ICMP_CODE
            });
        }
        Stmt::Counter => expr(w, "counter", |_| {}),
        Stmt::SetUpdate { set, keys, timeout } => {
            let r = load_concat(w, keys);
            let id = w.set_ids.get(set).copied();
            expr(w, "dynset", |w| {
                w.be32(4, r); // NFTA_DYNSET_SREG_KEY
                w.be32(3, DYNSET_OP_UPDATE); // NFTA_DYNSET_OP
                if let Some(t) = timeout {
                    w.be64(6, t.as_millis() as u64); // NFTA_DYNSET_TIMEOUT
                }
                w.str(1, set); // NFTA_DYNSET_SET_NAME
                if let Some(id) = id {
                    w.be32(2, id); // NFTA_DYNSET_SET_ID
                }
            });
        }
        Stmt::Fwd { to, device } => {
            // As nft: the ifindex (host order) into reg 1, the address into reg 2 (a map
            // lookup writes its data over its key), then `fwd` reading both.
            let r2 = reg(4);
            immediate_value(w, r1, &device.index.to_ne_bytes());
            match to {
                FwdTo::Key(e) => load(w, *e, r2),
                FwdTo::Map { keys, map } => {
                    let r = load_concat_at(w, keys, 4);
                    lookup(w, map, r, Some(r), false);
                }
            }
            expr(w, "fwd", |w| {
                w.be32(NFTA_FWD_SREG_DEV, r1);
                w.be32(NFTA_FWD_SREG_ADDR, r2);
                w.be32(NFTA_FWD_NFPROTO, NFPROTO_IPV4);
            });
        }
        Stmt::NoTrack => {
            // No attributes and, as libnftnl writes it, no NFTA_EXPR_DATA at all.
            let l = w.nest(NFTA_LIST_ELEM);
            w.str(NFTA_EXPR_NAME, "notrack");
            w.end_nest(l);
        }
        Stmt::Verdict(v) => expr(w, "immediate", |w| {
            w.be32(1, NFT_REG_VERDICT);
            w.data_verdict(2, v);
        }),
    }
}

// --- validation -------------------------------------------------------------------------

/// Width in bytes a value encodes to (prefixes: their address width).
fn value_len(v: &Value) -> u32 {
    match v {
        Value::Ipv4(_) | Value::Ipv4Prefix(..) | Value::Ipv4Range(..) => 4,
        Value::Ipv6(_) | Value::Ipv6Prefix(..) => 16,
        Value::Proto(_) | Value::Byte(_) => 1,
        Value::Port(_) | Value::PortRange(..) => 2,
        Value::Mark(_) | Value::Integer(_) | Value::AddrType(_) => 4,
        Value::IfName(_) => 16,
    }
}

/// Checks what the encoder relies on; each error names the op.
pub fn validate(tx: &Transaction) -> Result<(), EncodeError> {
    if !is_valid_name(&tx.table) {
        return Err(EncodeError::Name {
            op: 0,
            name: tx.table.clone(),
        });
    }
    for (i, op) in tx.ops.iter().enumerate() {
        validate_op(tx.family, i, op)?;
    }
    Ok(())
}

/// [`validate`] for operation `i` of a transaction on a `family` table.
fn validate_op(family: Family, i: usize, op: &Op) -> Result<(), EncodeError> {
    let name = |op: usize, n: &str| {
        if is_valid_name(n) {
            Ok(())
        } else {
            Err(EncodeError::Name {
                op,
                name: n.to_string(),
            })
        }
    };
    let bad = |op: usize, what: String| Err(EncodeError::Invalid { op, what });
    match op {
        Op::AddTable | Op::DeleteTable => {}
        Op::AddChain(c) => {
            name(i, &c.name)?;
            if let Some(b) = &c.base
                && let Err(what) = check_base(family, b)
            {
                return bad(i, format!("chain {}: {what}", c.name));
            }
        }
        Op::FlushChain(c) | Op::DeleteChain(c) => name(i, c)?,
        Op::FlushSet(s) | Op::FlushMap(s) | Op::DeleteSet(s) => name(i, s)?,
        Op::AddRule { chain, rule } => {
            name(i, chain)?;
            if let Err(what) = check_family(family, rule) {
                return bad(i, what);
            }
            if let Some(c) = &rule.comment
                && !comment_ok(c)
            {
                return bad(i, format!("comment {c:?}: at most 128 bytes, no '\"'"));
            }
            for s in &rule.stmts {
                if let Err(what) = check_stmt(s) {
                    return bad(i, what);
                }
            }
        }
        Op::AddSet(s) => {
            name(i, &s.name)?;
            if let Err(what) = check_set(s) {
                return bad(i, what);
            }
        }
        Op::AddElements { set, elems } | Op::DeleteElements { set, elems } => {
            name(i, set)?;
            for e in elems {
                if let Err(what) = check_elem(e) {
                    return bad(i, what);
                }
            }
        }
    }
    Ok(())
}

/// IPv4 header fields only in ip/inet/netdev tables, IPv6 ones only in ip6/inet/netdev
/// tables; the same for NAT addresses, and no NAT at all in netdev tables; `fwd` only in
/// netdev tables.
fn check_family(family: Family, rule: &Rule) -> Result<(), String> {
    let (v4_ok, v6_ok) = match family {
        Family::Ip => (true, false),
        Family::Ip6 => (false, true),
        Family::Inet | Family::Netdev => (true, true),
    };
    for s in &rule.stmts {
        let (exprs, nat_v4, nat_v6): (&[Expr], bool, bool) = match s {
            Stmt::Match { expr, .. } | Stmt::MatchBits { expr, .. } => {
                (std::slice::from_ref(expr), false, false)
            }
            Stmt::InSet { keys, .. } | Stmt::Vmap { keys, .. } | Stmt::SetUpdate { keys, .. } => {
                (keys, false, false)
            }
            Stmt::DnatMap { keys, ipv6, .. } => (keys, !ipv6, *ipv6),
            Stmt::Fwd {
                to: FwdTo::Map { keys, .. },
                ..
            } => (keys, true, false),
            Stmt::Fwd {
                to: FwdTo::Key(e), ..
            } => (std::slice::from_ref(e), true, false),
            Stmt::Dnat { addr, .. } => (&[], addr.is_ipv4(), addr.is_ipv6()),
            _ => (&[], false, false),
        };
        let v4 = nat_v4
            || exprs
                .iter()
                .any(|e| matches!(e, Expr::IpSaddr | Expr::IpDaddr | Expr::IpTtl));
        let v6 = nat_v6
            || exprs
                .iter()
                .any(|e| matches!(e, Expr::Ip6Saddr | Expr::Ip6Daddr));
        let nat_here = family == Family::Netdev
            && matches!(
                s,
                Stmt::Dnat { .. } | Stmt::DnatMap { .. } | Stmt::Masquerade { .. }
            );
        if family != Family::Netdev && matches!(s, Stmt::Fwd { .. }) {
            return Err(format!(
                "{s:?}: fwd is only available in netdev tables, not in a {family:?} table"
            ));
        }
        if (v4 && !v4_ok) || (v6 && !v6_ok) || nat_here {
            return Err(format!("{s:?} does not fit a {family:?} table"));
        }
    }
    Ok(())
}

/// A netdev table's base chains hook `ingress` on one device, of type filter; the other
/// families' chains hook the five IP hooks, without a device.
fn check_base(family: Family, b: &BaseChain) -> Result<(), String> {
    let netdev = family == Family::Netdev;
    if netdev != (b.hook == Hook::Ingress) {
        return Err(format!("hook {:?} does not fit a {family:?} table", b.hook));
    }
    if netdev && b.kind != ChainKind::Filter {
        return Err("a netdev chain is of type filter".into());
    }
    match &b.device {
        None if netdev => Err("an ingress chain needs a device".into()),
        Some(_) if !netdev => Err("only ingress chains take a device".into()),
        Some(d)
            if d.is_empty()
                || d.len() > 15
                || d.contains(['"', '/', '\0'])
                || d.contains(char::is_whitespace) =>
        {
            Err(format!(
                "device {d:?}: 1 to 15 bytes, no '\"', '/' or whitespace"
            ))
        }
        _ => Ok(()),
    }
}

fn comment_ok(c: &str) -> bool {
    c.len() <= 128 && !c.contains('"') && !c.contains('\0')
}

fn check_values(vs: &[Value]) -> Result<(), String> {
    if vs.is_empty() {
        return Err("empty key".into());
    }
    for v in vs {
        match v {
            Value::IfName(n) if n.is_empty() || n.len() > 15 || n.contains(['"', '\0']) => {
                return Err(format!("interface name {n:?}"));
            }
            Value::Ipv4Prefix(_, l) if *l > 32 => return Err(format!("prefix /{l}")),
            Value::Ipv6Prefix(_, l) if *l > 128 => return Err(format!("prefix /{l}")),
            Value::PortRange(a, b) if a > b => return Err(format!("port range {a}-{b}")),
            Value::Ipv4Range(a, b) if a > b => return Err(format!("address range {a}-{b}")),
            _ => {}
        }
    }
    Ok(())
}

fn check_elem(e: &Element) -> Result<(), String> {
    check_values(&e.key)?;
    match &e.data {
        Some(ElemData::Values(vs)) => {
            check_values(vs)?;
            if vs.iter().any(is_prefix) {
                return Err("prefix in map data".into());
            }
        }
        Some(ElemData::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) if !is_valid_name(c) => {
            return Err(format!("chain name {c:?}"));
        }
        _ => {}
    }
    Ok(())
}

fn check_set(s: &Set) -> Result<(), String> {
    let check_exprs = |es: &[Expr]| {
        if es.is_empty() {
            return Err("empty typeof".to_string());
        }
        match es.iter().find(|e| expr_type(**e).is_none()) {
            Some(e) => Err(format!("typeof {e:?} is not supported")),
            None => Ok(()),
        }
    };
    match &s.key {
        KeyDecl::Types(ts) if ts.is_empty() => return Err("empty key".into()),
        KeyDecl::Typeof(es) => check_exprs(es)?,
        _ => {}
    }
    match (&s.key, &s.data) {
        (_, Some(SetData::Types(ts))) if ts.is_empty() => return Err("empty data".into()),
        (KeyDecl::Types(_), Some(SetData::Typeof(_))) => {
            return Err("typeof data needs a typeof key".into());
        }
        (_, Some(SetData::Typeof(es))) => check_exprs(es)?,
        _ => {}
    }
    if s.timeout.is_some() && !s.flags.timeout {
        return Err("a timeout needs flags timeout".into());
    }
    if let Some(c) = &s.comment
        && !comment_ok(c)
    {
        return Err(format!("comment {c:?}: at most 128 bytes, no '\"'"));
    }
    Ok(())
}

fn check_stmt(s: &Stmt) -> Result<(), String> {
    let keys_ok = |keys: &[Expr]| {
        if keys.is_empty() {
            return Err("no key expression".to_string());
        }
        match keys.iter().find(|e| expr_type(**e).is_none()) {
            Some(e) => Err(format!("{e:?} cannot key a set")),
            None => Ok(()),
        }
    };
    let chain_ok = |v: &Verdict| match v {
        Verdict::Jump(c) | Verdict::Goto(c) if !is_valid_name(c) => {
            Err(format!("chain name {c:?}"))
        }
        _ => Ok(()),
    };
    match s {
        Stmt::Match { expr, op, value } => {
            check_values(std::slice::from_ref(value))?;
            if *op == CmpOp::Gt
                && !matches!(
                    value,
                    Value::Byte(_)
                        | Value::Proto(_)
                        | Value::Port(_)
                        | Value::Ipv4(_)
                        | Value::Ipv6(_)
                )
            {
                // Prefixes and ranges are not one value; host-order integers would need
                // nft's byteorder conversion (the kernel compares bytes).
                return Err(format!(
                    "{expr:?} > {value:?}: '>' needs a single scalar value"
                ));
            }
            if *expr == Expr::IpTtl && !matches!(value, Value::Byte(_)) {
                return Err(format!("value {value:?} does not fit {expr:?} (a byte)"));
            }
            if is_prefix(value) {
                let want = match value {
                    Value::Ipv4Prefix(_, l) | Value::Ipv6Prefix(_, l) => *l,
                    _ => 0,
                };
                let fits = matches!(
                    (expr, value),
                    (Expr::IpSaddr | Expr::IpDaddr, Value::Ipv4Prefix(..))
                        | (Expr::Ip6Saddr | Expr::Ip6Daddr, Value::Ipv6Prefix(..))
                );
                if !fits || want == 0 {
                    return Err(format!("prefix {value:?} against {expr:?}"));
                }
            } else if value_len(value) != expr_len(*expr) {
                return Err(format!("value {value:?} does not fit {expr:?}"));
            }
            Ok(())
        }
        Stmt::MatchBits { expr, op, .. } => {
            if expr_len(*expr) != 4 || payload_of(*expr).is_some() {
                return Err(format!("bit match on {expr:?} (32-bit meta/ct only)"));
            }
            if *op == CmpOp::Gt {
                return Err(format!(
                    "bit match on {expr:?}: '>' is not a bit comparison"
                ));
            }
            Ok(())
        }
        Stmt::Fwd { to, device } => {
            let d = &device.name;
            if d.is_empty()
                || d.len() > 15
                || d.contains(['"', '/', '\0'])
                || d.contains(char::is_whitespace)
            {
                return Err(format!(
                    "fwd device {d:?}: 1 to 15 bytes, no '\"', '/' or whitespace"
                ));
            }
            if device.index == 0 {
                return Err(format!("fwd device {d:?}: ifindex 0"));
            }
            match to {
                FwdTo::Key(Expr::IpSaddr | Expr::IpDaddr) => Ok(()),
                FwdTo::Key(e) => Err(format!("fwd ip to {e:?}: not an IPv4 address")),
                FwdTo::Map { keys, map } => {
                    keys_ok(keys)?;
                    name_ok(map)
                }
            }
        }
        Stmt::InSet { keys, set, .. } | Stmt::Vmap { keys, map: set } => {
            keys_ok(keys)?;
            name_ok(set)
        }
        Stmt::DnatMap { keys, map, .. } => {
            keys_ok(keys)?;
            name_ok(map)
        }
        Stmt::SetUpdate { set, keys, .. } => {
            keys_ok(keys)?;
            name_ok(set)
        }
        Stmt::Verdict(v) => chain_ok(v),
        Stmt::Dnat { .. }
        | Stmt::Masquerade { .. }
        | Stmt::MarkSetOr(_)
        | Stmt::Reject(_)
        | Stmt::Counter
        | Stmt::NoTrack => Ok(()),
    }
}

fn name_ok(n: &str) -> Result<(), String> {
    if is_valid_name(n) {
        Ok(())
    } else {
        Err(format!("name {n:?}"))
    }
}
