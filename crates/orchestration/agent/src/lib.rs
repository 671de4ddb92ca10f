//! Orchestration: `podnet agent`, one per node — watches Nodes, writes the node's CNI
//! config, programs routes/VXLAN and masquerade, serves /healthz and /metrics.
//!
//! Data flows one way: watch (kube reflector) → snapshot (`NodeInfo`s) → plan (pure,
//! `podnet-nodenet`) → diff against the kernel read back → apply the differences
//! ([`ops`]). Bursts of Node events are debounced (100 ms) into one sync; a periodic
//! resync (`Config::resync`) repairs anything changed behind the agent's back.
//!
//! Namespaces: every kernel operation (netlink, `nft`, the ip_forward sysctl) runs on one
//! dedicated thread that entered the network namespace of the thread that called
//! [`run`], and the metrics socket is bound there too — so a lab may start agents for
//! several nodes from one process. (The API client's connections are made by the tokio
//! runtime's threads.)
//!
//! Compared with flannel: the same wiring (host-gw routes; VXLAN with static FDB and
//! neighbours), but the VTEP MAC is derived from the node name (no Node annotation, no
//! write access to the API), routes carry podnet's own route protocol (recognised after
//! a restart without guessing), the masquerade table is replaced in one atomic nft
//! transaction, and a no-op sync writes nothing at all.

pub mod health;
pub mod metrics;
pub mod ops;
mod pending;
pub mod policy;
pub mod services;
pub mod sync;

pub use podnet_nodenet::Mode;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use metrics::Metrics;
use ops::{LinuxNft, LinuxNodeNet};
use podnet_nodenet::NodeInfo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync::{SyncConfig, SyncReport, Syncer};
use tokio::sync::{Notify, oneshot};

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub mode: Mode,
    /// 10.244.0.0/16
    pub cluster_cidr: ipnet::Ipv4Net,
    pub cni_conf_dir: std::path::PathBuf,
    pub cni_data_dir: std::path::PathBuf,
    /// 1500
    pub underlay_mtu: u32,
    pub metrics_addr: std::net::SocketAddr,
    pub resync: std::time::Duration,
    /// Program Services (kube-proxy replacement); false leaves them to kube-proxy.
    pub proxy_services: bool,
    /// Enforce NetworkPolicy (table `ip podnet-policy`).
    pub enforce_policy: bool,
    /// The cluster IP range (10.96.0.0/12): off-cluster clients of cluster IPs are
    /// masqueraded, as kube-proxy does with `--cluster-cidr`.
    pub service_cidr: Option<ipnet::Ipv4Net>,
    /// Destinations outside the cluster CIDR that pods reach with their own addresses
    /// (not masqueraded), like ip-masq-agent's `nonMasqueradeCIDRs`.
    pub masquerade_exceptions: Vec<ipnet::Ipv4Net>,
}

/// How long a burst of Node events is gathered into one sync.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How soon a failed sync is retried (capped by `Config::resync`).
pub const RETRY: Duration = Duration::from_secs(2);

type SyncRequest = (Vec<NodeInfo>, oneshot::Sender<Result<SyncReport>>);

