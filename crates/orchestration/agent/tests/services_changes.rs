//! The services sync loop's event handling, on a fake kernel: watch events gathered in
//! `Changes` (first list, updates, deletions, a re-list that misses deleted objects, a
//! batch taken in the middle of a re-list) program the same ports as a whole-snapshot
//! sync of the same objects, and a sync without changes sends nothing.

use std::net::SocketAddrV4;

use anyhow::Result;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use podnet_agent::services::{Changes, ServiceSyncer, ServicesConfig, TransactionOps};
use podnet_nft::Transaction;
use podnet_services::ServicePort;
use serde_json::json;

#[derive(Default)]
struct Recorder {
    sent: Vec<Transaction>,
}

impl TransactionOps for Recorder {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        self.sent.push(tx.clone());
        Ok(())
    }

    fn forget_udp_flows(&mut self, _: &[SocketAddrV4], _: &[SocketAddrV4]) -> Result<usize> {
        Ok(0)
    }
}

fn syncer() -> ServiceSyncer<Recorder> {
    ServiceSyncer::new(
        ServicesConfig {
            node_name: "node-1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            node_port_range: podnet_services::DEFAULT_NODE_PORT_RANGE,
        },
        Recorder::default(),
    )
}

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    }))
    .unwrap()
}

fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "node-2"}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-x"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

/// The ports a fresh syncer programs from the whole snapshot. (Tables are compared only
/// where the history is the same: endpoint index ranges depend on it.)
fn expected(services: &[Service], slices: &[EndpointSlice]) -> Vec<ServicePort> {
    let mut s = syncer();
    s.sync(services, slices).unwrap();
    ports(&s)
}

fn ports(s: &ServiceSyncer<Recorder>) -> Vec<ServicePort> {
    s.proxy().ports().cloned().collect()
}

#[test]
fn watch_events_reach_the_same_table_as_a_snapshot() {
    let mut s = syncer();
    let mut changes = Changes::new(s.node().clone());
    changes.service_event(Event::Init);
    changes.slice_event(Event::Init);
    changes.service_event(Event::InitApply(service("web", "10.96.0.10")));
    changes.service_event(Event::InitApply(service("db", "10.96.0.11")));
    changes.slice_event(Event::InitApply(slice("web", &["10.244.2.5"])));
    changes.service_event(Event::InitDone);
    assert!(!changes.ready(), "slices not listed yet");
    changes.slice_event(Event::InitDone);
    assert!(changes.ready());
    let r = s.sync_changes(changes.take()).unwrap();
    assert_eq!(r.ports, 2);
    let mut fresh = syncer();
    fresh
        .sync(
            &[service("web", "10.96.0.10"), service("db", "10.96.0.11")],
            &[slice("web", &["10.244.2.5"])],
        )
        .unwrap();
    assert_eq!(s.table(), fresh.table(), "same history, same table");
    assert_eq!(
        ports(&s),
        expected(
            &[service("web", "10.96.0.10"), service("db", "10.96.0.11")],
            &[slice("web", &["10.244.2.5"])]
        )
    );
    assert!(changes.ready(), "stays ready after a take");

    // Nothing changed: nothing sent.
    let sent = s.kernel().sent.len();
    let r = s.sync_changes(changes.take()).unwrap();
    assert_eq!((r.ops, s.kernel().sent.len()), (0, sent));

    // An endpoint change: one small transaction, the table as a snapshot would have it.
    changes.slice_event(Event::Apply(slice("web", &["10.244.2.6"])));
    let r = s.sync_changes(changes.take()).unwrap();
    assert!(r.ops > 0 && r.ops <= 4, "a small difference: {} ops", r.ops);
    assert_eq!(
        ports(&s),
        expected(
            &[service("web", "10.96.0.10"), service("db", "10.96.0.11")],
            &[slice("web", &["10.244.2.6"])]
        )
    );

    // A deletion.
    changes.service_event(Event::Delete(service("db", "10.96.0.11")));
    assert_eq!(s.sync_changes(changes.take()).unwrap().ports, 1);
}

#[test]
fn a_relist_deletes_what_it_no_longer_lists() {
    let mut s = syncer();
    let mut changes = Changes::new(s.node().clone());
    for (svc, ip) in [
        ("a", "10.96.0.10"),
        ("b", "10.96.0.11"),
        ("c", "10.96.0.12"),
    ] {
        changes.service_event(Event::InitApply(service(svc, ip)));
        changes.slice_event(Event::InitApply(slice(svc, &["10.244.2.5"])));
    }
    changes.service_event(Event::InitDone);
    changes.slice_event(Event::InitDone);
    assert_eq!(s.sync_changes(changes.take()).unwrap().ports, 3);

    // The watch restarts; "b" and its slice were deleted while it was down, "d" created.
    // A batch is taken in the middle of the re-list: what was listed so far is applied,
    // nothing is deleted yet.
    changes.service_event(Event::Init);
    changes.slice_event(Event::Init);
    changes.service_event(Event::InitApply(service("a", "10.96.0.10")));
    changes.slice_event(Event::InitApply(slice("a", &["10.244.2.5"])));
    assert_eq!(s.sync_changes(changes.take()).unwrap().ports, 3);
    changes.service_event(Event::InitApply(service("c", "10.96.0.12")));
    changes.service_event(Event::InitApply(service("d", "10.96.0.13")));
    changes.slice_event(Event::InitApply(slice("c", &["10.244.2.5"])));
    changes.service_event(Event::InitDone);
    changes.slice_event(Event::InitDone);
    // An object created after the list ended, before the sync, is kept.
    changes.service_event(Event::Apply(service("e", "10.96.0.14")));
    let r = s.sync_changes(changes.take()).unwrap();
    assert_eq!(r.ports, 4, "a, c, d, e");
    assert_eq!(
        ports(&s),
        expected(
            &[
                service("a", "10.96.0.10"),
                service("c", "10.96.0.12"),
                service("d", "10.96.0.13"),
                service("e", "10.96.0.14")
            ],
            &[slice("a", &["10.244.2.5"]), slice("c", &["10.244.2.5"])]
        )
    );
}
