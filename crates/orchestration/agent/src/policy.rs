//! Orchestration: NetworkPolicy enforcement — watch NetworkPolicies, Pods and Namespaces →
//! [`Changes`] → plan the local pods the changes can reach (pure, `podnet-policy`'s
//! `Planner`) → one nf_tables transaction of what changed ([`PolicyOps`]). A sync's cost
//! follows the change, not the cluster (one policy or pod label change with 1000 policies
//! and 1000 local pods: a few milliseconds end to end, kernel included;
//! `benches/policy_scale.rs`).
//!
//! Invariants: the table is podnet's alone and changes only by whole transactions; the
//! first sync after a start waits for complete lists of all three kinds (an empty cache
//! would open every pod) and then replaces the table atomically, so the previous run's
//! rules stay in force until that instant — an isolated pod stays isolated while the agent
//! restarts (fail closed); a refused transaction leaves the previous rules, is logged and
//! counted, and the next attempt (after [`crate::RETRY`]) replaces the whole table; a
//! policy that cannot be read is reported and still isolates its pods.
//!
//! As for Services: no reflector store, no copy of the objects; each watch event is read at
//! once into what planning needs (`PolicyInput`, `PodInput`, `NamespaceInput`) and the
//! object dropped; no debounce (events arriving during a sync go into the next one).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::watcher;
use podnet_nft::{Table, Transaction};
use podnet_policy::{NamespaceInput, Planner, PodInput, PolicyInput, Problem};
use tokio::sync::Notify;

use crate::RETRY;
use crate::metrics::Metrics;
use crate::pending::{Pending, lock, watch};

/// The kernel side: one atomic transaction.
pub trait PolicyOps: Send {
    fn apply(&mut self, tx: &Transaction) -> Result<()>;
}

impl PolicyOps for podnet_netlink::nftables::Nftables {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        podnet_netlink::nftables::Nftables::apply(self, tx).map_err(anyhow::Error::from)
    }
}

/// What one policy sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// Local pods isolated for ingress, for egress.
    pub isolated: (usize, usize),
    /// Operations sent (0: nothing changed).
    pub ops: usize,
    pub problems: Vec<Problem>,
}

/// The plan as last sent to the kernel, and the kernel handle: one sync at a time.
pub struct PolicySyncer<T> {
    planner: Planner,
    kernel: T,
    /// Told the isolated pods before the policy table changes.
    fast_path: Option<crate::fastpath::Shared>,
}

impl<T: PolicyOps> PolicySyncer<T> {
    pub fn new(node_name: String, kernel: T) -> Self {
        PolicySyncer {
            planner: Planner::new(node_name),
            kernel,
            fast_path: None,
        }
    }

    /// Reports isolated pods to the fast path (see [`crate::fastpath`]) from now on.
    pub fn with_fast_path(mut self, fast_path: crate::fastpath::Shared) -> Self {
        self.fast_path = Some(fast_path);
        self
    }

    /// Takes a whole snapshot (what is not in it is deleted) and sends the difference to
    /// the kernel; only the local pods whose inputs changed are planned again.
    pub fn sync(
        &mut self,
        policies: &[NetworkPolicy],
        pods: &[Pod],
        namespaces: &[Namespace],
    ) -> Result<PolicyReport> {
        self.planner.replace_all(policies, pods, namespaces);
        self.sync_planned()
    }

    /// Takes the changes watched since the last sync and sends the difference to the
    /// kernel: the agent's path, whose cost follows the size of the change.
    pub fn sync_changes(&mut self, changes: Changes) -> Result<PolicyReport> {
        changes.apply_to(&mut self.planner);
        self.sync_planned()
    }

    fn sync_planned(&mut self) -> Result<PolicyReport> {
        let plan = self.planner.sync();
        if let Some(fp) = &self.fast_path {
            // Before the transaction: an isolated pod's packets must meet the policy table.
            if let Err(e) = lock(fp).isolated(&self.planner.isolated_pods()) {
                self.planner.failed();
                return Err(e.context("fast path refused the isolated pods; policies wait"));
            }
        }
        let ops = plan.transaction.len();
        if ops > 0
            && let Err(e) = self.kernel.apply(&plan.transaction)
        {
            self.planner.failed();
            return Err(e.context("policy transaction refused; the previous rules stay"));
        }
        Ok(PolicyReport {
            isolated: plan.isolated,
            ops,
            problems: self.planner.problems(),
        })
    }

    /// The table as planned (the kernel's after a successful sync; dumps and tests).
    pub fn table(&self) -> Table {
        self.planner.table()
    }

    pub fn kernel_mut(&mut self) -> &mut T {
        &mut self.kernel
    }
}

/// The watch events of NetworkPolicies, Pods and Namespaces gathered between two syncs:
/// per object only its latest state, already read into what planning needs.
#[derive(Debug, Default)]
pub struct Changes {
    policies: Pending<String, PolicyInput>,
    pods: Pending<String, PodInput>,
    namespaces: Pending<String, NamespaceInput>,
}

/// A `Planner::retain_*` method: deletes the objects not kept.
type Retain = fn(&mut Planner, &dyn Fn(&str) -> bool);

