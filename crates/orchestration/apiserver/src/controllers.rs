//! Orchestration: the controllers a real control plane runs — scheduler, EndpointSlice
//! controller, Service slice cleanup, load-balancer IPs — run synchronously inside the store's critical section
//! after every write, until no change is left (the decisions are `podnet-cluster`'s pure
//! `plan_*` functions). Invariant: when a request returns, the store is already reconciled,
//! so clients never observe a half-done cascade, and no client can race the controllers.
//!
//! Compared with kube-controller-manager: no informer lag and no work-queue retries, at the
//! cost of doing the controllers' work on the request path — fine for a lab of thousands of
//! objects (reconciling a Service reads only its namespace's matching pods).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_cluster::{LABEL_MANAGED_BY, LABEL_SERVICE_NAME, MANAGED_BY, Selector};
use serde_json::{Value, json};

use crate::resource::Kind;
use crate::store::{Store, labels_of, now};

/// Guard against a controller bug looping forever inside the lock.
const MAX_STEPS: usize = 1_000_000;

impl Store {
    pub(crate) fn run_controllers(&mut self) {
        let mut steps = 0;
        while let Some(ch) = self.dirty.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                tracing::error!("controllers did not converge; dropping pending changes");
                self.dirty.clear();
                return;
            }
            match ch.kind {
                Kind::Pod => {
                    if ch.new.as_ref().is_some_and(unscheduled) {
                        self.schedule(&ch.ns, &ch.name);
                    }
                    self.pod_changed(&ch.ns, ch.old.as_deref(), ch.new.as_deref());
                }
                Kind::Node => {
                    if node_changed(ch.old.as_deref(), ch.new.as_deref()) {
                        let pending: Vec<(String, String)> = self
                            .list(Kind::Pod, None)
                            .filter(|p| unscheduled(p))
                            .map(|p| {
                                (
                                    str_at(p, "/metadata/namespace"),
                                    str_at(p, "/metadata/name"),
                                )
                            })
                            .collect();
                        for (ns, name) in pending {
                            self.schedule(&ns, &name);
                        }
                    }
                }
                Kind::Service => {
                    match &ch.new {
                        Some(_) => {
                            self.reconcile_load_balancer(&ch.ns, &ch.name);
                            self.reconcile_slices(&ch.ns, &ch.name);
                        }
                        None => {
                            for name in self.managed_slices(&ch.ns, &ch.name) {
                                let _ = self.delete_inner(Kind::EndpointSlice, Some(&ch.ns), &name);
                            }
                        }
                    }
                    if released_ips(ch.old.as_deref(), ch.new.as_deref()) {
                        self.retry_pending_load_balancers();
                    }
                }
                Kind::Namespace | Kind::EndpointSlice | Kind::NetworkPolicy | Kind::Lease => {}
            }
        }
    }

    /// Binds a pending pod, or records why it cannot be bound.
    fn schedule(&mut self, ns: &str, name: &str) {
        let Ok(current) = self.get(Kind::Pod, Some(ns), name) else {
            return;
        };
        let Ok(pod) = serde_json::from_value::<Pod>((*current).clone()) else {
            return;
        };
        let nodes: Vec<Node> = self
            .list(Kind::Node, None)
            .filter_map(|n| serde_json::from_value((**n).clone()).ok())
            .collect();
        // Only what counting needs: node and phase.
        let pods: Vec<Pod> = self
            .list(Kind::Pod, None)
            .filter(|p| !unscheduled(p))
            .map(|p| Pod {
                spec: Some(PodSpec {
                    node_name: p
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .map(String::from),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: p
                        .pointer("/status/phase")
                        .and_then(Value::as_str)
                        .map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let mut v = (*current).clone();
        let (condition, node) = match podnet_cluster::plan_schedule(&pod, &nodes, &pods) {
            Ok(node) => (
                json!({"type": "PodScheduled", "status": "True"}),
                Some(node),
            ),
            Err(e) => (
                json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": e.message}),
                None,
            ),
        };
        let conds = v["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let old = conds.iter().find(|c| c["type"] == "PodScheduled");
        let same = old.is_some_and(|c| {
            c["status"] == condition["status"] && c.get("message") == condition.get("message")
        });
        if node.is_none() && same {
            return;
        }
        let mut condition = condition;
        condition["lastTransitionTime"] = json!(now());
        condition["lastProbeTime"] = Value::Null;
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conds.push(condition);
        v["status"]["conditions"] = Value::Array(conds);
        if let Some(node) = node {
            v["spec"]["nodeName"] = json!(node);
        }
        let key_ns = ns.to_string();
        // Controller writes bypass admission: they only touch fields admission set up.
        self.commit_internal(Kind::Pod, &key_ns, name, v);
    }

    fn pod_changed(&mut self, ns: &str, old: Option<&Value>, new: Option<&Value>) {
        if let (Some(o), Some(n)) = (old, new)
            && endpoint_view(o) == endpoint_view(n)
        {
            return;
        }
        let labels: Vec<BTreeMap<String, String>> =
            [old, new].into_iter().flatten().map(labels_of).collect();
        let services: Vec<String> = self
            .list(Kind::Service, Some(ns))
            .filter(|s| {
                let sel = selector_of(s);
                !sel.is_empty() && labels.iter().any(|l| sel.matches(l))
            })
            .map(|s| str_at(s, "/metadata/name"))
            .collect();
        for svc in services {
            self.reconcile_slices(ns, &svc);
        }
    }

    fn managed_slices(&self, ns: &str, svc: &str) -> Vec<String> {
        self.list(Kind::EndpointSlice, Some(ns))
            .filter(|s| {
                let l = labels_of(s);
                l.get(LABEL_SERVICE_NAME).map(String::as_str) == Some(svc)
                    && l.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
            })
            .map(|s| str_at(s, "/metadata/name"))
            .collect()
    }

    fn reconcile_slices(&mut self, ns: &str, svc_name: &str) {
        let Ok(sv) = self.get(Kind::Service, Some(ns), svc_name) else {
            return;
        };
        let Ok(svc) = serde_json::from_value::<Service>((*sv).clone()) else {
            return;
        };
        let sel = selector_of(&sv);
        if sel.is_empty() {
            return;
        }
        let pods: Vec<Pod> = self
            .list(Kind::Pod, Some(ns))
            .filter(|p| sel.matches(&labels_of(p)))
            .filter_map(|p| serde_json::from_value((**p).clone()).ok())
            .collect();
        let existing: Vec<EndpointSlice> = self
            .managed_slices(ns, svc_name)
            .iter()
            .filter_map(|n| self.get(Kind::EndpointSlice, Some(ns), n).ok())
            .filter_map(|s| serde_json::from_value((*s).clone()).ok())
            .collect();
        let plan = podnet_cluster::plan_endpoint_slices(&svc, &pods, &existing);
        for s in plan.create {
            match serde_json::to_value(&s) {
                Ok(v) => {
                    if let Err(e) = self.create_inner(Kind::EndpointSlice, Some(ns), v) {
                        tracing::warn!(service = svc_name, error = %e, "creating EndpointSlice");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "encoding EndpointSlice"),
            }
        }
        for s in plan.update {
            let name = s.metadata.name.clone().unwrap_or_default();
            if let Ok(v) = serde_json::to_value(&s) {
                self.commit_internal(Kind::EndpointSlice, ns, &name, v);
            }
        }
        for name in plan.delete {
            let _ = self.delete_inner(Kind::EndpointSlice, Some(ns), &name);
        }
    }
}

impl Store {
    /// The load-balancer controller (kind's cloud-provider-kind, k3s' ServiceLB): a
    /// LoadBalancer Service without `loadBalancerClass` gets one IP of the pool in
    /// `status.loadBalancer.ingress` (its `spec.loadBalancerIP` when in the pool and free);
    /// a Service that stops being one loses it. Addresses in use are read from the other
    /// Services, so a deleted Service's address is free at once and none is given twice.
    fn reconcile_load_balancer(&mut self, ns: &str, name: &str) {
        let Some(pool) = self.config.load_balancer_pool else {
            return;
        };
        let Ok(current) = self.get(Kind::Service, Some(ns), name) else {
            return;
        };
        let Ok(svc) = serde_json::from_value::<Service>((*current).clone()) else {
            return;
        };
        let held = ingress_ips(&current);
        let ty = svc.spec.as_ref().and_then(|s| s.type_.as_deref());
        let ingress = if podnet_cluster::wants_load_balancer(&svc) {
            let used: BTreeSet<IpAddr> = self
                .list(Kind::Service, None)
                .filter(|o| {
                    str_at(o, "/metadata/namespace") != ns || str_at(o, "/metadata/name") != name
                })
                .flat_map(|o| ingress_ips(o))
                .collect();
            let wanted = svc
                .spec
                .as_ref()
                .and_then(|s| s.load_balancer_ip.as_deref())
                .filter(|s| !s.is_empty());
            let wanted = match wanted.map(str::parse::<IpAddr>) {
                Some(Ok(ip)) => Some(ip),
                Some(Err(_)) => {
                    tracing::warn!(service = %format!("{ns}/{name}"), "spec.loadBalancerIP is not an IP address; no load-balancer IP");
                    return self.set_ingress(ns, name, &current, Vec::new());
                }
                None => None,
            };
            match podnet_cluster::plan_load_balancer_ip(pool, wanted, held.first().copied(), &used)
            {
                Ok(ip) => vec![ip],
                Err(e) => {
                    tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "no load-balancer IP");
                    Vec::new()
                }
            }
        } else if ty == Some("LoadBalancer") {
            return; // another implementation's (loadBalancerClass): its status is its own
        } else {
            Vec::new() // no longer a LoadBalancer: the address goes back to the pool
        };
        self.set_ingress(ns, name, &current, ingress);
    }

    /// Writes `status.loadBalancer.ingress` when it differs.
    fn set_ingress(&mut self, ns: &str, name: &str, current: &Value, ips: Vec<IpAddr>) {
        if ingress_ips(current) == ips {
            return;
        }
        let mut v = current.clone();
        v["status"]["loadBalancer"] = if ips.is_empty() {
            json!({})
        } else {
            json!({"ingress": ips
                .iter()
                .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                .collect::<Vec<_>>()})
        };
        self.commit_internal(Kind::Service, ns, name, v);
    }

    /// An address went back to the pool: LoadBalancer Services still waiting for one try
    /// again.
    fn retry_pending_load_balancers(&mut self) {
        if self.config.load_balancer_pool.is_none() {
            return;
        }
        let pending: Vec<(String, String)> = self
            .list(Kind::Service, None)
            .filter(|s| {
                s.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer")
                    && ingress_ips(s).is_empty()
            })
            .map(|s| {
                (
                    str_at(s, "/metadata/namespace"),
                    str_at(s, "/metadata/name"),
                )
            })
            .collect();
        for (ns, name) in pending {
            self.reconcile_load_balancer(&ns, &name);
        }
    }
}

/// `status.loadBalancer.ingress[].ip` of a stored Service.
fn ingress_ips(svc: &Value) -> Vec<IpAddr> {
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("ip")?.as_str()?.parse().ok())
        .collect()
}

/// Whether a Service change gave load-balancer addresses back.
fn released_ips(old: Option<&Value>, new: Option<&Value>) -> bool {
    let now = new.map(ingress_ips).unwrap_or_default();
    old.map(ingress_ips)
        .unwrap_or_default()
        .iter()
        .any(|ip| !now.contains(ip))
}

fn str_at(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn unscheduled(p: &Arc<Value>) -> bool {
    p.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
}

fn selector_of(svc: &Value) -> Selector {
    svc.pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            let map: BTreeMap<String, String> = m
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            Selector::from_map(&map)
        })
        .unwrap_or_default()
}

/// What of a pod the EndpointSlice controller looks at.
fn endpoint_view(p: &Value) -> [Option<&Value>; 6] {
    [
        p.pointer("/metadata/labels"),
        p.pointer("/metadata/deletionTimestamp"),
        p.pointer("/status/podIP"),
        p.pointer("/status/conditions"),
        p.pointer("/spec/nodeName"),
        p.pointer("/spec/containers"),
    ]
}

/// Whether a node change can change scheduling decisions.
fn node_changed(old: Option<&Value>, new: Option<&Value>) -> bool {
    let view = |n: &Value| {
        let ready = n
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"].clone());
        (
            ready,
            n.pointer("/spec/taints").cloned(),
            n.pointer("/spec/unschedulable").cloned(),
            n.pointer("/metadata/labels").cloned(),
        )
    };
    match (old, new) {
        (Some(o), Some(n)) => view(o) != view(n),
        _ => true,
    }
}
