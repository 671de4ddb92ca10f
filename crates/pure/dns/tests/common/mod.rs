//! Test helpers: objects from JSON, queries built and replies read by hickory-proto (an
//! independent implementation of the wire format).

#![allow(dead_code)]

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_dns::{Outcome, Zone, ZoneConfig, answer_query, build_zone};
use serde_json::json;

pub fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

pub fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

/// The objects most tests use.
pub fn cluster() -> (Vec<Service>, Vec<EndpointSlice>) {
    let services = vec![
        service(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.50", "clusterIPs": ["10.96.0.50"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "protocol": "UDP"},
                          {"port": 8080}]}})),
        service(json!({"metadata": {"name": "dual", "namespace": "prod"},
            "spec": {"clusterIPs": ["10.96.0.60", "fd00:10:96::60"]}})),
        service(json!({"metadata": {"name": "db", "namespace": "default"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"],
                "ports": [{"name": "pg", "port": 5432}]}})),
        service(json!({"metadata": {"name": "lazy", "namespace": "default"},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": true}})),
        service(
            json!({"metadata": {"name": "empty", "namespace": "default"},
            "spec": {"clusterIP": "None"}}),
        ),
        service(json!({"metadata": {"name": "ext", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "www.example.test"}})),
    ];
    let slices = vec![
        slice(json!({"metadata": {"name": "db-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.3.9"], "conditions": {"ready": false}}]})),
        slice(
            json!({"metadata": {"name": "lazy-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "lazy"}},
            "addressType": "IPv6",
            "endpoints": [
                {"addresses": ["fd00:244::9"], "conditions": {"ready": false}}]}),
        ),
        slice(
            json!({"metadata": {"name": "empty-1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "empty"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.4.4"], "conditions": {"ready": false}}]}),
        ),
    ];
    (services, slices)
}

pub fn zone() -> Zone {
    let (services, slices) = cluster();
    let (zone, problems) = build_zone(&ZoneConfig::default(), &services, &slices);
    assert!(problems.is_empty(), "{problems:?}");
    zone
}

/// A query built by hickory.
pub fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0xBEEF, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Asks the zone over UDP (or TCP); returns the outcome and the reply decoded by hickory.
pub fn ask_with(
    zone: &Zone,
    name: &str,
    t: RecordType,
    edns: Option<u16>,
    tcp: bool,
) -> (Outcome, Option<Message>, Vec<u8>) {
    let q = query(name, t, edns);
    let mut out = Vec::new();
    let o = answer_query(Some(zone), zone.apex(), &q, tcp, &mut out);
    let m = match o {
        Outcome::Reply(_) => Some(Message::from_vec(&out).expect("hickory reads the reply")),
        _ => None,
    };
    (o, m, out)
}

pub fn ask(zone: &Zone, name: &str, t: RecordType) -> Message {
    let (o, m, _) = ask_with(zone, name, t, None, false);
    m.unwrap_or_else(|| panic!("{name} {t}: {o:?}"))
}

/// The answer section as `name TTL TYPE rdata` lines.
pub fn lines(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect()
}
