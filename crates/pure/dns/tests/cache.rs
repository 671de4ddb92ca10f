//! The forwarded-answer cache: responses encoded by hickory-proto (with its own
//! compression), replayed with the client's question, TTLs decremented, negative caching
//! by the SOA, eviction, OPT handling.

mod common;

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use podnet_dns::cache::{self, Cache, Stored};
use podnet_dns::wire;
use std::time::Duration;

fn response(name: &str, code: ResponseCode, answers: Vec<Record>, soa: Option<Record>) -> Vec<u8> {
    let mut m = Message::new(7, MessageType::Response, OpCode::Query);
    m.metadata.response_code = code;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.answers = answers;
    if let Some(s) = soa {
        m.authorities.push(s);
    }
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    m.to_vec().unwrap()
}

fn a(name: &str, ttl: u32, ip: [u8; 4]) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A(ip.into())))
}

fn soa(ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        Name::from_ascii("example.test.").unwrap(),
        ttl,
        RData::SOA(SOA::new(
            Name::from_ascii("ns.example.test.").unwrap(),
            Name::from_ascii("root.example.test.").unwrap(),
            1,
            7200,
            1800,
            86400,
            minimum,
        )),
    )
}

fn key_of(name: &str) -> Vec<u8> {
    let mut buf = [0u8; cache::MAX_KEY];
    cache::key(&wire::name_from_str(name).unwrap(), 1, 1, &mut buf).to_vec()
}

fn replay(stored: &Stored, client: &[u8], elapsed: u32) -> Message {
    let q = wire::parse_query(client).unwrap();
    let mut out = Vec::new();
    stored.write_reply(&q, elapsed, &mut out);
    Message::from_vec(&out).unwrap()
}

#[test]
fn positive_answer_replayed_with_ttls_decremented() {
    let msg = response(
        "www.example.test.",
        ResponseCode::NoError,
        vec![
            Record::from_rdata(
                Name::from_ascii("www.example.test.").unwrap(),
                300,
                RData::CNAME(CNAME(Name::from_ascii("web.example.test.").unwrap())),
            ),
            a("web.example.test.", 60, [192, 0, 2, 7]),
        ],
        None,
    );
    let stored = Stored::from_response(&msg).unwrap();
    assert_eq!(stored.ttl(), 60);
    let mut c = Cache::new(10);
    let t0 = Duration::from_secs(1000);
    assert!(c.insert(&key_of("www.example.test"), stored, t0));
    let (s, elapsed) = c
        .get(
            &key_of("www.example.test"),
            t0 + Duration::from_millis(10_500),
        )
        .unwrap();
    assert_eq!(elapsed, 10);
    let m = replay(s, &query("WWW.example.test.", RecordType::A, None), elapsed);
    assert_eq!(m.metadata.id, 0xBEEF);
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.example.test.");
    assert!(m.edns.is_none(), "the client sent no OPT");
    assert_eq!(
        lines(&m.answers),
        [
            "WWW.example.test. 290 CNAME web.example.test.",
            "web.example.test. 50 A 192.0.2.7"
        ]
    );
    let m = replay(
        s,
        &query("www.example.test.", RecordType::A, Some(4096)),
        elapsed,
    );
    assert!(m.edns.is_some());
    // Expired.
    assert!(
        c.get(&key_of("www.example.test"), t0 + Duration::from_secs(60))
            .is_none()
    );
    assert!(c.is_empty());
}

