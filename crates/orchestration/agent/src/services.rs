//! Orchestration: the Services proxy (podnet's kube-proxy replacement) — watch Services and
//! EndpointSlices → [`Changes`] → plan the changed Services (pure, `podnet-services`'
//! `Planner`) → [`Proxy::sync_services`] → one nf_tables transaction ([`TransactionOps`]).
//! A sync's cost follows the size of the change, not of the cluster (one endpoint change
//! at 50k Services: ~9 ms, most of it the kernel's; `benches/services_scale.rs`).
//!
//! Invariants: the table `ip podnet-services` is podnet's alone and is written only as
//! whole transactions; the first sync after start replaces the table atomically (the
//! previous run's rules stay in force until that instant, conntrack NAT bindings survive
//! it, nothing is flushed first); later syncs send only differences; a refused transaction
//! leaves the previous rules in place, is logged and counted, and the next attempt (after
//! [`crate::RETRY`]) replaces the whole table. After a transaction removed UDP endpoints,
//! the conntrack entries DNATed to them are deleted (kube-proxy's long-running bug
//! kubernetes#19029: a client keeping its source port is otherwise black-holed). Bad Services are logged once per change and
//! counted in `podnet_agent_service_problems`; the others are programmed.
//!
//! Against kube-proxy's nftables proxier: no `nft` process and no dump of the table before
//! each transaction (netlink batches built from memory), and one shared endpoint map
//! instead of an anonymous vmap per service (see podnet-services' `render` for the table).

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher;
use podnet_nft::{Family, Op, Transaction};
use podnet_services::{
    FAMILY, NodeContext, ObjectName, Planner, Problem, Proxy, ProxyConfig, ServiceInput,
    SliceInput, SyncPlan, TABLE,
};
use tokio::sync::Notify;

use crate::RETRY;
use crate::metrics::Metrics;
use crate::pending::{Pending, lock, watch};

/// The kernel side of the proxy.
pub trait TransactionOps: Send {
    /// Applies one transaction atomically.
    fn apply(&mut self, tx: &Transaction) -> Result<()>;
    /// Applies the ops `parts` yields, in order, as one atomic transaction on `table`;
    /// returns how many ops that was. For the whole-table replace, which the proxy
    /// renders in parts so that it never exists whole as IR; this default gathers them
    /// into one [`Transaction`] for [`TransactionOps::apply`].
    fn apply_parts(
        &mut self,
        family: Family,
        table: &str,
        parts: &mut dyn Iterator<Item = Vec<Op>>,
    ) -> Result<usize> {
        let mut tx = Transaction::new(family, table);
        tx.ops.extend(parts.flatten());
        self.apply(&tx)?;
        Ok(tx.len())
    }
    /// Deletes the UDP conntrack entries DNATed to `endpoints`, and those sent to
    /// `services` without being DNATed; returns how many.
    fn forget_udp_flows(
        &mut self,
        endpoints: &[SocketAddrV4],
        services: &[SocketAddrV4],
    ) -> Result<usize>;
}

/// [`TransactionOps`] over nf_tables and ctnetlink, in the namespace the sockets were
/// opened in.
pub struct LinuxTransactions {
    pub nft: podnet_netlink::nftables::Nftables,
    pub conntrack: podnet_netlink::conntrack::Conntrack,
}

impl LinuxTransactions {
    pub fn open_in(ns: impl std::os::fd::AsFd) -> Result<Self> {
        Ok(LinuxTransactions {
            nft: podnet_netlink::nftables::Nftables::open_in(ns.as_fd())
                .context("open nf_tables socket")?,
            conntrack: podnet_netlink::conntrack::Conntrack::open_in(ns.as_fd())
                .context("open conntrack socket")?,
        })
    }
}

