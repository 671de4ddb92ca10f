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
//! Speed: the zone is built once per change of the cluster, and for each (lowercase name,
//! type) the whole answer — answer and additional sections, names compressed against the
//! question at offset 12 — is encoded then. A query costs one hash lookup and one copy.
//! This is possible because the question is echoed at a fixed offset and a matching
//! question name always has the same length as the key. CoreDNS instead walks its
//! informer caches and builds `dns.RR` objects per query, then packs them.
//!
//! Not served (documented differences from CoreDNS): wildcard queries (`*.ns.svc.zone`,
//! deprecated), `endpoint_pod_names`, NS records at the apex, zone transfers. ANY is
//! answered with one RRset (RFC 8482).

use crate::cache::Stored;
use crate::wire::{self, Encoder, Query, Rcode, rtype};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    bytes: Box<[u8]>,
    answer_len: usize,
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

#[derive(Debug, Default)]
struct Node {
    /// Answers by type, in type order.
    sets: Vec<(u16, Answer)>,
    /// The CNAME target (lowercase wire form) when the name is an alias.
    cname: Option<Box<[u8]>>,
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

/// The cluster zone: every answer pre-encoded.
#[derive(Debug)]
pub struct Zone {
    apex: Vec<u8>,
    pod_suffix: Vec<u8>,
    ttl: u32,
    serial: u32,
    names: HashMap<Box<[u8]>, Node>,
    records: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Rdata {
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
fn prepend(labels: &[&str], name: &[u8]) -> Option<Vec<u8>> {
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

struct Builder {
    records: HashMap<Vec<u8>, Vec<Rdata>>,
    problems: Vec<Problem>,
}

impl Builder {
    fn add(&mut self, name: Vec<u8>, r: Rdata) {
        self.records.entry(name).or_default().push(r);
    }

    fn problem(&mut self, ns: &str, name: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            object: format!("{ns}/{name}"),
            reason: reason.into(),
        });
    }
}

fn proto_label(p: Option<&str>) -> String {
    format!("_{}", p.unwrap_or("TCP").to_ascii_lowercase())
}

/// Builds the zone. Objects that cannot be served are [`Problem`]s; the rest is served.
pub fn build_zone<'a>(
    config: &ZoneConfig,
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> (Zone, Vec<Problem>) {
    let apex = wire::name_from_str(&config.zone)
        .unwrap_or_else(|| wire::name_from_str("cluster.local").expect("a valid default zone"));
    let svc_suffix = prepend(&["svc"], &apex).expect("svc.<zone> fits");
    let pod_suffix = prepend(&["pod"], &apex).expect("pod.<zone> fits");
    let mut b = Builder {
        records: HashMap::new(),
        problems: Vec::new(),
    };
    b.add(apex.clone(), Rdata::Soa);
    if let Some(n) = prepend(&["dns-version"], &apex) {
        let mut txt = vec![SCHEMA_VERSION.len() as u8];
        txt.extend_from_slice(SCHEMA_VERSION.as_bytes());
        b.add(n, Rdata::Txt(txt));
    }

    // Slices by (namespace, service name).
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }

    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_deref(), svc.spec.as_ref()) else {
            continue;
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let Some(svc_name) = prepend(&[name, ns], &svc_suffix) else {
            b.problem(ns, name, "name too long for DNS");
            continue;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            match spec.external_name.as_deref().and_then(wire::name_from_str) {
                Some(target) if target.len() > 1 => b.add(svc_name, Rdata::Cname(target)),
                _ => b.problem(ns, name, "ExternalName without a valid externalName"),
            }
            continue;
        }
        let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(v), _) if !v.is_empty() => v.iter().map(String::as_str).collect(),
            (_, Some(ip)) if !ip.is_empty() => vec![ip.as_str()],
            _ => {
                b.problem(ns, name, "no cluster IP yet");
                continue;
            }
        };
        if ips.iter().any(|ip| ip.eq_ignore_ascii_case("None")) {
            let publish_all = spec.publish_not_ready_addresses.unwrap_or(false);
            let slices = by_service.get(&(ns, name)).cloned().unwrap_or_default();
            add_headless(&mut b, &svc_name, slices, publish_all);
            continue;
        }
        let mut parsed = Vec::new();
        for ip in ips {
            match ip.parse::<IpAddr>() {
                Ok(ip) => parsed.push(ip),
                Err(_) => b.problem(ns, name, format!("cluster IP {ip:?} is not an address")),
            }
        }
        if parsed.is_empty() {
            continue;
        }
        for ip in &parsed {
            b.add(svc_name.clone(), addr_record(*ip));
            b.add(reverse_name(*ip), Rdata::Ptr(svc_name.clone()));
        }
        for port in spec.ports.iter().flatten() {
            let Some(pname) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let proto = proto_label(port.protocol.as_deref());
            match prepend(&[&format!("_{pname}"), &proto], &svc_name) {
                Some(srv) => b.add(
                    srv,
                    Rdata::Srv {
                        priority: 0,
                        weight: 100,
                        port: number,
                        target: svc_name.clone(),
                    },
                ),
                None => b.problem(ns, name, format!("port name {pname:?} too long for DNS")),
            }
        }
    }

    for set in b.records.values_mut() {
        set.sort_unstable();
        set.dedup();
    }
    let zone = encode_zone(config, apex, pod_suffix, svc_suffix, &b.records);
    (zone, b.problems)
}

