//! Orchestration: `lab up` — builds the lab step by step, recording each namespace before
//! creating it; on any failure it removes what it made (`lab down`) and says what failed.

use super::net::{
    create_namespace, create_underlay, plug_member, route_external_ranges, route_service_ranges,
    spawn_in,
};
use super::state::{LabRecord, lab_dir};
use super::topology::{
    AGENT_METRICS_PORT, API_PORT, CONTROL_PLANE_IP, ECHO_PORT, LOAD_BALANCER_POOL, Topology,
    plan_topology,
};
use super::{UpArgs, apply, dns, down, pki, status, with_api};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEFAULT_WORKLOAD: &str = include_str!("workload.yaml");

pub fn up(a: &UpArgs) -> Result<()> {
    let t = plan_topology(&a.name, a.nodes).map_err(anyhow::Error::msg)?;
    if LabRecord::load(&a.name)?.is_some()
        || !super::net::namespaces_with_prefix(&t.prefix).is_empty()
    {
        bail!(
            "lab {} already exists: `podnet lab down --name {}` first",
            a.name,
            a.name
        );
    }
    let started = Instant::now();
    let mut rec = LabRecord {
        name: a.name.clone(),
        mode: a.mode.clone(),
        nodes: a.nodes,
        ..Default::default()
    };
    rec.save()?;
    match build(&t, &mut rec, a) {
        Ok(()) => {
            println!(
                "lab {} is up in {:.1} s ({} mode). Try: podnet lab check --name {} · podnet lab status --name {} · podnet lab kubectl --name {} -- get pods -o wide · podnet lab down --name {}",
                a.name,
                started.elapsed().as_secs_f64(),
                a.mode,
                a.name,
                a.name,
                a.name,
                a.name
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("lab up failed: {e:#}; removing what was made");
            if let Err(d) = down(&a.name) {
                eprintln!("{d:#}");
            }
            Err(e)
        }
    }
}

fn step(n: usize, what: &str) {
    println!("[{n}/6] {what}");
}

fn build(t: &Topology, rec: &mut LabRecord, a: &UpArgs) -> Result<()> {
    let exe = std::env::current_exe().context("own executable")?;
    let dir = lab_dir(&t.lab);
    std::fs::create_dir_all(dir.join("logs"))?;

    step(
        1,
        "namespaces: underlay, control plane, nodes, external host",
    );
    rec.will_create_namespace(&t.underlay_netns)?;
    create_namespace(&t.underlay_netns)?;
    create_underlay(t)?;
    for m in t.members() {
        rec.will_create_namespace(&m.netns)?;
        create_namespace(&m.netns)?;
        plug_member(t, m)?;
    }
    for m in &t.workers {
        route_service_ranges(m)?;
    }
    route_external_ranges(t)?;

    step(
        2,
        "control plane: API server on https://172.18.0.2:6443 (the lab's CA, bearer tokens)",
    );
    let pki = pki::create(t, &dir)?;
    let p = |p: &Path| p.display().to_string();
    let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
    let pid = spawn_in(
        &t.control_plane.netns,
        &exe,
        &args(&[
            "apiserver",
            "--listen",
            &format!("0.0.0.0:{API_PORT}"),
            "--advertise-address",
            &CONTROL_PLANE_IP.to_string(),
            "--load-balancer-pool",
            LOAD_BALANCER_POOL,
            "--tls-cert",
            &p(&pki.serving_cert()),
            "--tls-key",
            &p(&pki.serving_key()),
            "--token-file",
            &p(&pki.token_file()),
            &format!("--allocate-node-cidrs={}", !a.podnet_allocates_cidrs),
        ]),
        &[],
        &log("apiserver"),
    )?;
    rec.started("apiserver", &t.control_plane.name, pid)?;
    with_api(t, |c| async move { wait_api(&c).await })?;

    step(
        3,
        &format!(
            "nodes: pod runtime and agent on {} nodes ({} mode)",
            t.workers.len(),
            a.mode
        ),
    );
    let plugin_dir = exe.parent().context("executable directory")?.to_path_buf();
    for m in &t.workers {
        let nd = dir.join("nodes").join(&m.name);
        let d = |s: &str| -> Result<PathBuf> {
            let p = nd.join(s);
            std::fs::create_dir_all(&p)?;
            Ok(p)
        };
        let (conf, data, cache, kubelet) = (
            d("cni-conf")?,
            d("cni-data")?,
            d("cni-cache")?,
            d("kubelet")?,
        );
        let pid = spawn_in(
            &m.netns,
            &exe,
            &args(&[
                "kubelet",
                "--kubeconfig",
                &p(&nd.join("kubelet.kubeconfig")),
                "--service-account-token-file",
                &p(&pki.pod_token()),
                "--service-account-ca-file",
                &p(&pki.ca_cert()),
                "--node-name",
                &m.name,
                "--node-ip",
                &m.ip.to_string(),
                "--cni-conf-dir",
                &p(&conf),
                "--cni-bin-dir",
                &p(&plugin_dir),
                "--cni-bin-dir",
                "/usr/lib/cni",
                "--cni-cache-dir",
                &p(&cache),
                "--state-dir",
                &p(&kubelet),
                "--netns-prefix",
                &t.pod_netns_prefix,
                "--cluster-dns",
                &dns::CLUSTER_DNS_IP.to_string(),
                "--cluster-domain",
                dns::CLUSTER_DOMAIN,
            ]),
            &[],
            &log(&format!("{}-kubelet", m.name)),
        )?;
        rec.started("kubelet", &m.name, pid)?;
        let pid = spawn_in(
            &m.netns,
            &exe,
            &args(&[
                "agent",
                "--kubeconfig",
                &p(&nd.join("agent.kubeconfig")),
                "--node-name",
                &m.name,
                "--mode",
                &a.mode,
                "--cni-conf-dir",
                &p(&conf),
                "--cni-data-dir",
                &p(&data),
                "--metrics-addr",
                &format!("{}:{AGENT_METRICS_PORT}", m.ip),
                "--claim-namespace",
                "kube-system",
            ]),
            &[],
            &log(&format!("{}-agent", m.name)),
        )?;
        rec.started("agent", &m.name, pid)?;
    }
    let ext = &t.external;
    let pid = spawn_in(
        &ext.netns,
        &exe,
        &args(&["echo"]),
        &[
            ("POD_NAME".into(), "external".into()),
            ("POD_NAMESPACE".into(), "-".into()),
            ("POD_IP".into(), ext.ip.to_string()),
            ("NODE_NAME".into(), "external".into()),
            ("CONTAINER_NAME".into(), "echo".into()),
            ("ECHO_TCP_PORTS".into(), ECHO_PORT.to_string()),
            ("ECHO_UDP_PORTS".into(), ECHO_PORT.to_string()),
        ],
        &log("external-echo"),
    )?;
    rec.started("echo", &ext.name, pid)?;
    let pid = spawn_in(
        &ext.netns,
        Path::new("dnsmasq"),
        &dns::external_resolver_args(),
        &[],
        &log("external-dnsmasq"),
    )
    .context("the external host's resolver (Debian's dnsmasq: ./scripts/setup installs it)")?;
    rec.started("dnsmasq", &ext.name, pid)?;
    let workers = t.workers.len();
    let spec_cidrs = !a.podnet_allocates_cidrs;
    with_api(
        t,
        |c| async move { wait_nodes(&c, workers, spec_cidrs).await },
    )?;

    step(
        4,
        &format!(
            "cluster DNS: kube-dns at {} ({} pods running podnet dns)",
            dns::CLUSTER_DNS_IP,
            dns::DNS_REPLICAS
        ),
    );
    let manifests = dns::manifests(&exe);
    with_api(t, |c| async move {
        apply::apply(&c, &manifests).await?;
        wait_pods(&c).await
    })?;

    step(
        5,
        if a.no_workload {
            "pods: none (--no-workload)"
        } else {
            "pods: the default workload"
        },
    );
    if !a.no_workload {
        with_api(t, |c| async move {
            apply::apply(&c, DEFAULT_WORKLOAD).await?;
            wait_pods(&c).await
        })?;
    }

    step(6, "built:");
    with_api(t, |c| async move { status::print(&c).await })
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

async fn poll<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            match last {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_api(c: &kube::Client) -> Result<()> {
    poll("the API server", Duration::from_secs(15), async || {
        Ok(c.apiserver_version().await.ok().map(|_| ()))
    })
    .await
}

/// `spec_cidrs`: also wait for `spec.podCIDR` (the control plane allocates); without,
/// Ready is enough (the kubelet is Ready once the agent wrote its CNI config, which needs
/// the subnet the agent claimed).
async fn wait_nodes(c: &kube::Client, n: usize, spec_cidrs: bool) -> Result<()> {
    let nodes: Api<Node> = Api::all(c.clone());
    poll(
        &format!("{n} Ready nodes with pod CIDRs"),
        Duration::from_secs(30),
        async || {
            let list = nodes.list(&ListParams::default()).await?;
            let ready = list
                .items
                .iter()
                .filter(|n| {
                    status::node_ready(n)
                        && (!spec_cidrs
                            || n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some())
                })
                .count();
            Ok((ready >= n).then_some(()))
        },
    )
    .await
}

async fn wait_pods(c: &kube::Client) -> Result<()> {
    let pods: Api<Pod> = Api::all(c.clone());
    poll(
        "every pod Running with an IP",
        Duration::from_secs(60),
        async || {
            let list = pods.list(&ListParams::default()).await?;
            let pending: Vec<String> = list
                .items
                .iter()
                .filter(|p| {
                    let s = p.status.as_ref();
                    s.and_then(|s| s.phase.as_deref()) != Some("Running")
                        || s.and_then(|s| s.pod_ip.as_ref()).is_none()
                })
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
            if pending.is_empty() {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("not yet running: {}", pending.join(", ")))
            }
        },
    )
    .await
}
