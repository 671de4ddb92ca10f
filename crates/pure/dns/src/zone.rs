//! Pure: Services + EndpointSlices → the cluster zone, every answer pre-encoded.
//!
//! Records (Kubernetes DNS-based service discovery, schema 1.1.0; `<zone>` defaults to
//! `cluster.local`):
//! - `dns-version.<zone>` TXT `"1.1.0"`; SOA at the apex (also in the authority section of
//!   every negative answer, RFC 2308, its MINIMUM being the record TTL).
//! - ClusterIP Service: `<svc>.<ns>.svc.<zone>` A/AAAA per cluster IP (dual-stack: both);
//!   `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV `0 100 <port> <svc>.<ns>.svc.<zone>` per
//!   named port, the A/AAAA in the additional section; PTR per cluster IP.
//! - Headless Service (`clusterIP: None`): `<svc>…` A/AAAA per ready endpoint address (all
//!   addresses with `publishNotReadyAddresses`; none → the name does not exist, NXDOMAIN,
//!   as the specification asks); `<hostname>.<svc>…` per endpoint, where the hostname is
//!   the endpoint's `hostname` or, without one, CoreDNS's form of the address (`10-1-2-3`,
//!   IPv6 with `:` → `-` and a final `-` completed with `0`); SRV per named slice port and
//!   endpoint, targeting that hostname (A/AAAA in the additional section); PTR per address
//!   → the hostname name.
//! - ExternalName Service: CNAME `<svc>.<ns>.svc.<zone>` → `externalName`.
//! - `<a-b-c-d>.<ns>.pod.<zone>` A (and the dashed IPv6 form, AAAA): the deprecated but
//!   required pod records (§2.6), computed per query as CoreDNS's `pods insecure` does.
//!
//! Existence: every name above exists, and so does each of its ancestors up to the apex
//! (empty non-terminals such as `<ns>.svc.<zone>`, `svc.<zone>`, `_tcp.<svc>…`), plus
//! `svc.<zone>` and `pod.<zone>` always. A name that exists without the asked type is
//! NOERROR/NODATA; a name that does not is NXDOMAIN (both with the SOA). Reverse names
//! (`in-addr.arpa`, `ip6.arpa`) podnet knows are answered; the rest are forwarded
//! (CoreDNS's `fallthrough in-addr.arpa ip6.arpa`).
//!
//! Speed: the zone is kept by [`ZoneState`], which re-encodes only the names of the
//! objects that change, and for each (lowercase name, type) the whole answer — answer
//! and additional sections, names compressed against the question at offset 12 — is
//! encoded then. A query costs one hash lookup and one copy. This is possible because the
//! question is echoed at a fixed offset and a matching question name always has the same
//! length as the key. CoreDNS instead walks its informer caches and builds `dns.RR`
//! objects per query, then packs them.
//!
//! Not served (documented differences from CoreDNS): wildcard queries (`*.ns.svc.zone`,
//! deprecated), `endpoint_pod_names`, NS records at the apex, zone transfers. ANY is
//! answered with one RRset (RFC 8482).

use crate::cache::Stored;
use crate::objects::{ServiceInfo, SliceInfo};
use crate::state::ZoneState;
use crate::wire::{self, Encoder, Query, Rcode, rtype};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The DNS schema version served at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How the zone is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, `cluster.local` by default.
    pub zone: String,
    /// TTL of every record (and the SOA minimum), seconds; CoreDNS's default is 5.
    pub ttl: u32,
    /// The SOA serial (the server passes the build time in seconds).
    pub serial: u32,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
            serial: 1,
        }
    }
}

/// An object left out of the zone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `namespace/name`.
    pub object: String,
    pub reason: String,
}

/// One pre-encoded answer: the answer-section records, then the additional ones, valid
/// after a 12-byte header and a question whose name has the length of the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Answer {
    bytes: Box<[u8]>,
    answer_len: u32,
    an: u16,
    ar: u16,
}

impl Answer {
    /// Records in the answer section.
    pub fn answer_count(&self) -> u16 {
        self.an
    }

    /// Records in the additional section.
    pub fn additional_count(&self) -> u16 {
        self.ar
    }
}

