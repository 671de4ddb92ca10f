//! Pure: (Services, EndpointSlices, this node) → the service ports this node programs, each
//! with its endpoints per kind of traffic. Invariant: the output is sorted and a function of
//! the input only (same snapshot, same plan), and a bad Service yields a [`Problem`] and no
//! [`ServicePort`], never a partial one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort as K8sServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Services carrying this label belong to another proxy (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (the API's default, 3 h).
const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Identifies one port of one Service, as kube-proxy's `ServicePortName`. The names are
/// shared (`Arc<str>`) with the planner's records of the Service: at 50k Services a
/// copy of each name per port was megabytes of small allocations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortName {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    /// The port's name ("" for a Service's single unnamed port).
    pub port: Arc<str>,
    pub protocol: Protocol,
}

impl fmt::Display for PortName {
    /// `ns/name/tcp/port` (`ns/name/tcp` for an unnamed port).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.namespace,
            self.service,
            self.protocol.as_str()
        )?;
        if !self.port.is_empty() {
            write!(f, "/{}", self.port)?;
        }
        Ok(())
    }
}

/// One endpoint of a service port: where a connection is DNATed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (its slice entry's `nodeName`): a pod that may reach itself through its
    /// own Service (hairpin), which needs masquerading.
    pub local: bool,
}

/// What this node programs for one (Service, port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: PortName,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// `spec.ports[].nodePort` (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and `status.loadBalancer.ingress[].ip`, IPv4 only, sorted.
    pub external_ips: Vec<Ipv4Addr>,
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP`: the affinity timeout in seconds.
    pub affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local` on an externally reachable Service: external traffic
    /// keeps its source IP and goes only to this node's endpoints.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: cluster-IP traffic goes only to this node's endpoints.
    pub internal_local: bool,
    /// `spec.healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// Endpoints for traffic under the Cluster policy (ready ones anywhere; if none,
    /// serving-and-terminating ones). Empty when no policy of this port uses them.
    pub cluster_endpoints: Vec<Endpoint>,
    /// This node's endpoints for traffic under a Local policy (ready ones; if none,
    /// serving-and-terminating ones). Empty when no policy of this port uses them.
    pub local_endpoints: Vec<Endpoint>,
    /// Whether any usable endpoint exists anywhere: without one, connections are refused.
    pub has_endpoints: bool,
}

impl ServicePort {
    /// Endpoints for traffic to the cluster IP.
    pub fn internal_endpoints(&self) -> &[Endpoint] {
        if self.internal_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }

    /// Endpoints for traffic arriving at a node port, an external or a load-balancer IP.
    pub fn external_endpoints(&self) -> &[Endpoint] {
        if self.external_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }
}

/// A Service (or slice) podnet cannot program: reported (log, metric) and skipped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `Service ns/name` or `EndpointSlice ns/name`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The node the plan is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    pub node_name: String,
    /// The cluster's NodePort range (kube-apiserver's `--service-node-port-range`): a
    /// `nodePort` or `healthCheckNodePort` outside it is not programmed and is reported
    /// (the API server never hands one out, so it means a wrong setting or a wrong object;
    /// either way a node port outside the range could shadow a port the node's own
    /// programs listen on).
    pub node_port_range: std::ops::RangeInclusive<u16>,
}

impl NodeContext {
    /// A node with the default NodePort range.
    pub fn new(node_name: impl Into<String>) -> NodeContext {
        NodeContext {
            node_name: node_name.into(),
            node_port_range: DEFAULT_NODE_PORT_RANGE,
        }
    }
}

/// What the plan reads.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub services: &'a [Service],
    pub slices: &'a [EndpointSlice],
}

