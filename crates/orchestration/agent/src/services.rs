//! Orchestration: the Services proxy (podnet's kube-proxy replacement) — watch Services and
//! EndpointSlices → plan (pure, `podnet-services`) → [`Proxy::sync`] → one nf_tables
//! transaction ([`TransactionOps`]).
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
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use podnet_nft::Transaction;
use podnet_services::{NodeContext, Problem, Proxy, ProxyConfig, Snapshot, plan_services};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::{DEBOUNCE, RETRY};

/// The kernel side of the proxy.
pub trait TransactionOps: Send {
    /// Applies one transaction atomically.
    fn apply(&mut self, tx: &Transaction) -> Result<()>;
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
    config: ServicesConfig,
    proxy: Proxy,
    kernel: T,
}

impl<T: TransactionOps> ServiceSyncer<T> {
    pub fn new(config: ServicesConfig, kernel: T) -> Self {
        let net = |n: Ipv4Net| (n.network(), n.prefix_len());
        let proxy = Proxy::new(ProxyConfig {
            cluster_cidr: Some(net(config.cluster_cidr)),
            service_cidr: config.service_cidr.map(net),
        });
        ServiceSyncer {
            config,
            proxy,
            kernel,
        }
    }

    /// Plans the snapshot and sends the difference to the kernel.
    pub fn sync(
        &mut self,
        services: &[Service],
        slices: &[EndpointSlice],
    ) -> Result<ServicesReport> {
        let node = NodeContext {
            node_name: self.config.node_name.clone(),
        };
        let (ports, mut problems) = plan_services(Snapshot { services, slices }, &node);
        let plan = self.proxy.sync(ports);
        problems.extend(plan.problems);
        let ops = plan.transaction.len();
        if ops > 0
            && let Err(e) = self.kernel.apply(&plan.transaction)
        {
            self.proxy.failed();
            return Err(e.context("services transaction refused; the previous rules stay"));
        }
        // Only after the rules stopped choosing them: a new packet of a forgotten flow is
        // then DNATed afresh, to a live endpoint.
        let mut flows_forgotten = 0;
        if !plan.stale_udp.is_empty() || !plan.fresh_udp.is_empty() {
            match self
                .kernel
                .forget_udp_flows(&plan.stale_udp, &plan.fresh_udp)
            {
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

    pub fn kernel_mut(&mut self) -> &mut T {
        &mut self.kernel
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
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (eps_reader, eps_writer) = reflector::store::<EndpointSlice>();
    let watch_services = watch(
        Api::<Service>::all(client.clone()),
        svc_writer,
        notify.clone(),
    );
    let watch_slices = watch(
        Api::<EndpointSlice>::all(client),
        eps_writer,
        notify.clone(),
    );
    let sync_loop = async move {
        svc_reader
            .wait_until_ready()
            .await
            .context("service watch ended before its first list")?;
        eps_reader
            .wait_until_ready()
            .await
            .context("endpointslice watch ended before its first list")?;
        let mut last_problems: Vec<Problem> = Vec::new();
        loop {
            let services: Vec<Service> = svc_reader.state().iter().map(|s| (**s).clone()).collect();
            let slices: Vec<EndpointSlice> =
                eps_reader.state().iter().map(|s| (**s).clone()).collect();
            let started = Instant::now();
            let syncer = syncer.clone();
            let result = tokio::task::spawn_blocking(move || {
                syncer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sync(&services, &slices)
            })
            .await
            .context("services sync panicked")?;
            let ok = result.is_ok();
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
                _ = notify.notified() => tokio::time::sleep(DEBOUNCE).await,
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

async fn watch<K>(api: Api<K>, writer: reflector::store::Writer<K>, notify: Arc<Notify>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => notify.notify_one(),
            Err(e) => tracing::warn!(error = %e, "watching {}", K::plural(&())),
        }
    }
}