/// A name's answers by type, in type order.
pub(crate) type Sets = Box<[(u16, Answer)]>;

/// Every name of a zone with its answers (type, answer), sorted.
pub type Dump = Vec<(Vec<u8>, Vec<(u16, Answer)>)>;

/// One name of the zone: its answers for the readers, and for [`ZoneState`] the objects
/// whose records it holds and how many names with records lie below it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    /// Answers by type, in type order.
    pub sets: Sets,
    /// The CNAME target (lowercase wire form) when the name is an alias.
    pub cname: Option<Box<[u8]>>,
    /// Records in `sets`.
    pub count: u32,
    /// Names with records below this one (in the zone): an empty non-terminal exists
    /// while this is above 0.
    pub below: u32,
    /// The objects with records here (`ZoneState` ids), usually one.
    pub owners: Owners,
}

/// A short set of ids without an allocation for the usual single one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Owners {
    first: Option<u32>,
    more: Vec<u32>,
}

impl Owners {
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub fn insert(&mut self, id: u32) {
        match self.first {
            None => self.first = Some(id),
            Some(f) if f == id => {}
            Some(_) if self.more.contains(&id) => {}
            Some(_) => self.more.push(id),
        }
    }

    pub fn remove(&mut self, id: u32) {
        if self.first == Some(id) {
            self.first = self.more.pop();
        } else {
            self.more.retain(|m| *m != id);
        }
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.first
            .into_iter()
            .chain(self.more.iter().copied())
            .collect()
    }
}

/// The hash of zone names: word at a time, then a full 64-bit finaliser (murmur3's
/// fmix64) so that every bit of the result depends on every byte — the shard is chosen
/// from some bits of it and the shard's table uses others. Keys come from the cluster,
/// not from queries (queries only look up).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NameHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl NameHasher {
    #[inline]
    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(K).rotate_left(29);
    }
}

impl std::hash::Hasher for NameHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.word(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub(crate) type Shard = HashMap<Box<[u8]>, Node, std::hash::BuildHasherDefault<NameHasher>>;

/// Shards of the name table: a change copies only the shards of the names it touches.
pub(crate) const SHARDS: usize = 64;

/// The shard of a (lowercase wire) name: bits 20..26 of its hash (the shard's own table
/// uses the low bits for the bucket and the top 7 for its tags).
#[inline]
pub(crate) fn shard_of(name: &[u8]) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h = BuildHasherDefault::<NameHasher>::default().hash_one(name);
    (h >> 20) as usize & (SHARDS - 1)
}

/// What the zone says about a question.
#[derive(Debug)]
pub enum Resolution<'z> {
    /// These records.
    Answer(&'z Answer),
    /// Records computed for this query (pod records).
    Owned(Answer),
    /// The name is an alias: the CNAME record, and the target to resolve for the type.
    Cname {
        answer: &'z Answer,
        target: &'z [u8],
    },
    /// The name exists, not with this type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// Not podnet's to answer: forward it.
    Forward,
}

/// The cluster zone: every answer pre-encoded. An immutable snapshot (a [`ZoneState`]
/// commit): readers share it without locks; the next snapshot shares every shard that
/// did not change.
#[derive(Debug, Clone)]
pub struct Zone {
    pub(crate) apex: Vec<u8>,
    pub(crate) pod_suffix: Vec<u8>,
    pub(crate) ttl: u32,
    pub(crate) serial: u32,
    pub(crate) shards: Vec<Arc<Shard>>,
    pub(crate) records: usize,
    pub(crate) names: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rdata {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Vec<u8>),
    Ptr(Vec<u8>),
    Soa,
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Vec<u8>,
    },
    Txt(Vec<u8>),
}

impl Rdata {
    fn rtype(&self) -> u16 {
        match self {
            Rdata::A(_) => rtype::A,
            Rdata::Aaaa(_) => rtype::AAAA,
            Rdata::Cname(_) => rtype::CNAME,
            Rdata::Ptr(_) => rtype::PTR,
            Rdata::Soa => rtype::SOA,
            Rdata::Srv { .. } => rtype::SRV,
            Rdata::Txt(_) => rtype::TXT,
        }
    }
}

