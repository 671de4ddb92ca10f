//! Orchestration: upstream's NetworkPolicy test model in the lab, and its reachability
//! matrix (kubernetes/kubernetes test/e2e/network/netpol: namespaces x, y, z with pods a,
//! b, c each, labelled `pod=a|b|c`, serving TCP, UDP and SCTP on 80 and 81, each pod behind
//! its own Service).
//!
//! `lab netpol-model` creates the model; `lab matrix --protocol P --port N` probes all 81
//! pairs with real packets (TCP connect, a UDP datagram, an SCTP INIT) from threads inside
//! the pod namespaces, to pod IPs or (`--service`) to each pod's Service, and prints the
//! table as upstream's probe does: `.` connected, `X` did not. podnet refuses what policy
//! denies (TCP reset, ICMP admin-prohibited) instead of dropping it, so a probe that was
//! not answered at all within the timeout is reported apart ([`Probed::unanswered`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use podnet_netlink::netns;

use super::topology::Topology;
use super::with_api;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
const TIMEOUT: Duration = Duration::from_secs(1);

/// The model's objects as multi-document YAML (namespace names are quoted: a bare `y` is
/// a boolean in YAML 1.1).
pub fn model_yaml() -> String {
    let mut out = String::new();
    for ns in NAMESPACES {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: \"{ns}\"}}\n---\n"
        ));
        for pod in PODS {
            let mut ports = Vec::new();
            let mut svc_ports = Vec::new();
            for (proto, lower) in [("TCP", "tcp"), ("UDP", "udp"), ("SCTP", "sctp")] {
                for port in [80, 81] {
                    let name = format!("serve-{port}-{lower}");
                    ports.push(format!(
                        "{{name: {name}, containerPort: {port}, protocol: {proto}}}"
                    ));
                    svc_ports.push(format!(
                        "{{name: {name}, port: {port}, protocol: {proto}, targetPort: {name}}}"
                    ));
                }
            }
            out.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: \"{pod}\", namespace: \"{ns}\", \
                 labels: {{pod: \"{pod}\"}}}}\nspec:\n  containers: [{{name: cont, image: \
                 podnet/echo, ports: [{}]}}]\n---\n",
                ports.join(", ")
            ));
            out.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: \"s-{pod}\", namespace: \
                 \"{ns}\"}}\nspec:\n  selector: {{pod: \"{pod}\"}}\n  ports: [{}]\n---\n",
                svc_ports.join(", ")
            ));
        }
    }
    out
}

/// A protocol probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            _ => Err(format!("protocol {s:?}: tcp, udp or sctp")),
        }
    }
}

/// `ns/pod` → `ns/pod` → connected.
pub type Matrix = BTreeMap<(String, String), bool>;

/// A probed matrix, and the pairs whose probe got no answer at all (neither a reply nor a
/// refusal) within the timeout.
pub struct Probed {
    pub matrix: Matrix,
    pub unanswered: Vec<(String, String)>,
}

/// One probe from inside the current namespace.
fn probe(proto: Protocol, dst: SocketAddrV4) -> bool {
    match proto {
        Protocol::Tcp => TcpStream::connect_timeout(&SocketAddr::V4(dst), TIMEOUT)
            .and_then(|mut s| {
                s.set_read_timeout(Some(TIMEOUT))?;
                let mut line = String::new();
                s.read_to_string(&mut line).map(|_| line)
            })
            .is_ok_and(|l| l.contains("pod=")),
        Protocol::Udp => (|| -> std::io::Result<bool> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.connect(dst)?;
            s.send(b"probe\n")?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).contains("pod="))
        })()
        .unwrap_or(false),
        Protocol::Sctp => podnet_kubelet::sctp::probe(dst, TIMEOUT).is_ok(),
    }
}

/// Probes every pair of the model; `service` sends to each target pod's Service.
pub fn matrix(t: &Topology, proto: Protocol, port: u16, service: bool) -> Result<Matrix> {
    probe_matrix(t, proto, port, service).map(|p| p.matrix)
}

