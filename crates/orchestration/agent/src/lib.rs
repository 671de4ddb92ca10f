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
//! Pod CIDRs: a Node's `spec.podCIDR` when the control plane allocates them; otherwise
//! the agent claims a `/node_cidr_mask` subnet of the cluster CIDR itself, as a Lease per
//! subnet ([`claim`]: conditional writes only, so no two nodes ever hold one), and learns
//! the other nodes' subnets from their claims (a Lease watch next to the Node watch).
//!
//! Compared with flannel: the same wiring (host-gw routes; VXLAN with static FDB and
//! neighbours), but the VTEP MAC is derived from the node name (no Node annotation; the
//! only writes to the API are pod CIDR claims, when the cluster does not allocate),
//! routes carry podnet's own route protocol (recognised after a restart without
//! guessing), the masquerade table is replaced in one atomic nft
//! transaction, and a no-op sync writes nothing at all.

pub mod claim;
pub mod fastpath;
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
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
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
    /// The cluster's NodePort range (kube-apiserver's `--service-node-port-range`);
    /// node ports outside it are reported and not programmed.
    pub node_port_range: std::ops::RangeInclusive<u16>,
    /// The prefix length of the subnet a node claims when its Node has no
    /// `spec.podCIDR` (24: a /24 of the cluster CIDR per node).
    pub node_cidr_mask: u8,
    /// Where the claims (Leases) live; `None`: the client's namespace (in a pod, the
    /// pod's own: podnet-system as deployed).
    pub claim_namespace: Option<String>,
    /// How long the node must lack `spec.podCIDR` before the agent claims a subnet
    /// ([`CLAIM_GRACE`] by default).
    pub claim_grace: Duration,
    /// Pod-to-pod packets between nodes skip the IP stack where nothing needs it
    /// ([`fastpath`]); false leaves every packet to the full path.
    pub fast_path: bool,
}

/// The default of `Config::node_cidr_mask` (kube-controller-manager's
/// `--node-cidr-mask-size` for IPv4).
pub const DEFAULT_NODE_CIDR_MASK: u8 = 24;

/// glibc malloc settings the agent runs with (`GLIBC_TUNABLES`): a fixed mmap threshold
/// of 128 KiB (glibc raises it after every large free by default, after which big
/// buffers — a full sync's netlink batch, rendered element lists — come from the heap and
/// their pages stay resident) and trimming the heap's top above 128 KiB. Measured with
/// `cargo bench -p podnet-agent --bench services_scale` at 50k Services × 5 endpoints
/// (docs/benchmarks.md): RSS after the first sync 109 → 94 MiB, peak 122 → 111 MiB; no
/// change in sync time. The workspace denies `unsafe`, so no `mallopt`: [`with_malloc_tunables`].
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";

/// Re-executes this process (same arguments, same pid) with [`MALLOC_TUNABLES`] as
/// `GLIBC_TUNABLES`, unless that variable is already set (an operator's own choice wins,
/// and the re-executed process finds it set). Call it first thing, while the process has
/// one thread. Returns only when there is nothing to do or the exec failed (then the
/// process runs with glibc's defaults, which is only a matter of memory).
pub fn with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .exec();
    // Logging is not set up yet (this runs first).
    eprintln!(
        "podnet: re-executing with GLIBC_TUNABLES failed ({err}); running with glibc's defaults"
    );
}

/// The default of `Config::claim_grace`: how long a node must have been seen without
/// `spec.podCIDR` before its agent claims a subnet itself: on a cluster whose control plane allocates (kubeadm's default), the
/// Node is registered a moment before kube-controller-manager sets its CIDR, and an agent
/// that claimed in that moment would hand pods addresses from a subnet the cluster then
/// gives elsewhere. A claim this node already holds (a restart) is taken up at once.
pub const CLAIM_GRACE: Duration = Duration::from_secs(10);

/// Whether to wait before claiming (see [`CLAIM_GRACE`]); sets `left` to the rest.
fn in_grace(
    grace: Duration,
    since: &mut Option<Instant>,
    holds_one: bool,
    left: &mut Option<Duration>,
) -> bool {
    if holds_one {
        return false;
    }
    let since = *since.get_or_insert_with(Instant::now);
    match grace.checked_sub(since.elapsed()) {
        Some(rest) if !rest.is_zero() => {
            *left = Some(rest);
            true
        }
        _ => false,
    }
}

