//! Pure: the cache of forwarded answers — bounded, keyed by (lowercase name, type, class),
//! time passed in (no clock here).
//!
//! An upstream response is kept as a [`Stored`]: its records with every name
//! decompressed, so they are position independent and a hit is one copy into the reply
//! plus a TTL patch per record (each TTL decremented by the seconds since the answer was
//! stored). The OPT record is dropped (RFC 6891: never cached); the reply gets the
//! client's own question bytes and an OPT only if the client sent one.
//!
//! How long: a positive answer for the smallest TTL of its answer and authority records
//! (at most [`MAX_TTL`]); a negative one (NXDOMAIN, or NOERROR without answers) for
//! min(SOA TTL, SOA MINIMUM) of the SOA in its authority section (RFC 2308 §5, at most
//! [`MAX_NEGATIVE_TTL`]); one without an SOA, SERVFAIL, truncated answers and TTL 0 are
//! not cached. When full, the oldest entry is evicted (FIFO: cheap and good enough for
//! answers that expire within seconds to an hour; CoreDNS evicts at random).

use crate::wire::{self, Query, Rcode, rtype};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// The longest a positive answer is cached (CoreDNS's `cache` default).
pub const MAX_TTL: u32 = 3600;
/// The longest a negative answer is cached (CoreDNS's `cache` default).
pub const MAX_NEGATIVE_TTL: u32 = 1800;
/// The longest cache key: a name, type and class.
pub const MAX_KEY: usize = wire::MAX_NAME + 4;

/// A response ready to be replayed to any client asking the same question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    flags: u16,
    counts: [u16; 3],
    body: Box<[u8]>,
    /// (offset in body, original TTL) per record.
    ttls: Box<[(u32, u32)]>,
    /// How long it may be cached, seconds (0: not at all).
    ttl: u32,
    /// The question name (lowercase); records owned by it are stored with the pointer
    /// `0xC00C` to the reply's question, so a replay echoes the client's spelling.
    qname: Box<[u8]>,
    /// Where each record starts in `body`.
    starts: Box<[u32]>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl Stored {
    /// Reads a response; `None` if it cannot be read.
    pub fn from_response(msg: &[u8]) -> Option<Stored> {
        let flags = be16(msg, 2)?;
        let qd = be16(msg, 4)?;
        let counts = [be16(msg, 6)?, be16(msg, 8)?, be16(msg, 10)?];
        if qd != 1 {
            return None;
        }
        let mut qname = Vec::new();
        let mut p = wire::read_name(msg, wire::HEADER_LEN, &mut qname)? + 4;
        if p > msg.len() {
            return None;
        }
        qname.make_ascii_lowercase();
        let mut starts = Vec::new();
        let mut body = Vec::with_capacity(msg.len() * 2);
        let mut ttls = Vec::new();
        let mut out_counts = counts;
        let mut min_ttl = u32::MAX;
        let mut soa_ttl = None;
        for (section, &n) in counts.iter().enumerate() {
            for _ in 0..n {
                let rec_start = body.len();
                p = wire::read_name(msg, p, &mut body)?;
                if body[rec_start..].eq_ignore_ascii_case(&qname) {
                    body.truncate(rec_start);
                    body.extend_from_slice(&[0xC0, wire::HEADER_LEN as u8]);
                }
                let t = be16(msg, p)?;
                let ttl = be32(msg, p + 4)?;
                let rdlen = be16(msg, p + 8)? as usize;
                let rdata = p + 10;
                let end = rdata + rdlen;
                if end > msg.len() {
                    return None;
                }
                if t == rtype::OPT {
                    body.truncate(rec_start);
                    out_counts[section] -= 1;
                    p = end;
                    continue;
                }
                starts.push(rec_start as u32);
                body.extend_from_slice(&msg[p..p + 4]);
                ttls.push((body.len() as u32, ttl));
                body.extend_from_slice(&msg[p + 4..p + 8]);
                let len_at = body.len();
                body.extend_from_slice(&[0, 0]);
                copy_rdata(msg, t, rdata, end, &mut body)?;
                let len = (body.len() - len_at - 2) as u16;
                body[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
                if section < 2 {
                    min_ttl = min_ttl.min(ttl);
                }
                if section == 1 && t == rtype::SOA && rdlen >= 20 {
                    soa_ttl = Some(ttl.min(be32(msg, end - 4)?));
                }
                p = end;
            }
        }
        let rcode = Rcode::from_header(flags);
        let negative = rcode == Rcode::NxDomain || (rcode == Rcode::NoError && counts[0] == 0);
        let ttl = if flags & wire::flag::TC != 0 {
            0
        } else if negative {
            soa_ttl.unwrap_or(0).min(MAX_NEGATIVE_TTL)
        } else if rcode == Rcode::NoError {
            min_ttl.min(MAX_TTL)
        } else {
            0
        };
        Some(Stored {
            flags,
            counts: out_counts,
            body: body.into_boxed_slice(),
            ttls: ttls.into_boxed_slice(),
            ttl,
            qname: qname.into_boxed_slice(),
            starts: starts.into_boxed_slice(),
        })
    }

    /// How long it may be cached, seconds (0: not at all).
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The response code.
    pub fn rcode(&self) -> Rcode {
        Rcode::from_header(self.flags)
    }

    /// Appends the answer section's records (names uncompressed, TTLs decremented by
    /// `elapsed`) to a reply under construction; returns how many: for following a CNAME.
    pub fn append_answers(&self, elapsed: u32, out: &mut Vec<u8>) -> u16 {
        let n = self.counts[0] as usize;
        for (i, (&start, &(ttl_at, ttl))) in
            self.starts.iter().zip(self.ttls.iter()).take(n).enumerate()
        {
            let (start, ttl_at) = (start as usize, ttl_at as usize);
            let end = self
                .starts
                .get(i + 1)
                .map_or(self.body.len(), |&e| e as usize);
            let head = out.len();
            let owner = &self.body[start..];
            let (owner_len, expanded) = if owner.starts_with(&[0xC0, wire::HEADER_LEN as u8]) {
                out.extend_from_slice(&self.qname);
                (2, self.qname.len())
            } else {
                let len = ttl_at - 4 - start;
                out.extend_from_slice(&self.body[start..start + len]);
                (len, len)
            };
            out.extend_from_slice(&self.body[start + owner_len..end]);
            let at = head + expanded + 4;
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
        }
        self.counts[0]
    }

    /// The reply to `q`, `elapsed` seconds after the answer was stored: the client's ID,
    /// RD and question, the stored records with their TTLs decremented.
    pub fn write_reply(&self, q: &Query<'_>, elapsed: u32, out: &mut Vec<u8>) -> Rcode {
        let rcode = self.rcode();
        wire::begin_reply(out, q, rcode, false);
        let keep = wire::flag::AD;
        let flags = u16::from_be_bytes([out[2], out[3]]) | (self.flags & keep);
        out[2..4].copy_from_slice(&flags.to_be_bytes());
        let head = out.len();
        out.extend_from_slice(&self.body);
        for &(off, ttl) in self.ttls.iter() {
            let at = head + off as usize;
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
        }
        wire::finish_reply(
            out,
            q,
            self.counts[0],
            self.counts[1],
            self.counts[2],
            rcode,
        );
        rcode
    }
}

/// Copies RDATA, decompressing the names of the types that may carry compressed names
/// (RFC 3597 §4: NS, CNAME, SOA, PTR, MX; SRV too, as some servers compress it).
fn copy_rdata(msg: &[u8], t: u16, start: usize, end: usize, out: &mut Vec<u8>) -> Option<()> {
    let name_at = match t {
        rtype::NS | rtype::CNAME | rtype::PTR => Some(0),
        rtype::MX => Some(2),
        rtype::SRV => Some(6),
        rtype::SOA => {
            let p = wire::read_name(msg, start, out)?;
            let p = wire::read_name(msg, p, out)?;
            if p + 20 != end {
                return None;
            }
            out.extend_from_slice(&msg[p..end]);
            return Some(());
        }
        _ => None,
    };
    match name_at {
        Some(k) => {
            out.extend_from_slice(msg.get(start..start + k)?);
            let p = wire::read_name(msg, start + k, out)?;
            (p == end).then_some(())
        }
        None => {
            out.extend_from_slice(&msg[start..end]);
            Some(())
        }
    }
}

/// The cache key of (lowercase name, type, class), written into `buf`.
pub fn key<'b>(lname: &[u8], qtype: u16, qclass: u16, buf: &'b mut [u8; MAX_KEY]) -> &'b [u8] {
    let n = lname.len();
    buf[..n].copy_from_slice(lname);
    buf[n..n + 2].copy_from_slice(&qtype.to_be_bytes());
    buf[n + 2..n + 4].copy_from_slice(&qclass.to_be_bytes());
    &buf[..n + 4]
}

