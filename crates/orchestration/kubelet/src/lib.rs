//! Orchestration: the lab's per-node pod runtime (what kubelet and a container runtime do)
//! and the built-in echo workload.
//!
//! Layers inside the crate: [`plan`] and [`dns`] are pure (decisions, status objects), [`state`] and
//! [`sandbox`] apply (files; namespaces, CNI, processes), [`kubelet`] is the loop, [`cni`]
//! the libcni-like conflist executor, [`echo`] the workload ([`sctp`] its SCTP packets).

pub mod cni;
pub mod dns;
pub mod echo;
mod kubelet;
pub mod plan;
pub mod sandbox;
pub mod sctp;
pub mod state;

/// How one node's kubelet runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub node_ip: std::net::Ipv4Addr,
    /// Where the node agent writes its `*.conflist` (the first by name is used).
    pub cni_conf_dir: std::path::PathBuf,
    pub cni_bin_dirs: Vec<std::path::PathBuf>,
    pub cni_cache_dir: std::path::PathBuf,
    /// Per-pod records and container logs: `<state_dir>/pods/<uid>/`.
    pub state_dir: std::path::PathBuf,
    /// Pod namespaces are named `<netns_prefix><16 hex digits>`; at most 44 characters.
    pub netns_prefix: String,
    /// The podnet binary; containers of image `podnet/echo` run `<echo_exe> echo`.
    pub echo_exe: std::path::PathBuf,
    /// The cluster DNS Service's address(es) (kubelet's `--cluster-dns`); empty: pods use
    /// the node's resolver configuration.
    pub cluster_dns: Vec<std::net::IpAddr>,
    /// kubelet's `--cluster-domain` (`cluster.local`).
    pub cluster_domain: String,
    /// The node's resolver configuration (kubelet's `--resolv-conf`), as read at start.
    pub node_resolv_conf: dns::ResolvConf,
    /// The credentials every pod gets at [`plan::SERVICE_ACCOUNT_DIR`] (unless it opts
    /// out); `None`: none.
    pub service_account: Option<ServiceAccount>,
}

/// What pods get as their service account: kubelet's projected token volume, simplified
/// to one token for every pod (the lab has no TokenRequest API) and the cluster's CA
/// (kubelet takes it from the `kube-root-ca.crt` ConfigMap).
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub token_file: std::path::PathBuf,
    pub ca_file: std::path::PathBuf,
}

/// Runs this node's kubelet (inside the node's network namespace) until the pod watch
/// ends for good. Pods keep running when it returns or is killed: a later run adopts them.
pub async fn run(config: Config, client: kube::Client) -> anyhow::Result<()> {
    kubelet::run(config, client).await
}