/// How long a burst of Node events is gathered into one sync.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How soon a failed sync is retried (capped by `Config::resync`).
pub const RETRY: Duration = Duration::from_secs(2);
/// How often the kernel thread re-reads the links for the fast path between syncs (a new
/// pod's veth is on the fast path within this).
pub const LINK_POLL: Duration = Duration::from_secs(1);

/// The longest one claim pass (`ensure_preferring` or `release_all`: its lists, its
/// writes and retries together) may hold up the node sync loop. A black-holed API server (packets dropped, no reset) would
/// otherwise stall the loop for the client's read timeout (minutes), and with it the
/// routes to nodes the watches already know. The claim is tried again on the next pass.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// `f`, or an error once [`CLAIM_TIMEOUT`] has passed without an answer.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CLAIM_TIMEOUT, f).await.map_err(|_| {
        anyhow::anyhow!("{what}: no answer from the API server within {CLAIM_TIMEOUT:?}")
    })?
}

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
    // Opened here, before the namespace handle moves to the kernel thread. A previous
    // run's table goes first: its inputs are stale (see `fastpath`).
    // A previous run's fast path goes first either way: its inputs are stale, or the
    // fast path is now off.
    let mut kernel = services::LinuxTransactions::open_in(&ns)?;
    fastpath::remove_table(&mut kernel).context("remove the previous run's fast path")?;
    let fast_path = config.fast_path.then(|| {
        fastpath::FastPath::new(
            Box::new(kernel),
            config.proxy_services,
            config.enforce_policy,
        )
        .with_metrics(metrics.clone())
        .shared()
    });
    let syncer = if config.proxy_services {
        // Opened here, before the namespace handle moves to the kernel thread.
        let kernel = services::LinuxTransactions::open_in(&ns)?;
        let mut s = services::ServiceSyncer::new(
            services::ServicesConfig {
                node_name: config.node_name.clone(),
                cluster_cidr: config.cluster_cidr,
                service_cidr: config.service_cidr,
                node_port_range: config.node_port_range.clone(),
            },
            kernel,
        );
        if let Some(fp) = &fast_path {
            s = s.with_fast_path(fp.clone());
        }
        Some(Arc::new(std::sync::Mutex::new(s)))
    } else {
        None
    };
    let policy_syncer = if config.enforce_policy {
        let kernel = podnet_netlink::nftables::Nftables::open_in(std::os::fd::AsFd::as_fd(&ns))
            .context("open nf_tables socket for policy")?;
        let mut s = policy::PolicySyncer::new(config.node_name.clone(), kernel);
        if let Some(fp) = &fast_path {
            s = s.with_fast_path(fp.clone());
        }
        Some(Arc::new(std::sync::Mutex::new(s)))
    } else {
        None
    };
    let server = axum::serve(
        listener,
        metrics::router(metrics.clone(), syncer.clone().map(services::dump)),
    );

    let kernel = spawn_kernel_thread(&config, ns, fast_path)?;

    let services_client = client.clone();
    let policy_client = client.clone();
    let policy_metrics = metrics.clone();
    let services_metrics = metrics.clone();
    let claim_namespace = config
        .claim_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let claimer = claim::Claimer::new(
        client.clone(),
        &claim_namespace,
        &config.node_name,
        config.cluster_cidr,
        config.node_cidr_mask,
    );
    let nodes_api: Api<Node> = Api::all(client.clone());
    let list_nodes = move || {
        let api = nodes_api.clone();
        async move { Ok(api.list(&ListParams::default()).await?.items) }
    };
    let api: Api<Node> = Api::all(client.clone());
    let (reader, writer) = reflector::store::<Node>();
    let notify = Arc::new(Notify::new());
    let watch = reflect(api, writer, notify.clone());
    let leases: Api<Lease> = Api::namespaced(client, &claim_namespace);
    let (lease_reader, lease_writer) = reflector::store::<Lease>();
    let lease_watch = reflect_with(
        leases,
        lease_writer,
        notify.clone(),
        watcher::Config::default().labels(&claim::selector()),
    );

    let resync = config.resync;
    let node_name = config.node_name.clone();
    let claim_grace = config.claim_grace;
    let sync_loop = async move {
        reader
            .wait_until_ready()
            .await
            .context("node watch ended before its first list")?;
        lease_reader
            .wait_until_ready()
            .await
            .context("claim watch ended before its first list")?;
        // The subnet this node holds by a claim (while its Node has no spec.podCIDR).
        let mut claimed: Option<ipnet::Ipv4Net> = None;
        // Since when this node has been seen without spec.podCIDR and without a claim.
        let mut without_cidr_since: Option<Instant> = None;
        loop {
            let mut grace_left: Option<Duration> = None;
            let all = reader.state();
            let claims = lease_reader.state();
            // Only claims that fit this cluster (as `ensure` keeps): peers are routed to
            // the subnet their agent uses.
            let held = claim::held_by_node(
                claims
                    .iter()
                    .map(|l| &**l)
                    .filter(|l| claim::read_claim(l).is_some_and(|c| claimer.fits(c.cidr))),
            );
            if let Some(me) = all
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(node_name.as_str()))
            {
                if sync::spec_pod_cidr(me).is_some() {
                    // The control plane's allocation wins: give claims back.
                    if claimed.take().is_some() || held.contains_key(&node_name) {
                        let released = bounded("release claims", claimer.release_all()).await;
                        metrics.record_claim("release", released.is_ok());
                        match released {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                released = n,
                                "Node.spec.podCIDR set: claims released"
                            ),
                            Err(e) => tracing::warn!(error = format!("{e:#}"), "releasing claims"),
                        }
                    }
                } else if (claimed.is_none() || lost(claimed, &claims, &node_name))
                    && !in_grace(
                        claim_grace,
                        &mut without_cidr_since,
                        held.contains_key(&node_name) || claimed.is_some(),
                        &mut grace_left,
                    )
                {
                    let got = bounded(
                        "claim a pod CIDR",
                        claimer.ensure_preferring(claimed, &list_nodes),
                    )
                    .await;
                    metrics.record_claim("claim", got.is_ok());
                    match got {
                        Ok(c) => claimed = Some(c),
                        Err(e) => {
                            // Whatever the cluster says this node holds, if anything.
                            claimed = held.get(&node_name).copied();
                            tracing::warn!(error = format!("{e:#}"), "claiming a pod CIDR failed");
                        }
                    }
                }
            }
            let nodes: Vec<NodeInfo> = all
                .iter()
                .filter_map(|n| {
                    let name = n.metadata.name.as_deref()?;
                    let c = if name == node_name {
                        claimed
                    } else {
                        held.get(name).copied()
                    };
                    sync::node_info(n, c)
                })
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
            let mut wait = if ok { resync } else { resync.min(RETRY) };
            if let Some(left) = grace_left.take() {
                wait = wait.min(left);
            }
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
        () = lease_watch => Err(anyhow::anyhow!("claim watch ended")),
        r = sync_loop => r,
        r = services => r,
    }
}