fn addr_record(ip: IpAddr) -> Rdata {
    match ip {
        IpAddr::V4(v) => Rdata::A(v),
        IpAddr::V6(v) => Rdata::Aaaa(v),
    }
}

/// `d.c.b.a.in-addr.arpa` / the nibble form under `ip6.arpa`, as a wire name.
pub fn reverse_name(ip: IpAddr) -> Vec<u8> {
    let mut text = String::new();
    match ip {
        IpAddr::V4(v) => {
            for o in v.octets().iter().rev() {
                text.push_str(&format!("{o}."));
            }
            text.push_str("in-addr.arpa");
        }
        IpAddr::V6(v) => {
            for o in v.octets().iter().rev() {
                text.push_str(&format!("{:x}.{:x}.", o & 0xF, o >> 4));
            }
            text.push_str("ip6.arpa");
        }
    }
    wire::name_from_str(&text).expect("reverse names are valid")
}

/// CoreDNS's hostname for an endpoint without one: the address with `.`/`:` → `-`
/// (an IPv6 form ending in `-` gets a `0`).
pub fn dashed_hostname(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v) => v.to_string().replace('.', "-"),
        IpAddr::V6(v) => {
            let s = v.to_string().replace(':', "-");
            if s.ends_with('-') { s + "0" } else { s }
        }
    }
}

/// Prepends labels to a wire name; `None` if a label or the result is too long.
pub(crate) fn prepend(labels: &[&str], name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for l in labels {
        if l.is_empty() || l.len() > 63 {
            return None;
        }
        out.push(l.len() as u8);
        out.extend(l.bytes().map(|c| c.to_ascii_lowercase()));
    }
    out.extend_from_slice(name);
    (out.len() <= wire::MAX_NAME).then_some(out)
}

/// A Service's records (with its slices'), by owner name; unsorted, possibly repeated.
pub(crate) type Records = HashMap<Vec<u8>, Vec<Rdata>>;

fn add(records: &mut Records, name: Vec<u8>, r: Rdata) {
    records.entry(name).or_default().push(r);
}

fn problem(problems: &mut Vec<Problem>, ns: &str, name: &str, reason: impl Into<String>) {
    problems.push(Problem {
        object: format!("{ns}/{name}"),
        reason: reason.into(),
    });
}

fn proto_label(p: Option<&str>) -> String {
    format!("_{}", p.unwrap_or("TCP").to_ascii_lowercase())
}

/// The lowercase wire forms of the zone's fixed names.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub apex: Vec<u8>,
    pub svc_suffix: Vec<u8>,
    pub pod_suffix: Vec<u8>,
}

impl Names {
    pub fn new(zone: &str) -> Names {
        let apex = wire::name_from_str(zone)
            .unwrap_or_else(|| wire::name_from_str("cluster.local").expect("a valid default zone"));
        Names {
            svc_suffix: prepend(&["svc"], &apex).expect("svc.<zone> fits"),
            pod_suffix: prepend(&["pod"], &apex).expect("pod.<zone> fits"),
            apex,
        }
    }
}

/// The records that belong to no object: the SOA and `dns-version`.
pub(crate) fn render_static(apex: &[u8]) -> Records {
    let mut r = Records::new();
    add(&mut r, apex.to_vec(), Rdata::Soa);
    if let Some(n) = prepend(&["dns-version"], apex) {
        let mut txt = vec![SCHEMA_VERSION.len() as u8];
        txt.extend_from_slice(SCHEMA_VERSION.as_bytes());
        add(&mut r, n, Rdata::Txt(txt));
    }
    r
}

