//! Orchestration: the long-running roles of the one binary — `podnet apiserver` (the lab's
//! control plane), `podnet agent` (per node), `podnet kubelet` (the lab's pod runtime),
//! `podnet dns` (the cluster DNS server),
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
    /// Give every Node a pod CIDR (`spec.podCIDR`), as kube-controller-manager's
    /// `--allocate-node-cidrs`. `false`: Nodes get none and podnet's agents claim their
    /// subnets themselves (Leases).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnet::IpNet,
    /// The range NodePorts are allocated from (and must lie in).
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: PortRange,
    /// Addresses for LoadBalancer Services (`status.loadBalancer.ingress`).
    #[arg(long, default_value = podnet_apiserver::DEFAULT_LOAD_BALANCER_POOL)]
    load_balancer_pool: ipnet::IpNet,
    /// The address clients reach this server at: published, with the listening port, as
    /// the `kubernetes` Service in `default` and its EndpointSlice (kube-apiserver's
    /// `--advertise-address`). Absent: no such Service.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Serve HTTPS with this certificate chain (PEM, serving certificate first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Static bearer tokens, one `token,user[,uid,"groups"]` per line (kube-apiserver's
    /// `--token-auth-file`); requests without a known one get 401. Absent: no
    /// authentication.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// How a role reaches the Kubernetes API. `--server` is an API server over plain HTTP
/// without credentials (tests); `--kubeconfig` a kubeconfig file (its current context: the
/// lab gives its roles one with its CA and a token); with
/// neither, `KUBECONFIG` or `~/.kube/config` if there is one, else the pod's service account
/// (in-cluster: `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, the token and CA under
/// `/var/run/secrets/kubernetes.io/serviceaccount/`), as `kube::Config::infer` does.
#[derive(Args, Debug, Clone, Default)]
pub struct ApiArgs {
    /// API server URL, plain HTTP without credentials (e.g. http://127.0.0.1:6443).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub server: Option<String>,
    /// A kubeconfig file; its current context is used.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

impl ApiArgs {
    /// The API client these options name. Only reads files: nothing is sent yet.
    pub async fn client(&self) -> Result<kube::Client> {
        if let Some(url) = &self.server {
            return crate::lab::client(url);
        }
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("read kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer().await.context(
                "no --server or --kubeconfig, no kubeconfig file and no in-cluster service account",
            )?,
        };
        kube::Client::try_from(config).context("API client")
    }
}

/// `podnet agent`. The settings a cluster's ConfigMap holds (deploy/11-agent-config.yaml) are
/// also read from the environment variables named here (`PODNET_*`); a flag wins.
#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(long, env = "PODNET_MODE", default_value = "host-gw", value_parser = ["host-gw", "vxlan"])]
    mode: String,
    #[arg(long, env = "PODNET_CLUSTER_CIDR", default_value = "10.244.0.0/16", value_parser = parse_cluster_cidr)]
    cluster_cidr: ipnet::Ipv4Net,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/cni/podnet")]
    cni_data_dir: PathBuf,
    #[arg(long, env = "PODNET_UNDERLAY_MTU", default_value_t = 1500)]
    underlay_mtu: u32,
    #[arg(long, default_value = "0.0.0.0:9102")]
    metrics_addr: SocketAddr,
    /// Full resync period, seconds.
    #[arg(long, env = "PODNET_RESYNC", default_value_t = 60)]
    resync: u64,
    /// Program Services on nf_tables (kube-proxy replacement); `false` leaves them to
    /// kube-proxy.
    #[arg(long, env = "PODNET_PROXY_SERVICES", default_value_t = true, action = clap::ArgAction::Set)]
    proxy_services: bool,
    /// Enforce NetworkPolicy on nf_tables (table `ip podnet-policy`).
    #[arg(long, env = "PODNET_ENFORCE_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    enforce_policy: bool,
    /// Pod-to-pod packets between nodes skip the node's IP stack (netdev `fwd`) unless an
    /// end is a Service endpoint or an isolated pod; `false`: every packet takes the full
    /// path (routing, netfilter, conntrack).
    #[arg(long, env = "PODNET_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    fast_path: bool,
    /// The cluster IP range: off-cluster clients of cluster IPs are masqueraded.
    #[arg(long, env = "PODNET_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    service_cidr: ipnet::Ipv4Net,
    /// Destinations outside the cluster that pods reach with their own addresses (not
    /// masqueraded), comma-separated CIDRs; empty: none.
    #[arg(long, env = "PODNET_MASQUERADE_EXCEPTIONS", default_value = "", value_parser = parse_cidr_list)]
    masquerade_exceptions: CidrList,
    /// The cluster's NodePort range (kube-apiserver's --service-node-port-range): node
    /// ports outside it are reported and not programmed.
    #[arg(long, env = "PODNET_NODE_PORT_RANGE", default_value = "30000-32767", value_parser = parse_port_range)]
    node_port_range: PortRange,
    /// The prefix length of the subnet of the cluster CIDR a node claims when its Node
    /// has no spec.podCIDR (the control plane does not allocate them).
    #[arg(long, env = "PODNET_NODE_CIDR_MASK", default_value_t = podnet_agent::DEFAULT_NODE_CIDR_MASK,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    node_cidr_mask: u8,
    /// The namespace of the pod CIDR claims (Leases). Default: the API client's namespace
    /// (in a pod: its own namespace).
    #[arg(long)]
    claim_namespace: Option<String>,
}

