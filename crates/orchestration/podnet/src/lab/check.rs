//! Orchestration: `lab check` — proves the Kubernetes networking model with real traffic
//! and prints it as matrices:
//! - every pod reaches every pod (same node and across nodes) and the server sees the
//!   client's own pod IP — no NAT between pods;
//! - every node reaches every pod, and the pod sees the node's IP;
//! - containers of one pod reach each other over localhost;
//! - pods reach the external host and arrive as their node's IP (egress masquerade);
//! - Services: every pod and node reaches each Service's cluster IP and is answered by one
//!   of its endpoints (a pod client keeps its own IP; the one case it cannot — a pod
//!   reaching itself — arrives masqueraded as its node), the external host reaches each
//!   node port on every node, and a Service without endpoints refuses at once;
//! - cluster DNS: in every pod, `getent hosts` (glibc's resolver, through the resolv.conf
//!   the pod's kubelet wrote) resolves each Service by its short or `name.namespace` form
//!   to its cluster IP, and a name of the outside world through the cluster DNS's
//!   forwarding.
//!
//! Probes are TCP connections to the echo workload, which answers with the pod it is and
//! the peer address it saw. Each probe runs from a thread inside the source's network
//! namespace; pod namespaces are found by the address on their interface, so the check
//! depends on nothing but the kernel and the API.

use super::dns;
use super::net::namespaces_with_prefix;
use super::status::node_ip;
use super::topology::{ECHO_PORT, EXTERNAL_IP, Topology};
use super::with_api;
use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use podnet_kubelet::echo::{EchoReply, parse_reply};
use podnet_netlink::{Netlink, netns};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

struct PodInfo {
    uid: String,
    name: String,
    ip: Ipv4Addr,
    node: String,
    host_ip: Ipv4Addr,
    netns: String,
    /// (container, first TCP port)
    containers: Vec<(String, u16)>,
}

impl PodInfo {
    fn port(&self) -> u16 {
        self.containers.first().map(|c| c.1).unwrap_or(ECHO_PORT)
    }
}

struct Probe {
    from: String,
    to: String,
    dst: SocketAddr,
    /// What the server may report as the peer's address: the source's own addresses.
    want_peer: Vec<IpAddr>,
    /// What the server must report as its container.
    want_container: Option<String>,
    /// Pods (`ns/name`) one of which must answer (a Service's endpoints).
    want_pods: Option<Vec<String>>,
    /// The connection must be refused (a Service without endpoints).
    want_refused: bool,
    result: Result<EchoReply, String>,
}

impl Probe {
    fn ok(&self) -> bool {
        match &self.result {
            Ok(_) if self.want_refused => false,
            Ok(r) => {
                self.want_peer.contains(&r.peer.ip())
                    && self
                        .want_container
                        .as_ref()
                        .is_none_or(|c| *c == r.container)
                    && self
                        .want_pods
                        .as_ref()
                        .is_none_or(|p| p.contains(&format!("{}/{}", r.namespace, r.pod)))
            }
            Err(e) => self.want_refused && e.contains("refused"),
        }
    }

    fn failure(&self) -> Option<String> {
        match &self.result {
            _ if self.ok() => None,
            Ok(r) if self.want_refused => Some(format!(
                "{} → {} ({}): answered by {}/{} but the Service has no endpoints",
                self.from, self.to, self.dst, r.namespace, r.pod
            )),
            Err(e) if self.want_refused => Some(format!(
                "{} → {} ({}): {e} instead of an immediate refusal",
                self.from, self.to, self.dst
            )),
            Ok(r)
                if self
                    .want_pods
                    .as_ref()
                    .is_some_and(|p| !p.contains(&format!("{}/{}", r.namespace, r.pod))) =>
            {
                Some(format!(
                    "{} → {} ({}): answered by {}/{}, not an endpoint of the Service",
                    self.from, self.to, self.dst, r.namespace, r.pod
                ))
            }
            Err(e) => Some(format!("{} → {} ({}): {e}", self.from, self.to, self.dst)),
            Ok(r) if !self.want_peer.contains(&r.peer.ip()) => Some(format!(
                "{} → {} ({}): the server saw {} instead of {:?} (NAT)",
                self.from,
                self.to,
                self.dst,
                r.peer.ip(),
                self.want_peer
            )),
            Ok(r) => Some(format!(
                "{} → {} ({}): answered by container {} instead of {:?}",
                self.from, self.to, self.dst, r.container, self.want_container
            )),
        }
    }
}

