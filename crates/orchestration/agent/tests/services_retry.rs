//! A refused Services transaction, against the real kernel: the previous rules stay in
//! force while it is refused, the next attempt replaces the whole table, and a bad
//! Service next to good ones is skipped and reported without holding the others back.
//!
//! The refusal is a real one: the transaction is sent with one extra operation the
//! kernel rejects (deleting a set that does not exist), so nf_tables aborts the batch.

use std::net::SocketAddrV4;
use std::process::Command;

use anyhow::Result;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_agent::services::{LinuxTransactions, ServiceSyncer, ServicesConfig, TransactionOps};
use podnet_netlink::netns;
use podnet_nft::{Op, Transaction};
use serde_json::json;

/// The kernel, except that the next transaction can be made to fail.
struct Flaky {
    inner: LinuxTransactions,
    fail_next: bool,
    sent: Vec<Transaction>,
}

impl TransactionOps for Flaky {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        self.sent.push(tx.clone());
        if std::mem::take(&mut self.fail_next) {
            let mut bad = tx.clone();
            bad.push(Op::DeleteSet("no-such-set".into()));
            return self.inner.apply(&bad);
        }
        self.inner.apply(tx)
    }

    fn forget_udp_flows(
        &mut self,
        endpoints: &[SocketAddrV4],
        services: &[SocketAddrV4],
    ) -> Result<usize> {
        self.inner.forget_udp_flows(endpoints, services)
    }
}

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn service(name: &str, ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    }))
    .unwrap()
}

fn slice(service: &str, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
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

fn listing(ns: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "ip",
            "podnet-services",
        ])
        .output()
        .expect("run nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn refused_transaction_keeps_previous_rules_and_is_retried_as_a_replace() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (does not skip)"
    );
    let ns = Ns(format!("pnt{}-retry", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace");
    let fd = netns::open(netns::named_path(&ns.0)).unwrap();
    let kernel = Flaky {
        inner: LinuxTransactions::open_in(&fd).unwrap(),
        fail_next: false,
        sent: Vec::new(),
    };
    let mut syncer = ServiceSyncer::new(
        ServicesConfig {
            node_name: "node-1".into(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            node_port_range: podnet_services::DEFAULT_NODE_PORT_RANGE,
        },
        kernel,
    );

    // A good Service and a bad one (a clusterIP that is no address): the good one is
    // programmed, the bad one is reported by name and skipped.
    let mut bad = service("bad", "10.96.0.20");
    bad.spec.as_mut().unwrap().cluster_ip = Some("not-an-ip".into());
    bad.spec.as_mut().unwrap().cluster_ips = Some(vec!["not-an-ip".into()]);
    let services = vec![service("web", "10.96.0.10"), bad];
    let report = syncer
        .sync(&services, &[slice("web", &["10.244.1.5"])])
        .expect("first sync");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].object.contains("default/bad"),
        "{:?}",
        report.problems
    );
    let before = listing(&ns.0);
    assert!(before.contains("10.244.1.5 . 8080"), "{before}");
    assert!(!before.contains("not-an-ip"));

    // The endpoint moves, but the kernel refuses that transaction: the old rules stay.
    syncer.kernel_mut().fail_next = true;
    let moved = [slice("web", &["10.244.2.7"])];
    let err = syncer.sync(&services, &moved).unwrap_err();
    assert!(
        format!("{err:#}").contains("previous rules stay"),
        "{err:#}"
    );
    assert_eq!(
        listing(&ns.0),
        before,
        "a refused transaction changed the table"
    );

    // The retry replaces the whole table (not a difference against state the kernel
    // never got) and lands the move.
    let report = syncer.sync(&services, &moved).expect("retry");
    assert!(report.ops > 0);
    let retry = syncer.kernel().sent.last().unwrap();
    assert!(
        matches!(retry.ops[..2], [Op::AddTable, Op::DeleteTable]),
        "the retry is not a replace: {:?}",
        &retry.ops[..2]
    );
    let after = listing(&ns.0);
    assert!(after.contains("10.244.2.7 . 8080"), "{after}");
    assert!(!after.contains("10.244.1.5"), "{after}");

    // And then back to differences only: nothing changed, nothing sent.
    let n = syncer.kernel().sent.len();
    assert_eq!(syncer.sync(&services, &moved).unwrap().ops, 0);
    assert_eq!(syncer.kernel().sent.len(), n);
}
