//! Pure: the DNS wire format (RFC 1035, EDNS0 RFC 6891) for podnet's hot path — bytes in,
//! bytes out, nothing allocated per query.
//!
//! - [`parse_query`] reads a query: the header, exactly one question (its name kept as the
//!   client sent it, case and all), the answer/authority sections skipped, the OPT record
//!   of the additional section read. It never panics and never reads past the buffer;
//!   what cannot be read is a [`QueryError`] saying how to answer (or to stay silent).
//! - [`begin_reply`] / [`finish_reply`] write a reply that echoes the client's question
//!   bytes verbatim at offset 12, so every record whose owner is the question name can be
//!   written as the two-byte pointer `0xC00C`; [`fit_udp`] truncates (TC) to the client's
//!   UDP size.
//! - [`Encoder`] writes names with compression (used when the zone is built, not per query).
//! - [`read_name`] / [`skip_name`] follow compression pointers safely (pointers must point
//!   backwards, names stay within 255 bytes).
//!
//! Rcode choices: a query whose header can be read but whose question, records or OPT
//! cannot is FORMERR (also QDCOUNT ≠ 1 and a second OPT, RFC 6891 §6.1.1); an opcode other
//! than QUERY is NOTIMP (RFC 1035 §4.1.1); a message with the QR bit set is a response and
//! is never answered (no reflection loops); an EDNS version above 0 is BADVERS (RFC 6891
//! §6.1.3); zone transfers (AXFR/IXFR) and classes other than IN/ANY are REFUSED (policy,
//! not inability — CoreDNS refuses transfers unless configured as well).

/// Record types podnet knows by name.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;

    /// The mnemonic, for metrics labels.
    pub fn name(t: u16) -> &'static str {
        match t {
            A => "A",
            NS => "NS",
            CNAME => "CNAME",
            SOA => "SOA",
            PTR => "PTR",
            MX => "MX",
            TXT => "TXT",
            AAAA => "AAAA",
            SRV => "SRV",
            65 => "HTTPS",
            64 => "SVCB",
            IXFR => "IXFR",
            AXFR => "AXFR",
            ANY => "ANY",
            _ => "other",
        }
    }
}

/// Classes.
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

/// Response codes (the low four bits of the header; BADVERS is extended, RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    BadVers,
}

impl Rcode {
    /// The 12-bit value.
    pub fn value(self) -> u16 {
        match self {
            Rcode::NoError => 0,
            Rcode::FormErr => 1,
            Rcode::ServFail => 2,
            Rcode::NxDomain => 3,
            Rcode::NotImp => 4,
            Rcode::Refused => 5,
            Rcode::BadVers => 16,
        }
    }

    /// From the header's four bits.
    pub fn from_header(flags: u16) -> Rcode {
        match flags & 0xF {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            _ => Rcode::ServFail,
        }
    }

    /// The mnemonic, for metrics labels (as CoreDNS spells them).
    pub fn name(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::ServFail => "SERVFAIL",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
        }
    }
}

/// Header flag bits.
pub mod flag {
    pub const QR: u16 = 0x8000;
    pub const OPCODE: u16 = 0x7800;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const RA: u16 = 0x0080;
    pub const AD: u16 = 0x0020;
    pub const CD: u16 = 0x0010;
}

/// The header's length.
pub const HEADER_LEN: usize = 12;
/// Maximum length of a name in wire form (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;
/// The UDP payload size without EDNS.
pub const CLASSIC_UDP: usize = 512;
/// The UDP payload size podnet offers in its own OPT record (DNS flag day 2020).
pub const EDNS_UDP: u16 = 1232;

/// A query's EDNS0 options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query; borrows the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    /// The header's flags word as received.
    pub flags: u16,
    /// The question name in wire form, as sent (case preserved), with its final zero byte.
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// The whole question (name, type, class) as sent: echoed in the reply.
    pub question: &'a [u8],
    pub edns: Option<Edns>,
}

impl Query<'_> {
    /// Whether the client asked for recursion.
    pub fn recursion_desired(&self) -> bool {
        self.flags & flag::RD != 0
    }

    /// The largest UDP reply the client accepts (512 without EDNS, RFC 6891 §6.2.3/§6.2.5).
    pub fn max_udp(&self) -> usize {
        match self.edns {
            Some(e) => (e.udp_size as usize).max(CLASSIC_UDP),
            None => CLASSIC_UDP,
        }
    }

    /// The question name lowercased (ASCII) into `buf`; the lookup key.
    pub fn lower_name<'b>(&self, buf: &'b mut [u8; MAX_NAME]) -> &'b [u8] {
        let n = self.qname.len();
        for (d, s) in buf[..n].iter_mut().zip(self.qname) {
            *d = s.to_ascii_lowercase();
        }
        &buf[..n]
    }
}