pub fn run(t: &Topology) -> Result<()> {
    let (pods, nodes, services, slices) = with_api(t, |c| async move {
        let lp = ListParams::default();
        let pods = Api::<Pod>::all(c.clone()).list(&lp).await?;
        let mut nodes = Api::<Node>::all(c.clone()).list(&lp).await?.items;
        // Subnets the agents claimed (`lab up --podnet-allocates-cidrs`) count as allocated.
        let claims =
            Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(c.clone(), "kube-system")
                .list(&ListParams::default().labels(&podnet_agent::claim::selector()))
                .await?;
        let held = podnet_agent::claim::held_by_node(&claims.items);
        for n in &mut nodes {
            if let Some(cidr) = n.metadata.name.as_ref().and_then(|m| held.get(m)) {
                let spec = n.spec.get_or_insert_with(Default::default);
                spec.pod_cidr.get_or_insert_with(|| cidr.to_string());
            }
        }
        let services = Api::<Service>::all(c.clone()).list(&lp).await?;
        let slices = Api::<EndpointSlice>::all(c).list(&lp).await?;
        Ok((pods.items, nodes, services.items, slices.items))
    })?;
    let by_ip = pod_namespaces_by_ip(&t.pod_netns_prefix);
    let mut infos = Vec::new();
    // The model is proven with the echo workload (it reports what it saw); other pods —
    // the cluster DNS among them — are checked by what they serve (DNS below).
    let echo_pods = pods.iter().filter(|p| {
        p.spec
            .iter()
            .flat_map(|s| &s.containers)
            .any(|c| podnet_kubelet::plan::is_echo_image(c.image.as_deref().unwrap_or_default()))
    });
    for p in echo_pods {
        let name = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name.as_deref().unwrap_or("")
        );
        let s = p.status.as_ref();
        let (Some(ip), Some(host_ip)) = (
            s.and_then(|s| s.pod_ip.as_ref())
                .and_then(|i| i.parse().ok()),
            s.and_then(|s| s.host_ip.as_ref())
                .and_then(|i| i.parse().ok()),
        ) else {
            bail!("pod {name} has no IP yet (lab status shows its phase)");
        };
        let Some(ns) = by_ip.get(&ip) else {
            bail!("pod {name}: no namespace of this lab has its address {ip}");
        };
        let containers = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .filter_map(|c| {
                let port = c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")?;
                Some((c.name.clone(), port.container_port as u16))
            })
            .collect();
        infos.push(PodInfo {
            uid: p.metadata.uid.clone().unwrap_or_default(),
            name,
            ip,
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            host_ip,
            netns: ns.clone(),
            containers,
        });
    }
    if infos.is_empty() {
        bail!("the lab has no pods to check (podnet lab apply -f …)");
    }
    // A node's own addresses: the kernel picks the outgoing interface's — the bridge's
    // gateway for its own pods, the node IP in host-gw, the VXLAN device's address (the pod
    // CIDR's network address, flannel-style) across the overlay.
    let node_srcs: Vec<(String, String, Ipv4Addr, Vec<IpAddr>)> = t
        .workers
        .iter()
        .filter_map(|m| {
            let n = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(&m.name))?;
            let ip: Ipv4Addr = node_ip(n)?.parse().ok()?;
            let mut own = vec![IpAddr::from(ip)];
            if let Some(cidr) = n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref())
                && let Ok(net) = cidr.parse::<ipnet::Ipv4Net>()
            {
                own.push(IpAddr::from(Ipv4Addr::from(u32::from(net.network()) + 1)));
                own.push(IpAddr::from(net.network()));
            }
            Some((m.name.clone(), m.netns.clone(), ip, own))
        })
        .collect();

    // Probes grouped by source namespace; one thread per source.
    let mut plan: Vec<(String, Vec<Probe>)> = Vec::new();
    for src in &infos {
        let mut v: Vec<Probe> = infos
            .iter()
            .map(|dst| {
                probe(
                    &src.name,
                    &dst.name,
                    dst.ip,
                    dst.port(),
                    vec![src.ip.into()],
                    None,
                )
            })
            .collect();
        for (c, port) in src.containers.iter().skip(1) {
            let mut p = probe(
                &src.name,
                &format!("{}:{c}", src.name),
                Ipv4Addr::LOCALHOST,
                *port,
                vec![Ipv4Addr::LOCALHOST.into()],
                Some(c.clone()),
            );
            p.want_container = Some(c.clone());
            v.push(p);
        }
        v.push(probe(
            &src.name,
            "external",
            EXTERNAL_IP,
            ECHO_PORT,
            vec![src.host_ip.into()],
            None,
        ));
        plan.push((src.netns.clone(), v));
    }
    for (node, ns, _, own) in &node_srcs {
        let v = infos
            .iter()
            .map(|dst| probe(node, &dst.name, dst.ip, dst.port(), own.clone(), None))
            .collect();
        plan.push((ns.clone(), v));
    }
    let svcs = service_targets(&services, &slices, &infos);
    let every_node_addr: Vec<IpAddr> = node_srcs.iter().flat_map(|n| n.3.clone()).collect();
    for (ns, probes) in &mut plan {
        let (from, mut peers) = match infos.iter().find(|i| i.netns == *ns) {
            Some(i) => (i.name.clone(), vec![IpAddr::from(i.ip)]),
            None => match node_srcs.iter().find(|n| n.1 == *ns) {
                Some(n) => (n.0.clone(), Vec::new()),
                None => continue,
            },
        };
        // The source's node's own addresses: a node client, or a pod reaching itself.
        let node = infos
            .iter()
            .find(|i| i.name == from)
            .map_or(from.as_str(), |i| i.node.as_str());
        if let Some(n) = node_srcs.iter().find(|n| n.0 == node) {
            peers.extend(n.3.iter().copied());
        }
        for svc in &svcs {
            let mut p = probe(
                &from,
                &svc.name,
                svc.cluster_ip,
                svc.port,
                peers.clone(),
                None,
            );
            p.want_refused = svc.endpoints.is_empty();
            p.want_pods = Some(svc.endpoints.clone());
            probes.push(p);
        }
    }
    let mut external = Vec::new();
    for svc in svcs.iter().filter(|s| !s.endpoints.is_empty()) {
        for (node, _, ip, _) in &node_srcs {
            if let Some(np) = svc.node_port {
                let mut p = probe(
                    "external",
                    &format!("{} via {node}", svc.name),
                    *ip,
                    np,
                    every_node_addr.clone(),
                    None,
                );
                p.want_pods = Some(svc.endpoints.clone());
                external.push(p);
            }
        }
    }
    plan.push((t.external.netns.clone(), external));
    let done: Vec<Vec<Probe>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .into_iter()
            .map(|(ns, probes)| s.spawn(move || run_probes(&ns, probes)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    let all: Vec<&Probe> = done.iter().flatten().collect();
    let lookups = if services.iter().any(|s| {
        s.metadata.name.as_deref() == Some("kube-dns")
            && s.metadata.namespace.as_deref() == Some("kube-system")
    }) {
        dns_lookups(t, &infos, &svcs)
    } else {
        Vec::new()
    };

    // Report.
    println!("PODS");
    for (i, p) in infos.iter().enumerate() {
        println!("  {:>2}  {:<24} {:<15} {}", i + 1, p.name, p.ip, p.node);
    }
    let head: String = (1..=infos.len()).map(|i| format!("{i:>3}")).collect();
    let cell = |from: &str, to: &str| {
        all.iter()
            .find(|p| p.from == from && p.to == to)
            .map(|p| if p.ok() { "  ✓" } else { "  ✗" })
            .unwrap_or("  ·")
    };
    println!("\npod → pod  (TCP; ✓ = answered, and the server saw the client's own pod IP)");
    println!("  {:<28}{head}", "from \\ to");
    for src in &infos {
        let row: String = infos.iter().map(|d| cell(&src.name, &d.name)).collect();
        println!("  {:<28}{row}", format!("{} ({})", src.name, src.node));
    }
    println!("\nnode → pod  (✓ = answered, and the pod saw one of the node's own addresses)");
    for (node, _, ip, _) in &node_srcs {
        let row: String = infos.iter().map(|d| cell(node, &d.name)).collect();
        println!("  {:<28}{row}", format!("{node} ({ip})"));
    }
    let local: Vec<&&Probe> = all.iter().filter(|p| p.want_container.is_some()).collect();
    if !local.is_empty() {
        println!("\ncontainers of one pod over localhost");
        for p in &local {
            println!(
                "  {}  {} → {}",
                if p.ok() { "✓" } else { "✗" },
                p.from,
                p.dst
            );
        }
    }
    println!(
        "\npod → external host {EXTERNAL_IP}:{ECHO_PORT}  (✓ = arrived as the node's IP: egress masquerade)"
    );
    for src in &infos {
        println!(
            "  {}  {:<24} as {}",
            cell(&src.name, "external").trim(),
            src.name,
            src.host_ip
        );
    }
    if !svcs.is_empty() {
        println!(
            "\nservices  (✓ = answered by one of its endpoints with the client's address kept, \
             or refused at once when it has none)"
        );
        let head: String = svcs
            .iter()
            .map(|s| format!("  {:<22}", s.label()))
            .collect();
        println!("  {:<28}{head}", "from \\ to");
        let sources = infos
            .iter()
            .map(|i| (i.name.clone(), i.node.clone()))
            .chain(node_srcs.iter().map(|n| (n.0.clone(), n.2.to_string())));
        for (src, at) in sources {
            let row: String = svcs
                .iter()
                .map(|s| format!("  {:<22}", cell(&src, &s.name).trim()))
                .collect();
            println!("  {:<28}{row}", format!("{src} ({at})"));
        }
        for svc in svcs
            .iter()
            .filter(|s| s.node_port.is_some() && !s.endpoints.is_empty())
        {
            let np = svc.node_port.unwrap_or_default();
            println!(
                "\nexternal host → {} node port {np} on every node",
                svc.name
            );
            for (node, _, ip, _) in &node_srcs {
                let to = format!("{} via {node}", svc.name);
                println!("  {}  {ip}:{np}", cell("external", &to).trim());
            }
        }
    }
    if !lookups.is_empty() {
        println!(
            "\ncluster DNS  (getent hosts NAME in each pod, through the resolv.conf its kubelet wrote: \
             ✓ = the Service's cluster IP, or the external host for {})",
            dns::EXTERNAL_ZONE
        );
        for src in &infos {
            let row: Vec<String> = lookups
                .iter()
                .filter(|l| l.from == src.name)
                .map(|l| format!("{} {}", if l.ok() { "✓" } else { "✗" }, l.name))
                .collect();
            println!("  {:<28}{}", src.name, row.join("  "));
        }
    }
    let failures: Vec<String> = all
        .iter()
        .filter_map(|p| p.failure())
        .chain(lookups.iter().filter(|l| !l.ok()).map(|l| {
            format!(
                "{}: getent hosts {}: {} (want {})",
                l.from,
                l.name,
                match &l.result {
                    Ok(ip) => ip.to_string(),
                    Err(e) => e.clone(),
                },
                l.want
            )
        }))
        .collect();
    let checks = all.len() + lookups.len();
    println!();
    if failures.is_empty() {
        println!("lab check: all {checks} probes passed");
        Ok(())
    } else {
        for f in &failures {
            println!("FAILED {f}");
        }
        bail!("lab check: {} of {checks} probes failed", failures.len())
    }
}

/// A TCP Service port the check probes: its cluster IP, node port and endpoint pods.
struct ServiceTarget {
    /// `svc ns/name`
    name: String,
    cluster_ip: Ipv4Addr,
    port: u16,
    node_port: Option<u16>,
    /// Endpoint pods (`ns/name`), from the Service's EndpointSlices.
    endpoints: Vec<String>,
}

impl ServiceTarget {
    fn label(&self) -> String {
        format!("{}:{}", self.name.trim_start_matches("svc "), self.port)
    }
}

/// One name resolved inside one pod.
struct Lookup {
    from: String,
    name: String,
    want: Ipv4Addr,
    result: Result<Ipv4Addr, String>,
}

impl Lookup {
    fn ok(&self) -> bool {
        self.result.as_ref().is_ok_and(|ip| *ip == self.want)
    }
}

/// From every pod, in parallel: each probed Service by the name a program in that pod
/// would use (`echo` in its own namespace, `echo.default` from another), `kube-dns` of
/// `kube-system`, and a name of the outside world (forwarded by the cluster DNS to the
/// external host's resolver). `getent` is glibc's resolver: search list, ndots, A and
/// AAAA questions, as any program in a pod.
fn dns_lookups(t: &Topology, infos: &[PodInfo], svcs: &[ServiceTarget]) -> Vec<Lookup> {
    std::thread::scope(|s| {
        let handles: Vec<_> = infos
            .iter()
            .map(|pod| {
                s.spawn(move || {
                    let pod_ns = pod.name.split('/').next().unwrap_or("default");
                    let mut names: Vec<(String, Ipv4Addr)> = svcs
                        .iter()
                        .filter_map(|svc| {
                            let (ns, name) = svc.name.strip_prefix("svc ")?.split_once('/')?;
                            let name = if ns == pod_ns {
                                name.to_string()
                            } else {
                                format!("{name}.{ns}")
                            };
                            Some((name, svc.cluster_ip))
                        })
                        .collect();
                    names.push(("kube-dns.kube-system".into(), dns::CLUSTER_DNS_IP));
                    names.push((format!("www.{}", dns::EXTERNAL_ZONE), EXTERNAL_IP));
                    names
                        .into_iter()
                        .map(|(name, want)| Lookup {
                            from: pod.name.clone(),
                            result: getent(t, pod, &name),
                            name,
                            want,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("lookup thread"))
            .collect()
    })
}

fn getent(t: &Topology, pod: &PodInfo, name: &str) -> Result<Ipv4Addr, String> {
    let dir = super::pod_dir(t, &pod.node, &pod.uid).map_err(|e| format!("{e:#}"))?;
    let mut cmd = std::process::Command::new("getent");
    cmd.args(["hosts", name]);
    let out = super::in_pod(&pod.netns, &dir, cmd, |c| c.output()).map_err(|e| format!("{e:#}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(ip) => ip.parse().map_err(|_| format!("answered {ip:?}")),
        None => Err(format!(
            "not found (exit {})",
            out.status.code().unwrap_or(-1)
        )),
    }
}

fn has_ready_endpoints(slices: &[EndpointSlice], ns: &str, name: &str) -> bool {
    slices
        .iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == name)
        })
        .flat_map(|s| &s.endpoints)
        .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
}

/// The first TCP port of every Service with a cluster IP, except the API's own
/// `kubernetes` Service (served by the control plane, not by pods).
fn service_targets(
    services: &[Service],
    slices: &[EndpointSlice],
    infos: &[PodInfo],
) -> Vec<ServiceTarget> {
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec.cluster_ip.as_deref().and_then(|i| i.parse().ok()) else {
            continue;
        };
        let Some(port) = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        else {
            continue;
        };
        let endpoints: Vec<String> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .is_some_and(|n| n == name)
            })
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| &e.addresses)
            .map(|a| {
                let ip: Option<Ipv4Addr> = a.parse().ok();
                infos
                    .iter()
                    .find(|i| Some(i.ip) == ip)
                    .map(|i| i.name.clone())
            })
            .collect::<Option<Vec<String>>>()
            .unwrap_or_default();
        if endpoints.is_empty() && has_ready_endpoints(slices, ns, name) {
            continue; // served by pods that are not echo servers (e.g. kube-dns)
        }
        if endpoints.is_empty() && spec.selector.as_ref().is_none_or(|s| s.is_empty()) {
            continue; // no selector: endpoints managed elsewhere (e.g. `kubernetes`)
        }
        out.push(ServiceTarget {
            name: format!("svc {ns}/{name}"),
            cluster_ip: ip,
            port: port.port as u16,
            node_port: port.node_port.map(|n| n as u16),
            endpoints,
        });
    }
    out
}

