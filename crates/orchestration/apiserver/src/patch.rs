//! Orchestration: patch documents applied to stored JSON. JSON merge patch (RFC 7386) is
//! exact; strategic merge patch is approximated by merge patch (lists are replaced, not
//! merged by key — enough for status and label patches, which is what podnet and kubectl
//! send); JSON patch (RFC 6902) supports add/remove/replace/test.

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = Value::Object(Default::default());
        }
        let t = target.as_object_mut().expect("object ensured above");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// RFC 6902, operations add, remove, replace, test.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array"))?;
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("json patch operation without path"))?;
        let value = op.get("value").cloned().unwrap_or(Value::Null);
        match kind {
            "add" | "replace" => set(target, path, value, kind == "add")?,
            "remove" => {
                let (parent, last) = split(path)?;
                let p = target
                    .pointer_mut(&parent)
                    .ok_or_else(|| ApiError::bad_request(format!("path {path} not found")))?;
                match p {
                    Value::Object(m) => {
                        m.remove(&last).ok_or_else(|| {
                            ApiError::bad_request(format!("path {path} not found"))
                        })?;
                    }
                    Value::Array(a) => {
                        let i: usize = last
                            .parse()
                            .map_err(|_| ApiError::bad_request(format!("bad index in {path}")))?;
                        if i >= a.len() {
                            return Err(ApiError::bad_request(format!("path {path} not found")));
                        }
                        a.remove(i);
                    }
                    _ => return Err(ApiError::bad_request(format!("path {path} not found"))),
                }
            }
            "test" => {
                if target.pointer(path) != Some(&value) {
                    return Err(ApiError::bad_request(format!("test failed at {path}")));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported json patch op {other:?}"
                )));
            }
        }
    }
    Ok(())
}

fn split(path: &str) -> ApiResult<(String, String)> {
    let i = path
        .rfind('/')
        .ok_or_else(|| ApiError::bad_request(format!("bad path {path:?}")))?;
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..i].to_string(), last))
}

fn set(target: &mut Value, path: &str, value: Value, add: bool) -> ApiResult<()> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split(path)?;
    let p = target
        .pointer_mut(&parent)
        .ok_or_else(|| ApiError::bad_request(format!("path {parent} not found")))?;
    match p {
        Value::Object(m) => {
            if !add && !m.contains_key(&last) {
                return Err(ApiError::bad_request(format!("path {path} not found")));
            }
            m.insert(last, value);
        }
        Value::Array(a) => {
            if last == "-" && add {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("bad index in {path}")))?;
                match (add, i <= a.len(), i < a.len()) {
                    (true, true, _) => a.insert(i, value),
                    (false, _, true) => a[i] = value,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "index out of range in {path}"
                        )));
                    }
                }
            }
        }
        _ => {
            return Err(ApiError::bad_request(format!(
                "path {parent} is not a container"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 2]});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "replace", "path": "/list/0", "value": 9},
                {"op": "add", "path": "/list/-", "value": 3},
                {"op": "test", "path": "/list/2", "value": 3}
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2"}}, "list": [9, 2, 3]})
        );
        assert!(json_patch(&mut t, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