/// Why a query cannot be answered normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// Not even a header, or a response (QR set): say nothing.
    Drop,
    /// The header is readable, the rest is not: answer FORMERR.
    FormErr { id: u16, flags: u16 },
    /// An opcode other than QUERY: answer NOTIMP.
    NotImp { id: u16, flags: u16 },
    /// EDNS version above 0: answer BADVERS with an OPT record.
    BadVers { id: u16, flags: u16 },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The end of an uncompressed name starting at `at` (after its zero byte); `None` if it
/// is malformed, compressed, or longer than 255 bytes.
fn plain_name_end(b: &[u8], at: usize) -> Option<usize> {
    let mut p = at;
    loop {
        let len = *b.get(p)? as usize;
        if len == 0 {
            p += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        p += 1 + len;
        if p - at > MAX_NAME - 1 {
            return None;
        }
    }
    if p > b.len() || p - at > MAX_NAME {
        return None;
    }
    Some(p)
}

/// Skips a possibly compressed name at `at`; returns the position after it.
pub fn skip_name(b: &[u8], at: usize) -> Option<usize> {
    let mut p = at;
    let mut total = 0usize;
    loop {
        let len = *b.get(p)? as usize;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    return Some(p + 1);
                }
                total += len + 1;
                if total > MAX_NAME - 1 {
                    return None;
                }
                p += 1 + len;
                if p > b.len() {
                    return None;
                }
            }
            0xC0 => {
                b.get(p + 1)?;
                return Some(p + 2);
            }
            _ => return None,
        }
    }
}

/// Reads a possibly compressed name at `at` into `out` (uncompressed wire form, case as
/// stored); returns the position after the name in the message. Pointers must point
/// strictly backwards, so loops are impossible.
pub fn read_name(b: &[u8], at: usize, out: &mut Vec<u8>) -> Option<usize> {
    let start_len = out.len();
    let mut p = at;
    let mut end = None;
    let mut limit = at;
    loop {
        let len = *b.get(p)? as usize;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    out.push(0);
                    if out.len() - start_len > MAX_NAME {
                        return None;
                    }
                    return Some(end.unwrap_or(p + 1));
                }
                let label = b.get(p + 1..p + 1 + len)?;
                out.push(len as u8);
                out.extend_from_slice(label);
                if out.len() - start_len > MAX_NAME - 1 {
                    return None;
                }
                p += 1 + len;
            }
            0xC0 => {
                let target = (be16(b, p)? & 0x3FFF) as usize;
                if end.is_none() {
                    end = Some(p + 2);
                }
                // Strictly backwards from the lowest point visited: no loops.
                if target >= limit.min(p) {
                    return None;
                }
                limit = target;
                p = target;
            }
            _ => return None,
        }
    }
}

