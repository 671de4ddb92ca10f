//! Orchestration: the OpenAPI documents kubectl asks for before it writes, so `kubectl create`
//! works with its default validation (no `--validate=false`).
//!
//! What each kubectl generation does with them, and what is served for it:
//! - kubectl ≥ 1.27 (`--validate=strict` by default) reads `/openapi/v3`, then the group
//!   version's document, and looks for a `fieldValidation` query parameter on the PATCH
//!   operation tagged with the kind's `x-kubernetes-group-version-kind`. Found, it leaves
//!   validation to the server (`?fieldValidation=Strict`), which this server performs
//!   (`validate::unknown_fields`). So the v3 documents carry exactly that: one path per kind
//!   with its PATCH operation and the parameter — no schemas, since the server validates.
//! - kubectl 1.20 (Debian's kubernetes-client) validates on the client side from
//!   `/openapi/v2`, fetched as gnostic protobuf; a kind without a definition in it is not
//!   validated client side ("resource is not present, let's just skip validation"), so a
//!   minimal document (swagger 2.0, info, no definitions) lets it create, and the server's
//!   own decoding still names a wrong field's path.
//!
//! The real kube-apiserver publishes full schemas (several MB); kubectl needs none of them
//! to create, get and delete, and the server's validation is the authority either way.

use serde_json::{Value, json};

use crate::resource::Kind;

/// The group-version path of a kind in the v3 index: `api/v1`, `apis/GROUP/v1`.
fn gv_path(kind: Kind) -> String {
    match kind.group() {
        "" => "api/v1".to_string(),
        g => format!("apis/{g}/v1"),
    }
}

/// Documents change only with the code: one constant hash lets kubectl cache them.
const HASH: &str = concat!("podnet-", env!("CARGO_PKG_VERSION"));

/// `GET /openapi/v3`: the index of group-version documents.
pub fn v3_index() -> Value {
    let mut paths = serde_json::Map::new();
    for kind in Kind::ALL {
        let gv = gv_path(kind);
        let url = format!("/openapi/v3/{gv}?hash={HASH}");
        paths.insert(gv, json!({ "serverRelativeURL": url }));
    }
    json!({ "paths": paths })
}

/// `GET /openapi/v3/<gv>`: one PATCH operation per kind of that group version, declaring
/// the `fieldValidation` query parameter. `None` for a group version not served.
pub fn v3_group_version(gv: &str) -> Option<Value> {
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| gv_path(*k) == gv)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for kind in kinds {
        let path = if kind.namespaced() {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", kind.plural())
        } else {
            format!("/{gv}/{}/{{name}}", kind.plural())
        };
        let op = json!({
            "operationId": format!("patch{}", kind.kind()),
            "x-kubernetes-group-version-kind": {
                "group": kind.group(), "version": "v1", "kind": kind.kind()
            },
            "parameters": [
                { "name": "fieldValidation", "in": "query", "schema": { "type": "string" },
                  "description": "Strict, Warn or Ignore: what the server does with unknown fields" }
            ],
            "responses": { "200": { "description": "OK" } }
        });
        paths.insert(path, json!({ "patch": op }));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "podnet lab control plane", "version": "v1" },
        "paths": paths,
        "components": {}
    }))
}

/// `GET /openapi/v2` as JSON: swagger 2.0 with no paths and no definitions.
pub fn v2_json() -> Value {
    json!({ "swagger": "2.0", "info": { "title": "podnet lab control plane", "version": "v1" },
            "paths": {}, "definitions": {} })
}

/// `GET /openapi/v2` as gnostic protobuf (`openapi_v2.Document`): field 1 `swagger`,
/// field 2 `info` (an `Info` of field 1 `title`, field 2 `version`); nothing else.
pub fn v2_protobuf() -> Vec<u8> {
    fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
        out.push(number << 3 | 2); // wire type 2: length-delimited
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"podnet lab control plane");
    field(&mut info, 2, b"v1");
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_operation_with_field_validation() {
        let index = v3_index();
        for kind in Kind::ALL {
            let gv = gv_path(kind);
            let url = index["paths"][&gv]["serverRelativeURL"].as_str().unwrap();
            assert!(url.starts_with(&format!("/openapi/v3/{gv}?hash=")), "{url}");
            let doc = v3_group_version(&gv).unwrap();
            let found = doc["paths"].as_object().unwrap().values().any(|p| {
                let op = &p["patch"];
                op["x-kubernetes-group-version-kind"]["kind"] == kind.kind()
                    && op["parameters"][0]["name"] == "fieldValidation"
                    && op["parameters"][0]["in"] == "query"
            });
            assert!(found, "{kind:?}: {doc}");
        }
        assert!(v3_group_version("apis/apps/v1").is_none());
    }

    #[test]
    fn v2_protobuf_is_the_minimal_gnostic_document() {
        let pb = v2_protobuf();
        // swagger = "2.0"
        assert_eq!(&pb[..5], &[0x0a, 3, b'2', b'.', b'0']);
        // info: tag, length, then title and version
        assert_eq!(pb[5], 0x12);
        assert_eq!(pb[6] as usize, pb.len() - 7);
        assert!(pb.windows(2).any(|w| w == b"v1"));
    }
}
