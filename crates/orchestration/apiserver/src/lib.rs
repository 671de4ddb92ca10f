//! Orchestration: the lab's control plane — the subset of the Kubernetes API podnet needs,
//! served over HTTPS with bearer tokens ([`serve_tls`], [`Tokens`]) or plain HTTP without
//! credentials ([`serve`], for tests), with the controllers a real control plane runs.
//!
//! Served: core v1 namespaces, nodes, pods, services (each with `/status`),
//! discovery.k8s.io/v1 endpointslices, networking.k8s.io/v1 networkpolicies,
//! coordination.k8s.io/v1 leases; verbs list,
//! watch, get, create, update, patch, delete; discovery (`/api`, `/apis`, resource lists,
//! `/version`) and Table output for kubectl. Controllers (pod CIDR per node unless
//! `Config::allocate_node_cidrs` is off, scheduling,
//! service IP/port allocation, EndpointSlices, load-balancer IPs) decide with
//! `podnet-cluster`'s pure functions.
//!
//! Design against the real kube-apiserver + etcd + controller-manager + scheduler:
//! - one process, one lock, `BTreeMap` per kind: a write, its event and the controllers'
//!   follow-up writes happen in one critical section, so there is no informer lag and no
//!   conflict between controllers and clients (the real control plane converges over
//!   seconds; here it has converged when the request returns);
//! - one global revision counter, as etcd's; events are serialized once and fanned out
//!   through a broadcast channel; a bounded history serves watch resumption, older
//!   revisions get 410 Expired exactly as from a compacted etcd;
//! - validation decodes into the `k8s-openapi` types with `serde_path_to_error`, so a wrong
//!   type names its JSON path (`spec.ports[0].port`), then semantic checks return 422 with
//!   causes, like the real server's field errors.
//!
//! Approximations (documented, deliberate):
//! - strategic merge patch is treated as JSON merge patch (lists replaced, not merged by
//!   key); server-side apply is refused with 415;
//! - deletion is immediate — no finalizers, no garbage collector (a namespace's objects
//!   and a Service's EndpointSlices are deleted with it) — except the graceful deletion of
//!   Pods bound to a node (`deletionTimestamp`, finished by the node's kubelet);
//! - authentication by static bearer tokens only (no client certificates, no service
//!   account token signing), no authorization (every known token may do everything), no
//!   aggregated discovery (the legacy form is returned, which kubectl accepts); OpenAPI documents carry only what kubectl needs to
//!   create with validation on (`openapi`), not the full schemas;
//! - `limit`/`continue` are ignored: a list returns everything in one page, which kube's
//!   pager accepts (no continue token);
//! - `fieldValidation` (Strict, Warn — the default —, Ignore) is honoured on create and
//!   update; a patch's unknown fields are dropped (as with Ignore).

mod auth;
mod controllers;
mod error;
mod openapi;
mod patch;
mod resource;
mod store;
mod table;
mod tls;
mod validate;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

pub use auth::Tokens;
pub use error::{ApiError, Cause};
pub use resource::Kind;
pub use tls::server_config as tls_server_config;

use store::Store;

/// The lab's load-balancer pool: inside the lab's 172.18.0.0/16 but off its underlay
/// subnet 172.18.0.0/24, so no member of the underlay holds one of its addresses.
pub const DEFAULT_LOAD_BALANCER_POOL: &str = "172.18.255.0/24";

/// Control plane settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_cidr: ipnet::IpNet,
    pub node_cidr_prefix: u8,
    /// Give every Node without one a `/node_cidr_prefix` of `cluster_cidr` as
    /// `spec.podCIDR` (kube-controller-manager's `--allocate-node-cidrs`). `false`: Nodes
    /// keep none unless a client sets it, and podnet's agents claim their subnets as
    /// Leases.
    pub allocate_node_cidrs: bool,
    pub service_cidr: ipnet::IpNet,
    pub node_port_range: (u16, u16),
    /// Addresses the load-balancer controller hands to LoadBalancer Services without a
    /// `loadBalancerClass` (`status.loadBalancer.ingress[].ip`); `None`: no controller, the
    /// Services stay pending as in a cluster without a cloud provider.
    pub load_balancer_pool: Option<ipnet::IpNet>,
    /// Where clients reach this server: published as the `kubernetes` Service in
    /// `default` (cluster IP the first address of the service range, port 443 `https`) and
    /// its EndpointSlice, as kube-apiserver's `--advertise-address` and secure port do.
    /// `None`: no such Service.
    pub advertise: Option<std::net::SocketAddr>,
    /// Bearer tokens accepted (`--token-auth-file`); `None`: no authentication.
    pub tokens: Option<Tokens>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_cidr: "10.244.0.0/16".parse().expect("literal CIDR"),
            node_cidr_prefix: 24,
            allocate_node_cidrs: true,
            service_cidr: "10.96.0.0/12".parse().expect("literal CIDR"),
            node_port_range: (30000, 32767),
            load_balancer_pool: Some(DEFAULT_LOAD_BALANCER_POOL.parse().expect("literal CIDR")),
            advertise: None,
            tokens: None,
        }
    }
}