/// Runs until the future is dropped or a fatal error. Runs in the caller's network namespace.
pub async fn run(config: Config, client: kube::Client) -> anyhow::Result<()> {
    let ns = podnet_netlink::netns::current().context("open own network namespace")?;
    let metrics = Arc::new(Metrics::new());

    let listener =
        podnet_netlink::netns::run_in(&ns, || std::net::TcpListener::bind(config.metrics_addr))?
            .with_context(|| format!("bind metrics address {}", config.metrics_addr))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let syncer = if config.proxy_services {
        // Opened here, before the namespace handle moves to the kernel thread.
        let kernel = services::LinuxTransactions::open_in(&ns)?;
        Some(Arc::new(std::sync::Mutex::new(
            services::ServiceSyncer::new(
                services::ServicesConfig {
                    node_name: config.node_name.clone(),
                    cluster_cidr: config.cluster_cidr,
                    service_cidr: config.service_cidr,
                },
                kernel,
            ),
        )))
    } else {
        None
    };
    let policy_syncer = if config.enforce_policy {
        let kernel = podnet_netlink::nftables::Nftables::open_in(std::os::fd::AsFd::as_fd(&ns))
            .context("open nf_tables socket for policy")?;
        Some(Arc::new(std::sync::Mutex::new(policy::PolicySyncer::new(
            config.node_name.clone(),
            kernel,
        ))))
    } else {
        None
    };
    let server = axum::serve(
        listener,
        metrics::router(metrics.clone(), syncer.clone().map(services::dump)),
    );

    let kernel = spawn_kernel_thread(&config, ns)?;

    let services_client = client.clone();
    let policy_client = client.clone();
    let policy_metrics = metrics.clone();
    let services_metrics = metrics.clone();
    let api: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store::<Node>();
    let notify = Arc::new(Notify::new());
    let watch = reflect(api, writer, notify.clone());

    let resync = config.resync;
    let sync_loop = async move {
        reader
            .wait_until_ready()
            .await
            .context("node watch ended before its first list")?;
        loop {
            let nodes: Vec<NodeInfo> = reader
                .state()
                .iter()
                .filter_map(|n| sync::node_info(n))
                .collect();
            let started = Instant::now();
            let (tx, rx) = oneshot::channel();
            kernel
                .send((nodes, tx))
                .map_err(|_| anyhow::anyhow!("kernel thread ended"))?;
            let result = rx.await.context("kernel thread ended")?;
            let ok = result.is_ok();
            metrics.record_sync(ok, started.elapsed().as_secs_f64());
            match result {
                Ok(r) => {
                    metrics.kernel_writes.inc_by(r.kernel_writes as u64);
                    metrics.peers.set(r.peers as i64);
                    metrics.routes.set(r.routes as i64);
                    for s in &r.skipped {
                        tracing::warn!(skipped = %s, "peer left out");
                    }
                    if r.kernel_writes > 0 || r.conflist_written {
                        tracing::info!(
                            writes = r.kernel_writes,
                            conflist = r.conflist_written,
                            "synced"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "sync failed"),
            }
            let wait = if ok { resync } else { resync.min(RETRY) };
            tokio::select! {
                _ = notify.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    };

    let services = async {
        match syncer {
            Some(s) => services::run(services_client, s, services_metrics, resync).await,
            None => std::future::pending().await,
        }
    };

    let policies = async {
        match policy_syncer {
            Some(s) => policy::run(policy_client, s, policy_metrics, resync).await,
            None => std::future::pending().await,
        }
    };

    tokio::select! {
        r = server.into_future() => r.context("metrics server"),
        r = policies => r,
        () = watch => Err(anyhow::anyhow!("node watch ended")),
        r = sync_loop => r,
        r = services => r,
    }
}

/// The thread that owns every kernel handle, inside the agent's namespace. It ends when
/// the sender is dropped (the `run` future was dropped).
fn spawn_kernel_thread(
    config: &Config,
    ns: std::os::fd::OwnedFd,
) -> Result<std::sync::mpsc::Sender<SyncRequest>> {
    let sync_config = SyncConfig {
        node_name: config.node_name.clone(),
        mode: config.mode,
        cluster_cidr: config.cluster_cidr,
        cni_conf_dir: config.cni_conf_dir.clone(),
        cni_data_dir: config.cni_data_dir.clone(),
        underlay_mtu: config.underlay_mtu,
        masquerade_exceptions: config.masquerade_exceptions.clone(),
    };
    let (tx, rx) = std::sync::mpsc::channel::<SyncRequest>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    std::thread::Builder::new()
        .name(format!("podnet-agent-kernel-{}", config.node_name))
        .spawn(move || {
            let _entered = match podnet_netlink::netns::enter(&ns) {
                Ok(g) => g,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let net = match LinuxNodeNet::open() {
                Ok(n) => n,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut syncer = Syncer::new(sync_config, net, LinuxNft);
            while let Ok((nodes, reply)) = rx.recv() {
                let _ = reply.send(syncer.sync(&nodes));
            }
        })
        .context("spawn kernel thread")?;
    ready_rx.recv().context("kernel thread died at start")??;
    Ok(tx)
}

/// Mirrors one kind into a reflector store, waking the sync loop on every event.
pub(crate) async fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    notify: Arc<Notify>,
) where
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
