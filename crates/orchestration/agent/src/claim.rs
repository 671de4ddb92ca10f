//! Orchestration: the node's pod CIDR when the control plane does not allocate them
//! (clusters without kube-controller-manager's `--allocate-node-cidrs`) — a claim on one
//! `/mask` subnet of the cluster CIDR, kept as a `coordination.k8s.io/v1` Lease per
//! subnet in the agent's namespace.
//!
//! The protocol (every write is conditional, so no two nodes can ever hold one subnet):
//! - A claim is a Lease named after its subnet (`podcidr-10-244-3-0-24`, see
//!   `podnet_cluster::claim_name`), labelled `podnet.io/claim=pod-cidr`, with
//!   `spec.holderIdentity` = the node's name. Claiming a free subnet is a *create*: the
//!   API server refuses a second object of one name (409 AlreadyExists), so of two
//!   agents creating one subnet's claim exactly one succeeds; the other re-lists and
//!   tries another.
//! - An agent that (re)starts and finds a claim it holds keeps it — by an update carrying
//!   the resourceVersion it listed (`renewTime`), not by merely reading it: that update
//!   and a concurrent takeover (below) cannot both succeed (409 Conflict).
//! - A claim whose holder is no Node (the Node was deleted), or that has no holder (it was
//!   released), may be taken over, by an update carrying the listed resourceVersion
//!   (`leaseTransitions` + 1). The Nodes are listed *after* the claims, so a holder
//!   missing from that list was deleted after its claim was written; of several agents
//!   taking one claim over, one succeeds and the others get 409 Conflict, re-list and go
//!   on. Stale claims are reused before a new subnet is created, so a cluster whose
//!   nodes come and go does not run out of subnets.
//! - Claims do not expire with time (no `leaseDurationSeconds`): a node whose agent is
//!   down still has pods using addresses of its subnet. The claim lives as long as the
//!   Node object does.
//! - `Node.spec.podCIDR`, when set, always wins: the agent then uses it and releases any
//!   claim it holds (`holderIdentity` cleared, again conditionally).
//!
//! This is the only file of the agent that writes to the API, and it writes Leases only:
//! the deploy tests derive the Role in deploy/10-agent-rbac.yaml from this file.

use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

/// The label every claim carries, and its value.
pub const CLAIM_LABEL: &str = "podnet.io/claim";
pub const CLAIM_LABEL_VALUE: &str = "pod-cidr";
/// An annotation naming the subnet in its usual form, for people (`kubectl get lease -o
/// yaml`); the name is what counts.
pub const CIDR_ANNOTATION: &str = "podnet.io/pod-cidr";

/// How many list → write rounds one `ensure` makes before it gives up (the agent tries
/// again at its next sync). Each lost round means another agent won a write.
pub const MAX_ROUNDS: usize = 32;

/// `podnet.io/claim=pod-cidr`: the label selector of every claim.
pub fn selector() -> String {
    format!("{CLAIM_LABEL}={CLAIM_LABEL_VALUE}")
}

/// A claim as read from its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    pub cidr: Ipv4Net,
    pub holder: Option<String>,
}

/// The subnet and holder of a claim; `None` when the Lease's name is not a claim's.
pub fn read_claim(lease: &Lease) -> Option<ClaimRecord> {
    let cidr = podnet_cluster::parse_claim_name(lease.metadata.name.as_deref()?)?;
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    Some(ClaimRecord { cidr, holder })
}

/// The subnet each node holds (a node holding several: the lowest, as `ensure` keeps).
pub fn held_by_node<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> BTreeMap<String, Ipv4Net> {
    let mut out: BTreeMap<String, Ipv4Net> = BTreeMap::new();
    for c in leases.into_iter().filter_map(read_claim) {
        if let Some(h) = c.holder {
            let e = out.entry(h).or_insert(c.cidr);
            *e = (*e).min(c.cidr);
        }
    }
    out
}

/// Whether a write lost a race: 409 (AlreadyExists on create, Conflict on update) or 404
/// (the object went away between the list and the write).
fn lost_race(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404)
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// The IPv4 pod CIDRs Nodes carry in their spec.
fn node_cidrs(nodes: &[Node]) -> Vec<Ipv4Net> {
    nodes
        .iter()
        .filter_map(|n| n.spec.as_ref())
        .flat_map(|s| s.pod_cidr.iter().chain(s.pod_cidrs.iter().flatten()))
        .filter_map(|c| c.parse::<Ipv4Net>().ok())
        .map(|c| c.trunc())
        .collect()
}

/// Claims one subnet for one node.
#[derive(Clone)]
pub struct Claimer {
    api: Api<Lease>,
    namespace: String,
    node: String,
    cluster: Ipv4Net,
    mask: u8,
}

