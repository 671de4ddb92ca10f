//! Pure: the shape of a lab — namespace names, node names and addresses, the address
//! ranges Services are reached at — from its name and node count. Every name carries the lab's prefix, so labs never collide and `lab down`
//! can find everything its lab made.

use std::net::Ipv4Addr;

/// The underlay every lab uses. Labs are separate namespaces with separate underlay
/// bridges, so they can all use the same addresses.
pub const UNDERLAY_PREFIX: u8 = 24;
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 200);
pub const API_PORT: u16 = 6443;
pub const AGENT_METRICS_PORT: u16 = 9102;
/// The echo port of the lab's default pods and of the external host.
pub const ECHO_PORT: u16 = 8080;
/// The control plane's cluster IP range (its default), routed on every node.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const MAX_NODES: usize = 100;
/// The control plane's load-balancer pool (`podnet apiserver --load-balancer-pool`):
/// LoadBalancer Services get `status.loadBalancer.ingress` IPs from it.
pub const LOAD_BALANCER_POOL: &str = "172.18.255.0/24";
/// The range documented for `spec.externalIPs` in the lab: nothing allocates it, a
/// Service names its own; the external host routes it like the load-balancer pool.
pub const EXTERNAL_IPS_RANGE: &str = "172.18.254.0/24";

/// The ranges Services are reached at that no interface holds (cluster IPs, load-balancer
/// IPs, external IPs). Every worker routes them out of its underlay interface, as a real
/// node's default route would, so that its own processes can connect to them (the agent's
/// table DNATs them on the way out). The external host routes the last two — and only
/// them — through the workers as one ECMP route (`MultipathRouteSpec`, one next hop per
/// worker, the kernel's L3 hash picks a worker per source/destination pair), as a router
/// in front of a bare-metal cluster does (MetalLB's BGP mode). Nothing routes outside the
/// lab: the routes point at underlay members only, and no member has a default route.
pub const SERVICE_RANGES: [&str; 3] = [SERVICE_CIDR, LOAD_BALANCER_POOL, EXTERNAL_IPS_RANGE];
/// The ranges the external host reaches through the workers.
pub const EXTERNAL_RANGES: [&str; 2] = [LOAD_BALANCER_POOL, EXTERNAL_IPS_RANGE];

/// One member of the underlay: the control plane, a worker node or the external host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The Kubernetes node name (or `control-plane` / `external`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its port on the underlay bridge (a veth end inside the underlay namespace).
    pub underlay_port: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub lab: String,
    pub prefix: String,
    pub underlay_netns: String,
    pub underlay_bridge: String,
    pub control_plane: Member,
    pub workers: Vec<Member>,
    pub external: Member,
    /// Pod namespaces are named `<pod_netns_prefix><id>` by the node's pod runtime.
    pub pod_netns_prefix: String,
}

impl Topology {
    pub fn api_url(&self) -> String {
        format!("https://{CONTROL_PLANE_IP}:{API_PORT}")
    }

    /// Every member, control plane first, external host last.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.control_plane)
            .chain(&self.workers)
            .chain(std::iter::once(&self.external))
    }
}

/// Lab names become part of namespace names: lowercase letters, digits and '-', 1–16
/// characters, starting with a letter.
pub fn validate_lab_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 16
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lab name {name:?}: use 1–16 lowercase letters, digits or '-', starting with a letter"
        ))
    }
}

/// The namespace prefix of lab `name`: `pn-<name>-`.
pub fn prefix(name: &str) -> String {
    format!("pn-{name}-")
}

pub fn plan_topology(name: &str, nodes: usize) -> Result<Topology, String> {
    validate_lab_name(name)?;
    if nodes == 0 || nodes > MAX_NODES {
        return Err(format!("--nodes {nodes}: between 1 and {MAX_NODES}"));
    }
    let prefix = prefix(name);
    let member = |node: &str, ip: Ipv4Addr| Member {
        name: node.to_string(),
        netns: format!("{prefix}{node}"),
        underlay_port: short_port(node),
        ip,
    };
    Ok(Topology {
        lab: name.to_string(),
        underlay_netns: format!("{prefix}underlay"),
        underlay_bridge: "underlay".to_string(),
        control_plane: member("control-plane", CONTROL_PLANE_IP),
        workers: (1..=nodes)
            .map(|i| {
                member(
                    &format!("node-{i}"),
                    Ipv4Addr::new(172, 18, 0, 10 + i as u8),
                )
            })
            .collect(),
        external: member("external", EXTERNAL_IP),
        pod_netns_prefix: format!("{prefix}pod-"),
        prefix,
    })
}

/// Interface names have 15 bytes; node names here are short, but stay safe.
fn short_port(node: &str) -> String {
    node.chars().take(15).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes() {
        let t = plan_topology("demo", 3).unwrap();
        assert_eq!(t.prefix, "pn-demo-");
        assert_eq!(t.underlay_netns, "pn-demo-underlay");
        assert_eq!(t.control_plane.netns, "pn-demo-control-plane");
        let names: Vec<_> = t.workers.iter().map(|m| (m.name.as_str(), m.ip)).collect();
        assert_eq!(
            names,
            vec![
                ("node-1", Ipv4Addr::new(172, 18, 0, 11)),
                ("node-2", Ipv4Addr::new(172, 18, 0, 12)),
                ("node-3", Ipv4Addr::new(172, 18, 0, 13)),
            ]
        );
        assert_eq!(t.members().count(), 5);
        assert!(t.members().all(|m| m.netns.starts_with(&t.prefix)));
        assert!(t.pod_netns_prefix.starts_with(&t.prefix));
        assert_eq!(t.api_url(), "https://172.18.0.2:6443");
    }

    #[test]
    fn limits() {
        assert!(plan_topology("demo", 0).is_err());
        assert!(plan_topology("demo", MAX_NODES + 1).is_err());
        let t = plan_topology("demo", MAX_NODES).unwrap();
        assert_eq!(t.workers.last().unwrap().ip, Ipv4Addr::new(172, 18, 0, 110));
        assert!(t.members().all(|m| m.underlay_port.len() <= 15));
        for bad in ["", "Demo", "1lab", "a_b", "a-very-long-lab-name"] {
            assert!(validate_lab_name(bad).is_err(), "{bad}");
        }
        assert!(validate_lab_name("lab-2").is_ok());
    }

    #[test]
    fn service_ranges_stay_off_the_underlay() {
        let underlay: ipnet::Ipv4Net = format!("{CONTROL_PLANE_IP}/{UNDERLAY_PREFIX}")
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .trunc();
        let ranges: Vec<ipnet::Ipv4Net> =
            SERVICE_RANGES.iter().map(|r| r.parse().unwrap()).collect();
        for (i, a) in ranges.iter().enumerate() {
            assert!(!a.contains(&underlay.network()) && !underlay.contains(&a.network()));
            for b in &ranges[i + 1..] {
                assert!(
                    !a.contains(&b.network()) && !b.contains(&a.network()),
                    "{a} {b}"
                );
            }
        }
        assert!(EXTERNAL_RANGES.iter().all(|r| SERVICE_RANGES.contains(r)));
    }
}