fn probe(
    from: &str,
    to: &str,
    ip: Ipv4Addr,
    port: u16,
    want_peer: Vec<IpAddr>,
    want_container: Option<String>,
) -> Probe {
    Probe {
        from: from.into(),
        to: to.into(),
        dst: SocketAddr::new(ip.into(), port),
        want_peer,
        want_container,
        want_pods: None,
        want_refused: false,
        result: Err("not run".into()),
    }
}

fn run_probes(ns: &str, mut probes: Vec<Probe>) -> Vec<Probe> {
    let entered = netns::open(netns::named_path(ns)).and_then(netns::enter);
    match entered {
        Ok(_inside) => {
            for p in &mut probes {
                p.result = connect(p.dst);
            }
        }
        Err(e) => {
            for p in &mut probes {
                p.result = Err(format!("cannot enter {ns}: {e}"));
            }
        }
    }
    probes
}

fn connect(dst: SocketAddr) -> Result<EchoReply, String> {
    let mut s = TcpStream::connect_timeout(&dst, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    s.read_to_string(&mut line).map_err(|e| e.to_string())?;
    parse_reply(line.trim()).ok_or_else(|| format!("unexpected answer {line:?}"))
}

/// Each pod namespace of the lab, by the IPv4 addresses on its interfaces.
pub(crate) fn pod_namespaces_by_ip(prefix: &str) -> BTreeMap<Ipv4Addr, String> {
    let mut out = BTreeMap::new();
    for ns in namespaces_with_prefix(prefix) {
        let Ok(fd) = netns::open(netns::named_path(&ns)) else {
            continue;
        };
        let Ok(mut nl) = Netlink::open_in(&fd) else {
            continue;
        };
        for a in nl.addresses(None).unwrap_or_default() {
            if let IpAddr::V4(ip) = a.net.addr()
                && !ip.is_loopback()
            {
                out.insert(ip, ns.clone());
            }
        }
    }
    out
}