impl Claimer {
    /// Claims of `node` for `/mask` subnets of `cluster`, as Leases in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        node: &str,
        cluster: Ipv4Net,
        mask: u8,
    ) -> Self {
        Claimer {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            node: node.to_string(),
            cluster: cluster.trunc(),
            mask,
        }
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        Ok(self
            .api
            .list(&ListParams::default().labels(&selector()))
            .await
            .with_context(|| format!("list claims in namespace {}", self.namespace))?
            .items)
    }

    /// Makes this node hold a claim and returns its subnet: the one it already holds
    /// (renewed), else a stale one taken over, else a new one created. `nodes` lists the
    /// cluster's Nodes from the API; it is called after the claims are listed.
    pub async fn ensure<F, Fut>(&self, nodes: F) -> Result<Ipv4Net>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Vec<Node>>>,
    {
        self.ensure_preferring(None, nodes).await
    }

    /// [`Claimer::ensure`], and when a new subnet must be claimed, `prefer` first if it is
    /// free: the subnet this node used until its claim vanished (deleted by hand), whose
    /// addresses its pods still hold.
    pub async fn ensure_preferring<F, Fut>(
        &self,
        prefer: Option<Ipv4Net>,
        mut nodes: F,
    ) -> Result<Ipv4Net>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Vec<Node>>>,
    {
        for _ in 0..MAX_ROUNDS {
            let leases = self.list().await?;
            let claims: Vec<(ClaimRecord, &Lease)> = leases
                .iter()
                .filter_map(|l| Some((read_claim(l)?, l)))
                .collect();

            // Nodes are listed after the claims (a takeover must not race a new Node).
            let nodes = nodes().await.context("list nodes")?;
            let names: BTreeSet<&str> = nodes
                .iter()
                .filter_map(|n| n.metadata.name.as_deref())
                .collect();
            let in_spec = node_cidrs(&nodes);
            let overlaps_spec = |c: &Ipv4Net| {
                in_spec
                    .iter()
                    .any(|s| s.contains(&c.network()) || c.contains(&s.network()))
            };

            // 1. One this node holds already, usable (the right size, in the cluster CIDR,
            // not overlapping a Node's own pod CIDR): keep the lowest, release the others.
            let mut mine: Vec<&(ClaimRecord, &Lease)> = claims
                .iter()
                .filter(|(c, _)| c.holder.as_deref() == Some(self.node.as_str()))
                .collect();
            mine.sort_by_key(|(c, _)| c.cidr);
            let usable = |c: &Ipv4Net| self.fits(*c) && !overlaps_spec(c);
            if let Some((c, lease)) = mine.iter().find(|(c, _)| usable(&c.cidr)) {
                let mut renewed = (*lease).clone();
                renewed.spec.get_or_insert_with(Default::default).renew_time = Some(now());
                match self.replace(&renewed).await {
                    Ok(()) => {
                        self.release_others(&mine, c.cidr).await;
                        return Ok(c.cidr);
                    }
                    Err(e) if lost_race(&e) => continue,
                    Err(e) => return Err(e).context(format!("renew the claim on {}", c.cidr)),
                }
            }

            // 2. A stale claim: no holder, or a holder that is no Node.
            let mut stale: Vec<&(ClaimRecord, &Lease)> = claims
                .iter()
                .filter(|(c, _)| {
                    c.cidr.prefix_len() == self.mask
                        && self.cluster.contains(&c.cidr)
                        && !overlaps_spec(&c.cidr)
                        && c.holder.as_deref().is_none_or(|h| !names.contains(h))
                })
                .collect();
            stale.sort_by_key(|(c, _)| c.cidr);
            if !stale.is_empty() {
                let (c, lease) = stale[podnet_cluster::pick_index(&self.node, stale.len())];
                let mut taken = (*lease).clone();
                let spec = taken.spec.get_or_insert_with(Default::default);
                tracing::info!(
                    cidr = %c.cidr,
                    previous = c.holder.as_deref().unwrap_or("nobody"),
                    "taking over a stale pod CIDR claim"
                );
                spec.holder_identity = Some(self.node.clone());
                spec.acquire_time = Some(now());
                spec.renew_time = spec.acquire_time.clone();
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                match self.replace(&taken).await {
                    Ok(()) => {
                        // Claims of this node that no longer fit (the cluster CIDR or the
                        // mask changed): given back now that it holds one that does.
                        self.release_others(&mine, c.cidr).await;
                        return Ok(c.cidr);
                    }
                    Err(e) if lost_race(&e) => continue,
                    Err(e) => return Err(e).context(format!("take over the claim on {}", c.cidr)),
                }
            }

            // 3. A new subnet: free of every claim and every Node's own pod CIDR.
            let taken: Vec<Ipv4Net> = claims
                .iter()
                .map(|(c, _)| c.cidr)
                .chain(in_spec.iter().copied())
                .collect();
            let free = |p: &Ipv4Net| {
                usable(p)
                    && !taken
                        .iter()
                        .any(|t| t.contains(&p.network()) || p.contains(&t.network()))
            };
            let cidr = match prefer.filter(free) {
                Some(p) => p,
                None => podnet_cluster::plan_claim(self.cluster, self.mask, &taken, &self.node)?,
            };
            match self
                .api
                .create(&PostParams::default(), &self.new_claim(cidr))
                .await
            {
                Ok(_) => {
                    tracing::info!(%cidr, "claimed a pod CIDR");
                    self.release_others(&mine, cidr).await;
                    return Ok(cidr);
                }
                Err(e) if lost_race(&e) => continue,
                Err(e) => return Err(e).context(format!("create the claim on {cidr}")),
            }
        }
        Err(anyhow!(
            "no pod CIDR claimed after {MAX_ROUNDS} rounds: other agents kept winning"
        ))
    }

    /// Releases this node's claims other than `keep` (extra ones, or ones left from an
    /// earlier cluster CIDR or mask). Best effort: a leftover claim only wastes a subnet,
    /// and the next `ensure` tries again.
    async fn release_others(&self, mine: &[&(ClaimRecord, &Lease)], keep: Ipv4Net) {
        for (other, l) in mine.iter().filter(|(o, _)| o.cidr != keep) {
            match self.release(l).await {
                Ok(()) => {
                    tracing::info!(cidr = %other.cidr, "released a claim this node no longer uses")
                }
                Err(e) => {
                    tracing::warn!(cidr = %other.cidr, error = %e, "releasing a claim this node no longer uses")
                }
            }
        }
    }

    /// Whether a claimed subnet is one this cluster's agents use: the configured size,
    /// inside the cluster CIDR (a claim left from another configuration is not).
    pub fn fits(&self, cidr: Ipv4Net) -> bool {
        cidr.prefix_len() == self.mask && self.cluster.contains(&cidr)
    }

    /// Releases every claim this node holds (its Node now has `spec.podCIDR`). Returns
    /// how many were released.
    pub async fn release_all(&self) -> Result<usize> {
        for _ in 0..MAX_ROUNDS {
            let leases = self.list().await?;
            let mine: Vec<&Lease> = leases
                .iter()
                .filter(|l| {
                    read_claim(l).is_some_and(|c| c.holder.as_deref() == Some(self.node.as_str()))
                })
                .collect();
            let mut lost = false;
            for l in &mine {
                match self.release(l).await {
                    Ok(()) => {}
                    Err(e) if lost_race(&e) => lost = true,
                    Err(e) => return Err(e).context("release a claim"),
                }
            }
            if !lost {
                return Ok(mine.len());
            }
        }
        Err(anyhow!("claims not released after {MAX_ROUNDS} rounds"))
    }

    /// Clears the holder, conditionally on the listed version.
    async fn release(&self, lease: &Lease) -> kube::Result<()> {
        let mut l = lease.clone();
        let spec = l.spec.get_or_insert_with(Default::default);
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        self.replace(&l).await
    }

    /// An update carrying the listed resourceVersion (409 Conflict if anyone wrote since).
    async fn replace(&self, lease: &Lease) -> kube::Result<()> {
        let name = lease.metadata.name.as_deref().unwrap_or_default();
        debug_assert!(lease.metadata.resource_version.is_some());
        self.api
            .replace(name, &PostParams::default(), lease)
            .await
            .map(drop)
    }

    fn new_claim(&self, cidr: Ipv4Net) -> Lease {
        let t = now();
        Lease {
            metadata: ObjectMeta {
                name: Some(podnet_cluster::claim_name(cidr)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    CLAIM_LABEL.to_string(),
                    CLAIM_LABEL_VALUE.to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    CIDR_ANNOTATION.to_string(),
                    cidr.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.node.clone()),
                acquire_time: Some(t.clone()),
                renew_time: Some(t),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn claims_are_read_from_their_names_and_holders() {
        let l = lease("podcidr-10-244-3-0-24", Some("node-1"));
        assert_eq!(
            read_claim(&l),
            Some(ClaimRecord {
                cidr: "10.244.3.0/24".parse().unwrap(),
                holder: Some("node-1".into())
            })
        );
        assert_eq!(
            read_claim(&lease("podcidr-10-244-3-0-24", Some("")))
                .unwrap()
                .holder,
            None
        );
        assert_eq!(read_claim(&lease("kube-scheduler", Some("x"))), None);
        let held = held_by_node(&[
            lease("podcidr-10-244-9-0-24", Some("a")),
            lease("podcidr-10-244-3-0-24", Some("a")),
            lease("podcidr-10-244-4-0-24", Some("b")),
            lease("podcidr-10-244-5-0-24", None),
            lease("something-else", Some("c")),
        ]);
        assert_eq!(
            held,
            BTreeMap::from([
                ("a".to_string(), "10.244.3.0/24".parse().unwrap()),
                ("b".to_string(), "10.244.4.0/24".parse().unwrap()),
            ])
        );
    }
}