#[test]
fn negative_answers_cached_by_the_soa_minimum() {
    let msg = response(
        "nx.example.test.",
        ResponseCode::NXDomain,
        vec![],
        Some(soa(300, 30)),
    );
    let stored = Stored::from_response(&msg).unwrap();
    assert_eq!(stored.ttl(), 30);
    let m = replay(&stored, &query("nx.example.test.", RecordType::A, None), 3);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(lines(&m.authorities)[0].split(' ').nth(1), Some("297"));
    // NODATA: the SOA's own TTL when smaller.
    let msg = response(
        "nd.example.test.",
        ResponseCode::NoError,
        vec![],
        Some(soa(20, 600)),
    );
    assert_eq!(Stored::from_response(&msg).unwrap().ttl(), 20);
    // No SOA: not cached.
    let msg = response("nx.example.test.", ResponseCode::NXDomain, vec![], None);
    let stored = Stored::from_response(&msg).unwrap();
    assert_eq!(stored.ttl(), 0);
    assert!(!Cache::new(1).insert(&key_of("nx.example.test"), stored, Duration::ZERO));
    // SERVFAIL: not cached.
    let msg = response(
        "x.example.test.",
        ResponseCode::ServFail,
        vec![],
        Some(soa(20, 20)),
    );
    assert_eq!(Stored::from_response(&msg).unwrap().ttl(), 0);
}

#[test]
fn ttls_are_capped() {
    let msg = response(
        "x.example.test.",
        ResponseCode::NoError,
        vec![a("x.example.test.", 86400, [192, 0, 2, 1])],
        None,
    );
    assert_eq!(Stored::from_response(&msg).unwrap().ttl(), cache::MAX_TTL);
}

#[test]
fn eviction_when_full_keeps_the_newest() {
    let mut c = Cache::new(3);
    for i in 0..5u8 {
        let name = format!("h{i}.example.test.");
        let msg = response(
            &name,
            ResponseCode::NoError,
            vec![a(&name, 60, [192, 0, 2, i])],
            None,
        );
        c.insert(
            &key_of(&name),
            Stored::from_response(&msg).unwrap(),
            Duration::ZERO,
        );
        assert!(c.len() <= 3);
    }
    for i in 0..5u8 {
        let hit = c
            .get(
                &key_of(&format!("h{i}.example.test.")),
                Duration::from_secs(1),
            )
            .is_some();
        assert_eq!(hit, i >= 2, "h{i}");
    }
    // Re-inserting a key does not let its stale queue entry evict the fresh one.
    for _ in 0..10 {
        let name = "h4.example.test.";
        let msg = response(
            name,
            ResponseCode::NoError,
            vec![a(name, 60, [192, 0, 2, 4])],
            None,
        );
        c.insert(
            &key_of(name),
            Stored::from_response(&msg).unwrap(),
            Duration::ZERO,
        );
    }
    assert_eq!(c.len(), 3);
    assert!(c.get(&key_of("h4.example.test."), Duration::ZERO).is_some());
}

#[test]
fn key_is_case_insensitive_through_the_query() {
    let client = query("WwW.Example.TEST.", RecordType::A, None);
    let q = wire::parse_query(&client).unwrap();
    let mut nb = [0u8; wire::MAX_NAME];
    let mut kb = [0u8; cache::MAX_KEY];
    let k = cache::key(q.lower_name(&mut nb), q.qtype, q.qclass, &mut kb);
    assert_eq!(k, key_of("www.example.test"));
}

#[test]
fn alias_reply_appends_the_targets_answers() {
    let z = zone();
    let msg = response(
        "www.example.test.",
        ResponseCode::NoError,
        vec![a("www.example.test.", 60, [192, 0, 2, 7])],
        None,
    );
    let stored = Stored::from_response(&msg).unwrap();
    let client = query("Ext.default.svc.cluster.local.", RecordType::A, Some(1232));
    let q = wire::parse_query(&client).unwrap();
    let mut nb = [0u8; wire::MAX_NAME];
    let podnet_dns::Resolution::Cname { answer, .. } = z.resolve(q.lower_name(&mut nb), q.qtype)
    else {
        panic!("an alias")
    };
    let mut out = Vec::new();
    z.write_alias_reply(&q, answer, Some((&stored, 7)), 1232, &mut out);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(
        lines(&m.answers),
        [
            "Ext.default.svc.cluster.local. 5 CNAME www.example.test.",
            "www.example.test. 53 A 192.0.2.7"
        ]
    );
    assert!(m.edns.is_some());
    // Not resolved: the CNAME alone.
    z.write_alias_reply(&q, answer, None, 1232, &mut out);
    assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 1);
}