impl<I> Pending<String, I> {
    /// Tells the planner each object's latest state, then the deletions a complete list
    /// implies.
    fn apply_to(
        self,
        planner: &mut Planner,
        set: fn(&mut Planner, I),
        delete: fn(&mut Planner, &str),
        retain: Retain,
    ) {
        for (name, input) in self.latest {
            match input {
                Some(i) => set(planner, i),
                None => delete(planner, &name),
            }
        }
        if let Some(listed) = self.listed {
            retain(planner, &|n| listed.contains(n));
        }
    }
}

impl Changes {
    pub fn new() -> Changes {
        Changes::default()
    }

    pub fn policy_event(&mut self, event: watcher::Event<NetworkPolicy>) {
        self.policies.event(event, |np| {
            let input = PolicyInput::new(np);
            (input.key().to_string(), input)
        });
    }

    pub fn pod_event(&mut self, event: watcher::Event<Pod>) {
        self.pods.event(event, |p| {
            let input = PodInput::new(p);
            (input.key().to_string(), input)
        });
    }

    pub fn namespace_event(&mut self, event: watcher::Event<Namespace>) {
        self.namespaces.event(event, |n| {
            let input = NamespaceInput::new(n);
            (input.name().to_string(), input)
        });
    }

    /// Whether all three kinds were listed completely once (before that, a sync would
    /// program from a partial view: a missing policy opens its pods).
    pub fn ready(&self) -> bool {
        self.policies.ready && self.pods.ready && self.namespaces.ready
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.pods.is_empty() && self.namespaces.is_empty()
    }

    /// The changes gathered so far; `self` goes on gathering.
    pub fn take(&mut self) -> Changes {
        Changes {
            policies: self.policies.take(),
            pods: self.pods.take(),
            namespaces: self.namespaces.take(),
        }
    }

    fn apply_to(self, planner: &mut Planner) {
        self.namespaces.apply_to(
            planner,
            Planner::set_namespace,
            Planner::delete_namespace,
            |p, keep| p.retain_namespaces(keep),
        );
        self.pods
            .apply_to(planner, Planner::set_pod, Planner::delete_pod, |p, keep| {
                p.retain_pods(keep)
            });
        self.policies.apply_to(
            planner,
            Planner::set_policy,
            Planner::delete_policy,
            |p, keep| p.retain_policies(keep),
        );
    }
}

/// A shared syncer: the sync loop and dumps use it.
pub type Shared<T> = Arc<Mutex<PolicySyncer<T>>>;

/// Watches NetworkPolicies, Pods and Namespaces and keeps the table in step, until dropped.
pub async fn run<T: PolicyOps + 'static>(
    client: kube::Client,
    syncer: Shared<T>,
    metrics: Arc<Metrics>,
    resync: std::time::Duration,
) -> Result<()> {
    let notify = Arc::new(Notify::new());
    // The watches read each event into `changes` as it comes (no object is kept); each
    // sync takes what gathered since the previous one.
    let changes = Arc::new(Mutex::new(Changes::new()));
    let watch_np = watch(
        Api::<NetworkPolicy>::all(client.clone()),
        changes.clone(),
        notify.clone(),
        Changes::policy_event,
    );
    let watch_pods = watch(
        Api::<Pod>::all(client.clone()),
        changes.clone(),
        notify.clone(),
        Changes::pod_event,
    );
    let watch_ns = watch(
        Api::<Namespace>::all(client),
        changes.clone(),
        notify.clone(),
        Changes::namespace_event,
    );
    let sync_loop = async move {
        // Never program from a partial view: an empty cache would open every pod.
        while !lock(&changes).ready() {
            notify.notified().await;
        }
        let mut last_problems: Vec<Problem> = Vec::new();
        loop {
            // Only what changed; an empty batch still syncs (a periodic resync is then a
            // no-op, a retry after a refused transaction a full replace).
            let batch = lock(&changes).take();
            let started = Instant::now();
            let syncer = syncer.clone();
            let result = tokio::task::spawn_blocking(move || lock(&syncer).sync_changes(batch))
                .await
                .context("policy sync panicked")?;
            let ok = result.is_ok();
            metrics.record_policy_sync(ok, started.elapsed().as_secs_f64());
            match result {
                Ok(r) => {
                    metrics
                        .policy_isolated_pods
                        .set((r.isolated.0 + r.isolated.1) as i64);
                    metrics.policy_problems.set(r.problems.len() as i64);
                    if r.problems != last_problems {
                        for p in &r.problems {
                            tracing::warn!(problem = %p, "network policy not applied");
                        }
                        last_problems = r.problems;
                    }
                    if r.ops > 0 {
                        tracing::info!(
                            ops = r.ops,
                            ingress_isolated = r.isolated.0,
                            egress_isolated = r.isolated.1,
                            "policy synced"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "policy sync failed"),
            }
            let wait = if ok { resync } else { resync.min(RETRY) };
            tokio::select! {
                // No debounce: a sync costs milliseconds, and events arriving during one
                // are gathered into the next.
                _ = notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    };
    tokio::select! {
        () = watch_np => Err(anyhow::anyhow!("network policy watch ended")),
        () = watch_pods => Err(anyhow::anyhow!("pod watch ended")),
        () = watch_ns => Err(anyhow::anyhow!("namespace watch ended")),
        r = sync_loop => r,
    }
}
