//! Every record kind of the specification, NXDOMAIN versus NODATA, truncation and the
//! error rcodes — each reply decoded by hickory-proto.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use podnet_dns::{Outcome, ZoneConfig, answer_query, build_zone};
use serde_json::json;

fn assert_negative(m: &hickory_proto::op::Message, code: ResponseCode) {
    assert_eq!(m.metadata.response_code, code);
    assert!(m.answers.is_empty(), "{:?}", lines(&m.answers));
    assert!(m.metadata.authoritative);
    assert_eq!(m.authorities.len(), 1, "SOA in the authority section");
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_ascii(), "cluster.local.");
    let RData::SOA(soa_data) = &soa.data else {
        panic!("{soa:?}")
    };
    assert_eq!(soa_data.mname.to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(soa_data.rname.to_ascii(), "hostmaster.cluster.local.");
    assert_eq!(soa_data.minimum, 5);
}

#[test]
fn cluster_ip_service_a_record_echoes_the_question() {
    let z = zone();
    let m = ask(&z, "WeB.Default.SVC.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.metadata.id, 0xBEEF);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "WeB.Default.SVC.cluster.local."
    );
    assert_eq!(
        lines(&m.answers),
        ["WeB.Default.SVC.cluster.local. 5 A 10.96.0.50"]
    );
}

#[test]
fn dual_stack_service_has_a_and_aaaa() {
    let z = zone();
    let m = ask(&z, "dual.prod.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["dual.prod.svc.cluster.local. 5 A 10.96.0.60"]
    );
    let m = ask(&z, "dual.prod.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(
        lines(&m.answers),
        ["dual.prod.svc.cluster.local. 5 AAAA fd00:10:96::60"]
    );
}

