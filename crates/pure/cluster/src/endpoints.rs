//! Pure: EndpointSlices for a Service — (Service, pods of its namespace, existing slices) →
//! slices to create, update and delete.
//!
//! Invariant: a slice is only written when its content changes, so a resync produces no
//! resourceVersion churn. Like the upstream endpointslice controller, pods are grouped by
//! their resolved port set (a named targetPort may resolve to different numbers on different
//! pods), one slice per group; a Service with no ready addresses keeps one empty placeholder
//! slice. Unlike upstream there is no 100-endpoint cap per slice: the lab is small, and one
//! slice per port set keeps the plan a pure function without a packing heuristic.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::Selector;

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.podnet.dev";

/// What to write. New slices carry `generateName` (`<service>-`) and no name: the API server
/// names them as it names any generateName object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<String>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// A pod is ready when its `Ready` condition is `True` and it is not being deleted.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && ready_condition(pod)
}

/// Whether the pod's `Ready` condition is `True` (deleting or not).
fn ready_condition(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// An endpoint's conditions, as upstream's endpointslice controller sets them: a pod being
/// deleted (`deletionTimestamp` set) is `terminating`, never `ready`, and `serving` while
/// its `Ready` condition is still `True` (its containers still run during the grace
/// period); any other pod is ready and serving exactly when its `Ready` condition is `True`.
pub fn plan_endpoint_conditions(pod: &Pod) -> EndpointConditions {
    let serving = ready_condition(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    EndpointConditions {
        ready: Some(serving && !terminating),
        serving: Some(serving),
        terminating: Some(terminating),
    }
}

/// Plans the slices of `svc`. `pods` are candidate pods (those of other namespaces are
/// ignored); `existing` are the slices currently labelled for this Service and managed by
/// podnet. A Service without a selector gets an empty plan: its slices are managed by hand.
pub fn plan_endpoint_slices(svc: &Service, pods: &[Pod], existing: &[EndpointSlice]) -> SlicePlan {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return SlicePlan::default();
    };
    let selector = Selector::from_map(selector);
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let svc_ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let empty = BTreeMap::new();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);

    // Group endpoints by resolved port set.
    let mut groups: BTreeMap<Vec<PortKey>, Vec<Endpoint>> = BTreeMap::new();
    let mut matching: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.namespace.as_deref().unwrap_or_default() == ns)
        .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&empty)))
        .collect();
    matching.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for pod in matching {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        else {
            continue;
        };
        let mut ports = Vec::new();
        for sp in &svc_ports {
            let number = match &sp.target_port {
                None => Some(sp.port),
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => match name.parse::<i32>() {
                    Ok(n) => Some(n),
                    Err(_) => named_port(pod, name, sp.protocol.as_deref().unwrap_or("TCP")),
                },
            };
            if let Some(port) = number {
                ports.push(PortKey {
                    name: sp.name.clone().unwrap_or_default(),
                    port,
                    protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    app_protocol: sp.app_protocol.clone(),
                });
            }
        }
        // As upstream's controller: a pod's hostname is published when its subdomain
        // names this Service (DNS then serves `hostname.service.ns.svc.zone`).
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(svc_name.as_str()));
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![ip.to_string()],
            hostname,
            conditions: Some(if publish_not_ready {
                // Upstream: such a Service's endpoints are ready and serving regardless
                // (DNS then publishes not-ready pods; the proxy uses them too).
                EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    ..plan_endpoint_conditions(pod)
                }
            } else {
                plan_endpoint_conditions(pod)
            }),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(ns.clone()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }

    let labels: BTreeMap<String, String> = [
        (LABEL_SERVICE_NAME.to_string(), svc_name.clone()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ]
    .into();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc_name.clone(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    let mut plan = SlicePlan::default();
    let mut unused: Vec<&EndpointSlice> = existing.iter().collect();
    let mut unmatched = Vec::new();
    for (ports, endpoints) in groups {
        let ports: Vec<EndpointPort> = ports.into_iter().map(PortKey::into_port).collect();
        // Prefer the existing slice with the same port set.
        if let Some(i) = unused
            .iter()
            .position(|s| s.ports.clone().unwrap_or_default() == ports)
        {
            let old = unused.remove(i);
            push_if_changed(&mut plan, old, &labels, &owner, ports, endpoints);
        } else {
            unmatched.push((ports, endpoints));
        }
    }
    for (ports, endpoints) in unmatched {
        // Reuse a leftover slice rather than delete one and create another.
        if !unused.is_empty() {
            let old = unused.remove(0);
            push_if_changed(&mut plan, old, &labels, &owner, ports, endpoints);
            continue;
        }
        plan.create.push(EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{svc_name}-")),
                namespace: Some(ns.clone()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
        });
    }
    plan.delete = unused
        .into_iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    plan
}

fn push_if_changed(
    plan: &mut SlicePlan,
    old: &EndpointSlice,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) {
    let mut new = old.clone();
    let l = new.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in labels {
        l.insert(k.clone(), v.clone());
    }
    new.metadata.owner_references = Some(vec![owner.clone()]);
    new.address_type = "IPv4".into();
    new.ports = Some(ports);
    new.endpoints = endpoints;
    if &new != old {
        plan.update.push(new);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

impl PortKey {
    fn into_port(self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name),
            port: Some(self.port),
            protocol: Some(self.protocol),
            app_protocol: self.app_protocol,
        }
    }
}

fn named_port(pod: &Pod, name: &str, protocol: &str) -> Option<i32> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == protocol
        })
        .map(|p| p.container_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("svc-uid".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn port(name: &str, port: i32, target: Option<IntOrString>) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: target,
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn pod(name: &str, app: &str, ip: Option<&str>, ready: bool, http_port: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("{name}-uid")),
                labels: Some([("app".to_string(), app.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("echo".into()),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: http_port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// Applies a plan to a set of slices as the API server would (naming new ones).
    fn apply(plan: &SlicePlan, mut slices: Vec<EndpointSlice>) -> Vec<EndpointSlice> {
        slices.retain(|s| !plan.delete.contains(s.metadata.name.as_ref().unwrap()));
        for u in &plan.update {
            let i = slices
                .iter()
                .position(|s| s.metadata.name == u.metadata.name)
                .unwrap();
            slices[i] = u.clone();
        }
        for (n, c) in plan.create.iter().enumerate() {
            let mut c = c.clone();
            c.metadata.name = Some(format!("web-{n}{}", slices.len()));
            slices.push(c);
        }
        slices
    }

    #[test]
    fn ready_and_not_ready_pods_with_ip() {
        let s = svc(vec![port("http", 80, Some(IntOrString::Int(8080)))]);
        let pods = [
            pod("a", "web", Some("10.244.0.5"), true, 8080),
            pod("b", "web", Some("10.244.0.6"), false, 8080),
            pod("c", "web", None, true, 8080),
            pod("d", "db", Some("10.244.0.7"), true, 8080),
        ];
        let plan = plan_endpoint_slices(&s, &pods, &[]);
        assert_eq!(plan.create.len(), 1);
        let slice = &plan.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(
            slice.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
        assert_eq!(slice.address_type, "IPv4");
        let addrs: Vec<_> = slice
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].as_str(),
                    e.conditions.as_ref().unwrap().ready,
                )
            })
            .collect();
        assert_eq!(
            addrs,
            [("10.244.0.5", Some(true)), ("10.244.0.6", Some(false))]
        );
        assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(
            slice.endpoints[0]
                .target_ref
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("a")
        );
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_endpoint_ready() {
        let mut s = svc(vec![port("http", 80, None)]);
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let plan = plan_endpoint_slices(&s, &[pod("a", "web", Some("10.244.0.5"), false, 80)], &[]);
        let c = plan.create[0].endpoints[0].conditions.clone().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
    }

    #[test]
    fn a_pods_hostname_is_published_only_under_its_subdomain_service() {
        let s = svc(vec![port("http", 80, None)]);
        let named = |name: &str, subdomain: &str| {
            let mut p = pod(name, "web", Some("10.244.0.5"), true, 80);
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some(format!("{name}-host"));
            spec.subdomain = Some(subdomain.into());
            p
        };
        let mut other = named("b", "other");
        other.status.as_mut().unwrap().pod_ip = Some("10.244.0.6".into());
        let plan = plan_endpoint_slices(&s, &[named("a", "web"), other], &[]);
        let hostnames: Vec<Option<&str>> = plan.create[0]
            .endpoints
            .iter()
            .map(|e| e.hostname.as_deref())
            .collect();
        assert_eq!(hostnames, [Some("a-host"), None]);
    }

    #[test]
    fn second_run_is_a_no_op_and_changes_update_in_place() {
        let s = svc(vec![port("http", 80, None)]);
        let mut pods = vec![pod("a", "web", Some("10.244.0.5"), false, 80)];
        let slices = apply(&plan_endpoint_slices(&s, &pods, &[]), vec![]);
        assert!(plan_endpoint_slices(&s, &pods, &slices).is_empty());
        pods[0] = pod("a", "web", Some("10.244.0.5"), true, 80);
        let plan = plan_endpoint_slices(&s, &pods, &slices);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        assert_eq!(plan.update[0].metadata.name, slices[0].metadata.name);
        // Pod leaves: the slice stays as an empty placeholder.
        let slices = apply(&plan, slices);
        let plan = plan_endpoint_slices(&s, &[], &slices);
        assert_eq!(plan.update.len(), 1);
        assert!(plan.update[0].endpoints.is_empty());
        assert!(plan.update[0].ports.as_ref().unwrap().is_empty());
    }

    #[test]
    fn deleting_pod_being_deleted_is_not_ready() {
        let mut p = pod("a", "web", Some("10.244.0.5"), true, 80);
        assert!(pod_is_ready(&p));
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert!(!pod_is_ready(&p));
    }

    fn deleting(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        p
    }

    fn conditions(e: &Endpoint) -> (Option<bool>, Option<bool>, Option<bool>) {
        let c = e.conditions.as_ref().unwrap();
        (c.ready, c.serving, c.terminating)
    }

    #[test]
    fn terminating_pods_stay_as_terminating_endpoints_serving_while_ready() {
        let s = svc(vec![port("http", 80, None)]);
        let pods = [
            pod("a", "web", Some("10.244.0.5"), true, 80),
            deleting(pod("b", "web", Some("10.244.0.6"), true, 80)),
            deleting(pod("c", "web", Some("10.244.0.7"), false, 80)),
            pod("d", "web", Some("10.244.0.8"), false, 80),
        ];
        let plan = plan_endpoint_slices(&s, &pods, &[]);
        let got: Vec<_> = plan.create[0].endpoints.iter().map(conditions).collect();
        let (t, f) = (Some(true), Some(false));
        assert_eq!(got, [(t, t, f), (f, t, t), (f, f, t), (f, f, f)]);
        // The pod's deletion is a change of the slice; a second run then writes nothing.
        let before = apply(
            &plan_endpoint_slices(&s, &[pod("b", "web", Some("10.244.0.6"), true, 80)], &[]),
            vec![],
        );
        let gone = [deleting(pod("b", "web", Some("10.244.0.6"), true, 80))];
        let plan = plan_endpoint_slices(&s, &gone, &before);
        assert_eq!(plan.update.len(), 1);
        assert_eq!(conditions(&plan.update[0].endpoints[0]), (f, t, t));
        let after = apply(&plan, before);
        assert!(plan_endpoint_slices(&s, &gone, &after).is_empty());
    }

    #[test]
    fn named_ports_that_disagree_make_two_slices() {
        let s = svc(vec![port(
            "http",
            80,
            Some(IntOrString::String("http".into())),
        )]);
        let pods = [
            pod("a", "web", Some("10.244.0.5"), true, 8080),
            pod("b", "web", Some("10.244.1.5"), true, 9090),
            pod("c", "web", Some("10.244.1.6"), true, 8080),
        ];
        let plan = plan_endpoint_slices(&s, &pods, &[]);
        assert_eq!(plan.create.len(), 2);
        let mut got: Vec<(i32, Vec<&str>)> = plan
            .create
            .iter()
            .map(|sl| {
                (
                    sl.ports.as_ref().unwrap()[0].port.unwrap(),
                    sl.endpoints
                        .iter()
                        .map(|e| e.addresses[0].as_str())
                        .collect(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (8080, vec!["10.244.0.5", "10.244.1.6"]),
                (9090, vec!["10.244.1.5"])
            ]
        );
        // When b agrees again, one slice goes away.
        let slices = apply(&plan, vec![]);
        let pods2 = [
            pods[0].clone(),
            pod("b", "web", Some("10.244.1.5"), true, 8080),
            pods[2].clone(),
        ];
        let plan = plan_endpoint_slices(&s, &pods2, &slices);
        assert_eq!(plan.delete.len(), 1);
        assert_eq!(apply(&plan, slices).len(), 1);
    }

    #[test]
    fn named_port_missing_on_pod_omits_that_port() {
        let s = svc(vec![
            port("http", 80, Some(IntOrString::String("http".into()))),
            port("metrics", 9100, Some(IntOrString::String("metrics".into()))),
        ]);
        let plan =
            plan_endpoint_slices(&s, &[pod("a", "web", Some("10.244.0.5"), true, 8080)], &[]);
        let ports = plan.create[0].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("http"));
    }

    #[test]
    fn services_without_selector_are_left_alone() {
        let mut s = svc(vec![port("http", 80, None)]);
        s.spec.as_mut().unwrap().selector = None;
        let existing = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-manual".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(
            plan_endpoint_slices(
                &s,
                &[pod("a", "web", Some("10.0.0.1"), true, 80)],
                &[existing]
            )
            .is_empty()
        );
    }

    #[test]
    fn other_namespaces_do_not_match() {
        let s = svc(vec![port("http", 80, None)]);
        let mut p = pod("a", "web", Some("10.244.0.5"), true, 80);
        p.metadata.namespace = Some("other".into());
        let plan = plan_endpoint_slices(&s, &[p], &[]);
        assert!(plan.create[0].endpoints.is_empty());
    }
}
