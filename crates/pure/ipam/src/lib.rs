//! Pure: IP address management. Validated pools ([`Pool`]) and the allocation table
//! ([`Allocations`]) with host-local's semantics, and these improvements:
//!
//! - one allocation table per network, written atomically by the store (apply layer), so a
//!   crash leaves either the old or the new table, never a half-written one;
//! - every operation is a pure function of (pool, table) — the store only loads and saves;
//! - free-address search is bounded by the number of allocations, never by the size of the
//!   range (an exhausted IPv6 /64 answers at once);
//! - round-robin: the search starts after the address reserved last, so an address that was
//!   just freed is not handed out again until the range wraps around.

mod alloc;
mod config;

pub use alloc::{Allocations, Lease, Owner};
pub use config::{IpamSpec, Pool, Range, RangeSet, RangeSpec, StaticRoute};

use std::net::IpAddr;

/// Errors of IPAM logic; each names the address or range at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM configuration: {0}")]
    InvalidConfig(String),
    #[error("no free address left in range set {set}")]
    Exhausted { set: String },
    #[error("requested address {ip} is not in any configured range")]
    OutsideRanges { ip: IpAddr },
    #[error("requested address {ip} is already allocated to container {holder}")]
    Taken { ip: IpAddr, holder: String },
    #[error("more than one requested address falls in range set {set}")]
    TwoForOneSet { set: String },
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;