impl TransactionOps for LinuxTransactions {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        self.nft.apply(tx).map_err(anyhow::Error::from)
    }

    fn apply_parts(
        &mut self,
        family: Family,
        table: &str,
        parts: &mut dyn Iterator<Item = Vec<Op>>,
    ) -> Result<usize> {
        self.nft
            .apply_parts(family, table, parts)
            .map_err(anyhow::Error::from)
    }

    fn forget_udp_flows(
        &mut self,
        endpoints: &[SocketAddrV4],
        services: &[SocketAddrV4],
    ) -> Result<usize> {
        let mut n = 0;
        if !endpoints.is_empty() {
            n += self.conntrack.delete_dnat_to_any(17, endpoints)?;
        }
        if !services.is_empty() {
            let unserved: Vec<_> = self
                .conntrack
                .dump(17)?
                .into_iter()
                .filter(|e| services.contains(&e.orig.dst) && e.reply.src == e.orig.dst)
                .collect();
            n += self.conntrack.delete(&unserved)?;
        }
        Ok(n)
    }
}

/// What the proxy needs of the agent's configuration.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    pub node_name: String,
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Option<Ipv4Net>,
    /// The cluster's NodePort range; node ports outside it are reported, not programmed.
    pub node_port_range: std::ops::RangeInclusive<u16>,
}

/// What one proxy sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesReport {
    pub ports: usize,
    /// Operations in the transaction sent (0: nothing changed, nothing sent).
    pub ops: usize,
    /// UDP conntrack entries deleted because their endpoint left.
    pub flows_forgotten: usize,
    pub problems: Vec<Problem>,
}

/// The proxy's state and its kernel handle: one sync at a time.
pub struct ServiceSyncer<T> {
    /// What the plan reads of every Service and EndpointSlice, and which Services
    /// changed since the last sync.
    planner: Planner,
    proxy: Proxy,
    kernel: T,
    /// Told every endpoint address before the Services table may DNAT to it.
    fast_path: Option<crate::fastpath::Shared>,
}

impl<T: TransactionOps> ServiceSyncer<T> {
    pub fn new(config: ServicesConfig, kernel: T) -> Self {
        let net = |n: Ipv4Net| (n.network(), n.prefix_len());
        let proxy = Proxy::new(ProxyConfig {
            cluster_cidr: Some(net(config.cluster_cidr)),
            service_cidr: config.service_cidr.map(net),
        });
        let planner = Planner::new(NodeContext {
            node_name: config.node_name.clone(),
            node_port_range: config.node_port_range.clone(),
        });
        ServiceSyncer {
            planner,
            proxy,
            kernel,
            fast_path: None,
        }
    }

    /// Reports endpoint addresses to the fast path (see [`crate::fastpath`]) from now on.
    pub fn with_fast_path(mut self, fast_path: crate::fastpath::Shared) -> Self {
        self.proxy.track_endpoints();
        self.fast_path = Some(fast_path);
        self
    }

    /// The node the proxy plans for (what [`Changes`] needs to read slices).
    pub fn node(&self) -> &NodeContext {
        self.planner.node()
    }

