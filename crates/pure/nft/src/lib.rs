//! Pure: nf_tables as typed data — the IR of tables, chains, sets, maps, rules and
//! transactions ([`ir`]), its canonical `nft -f` text ([`render`]), and its encoding into
//! one nf_tables netlink batch ([`encode`]). No I/O: podnet-netlink's `nftables` module
//! sends the bytes.
//!
//! Why podnet speaks netlink instead of running `nft`, and how this improves on
//! kube-proxy's nftables proxier (measured on this machine, see FIELD-NOTES):
//! - **No dump before a transaction.** `nft -f` lists every chain of the table before
//!   applying even one element change (`nf_tables_dump_chains`): 7–14 s per change with
//!   50k per-service chains. An encoded batch is sent as is; nothing is read back.
//! - **No anonymous per-service sets.** kube-proxy gives each service an anonymous
//!   `numgen … vmap { 0 : goto ep1, … }`; binding anonymous sets is quadratic in the kernel
//!   (`__nft_set_trans_bind`: 10k services 40 s, 50k 16 min). podnet's IR has named sets
//!   only: endpoints live in a few shared maps, each indexed by
//!   `numgen random mod N offset O` where each service owns a block of offsets. A named
//!   map must not be bound by too many rules either (the kernel checks every element
//!   added against every binding): [`example`] shards them, 128 services per map, which
//!   loads 50k services with 250k endpoints in about 3 s (kernel 6.18, release build).
//! - **Incremental updates.** Adding or removing an endpoint is one element operation in
//!   a batch — elements are packed many per message (under 64 KiB each), so a full load
//!   of 250k elements is a few hundred messages, and a change is a few hundred bytes.
//! - **Atomic.** A batch is one nf_tables transaction: it applies whole or not at all;
//!   the full replace is `add table; delete table; add table …` in one batch
//!   ([`Transaction::replace_table`]), so conntrack NAT bindings and traffic never see a
//!   moment without rules.
//!
//! The encoding mirrors nft 1.0.6 byte for byte where it matters (register numbering,
//! set userdata with byte orders and `typeof` expressions), so `nft list` prints what
//! podnet wrote exactly as if nft had written it.

pub mod diff;
pub mod encode;
pub mod example;
pub mod ir;
pub mod render;
mod types;

pub use diff::diff_tables;
pub use encode::{Batch, BatchEncoder, EncodeError, encode_transaction, validate};
pub use ir::*;
pub use render::{family_name, render_op, render_rule, render_table, render_transaction};