/// [`matrix`], telling the probes that failed without any answer (a timeout) from those
/// refused.
pub fn probe_matrix(t: &Topology, proto: Protocol, port: u16, service: bool) -> Result<Probed> {
    let (pods, services) = with_api(t, |c| async move {
        let pods = Api::<Pod>::all(c.clone())
            .list(&ListParams::default())
            .await?;
        let services = Api::<Service>::all(c).list(&ListParams::default()).await?;
        Ok((pods.items, services.items))
    })?;
    let mut ips: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for p in &pods {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = p.metadata.name.clone().unwrap_or_default();
        if !NAMESPACES.contains(&ns.as_str()) || !PODS.contains(&name.as_str()) {
            continue;
        }
        if let Some(ip) = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|s| s.parse().ok())
        {
            ips.insert(format!("{ns}/{name}"), ip);
        }
    }
    if ips.len() != 9 {
        bail!(
            "the model has {} of its 9 pods with an address (podnet lab netpol-model)",
            ips.len()
        );
    }
    let mut vips: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
    for s in &services {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        if let (Some(pod), Some(ip)) = (
            name.strip_prefix("s-"),
            s.spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref())
                .and_then(|s| s.parse().ok()),
        ) {
            vips.insert(format!("{ns}/{pod}"), ip);
        }
    }
    let by_ip = super::check::pod_namespaces_by_ip(&t.pod_netns_prefix);
    let targets: Vec<(String, SocketAddrV4)> = ips
        .iter()
        .map(|(k, ip)| {
            let addr = if service {
                vips.get(k)
                    .copied()
                    .with_context(|| format!("no Service for {k}"))?
            } else {
                *ip
            };
            Ok((k.clone(), SocketAddrV4::new(addr, port)))
        })
        .collect::<Result<_>>()?;
    let sources: Vec<(&String, String)> = ips
        .iter()
        .map(|(from, ip)| {
            let ns = by_ip
                .get(ip)
                .with_context(|| format!("no pod namespace holds {ip} ({from})"))?;
            Ok((from, ns.clone()))
        })
        .collect::<Result<_>>()?;
    // All 81 probes at once, a thread each: a refused probe answers at once (policy
    // rejects), but one that is dropped costs its whole timeout, and the matrix then
    // takes one timeout instead of nine in a row.
    let mut out = Probed {
        matrix: Matrix::new(),
        unanswered: Vec::new(),
    };
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for (from, ns) in &sources {
            for (to, dst) in &targets {
                handles.push(
                    scope.spawn(move || -> Result<((String, String), bool, Duration)> {
                        let fd = netns::open(netns::named_path(ns))?;
                        let started = Instant::now();
                        let ok = netns::run_in(&fd, || probe(proto, *dst))?;
                        Ok((((*from).clone(), to.clone()), ok, started.elapsed()))
                    }),
                );
            }
        }
        for h in handles {
            let (pair, ok, took) = h
                .join()
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
            // A refusal arrives within a round trip; only a probe left unanswered runs
            // into its timeout.
            if !ok && took >= TIMEOUT {
                out.unanswered.push(pair.clone());
            }
            out.matrix.insert(pair, ok);
        }
        Ok(())
    })?;
    out.unanswered.sort();
    Ok(out)
}

/// Upstream's table: rows are sources, columns destinations; `.` connected, `X` not.
pub fn render(m: &Matrix) -> String {
    let names: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect();
    let mut s = format!("-\t{}\n", names.join("\t"));
    for from in &names {
        s.push_str(from);
        for to in &names {
            let ok = m.get(&(from.clone(), to.clone())).copied();
            s.push_str(match ok {
                Some(true) => "\t.",
                Some(false) => "\tX",
                None => "\t?",
            });
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_has_nine_pods_and_services_with_named_ports() {
        let y = model_yaml();
        assert_eq!(y.matches("kind: Pod").count(), 9);
        assert_eq!(y.matches("kind: Service").count(), 9);
        assert_eq!(y.matches("kind: Namespace").count(), 3);
        assert!(y.contains("{name: serve-81-sctp, containerPort: 81, protocol: SCTP}"));
        let mut m = Matrix::new();
        m.insert(("x/a".into(), "x/b".into()), false);
        m.insert(("x/a".into(), "x/a".into()), true);
        let r = render(&m);
        assert!(r.starts_with("-\tx/a\tx/b\tx/c\ty/a"), "{r}");
        assert!(r.contains("\nx/a\t.\tX\t?"), "{r}");
    }
}
