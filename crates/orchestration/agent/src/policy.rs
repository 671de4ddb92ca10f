//! Orchestration: NetworkPolicy enforcement — watch NetworkPolicies, Pods and Namespaces →
//! plan this node's isolated pods (pure, `podnet-policy`) → render the `ip podnet-policy`
//! table → send the difference against what the kernel holds (`podnet_nft::diff_tables`).
//!
//! Invariants: the table is podnet's alone and changes only by whole transactions; the
//! first sync after a start waits for all three caches and then replaces the table
//! atomically, so the previous run's rules stay in force until that instant — an isolated
//! pod stays isolated while the agent restarts (fail closed); a refused transaction leaves
//! the previous rules, is logged and counted, and the next attempt replaces the whole
//! table; a policy that cannot be read is reported and still isolates its pods.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::runtime::reflector;
use podnet_nft::{Table, Transaction, diff_tables};
use podnet_policy::{Cluster, Problem, plan_pods, read_policies, render};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::{DEBOUNCE, RETRY};

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

/// The policy table as last accepted by the kernel, and the kernel handle.
pub struct PolicySyncer<T> {
    node_name: String,
    programmed: Option<Table>,
    kernel: T,
}

impl<T: PolicyOps> PolicySyncer<T> {
    pub fn new(node_name: String, kernel: T) -> Self {
        PolicySyncer {
            node_name,
            programmed: None,
            kernel,
        }
    }

    /// Plans this node's pods and sends the difference to the kernel.
    pub fn sync(
        &mut self,
        policies: &[NetworkPolicy],
        pods: &[Pod],
        namespaces: &[Namespace],
    ) -> Result<PolicyReport> {
        let (policies, problems) = read_policies(policies);
        let cluster = Cluster::new(pods, namespaces);
        let plan = plan_pods(&policies, &cluster, Some(&self.node_name));
        let table = render(&plan);
        let tx = match &self.programmed {
            None => Transaction::replace_table(&table),
            Some(old) => diff_tables(old, &table),
        };
        if !tx.is_empty()
            && let Err(e) = self.kernel.apply(&tx)
        {
            self.programmed = None;
            return Err(e.context("policy transaction refused; the previous rules stay"));
        }
        self.programmed = Some(table);
        Ok(PolicyReport {
            isolated: (
                plan.iter().filter(|p| p.ingress.is_some()).count(),
                plan.iter().filter(|p| p.egress.is_some()).count(),
            ),
            ops: tx.len(),
            problems,
        })
    }

    /// The table as programmed (dumps and tests).
    pub fn table(&self) -> Option<&Table> {
        self.programmed.as_ref()
    }

    pub fn kernel_mut(&mut self) -> &mut T {
        &mut self.kernel
    }
}

/// A shared syncer: the sync loop and the `/policy` dump use it.
pub type Shared<T> = Arc<Mutex<PolicySyncer<T>>>;

/// Watches NetworkPolicies, Pods and Namespaces and keeps the table in step, until dropped.
pub async fn run<T: PolicyOps + 'static>(
    client: kube::Client,
    syncer: Shared<T>,
    metrics: Arc<Metrics>,
    resync: std::time::Duration,
) -> Result<()> {
    let notify = Arc::new(Notify::new());
    let (np_reader, np_writer) = reflector::store::<NetworkPolicy>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let watch_np = crate::reflect(
        Api::<NetworkPolicy>::all(client.clone()),
        np_writer,
        notify.clone(),
    );
    let watch_pods = crate::reflect(Api::<Pod>::all(client.clone()), pod_writer, notify.clone());
    let watch_ns = crate::reflect(Api::<Namespace>::all(client), ns_writer, notify.clone());
    let sync_loop = async move {
        // Never program from a partial view: an empty cache would open every pod.
        np_reader.wait_until_ready().await.context("policy watch")?;
        pod_reader.wait_until_ready().await.context("pod watch")?;
        ns_reader
            .wait_until_ready()
            .await
            .context("namespace watch")?;
        let mut last_problems: Vec<Problem> = Vec::new();
        loop {
            let policies = clone_all(np_reader.state());
            let pods = clone_all(pod_reader.state());
            let namespaces = clone_all(ns_reader.state());
            let started = Instant::now();
            let syncer = syncer.clone();
            let result = tokio::task::spawn_blocking(move || {
                syncer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sync(&policies, &pods, &namespaces)
            })
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
                _ = notify.notified() => tokio::time::sleep(DEBOUNCE).await,
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

fn clone_all<K: Clone>(objects: Vec<Arc<K>>) -> Vec<K> {
    objects.iter().map(|o| (**o).clone()).collect()
}
