//! Orchestration: the long-running roles of the one binary — `podnet apiserver` (the lab's
//! control plane), `podnet agent` (per node), `podnet kubelet` (the lab's pod runtime),
//! `podnet echo` (the built-in workload). Each parses its flags and hands over to its crate.

use anyhow::{Context, Result};
use clap::Args;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ApiServerArgs {
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::IpNet,
    #[arg(long, default_value_t = 24)]
    node_cidr_prefix: u8,
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::IpNet,
    /// Addresses for LoadBalancer Services (`status.loadBalancer.ingress`).
    #[arg(long, default_value = podnet_apiserver::DEFAULT_LOAD_BALANCER_POOL)]
    load_balancer_pool: ipnet::IpNet,
}

#[derive(Args)]
pub struct AgentArgs {
    /// API server URL (e.g. http://172.18.0.2:6443).
    #[arg(long)]
    server: String,
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(long, default_value = "host-gw", value_parser = ["host-gw", "vxlan"])]
    mode: String,
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnet::Ipv4Net,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/cni/podnet")]
    cni_data_dir: PathBuf,
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u32,
    #[arg(long, default_value = "0.0.0.0:9102")]
    metrics_addr: SocketAddr,
    /// Full resync period, seconds.
    #[arg(long, default_value_t = 60)]
    resync: u64,
    /// Program Services on nf_tables (kube-proxy replacement); `false` leaves them to
    /// kube-proxy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    proxy_services: bool,
    /// Enforce NetworkPolicy on nf_tables (table `ip podnet-policy`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    enforce_policy: bool,
    /// The cluster IP range: off-cluster clients of cluster IPs are masqueraded.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
}

#[derive(Args)]
pub struct KubeletArgs {
    #[arg(long)]
    server: String,
    #[arg(long)]
    node_name: String,
    #[arg(long)]
    node_ip: Ipv4Addr,
    #[arg(long)]
    cni_conf_dir: PathBuf,
    /// Where CNI plugins are (repeatable).
    #[arg(long = "cni-bin-dir")]
    cni_bin_dirs: Vec<PathBuf>,
    #[arg(long)]
    cni_cache_dir: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    netns_prefix: String,
    /// The cluster DNS Service address written into pods' resolv.conf (repeatable; none:
    /// pods use the node's resolver configuration).
    #[arg(long = "cluster-dns")]
    cluster_dns: Vec<std::net::IpAddr>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The node's resolver configuration, the base of `dnsPolicy: Default` pods.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
}

pub fn apiserver(a: ApiServerArgs) -> Result<()> {
    init_logging();
    runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listen on {}", a.listen))?;
        let config = podnet_apiserver::Config {
            cluster_cidr: a.cluster_cidr,
            node_cidr_prefix: a.node_cidr_prefix,
            service_cidr: a.service_cidr,
            load_balancer_pool: Some(a.load_balancer_pool),
            ..Default::default()
        };
        podnet_apiserver::serve(listener, config).await
    })
}

pub fn agent(a: AgentArgs) -> Result<()> {
    init_logging();
    let config = podnet_agent::Config {
        node_name: a.node_name,
        mode: a
            .mode
            .parse()
            .map_err(|e| anyhow::anyhow!("--mode: {e:?}"))?,
        cluster_cidr: a.cluster_cidr,
        cni_conf_dir: a.cni_conf_dir,
        cni_data_dir: a.cni_data_dir,
        underlay_mtu: a.underlay_mtu,
        metrics_addr: a.metrics_addr,
        resync: Duration::from_secs(a.resync),
        proxy_services: a.proxy_services,
        enforce_policy: a.enforce_policy,
        service_cidr: Some(a.service_cidr),
    };
    runtime()?.block_on(async move {
        let client = crate::lab::client(&a.server)?;
        podnet_agent::run(config, client).await
    })
}

pub fn kubelet(a: KubeletArgs) -> Result<()> {
    init_logging();
    let config = podnet_kubelet::Config {
        node_name: a.node_name,
        node_ip: a.node_ip,
        cni_conf_dir: a.cni_conf_dir,
        cni_bin_dirs: a.cni_bin_dirs,
        cni_cache_dir: a.cni_cache_dir,
        state_dir: a.state_dir,
        netns_prefix: a.netns_prefix,
        echo_exe: std::env::current_exe().context("own executable")?,
        cluster_dns: a.cluster_dns,
        cluster_domain: a.cluster_domain,
        // A node without the file has no resolver configuration to pass on.
        node_resolv_conf: podnet_kubelet::dns::ResolvConf::parse(
            &std::fs::read_to_string(&a.resolv_conf).unwrap_or_default(),
        ),
    };
    runtime()?.block_on(async move {
        let client = crate::lab::client(&a.server)?;
        podnet_kubelet::run(config, client).await
    })
}
