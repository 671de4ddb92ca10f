//! Orchestration: `lab status` — nodes, pods and services (with their external and
//! load-balancer IPs) of a lab as tables.

use anyhow::Result;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::api::ListParams;

pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn node_ip(n: &Node) -> Option<String> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
}

/// A Service's external addresses as kubectl shows them: load-balancer ingress IPs, then
/// `spec.externalIPs`; `<pending>` for a LoadBalancer still waiting for its IP, `-` for
/// none.
pub fn external_ips(s: &Service) -> String {
    let spec = s.spec.as_ref();
    let mut ips: Vec<String> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect();
    ips.extend(
        spec.and_then(|s| s.external_ips.clone())
            .unwrap_or_default(),
    );
    if !ips.is_empty() {
        ips.join(",")
    } else if spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer") {
        "<pending>".into()
    } else {
        "-".into()
    }
}

/// Prints rows as a table with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub async fn print(c: &kube::Client) -> Result<()> {
    let lp = ListParams::default();
    let nodes = Api::<Node>::all(c.clone()).list(&lp).await?;
    let pods = Api::<Pod>::all(c.clone()).list(&lp).await?;
    let services = Api::<Service>::all(c.clone()).list(&lp).await?;
    println!("NODES");
    let rows: Vec<Vec<String>> = nodes
        .items
        .iter()
        .map(|n| {
            vec![
                n.metadata.name.clone().unwrap_or_default(),
                if node_ready(n) { "Ready" } else { "NotReady" }.to_string(),
                node_ip(n).unwrap_or_else(|| "-".into()),
                n.spec
                    .as_ref()
                    .and_then(|s| s.pod_cidr.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["NAME", "STATUS", "NODE-IP", "POD-CIDR"], &rows);
    println!("PODS");
    let rows: Vec<Vec<String>> = pods
        .items
        .iter()
        .map(|p| {
            let s = p.status.as_ref();
            let ready = s
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            vec![
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
                s.and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "-".into()),
                if ready { "yes" } else { "no" }.into(),
                s.and_then(|s| s.pod_ip.clone())
                    .unwrap_or_else(|| "-".into()),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| "-".into()),
                p.spec
                    .as_ref()
                    .map(|s| s.containers.len().to_string())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "PHASE",
            "READY",
            "IP",
            "NODE",
            "CONTAINERS",
        ],
        &rows,
    );
    println!("SERVICES");
    let rows: Vec<Vec<String>> = services
        .items
        .iter()
        .map(|s| {
            let spec = s.spec.as_ref();
            let ports = spec
                .and_then(|s| s.ports.as_ref())
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{}/{}",
                                p.port,
                                p.protocol.clone().unwrap_or_else(|| "TCP".into())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
                spec.and_then(|s| s.type_.clone())
                    .unwrap_or_else(|| "ClusterIP".into()),
                spec.and_then(|s| s.cluster_ip.clone())
                    .unwrap_or_else(|| "-".into()),
                external_ips(s),
                ports,
            ]
        })
        .collect();
    table(
        &[
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORTS",
        ],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn external_ip_column() {
        let lb = svc(
            serde_json::json!({"spec": {"type": "LoadBalancer", "externalIPs": ["172.18.254.1"]},
            "status": {"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}]}}}),
        );
        assert_eq!(external_ips(&lb), "172.18.255.1,172.18.254.1");
        let pending = svc(serde_json::json!({"spec": {"type": "LoadBalancer"}}));
        assert_eq!(external_ips(&pending), "<pending>");
        assert_eq!(external_ips(&svc(serde_json::json!({"spec": {}}))), "-");
    }
}
