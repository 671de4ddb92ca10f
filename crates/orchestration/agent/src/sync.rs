//! Orchestration: one sync — nodes snapshot → plan (pure) → read kernel → diff → apply
//! only the differences; the CNI config and the masquerade table likewise only when
//! their rendered text changed.
//!
//! Invariant: a sync with nothing changed makes no kernel write and no file write.
//! Nothing is flushed at start: after a restart the first sync reads what the previous
//! run left and applies the difference, so established connections are never disturbed
//! (kube-proxy's iptables mode rewrote its whole ruleset each sync; flannel re-adds
//! routes one by one; here the diff is computed before any write).

use crate::ops::{NftOps, NodeNetOps};
use anyhow::{Context, Result, anyhow};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use podnet_nodenet::{
    Mode, NodeInfo, POD_BRIDGE, TUNNEL_TABLE, VXLAN_DEVICE, diff, plan_node, render_cni_conflist,
    render_masquerade, render_tunnel,
};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The file name of the CNI config the agent writes.
pub const CONFLIST_NAME: &str = "10-podnet.conflist";

/// What a sync needs of the agent's configuration.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub node_name: String,
    pub mode: Mode,
    pub cluster_cidr: Ipv4Net,
    pub cni_conf_dir: PathBuf,
    pub cni_data_dir: PathBuf,
    pub underlay_mtu: u32,
    /// Destinations outside the cluster that pods reach with their own addresses.
    pub masquerade_exceptions: Vec<Ipv4Net>,
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Netlink writes plus nft transactions.
    pub kernel_writes: usize,
    pub peers: usize,
    pub routes: usize,
    pub conflist_written: bool,
    pub nft_applied: bool,
    pub skipped: Vec<String>,
}

/// Holds the kernel capabilities and what was last applied.
pub struct Syncer<N, F> {
    pub config: SyncConfig,
    pub net: N,
    pub nft: F,
    last_nft: Option<podnet_nft::Table>,
    /// The netdev table `podnet-tunnel` as last applied: `Some(None)` once it is known
    /// absent (host-gw mode), `None` before the first sync.
    last_tunnel: Option<Option<podnet_nft::Table>>,
    forwarding: bool,
    /// The pod-to-pod fast path this syncer feeds its part of ([`Syncer::with_fast_path`]).
    fast_path: Option<crate::fastpath::Shared>,
    /// What the last sync learned for it: pod CIDR, next hops, the peer-facing device.
    fast_inputs: Option<FastInputs>,
    /// When lingering former endpoints were last checked against conntrack.
    lingering_checked: Option<std::time::Instant>,
}

/// The node sync's part of the fast path's inputs (the devices' indexes are read at each
/// [`Syncer::refresh_fast_path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FastInputs {
    pod_cidr: Ipv4Net,
    next_hops: Vec<(Ipv4Net, Ipv4Addr)>,
    peer_device: String,
}

/// How often lingering former endpoints are checked against conntrack.
const LINGER_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's own IPv4 pod CIDR from its spec (`spec.podCIDR`, else the first IPv4 of
/// `spec.podCIDRs`), when the control plane allocated one.
pub fn spec_pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .iter()
        .chain(spec.pod_cidrs.iter().flatten())
        .find_map(|c| c.parse::<Ipv4Net>().ok())
        .map(|c| c.trunc())
}

/// The node's name, InternalIP (IPv4) and pod CIDR — its spec's, else `claimed` (the
/// subnet it holds by a claim, [`crate::claim`]) — or `None` while it lacks one.
pub fn node_info(node: &Node, claimed: Option<Ipv4Net>) -> Option<NodeInfo> {
    let name = node.metadata.name.clone()?;
    let pod_cidr = spec_pod_cidr(node).or(claimed.map(|c| c.trunc()))?;
    let ip = node
        .status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())?;
    Some(NodeInfo { name, ip, pod_cidr })
}

impl<N: NodeNetOps, F: NftOps> Syncer<N, F> {
    pub fn new(config: SyncConfig, net: N, nft: F) -> Self {
        Syncer {
            config,
            net,
            nft,
            last_nft: None,
            last_tunnel: None,
            forwarding: false,
            fast_path: None,
            fast_inputs: None,
            lingering_checked: None,
        }
    }

    /// Feeds the fast path (see [`crate::fastpath`]) from now on.
    pub fn with_fast_path(mut self, fast_path: crate::fastpath::Shared) -> Self {
        self.fast_path = Some(fast_path);
        self
    }

