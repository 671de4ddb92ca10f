//! Pure: why a connection is allowed or refused — which policies isolate the source (for
//! egress) and the destination (for ingress), and which rule of which policy admits the
//! connection, if any. The same semantics the table is built from ([`crate::model`]).

use std::fmt;
use std::net::Ipv4Addr;

use crate::model::{Cluster, Index, PodView, Policy, admits, merge, rule_runs};

/// One direction's finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The pod is not isolated in this direction (or the address is not a pod here).
    NotIsolated,
    /// Isolated by `policies`; allowed by `ns/name` rule index, or by none.
    Isolated {
        policies: Vec<String>,
        allowed_by: Option<(String, usize)>,
    },
}

impl Finding {
    pub fn allows(&self) -> bool {
        match self {
            Finding::NotIsolated => true,
            Finding::Isolated { allowed_by, .. } => allowed_by.is_some(),
        }
    }
}

/// The verdict on one connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub egress: Finding,
    pub ingress: Finding,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// `src` → `dst` on `proto`/`port` (after Service translation).
pub fn explain(
    policies: &[Policy],
    cluster: &Cluster,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
) -> Explanation {
    let index = Index::new(cluster.pods.iter(), &cluster.namespaces);
    let pod_at = |ip: Ipv4Addr| cluster.pods.iter().find(|p| p.ip == ip);
    let finding = |pod: Option<&PodView>, peer: Ipv4Addr, ingress: bool| {
        let Some(pod) = pod else {
            return Finding::NotIsolated;
        };
        let selecting: Vec<&Policy> = policies
            .iter()
            .filter(|p| p.selects(pod))
            .filter(|p| {
                if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                }
            })
            .collect();
        if selecting.is_empty() {
            return Finding::NotIsolated;
        }
        let allowed_by = selecting.iter().find_map(|p| {
            let rules = if ingress { &p.ingress } else { &p.egress };
            rules.iter().flatten().enumerate().find_map(|(i, r)| {
                let runs = merge(rule_runs(p, r, &index, pod, ingress));
                admits(&runs, peer, proto, port).then(|| (p.key(), i))
            })
        });
        let mut names: Vec<String> = selecting.iter().map(|p| p.key()).collect();
        names.sort();
        names.dedup();
        Finding::Isolated {
            policies: names,
            allowed_by,
        }
    };
    Explanation {
        egress: finding(pod_at(src), dst, false),
        ingress: finding(pod_at(dst), src, true),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (dir, finding) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            match finding {
                Finding::NotIsolated => writeln!(f, "{dir}: not isolated: allowed")?,
                Finding::Isolated {
                    policies,
                    allowed_by: Some((p, i)),
                } => writeln!(
                    f,
                    "{dir}: isolated by {}: allowed by {p} {dir} rule {i}",
                    policies.join(", ")
                )?,
                Finding::Isolated {
                    policies,
                    allowed_by: None,
                } => writeln!(
                    f,
                    "{dir}: isolated by {}: no rule allows it: refused",
                    policies.join(", ")
                )?,
            }
        }
        write!(
            f,
            "verdict: {}",
            if self.allowed() { "allowed" } else { "refused" }
        )
    }
}