/// Serves plain HTTP until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> anyhow::Result<()> {
    axum::serve(listener, router(config))
        .await
        .map_err(|e| anyhow::anyhow!(e).context("serving the API"))
}

/// Serves HTTPS ([`tls_server_config`]) until the future is dropped.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Config,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    axum::serve(tls::TlsListener::new(listener, tls), router(config))
        .await
        .map_err(|e| anyhow::anyhow!(e).context("serving the API"))
}

fn router(config: Config) -> Router {
    let app = App {
        tokens: config.tokens.clone(),
        store: Arc::new(Mutex::new(Store::new(config))),
    };
    Router::new().fallback(handle).with_state(app)
}

#[derive(Clone)]
struct App {
    store: Arc<Mutex<Store>>,
    tokens: Option<Tokens>,
}

/// Largest request body accepted.
const MAX_BODY: usize = 8 << 20;

async fn handle(State(app): State<App>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Some(tokens) = &app.tokens {
        // Health probes stay open, as kube-apiserver's are to anonymous clients.
        let public = matches!(path.as_str(), "/healthz" | "/readyz" | "/livez");
        match tokens.authenticate(req.headers().get(http::header::AUTHORIZATION)) {
            Some(user) => tracing::trace!(user, "authenticated"),
            None if public => {}
            None => return error_response(&ApiError::unauthorized()),
        }
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            axum::extract::Query::<Vec<(String, String)>>::try_from_uri(req.uri())
                .map(|x| x.0.into_iter().collect())
                .unwrap_or_else(|_| {
                    tracing::debug!(query = q, "unparsable query");
                    BTreeMap::new()
                })
        })
        .unwrap_or_default();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading body: {e}"))),
    };
    let out = route(&app, &method, &path, &query, &headers, &body);
    tracing::debug!(%method, %path, ok = out.is_ok(), "request");
    match out {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

/// Adds one `Warning: 299 - "…"` header per warning, as the real API server does (kubectl
/// prints them as `Warning: …`).
fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::from(w.as_str()));
        if let Ok(h) = http::HeaderValue::from_str(&text) {
            r.headers_mut().append(http::header::WARNING, h);
        }
    }
    r
}

fn error_response(e: &ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_status(),
    )
}