/// The thread that owns every kernel handle, inside the agent's namespace. It ends when
/// the sender is dropped (the `run` future was dropped).
fn spawn_kernel_thread(
    config: &Config,
    ns: std::os::fd::OwnedFd,
    fast_path: Option<fastpath::Shared>,
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
            if let Some(fp) = fast_path {
                syncer = syncer.with_fast_path(fp);
            }
            // The last fast path refresh error, logged once until it changes.
            let mut last_error: Option<String> = None;
            loop {
                match rx.recv_timeout(LINK_POLL) {
                    Ok((nodes, reply)) => {
                        let _ = reply.send(syncer.sync(&nodes));
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let error = syncer.refresh_fast_path().err().map(|e| format!("{e:#}"));
                        if error.is_some() && error != last_error {
                            tracing::warn!(error = error.as_deref(), "fast path refresh failed");
                        }
                        last_error = error;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .context("spawn kernel thread")?;
    ready_rx.recv().context("kernel thread died at start")??;
    Ok(tx)
}

/// Whether the watch shows no claim on `claimed` held by this node: taken by another
/// node, released, or deleted (by hand). The agent then claims again, preferring the same
/// subnet (its pods hold its addresses). Right after this agent's own create the watch may
/// not show the claim yet; claiming again then only renews it (step 1 of `ensure`).
fn lost(claimed: Option<ipnet::Ipv4Net>, claims: &[Arc<Lease>], me: &str) -> bool {
    let Some(cidr) = claimed else { return false };
    // Taken by another node, released, or deleted: no claim on it held by this node.
    !claims
        .iter()
        .filter_map(|l| claim::read_claim(l))
        .any(|c| c.cidr == cidr && c.holder.as_deref() == Some(me))
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
    reflect_with(api, writer, notify, watcher::Config::default()).await
}

/// [`reflect`] with a watch configuration (a label selector).
pub(crate) async fn reflect_with<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    notify: Arc<Notify>,
    config: watcher::Config,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => notify.notify_one(),
            Err(e) => tracing::warn!(error = %e, "watching {}", K::plural(&())),
        }
    }
}
