//! Pure: cluster DNS for podnet — the Kubernetes DNS-based service discovery
//! specification (schema 1.1.0) as bytes in, bytes out. No I/O, no clock, no async; the
//! server (`podnet-dns-server`) owns the sockets, the watches and the time.
//!
//! - [`wire`] — the message codec of the hot path (RFC 1035, EDNS0).
//! - [`zone`] — Services + EndpointSlices → the zone, each answer pre-encoded per
//!   (lowercase name, type): a query is one hash lookup and one copy.
//! - [`objects`] — the few fields of Services and EndpointSlices the zone needs.
//! - [`state`] — the zone kept up to date object by object: a change re-encodes only
//!   the names it touches; each commit is a snapshot sharing the unchanged shards.
//! - [`cache`] — forwarded answers, bounded, TTLs decremented on hit, negative caching by
//!   the SOA (RFC 2308).
//!
//! [`answer_query`] ties them together for one datagram: what the server does per query
//! when the name is podnet's.
//!
//! How it differs from CoreDNS (kubernetes + cache + forward plugins): CoreDNS answers
//! from informer caches through a plugin chain, allocating `dns.Msg`/`dns.RR` objects and
//! packing (compressing) every reply; podnet builds the zone's wire bytes when the cluster
//! changes and copies them per query, and replays cached upstream answers as bytes. The
//! records served are the same (see [`zone`] for the few CoreDNS options not provided).

pub mod cache;
pub mod objects;
pub mod state;
pub mod wire;
pub mod zone;

pub use cache::{Cache, Stored};
pub use objects::{ServiceInfo, SliceInfo};
pub use state::ZoneState;
pub use wire::{Query, QueryError, Rcode};
pub use zone::{Answer, Problem, Resolution, Zone, ZoneConfig, build_zone};

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `out` holds the reply, with this rcode.
    Reply(Rcode),
    /// Malformed beyond answering (no header, or a response): say nothing.
    Drop,
    /// Not podnet's name: forward it (the query parsed fine).
    Forward,
    /// An alias to follow: resolve the target (lowercase wire form) for the query's type,
    /// then [`Zone::write_alias_reply`].
    Alias,
}

/// Answers one query from the zone when it can: parse errors (FORMERR/NOTIMP/BADVERS),
/// refused classes and transfers, zone answers (NOERROR/NODATA/NXDOMAIN); `Forward`
/// otherwise. `zone` is `None` until the first zone is built: names in `apex` then get
/// SERVFAIL (nothing is answered from an incomplete view of the cluster). Over `tcp` a
/// reply may be 65535 bytes long, over UDP as long as the client's UDP size.
pub fn answer_query(
    zone: Option<&Zone>,
    apex: &[u8],
    packet: &[u8],
    tcp: bool,
    out: &mut Vec<u8>,
) -> Outcome {
    let q = match wire::parse_query(packet) {
        Ok(q) => q,
        Err(e) => {
            return match wire::error_reply(out, e) {
                Some(rcode) => Outcome::Reply(rcode),
                None => Outcome::Drop,
            };
        }
    };
    if q.qclass != wire::CLASS_IN && q.qclass != wire::CLASS_ANY
        || q.qtype == wire::rtype::AXFR
        || q.qtype == wire::rtype::IXFR
    {
        wire::rcode_reply(out, &q, Rcode::Refused);
        return Outcome::Reply(Rcode::Refused);
    }
    let mut buf = [0u8; wire::MAX_NAME];
    let lname = q.lower_name(&mut buf);
    let limit = if tcp { 65535 } else { q.max_udp() };
    let Some(zone) = zone else {
        if wire::ends_with_name(lname, apex) {
            wire::rcode_reply(out, &q, Rcode::ServFail);
            return Outcome::Reply(Rcode::ServFail);
        }
        return Outcome::Forward;
    };
    let res = zone.resolve(lname, q.qtype);
    match res {
        Resolution::Forward => Outcome::Forward,
        Resolution::Cname { .. } => Outcome::Alias,
        _ => match zone.write_reply(&q, &res, limit, out) {
            Some(rcode) => Outcome::Reply(rcode),
            None => Outcome::Forward,
        },
    }
}