    /// Takes a whole snapshot (what is not in it is deleted) and sends the difference to
    /// the kernel. Only the Services that differ from what the syncer knew are planned
    /// again.
    pub fn sync(
        &mut self,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> Result<ServicesReport> {
        self.planner.replace_all(services, slices);
        self.sync_planned()
    }

    /// Takes the changes watched since the last sync and sends the difference to the
    /// kernel: the agent's path, whose cost follows the size of the change.
    pub fn sync_changes(&mut self, changes: Changes) -> Result<ServicesReport> {
        changes.apply_to(&mut self.planner);
        self.sync_planned()
    }

    /// Re-plans the changed Services, and sends the transaction (the whole table after a
    /// refused one: [`Proxy::sync_services`] decides). The whole table goes in parts
    /// ([`Proxy::replace_parts`]): as one IR transaction it was most of the agent's peak
    /// memory.
    fn sync_planned(&mut self) -> Result<ServicesReport> {
        // Taken apart at once: `changed` (every port's name after a first sync) is not
        // needed here and would be held while the batch is built.
        let SyncPlan {
            transaction,
            full,
            problems: refused,
            stale_udp,
            fresh_udp,
            ..
        } = self.proxy.sync_services_deferred(self.planner.plan());
        let mut problems = self.planner.problems();
        problems.extend(refused);
        if let Some(fp) = &self.fast_path {
            // Before the transaction: replies from a new endpoint must meet conntrack.
            let changes = self.proxy.take_endpoint_changes();
            if let Err(e) = lock(fp).services(changes) {
                self.proxy.failed();
                return Err(e.context("fast path refused the endpoints; the Services wait"));
            }
        }
        let sent = if full {
            self.kernel
                .apply_parts(FAMILY, TABLE, &mut self.proxy.replace_parts())
        } else if transaction.is_empty() {
            Ok(0)
        } else {
            self.kernel.apply(&transaction).map(|()| transaction.len())
        };
        let ops = match sent {
            Ok(n) => n,
            Err(e) => {
                self.proxy.failed();
                return Err(e.context("services transaction refused; the previous rules stay"));
            }
        };
        // Only after the rules stopped choosing them: a new packet of a forgotten flow is
        // then DNATed afresh, to a live endpoint.
        let mut flows_forgotten = 0;
        if !stale_udp.is_empty() || !fresh_udp.is_empty() {
            match self.kernel.forget_udp_flows(&stale_udp, &fresh_udp) {
                Ok(n) => flows_forgotten = n,
                Err(e) => problems.push(Problem {
                    object: "conntrack".into(),
                    message: format!("deleting UDP flows to removed endpoints: {e:#}"),
                }),
            }
        }
        Ok(ServicesReport {
            ports: self.proxy.len(),
            ops,
            flows_forgotten,
            problems,
        })
    }

    /// The table as programmed (for `podnet` dump commands and tests).
    pub fn table(&self) -> podnet_nft::Table {
        self.proxy.table()
    }

    pub fn kernel(&self) -> &T {
        &self.kernel
    }

    /// The proxy's memory (the health check servers read the programmed ports).
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    pub fn kernel_mut(&mut self) -> &mut T {
        &mut self.kernel
    }
}

/// The watch events of Services and EndpointSlices gathered between two syncs: per
/// object only its latest state, already read into what the plan needs
/// ([`ServiceInput`], [`SliceInput`]) so that the Kubernetes objects are dropped as they
/// arrive. The agent keeps no copy of the objects (no reflector store): at 50k Services
/// those are most of a gigabyte, and copying them out for every sync cost seconds.
#[derive(Debug)]
pub struct Changes {
    node: NodeContext,
    services: Pending<ObjectName, ServiceInput>,
    slices: Pending<ObjectName, SliceInput>,
}

impl Changes {
    pub fn new(node: NodeContext) -> Changes {
        Changes {
            node,
            services: Pending::default(),
            slices: Pending::default(),
        }
    }

    pub fn service_event(&mut self, event: watcher::Event<Service>) {
        self.services.event(event, |s| {
            let input = ServiceInput::new(s);
            (input.name().clone(), input)
        });
    }

    pub fn slice_event(&mut self, event: watcher::Event<EndpointSlice>) {
        let node = &self.node;
        self.slices.event(event, |s| {
            let input = SliceInput::new(s, node);
            (input.name().clone(), input)
        });
    }

