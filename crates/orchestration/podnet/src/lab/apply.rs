//! Orchestration: `lab apply -f` / `lab delete -f` — ordinary multi-document Kubernetes
//! YAML against the lab's API.
//!
//! Every document is checked before anything is sent: kind served by the lab, name
//! present, and the whole object decoded into its Kubernetes type so a wrong field type or
//! value is reported with its path (`Pod default/web: spec.containers[0].ports[0]…`). One
//! bad document means nothing is applied. The API server validates again (semantics such as
//! port ranges and CIDRs); apply then stops at the first refusal and names the object.

use anyhow::{Context, Result, bail};
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::ApiResource;
use serde_json::Value;

/// A document of a manifest, checked.
#[derive(Debug)]
pub struct Doc {
    pub ar: ApiResource,
    pub namespaced: bool,
    pub namespace: String,
    pub name: String,
    pub object: Value,
}

impl Doc {
    fn describe(&self) -> String {
        if self.namespaced {
            format!("{} {}/{}", self.ar.kind, self.namespace, self.name)
        } else {
            format!("{} {}", self.ar.kind, self.name)
        }
    }

    fn api(&self, c: &kube::Client) -> Api<DynamicObject> {
        if self.namespaced {
            Api::namespaced_with(c.clone(), &self.namespace, &self.ar)
        } else {
            Api::all_with(c.clone(), &self.ar)
        }
    }
}

/// (group, version, kind) → (plural, namespaced) for what the lab serves.
fn resource(api_version: &str, kind: &str) -> Option<(&'static str, bool)> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => ("namespaces", false),
        ("v1", "Node") => ("nodes", false),
        ("v1", "Pod") => ("pods", true),
        ("v1", "Service") => ("services", true),
        ("discovery.k8s.io/v1", "EndpointSlice") => ("endpointslices", true),
        ("networking.k8s.io/v1", "NetworkPolicy") => ("networkpolicies", true),
        _ => return None,
    })
}

fn typed_check<T: serde::de::DeserializeOwned>(v: &Value) -> std::result::Result<(), String> {
    serde_path_to_error::deserialize::<_, T>(v.clone())
        .map(drop)
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

/// Parses and checks every document of a manifest.
pub fn parse(text: &str) -> Result<Vec<Doc>> {
    use k8s_openapi::api::core::v1 as core;
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("manifest is not YAML")?;
    let mut out = Vec::new();
    for (i, v) in docs.into_iter().enumerate() {
        if v.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let at = format!("document {}", i + 1);
        let api_version = v["apiVersion"]
            .as_str()
            .with_context(|| format!("{at}: no apiVersion"))?;
        let kind = v["kind"]
            .as_str()
            .with_context(|| format!("{at}: no kind"))?;
        let name = v["metadata"]["name"]
            .as_str()
            .with_context(|| format!("{at} ({kind}): no metadata.name"))?
            .to_string();
        let (plural, namespaced) = resource(api_version, kind).with_context(|| {
            format!("{at}: {api_version} {kind} {name} is not served by the lab (Namespace, Node, Pod, Service, EndpointSlice, NetworkPolicy)")
        })?;
        let namespace = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let checked = match kind {
            "Namespace" => typed_check::<core::Namespace>(&v),
            "Node" => typed_check::<core::Node>(&v),
            "Pod" => typed_check::<core::Pod>(&v),
            "Service" => typed_check::<core::Service>(&v),
            "EndpointSlice" => typed_check::<k8s_openapi::api::discovery::v1::EndpointSlice>(&v),
            _ => typed_check::<k8s_openapi::api::networking::v1::NetworkPolicy>(&v),
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let doc = Doc {
            ar: ApiResource::from_gvk_with_plural(&gvk, plural),
            namespaced,
            namespace,
            name,
            object: v,
        };
        if let Err(e) = checked {
            bail!("{at}: {}: {e}", doc.describe());
        }
        out.push(doc);
    }
    Ok(out)
}

/// Creates each object, or replaces it when it exists.
pub async fn apply(c: &kube::Client, text: &str) -> Result<()> {
    for doc in parse(text)? {
        let api = doc.api(c);
        let mut obj: DynamicObject = serde_json::from_value(doc.object.clone())?;
        if doc.namespaced {
            obj.metadata.namespace = Some(doc.namespace.clone());
        }
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => println!("{} created", doc.describe()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let current = api.get(&doc.name).await?;
                obj.metadata.resource_version = current.metadata.resource_version;
                api.replace(&doc.name, &PostParams::default(), &obj)
                    .await
                    .map_err(|e| refused(&doc, e))?;
                println!("{} configured", doc.describe());
            }
            Err(e) => return Err(refused(&doc, e)),
        }
    }
    Ok(())
}

/// Deletes each object; one already gone is reported, not an error.
pub async fn delete(c: &kube::Client, text: &str) -> Result<()> {
    for doc in parse(text)? {
        match doc.api(c).delete(&doc.name, &DeleteParams::default()).await {
            Ok(_) => println!("{} deleted", doc.describe()),
            Err(kube::Error::Api(e)) if e.code == 404 => println!("{} not found", doc.describe()),
            Err(e) => return Err(refused(&doc, e)),
        }
    }
    Ok(())
}

fn refused(doc: &Doc, e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => {
            anyhow::anyhow!("{}: refused by the API: {}", doc.describe(), s.message)
        }
        e => anyhow::Error::new(e).context(doc.describe()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_workload_parses() {
        let docs = parse(include_str!("workload.yaml")).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d.ar.plural.as_str()).collect();
        assert_eq!(kinds, [&["pods"; 6][..], &["services"; 2]].concat());
        assert!(docs.iter().all(|d| d.namespace == "default"));
    }

    #[test]
    fn bad_documents_name_the_object_and_field() {
        let e = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: [{name: a, image: b}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: c\n    image: podnet/echo\n    ports: [{containerPort: eighty}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("document 2"), "{e}");
        assert!(e.contains("Pod default/web"), "{e}");
        assert!(
            e.contains("spec.containers[0].ports[0].containerPort"),
            "{e}"
        );
        let e = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not served"), "{e}");
        let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata.name"), "{e}");
    }
}