/// The records of one Service and its EndpointSlices; what cannot be served goes to
/// `problems`. A Service's names all lie under `<svc>.<ns>.svc.<zone>` (its SRV
/// targets too), except its PTR names, which other Services may share.
pub(crate) fn render_service(
    svc_suffix: &[u8],
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    problems: &mut Vec<Problem>,
) -> Records {
    let mut b = Records::new();
    let (ns, name) = (&*svc.namespace, &*svc.name);
    let Some(svc_name) = prepend(&[name, ns], svc_suffix) else {
        problem(problems, ns, name, "name too long for DNS");
        return b;
    };
    if let Some(external) = &svc.external_name {
        match external.as_deref().and_then(wire::name_from_str) {
            Some(target) if target.len() > 1 => add(&mut b, svc_name, Rdata::Cname(target)),
            _ => problem(
                problems,
                ns,
                name,
                "ExternalName without a valid externalName",
            ),
        }
        return b;
    }
    if svc.cluster_ips.is_empty() {
        problem(problems, ns, name, "no cluster IP yet");
        return b;
    }
    if svc
        .cluster_ips
        .iter()
        .any(|ip| ip.eq_ignore_ascii_case("None"))
    {
        add_headless(&mut b, &svc_name, slices, svc.publish_not_ready);
        return b;
    }
    let mut parsed = Vec::new();
    for ip in &svc.cluster_ips {
        match ip.parse::<IpAddr>() {
            Ok(ip) => parsed.push(ip),
            Err(_) => problem(
                problems,
                ns,
                name,
                format!("cluster IP {ip:?} is not an address"),
            ),
        }
    }
    if parsed.is_empty() {
        return b;
    }
    for ip in &parsed {
        add(&mut b, svc_name.clone(), addr_record(*ip));
        add(&mut b, reverse_name(*ip), Rdata::Ptr(svc_name.clone()));
    }
    for port in svc.ports.iter() {
        let Some(pname) = port.name.as_deref().filter(|n| !n.is_empty()) else {
            continue;
        };
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        let proto = proto_label(port.protocol.as_deref());
        match prepend(&[&format!("_{pname}"), &proto], &svc_name) {
            Some(srv) => add(
                &mut b,
                srv,
                Rdata::Srv {
                    priority: 0,
                    weight: 100,
                    port: number,
                    target: svc_name.clone(),
                },
            ),
            None => problem(
                problems,
                ns,
                name,
                format!("port name {pname:?} too long for DNS"),
            ),
        }
    }
    b
}

/// Builds the zone from scratch. Objects that cannot be served are [`Problem`]s; the rest
/// is served. The same as feeding every object to a [`ZoneState`] and committing once.
pub fn build_zone<'a>(
    config: &ZoneConfig,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> (Zone, Vec<Problem>) {
    let mut state = ZoneState::new(config.clone());
    for s in slices {
        if let Some(s) = SliceInfo::from_slice(s) {
            state.apply_slice(s);
        }
    }
    for s in services {
        if let Some(s) = ServiceInfo::from_service(s) {
            state.apply_service(s);
        }
    }
    let zone = state.commit(config.serial);
    (zone, state.problems())
}

fn add_headless(b: &mut Records, svc_name: &[u8], slices: &[&SliceInfo], all: bool) {
    // (address, hostname name) pairs, then SRV per named port.
    let mut srv: BTreeMap<Vec<u8>, BTreeSet<(u16, Vec<u8>)>> = BTreeMap::new();
    for s in slices {
        if !s.ip {
            continue;
        }
        for ep in s.endpoints.iter() {
            if !ep.ready && !all {
                continue;
            }
            for &ip in ep.addresses.iter() {
                let dashed;
                let host = match ep.hostname.as_deref().filter(|h| !h.is_empty()) {
                    Some(h) => h,
                    None => {
                        dashed = dashed_hostname(ip);
                        &dashed
                    }
                };
                let Some(host_name) = prepend(&[host], svc_name) else {
                    continue;
                };
                add(b, svc_name.to_vec(), addr_record(ip));
                add(b, host_name.clone(), addr_record(ip));
                add(b, reverse_name(ip), Rdata::Ptr(host_name.clone()));
                for port in s.ports.iter() {
                    let (Some(pname), Some(number)) = (
                        port.name.as_deref().filter(|n| !n.is_empty()),
                        port.port.and_then(|p| u16::try_from(p).ok()),
                    ) else {
                        continue;
                    };
                    let proto = proto_label(port.protocol.as_deref());
                    if let Some(n) = prepend(&[&format!("_{pname}"), &proto], svc_name) {
                        srv.entry(n)
                            .or_default()
                            .insert((number, host_name.clone()));
                    }
                }
            }
        }
    }
    for (name, targets) in srv {
        let weight = (100 / targets.len()).max(1) as u16;
        for (port, target) in targets {
            add(
                b,
                name.clone(),
                Rdata::Srv {
                    priority: 0,
                    weight,
                    port,
                    target,
                },
            );
        }
    }
}

