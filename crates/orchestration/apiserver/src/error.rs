//! Orchestration: API errors as Kubernetes `Status` objects. Invariant: every failure the
//! server returns is a `Status` with the code, reason and (for validation) the causes that
//! name the offending field, so `kube` maps it to `Error::Api` and kubectl prints it.

use serde_json::{Value, json};

use crate::resource::Kind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            name: None,
            kind: None,
            causes: Vec::new(),
        }
    }

    pub(crate) fn on(mut self, kind: Kind, name: &str) -> Self {
        self.kind = Some(kind.plural().to_string());
        self.name = Some(name.to_string());
        self
    }

    pub fn not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified_resource()),
        )
        .on(kind, name)
    }

    pub fn already_exists(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified_resource()),
        )
        .on(kind, name)
    }

    pub fn conflict(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.qualified_resource()
            ),
        )
        .on(kind, name)
    }

    /// A DELETE whose `preconditions.uid` names another incarnation of the object.
    pub fn uid_precondition(kind: Kind, name: &str, wanted: &str, actual: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: UID in precondition: {wanted}, UID in object meta: {actual}"
            ),
        )
        .on(kind, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    /// A body that does not decode into the kind's type: names the JSON path.
    pub fn undecodable(kind: Kind, name: &str, path: &str, inner: &str) -> Self {
        let mut e = Self::new(
            400,
            "BadRequest",
            format!(
                "{} \"{name}\" cannot be decoded: {path}: {inner}",
                kind.kind()
            ),
        )
        .on(kind, name);
        e.causes.push(Cause {
            field: path.to_string(),
            message: inner.to_string(),
        });
        e
    }

    pub fn invalid(kind: Kind, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {}", kind.kind(), list.join(", ")),
        )
        .on(kind, name);
        e.kind = Some(kind.kind().to_string());
        e.causes = causes;
        e
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message.into())
    }

    /// 401: no credentials, or credentials the server does not know.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message.into())
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into())
    }

    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message.into())
    }

    pub fn not_found_path(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message.into())
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        // `details.group`, absent for the core group (`kind` is the resource, or the Kind
        // for Invalid).
        if let Some(g) = self.kind.as_deref().and_then(|k| {
            Kind::ALL
                .into_iter()
                .find(|x| x.plural() == k || x.kind() == k)
                .map(Kind::group)
                .filter(|g| !g.is_empty())
        }) {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                Value::Array(
                    self.causes
                        .iter()
                        .map(|c| json!({"reason": "FieldValueInvalid", "field": c.field, "message": c.message}))
                        .collect(),
                ),
            );
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