fn add_headless(b: &mut Builder, svc_name: &[u8], slices: Vec<&EndpointSlice>, all: bool) {
    // (address, hostname name) pairs, then SRV per named port.
    let mut srv: BTreeMap<Vec<u8>, BTreeSet<(u16, Vec<u8>)>> = BTreeMap::new();
    for s in slices {
        if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        for ep in &s.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !all {
                continue;
            }
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                let host = ep
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| dashed_hostname(ip));
                let Some(host_name) = prepend(&[&host], svc_name) else {
                    continue;
                };
                b.add(svc_name.to_vec(), addr_record(ip));
                b.add(host_name.clone(), addr_record(ip));
                b.add(reverse_name(ip), Rdata::Ptr(host_name.clone()));
                for port in s.ports.iter().flatten() {
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
            b.add(
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

fn encode_zone(
    config: &ZoneConfig,
    apex: Vec<u8>,
    pod_suffix: Vec<u8>,
    svc_suffix: Vec<u8>,
    records: &HashMap<Vec<u8>, Vec<Rdata>>,
) -> Zone {
    let mut names: HashMap<Box<[u8]>, Node> = HashMap::with_capacity(records.len() * 2);
    let mut count = 0;
    for (name, set) in records {
        let mut node = Node::default();
        // Sorted, so each type's records are together.
        for group in set.chunk_by(|a, b| a.rtype() == b.rtype()) {
            let t = group[0].rtype();
            let rs: Vec<&Rdata> = group.iter().collect();
            count += rs.len();
            if let [Rdata::Cname(target)] = rs.as_slice() {
                node.cname = Some(target.clone().into_boxed_slice());
            }
            node.sets
                .push((t, encode_set(config, &apex, name, &rs, records)));
        }
        names.insert(name.clone().into_boxed_slice(), node);
    }
    // Empty non-terminals: every ancestor of an in-zone name, up to the apex.
    let in_zone: Vec<Vec<u8>> = names
        .keys()
        .filter(|n| wire::ends_with_name(n, &apex))
        .map(|n| n.to_vec())
        .collect();
    for always in [svc_suffix, pod_suffix.clone()] {
        names.entry(always.into_boxed_slice()).or_default();
    }
    for n in in_zone {
        // Up from the parent; an ancestor already present has (or will have) its own
        // ancestors added.
        for o in wire::label_offsets(&n).skip(1) {
            let suffix = &n[o..];
            if suffix.len() < apex.len() || names.contains_key(suffix) {
                break;
            }
            names.insert(suffix.into(), Node::default());
        }
    }
    Zone {
        apex,
        pod_suffix,
        ttl: config.ttl,
        serial: config.serial,
        names,
        records: count,
    }
}

/// Encodes one RRset (and for SRV the addresses of its targets as additional records).
fn encode_set(
    config: &ZoneConfig,
    apex: &[u8],
    owner: &[u8],
    rs: &[&Rdata],
    all: &HashMap<Vec<u8>, Vec<Rdata>>,
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
            for a in all.get(target).into_iter().flatten() {
                if matches!(a, Rdata::A(_) | Rdata::Aaaa(_)) {
                    let at = e.record(target, a.rtype(), ttl);
                    write_rdata(&mut e, a, config, apex);
                    e.end_rdata(at);
                    ar += 1;
                }
            }
        }
    }
    Answer {
        bytes: e.buf.into_boxed_slice(),
        answer_len,
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
        self.names.len()
    }

    /// What the zone says about (lowercase name, type).
    pub fn resolve(&self, lname: &[u8], qtype: u16) -> Resolution<'_> {
        let in_zone = wire::ends_with_name(lname, &self.apex);
        let Some(node) = self.names.get(lname) else {
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
                Resolution::Owned(encode_set(
                    &config,
                    &self.apex,
                    lname,
                    &[&r],
                    &HashMap::new(),
                ))
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
        out.extend_from_slice(&cname.bytes[..cname.answer_len]);
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
            out.extend_from_slice(&a.bytes[..a.answer_len]);
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