fn route(
    app: &App,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match segs[..] {
        ["version"] => ok(table::version()),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["openapi", "v3"] => ok(openapi::v3_index()),
        ["openapi", "v3", ref gv @ ..] => openapi::v3_group_version(&gv.join("/"))
            .map_or_else(|| Err(ApiError::not_found_path(path)), ok),
        ["openapi", "v2"] => {
            let accept = headers
                .get(http::header::ACCEPT)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if accept.contains("protobuf") {
                Ok((
                    StatusCode::OK,
                    [(
                        http::header::CONTENT_TYPE,
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    )],
                    openapi::v2_protobuf(),
                )
                    .into_response())
            } else {
                ok(openapi::v2_json())
            }
        }
        ["api"] => ok(table::api_versions()),
        ["apis"] => ok(table::api_group_list()),
        ["api", "v1"] => ok(table::resource_list("").expect("core group")),
        ["apis", g] => table::api_group(g).map_or_else(|| Err(ApiError::not_found_path(path)), ok),
        ["apis", g, "v1"] => {
            table::resource_list(g).map_or_else(|| Err(ApiError::not_found_path(path)), ok)
        }
        ["api", "v1", ref rest @ ..] if !rest.is_empty() => {
            resource(app, "", rest, method, query, headers, body)
        }
        ["apis", g, "v1", ref rest @ ..] if !rest.is_empty() => {
            resource(app, g, rest, method, query, headers, body)
        }
        _ => Err(ApiError::not_found_path(path)),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn resource(
    app: &App,
    group: &str,
    rest: &[&str],
    method: &Method,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found_path(&rest.join("/"));
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && Kind::from_plural(group, "v1", rest[2]).is_some_and(Kind::namespaced);
    let (kind, ns, name, sub) = if namespaced_path {
        if rest.len() > 5 {
            return Err(not_found());
        }
        let kind = Kind::from_plural(group, "v1", rest[2]).ok_or_else(not_found)?;
        (
            kind,
            Some(rest[1].to_string()),
            rest.get(3).copied(),
            rest.get(4).copied(),
        )
    } else {
        if rest.len() > 3 {
            return Err(not_found());
        }
        let kind = Kind::from_plural(group, "v1", rest[0]).ok_or_else(not_found)?;
        if kind.namespaced() && rest.len() > 1 {
            return Err(not_found());
        }
        (kind, None, rest.get(1).copied(), rest.get(2).copied())
    };
    let status = match sub {
        None => false,
        Some("status") if kind.has_status() => true,
        Some(_) => return Err(not_found()),
    };
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let as_table = accept.contains("as=Table");
    let as_meta = accept.contains("as=PartialObjectMetadata");
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("application/json");
    let field_validation =
        || validate::FieldValidation::from_query(query.get("fieldValidation").map(String::as_str));
    let nsr = ns.as_deref();
    let lock = || app.store.lock().unwrap_or_else(|e| e.into_inner());
    let one = |code: StatusCode, v: &Value, rv: u64| {
        let out = if as_table {
            table::table(kind, [v], rv)
        } else if as_meta {
            table::partial_metadata(v)
        } else {
            return json_response(code, v);
        };
        json_response(code, &out)
    };
    match (method, name) {
        (&Method::GET, None) => {
            let filter = watch::filter_from_query(kind, ns.clone(), query)?;
            let truthy = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
            if truthy("watch") {
                let rv = match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") => None,
                    Some(s) => Some(s.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {s:?}"))
                    })?),
                };
                let secs = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(1800);
                return Ok(watch::start(
                    &app.store,
                    watch::WatchRequest {
                        filter,
                        resource_version: rv,
                        send_initial_events: truthy("sendInitialEvents"),
                        bookmarks: truthy("allowWatchBookmarks"),
                        timeout: Duration::from_secs(secs),
                    },
                ));
            }
            let s = lock();
            let items: Vec<&Value> = s
                .list(kind, nsr)
                .map(|v| &**v)
                .filter(|v| filter.matches(v))
                .collect();
            let out = if as_table {
                table::table(kind, items, s.rv)
            } else if as_meta {
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                       "metadata": {"resourceVersion": s.rv.to_string()},
                       "items": items.iter().map(|v| table::partial_metadata(v)).collect::<Vec<_>>()})
            } else {
                json!({"kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(),
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items})
            };
            Ok(json_response(StatusCode::OK, &out))
        }
        (&Method::GET, Some(n)) => {
            let s = lock();
            let v = s.get(kind, nsr, n)?;
            Ok(one(StatusCode::OK, &v, s.rv))
        }
        (&Method::POST, None) => {
            if status {
                return Err(ApiError::method_not_allowed(
                    "POST is not supported on status",
                ));
            }
            let body = parse_json(body)?;
            let warnings = field_validation()?.check(kind, &body)?;
            let mut s = lock();
            let v = s.create(kind, nsr, body)?;
            Ok(with_warnings(one(StatusCode::CREATED, &v, s.rv), &warnings))
        }
        (&Method::PUT, Some(n)) => {
            let body = parse_json(body)?;
            let warnings = field_validation()?.check(kind, &body)?;
            let mut s = lock();
            let v = s.update(kind, nsr, n, body, status)?;
            Ok(with_warnings(one(StatusCode::OK, &v, s.rv), &warnings))
        }
        (&Method::PATCH, Some(n)) => {
            let body = parse_json(body)?;
            let mut s = lock();
            let v = s.patch(kind, nsr, n, content_type, &body, status)?;
            Ok(one(StatusCode::OK, &v, s.rv))
        }
        (&Method::DELETE, Some(n)) if !status => {
            let opts = delete_options(query, body)?;
            let mut s = lock();
            let v = s.delete_with(kind, nsr, n, &opts)?;
            Ok(one(StatusCode::OK, &v, s.rv))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow method {m} on {}{}",
            kind.plural(),
            if status { "/status" } else { "" }
        ))),
    }
}

/// `DeleteOptions` from the body (kube, kubectl) or the query (`gracePeriodSeconds`); the
/// body wins when both say something.
fn delete_options(
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<store::DeleteOptions, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_json(body)?
    };
    let grace = match body.get("gracePeriodSeconds") {
        Some(Value::Null) | None => {
            match query.get("gracePeriodSeconds") {
                Some(q) => Some(q.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {q:?}"))
                })?),
                None => None,
            }
        }
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
        ),
    };
    Ok(store::DeleteOptions {
        grace_period_seconds: grace,
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_from_body_or_query() {
        let q = |g: &str| BTreeMap::from([("gracePeriodSeconds".to_string(), g.to_string())]);
        let none = BTreeMap::new();
        let opts = |query: &BTreeMap<String, String>, body: &str| {
            delete_options(query, body.as_bytes()).map(|o| (o.grace_period_seconds, o.uid))
        };
        assert_eq!(opts(&none, "").unwrap(), (None, None));
        assert_eq!(opts(&q("5"), "").unwrap(), (Some(5), None));
        assert_eq!(
            opts(
                &q("5"),
                r#"{"kind":"DeleteOptions","gracePeriodSeconds":0}"#
            )
            .unwrap(),
            (Some(0), None)
        );
        assert_eq!(
            opts(
                &none,
                r#"{"propagationPolicy":"Background","preconditions":{"uid":"u"}}"#
            )
            .unwrap(),
            (None, Some("u".to_string()))
        );
        assert!(opts(&q("soon"), "").is_err());
        assert!(opts(&none, r#"{"gracePeriodSeconds":"x"}"#).is_err());
    }
}