/// The answers of one name from its records (sorted, deduplicated); `addresses` gives
/// the A/AAAA records of an SRV target (sorted), for the additional section.
pub(crate) fn encode_node(
    config: &ZoneConfig,
    apex: &[u8],
    name: &[u8],
    set: &[Rdata],
    addresses: &mut dyn FnMut(&[u8]) -> Vec<Rdata>,
) -> (Sets, Option<Box<[u8]>>) {
    let mut sets = Vec::new();
    let mut cname = None;
    // Sorted, so each type's records are together.
    for group in set.chunk_by(|a, b| a.rtype() == b.rtype()) {
        let t = group[0].rtype();
        let rs: Vec<&Rdata> = group.iter().collect();
        if let [Rdata::Cname(target)] = rs.as_slice() {
            cname = Some(target.clone().into_boxed_slice());
        }
        sets.push((t, encode_set(config, apex, name, &rs, addresses)));
    }
    (sets.into_boxed_slice(), cname)
}

/// Encodes one RRset (and for SRV the addresses of its targets as additional records).
fn encode_set(
    config: &ZoneConfig,
    apex: &[u8],
    owner: &[u8],
    rs: &[&Rdata],
    addresses: &mut dyn FnMut(&[u8]) -> Vec<Rdata>,
) -> Answer {
    let base = wire::HEADER_LEN + owner.len() + 4;
    let mut e = Encoder::new(base, owner);
    let ttl = config.ttl;
    for r in rs {
        let at = e.record(owner, r.rtype(), ttl);
        write_rdata(&mut e, r, config, apex);
        e.end_rdata(at);
    }
    let answer_len = e.buf.len();
    let mut ar = 0u16;
    let mut seen = BTreeSet::new();
    for r in rs {
        if let Rdata::Srv { target, .. } = r {
            if !seen.insert(target) {
                continue;
            }
            for a in addresses(target) {
                if matches!(a, Rdata::A(_) | Rdata::Aaaa(_)) {
                    let at = e.record(target, a.rtype(), ttl);
                    write_rdata(&mut e, &a, config, apex);
                    e.end_rdata(at);
                    ar += 1;
                }
            }
        }
    }
    Answer {
        bytes: e.buf.into_boxed_slice(),
        answer_len: answer_len as u32,
        an: rs.len() as u16,
        ar,
    }
}

fn write_rdata(e: &mut Encoder, r: &Rdata, config: &ZoneConfig, apex: &[u8]) {
    match r {
        Rdata::A(v) => e.buf.extend_from_slice(&v.octets()),
        Rdata::Aaaa(v) => e.buf.extend_from_slice(&v.octets()),
        Rdata::Cname(n) | Rdata::Ptr(n) => e.name(n),
        Rdata::Txt(t) => e.buf.extend_from_slice(t),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            e.buf.extend_from_slice(&priority.to_be_bytes());
            e.buf.extend_from_slice(&weight.to_be_bytes());
            e.buf.extend_from_slice(&port.to_be_bytes());
            // RFC 2782: the target is never compressed (it may be pointed to).
            e.plain_name(target);
        }
        Rdata::Soa => {
            e.name(&prepend(&["ns", "dns"], apex).expect("fits"));
            e.name(&prepend(&["hostmaster"], apex).expect("fits"));
            e.buf
                .extend_from_slice(&soa_numbers(config.serial, config.ttl));
        }
    }
}

/// SERIAL REFRESH RETRY EXPIRE MINIMUM, as CoreDNS sets them.
fn soa_numbers(serial: u32, ttl: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, v) in [serial, 7200, 1800, 86400, ttl].into_iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

impl Zone {
    /// The apex (lowercase wire form).
    pub fn apex(&self) -> &[u8] {
        &self.apex
    }

