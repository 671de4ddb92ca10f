//! The policy sync loop's event handling, on a fake kernel: watch events gathered in
//! `Changes` (first lists, a relabel, a deletion, a re-list that misses a deleted
//! object) program the same table as a whole-snapshot sync of the same objects; a sync
//! without changes sends nothing; a refused transaction is followed by a full replace.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::Event;
use podnet_agent::policy::{Changes, PolicyOps, PolicySyncer};
use podnet_nft::{Op, Transaction};
use serde_json::json;

#[derive(Default)]
struct Recorder {
    sent: Vec<Transaction>,
    refuse_next: bool,
}

impl PolicyOps for Recorder {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        if std::mem::take(&mut self.refuse_next) {
            bail!("refused");
        }
        self.sent.push(tx.clone());
        Ok(())
    }
}

fn pod(name: &str, app: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "a", "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip},
    }))
    .unwrap()
}

fn namespace() -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap()
}

fn policy(name: &str, from_app: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "a"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}],
                              "ports": [{"port": 5432}]}]},
    }))
    .unwrap()
}

fn is_replace(tx: &Transaction) -> bool {
    matches!(tx.ops.as_slice(), [Op::AddTable, Op::DeleteTable, ..])
}

#[test]
fn events_program_what_a_snapshot_does() {
    let mut s = PolicySyncer::new("node-1".into(), Recorder::default());
    let mut changes = Changes::new();
    for ev in [Event::Init, Event::InitApply(namespace()), Event::InitDone] {
        changes.namespace_event(ev);
    }
    changes.pod_event(Event::Init);
    changes.pod_event(Event::InitApply(pod("db", "db", "10.244.0.2")));
    changes.pod_event(Event::InitApply(pod("web", "web", "10.244.0.3")));
    assert!(!changes.ready(), "pods and policies are not listed yet");
    changes.pod_event(Event::InitDone);
    changes.policy_event(Event::Init);
    changes.policy_event(Event::InitApply(policy("allow-web", "web")));
    changes.policy_event(Event::InitDone);
    assert!(changes.ready());
    let first = s.sync_changes(changes.take()).unwrap();
    assert_eq!(first.isolated, (1, 0));
    assert!(
        is_replace(&s.kernel_mut().sent[0]),
        "the first sync replaces"
    );
    assert_eq!(s.sync_changes(changes.take()).unwrap().ops, 0);

    // A relabel: the peer leaves; a few operations, not a replace.
    changes.pod_event(Event::Apply(pod("web", "api", "10.244.0.3")));
    let r = s.sync_changes(changes.take()).unwrap();
    assert!(r.ops > 0 && r.ops <= 6, "{r:?}");
    assert!(!is_replace(s.kernel_mut().sent.last().unwrap()));

    // A re-list that misses the policy (deleted while the watch was down) removes it.
    changes.policy_event(Event::Init);
    changes.policy_event(Event::InitDone);
    let r = s.sync_changes(changes.take()).unwrap();
    assert_eq!(r.isolated, (0, 0));

    // The same history as one snapshot: the same table.
    let mut fresh = PolicySyncer::new("node-1".into(), Recorder::default());
    fresh
        .sync(
            &[],
            &[
                pod("db", "db", "10.244.0.2"),
                pod("web", "api", "10.244.0.3"),
            ],
            &[namespace()],
        )
        .unwrap();
    assert_eq!(s.table(), fresh.table());

    // A refused transaction: the next sync replaces the whole table.
    changes.policy_event(Event::Apply(policy("allow-api", "api")));
    s.kernel_mut().refuse_next = true;
    assert!(s.sync_changes(changes.take()).is_err());
    let r = s.sync_changes(changes.take()).unwrap();
    assert_eq!(r.isolated, (1, 0));
    assert!(is_replace(s.kernel_mut().sent.last().unwrap()));
    fresh
        .sync(
            &[policy("allow-api", "api")],
            &[
                pod("db", "db", "10.244.0.2"),
                pod("web", "api", "10.244.0.3"),
            ],
            &[namespace()],
        )
        .unwrap();
    assert_eq!(s.table(), fresh.table());
}