/// A comma-separated list of IPv4 CIDRs; the empty string is the empty list (a
/// ConfigMap value of "" means "none").
#[derive(Clone, Debug)]
pub struct CidrList(Vec<ipnet::Ipv4Net>);

fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.parse().map_err(|e| format!("{c}: {e}")))
        .collect::<Result<_, _>>()
        .map(CidrList)
}

/// A port range `FIRST-LAST` (both included, 1 ≤ FIRST ≤ LAST).
#[derive(Clone, Debug)]
pub struct PortRange(u16, u16);

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s}: expected FIRST-LAST, e.g. 30000-32767"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{s}: {p}: {e}"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a == 0 || a > b {
        return Err(format!("{s}: expected 1 <= FIRST <= LAST"));
    }
    Ok(PortRange(a, b))
}

#[derive(Args)]
pub struct DnsArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// UDP and TCP address to serve DNS on.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Where names outside the zone go: IP or IP:PORT, tried in order (repeatable).
    /// Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "upstream", value_parser = podnet_dns_server::forward::parse_upstream)]
    upstreams: Vec<SocketAddr>,
    /// /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:9153")]
    metrics_addr: SocketAddr,
    /// TTL of the zone's records, seconds.
    #[arg(long, default_value_t = 5)]
    ttl: u32,
    /// Forwarded answers kept in the cache.
    #[arg(long, default_value_t = 10_000)]
    cache_size: usize,
    /// UDP worker threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    udp_workers: usize,
}

#[derive(Args)]
pub struct KubeletArgs {
    #[command(flatten)]
    api: ApiArgs,
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
    /// The bearer token every pod gets as `token` in
    /// /var/run/secrets/kubernetes.io/serviceaccount/ (with `--service-account-ca-file`).
    #[arg(long, requires = "service_account_ca_file")]
    service_account_token_file: Option<PathBuf>,
    /// The cluster's CA certificate, the pods' `ca.crt`.
    #[arg(long, requires = "service_account_token_file")]
    service_account_ca_file: Option<PathBuf>,
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
        let tokens = a
            .token_file
            .as_deref()
            .map(podnet_apiserver::Tokens::read)
            .transpose()?;
        let port = listener.local_addr()?.port();
        let config = podnet_apiserver::Config {
            cluster_cidr: a.cluster_cidr,
            node_cidr_prefix: a.node_cidr_prefix,
            allocate_node_cidrs: a.allocate_node_cidrs,
            service_cidr: a.service_cidr,
            node_port_range: (a.service_node_port_range.0, a.service_node_port_range.1),
            load_balancer_pool: Some(a.load_balancer_pool),
            advertise: a.advertise_address.map(|ip| SocketAddr::new(ip, port)),
            tokens,
        };
        match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = podnet_apiserver::tls_server_config(cert, key)?;
                podnet_apiserver::serve_tls(listener, config, tls).await
            }
            _ => podnet_apiserver::serve(listener, config).await,
        }
    })
}

/// The pods' range: an IPv4 CIDR, not /0 (the masquerade rule, the routes and the claims
/// all need it to leave addresses outside the cluster).
fn parse_cluster_cidr(s: &str) -> Result<ipnet::Ipv4Net, String> {
    let cidr: ipnet::Ipv4Net = s.parse().map_err(|e| format!("{e}"))?;
    if cidr.prefix_len() == 0 {
        return Err("a /0 cluster CIDR leaves no address outside the cluster".into());
    }
    Ok(cidr)
}

pub fn agent(a: AgentArgs) -> Result<()> {
    podnet_agent::with_malloc_tunables();
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
        masquerade_exceptions: a.masquerade_exceptions.0,
        node_port_range: a.node_port_range.0..=a.node_port_range.1,
        node_cidr_mask: a.node_cidr_mask,
        claim_namespace: a.claim_namespace,
        claim_grace: podnet_agent::CLAIM_GRACE,
        fast_path: a.fast_path,
    };
    runtime()?.block_on(async move {
        let client = a.api.client().await?;
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
        service_account: a
            .service_account_token_file
            .zip(a.service_account_ca_file)
            .map(|(token_file, ca_file)| podnet_kubelet::ServiceAccount {
                token_file,
                ca_file,
            }),
    };
    runtime()?.block_on(async move {
        let client = a.api.client().await?;
        podnet_kubelet::run(config, client).await
    })
}

pub fn dns(a: DnsArgs) -> Result<()> {
    init_logging();
    let upstreams = if a.upstreams.is_empty() {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        podnet_dns_server::forward::upstreams_from_resolv_conf(&conf)
    } else {
        a.upstreams
    };
    let config = podnet_dns_server::Config {
        listen: a.listen,
        zone: a.zone,
        upstreams,
        metrics_addr: a.metrics_addr,
        ttl: a.ttl,
        cache_size: a.cache_size,
        udp_workers: a.udp_workers,
        ..Default::default()
    };
    runtime()?.block_on(async move {
        let client = a.api.client().await?;
        podnet_dns_server::run(config, client).await
    })
}
