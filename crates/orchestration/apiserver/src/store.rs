//! Orchestration: the object store — one `BTreeMap` per kind behind the server's one lock,
//! one global resourceVersion counter (etcd's revision), an in-memory event history for
//! watch resumption, and the write paths (create/update/patch/delete) with the admission
//! steps the real API server runs (defaults, allocation of pod CIDRs, cluster IPs and node
//! ports, immutable fields, status subresource rules).
//!
//! Invariants: every write bumps the revision exactly once and emits exactly one event,
//! serialized once and shared by every watcher; a write that changes nothing (besides the
//! resourceVersion) is not a write. Deletion is immediate (no finalizers, a namespace's
//! objects go with it in the same critical section), except for Pods bound to a node:
//! as upstream, such a DELETE with a grace period (`DeleteOptions.gracePeriodSeconds`, else
//! the pod's `terminationGracePeriodSeconds`, else 30) only sets `deletionTimestamp` (now +
//! grace) and `deletionGracePeriodSeconds`, and the node's kubelet deletes it with grace 0
//! once its containers are gone; a later DELETE may shorten the grace, never lengthen it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::Config;
use crate::error::{ApiError, ApiResult, Cause};
use crate::patch;
use crate::resource::Kind;
use crate::validate;

/// (namespace or "" for cluster-scoped, name).
pub type Key = (String, String);

/// What a DELETE request asks beyond the name (`DeleteOptions`, or the query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// `preconditions.uid`: delete only this incarnation of the name.
    pub uid: Option<String>,
}

/// Grace period of a Pod without `terminationGracePeriodSeconds` (the API's default).
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// How many events are kept for watch resumption.
const HISTORY: usize = 20_000;
/// Broadcast buffer per watcher; a watcher further behind gets 410 and relists.
const FANOUT: usize = 8_192;

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub ns: String,
    pub type_: &'static str,
    pub object: Arc<Value>,
    /// The object before a MODIFIED event (to turn it into ADDED/DELETED for filtered watches).
    pub prev: Option<Arc<Value>>,
    /// `{"type":…,"object":…}\n`, serialized once.
    pub line: Bytes,
}

pub fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut out = format!("{{\"type\":\"{type_}\",\"object\":").into_bytes();
    serde_json::to_writer(&mut out, object).expect("a Value always serializes");
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

#[derive(Debug)]
pub(crate) struct Change {
    pub kind: Kind,
    pub ns: String,
    pub name: String,
    pub old: Option<Arc<Value>>,
    pub new: Option<Arc<Value>>,
}

pub struct Store {
    pub config: Config,
    objects: BTreeMap<Kind, BTreeMap<Key, Arc<Value>>>,
    pub rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Watches from a revision below this cannot be resumed (410 Gone).
    pub history_floor: u64,
    pub tx: broadcast::Sender<Arc<Event>>,
    pub(crate) dirty: VecDeque<Change>,
    seed: u64,
}

impl Store {
    pub fn new(config: Config) -> Self {
        let (tx, _) = broadcast::channel(FANOUT);
        let seed = random_seed();
        let mut s = Store {
            config,
            objects: Kind::ALL
                .into_iter()
                .map(|k| (k, BTreeMap::new()))
                .collect(),
            rv: 0,
            history: VecDeque::new(),
            history_floor: 0,
            tx,
            dirty: VecDeque::new(),
            seed,
        };
        for ns in ["default", "kube-system"] {
            s.create(Kind::Namespace, None, json!({"metadata": {"name": ns}}))
                .expect("built-in namespace");
        }
        if let Some(addr) = s.config.advertise {
            s.publish_kubernetes_service(addr);
        }
        s
    }