/// Reads a query. See the module doc for the rcode of each failure.
pub fn parse_query(b: &[u8]) -> Result<Query<'_>, QueryError> {
    if b.len() < HEADER_LEN {
        return Err(QueryError::Drop);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & flag::QR != 0 {
        return Err(QueryError::Drop);
    }
    if flags & flag::OPCODE != 0 {
        return Err(QueryError::NotImp { id, flags });
    }
    let formerr = QueryError::FormErr { id, flags };
    let qd = u16::from_be_bytes([b[4], b[5]]);
    let an = u16::from_be_bytes([b[6], b[7]]);
    let ns = u16::from_be_bytes([b[8], b[9]]);
    let ar = u16::from_be_bytes([b[10], b[11]]);
    if qd != 1 {
        return Err(formerr);
    }
    let name_end = plain_name_end(b, HEADER_LEN).ok_or(formerr)?;
    let qtype = be16(b, name_end).ok_or(formerr)?;
    let qclass = be16(b, name_end + 2).ok_or(formerr)?;
    let qend = name_end + 4;
    if qtype == rtype::OPT {
        return Err(formerr);
    }
    let mut p = qend;
    for _ in 0..(an as usize + ns as usize) {
        p = skip_record(b, p).ok_or(formerr)?;
    }
    let mut edns = None;
    for _ in 0..ar {
        let name_start = p;
        let after = skip_name(b, p).ok_or(formerr)?;
        let t = be16(b, after).ok_or(formerr)?;
        if t == rtype::OPT {
            if edns.is_some() || after != name_start + 1 || b[name_start] != 0 {
                return Err(formerr);
            }
            let udp_size = be16(b, after + 2).ok_or(formerr)?;
            let ttl = be32(b, after + 4).ok_or(formerr)?;
            edns = Some(Edns {
                udp_size,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
        p = skip_record(b, p).ok_or(formerr)?;
    }
    if let Some(e) = edns
        && e.version > 0
    {
        return Err(QueryError::BadVers { id, flags });
    }
    Ok(Query {
        id,
        flags,
        qname: &b[HEADER_LEN..name_end],
        qtype,
        qclass,
        question: &b[HEADER_LEN..qend],
        edns,
    })
}

/// The question type of a datagram without parsing the rest (0 if unreadable): for
/// metrics labels.
pub fn peek_qtype(b: &[u8]) -> u16 {
    plain_name_end(b, HEADER_LEN)
        .and_then(|p| be16(b, p))
        .unwrap_or(0)
}

/// Skips one resource record at `at`.
pub fn skip_record(b: &[u8], at: usize) -> Option<usize> {
    let p = skip_name(b, at)?;
    let rdlen = be16(b, p + 8)? as usize;
    let end = p + 10 + rdlen;
    if end > b.len() {
        return None;
    }
    Some(end)
}

/// Writes a header.
pub fn write_header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// The reply flags for a query: QR, the opcode and RD and CD copied, RA set (podnet
/// recurses through its upstreams), AA when authoritative.
pub fn reply_flags(query_flags: u16, rcode: Rcode, authoritative: bool) -> u16 {
    let mut f = flag::QR | flag::RA | (query_flags & (flag::OPCODE | flag::RD | flag::CD));
    if authoritative {
        f |= flag::AA;
    }
    f | (rcode.value() & 0xF)
}

/// Clears `out` and writes the header (counts zero but QDCOUNT 1) and the client's
/// question, verbatim.
pub fn begin_reply(out: &mut Vec<u8>, q: &Query<'_>, rcode: Rcode, authoritative: bool) {
    out.clear();
    write_header(
        out,
        q.id,
        reply_flags(q.flags, rcode, authoritative),
        [1, 0, 0, 0],
    );
    out.extend_from_slice(q.question);
}

/// Sets the answer/authority/additional counts and appends an OPT record when the client
/// sent one (with BADVERS' extended bits when the rcode is BADVERS).
pub fn finish_reply(out: &mut Vec<u8>, q: &Query<'_>, an: u16, ns: u16, ar: u16, rcode: Rcode) {
    let mut ar = ar;
    if q.edns.is_some() {
        push_opt(out, rcode);
        ar += 1;
    }
    out[6..8].copy_from_slice(&an.to_be_bytes());
    out[8..10].copy_from_slice(&ns.to_be_bytes());
    out[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// podnet's OPT record: root owner, UDP size [`EDNS_UDP`], version 0, no options.
pub fn push_opt(out: &mut Vec<u8>, rcode: Rcode) {
    let ext = (rcode.value() >> 4) as u8;
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP.to_be_bytes());
    out.extend_from_slice(&[ext, 0, 0, 0]);
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// A reply carrying only a header (and OPT when the client sent one): for errors of
/// queries whose question could not be read, NOTIMP and BADVERS.
pub fn error_reply(out: &mut Vec<u8>, err: QueryError) -> Option<Rcode> {
    let (id, flags, rcode) = match err {
        QueryError::Drop => return None,
        QueryError::FormErr { id, flags } => (id, flags, Rcode::FormErr),
        QueryError::NotImp { id, flags } => (id, flags, Rcode::NotImp),
        QueryError::BadVers { id, flags } => (id, flags, Rcode::BadVers),
    };
    out.clear();
    write_header(out, id, reply_flags(flags, rcode, false), [0, 0, 0, 0]);
    if rcode == Rcode::BadVers {
        push_opt(out, rcode);
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
    Some(rcode)
}

/// A reply with only the question and an rcode (SERVFAIL, REFUSED, …).
pub fn rcode_reply(out: &mut Vec<u8>, q: &Query<'_>, rcode: Rcode) {
    begin_reply(out, q, rcode, false);
    finish_reply(out, q, 0, 0, 0, rcode);
}

/// Makes `out` (a complete reply to `q`) fit the client's UDP size: if it is too long,
/// it becomes the header and question with TC set and no records (RFC 2181 §9: clients
/// then ask again over TCP). Returns whether it truncated.
pub fn fit_udp(out: &mut Vec<u8>, q: &Query<'_>) -> bool {
    fit(out, q, q.max_udp())
}

/// Makes `out` fit `limit` bytes (65535 over TCP), as [`fit_udp`] does.
pub fn fit(out: &mut Vec<u8>, q: &Query<'_>, limit: usize) -> bool {
    if out.len() <= limit {
        return false;
    }
    let flags = u16::from_be_bytes([out[2], out[3]]) | flag::TC;
    let rcode = Rcode::from_header(flags);
    out.truncate(HEADER_LEN + q.question.len());
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    finish_reply(out, q, 0, 0, 0, rcode);
    true
}

/// A name in wire form from text (`"a.b.c"` or `"a.b.c."`), lowercased; `None` if a
/// label is empty or longer than 63 bytes or the name longer than 255.
pub fn name_from_str(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let mut out = Vec::with_capacity(s.len() + 2);
    if !s.is_empty() {
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|c| c.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Text form of a wire name (`a.b.c.`), for logs and tests.
pub fn name_to_string(name: &[u8]) -> String {
    let mut s = String::new();
    let mut p = 0;
    while let Some(&len) = name.get(p) {
        if len == 0 {
            break;
        }
        let label = name.get(p + 1..p + 1 + len as usize).unwrap_or_default();
        s.push_str(&String::from_utf8_lossy(label));
        s.push('.');
        p += 1 + len as usize;
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

/// The offsets of each label of a wire name (its suffixes).
pub fn label_offsets(name: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut p = 0usize;
    std::iter::from_fn(move || {
        let len = *name.get(p)? as usize;
        if len == 0 {
            return None;
        }
        let here = p;
        p += 1 + len;
        Some(here)
    })
}

/// Whether `name` equals `suffix` or ends with it at a label boundary (both lowercase
/// wire form).
pub fn ends_with_name(name: &[u8], suffix: &[u8]) -> bool {
    if name == suffix {
        return true;
    }
    label_offsets(name).any(|o| &name[o..] == suffix)
}

/// Writes names with compression into a message under construction. Offsets are
/// absolute in the final message: `base` is where `buf` will start.
pub struct Encoder {
    base: usize,
    pub buf: Vec<u8>,
    /// Names written (and their suffixes) → offset; a short list searched linearly (most
    /// answers hold a few names), an index once it grows.
    known: Vec<(Vec<u8>, u16)>,
    index: std::collections::HashMap<Vec<u8>, u16>,
}

impl Encoder {
    /// An encoder for bytes that start at message offset `base`, knowing that `qname`
    /// (lowercase) is at offset 12.
    pub fn new(base: usize, qname: &[u8]) -> Encoder {
        let mut e = Encoder {
            base,
            buf: Vec::new(),
            known: Vec::new(),
            index: Default::default(),
        };
        e.remember(qname, qname.len(), HEADER_LEN);
        e
    }

    /// Remembers the suffixes of `name` that start before `upto`, `name` being at `at`.
    fn remember(&mut self, name: &[u8], upto: usize, at: usize) {
        for o in label_offsets(name) {
            if o >= upto {
                break;
            }
            let pos = at + o;
            if pos < 0x3FFF && self.find(&name[o..]).is_none() {
                if self.known.len() < 32 {
                    self.known.push((name[o..].to_vec(), pos as u16));
                } else {
                    self.index.insert(name[o..].to_vec(), pos as u16);
                }
            }
        }
    }

    fn find(&self, name: &[u8]) -> Option<u16> {
        self.known
            .iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, at)| *at)
            .or_else(|| self.index.get(name).copied())
    }

    /// Writes a (lowercase wire) name, compressed against everything written before.
    pub fn name(&mut self, name: &[u8]) {
        let start = self.base + self.buf.len();
        for o in label_offsets(name) {
            if let Some(at) = self.find(&name[o..]) {
                self.buf.extend_from_slice(&name[..o]);
                self.buf.extend_from_slice(&(0xC000 | at).to_be_bytes());
                self.remember(name, o, start);
                return;
            }
        }
        self.buf.extend_from_slice(name);
        self.remember(name, name.len(), start);
    }

    /// Writes a name uncompressed (SRV targets, RFC 2782), remembering it for later names.
    pub fn plain_name(&mut self, name: &[u8]) {
        let start = self.base + self.buf.len();
        self.buf.extend_from_slice(name);
        self.remember(name, name.len(), start);
    }

    /// Writes a record header: owner (compressed), type, class IN, TTL, and a
    /// placeholder RDLENGTH; returns the RDLENGTH position for [`Encoder::end_rdata`].
    pub fn record(&mut self, owner: &[u8], rtype: u16, ttl: u32) -> usize {
        self.name(owner);
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        at
    }

    /// Fills in RDLENGTH.
    pub fn end_rdata(&mut self, at: usize) {
        let len = (self.buf.len() - at - 2) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, t: u16) -> Vec<u8> {
        let mut b = Vec::new();
        write_header(&mut b, 0x1234, flag::RD, [1, 0, 0, 0]);
        b.extend_from_slice(&name_from_str(name).unwrap());
        b.extend_from_slice(&t.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b
    }

    #[test]
    fn parses_a_query_and_keeps_case() {
        let b = query("Web.Default.svc.cluster.local", rtype::A);
        // name_from_str lowercases: put capitals back in the wire bytes.
        let mut b = b;
        b[13] = b'W';
        let q = parse_query(&b).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, rtype::A);
        assert_eq!(q.qname[1], b'W');
        let mut buf = [0; MAX_NAME];
        assert_eq!(
            q.lower_name(&mut buf),
            &name_from_str("web.default.svc.cluster.local").unwrap()[..]
        );
        assert!(q.edns.is_none());
        assert_eq!(q.max_udp(), 512);
    }

    #[test]
    fn reads_edns_and_refuses_two_opts() {
        let mut b = query("a.b", rtype::A);
        b[11] = 1;
        push_opt(&mut b, Rcode::NoError);
        let q = parse_query(&b).unwrap();
        assert_eq!(q.edns.unwrap().udp_size, EDNS_UDP);
        assert_eq!(q.max_udp(), EDNS_UDP as usize);
        b[11] = 2;
        push_opt(&mut b, Rcode::NoError);
        assert!(matches!(parse_query(&b), Err(QueryError::FormErr { .. })));
    }

    #[test]
    fn rejects_what_it_should() {
        assert_eq!(parse_query(&[0; 5]).unwrap_err(), QueryError::Drop);
        let mut b = query("a.b", rtype::A);
        b[2] |= 0x80;
        assert_eq!(parse_query(&b).unwrap_err(), QueryError::Drop);
        let mut b = query("a.b", rtype::A);
        b[2] |= 0x28; // opcode 5 (UPDATE)
        assert!(matches!(parse_query(&b), Err(QueryError::NotImp { .. })));
        let mut b = query("a.b", rtype::A);
        b[5] = 2;
        assert!(matches!(parse_query(&b), Err(QueryError::FormErr { .. })));
        let mut b = query("a.b", rtype::A);
        b[12] = 0xC0; // compressed question name
        assert!(matches!(parse_query(&b), Err(QueryError::FormErr { .. })));
        let b = query("a.b", rtype::A);
        assert!(matches!(
            parse_query(&b[..b.len() - 1]),
            Err(QueryError::FormErr { .. })
        ));
    }

    #[test]
    fn read_name_follows_pointers_backwards_only() {
        // "a" at 0, then "b" + pointer to 0 at 3, then a pointer to itself at 7.
        let msg = [1, b'a', 0, 1, b'b', 0xC0, 0, 0xC0, 7];
        let mut out = Vec::new();
        assert_eq!(read_name(&msg, 3, &mut out), Some(7));
        assert_eq!(out, [1, b'b', 1, b'a', 0]);
        out.clear();
        assert_eq!(read_name(&msg, 7, &mut out), None);
    }

    #[test]
    fn encoder_compresses() {
        let q = name_from_str("x.svc.zone").unwrap();
        let mut e = Encoder::new(HEADER_LEN + q.len() + 4, &q);
        e.name(&name_from_str("y.svc.zone").unwrap());
        assert_eq!(e.buf, [1, b'y', 0xC0, 14]);
        e.name(&name_from_str("y.svc.zone").unwrap());
        assert_eq!(&e.buf[4..], [0xC0, (HEADER_LEN + q.len() + 4) as u8]);
    }

    #[test]
    fn truncates_to_the_client_size() {
        let b = query("a.b", rtype::A);
        let q = parse_query(&b).unwrap();
        let mut out = Vec::new();
        begin_reply(&mut out, &q, Rcode::NoError, true);
        out.extend(std::iter::repeat_n(0u8, 600));
        finish_reply(&mut out, &q, 30, 0, 0, Rcode::NoError);
        assert!(fit_udp(&mut out, &q));
        assert_eq!(out.len(), HEADER_LEN + q.question.len());
        assert_ne!(out[2] & 0x02, 0);
        assert_eq!(&out[6..8], [0, 0]);
    }
}