struct Entry {
    stored: Stored,
    at: Duration,
    generation: u64,
}

/// A bounded cache of [`Stored`] answers.
pub struct Cache {
    capacity: usize,
    map: HashMap<Box<[u8]>, Entry>,
    order: VecDeque<(Box<[u8]>, u64)>,
    generation: u64,
}

impl Cache {
    /// A cache of at most `capacity` answers (at least one).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    /// Answers held (some may have expired).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The answer for `key` at time `now`, with the whole seconds since it was stored; an
    /// expired answer is removed and is a miss.
    pub fn get(&mut self, key: &[u8], now: Duration) -> Option<(&Stored, u32)> {
        let e = self.map.get(key)?;
        let elapsed = now.saturating_sub(e.at).as_secs();
        if elapsed >= e.stored.ttl as u64 {
            self.map.remove(key);
            return None;
        }
        let e = self.map.get(key)?;
        Some((&e.stored, elapsed as u32))
    }

    /// Stores an answer at time `now` if it may be cached; returns whether it was.
    pub fn insert(&mut self, key: &[u8], stored: Stored, now: Duration) -> bool {
        if stored.ttl == 0 {
            return false;
        }
        self.generation += 1;
        let generation = self.generation;
        let key: Box<[u8]> = key.into();
        self.order.push_back((key.clone(), generation));
        self.map.insert(
            key,
            Entry {
                stored,
                at: now,
                generation,
            },
        );
        while self.map.len() > self.capacity {
            let Some((k, g)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.generation == g) {
                self.map.remove(&k);
            }
        }
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
        true
    }
}
