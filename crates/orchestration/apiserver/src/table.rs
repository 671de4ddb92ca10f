//! Orchestration: `meta.k8s.io/v1` Table output (what kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), plus the discovery documents.
//! Invariant: every row carries the object's metadata as PartialObjectMetadata, as the real
//! server does (kubectl needs it for the NAMESPACE column of `-A`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::resource::Kind;

fn col(name: &str, format: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": name, "priority": 0})
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn or_none(x: &str) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x.into()
    }
}

pub fn age(v: &Value) -> String {
    let Ok(t) = s(v, "/metadata/creationTimestamp").parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let secs = (now - t.as_second()).max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn columns(kind: Kind) -> Vec<Value> {
    let names: &[&str] = match kind {
        Kind::Pod => &["Name", "Ready", "Status", "IP", "Node", "Age"],
        Kind::Node => &["Name", "Status", "Pod-CIDR", "Internal-IP", "Age"],
        Kind::Service => &["Name", "Type", "Cluster-IP", "Ports", "Age"],
        Kind::Lease => &["Name", "Holder", "Age"],
        _ => &["Name", "Age"],
    };
    names
        .iter()
        .map(|n| col(n, if *n == "Name" { "name" } else { "" }))
        .collect()
}

fn cells(kind: Kind, v: &Value) -> Vec<Value> {
    let name = s(v, "/metadata/name").to_string();
    let cells: Vec<String> = match kind {
        Kind::Pod => {
            let total = v
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = v
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .map_or(0, |cs| cs.iter().filter(|c| c["ready"] == true).count());
            let status = if v.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_string()
            } else {
                or_none(s(v, "/status/phase"))
            };
            vec![
                name,
                format!("{ready}/{total}"),
                status,
                or_none(s(v, "/status/podIP")),
                or_none(s(v, "/spec/nodeName")),
                age(v),
            ]
        }
        Kind::Node => {
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True");
            let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
            if v.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let ip = v
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                .and_then(|x| x["address"].as_str())
                .unwrap_or("");
            vec![
                name,
                status,
                or_none(s(v, "/spec/podCIDR")),
                or_none(ip),
                age(v),
            ]
        }
        Kind::Service => {
            let ports: Vec<String> = v
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{}:{np}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            let ip = match s(v, "/spec/type") {
                "ExternalName" => s(v, "/spec/externalName"),
                _ => s(v, "/spec/clusterIP"),
            };
            vec![
                name,
                s(v, "/spec/type").to_string(),
                or_none(ip),
                or_none(&ports.join(",")),
                age(v),
            ]
        }
        Kind::Lease => vec![name, s(v, "/spec/holderIdentity").to_string(), age(v)],
        _ => vec![name, age(v)],
    };
    cells.into_iter().map(Value::String).collect()
}

pub fn partial_metadata(v: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": v.get("metadata").cloned().unwrap_or(json!({}))})
}

pub fn table<'a>(kind: Kind, objs: impl IntoIterator<Item = &'a Value>, rv: u64) -> Value {
    let rows: Vec<Value> = objs
        .into_iter()
        .map(|o| json!({"cells": cells(kind, o), "object": partial_metadata(o)}))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns(kind),
        "rows": rows,
    })
}

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "34", "gitVersion": "v1.34.0-podnet", "gitCommit": "podnet",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "rust",
        "compiler": "rustc", "platform": "linux/amd64"
    })
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn group(name: &str) -> Value {
    let gv = format!("{name}/v1");
    json!({"name": name, "versions": [{"groupVersion": gv, "version": "v1"}], "preferredVersion": {"groupVersion": gv, "version": "v1"}})
}

pub fn api_group(name: &str) -> Option<Value> {
    Kind::groups().contains(&name).then(|| {
        let mut g = group(name);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": Kind::groups().iter().map(|g| group(g)).collect::<Vec<_>>()})
}

pub fn resource_list(group: &str) -> Option<Value> {
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| k.group() == group)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for k in kinds {
        let mut r = json!({
            "name": k.plural(), "singularName": k.singular(), "namespaced": k.namespaced(),
            "kind": k.kind(), "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        });
        if !k.short_names().is_empty() {
            r["shortNames"] = json!(k.short_names());
        }
        if matches!(k, Kind::Pod | Kind::Service) {
            r["categories"] = json!(["all"]);
        }
        resources.push(r);
        if k.has_status() {
            resources.push(json!({
                "name": format!("{}/status", k.plural()), "singularName": "", "namespaced": k.namespaced(),
                "kind": k.kind(), "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        "v1".to_string()
    } else {
        format!("{group}/v1")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}
