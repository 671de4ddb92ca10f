//! Orchestration: `podnet lab` — a whole Kubernetes cluster on one machine, made of network
//! namespaces, with podnet's real data plane.
//!
//! Shape (DESIGN.md): an underlay namespace with a bridge (the "physical" network); a
//! control-plane namespace running the lab's API server on 172.18.0.2:6443; worker node
//! namespaces, each running `podnet kubelet` (pod runtime) and `podnet agent`; pod
//! namespaces made by the pod runtimes; an external host (172.18.0.200) standing for the
//! outside world. The lab's namespaces have no route off the machine.
//!
//! The CLI talks to the lab's API from inside the control-plane namespace (the calling
//! thread enters it and runs a single-threaded tokio runtime there), so the host's own network namespace
//! never needs an address, route or forwarded port. Every client — the CLI, kubectl,
//! kubelets, agents, pods — speaks HTTPS with the lab's CA and a bearer token ([`pki`]).

mod apply;
mod check;
pub mod dns;
mod net;
pub mod netpol;
pub mod pki;
mod state;
mod status;
pub mod topology;
mod up;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podnet_netlink::netns;
use state::LabRecord;
use std::time::Duration;
use topology::Topology;

#[derive(Subcommand)]
pub enum LabCmd {
    /// Build a lab: underlay, control plane, worker nodes, external host, default pods.
    Up(UpArgs),
    /// Remove everything a lab made (also after a crash).
    Down {
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Nodes, pods and services of a lab, as tables.
    Status {
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Create or update the objects of a multi-document Kubernetes YAML file.
    Apply {
        #[arg(long, default_value = "demo")]
        name: String,
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
    },
    /// Delete the objects named in a multi-document Kubernetes YAML file.
    Delete {
        #[arg(long, default_value = "demo")]
        name: String,
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
    },
    /// Prove the networking model with real traffic; exits non-zero on any failure.
    Check {
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// The Services table a node's agent programmed, in nft syntax (from the agent's
    /// memory, `GET /services` on its metrics port).
    Services {
        #[arg(long, default_value = "demo")]
        name: String,
        #[arg(long, default_value = "node-1")]
        node: String,
    },
    /// Why a connection is allowed or refused by NetworkPolicy: the policies isolating
    /// each side and the rule (if any) admitting it. Addresses are pod IPs (after Service
    /// translation) or any other IPv4 address.
    Explain {
        #[arg(long, default_value = "demo")]
        name: String,
        #[arg(long)]
        from: std::net::Ipv4Addr,
        #[arg(long)]
        to: std::net::Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp", "sctp"])]
        protocol: String,
    },
    /// Create upstream's NetworkPolicy test model: namespaces x, y, z with pods a, b, c
    /// serving TCP/UDP/SCTP on 80 and 81, each behind a Service; waits until they run.
    NetpolModel {
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// The model's 9×9 reachability matrix with real packets (`.` connected, `X` not).
    Matrix {
        #[arg(long, default_value = "demo")]
        name: String,
        #[arg(long, default_value = "tcp")]
        protocol: netpol::Protocol,
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// Probe each pod's Service instead of its pod IP.
        #[arg(long)]
        service: bool,
    },
    /// Run kubectl against the lab (arguments after `--`).
    Kubectl {
        #[arg(long, default_value = "demo")]
        name: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a command inside a pod, as `kubectl exec` does: in the pod's network namespace
    /// with the resolv.conf its kubelet wrote (arguments after `--`; exits with the
    /// command's status).
    Exec {
        #[arg(long, default_value = "demo")]
        name: String,
        /// `NAMESPACE/NAME`, or `NAME` in `default`.
        #[arg(long)]
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// List the labs on this machine.
    List,
}

#[derive(Args, Clone)]
pub struct UpArgs {
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Worker nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How pods reach pods on other nodes: host-gw (direct routes) or vxlan (overlay).
    #[arg(long, default_value = "host-gw", value_parser = ["host-gw", "vxlan"])]
    pub mode: String,
    /// Do not deploy the default pods.
    #[arg(long)]
    pub no_workload: bool,
    /// The control plane allocates no pod CIDRs (`--allocate-node-cidrs=false`): the
    /// agents claim their nodes' subnets themselves (Leases in kube-system).
    #[arg(long)]
    pub podnet_allocates_cidrs: bool,
}

pub fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up(a) => up::up(&a),
        LabCmd::Down { name } => down(&name),
        LabCmd::Status { name } => {
            let t = existing(&name)?;
            with_api(&t, |c| async move { status::print(&c).await })
        }
        LabCmd::Apply { name, file } => {
            let t = existing(&name)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            with_api(&t, |c| async move { apply::apply(&c, &text).await })
        }
        LabCmd::Delete { name, file } => {
            let t = existing(&name)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?;
            with_api(&t, |c| async move { apply::delete(&c, &text).await })
        }
        LabCmd::Check { name } => {
            let t = existing(&name)?;
            check::run(&t)
        }
        LabCmd::Services { name, node } => {
            print!("{}", agent_services(&existing(&name)?, &node)?);
            Ok(())
        }
        LabCmd::Explain {
            name,
            from,
            to,
            port,
            protocol,
        } => {
            let proto = match protocol.as_str() {
                "udp" => podnet_policy::UDP,
                "sctp" => podnet_policy::SCTP,
                _ => podnet_policy::TCP,
            };
            let t = existing(&name)?;
            let e = with_api(&t, |c| async move {
                use k8s_openapi::api::core::v1::{Namespace, Pod};
                use k8s_openapi::api::networking::v1::NetworkPolicy;
                let lp = kube::api::ListParams::default();
                let nps = kube::Api::<NetworkPolicy>::all(c.clone()).list(&lp).await?;
                let pods = kube::Api::<Pod>::all(c.clone()).list(&lp).await?;
                let nss = kube::Api::<Namespace>::all(c).list(&lp).await?;
                let (policies, problems) = podnet_policy::read_policies(&nps.items);
                for p in problems {
                    eprintln!("warning: {p}");
                }
                let cluster = podnet_policy::Cluster::new(&pods.items, &nss.items);
                let name_of = |ip: std::net::Ipv4Addr| {
                    cluster
                        .pods
                        .iter()
                        .find(|p| p.ip == ip)
                        .map_or_else(|| ip.to_string(), |p| format!("{} ({ip})", p.key()))
                };
                println!("{} -> {} {protocol}/{port}", name_of(from), name_of(to));
                Ok(podnet_policy::explain(
                    &policies, &cluster, from, to, proto, port,
                ))
            })?;
            println!("{e}");
            Ok(())
        }
        LabCmd::NetpolModel { name } => {
            let t = existing(&name)?;
            let text = netpol::model_yaml();
            with_api(&t, |c| async move { apply::apply(&c, &text).await })?;
            let deadline = std::time::Instant::now() + Duration::from_secs(90);
            loop {
                let m = netpol::matrix(&t, netpol::Protocol::Tcp, 80, false);
                if m.is_ok() {
                    println!("model ready: x, y, z × a, b, c");
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    return m.map(|_| ()).context("the model's pods did not come up");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        LabCmd::Matrix {
            name,
            protocol,
            port,
            service,
        } => {
            let p = netpol::probe_matrix(&existing(&name)?, protocol, port, service)?;
            print!("{}", netpol::render(&p.matrix));
            if !p.unanswered.is_empty() {
                let pairs: Vec<String> = p
                    .unanswered
                    .iter()
                    .map(|(f, t)| format!("{f}->{t}"))
                    .collect();
                eprintln!("unanswered (dropped, not refused): {}", pairs.join(" "));
            }
            Ok(())
        }
        LabCmd::Kubectl { name, args } => kubectl(&existing(&name)?, &args),
        LabCmd::Exec { name, pod, command } => {
            let code = exec(&existing(&name)?, &pod, &command)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        LabCmd::List => {
            for name in state::list_labs() {
                let rec = LabRecord::load(&name)?.unwrap_or_default();
                println!("{name}\t{} nodes\t{}", rec.nodes, rec.mode);
            }
            Ok(())
        }
    }
}

/// The topology of an existing lab, from its record.
fn existing(name: &str) -> Result<Topology> {
    topology::validate_lab_name(name).map_err(anyhow::Error::msg)?;
    let rec = LabRecord::load(name)?
        .with_context(|| format!("no lab named {name} (podnet lab up --name {name})"))?;
    topology::plan_topology(name, rec.nodes).map_err(anyhow::Error::msg)
}

/// Runs `f` with a client of the lab's API (the admin's kubeconfig: HTTPS, the lab's CA,
/// a token), from inside the control-plane namespace.
pub fn with_api<T, F, Fut>(t: &Topology, f: F) -> Result<T>
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let ns = netns::open(netns::named_path(&t.control_plane.netns))
        .with_context(|| format!("lab {} has no control-plane namespace", t.lab))?;
    let kubeconfig = state::lab_dir(&t.lab).join("kubeconfig");
    // A current-thread runtime opens every socket on this thread, inside the namespace.
    netns::run_in(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let client = kubeconfig_client(&kubeconfig).await?;
            f(client).await
        })
    })?
}

/// A client of an API server at `url` over plain HTTP, without credentials (`--server`).
pub fn client(url: &str) -> Result<kube::Client> {
    if !url.starts_with("http://") {
        anyhow::bail!(
            "API URL {url}: plain http:// only here (a kubeconfig names https servers and their CA)"
        );
    }
    let mut config = kube::Config::new(url.parse().context("API URL")?);
    // No TLS on plain HTTP; an explicit empty CA list keeps the client from loading the
    // system's trust store, which a `FROM scratch` image does not have (the client
    // would refuse to build without one).
    config.root_cert = Some(Vec::new());
    Ok(kube::Client::try_from(with_timeouts(config))?)
}

/// A client from a kubeconfig file (its current context).
pub async fn kubeconfig_client(path: &std::path::Path) -> Result<kube::Client> {
    let file = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("read kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    kube::Client::try_from(with_timeouts(config)).context("API client")
}

/// Long reads (watches, big lists), quick failure when nothing answers.
fn with_timeouts(mut config: kube::Config) -> kube::Config {
    config.read_timeout = Some(Duration::from_secs(300));
    config.connect_timeout = Some(Duration::from_secs(5));
    config
}

/// `lab down`: stop every process inside the lab's namespaces, delete the namespaces (pods'
/// included, found by the lab's prefix), remove the lab's directory.
pub fn down(name: &str) -> Result<()> {
    topology::validate_lab_name(name).map_err(anyhow::Error::msg)?;
    let prefix = topology::prefix(name);
    let rec = LabRecord::load(name)?;
    let mut namespaces = net::namespaces_with_prefix(&prefix);
    if let Some(r) = &rec {
        for n in &r.namespaces {
            if !namespaces.contains(n) && netns::named_path(n).exists() {
                namespaces.push(n.clone());
            }
        }
    }
    if rec.is_none() && namespaces.is_empty() {
        println!("lab {name}: nothing to remove");
        return Ok(());
    }
    let pids = net::processes_in(&namespaces);
    net::stop_processes(&pids, Duration::from_secs(3));
    let mut errors = Vec::new();
    // Pods first, then nodes, the underlay last.
    namespaces.sort_by_key(|n| (!n.contains("-pod-"), n.ends_with("-underlay")));
    for n in &namespaces {
        if let Err(e) = netns::delete_named(n)
            && !e.is_not_found()
        {
            errors.push(format!("{n}: {e}"));
        }
    }
    let dir = state::lab_dir(name);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        errors.push(format!("{}: {e}", dir.display()));
    }
    if !errors.is_empty() {
        bail!("lab {name}: could not remove: {}", errors.join("; "));
    }
    println!(
        "lab {name}: stopped {} processes, removed {} namespaces",
        pids.len(),
        namespaces.len()
    );
    Ok(())
}

/// `GET /services` from `node`'s agent, inside the node's namespace.
fn agent_services(t: &Topology, node: &str) -> Result<String> {
    use std::io::{Read, Write};
    let m = t
        .workers
        .iter()
        .find(|m| m.name == node)
        .with_context(|| format!("lab {} has no node {node}", t.lab))?;
    let ns = netns::open(netns::named_path(&m.netns))?;
    let addr = std::net::SocketAddr::from((m.ip, topology::AGENT_METRICS_PORT));
    let reply = netns::run_in(&ns, || -> Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect to the agent of {node} at {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET /services HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "agent of {node}: {}",
            head.lines().next().unwrap_or("no answer")
        );
    }
    Ok(body.to_string())
}

/// Runs `command` in `pod`'s network namespace (the node's for hostNetwork pods) and, when
/// its kubelet wrote them, with the pod's resolv.conf and service account directory
/// bind-mounted in a mount namespace of the command's own — the view the pod's containers
/// have. Returns the exit status.
pub fn exec(t: &Topology, pod: &str, command: &[String]) -> Result<i32> {
    use k8s_openapi::api::core::v1::Pod;
    let (namespace, pod_name) = pod.split_once('/').unwrap_or(("default", pod));
    let (namespace, pod_name) = (namespace.to_string(), pod_name.to_string());
    let p: Pod = with_api(t, |c| async move {
        Ok(kube::Api::<Pod>::namespaced(c, &namespace)
            .get(&pod_name)
            .await?)
    })
    .with_context(|| format!("pod {pod}"))?;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .with_context(|| format!("pod {pod} is not scheduled"))?;
    let netns_name = if podnet_kubelet::plan::host_network(&p) {
        t.workers
            .iter()
            .find(|m| m.name == node)
            .with_context(|| format!("lab {} has no node {node}", t.lab))?
            .netns
            .clone()
    } else {
        podnet_kubelet::plan::plan_netns_name(&t.pod_netns_prefix, &uid)
            .map_err(anyhow::Error::msg)?
    };
    let (program, args) = command.split_first().context("no command")?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let status = in_pod(&netns_name, &pod_dir(t, &node, &uid)?, cmd, |c| c.status())
        .with_context(|| format!("run {program} in pod {pod}"))?;
    Ok(status.code().unwrap_or(128))
}

/// The pod's state directory on its node, where its kubelet writes `resolv.conf` (absent
/// for pods that use the node's) and `serviceaccount/` (absent for pods that opt out).
pub(crate) fn pod_dir(t: &Topology, node: &str, uid: &str) -> Result<std::path::PathBuf> {
    podnet_kubelet::state::StateDir::new(
        &state::lab_dir(&t.lab)
            .join("nodes")
            .join(node)
            .join("kubelet"),
    )
    .pod_dir(uid)
}

/// Runs `run(cmd)` from a thread of its own inside network namespace `netns_name`, with
/// the pod's `resolv.conf` and `serviceaccount/` from `pod_dir` (those that exist)
/// bind-mounted in a mount namespace of that thread's own, which the command inherits.
pub(crate) fn in_pod<T: Send + 'static>(
    netns_name: &str,
    pod_dir: &std::path::Path,
    cmd: std::process::Command,
    run: impl FnOnce(&mut std::process::Command) -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let fd = netns::open(netns::named_path(netns_name))
        .with_context(|| format!("no network namespace {netns_name} (pod not running?)"))?;
    let existing = |name: &str| Some(pod_dir.join(name)).filter(|p| p.exists());
    let resolv = existing("resolv.conf");
    let service_account = existing("serviceaccount");
    let mut cmd = cmd;
    std::thread::spawn(move || -> Result<T> {
        let _inside = netns::enter(&fd)?;
        if resolv.is_some() || service_account.is_some() {
            podnet_kubelet::sandbox::private_mounts(resolv.as_deref(), service_account.as_deref())?;
        }
        Ok(run(&mut cmd)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the pod thread panicked"))?
}

/// `kubectl` inside the control-plane namespace, with the lab's kubeconfig; its discovery
/// cache in the lab's directory (`lab down` removes it), not under `~/.kube`.
fn kubectl(t: &Topology, args: &[String]) -> Result<()> {
    let dir = state::lab_dir(&t.lab);
    let ns = netns::open(netns::named_path(&t.control_plane.netns))?;
    let status = netns::run_in(&ns, || {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(dir.join("kube-cache"))
            .args(args)
            .status()
            .context("run kubectl (is it installed? ./scripts/setup)")
    })??;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
