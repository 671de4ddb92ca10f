//! Orchestration: the agent's health and Prometheus metrics, and the http server for
//! them (`GET /healthz`, `GET /metrics`), plus `GET /services`: the Services table as the
//! agent programmed it, in `nft` syntax (rendered from memory on request; the kernel is
//! not read).
//!
//! `/healthz` is 200 only while the last sync succeeded (503 before the first one and
//! after a failure), like kube-proxy's `/healthz` — a DaemonSet readiness probe then
//! tells exactly which nodes have a programmed data plane.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The agent's metrics and health flag.
pub struct Metrics {
    registry: Registry,
    pub syncs: Family<Vec<(String, String)>, Counter>,
    pub sync_duration: Histogram,
    pub peers: Gauge,
    pub routes: Gauge,
    pub kernel_writes: Counter,
    pub service_syncs: Family<Vec<(String, String)>, Counter>,
    pub service_sync_duration: Histogram,
    pub service_ports: Gauge,
    pub service_problems: Gauge,
    pub policy_syncs: Family<Vec<(String, String)>, Counter>,
    pub policy_sync_duration: Histogram,
    pub policy_isolated_pods: Gauge,
    pub policy_problems: Gauge,
    /// The fast path ([`crate::fastpath`]): armed (1) or not (0), pods hooked, addresses
    /// left to conntrack, transactions refused.
    pub fast_path_armed: Gauge,
    pub fast_path_pods: Gauge,
    pub fast_path_slow: Gauge,
    pub fast_path_errors: Counter,
    /// Pod CIDR claim passes (claim — which includes keeping one — or release) by result.
    pub pod_cidr_claims: Family<Vec<(String, String)>, Counter>,
    healthy: AtomicBool,
    /// The services proxy's last sync failed (healthy stays false until it succeeds).
    services_failing: AtomicBool,
    /// The policy enforcer's last sync failed.
    policy_failing: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let syncs = Family::<Vec<(String, String)>, Counter>::default();
        let sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let peers = Gauge::default();
        let routes = Gauge::default();
        let kernel_writes = Counter::default();
        let pod_cidr_claims = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "podnet_agent_pod_cidr_claims",
            "Pod CIDR claim requests when the cluster allocates none, by operation (claim, release) and result (ok, error)",
            pod_cidr_claims.clone(),
        );
        registry.register(
            "podnet_agent_syncs",
            "Syncs by result (ok, error)",
            syncs.clone(),
        );
        registry.register(
            "podnet_agent_sync_duration_seconds",
            "Duration of one sync",
            sync_duration.clone(),
        );
        registry.register("podnet_agent_peers", "Peer nodes programmed", peers.clone());
        registry.register(
            "podnet_agent_routes",
            "Routes podnet holds in the node",
            routes.clone(),
        );
        registry.register(
            "podnet_agent_kernel_writes",
            "Netlink writes and nft transactions made",
            kernel_writes.clone(),
        );
        let service_syncs = Family::<Vec<(String, String)>, Counter>::default();
        let service_sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let service_ports = Gauge::default();
        let service_problems = Gauge::default();
        registry.register(
            "podnet_agent_service_syncs",
            "Services proxy syncs by result (ok, error)",
            service_syncs.clone(),
        );
        registry.register(
            "podnet_agent_service_sync_duration_seconds",
            "Duration of one services proxy sync (plan, diff, transaction)",
            service_sync_duration.clone(),
        );
        registry.register(
            "podnet_agent_service_ports",
            "Service ports programmed",
            service_ports.clone(),
        );
        registry.register(
            "podnet_agent_service_problems",
            "Services skipped because they cannot be programmed",
            service_problems.clone(),
        );
        let policy_syncs = Family::<Vec<(String, String)>, Counter>::default();
        let policy_sync_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let policy_isolated_pods = Gauge::default();
        let policy_problems = Gauge::default();
        registry.register(
            "podnet_agent_policy_syncs",
            "NetworkPolicy syncs by result (ok, error)",
            policy_syncs.clone(),
        );
        registry.register(
            "podnet_agent_policy_sync_duration_seconds",
            "Duration of one NetworkPolicy sync (plan, render, diff, transaction)",
            policy_sync_duration.clone(),
        );
        registry.register(
            "podnet_agent_policy_isolated_pods",
            "Local pod directions (ingress, egress) isolated by some NetworkPolicy",
            policy_isolated_pods.clone(),
        );
        registry.register(
            "podnet_agent_policy_problems",
            "NetworkPolicies that cannot be read (their pods stay isolated)",
            policy_problems.clone(),
        );
        let fast_path_armed = Gauge::default();
        let fast_path_pods = Gauge::default();
        let fast_path_slow = Gauge::default();
        let fast_path_errors = Counter::default();
        registry.register(
            "podnet_agent_fast_path_armed",
            "1 while pod-to-pod packets between nodes take the fast path (table netdev podnet-fastpath)",
            fast_path_armed.clone(),
        );
        registry.register(
            "podnet_agent_fast_path_pods",
            "Local pods' veths hooked by the fast path",
            fast_path_pods.clone(),
        );
        registry.register(
            "podnet_agent_fast_path_slow_addresses",
            "Addresses whose packets keep the full path (Service endpoints, lingering former ones, isolated pods)",
            fast_path_slow.clone(),
        );
        registry.register(
            "podnet_agent_fast_path_refused",
            "Fast path transactions the kernel refused",
            fast_path_errors.clone(),
        );
        Metrics {
            registry,
            fast_path_armed,
            fast_path_pods,
            fast_path_slow,
            fast_path_errors,
            syncs,
            sync_duration,
            peers,
            routes,
            kernel_writes,
            service_syncs,
            service_sync_duration,
            service_ports,
            service_problems,
            policy_syncs,
            policy_sync_duration,
            policy_isolated_pods,
            policy_problems,
            pod_cidr_claims,
            healthy: AtomicBool::new(false),
            services_failing: AtomicBool::new(false),
            policy_failing: AtomicBool::new(false),
        }
    }

    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
            && !self.services_failing.load(Ordering::SeqCst)
            && !self.policy_failing.load(Ordering::SeqCst)
    }

    /// Counts a NetworkPolicy sync.
    pub fn record_policy_sync(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.policy_syncs
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        self.policy_sync_duration.observe(seconds);
        self.policy_failing.store(!ok, Ordering::SeqCst);
    }

    /// Counts a services proxy sync.
    pub fn record_service_sync(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.service_syncs
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        self.service_sync_duration.observe(seconds);
        self.services_failing.store(!ok, Ordering::SeqCst);
    }

    /// Counts a pod CIDR claim request (`op`: claim or release).
    pub fn record_claim(&self, op: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.pod_cidr_claims
            .get_or_create(&vec![
                ("op".to_string(), op.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
    }

    /// Counts a sync.
    pub fn record_sync(&self, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.syncs
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        self.sync_duration.observe(seconds);
        self.set_healthy(ok);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

/// Renders the programmed Services table on request.
pub type ServicesDump = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    services: Option<ServicesDump>,
}

/// The http routes.
pub fn router(metrics: Arc<Metrics>, services: Option<ServicesDump>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/services", get(services_text))
        .with_state(AppState { metrics, services })
}

async fn services_text(State(s): State<AppState>) -> (StatusCode, String) {
    match &s.services {
        Some(dump) => (StatusCode::OK, dump()),
        None => (
            StatusCode::NOT_FOUND,
            "this agent does not program Services (--proxy-services=false)\n".into(),
        ),
    }
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.metrics.healthy() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not synced")
    }
}

async fn metrics_text(
    State(s): State<AppState>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