    /// Re-reads the devices and the local pods' veths and gives the fast path its
    /// topology (after every sync, and every [`crate::LINK_POLL`] between them); checks
    /// lingering former endpoints every [`LINGER_CHECK`].
    pub fn refresh_fast_path(&mut self) -> Result<()> {
        let Some(fp) = self.fast_path.clone() else {
            return Ok(());
        };
        let links = self.net.links().context("list links")?;
        let topology = self.fast_inputs.as_ref().and_then(|inputs| {
            let device = |name: &str| {
                links
                    .iter()
                    .find(|l| l.name == name)
                    .map(|l| podnet_nft::Device {
                        name: l.name.clone(),
                        index: l.index,
                    })
            };
            Some(crate::fastpath::Topology {
                pod_cidr: inputs.pod_cidr,
                bridge: device(POD_BRIDGE)?,
                peer_device: device(&inputs.peer_device)?,
                next_hops: inputs.next_hops.clone(),
            })
        });
        let pod_links = match &topology {
            Some(t) => links
                .iter()
                .filter(|l| l.master == Some(t.bridge.index))
                .map(|l| l.name.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        let mut fp = crate::pending::lock(&fp);
        fp.set_topology(topology, pod_links)?;
        fp.retry()?;
        if self
            .lingering_checked
            .is_none_or(|t| t.elapsed() >= LINGER_CHECK)
        {
            self.lingering_checked = Some(std::time::Instant::now());
            fp.release_lingering()?;
        }
        Ok(())
    }

    /// One sync against the nodes in `nodes` (ours among them).
    pub fn sync(&mut self, nodes: &[NodeInfo]) -> Result<SyncReport> {
        let cfg = &self.config;
        let me = nodes
            .iter()
            .find(|n| n.name == cfg.node_name)
            .ok_or_else(|| {
                anyhow!(
                    "node {} has no podCIDR or InternalIP yet (or does not exist)",
                    cfg.node_name
                )
            })?
            .clone();
        let mut report = SyncReport::default();
        if !self.forwarding {
            self.net.ensure_forwarding().context("enable ip_forward")?;
            self.forwarding = true;
        }
        let conflist = render_cni_conflist(
            me.pod_cidr,
            cfg.mode.pod_mtu(cfg.underlay_mtu),
            &cfg.cni_data_dir.to_string_lossy(),
        );
        report.conflist_written = write_if_changed(&cfg.cni_conf_dir, CONFLIST_NAME, &conflist)?;

        let plan = plan_node(&me, nodes, cfg.mode, cfg.underlay_mtu);
        report.peers = plan.routes.len();
        report.routes = plan.routes.len();
        report.skipped = plan.skipped.clone();
        let current = self.net.read_state().context("read kernel state")?;
        let changes = diff(&current, &plan);
        let mut failures = Vec::new();
        if !changes.is_empty() {
            match self.net.apply(&changes) {
                Ok(n) => report.kernel_writes += n,
                Err(e) => {
                    report.kernel_writes += changes.len();
                    failures.push(format!("{e:#}"));
                }
            }
        }

        let ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.ip).collect();
        let table = render_masquerade(cfg.cluster_cidr, &cfg.masquerade_exceptions, &ips, cfg.mode);
        if self.last_nft.as_ref() != Some(&table) {
            match self.nft.replace_table(&table) {
                Ok(()) => {
                    self.last_nft = Some(table);
                    report.nft_applied = true;
                    report.kernel_writes += 1;
                }
                Err(e) => failures.push(format!("masquerade: {e:#}")),
            }
        }
        if let Err(e) = self.sync_tunnel(me.ip, &ips, &mut report) {
            failures.push(format!("tunnel: {e:#}"));
        }
        if self.fast_path.is_some() {
            let peer_device = match self.config.mode {
                Mode::Vxlan => Some(VXLAN_DEVICE.to_string()),
                Mode::HostGw => self.net.link_with_address(me.ip).unwrap_or_default(),
            };
            self.fast_inputs = peer_device.map(|peer_device| FastInputs {
                pod_cidr: me.pod_cidr,
                next_hops: plan.routes.iter().map(|(d, r)| (*d, r.gateway)).collect(),
                peer_device,
            });
            if let Err(e) = self.refresh_fast_path() {
                failures.push(format!("fast path: {e:#}"));
            }
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(anyhow!(failures.join("; ")))
        }
    }

    /// VXLAN mode: table `podnet-tunnel` on the link that holds the node IP, replaced
    /// when it (or the node IPs) changed. host-gw mode: the table removed (once), should a
    /// VXLAN-mode run have left it.
    fn sync_tunnel(
        &mut self,
        node_ip: Ipv4Addr,
        ips: &[Ipv4Addr],
        report: &mut SyncReport,
    ) -> Result<()> {
        let want = match self.config.mode {
            Mode::HostGw => None,
            Mode::Vxlan => {
                let link = self
                    .net
                    .link_with_address(node_ip)
                    .context("find the underlay link")?
                    .ok_or_else(|| {
                        anyhow!("the node IP {node_ip} is on no link here: no underlay to hook")
                    })?;
                Some(render_tunnel(ips, &link))
            }
        };
        if self.last_tunnel.as_ref() == Some(&want) {
            return Ok(());
        }
        match &want {
            Some(table) => self.nft.replace_table(table)?,
            None => self
                .nft
                .remove_table(podnet_nft::Family::Netdev, TUNNEL_TABLE)?,
        }
        report.kernel_writes += 1;
        report.nft_applied |= want.is_some();
        self.last_tunnel = Some(want);
        Ok(())
    }
}

/// Writes `dir/name` atomically (temp file in `dir`, then rename) unless it already holds
/// `content`. Returns whether it wrote.
pub fn write_if_changed(dir: &Path, name: &str, content: &str) -> Result<bool> {
    let path = dir.join(name);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // A dot-name: runtimes read only `*.conf`/`*.conflist`/`*.json`, never the temp file.
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, content).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(true)
}