    /// Whether both kinds were listed completely once (before that, a sync would program
    /// Services without their endpoints).
    pub fn ready(&self) -> bool {
        self.services.ready && self.slices.ready
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// The changes gathered so far; `self` goes on gathering.
    pub fn take(&mut self) -> Changes {
        Changes {
            node: self.node.clone(),
            services: self.services.take(),
            slices: self.slices.take(),
        }
    }

    /// Tells the planner: the latest state of each object, then the deletions a
    /// complete list implies.
    fn apply_to(self, planner: &mut Planner) {
        planner.reserve(self.services.latest.len(), self.slices.latest.len());
        for (name, input) in self.services.latest {
            match input {
                Some(i) => planner.set_service(i),
                None => planner.delete_service(&name),
            }
        }
        if let Some(listed) = self.services.listed {
            planner.retain_services(|n| listed.contains(n));
        }
        for (name, input) in self.slices.latest {
            match input {
                Some(i) => planner.set_slice(i),
                None => planner.delete_slice(&name),
            }
        }
        if let Some(listed) = self.slices.listed {
            planner.retain_slices(|n| listed.contains(n));
        }
    }
}

/// A shared syncer: the sync loop and the `/services` dump use it.
pub type Shared<T> = Arc<Mutex<ServiceSyncer<T>>>;

/// The `/services` dump of a shared syncer: the table in `nft` syntax.
pub fn dump<T: TransactionOps + 'static>(syncer: Shared<T>) -> crate::metrics::ServicesDump {
    Arc::new(move || {
        let s = syncer.lock().unwrap_or_else(|e| e.into_inner());
        podnet_nft::render_table(&s.table())
    })
}

/// Watches Services and EndpointSlices and keeps the table in step, until dropped.
pub async fn run<T: TransactionOps + 'static>(
    client: kube::Client,
    syncer: Shared<T>,
    metrics: Arc<Metrics>,
    resync: std::time::Duration,
) -> Result<()> {
    let notify = Arc::new(Notify::new());
    // The watches read each event into `changes` as it comes (no object is kept); each
    // sync takes what gathered since the previous one.
    let node = lock(&syncer).node().clone();
    let changes = Arc::new(Mutex::new(Changes::new(node)));
    let watch_services = watch(
        Api::<Service>::all(client.clone()),
        changes.clone(),
        notify.clone(),
        Changes::service_event,
    );
    let watch_slices = watch(
        Api::<EndpointSlice>::all(client),
        changes.clone(),
        notify.clone(),
        Changes::slice_event,
    );
    let sync_loop = async move {
        // The first sync waits for complete lists of both kinds: an earlier one would
        // refuse connections to Services whose slices were not read yet.
        while !lock(&changes).ready() {
            notify.notified().await;
        }
        let mut last_problems: Vec<Problem> = Vec::new();
        let mut health = crate::health::HealthServers::new(std::net::Ipv4Addr::UNSPECIFIED.into());
        let health_source = syncer.clone();
        loop {
            // Only what changed: the cost of a sync follows the change, not the cluster.
            // An empty batch still syncs (a periodic resync is then a no-op, a retry after
            // a refused transaction a full replace).
            let batch = lock(&changes).take();
            let started = Instant::now();
            let syncer = syncer.clone();
            let result = tokio::task::spawn_blocking(move || lock(&syncer).sync_changes(batch))
                .await
                .context("services sync panicked")?;
            let ok = result.is_ok();
            health
                .sync(&crate::health::checks_of(&health_source), ok)
                .await;
            metrics.record_service_sync(ok, started.elapsed().as_secs_f64());
            match result {
                Ok(r) => {
                    metrics.service_ports.set(r.ports as i64);
                    metrics.service_problems.set(r.problems.len() as i64);
                    if r.problems != last_problems {
                        for p in &r.problems {
                            tracing::warn!(problem = %p, "service skipped");
                        }
                        last_problems = r.problems;
                    }
                    if r.ops > 0 {
                        tracing::info!(
                            ops = r.ops,
                            ports = r.ports,
                            udp_flows_forgotten = r.flows_forgotten,
                            "services synced"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "services sync failed"),
            }
            let wait = if ok { resync } else { resync.min(RETRY) };
            tokio::select! {
                // No debounce (the node loop's is 100 ms): a sync costs milliseconds here,
                // and events arriving during one are gathered into the next.
                _ = notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    };
    tokio::select! {
        () = watch_services => Err(anyhow::anyhow!("service watch ended")),
        () = watch_slices => Err(anyhow::anyhow!("endpointslice watch ended")),
        r = sync_loop => r,
    }
}
