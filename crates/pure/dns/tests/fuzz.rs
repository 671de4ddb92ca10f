//! Never panic on any input: random bytes and mutated valid queries through
//! `answer_query`, random bytes through the response reader; every reply podnet writes
//! is read back by hickory-proto and carries the query's ID.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use podnet_dns::{Outcome, Stored, answer_query};
use proptest::prelude::*;

fn seeds() -> Vec<Vec<u8>> {
    vec![
        query("web.default.svc.cluster.local.", RecordType::A, None),
        query(
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
            Some(1232),
        ),
        query("5.1.244.10.in-addr.arpa.", RecordType::PTR, None),
        query(
            "missing.default.svc.cluster.local.",
            RecordType::AAAA,
            Some(512),
        ),
        query("10-244-1-5.default.pod.cluster.local.", RecordType::A, None),
        query("example.com.", RecordType::A, Some(4096)),
    ]
}

fn check(zone: &podnet_dns::Zone, packet: &[u8]) {
    let mut out = Vec::new();
    for tcp in [false, true] {
        if let Outcome::Reply(_) = answer_query(Some(zone), zone.apex(), packet, tcp, &mut out) {
            let m = hickory_proto::op::Message::from_vec(&out).expect("a readable reply");
            assert_eq!(m.metadata.id, u16::from_be_bytes([packet[0], packet[1]]));
            if !tcp {
                assert!(out.len() <= 65535);
            }
        }
    }
    // Read as an upstream response, then replayed and appended: no panic either.
    if let Some(stored) = Stored::from_response(packet) {
        let q = query("x.example.test.", RecordType::A, Some(1232));
        let q = podnet_dns::wire::parse_query(&q).unwrap();
        stored.write_reply(&q, 1, &mut out);
        // Upstream RDATA is copied as it came (hickory may refuse its content), but the
        // framing must be whole: every counted record there, nothing after.
        assert_eq!(framed_end(&out), Some(out.len()));
        out.clear();
        stored.append_answers(1, &mut out);
    }
}

/// Where a message's last counted record ends, walking names and RDLENGTHs.
fn framed_end(m: &[u8]) -> Option<usize> {
    use podnet_dns::wire;
    let count = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]) as usize;
    let mut p = wire::skip_name(m, 12)? + 4;
    for _ in 0..count(6) + count(8) + count(10) {
        p = wire::skip_record(m, p)?;
    }
    Some(p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes(packet in proptest::collection::vec(any::<u8>(), 0..600)) {
        check(&zone(), &packet);
    }

    #[test]
    fn mutated_queries(
        seed in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut packet = seeds()[seed].clone();
        for (at, v) in flips {
            let n = packet.len();
            packet[at % n] = v;
        }
        let keep = packet.len() - cut % 4;
        packet.truncate(keep);
        check(&zone(), &packet);
    }
}

#[test]
fn every_truncation_of_every_seed() {
    let z = zone();
    for s in seeds() {
        for n in 0..=s.len() {
            check(&z, &s[..n]);
        }
    }
}