    /// Records in the zone (not counting empty non-terminals).
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Names in the zone (including empty non-terminals and reverse names).
    pub fn name_count(&self) -> usize {
        self.names
    }

    /// Every name with its answers (type, answer), sorted: two zones that answer every
    /// question alike have equal dumps (the SOA serial aside, which is in the apex's).
    pub fn dump(&self) -> Dump {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| s.iter())
            .map(|(k, n)| (k.to_vec(), n.sets.to_vec()))
            .collect();
        all.sort();
        all
    }

    /// Whether a (lowercase wire) name is the apex or below it: one comparison at the
    /// one offset where the apex can start, if a label starts there.
    #[inline]
    fn in_zone(&self, lname: &[u8]) -> bool {
        let Some(at) = lname.len().checked_sub(self.apex.len()) else {
            return false;
        };
        if lname[at..] != self.apex[..] {
            return false;
        }
        let mut p = 0;
        while p < at {
            p += 1 + lname[p] as usize;
        }
        p == at
    }

    #[inline]
    fn node(&self, lname: &[u8]) -> Option<&Node> {
        self.shards[shard_of(lname)].get(lname)
    }

    /// What the zone says about (lowercase name, type).
    pub fn resolve(&self, lname: &[u8], qtype: u16) -> Resolution<'_> {
        let in_zone = self.in_zone(lname);
        let Some(node) = self.node(lname) else {
            if !in_zone {
                return Resolution::Forward;
            }
            return self.pod_record(lname, qtype);
        };
        if !in_zone {
            // A reverse name: only its PTR is podnet's.
            return match node.sets.iter().find(|(t, _)| *t == qtype) {
                Some((_, a)) if qtype == rtype::PTR => Resolution::Answer(a),
                _ => Resolution::Forward,
            };
        }
        if let Some(target) = &node.cname
            && let Some((_, answer)) = node.sets.iter().find(|(t, _)| *t == rtype::CNAME)
        {
            return if qtype == rtype::CNAME || qtype == rtype::ANY {
                Resolution::Answer(answer)
            } else {
                Resolution::Cname { answer, target }
            };
        }
        let found = if qtype == rtype::ANY {
            node.sets.first()
        } else {
            node.sets.iter().find(|(t, _)| *t == qtype)
        };
        match found {
            Some((_, a)) => Resolution::Answer(a),
            None => Resolution::NoData,
        }
    }

    /// `<dashed-ip>.<ns>.pod.<zone>`.
    fn pod_record(&self, lname: &[u8], qtype: u16) -> Resolution<'_> {
        if !wire::ends_with_name(lname, &self.pod_suffix) || lname == self.pod_suffix.as_slice() {
            return Resolution::NxDomain;
        }
        let prefix_len = lname.len() - self.pod_suffix.len();
        match wire::label_offsets(lname)
            .take_while(|o| *o < prefix_len)
            .count()
        {
            1 => Resolution::NoData,
            2 => {
                let first = &lname[1..1 + lname[0] as usize];
                let Ok(text) = std::str::from_utf8(first) else {
                    return Resolution::NxDomain;
                };
                let ip = if text.matches('-').count() == 3 && !text.contains(':') {
                    text.replace('-', ".")
                        .parse::<Ipv4Addr>()
                        .ok()
                        .map(IpAddr::V4)
                } else {
                    text.replace('-', ":")
                        .parse::<Ipv6Addr>()
                        .ok()
                        .map(IpAddr::V6)
                };
                let Some(ip) = ip else {
                    return Resolution::NxDomain;
                };
                let r = addr_record(ip);
                if qtype != r.rtype() && qtype != rtype::ANY {
                    return Resolution::NoData;
                }
                let config = ZoneConfig {
                    zone: String::new(),
                    ttl: self.ttl,
                    serial: self.serial,
                };
                Resolution::Owned(encode_set(&config, &self.apex, lname, &[&r], &mut |_| {
                    Vec::new()
                }))
            }
            _ => Resolution::NxDomain,
        }
    }

    /// Writes the complete reply for a resolution other than `Forward` (which writes
    /// nothing and returns `None`). `limit` is the largest reply allowed (the client's
    /// UDP size, or 65535 over TCP): additional records are dropped first, then the
    /// reply is truncated (TC).
    pub fn write_reply(
        &self,
        q: &Query<'_>,
        res: &Resolution<'_>,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Option<Rcode> {
        match res {
            Resolution::Forward => None,
            Resolution::Answer(a) | Resolution::Cname { answer: a, .. } => {
                Some(self.write_answer(q, a, limit, out))
            }
            Resolution::Owned(a) => Some(self.write_answer(q, a, limit, out)),
            Resolution::NoData => Some(self.write_negative(q, Rcode::NoError, out)),
            Resolution::NxDomain => Some(self.write_negative(q, Rcode::NxDomain, out)),
        }
    }

    /// The reply for an alias (ExternalName): the CNAME, then the target's answers as the
    /// forwarder found them (`target`: the stored answer and the seconds since it was
    /// stored; `None` when it could not be resolved). The rcode is the target's NXDOMAIN
    /// or NOERROR (RFC 6604: it describes the last name of the chain).
    pub fn write_alias_reply(
        &self,
        q: &Query<'_>,
        cname: &Answer,
        target: Option<(&Stored, u32)>,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Rcode {
        let rcode = match target {
            Some((s, _)) if s.rcode() == Rcode::NxDomain => Rcode::NxDomain,
            _ => Rcode::NoError,
        };
        wire::begin_reply(out, q, rcode, true);
        out.extend_from_slice(&cname.bytes[..cname.answer_len as usize]);
        let mut an = cname.an;
        if let Some((s, elapsed)) = target {
            an += s.append_answers(elapsed, out);
        }
        wire::finish_reply(out, q, an, 0, 0, rcode);
        if out.len() > limit {
            let flags = u16::from_be_bytes([out[2], out[3]]) | wire::flag::TC;
            out.truncate(wire::HEADER_LEN + q.question.len());
            out[2..4].copy_from_slice(&flags.to_be_bytes());
            wire::finish_reply(out, q, 0, 0, 0, rcode);
        }
        rcode
    }

    fn write_answer(&self, q: &Query<'_>, a: &Answer, limit: usize, out: &mut Vec<u8>) -> Rcode {
        wire::begin_reply(out, q, Rcode::NoError, true);
        let opt_len = if q.edns.is_some() { 11 } else { 0 };
        let head = out.len();
        if head + a.bytes.len() + opt_len <= limit {
            out.extend_from_slice(&a.bytes);
            wire::finish_reply(out, q, a.an, 0, a.ar, Rcode::NoError);
        } else {
            out.extend_from_slice(&a.bytes[..a.answer_len as usize]);
            wire::finish_reply(out, q, a.an, 0, 0, Rcode::NoError);
            if out.len() > limit {
                let flags = u16::from_be_bytes([out[2], out[3]]) | wire::flag::TC;
                out.truncate(head);
                out[2..4].copy_from_slice(&flags.to_be_bytes());
                wire::finish_reply(out, q, 0, 0, 0, Rcode::NoError);
            }
        }
        Rcode::NoError
    }

    /// NXDOMAIN or NODATA with the SOA in the authority section (RFC 2308).
    fn write_negative(&self, q: &Query<'_>, rcode: Rcode, out: &mut Vec<u8>) -> Rcode {
        wire::begin_reply(out, q, rcode, true);
        // The apex is the question name's suffix: point at it.
        let apex_at = (wire::HEADER_LEN + q.qname.len() - self.apex.len()) as u16;
        let ptr = (0xC000 | apex_at).to_be_bytes();
        out.extend_from_slice(&ptr);
        out.extend_from_slice(&rtype::SOA.to_be_bytes());
        out.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
        out.extend_from_slice(&self.ttl.to_be_bytes());
        let rdlen_at = out.len();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(b"\x02ns\x03dns");
        out.extend_from_slice(&ptr);
        out.extend_from_slice(b"\x0ahostmaster");
        out.extend_from_slice(&ptr);
        out.extend_from_slice(&soa_numbers(self.serial, self.ttl));
        let rdlen = (out.len() - rdlen_at - 2) as u16;
        out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        wire::finish_reply(out, q, 0, 1, 0, rcode);
        rcode
    }
}