/// One endpoint as read from a slice, with the conditions that decide where it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    endpoint: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The plan: service ports sorted by name, and the problems found.
///
/// The whole-snapshot planner (golden tests, one-off syncs); [`crate::Planner`] keeps the
/// same plan up to date object by object and must agree with it.
pub fn plan_services(
    snapshot: Snapshot<'_>,
    node: &NodeContext,
) -> (Vec<ServicePort>, Vec<Problem>) {
    let mut problems = Vec::new();
    let slices = index_slices(snapshot.slices, node, &mut problems);
    let mut out = Vec::new();
    for svc in snapshot.services {
        let (ns, name) = object_name(&svc.metadata);
        let views = slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        match parse_service(svc) {
            Ok(Some(mut shape)) => {
                for m in shape.confine_node_ports(&node.node_port_range) {
                    problems.push(service_problem(ns, name, m));
                }
                out.extend(shape.ports(&ns.into(), &name.into(), views))
            }
            Ok(None) => {}
            Err(message) => problems.push(service_problem(ns, name, message)),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    problems.sort();
    (out, problems)
}

/// (namespace, name) of an object, as the plan names it.
pub(crate) fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

pub(crate) fn service_problem(ns: &str, name: &str, message: String) -> Problem {
    Problem {
        object: format!("Service {ns}/{name}"),
        message,
    }
}

/// A slice's ports and endpoints, by the (namespace, service) it belongs to.
type SliceIndex<'a> = BTreeMap<(&'a str, &'a str), Vec<SliceView>>;

/// What the plan reads of one EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceView {
    /// (port name, protocol) → target port number.
    ports: Vec<(String, Protocol, u16)>,
    endpoints: Vec<Candidate>,
}

fn index_slices<'a>(
    slices: &'a [EndpointSlice],
    node: &NodeContext,
    problems: &mut Vec<Problem>,
) -> SliceIndex<'a> {
    let mut index: SliceIndex<'a> = BTreeMap::new();
    for s in slices {
        if let Some((ns, service, view)) = slice_view(s, node, problems) {
            index.entry((ns, service)).or_default().push(view);
        }
    }
    index
}

/// The (namespace, Service) a slice feeds and what the plan reads of it; `None` for a
/// slice this table ignores (not IPv4, not linked to a Service). Bad ports are skipped
/// and reported in `problems`.
pub(crate) fn slice_view<'a>(
    s: &'a EndpointSlice,
    node: &NodeContext,
    problems: &mut Vec<Problem>,
) -> Option<(&'a str, &'a str, SliceView)> {
    if s.address_type != "IPv4" {
        return None; // this table is IPv4; IPv6 slices belong to the ip6 table
    }
    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
    // Not linked to a Service without the label.
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))?;
    let mut ports = Vec::new();
    for p in s.ports.iter().flatten() {
        let (Some(proto), Some(number)) = (
            Protocol::parse(p.protocol.as_deref()),
            p.port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0),
        ) else {
            problems.push(Problem {
                object: format!(
                    "EndpointSlice {ns}/{}",
                    s.metadata.name.as_deref().unwrap_or("")
                ),
                message: format!("port {:?} skipped: bad protocol or number", p.name),
            });
            continue;
        };
        ports.push((p.name.clone().unwrap_or_default(), proto, number));
    }
    let mut endpoints: Vec<Candidate> = s
        .endpoints
        .iter()
        .filter_map(|e| {
            // kube-proxy uses the first address only (the API allows exactly one for IPs).
            let ip: Ipv4Addr = e.addresses.first()?.parse().ok()?;
            let c = e.conditions.as_ref();
            // Unset `ready`/`serving` mean "ready" (the API's documented reading).
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = e.node_name.as_deref() == Some(node.node_name.as_str());
            Some(Candidate {
                endpoint: Endpoint { ip, port: 0, local },
                ready,
                serving,
                terminating,
            })
        })
        .collect();
    // Kept for as long as the slice lives: exact sizes (a pushed Vec has room for 4).
    ports.shrink_to_fit();
    endpoints.shrink_to_fit();
    Some((ns, service.as_str(), SliceView { ports, endpoints }))
}

/// Everything the plan takes from a Service object (all but its endpoints), checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceShape {
    cluster_ip: Ipv4Addr,
    external_ips: Vec<Ipv4Addr>,
    /// Empty unless the Service is a LoadBalancer.
    load_balancer_ips: Vec<Ipv4Addr>,
    affinity_seconds: Option<u32>,
    externally_reachable: bool,
    external_local: bool,
    internal_local: bool,
    /// Only with `external_local`.
    health_check_node_port: Option<u16>,
    /// (name, protocol, port, nodePort — only for NodePort and LoadBalancer Services).
    /// The name is shared with the [`PortName`]s of the Service's ports.
    ports: Vec<(Arc<str>, Protocol, u16, Option<u16>)>,
}