#[test]
fn srv_for_named_ports_of_a_cluster_ip_service() {
    let z = zone();
    let m = ask(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        lines(&m.answers),
        ["_http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        lines(&m.additionals),
        ["web.default.svc.cluster.local. 5 A 10.96.0.50"]
    );
    let m = ask(
        &z,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(m.answers.len(), 1);
    // The protocol is part of the name.
    let m = ask(
        &z,
        "_dns._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_negative(&m, ResponseCode::NXDomain);
    // `_tcp.<svc>` is an empty non-terminal.
    let m = ask(&z, "_tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_negative(&m, ResponseCode::NoError);
}

#[test]
fn ptr_for_cluster_ips_v4_and_v6() {
    let z = zone();
    let m = ask(&z, "50.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["50.0.96.10.in-addr.arpa. 5 PTR web.default.svc.cluster.local."]
    );
    assert!(m.metadata.authoritative);
    let v6 = "0.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";
    let m = ask(&z, v6, RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        [format!("{v6} 5 PTR dual.prod.svc.cluster.local.")]
    );
}

#[test]
fn headless_service_answers_with_ready_endpoints() {
    let z = zone();
    let m = ask(&z, "db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        [
            "db.default.svc.cluster.local. 5 A 10.244.1.5",
            "db.default.svc.cluster.local. 5 A 10.244.2.7"
        ]
    );
    let m = ask(&z, "db-0.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["db-0.db.default.svc.cluster.local. 5 A 10.244.1.5"]
    );
    // No hostname: CoreDNS's dashed form of the address.
    let m = ask(
        &z,
        "10-244-2-7.db.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(m.answers.len(), 1);
    // Not ready: absent.
    let m = ask(
        &z,
        "10-244-3-9.db.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_negative(&m, ResponseCode::NXDomain);
}

#[test]
fn headless_srv_targets_each_endpoint_with_additional_addresses() {
    let z = zone();
    let m = ask(
        &z,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        lines(&m.answers),
        [
            "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
            "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 50 5432 10-244-2-7.db.default.svc.cluster.local.",
        ]
    );
    assert_eq!(
        lines(&m.additionals),
        [
            "db-0.db.default.svc.cluster.local. 5 A 10.244.1.5",
            "10-244-2-7.db.default.svc.cluster.local. 5 A 10.244.2.7",
        ]
    );
}

#[test]
fn headless_ptr_names_the_endpoint() {
    let z = zone();
    let m = ask(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["5.1.244.10.in-addr.arpa. 5 PTR db-0.db.default.svc.cluster.local."]
    );
    let m = ask(&z, "7.2.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["7.2.244.10.in-addr.arpa. 5 PTR 10-244-2-7.db.default.svc.cluster.local."]
    );
}

#[test]
fn publish_not_ready_addresses_and_ipv6_headless() {
    let z = zone();
    let m = ask(&z, "lazy.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(
        lines(&m.answers),
        ["lazy.default.svc.cluster.local. 5 AAAA fd00:244::9"]
    );
    let m = ask(
        &z,
        "fd00-244--9.lazy.default.svc.cluster.local.",
        RecordType::AAAA,
    );
    assert_eq!(m.answers.len(), 1);
    let m = ask(&z, "lazy.default.svc.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NoError);
}

#[test]
fn headless_without_ready_endpoints_is_nxdomain() {
    let z = zone();
    let m = ask(&z, "empty.default.svc.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain);
}

#[test]
fn external_name_is_a_cname() {
    let z = zone();
    let m = ask(&z, "ext.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(
        lines(&m.answers),
        ["ext.default.svc.cluster.local. 5 CNAME www.example.test."]
    );
    // Other types: the server follows the alias.
    let (o, _, _) = ask_with(
        &z,
        "ext.default.svc.cluster.local.",
        RecordType::A,
        None,
        false,
    );
    assert_eq!(o, Outcome::Alias);
}

#[test]
fn schema_version_and_apex_soa() {
    let z = zone();
    let m = ask(&z, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(
        lines(&m.answers),
        ["dns-version.cluster.local. 5 TXT 1.1.0"]
    );
    let m = ask(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = ask(&z, "cluster.local.", RecordType::NS);
    assert_negative(&m, ResponseCode::NoError);
}

#[test]
fn nxdomain_versus_nodata() {
    let z = zone();
    for name in [
        "missing.default.svc.cluster.local.",
        "web.nowhere.svc.cluster.local.",
        "x.web.default.svc.cluster.local.",
        "nothing.cluster.local.",
        "google.com.default.svc.cluster.local.",
    ] {
        assert_negative(&ask(&z, name, RecordType::A), ResponseCode::NXDomain);
    }
    for (name, t) in [
        ("web.default.svc.cluster.local.", RecordType::TXT),
        ("web.default.svc.cluster.local.", RecordType::AAAA),
        ("default.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
        ("pod.cluster.local.", RecordType::A),
        ("dns-version.cluster.local.", RecordType::A),
    ] {
        assert_negative(&ask(&z, name, t), ResponseCode::NoError);
    }
}

#[test]
fn pod_records() {
    let z = zone();
    let m = ask(&z, "10-244-1-5.default.pod.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["10-244-1-5.default.pod.cluster.local. 5 A 10.244.1.5"]
    );
    let m = ask(&z, "fd00--1.x.pod.cluster.local.", RecordType::AAAA);
    assert_eq!(
        lines(&m.answers),
        ["fd00--1.x.pod.cluster.local. 5 AAAA fd00::1"]
    );
    let m = ask(
        &z,
        "10-244-1-5.default.pod.cluster.local.",
        RecordType::AAAA,
    );
    assert_negative(&m, ResponseCode::NoError);
    let m = ask(&z, "default.pod.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NoError);
    let m = ask(&z, "not-an-ip.default.pod.cluster.local.", RecordType::A);
    assert_negative(&m, ResponseCode::NXDomain);
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let z = zone();
    for (name, t) in [
        ("example.com.", RecordType::A),
        ("cluster.local.example.com.", RecordType::A),
        ("9.9.9.9.in-addr.arpa.", RecordType::PTR),
        // A name podnet has a PTR for, asked for another type.
        ("50.0.96.10.in-addr.arpa.", RecordType::A),
    ] {
        let (o, _, _) = ask_with(&z, name, t, None, false);
        assert_eq!(o, Outcome::Forward, "{name}");
    }
}

#[test]
fn before_the_first_sync_the_zone_is_servfail() {
    let z = zone();
    let mut out = Vec::new();
    let q = query("web.default.svc.cluster.local.", RecordType::A, None);
    let o = answer_query(None, z.apex(), &q, false, &mut out);
    assert_eq!(o, Outcome::Reply(podnet_dns::Rcode::ServFail));
    let q = query("example.com.", RecordType::A, None);
    assert_eq!(
        answer_query(None, z.apex(), &q, false, &mut out),
        Outcome::Forward
    );
}

#[test]
fn edns_is_answered_with_opt() {
    let z = zone();
    let (_, m, _) = ask_with(
        &z,
        "web.default.svc.cluster.local.",
        RecordType::A,
        Some(4096),
        false,
    );
    let m = m.unwrap();
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn error_rcodes() {
    let z = zone();
    let mut out = Vec::new();
    // Two questions: FORMERR.
    let mut q = query("web.default.svc.cluster.local.", RecordType::A, None);
    q[5] = 2;
    assert_eq!(
        answer_query(Some(&z), z.apex(), &q, false, &mut out),
        Outcome::Reply(podnet_dns::Rcode::FormErr)
    );
    let m = hickory_proto::op::Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 0xBEEF);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Opcode STATUS: NOTIMP.
    let mut q = query("web.default.svc.cluster.local.", RecordType::A, None);
    q[2] |= 2 << 3;
    assert_eq!(
        answer_query(Some(&z), z.apex(), &q, false, &mut out),
        Outcome::Reply(podnet_dns::Rcode::NotImp)
    );
    // Transfers: REFUSED.
    let q = query("cluster.local.", RecordType::AXFR, None);
    assert_eq!(
        answer_query(Some(&z), z.apex(), &q, false, &mut out),
        Outcome::Reply(podnet_dns::Rcode::Refused)
    );
    // EDNS version 1: BADVERS, with an OPT.
    let mut q = query("web.default.svc.cluster.local.", RecordType::A, Some(1232));
    let n = q.len();
    assert_eq!(&q[n - 10..n - 8], [0, 41], "OPT without options last");
    q[n - 5] = 1; // the version byte of the OPT TTL
    assert_eq!(
        answer_query(Some(&z), z.apex(), &q, false, &mut out),
        Outcome::Reply(podnet_dns::Rcode::BadVers)
    );
    let m = hickory_proto::op::Message::from_vec(&out).unwrap();
    // BADVERS and BADSIG share the value 16; hickory names it BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    // A response is never answered.
    let mut q = query("web.default.svc.cluster.local.", RecordType::A, None);
    q[2] |= 0x80;
    assert_eq!(
        answer_query(Some(&z), z.apex(), &q, false, &mut out),
        Outcome::Drop
    );
}

fn big_headless(n: usize) -> podnet_dns::Zone {
    let svc = service(json!({"metadata": {"name": "big", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}));
    let endpoints: Vec<_> = (0..n)
        .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 200, i % 200 + 1)]}))
        .collect();
    let s = slice(json!({"metadata": {"name": "big-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": endpoints}));
    build_zone(&ZoneConfig::default(), [&svc], [&s]).0
}

#[test]
fn truncation_over_udp_and_full_answer_over_tcp() {
    let z = big_headless(100);
    let name = "big.default.svc.cluster.local.";
    let (_, m, raw) = ask_with(&z, name, RecordType::A, None, false);
    let m = m.unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert!(raw.len() <= 512);
    let (_, m, raw) = ask_with(&z, name, RecordType::A, Some(4096), false);
    let m = m.unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    // Compression: each A record is 16 bytes (pointer owner).
    assert!(raw.len() < 12 + 35 + 100 * 16 + 11 + 1, "{}", raw.len());
    let (_, m, _) = ask_with(&z, name, RecordType::A, None, true);
    assert_eq!(m.unwrap().answers.len(), 100);
}

#[test]
fn additional_records_go_before_truncation() {
    // 17 SRV records (62 bytes each: targets are not compressed, RFC 2782) fit in 1232
    // bytes; their 17 A records (16 bytes each) do not as well.
    let z = big_headless(17);
    let name = "_http._tcp.big.default.svc.cluster.local.";
    let (_, m, raw) = ask_with(&z, name, RecordType::SRV, Some(1232), false);
    let m = m.unwrap();
    assert!(raw.len() <= 1232);
    let full = ask_with(&z, name, RecordType::SRV, None, true).1.unwrap();
    assert_eq!(full.additionals.len(), 17);
    assert_eq!(full.answers.len(), 17);
    assert!(m.additionals.is_empty());
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 17);
    let (_, m, _) = ask_with(&z, name, RecordType::SRV, None, false);
    let m = m.unwrap();
    assert!(m.metadata.truncation);
}

#[test]
fn bad_objects_are_problems_and_skipped() {
    let good = service(json!({"metadata": {"name": "ok", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.9"}}));
    let bad_ip = service(json!({"metadata": {"name": "bad", "namespace": "default"},
        "spec": {"clusterIP": "nope"}}));
    let no_ip = service(
        json!({"metadata": {"name": "pending", "namespace": "default"},
        "spec": {}}),
    );
    let bad_ext = service(
        json!({"metadata": {"name": "alias", "namespace": "default"},
        "spec": {"type": "ExternalName"}}),
    );
    let (z, problems) = build_zone(
        &ZoneConfig::default(),
        [&good, &bad_ip, &no_ip, &bad_ext],
        [],
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(
        ask(&z, "ok.default.svc.cluster.local.", RecordType::A)
            .answers
            .len(),
        1
    );
}

#[test]
fn custom_zone_and_ttl() {
    let (services, slices) = cluster();
    let config = ZoneConfig {
        zone: "Corp.Example".into(),
        ttl: 30,
        serial: 7,
    };
    let (z, _) = build_zone(&config, &services, &slices);
    let m = ask(&z, "web.default.svc.corp.example.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["web.default.svc.corp.example. 30 A 10.96.0.50"]
    );
    let m = ask(&z, "dns-version.corp.example.", RecordType::TXT);
    assert_eq!(m.answers.len(), 1);
    let (o, _, _) = ask_with(
        &z,
        "web.default.svc.cluster.local.",
        RecordType::A,
        None,
        false,
    );
    assert_eq!(o, Outcome::Forward);
}