    /// The `kubernetes` Service in `default` and its EndpointSlice: how pods find the API
    /// (`KUBERNETES_SERVICE_HOST`/`_PORT` point at the Service; the slice at `addr`), as
    /// kube-apiserver's endpoint reconciler publishes it. The Service has no selector, so
    /// the EndpointSlice controller leaves the slice alone.
    fn publish_kubernetes_service(&mut self, addr: std::net::SocketAddr) {
        let cluster_ip = self.config.service_cidr.hosts().next();
        let svc = json!({
            "metadata": {"name": "kubernetes",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip.map(|ip| ip.to_string()),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                "targetPort": addr.port()}]},
        });
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        let slice = json!({
            "metadata": {"name": "kubernetes",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "podnet-apiserver"}},
            "addressType": family,
            "endpoints": [{"addresses": [addr.ip().to_string()],
                           "conditions": {"ready": true, "serving": true, "terminating": false}}],
            "ports": [{"name": "https", "port": addr.port(), "protocol": "TCP"}],
        });
        for (kind, body) in [(Kind::Service, svc), (Kind::EndpointSlice, slice)] {
            if let Err(e) = self.create(kind, Some("default"), body) {
                tracing::warn!(error = %e, "publishing the kubernetes Service");
            }
        }
    }

    fn map(&self, kind: Kind) -> &BTreeMap<Key, Arc<Value>> {
        &self.objects[&kind]
    }

    pub fn get(&self, kind: Kind, ns: Option<&str>, name: &str) -> ApiResult<Arc<Value>> {
        self.map(kind)
            .get(&(ns.unwrap_or("").to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(kind, name))
    }

    /// Objects of `kind`, in one namespace or all.
    pub fn list<'a>(
        &'a self,
        kind: Kind,
        ns: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Value>> + 'a> {
        let m = self.map(kind);
        match ns {
            Some(ns) => Box::new(
                m.range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns)
                    .map(|(_, v)| v),
            ),
            None => Box::new(m.values()),
        }
    }

    /// A fresh pseudo-random number (uids, generated names). Not cryptographic.
    fn random(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// Kubernetes' generateName suffix alphabet (no vowels, no confusable digits).
    fn suffix(&mut self) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.random();
        (0..5)
            .map(|_| {
                let c = ALPHA[(r % ALPHA.len() as u64) as usize] as char;
                r /= ALPHA.len() as u64;
                c
            })
            .collect()
    }

    /// Stores `value` under a new revision and emits one event.
    fn commit(
        &mut self,
        kind: Kind,
        key: Key,
        mut value: Value,
        type_: &'static str,
    ) -> Arc<Value> {
        self.rv += 1;
        value["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let new = Arc::new(value);
        let old = self
            .objects
            .get_mut(&kind)
            .expect("all kinds present")
            .insert(key.clone(), new.clone());
        self.emit(kind, &key.0, type_, new.clone(), old.clone());
        self.dirty.push_back(Change {
            kind,
            ns: key.0,
            name: key.1,
            old,
            new: Some(new.clone()),
        });
        new
    }

    fn emit(
        &mut self,
        kind: Kind,
        ns: &str,
        type_: &'static str,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let ev = Arc::new(Event {
            rv: self.rv,
            kind,
            ns: ns.to_string(),
            type_,
            line: event_line(type_, &object),
            object,
            prev,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.history_floor = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(ev);
    }

    /// Events after revision `rv`, oldest first; `None` when `rv` is older than the history.
    pub fn events_since(&self, rv: u64) -> Option<Vec<Arc<Event>>> {
        if rv < self.history_floor {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(self.history.range(start..).cloned().collect())
    }

    // ---------- public write paths (each runs the controllers afterwards) ----------

    pub fn create(&mut self, kind: Kind, ns: Option<&str>, body: Value) -> ApiResult<Arc<Value>> {
        let out = self.create_inner(kind, ns, body);
        self.run_controllers();
        out
    }

    pub fn update(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status: bool,
    ) -> ApiResult<Arc<Value>> {
        let out = self.update_inner(kind, ns, name, body, status);
        self.run_controllers();
        out
    }

    pub fn patch(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
        content_type: &str,
        body: &Value,
        status: bool,
    ) -> ApiResult<Arc<Value>> {
        let old = self.get(kind, ns, name)?;
        let mut doc = (*old).clone();
        let ct = content_type.split(';').next().unwrap_or("").trim();
        match ct {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                patch::merge_patch(&mut doc, body)
            }
            "application/json-patch+json" => patch::json_patch(&mut doc, body)?,
            "application/apply-patch+yaml" => {
                return Err(ApiError::unsupported_media(
                    "server-side apply is not supported by the podnet lab API server; use merge patch",
                ));
            }
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                )));
            }
        }
        self.update(kind, ns, name, doc, status)
    }

    /// DELETE without options.
    #[cfg(test)]
    pub fn delete(&mut self, kind: Kind, ns: Option<&str>, name: &str) -> ApiResult<Arc<Value>> {
        self.delete_with(kind, ns, name, &DeleteOptions::default())
    }

    /// DELETE with options: a Pod bound to a node is deleted gracefully (see the module
    /// doc); everything else at once.
    pub fn delete_with(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Arc<Value>> {
        if kind == Kind::Namespace && matches!(name, "default" | "kube-system") {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        let old = self.get(kind, ns, name)?;
        if let Some(uid) = &opts.uid
            && old.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            let actual = old.pointer("/metadata/uid").and_then(Value::as_str);
            return Err(ApiError::uid_precondition(
                kind,
                name,
                uid,
                actual.unwrap_or(""),
            ));
        }
        let out = match (kind == Kind::Pod)
            .then(|| plan_pod_grace(&old, opts.grace_period_seconds))
            .flatten()
        {
            Some(grace) => Ok(self.mark_deleting(ns, name, &old, grace)),
            None => self.delete_inner(kind, ns, name),
        };
        self.run_controllers();
        out
    }

    /// Sets (or shortens) a pod's `deletionTimestamp`; returns the pod as stored.
    fn mark_deleting(
        &mut self,
        ns: Option<&str>,
        name: &str,
        old: &Value,
        grace: i64,
    ) -> Arc<Value> {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let mut at = now + grace;
        if let Some(t) = old
            .pointer("/metadata/deletionTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        {
            // Never lengthened: the earlier end stands.
            at = at.min(t.as_second());
        }
        let left = (at - now).max(0);
        let mut v = old.clone();
        v["metadata"]["deletionTimestamp"] = json!(timestamp(at));
        let held = old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX);
        v["metadata"]["deletionGracePeriodSeconds"] = json!(left.min(held));
        if v == *old {
            return self
                .get(Kind::Pod, ns, name)
                .expect("the pod was read in this critical section");
        }
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        self.commit(Kind::Pod, key, v, "MODIFIED")
    }

    // ---------- inner write paths (used by controllers too) ----------

    pub(crate) fn create_inner(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        mut body: Value,
    ) -> ApiResult<Arc<Value>> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let ns = self.check_namespace(kind, ns, &body)?;
        if let Some(ns) = &ns {
            body["metadata"]["namespace"] = json!(ns);
        }
        let mut value = validate::admit(kind, &body, self.config.service_cidr)?;
        let name = match value.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match value
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
            {
                Some(g) if !g.is_empty() => {
                    let g = g.to_string();
                    let mut n;
                    loop {
                        n = format!("{g}{}", self.suffix());
                        if !self
                            .map(kind)
                            .contains_key(&(ns.clone().unwrap_or_default(), n.clone()))
                        {
                            break;
                        }
                    }
                    n
                }
                _ => {
                    return Err(ApiError::invalid(
                        kind,
                        "",
                        vec![Cause {
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            },
        };
        value["metadata"]["name"] = json!(name);
        if let Some(ns) = &ns
            && !self
                .map(Kind::Namespace)
                .contains_key(&(String::new(), ns.clone()))
        {
            return Err(ApiError::not_found(Kind::Namespace, ns));
        }
        let key = (ns.clone().unwrap_or_default(), name.clone());
        if self.map(kind).contains_key(&key) {
            return Err(ApiError::already_exists(kind, &name));
        }
        self.admit_kind(kind, &name, &mut value, None)?;
        let uid = self.uid();
        let meta = value["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("managedFields");
        Ok(self.commit(kind, key, value, "ADDED"))
    }

    pub(crate) fn update_inner(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
        status: bool,
    ) -> ApiResult<Arc<Value>> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let old = self.get(kind, ns, name)?;
        match body.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
            None => body["metadata"]["name"] = json!(name),
        }
        let ns = self.check_namespace(kind, ns, &body)?;
        if let Some(ns) = &ns {
            body["metadata"]["namespace"] = json!(ns);
        }
        if let Some(rv) = body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
            && Some(rv)
                != old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::conflict(kind, name));
        }
        let new = validate::admit(kind, &body, self.config.service_cidr)?;
        let mut value = if status {
            let mut v = (*old).clone();
            match new.get("status") {
                Some(s) => v["status"] = s.clone(),
                None => {
                    v.as_object_mut().expect("object").remove("status");
                }
            }
            v
        } else {
            let mut v = new;
            for f in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old["metadata"].get(f) {
                    Some(x) => v["metadata"][f] = x.clone(),
                    None => {
                        v["metadata"].as_object_mut().expect("object").remove(f);
                    }
                }
            }
            if kind.has_status() {
                match old.get("status") {
                    Some(s) => v["status"] = s.clone(),
                    None => {
                        v.as_object_mut().expect("object").remove("status");
                    }
                }
            }
            v["metadata"]
                .as_object_mut()
                .expect("object")
                .remove("managedFields");
            self.admit_kind(kind, name, &mut v, Some(&old))?;
            if v.get("spec") != old.get("spec") {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                v["metadata"]["generation"] = json!(g);
            }
            v
        };
        value["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if value == *old {
            return Ok(old);
        }
        let key = (ns.unwrap_or_default(), name.to_string());
        Ok(self.commit(kind, key, value, "MODIFIED"))
    }

    pub(crate) fn delete_inner(
        &mut self,
        kind: Kind,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<Arc<Value>> {
        let key = (ns.unwrap_or("").to_string(), name.to_string());
        if !self.map(kind).contains_key(&key) {
            return Err(ApiError::not_found(kind, name));
        }
        if kind == Kind::Namespace {
            for k in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                let names: Vec<String> = self
                    .map(k)
                    .range((name.to_string(), String::new())..)
                    .take_while(|((n, _), _)| n == name)
                    .map(|((_, o), _)| o.clone())
                    .collect();
                for o in names {
                    self.delete_inner(k, Some(name), &o)?;
                }
            }
        }
        let old = self
            .objects
            .get_mut(&kind)
            .expect("all kinds present")
            .remove(&key)
            .expect("checked above");
        self.rv += 1;
        let mut gone = (*old).clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let gone = Arc::new(gone);
        self.emit(kind, &key.0, "DELETED", gone.clone(), Some(old.clone()));
        self.dirty.push_back(Change {
            kind,
            ns: key.0,
            name: key.1,
            old: Some(old),
            new: None,
        });
        Ok(gone)
    }

    /// The object's namespace: from the path, checked against the body.
    fn check_namespace(
        &self,
        kind: Kind,
        ns: Option<&str>,
        body: &Value,
    ) -> ApiResult<Option<String>> {
        let in_body = body
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if !kind.namespaced() {
            return Ok(None);
        }
        let Some(ns) = ns else {
            return Err(ApiError::bad_request(format!(
                "{} is namespaced: use /namespaces/{{namespace}}/{}",
                kind.kind(),
                kind.plural()
            )));
        };
        if let Some(b) = in_body
            && b != ns
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({b}) does not match the namespace sent on the request ({ns})"
            )));
        }
        Ok(Some(ns.to_string()))
    }

    /// Kind-specific admission on create (`old` None) and update.
    fn admit_kind(
        &mut self,
        kind: Kind,
        name: &str,
        v: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        match kind {
            Kind::Namespace => {
                v["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                if old.is_none() {
                    v["status"] = json!({"phase": "Active"});
                }
            }
            Kind::Node => self.admit_node(name, v, old)?,
            Kind::Pod => {
                if old.is_none() {
                    v["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
                } else if let Some(o) = old {
                    let old_node = o
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let new_node = v
                        .pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if !old_node.is_empty() && old_node != new_node {
                        return Err(ApiError::invalid(
                            Kind::Pod,
                            name,
                            vec![Cause {
                                field: "spec.nodeName".into(),
                                message:
                                    "Forbidden: pod updates may not change the node of a bound pod"
                                        .into(),
                            }],
                        ));
                    }
                }
            }
            Kind::Service => {
                if old.is_none() {
                    v["status"] = json!({"loadBalancer": {}});
                }
                self.admit_service(name, v, old)?;
            }
            Kind::EndpointSlice | Kind::NetworkPolicy | Kind::Lease => {}
        }
        Ok(())
    }

    fn admit_node(&mut self, name: &str, v: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let get = |x: &Value| {
            x.pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let old_cidr = old.and_then(get);
        let new_cidr = get(v);
        let invalid = |m: String| {
            ApiError::invalid(
                Kind::Node,
                name,
                vec![Cause {
                    field: "spec.podCIDR".into(),
                    message: m,
                }],
            )
        };
        let cidr = match (old_cidr, new_cidr) {
            (Some(o), None) => o,
            (Some(o), Some(n)) if o == n => o,
            (Some(o), Some(n)) => {
                return Err(invalid(format!(
                    "Forbidden: node updates may not change podCIDR except from \"\" to valid (was {o}, got {n})"
                )));
            }
            (None, Some(n)) => {
                let net: IpNet = n
                    .parse()
                    .map_err(|_| invalid(format!("Invalid value: {n:?}: must be a CIDR")))?;
                if let Some(other) = self
                    .node_cidrs(name)
                    .into_iter()
                    .find(|u| u.contains(&net.network()) || net.contains(&u.network()))
                {
                    return Err(invalid(format!(
                        "Invalid value: {n:?}: overlaps the pod CIDR {other} of another node"
                    )));
                }
                n
            }
            // Without allocation (kube-controller-manager's --allocate-node-cidrs=false) a
            // node keeps no pod CIDR until a client sets one.
            (None, None) if !self.config.allocate_node_cidrs => return Ok(()),
            (None, None) => {
                let used = self.node_cidrs(name);
                match podnet_cluster::plan_pod_cidr(
                    self.config.cluster_cidr,
                    self.config.node_cidr_prefix,
                    &used,
                ) {
                    Ok(c) => c.to_string(),
                    Err(e) => {
                        tracing::warn!(node = name, error = %e, "no pod CIDR for node");
                        return Ok(());
                    }
                }
            }
        };
        v["spec"]["podCIDR"] = json!(cidr);
        v["spec"]["podCIDRs"] = json!([cidr]);
        Ok(())
    }

    fn node_cidrs(&self, except: &str) -> Vec<IpNet> {
        self.map(Kind::Node)
            .iter()
            .filter(|((_, n), _)| n != except)
            .filter_map(|(_, v)| {
                v.pointer("/spec/podCIDR")
                    .and_then(Value::as_str)?
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn admit_service(&mut self, name: &str, v: &mut Value, old: Option<&Value>) -> ApiResult<()> {
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut svc: Service =
            serde_json::from_value(v.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
        let old_svc: Option<Service> = old.and_then(|o| serde_json::from_value(o.clone()).ok());
        let old_spec = old_svc
            .as_ref()
            .and_then(|s| s.spec.clone())
            .unwrap_or_default();
        let (mut used_ips, mut used_ports) = (BTreeSet::<IpAddr>::new(), BTreeSet::<u16>::new());
        for ((n_ns, n), other) in self.map(Kind::Service) {
            if *n_ns == ns && n == name {
                continue;
            }
            if let Some(ip) = other
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
            {
                used_ips.insert(ip);
            }
            for p in other
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                    used_ports.insert(np as u16);
                }
            }
            // Health check node ports share the node-port range (one allocator upstream).
            if let Some(hc) = other
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_u64)
            {
                used_ports.insert(hc as u16);
            }
        }
        let needs_hc = podnet_cluster::needs_health_check_node_port(&svc);
        let mut causes = Vec::new();
        let spec = svc.spec.get_or_insert_with(Default::default);
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        if ty == "ExternalName" {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        } else {
            let want = spec.cluster_ip.clone().filter(|s| !s.is_empty());
            let had = old_spec.cluster_ip.clone().filter(|s| !s.is_empty());
            let ip = match (had, want) {
                (Some(h), None) => h,
                (Some(h), Some(w)) if h == w => h,
                (Some(h), Some(w)) => {
                    causes.push(Cause {
                        field: "spec.clusterIP".into(),
                        message: format!("Invalid value: {w:?}: field is immutable (was {h})"),
                    });
                    h
                }
                (None, Some(w)) => {
                    if w != "None" && w.parse().is_ok_and(|a: IpAddr| used_ips.contains(&a)) {
                        causes.push(Cause {
                            field: "spec.clusterIP".into(),
                            message: format!(
                                "Invalid value: {w:?}: provided IP is already allocated"
                            ),
                        });
                    }
                    w
                }
                (None, None) => {
                    match podnet_cluster::plan_cluster_ip(self.config.service_cidr, &used_ips) {
                        Some(a) => a.to_string(),
                        None => {
                            causes.push(Cause { field: "spec.clusterIP".into(), message: format!("Internal error: failed to allocate a serviceIP: range {} is full", self.config.service_cidr) });
                            String::new()
                        }
                    }
                }
            };
            spec.cluster_ips = Some(vec![ip.clone()]);
            spec.cluster_ip = Some(ip);
        }
        let wants_node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
        let (lo, hi) = self.config.node_port_range;
        let mut mine = BTreeSet::new();
        for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
            if !wants_node_ports {
                p.node_port = None;
                continue;
            }
            let field = format!("spec.ports[{i}].nodePort");
            let np = match p.node_port.filter(|n| *n != 0) {
                Some(n) => {
                    let prev = old_spec
                        .ports
                        .iter()
                        .flatten()
                        .any(|o| o.node_port == Some(n));
                    if !(i32::from(lo)..=i32::from(hi)).contains(&n) {
                        causes.push(Cause { field, message: format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}") });
                    } else if !prev && used_ports.contains(&(n as u16)) {
                        causes.push(Cause {
                            field,
                            message: format!(
                                "Invalid value: {n}: provided port is already allocated"
                            ),
                        });
                    }
                    n
                }
                None => {
                    let reuse = old_spec
                        .ports
                        .iter()
                        .flatten()
                        .find(|o| o.port == p.port && o.protocol == p.protocol)
                        .and_then(|o| o.node_port)
                        .filter(|n| !mine.contains(&(*n as u16)));
                    match reuse {
                        Some(n) => n,
                        None => {
                            let all: BTreeSet<u16> = used_ports.union(&mine).copied().collect();
                            match podnet_cluster::plan_node_port((lo, hi), &all) {
                                Some(n) => i32::from(n),
                                None => {
                                    causes.push(Cause {
                                        field,
                                        message: format!(
                                            "Internal error: node port range {lo}-{hi} is full"
                                        ),
                                    });
                                    0
                                }
                            }
                        }
                    }
                }
            };
            if np > 0 && !mine.insert(np as u16) {
                causes.push(Cause {
                    field: format!("spec.ports[{i}].nodePort"),
                    message: format!("Duplicate value: {np}"),
                });
            }
            p.node_port = Some(np);
        }
        spec.health_check_node_port = admit_health_check_node_port(
            needs_hc,
            spec.health_check_node_port.filter(|n| *n != 0),
            old_spec.health_check_node_port.filter(|n| *n != 0),
            (lo, hi),
            &used_ports,
            &mine,
            &mut causes,
        );
        if !causes.is_empty() {
            return Err(ApiError::invalid(Kind::Service, name, causes));
        }
        let status = v.get("status").cloned();
        *v = serde_json::to_value(&svc).map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(s) = status {
            v["status"] = s;
        }
        Ok(())
    }
}

/// `spec.healthCheckNodePort`, as the real API server allocates it: only for type
/// LoadBalancer with `externalTrafficPolicy: Local`; kept across updates that leave it out;
/// a user's port accepted when in the node-port range and free (`used`: every other
/// Service's node ports and health check ports; `mine`: this Service's node ports); dropped
/// when no longer needed (a port newly given then is refused, as upstream).
fn admit_health_check_node_port(
    needed: bool,
    given: Option<i32>,
    had: Option<i32>,
    (lo, hi): (u16, u16),
    used: &BTreeSet<u16>,
    mine: &BTreeSet<u16>,
    causes: &mut Vec<Cause>,
) -> Option<i32> {
    const FIELD: &str = "spec.healthCheckNodePort";
    let mut refuse = |message: String| {
        causes.push(Cause {
            field: FIELD.into(),
            message,
        })
    };
    if !needed {
        if let Some(n) = given.filter(|n| Some(*n) != had) {
            refuse(format!(
                "Invalid value: {n}: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
            ));
        }
        return None;
    }
    let taken = |n: i32| u16::try_from(n).is_ok_and(|n| used.contains(&n) || mine.contains(&n));
    match given.or(had) {
        Some(n) if !(i32::from(lo)..=i32::from(hi)).contains(&n) => {
            refuse(format!(
                "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"
            ));
            Some(n)
        }
        Some(n) if taken(n) => {
            refuse(format!(
                "Invalid value: {n}: provided port is already allocated"
            ));
            Some(n)
        }
        Some(n) => Some(n),
        None => {
            let all: BTreeSet<u16> = used.union(mine).copied().collect();
            match podnet_cluster::plan_node_port((lo, hi), &all) {
                Some(n) => Some(i32::from(n)),
                None => {
                    refuse(format!("Internal error: node port range {lo}-{hi} is full"));
                    None
                }
            }
        }
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// RFC 3339 timestamp, seconds precision (as metav1.Time).
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    timestamp(secs as i64)
}

/// RFC 3339 form of `secs` since the epoch.
fn timestamp(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Pure: the grace period a DELETE of `pod` gets, as upstream's pod strategy decides it
/// (`CheckGracefulDelete`): the request's, else the pod's `terminationGracePeriodSeconds`,
/// else 30; 0 for a pod bound to no node or already Succeeded/Failed; a negative one is 1.
/// `None` means "delete now" (grace 0).
fn plan_pod_grace(pod: &Value, requested: Option<i64>) -> Option<i64> {
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || terminal {
        return None;
    }
    let grace = requested
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    match grace {
        0 => None,
        g if g < 0 => Some(1),
        g => Some(g),
    }
}

/// Labels of a stored object.
pub fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl Store {
    /// A controller's write of an object it read from the store (no admission).
    pub(crate) fn commit_internal(&mut self, kind: Kind, ns: &str, name: &str, value: Value) {
        self.commit(kind, (ns.to_string(), name.to_string()), value, "MODIFIED");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_service_points_at_the_advertised_address() {
        let s = Store::new(Config {
            advertise: Some("172.18.0.2:6443".parse().unwrap()),
            ..Config::default()
        });
        let svc = s.get(Kind::Service, Some("default"), "kubernetes").unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0]["port"], 443);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
        assert!(svc["spec"].get("selector").is_none_or(Value::is_null));
        let slice = s
            .get(Kind::EndpointSlice, Some("default"), "kubernetes")
            .unwrap();
        assert_eq!(slice["endpoints"][0]["addresses"][0], "172.18.0.2");
        assert_eq!(slice["ports"][0]["port"], 6443);
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            "kubernetes"
        );
        let plain = Store::new(Config::default());
        assert!(
            plain
                .get(Kind::Service, Some("default"), "kubernetes")
                .is_err()
        );
    }

    fn lease(name: &str, holder: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"podnet.io/claim": "pod-cidr"}},
               "spec": {"holderIdentity": holder}})
    }

    /// Claims are only as safe as these answers: a second create of a name is 409
    /// AlreadyExists and changes nothing; an update carrying an older resourceVersion is
    /// 409 Conflict and changes nothing; the current one (or none) goes through.
    #[test]
    fn leases_conflict_on_create_and_on_a_stale_update() {
        let mut s = Store::new(Config::default());
        let first = s
            .create(
                Kind::Lease,
                Some("kube-system"),
                lease("podcidr-a", "node-1"),
            )
            .unwrap();
        assert_eq!(first["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(first["kind"], "Lease");
        let rv = s.rv;
        let e = s
            .create(
                Kind::Lease,
                Some("kube-system"),
                lease("podcidr-a", "node-2"),
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let status = e.to_status();
        assert_eq!(
            status["message"],
            "leases.coordination.k8s.io \"podcidr-a\" already exists"
        );
        assert_eq!(status["details"]["group"], "coordination.k8s.io");
        assert_eq!(status["details"]["kind"], "leases");
        assert_eq!(status["details"]["name"], "podcidr-a");
        assert_eq!(s.rv, rv, "a refused create is no write");

        // Two writers read the same version; the first update wins, the second conflicts.
        let seen = first["metadata"]["resourceVersion"].clone();
        let mut a = (*first).clone();
        a["spec"]["holderIdentity"] = json!("node-3");
        let mut b = (*first).clone();
        b["spec"]["holderIdentity"] = json!("node-4");
        let won = s
            .update(Kind::Lease, Some("kube-system"), "podcidr-a", a, false)
            .unwrap();
        assert_ne!(won["metadata"]["resourceVersion"], seen);
        let rv = s.rv;
        let e = s
            .update(Kind::Lease, Some("kube-system"), "podcidr-a", b, false)
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        assert_eq!(
            e.to_status()["message"],
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"podcidr-a\": the object has been modified; please apply your changes to the latest version and try again"
        );
        assert_eq!(s.rv, rv, "a refused update is no write");
        let held = s
            .get(Kind::Lease, Some("kube-system"), "podcidr-a")
            .unwrap();
        assert_eq!(held["spec"]["holderIdentity"], "node-3");

        // A merge patch carrying a stale resourceVersion conflicts as well.
        let e = s
            .patch(
                Kind::Lease,
                Some("kube-system"),
                "podcidr-a",
                "application/merge-patch+json",
                &json!({"metadata": {"resourceVersion": seen}, "spec": {"holderIdentity": "x"}}),
                false,
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
        // Without a resourceVersion an update is unconditional (as upstream for Leases).
        let mut c = (*held).clone();
        c["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        c["spec"]["holderIdentity"] = json!("node-5");
        s.update(Kind::Lease, Some("kube-system"), "podcidr-a", c, false)
            .unwrap();

        let e = s
            .create(
                Kind::Lease,
                Some("kube-system"),
                json!({"metadata": {"name": "bad"},
                       "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            field_of(&e),
            ["spec.leaseDurationSeconds", "spec.leaseTransitions"]
        );
        assert!(
            s.create(Kind::Lease, Some("nowhere"), lease("x", "n"))
                .is_err_and(|e| e.code == 404)
        );
    }

    #[test]
    fn node_cidrs_are_not_allocated_when_allocation_is_off() {
        let mut s = Store::new(Config {
            allocate_node_cidrs: false,
            ..Config::default()
        });
        let n = s
            .create(Kind::Node, None, json!({"metadata": {"name": "a"}}))
            .unwrap();
        assert!(n.pointer("/spec/podCIDR").is_none(), "{n}");
        // A client may still set one; overlaps are still refused.
        let mut v = (*n).clone();
        v["spec"]["podCIDR"] = json!("10.244.7.0/24");
        let n = s.update(Kind::Node, None, "a", v, false).unwrap();
        assert_eq!(n["spec"]["podCIDRs"], json!(["10.244.7.0/24"]));
        let e = s
            .create(
                Kind::Node,
                None,
                json!({"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.7.0/25"}}),
            )
            .unwrap_err();
        assert_eq!(e.code, 422);
        let on = Store::new(Config::default())
            .create(Kind::Node, None, json!({"metadata": {"name": "a"}}))
            .unwrap();
        assert_eq!(on["spec"]["podCIDR"], "10.244.0.0/24");
    }

    #[test]
    fn pod_grace_as_upstream_decides_it() {
        let pod = |node: &str, phase: &str, spec_grace: Option<i64>| {
            json!({"spec": {"nodeName": node, "terminationGracePeriodSeconds": spec_grace},
                   "status": {"phase": phase}})
        };
        assert_eq!(plan_pod_grace(&pod("n", "Running", None), None), Some(30));
        assert_eq!(plan_pod_grace(&pod("n", "Running", Some(7)), None), Some(7));
        assert_eq!(
            plan_pod_grace(&pod("n", "Running", Some(7)), Some(3)),
            Some(3)
        );
        assert_eq!(
            plan_pod_grace(&pod("n", "Running", Some(7)), Some(-5)),
            Some(1)
        );
        assert_eq!(plan_pod_grace(&pod("n", "Running", Some(7)), Some(0)), None);
        assert_eq!(plan_pod_grace(&pod("n", "Running", Some(0)), None), None);
        assert_eq!(plan_pod_grace(&pod("", "Pending", None), Some(9)), None);
        assert_eq!(plan_pod_grace(&pod("n", "Succeeded", None), None), None);
        assert_eq!(plan_pod_grace(&json!({"spec": {}}), None), None);
    }

    #[test]
    fn graceful_pod_deletion_marks_shortens_and_finishes() {
        let mut s = Store::new(Config::default());
        let spec = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n",
            "terminationGracePeriodSeconds": 20, "containers": [{"name": "c", "image": "i"}]}});
        s.create(Kind::Pod, Some("default"), spec).unwrap();
        let grace = |g| DeleteOptions {
            grace_period_seconds: g,
            uid: None,
        };
        let v = s
            .delete_with(Kind::Pod, Some("default"), "p", &grace(None))
            .unwrap();
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], json!(20));
        let at = v["metadata"]["deletionTimestamp"].clone();
        let rv = s.rv;
        // Longer: nothing changes, not even the revision.
        let v = s
            .delete_with(Kind::Pod, Some("default"), "p", &grace(Some(60)))
            .unwrap();
        assert_eq!((v["metadata"]["deletionTimestamp"].clone(), s.rv), (at, rv));
        let v = s
            .delete_with(Kind::Pod, Some("default"), "p", &grace(Some(2)))
            .unwrap();
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], json!(2));
        s.delete_with(Kind::Pod, Some("default"), "p", &grace(Some(0)))
            .unwrap();
        assert!(s.get(Kind::Pod, Some("default"), "p").is_err());
        // A Service is deleted at once whatever the grace.
        service(&mut s, "svc", json!({"ports": [{"port": 80}]})).unwrap();
        s.delete_with(Kind::Service, Some("default"), "svc", &grace(Some(30)))
            .unwrap();
        assert!(s.get(Kind::Service, Some("default"), "svc").is_err());
    }

    #[test]
    fn history_replays_and_expires() {
        let mut s = Store::new(Config::default());
        let start = s.rv;
        let ev = s.events_since(0).unwrap();
        assert_eq!(ev.len() as u64, start, "one event per write");
        s.create(Kind::Namespace, None, json!({"metadata": {"name": "a"}}))
            .unwrap();
        let later = s.events_since(start).unwrap();
        assert_eq!((later.len(), later[0].type_), (1, "ADDED"));
        assert!(later[0].line.ends_with(b"}\n"));
        // A no-op update is not a write.
        let cur = s.get(Kind::Namespace, None, "a").unwrap();
        s.update(Kind::Namespace, None, "a", (*cur).clone(), false)
            .unwrap();
        assert_eq!(s.rv, start + 1);
        for i in 0..HISTORY {
            s.patch(
                Kind::Namespace,
                None,
                "a",
                "application/merge-patch+json",
                &json!({"metadata": {"labels": {"i": i.to_string()}}}),
                false,
            )
            .unwrap();
        }
        assert!(
            s.events_since(start).is_none(),
            "older than the history: 410"
        );
        assert_eq!(s.events_since(s.rv - 1).unwrap().len(), 1);
    }

    fn service(s: &mut Store, name: &str, spec: Value) -> ApiResult<Arc<Value>> {
        s.create(
            Kind::Service,
            Some("default"),
            json!({"metadata": {"name": name}, "spec": spec}),
        )
    }

    fn lb_local(extra: Value) -> Value {
        let mut spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]});
        if let (Some(m), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        spec
    }

    fn field_of(e: &ApiError) -> Vec<&str> {
        e.causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn health_check_node_port_allocated_kept_refused_and_dropped() {
        let mut s = Store::new(Config::default());
        let a = service(&mut s, "a", lb_local(json!({}))).unwrap();
        let hc = a["spec"]["healthCheckNodePort"]
            .as_u64()
            .expect("allocated");
        let np = a["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&hc));
        assert_ne!(hc, np, "never one of the Service's node ports");
        // An update leaving it out keeps it.
        // (Re-read: the load-balancer controller wrote its status since.)
        let mut body = (*s.get(Kind::Service, Some("default"), "a").unwrap()).clone();
        body["spec"]
            .as_object_mut()
            .unwrap()
            .remove("healthCheckNodePort");
        body["metadata"]["labels"] = json!({"x": "y"});
        let a2 = s
            .update(Kind::Service, Some("default"), "a", body, false)
            .unwrap();
        assert_eq!(a2["spec"]["healthCheckNodePort"].as_u64(), Some(hc));
        // Nobody else gets it, as a node port or as a health check port.
        let b = service(&mut s, "b", lb_local(json!({}))).unwrap();
        let b_ports = [
            b["spec"]["healthCheckNodePort"].as_u64().unwrap(),
            b["spec"]["ports"][0]["nodePort"].as_u64().unwrap(),
        ];
        assert!(
            !b_ports.contains(&hc) && !b_ports.contains(&np),
            "{b_ports:?}"
        );
        let e = service(&mut s, "c", lb_local(json!({"healthCheckNodePort": hc}))).unwrap_err();
        assert_eq!(
            (e.code, field_of(&e)),
            (422, vec!["spec.healthCheckNodePort"])
        );
        assert!(e.message.contains("already allocated"), "{}", e.message);
        let e = service(
            &mut s,
            "c",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}),
        )
        .unwrap_err();
        assert_eq!(field_of(&e), vec!["spec.ports[0].nodePort"]);
        let e = service(&mut s, "c", lb_local(json!({"healthCheckNodePort": 80}))).unwrap_err();
        assert!(
            e.message.contains("not in the valid range"),
            "{}",
            e.message
        );
        // A user's free port in range is taken as given.
        let c = service(&mut s, "c", lb_local(json!({"healthCheckNodePort": 32000}))).unwrap();
        assert_eq!(c["spec"]["healthCheckNodePort"], json!(32000));
        // Not needed any more (Cluster policy): dropped, and free for others.
        s.patch(
            Kind::Service,
            Some("default"),
            "c",
            "application/merge-patch+json",
            &json!({"spec": {"externalTrafficPolicy": "Cluster"}}),
            false,
        )
        .unwrap();
        let c = s.get(Kind::Service, Some("default"), "c").unwrap();
        assert!(c["spec"].get("healthCheckNodePort").is_none(), "{c}");
        service(&mut s, "d", lb_local(json!({"healthCheckNodePort": 32000}))).unwrap();
        // Given where it has no meaning: refused.
        let e = service(
            &mut s,
            "e",
            json!({"type": "NodePort", "healthCheckNodePort": 32001, "ports": [{"port": 80}]}),
        )
        .unwrap_err();
        assert_eq!(field_of(&e), vec!["spec.healthCheckNodePort"]);
    }

    fn ingress(s: &Store, name: &str) -> Vec<String> {
        s.get(Kind::Service, Some("default"), name)
            .unwrap()
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|i| i["ip"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn load_balancer_ips_from_the_pool() {
        let mut s = Store::new(Config {
            load_balancer_pool: Some("172.18.255.0/30".parse().unwrap()),
            ..Config::default()
        });
        let lb = |extra: Value| {
            let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec
        };
        service(&mut s, "a", lb(json!({}))).unwrap();
        assert_eq!(ingress(&s, "a"), ["172.18.255.1"]);
        // Asked for, in the pool and free: given.
        service(&mut s, "b", lb(json!({"loadBalancerIP": "172.18.255.2"}))).unwrap();
        assert_eq!(ingress(&s, "b"), ["172.18.255.2"]);
        // Asked for but taken, or outside the pool: none.
        service(&mut s, "c", lb(json!({"loadBalancerIP": "172.18.255.2"}))).unwrap();
        assert!(ingress(&s, "c").is_empty());
        service(&mut s, "d", lb(json!({"loadBalancerIP": "172.18.0.11"}))).unwrap();
        assert!(ingress(&s, "d").is_empty());
        // Another implementation's Services and other types are left alone.
        service(
            &mut s,
            "e",
            lb(json!({"loadBalancerClass": "example.com/lb"})),
        )
        .unwrap();
        assert!(ingress(&s, "e").is_empty());
        service(&mut s, "f", json!({"ports": [{"port": 80}]})).unwrap();
        assert!(ingress(&s, "f").is_empty());
        // b goes: its address goes to c, which waited for it.
        s.delete(Kind::Service, Some("default"), "b").unwrap();
        assert_eq!(ingress(&s, "c"), ["172.18.255.2"]);
        // The pool (2 addresses) is full: a new one waits; a type change frees one.
        service(&mut s, "g", lb(json!({}))).unwrap();
        assert!(ingress(&s, "g").is_empty());
        s.patch(
            Kind::Service,
            Some("default"),
            "a",
            "application/merge-patch+json",
            &json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": null,
                "ports": [{"port": 80}]}}),
            false,
        )
        .unwrap();
        assert!(ingress(&s, "a").is_empty());
        assert_eq!(ingress(&s, "g"), ["172.18.255.1"]);
        // Updates keep the address; never one address twice.
        s.patch(
            Kind::Service,
            Some("default"),
            "g",
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"x": "y"}}}),
            false,
        )
        .unwrap();
        assert_eq!(ingress(&s, "g"), ["172.18.255.1"]);
        let all: Vec<String> = ["a", "c", "d", "e", "f", "g"]
            .iter()
            .flat_map(|n| ingress(&s, n))
            .collect();
        let unique: BTreeSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "{all:?}");
    }
}
