//! Pure: scheduling — which node a pod without `spec.nodeName` is bound to.
//!
//! Filters as kube-scheduler's default plugins do for what the lab needs (NodeReady,
//! NodeUnschedulable, TaintToleration for NoSchedule/NoExecute, NodeSelector), then scores by
//! fewest pods, ties broken by node name so the choice is deterministic and testable.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

use crate::Selector;

/// No node fits; `message` is kube-scheduler-style ("0/3 nodes are available: ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    pub message: String,
}

/// The node `pod` should run on, given all nodes and all pods (to count pods per node).
pub fn plan_schedule(pod: &Pod, nodes: &[Node], pods: &[Pod]) -> Result<String, Unschedulable> {
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut candidates: Vec<(usize, &str)> = Vec::new();
    let spec = pod.spec.as_ref();
    let tolerations: &[Toleration] = spec.and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
    let node_selector = spec
        .and_then(|s| s.node_selector.as_ref())
        .map(Selector::from_map)
        .unwrap_or_default();
    for node in nodes {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        if !node_is_ready(node) {
            *reasons.entry("node(s) were not ready").or_default() += 1;
            continue;
        }
        let nspec = node.spec.as_ref();
        if nspec.and_then(|s| s.unschedulable).unwrap_or(false) {
            *reasons.entry("node(s) were unschedulable").or_default() += 1;
            continue;
        }
        let taints: &[Taint] = nspec.and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
        if taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .any(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        {
            *reasons.entry("node(s) had untolerated taint").or_default() += 1;
            continue;
        }
        let empty = BTreeMap::new();
        if !node_selector.matches(node.metadata.labels.as_ref().unwrap_or(&empty)) {
            *reasons
                .entry("node(s) didn't match Pod's node affinity/selector")
                .or_default() += 1;
            continue;
        }
        let count = pods
            .iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name)
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .count();
        candidates.push((count, name));
    }
    if let Some((_, name)) = candidates.into_iter().min() {
        return Ok(name.to_string());
    }
    let mut message = format!("0/{} nodes are available", nodes.len());
    if !reasons.is_empty() {
        let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        message.push_str(": ");
        message.push_str(&parts.join(", "));
    }
    message.push('.');
    Err(Unschedulable { message })
}

/// A node is Ready when its `Ready` condition is `True`.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Kubernetes' `Toleration.ToleratesTaint`.
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        "Equal" | "" => {
            key == taint.key
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ready: bool, taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("zone".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(node: Option<&str>, tolerations: Vec<Toleration>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fewest_pods_then_name() {
        let nodes = [node("b", true, vec![]), node("a", true, vec![])];
        assert_eq!(plan_schedule(&pod(None, vec![]), &nodes, &[]).unwrap(), "a");
        let pods = [pod(Some("a"), vec![])];
        assert_eq!(
            plan_schedule(&pod(None, vec![]), &nodes, &pods).unwrap(),
            "b"
        );
        let mut done = pod(Some("a"), vec![]);
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(
            plan_schedule(&pod(None, vec![]), &nodes, &[done]).unwrap(),
            "a"
        );
    }

    #[test]
    fn not_ready_and_unschedulable_nodes_are_skipped() {
        let mut cordoned = node("a", true, vec![]);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let nodes = [cordoned, node("b", false, vec![]), node("c", true, vec![])];
        assert_eq!(plan_schedule(&pod(None, vec![]), &nodes, &[]).unwrap(), "c");
        let err = plan_schedule(&pod(None, vec![]), &nodes[..2], &[]).unwrap_err();
        assert_eq!(
            err.message,
            "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) were unschedulable."
        );
        assert_eq!(
            plan_schedule(&pod(None, vec![]), &[], &[])
                .unwrap_err()
                .message,
            "0/0 nodes are available."
        );
    }

    #[test]
    fn taints_and_tolerations() {
        let nodes = [
            node("a", true, vec![taint("role", "cp", "NoSchedule")]),
            node("b", true, vec![taint("gpu", "yes", "NoExecute")]),
            node("c", true, vec![taint("soft", "x", "PreferNoSchedule")]),
        ];
        // Only PreferNoSchedule does not filter.
        assert_eq!(plan_schedule(&pod(None, vec![]), &nodes, &[]).unwrap(), "c");
        let busy = [pod(Some("c"), vec![])];
        let tol_cp = Toleration {
            key: Some("role".into()),
            operator: Some("Equal".into()),
            value: Some("cp".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        assert_eq!(
            plan_schedule(&pod(None, vec![tol_cp.clone()]), &nodes, &busy).unwrap(),
            "a"
        );
        let wrong_value = Toleration {
            value: Some("other".into()),
            ..tol_cp.clone()
        };
        assert_eq!(
            plan_schedule(&pod(None, vec![wrong_value]), &nodes, &busy).unwrap(),
            "c"
        );
        let wrong_effect = Toleration {
            effect: Some("NoExecute".into()),
            ..tol_cp
        };
        assert!(!tolerates(
            &wrong_effect,
            &taint("role", "cp", "NoSchedule")
        ));
        let exists_all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&exists_all, &taint("gpu", "yes", "NoExecute")));
        let exists_key = Toleration {
            key: Some("gpu".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(
            &exists_key,
            &taint("gpu", "whatever", "NoExecute")
        ));
        assert!(!tolerates(&exists_key, &taint("role", "cp", "NoSchedule")));
        let only_tainted = &nodes[..2];
        let err = plan_schedule(&pod(None, vec![]), only_tainted, &[]).unwrap_err();
        assert!(
            err.message.contains("2 node(s) had untolerated taint"),
            "{err}"
        );
    }

    #[test]
    fn node_selector_filters() {
        let nodes = [node("a", true, vec![]), node("b", true, vec![])];
        let mut p = pod(None, vec![]);
        p.spec.as_mut().unwrap().node_selector =
            Some([("zone".to_string(), "b".to_string())].into());
        assert_eq!(plan_schedule(&p, &nodes, &[]).unwrap(), "b");
    }
}