impl ServiceShape {
    /// Drops the node ports outside `range` (they are not programmed; the rest of the
    /// Service is) and says which, one message each.
    pub(crate) fn confine_node_ports(
        &mut self,
        range: &std::ops::RangeInclusive<u16>,
    ) -> Vec<String> {
        let (lo, hi) = (range.start(), range.end());
        let mut out = Vec::new();
        for (name, protocol, port, node_port) in &mut self.ports {
            if let Some(n) = *node_port
                && !range.contains(&n)
            {
                let port_name = if name.is_empty() {
                    format!("{port}/{protocol:?}")
                } else {
                    name.to_string()
                };
                out.push(format!(
                    "port {port_name}: nodePort {n} is outside the NodePort range {lo}-{hi}; not programmed"
                ));
                *node_port = None;
            }
        }
        if let Some(n) = self.health_check_node_port
            && !range.contains(&n)
        {
            out.push(format!(
                "healthCheckNodePort {n} is outside the NodePort range {lo}-{hi}; not served"
            ));
            self.health_check_node_port = None;
        }
        out
    }
}

/// The checked shape of a Service; `None` when this proxy programs nothing for it
/// (another proxy's, no spec, ExternalName, headless, no IPv4 cluster IP yet).
pub(crate) fn parse_service(svc: &Service) -> Result<Option<ServiceShape>, String> {
    let labels = svc.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)) {
        return Ok(None); // another proxy's
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Ok(None); // DNS only
    }
    let Some(cluster_ip) = cluster_ipv4(spec.cluster_ip.as_deref(), spec.cluster_ips.as_deref())?
    else {
        return Ok(None); // headless, or not yet allocated, or IPv6-only
    };
    let externally_reachable = matches!(kind, "NodePort" | "LoadBalancer")
        || spec.external_ips.as_ref().is_some_and(|v| !v.is_empty());
    let external_local =
        externally_reachable && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_seconds =
        match spec.session_affinity.as_deref() {
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .unwrap_or(DEFAULT_AFFINITY_SECONDS as i32);
                Some(u32::try_from(t).ok().filter(|t| (1..=86400).contains(t)).ok_or_else(
                || format!("sessionAffinityConfig.clientIP.timeoutSeconds {t} is not in 1..86400"),
            )?)
            }
            None | Some("None") => None,
            Some(other) => return Err(format!("sessionAffinity {other:?} is not supported")),
        };
    let external_ips = ipv4_list(
        spec.external_ips.iter().flatten().map(String::as_str),
        "externalIPs",
    )?;
    let load_balancer_ips = ipv4_list(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()),
        "status.loadBalancer.ingress",
    )?;
    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => Some(port_number(p, "healthCheckNodePort")?),
    };

    let mut seen = BTreeSet::new();
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let (protocol, port, node_port) = plan_port(p, i)?;
        let port_name = p.name.clone().unwrap_or_default();
        if !seen.insert((port_name.clone(), protocol)) {
            return Err(format!(
                "spec.ports[{i}]: duplicate port name {port_name:?}"
            ));
        }
        let node_port = node_port.filter(|_| matches!(kind, "NodePort" | "LoadBalancer"));
        ports.push((port_name.into(), protocol, port, node_port));
    }
    ports.shrink_to_fit(); // kept as long as the Service: exact size
    Ok(Some(ServiceShape {
        cluster_ip,
        external_ips,
        load_balancer_ips: if kind == "LoadBalancer" {
            load_balancer_ips
        } else {
            Vec::new()
        },
        affinity_seconds,
        externally_reachable,
        external_local,
        internal_local,
        health_check_node_port: health_check_node_port.filter(|_| external_local),
        ports,
    }))
}

impl ServiceShape {
    /// The Service's ports with their endpoints, from the slices that belong to it (in
    /// the order given: when two slices list one endpoint, the first one's conditions win
    /// unless only the second is ready).
    pub(crate) fn ports<'a, I>(&self, ns: &Arc<str>, name: &Arc<str>, slices: I) -> Vec<ServicePort>
    where
        I: IntoIterator<Item = &'a SliceView> + Clone,
    {
        let uses_cluster =
            !self.internal_local || (self.externally_reachable && !self.external_local);
        let uses_local = self.internal_local || self.external_local;
        self.ports
            .iter()
            .map(|(port_name, protocol, port, node_port)| {
                let candidates = endpoints_for(slices.clone(), port_name, *protocol);
                let (cluster_endpoints, local_endpoints, has_endpoints) =
                    categorize(&candidates, uses_cluster, uses_local);
                ServicePort {
                    name: PortName {
                        namespace: ns.clone(),
                        service: name.clone(),
                        port: port_name.clone(),
                        protocol: *protocol,
                    },
                    cluster_ip: self.cluster_ip,
                    port: *port,
                    node_port: *node_port,
                    external_ips: self.external_ips.clone(),
                    load_balancer_ips: self.load_balancer_ips.clone(),
                    affinity_seconds: self.affinity_seconds,
                    external_local: self.external_local,
                    internal_local: self.internal_local,
                    health_check_node_port: self.health_check_node_port,
                    cluster_endpoints,
                    local_endpoints,
                    has_endpoints,
                }
            })
            .collect()
    }
}

/// The Service's IPv4 cluster IP: `None` for headless ("None"), unallocated ("") or
/// IPv6-only Services; an error for an address that does not parse.
fn cluster_ipv4(ip: Option<&str>, ips: Option<&[String]>) -> Result<Option<Ipv4Addr>, String> {
    let all: Vec<&str> = ips
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_else(|| ip.into_iter().collect());
    for s in all {
        match s {
            "" | "None" => return Ok(None),
            s => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => return Ok(Some(v4)),
                Ok(IpAddr::V6(_)) => continue,
                Err(_) => return Err(format!("clusterIP {s:?} is not an IP address")),
            },
        }
    }
    Ok(None)
}

fn ipv4_list<'a>(ips: impl Iterator<Item = &'a str>, field: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = BTreeSet::new();
    for s in ips {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                out.insert(v4);
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => return Err(format!("{field}: {s:?} is not an IP address")),
        }
    }
    Ok(out.into_iter().collect())
}

fn port_number(n: i32, field: &str) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{field} {n} is not in 1..65535"))
}

/// (protocol, port, nodePort) of `spec.ports[i]`.
fn plan_port(p: &K8sServicePort, i: usize) -> Result<(Protocol, u16, Option<u16>), String> {
    let protocol = Protocol::parse(p.protocol.as_deref()).ok_or_else(|| {
        format!(
            "spec.ports[{i}].protocol {:?} is not TCP, UDP or SCTP",
            p.protocol
        )
    })?;
    let port = port_number(p.port, &format!("spec.ports[{i}].port"))?;
    let node_port = match p.node_port {
        None | Some(0) => None,
        Some(n) => Some(port_number(n, &format!("spec.ports[{i}].nodePort"))?),
    };
    Ok((protocol, port, node_port))
}

/// The candidates of one service port, from every slice of the Service that carries the
/// port (by name and protocol); each slice resolves the target port for its endpoints (a
/// named targetPort may resolve differently per pod). Duplicates across slices merge,
/// keeping the most usable conditions, as kube-proxy's EndpointSliceCache does.
fn endpoints_for<'a>(
    slices: impl IntoIterator<Item = &'a SliceView>,
    port_name: &str,
    protocol: Protocol,
) -> Vec<Candidate> {
    let mut by_endpoint: BTreeMap<Endpoint, Candidate> = BTreeMap::new();
    for s in slices {
        let Some(&(_, _, number)) = s
            .ports
            .iter()
            .find(|(n, p, _)| n == port_name && *p == protocol)
        else {
            continue;
        };
        for c in &s.endpoints {
            let endpoint = Endpoint {
                port: number,
                ..c.endpoint
            };
            let c = Candidate { endpoint, ..*c };
            by_endpoint
                .entry(endpoint)
                .and_modify(|old| {
                    if c.ready && !old.ready {
                        *old = c;
                    }
                })
                .or_insert(c);
        }
    }
    by_endpoint.into_values().collect()
}

/// kube-proxy's `CategorizeEndpoints` without topology hints: (cluster endpoints, local
/// endpoints, any usable endpoint anywhere).
fn categorize(
    candidates: &[Candidate],
    uses_cluster: bool,
    uses_local: bool,
) -> (Vec<Endpoint>, Vec<Endpoint>, bool) {
    // Kept by the proxy for as long as the port is programmed: exact sizes.
    let pick = |f: &dyn Fn(&Candidate) -> bool| -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = candidates
            .iter()
            .filter(|c| f(c))
            .map(|c| c.endpoint)
            .collect();
        v.shrink_to_fit();
        v
    };
    let fallback = |c: &Candidate| !c.ready && c.serving && c.terminating;
    let mut cluster = Vec::new();
    if uses_cluster {
        cluster = pick(&|c| c.ready);
        if cluster.is_empty() {
            cluster = pick(&fallback);
        }
    }
    let has_any = candidates.iter().any(|c| c.ready || fallback(c));
    let mut local = Vec::new();
    if uses_local {
        local = pick(&|c| c.endpoint.local && c.ready);
        if local.is_empty() {
            local = pick(&|c| c.endpoint.local && fallback(c));
        }
    }
    (cluster, local, has_any)
}
