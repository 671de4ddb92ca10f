//! Orchestration: the DNS server's Prometheus metrics and its http endpoints —
//! `GET /metrics` (OpenMetrics text) and `GET /healthz` (200 once the first zone is
//! built, 503 before: a readiness probe keeps the pod out of the `kube-dns` Service until
//! it can answer for the cluster).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use podnet_dns::wire::{Rcode, rtype};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Labels of `podnet_dns_requests_total`: static strings, so counting allocates nothing.
type RequestLabels = [(&'static str, &'static str); 2];

/// The server's metrics and readiness.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: DurationHistogram,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub forward_failures: Counter,
    pub zone_builds: Counter,
    pub zone_records: Gauge,
    pub zone_problems: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = DurationHistogram::new();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let forward_failures = Counter::default();
        let zone_builds = Counter::default();
        let zone_records = Gauge::default();
        let zone_problems = Gauge::default();
        registry.register(
            "podnet_dns_requests",
            "Queries answered, by question type and response code",
            requests.clone(),
        );
        registry.register(
            "podnet_dns_request_duration_seconds",
            "Time from receiving a query to its reply being ready",
            duration.clone(),
        );
        registry.register(
            "podnet_dns_cache_hits",
            "Forwarded names answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "podnet_dns_cache_misses",
            "Forwarded names not in the cache (asked upstream)",
            cache_misses.clone(),
        );
        registry.register(
            "podnet_dns_forward_failures",
            "Forwarded queries no upstream answered (SERVFAIL)",
            forward_failures.clone(),
        );
        registry.register(
            "podnet_dns_zone_builds",
            "Zones built from the cluster's Services and EndpointSlices",
            zone_builds.clone(),
        );
        registry.register(
            "podnet_dns_zone_records",
            "Records in the zone being served",
            zone_records.clone(),
        );
        registry.register(
            "podnet_dns_zone_problems",
            "Objects left out of the zone",
            zone_problems.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            cache_hits,
            cache_misses,
            forward_failures,
            zone_builds,
            zone_records,
            zone_problems,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts one answered query.
    pub fn observe(&self, qtype: u16, rcode: Rcode, took: Duration) {
        self.requests
            .get_or_create(&[("type", rtype::name(qtype)), ("rcode", rcode.name())])
            .inc();
        let i = bucket(took);
        self.duration.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.duration
            .0
            .sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

/// The request duration histogram's upper bounds: 10 µs doubling up to ~1.3 s, then +Inf.
fn bounds() -> Vec<f64> {
    exponential_buckets(0.00001, 2.0, 18)
        .chain([f64::MAX])
        .collect()
}

/// The bucket of a duration.
fn bucket(took: Duration) -> usize {
    let v = took.as_secs_f64();
    let mut bound = 0.00001;
    for i in 0..18 {
        if v <= bound {
            return i;
        }
        bound *= 2.0;
    }
    18
}

/// A histogram of atomics (prometheus-client's takes a lock per observation), to which a
/// UDP worker adds a batch of observations at once.
#[derive(Debug, Clone)]
struct DurationHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    fn new() -> Self {
        let bounds = bounds();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        DurationHistogram(Arc::new(HistogramInner {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }))
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .zip(&self.0.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

const QTYPES: [u16; 15] = [1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 251, 252, 255, 0];
const RCODES: [Rcode; 7] = [
    Rcode::NoError,
    Rcode::FormErr,
    Rcode::ServFail,
    Rcode::NxDomain,
    Rcode::NotImp,
    Rcode::Refused,
    Rcode::BadVers,
];

/// A UDP worker's counts since its last flush: plain integers on the hot path, added to
/// the shared metrics every few hundred queries or 100 ms.
pub struct LocalStats {
    requests: [[u64; RCODES.len()]; QTYPES.len()],
    buckets: [u64; 19],
    sum_nanos: u64,
    pending: u32,
    last_flush: std::time::Instant,
}

impl Default for LocalStats {
    fn default() -> Self {
        LocalStats {
            requests: [[0; RCODES.len()]; QTYPES.len()],
            buckets: [0; 19],
            sum_nanos: 0,
            pending: 0,
            last_flush: std::time::Instant::now(),
        }
    }
}

impl LocalStats {
    /// Counts one answered query.
    pub fn observe(&mut self, qtype: u16, rcode: Rcode, took: Duration) {
        let t = QTYPES
            .iter()
            .position(|&k| k == qtype)
            .unwrap_or(QTYPES.len() - 1);
        let r = RCODES.iter().position(|&k| k == rcode).unwrap_or(2);
        self.requests[t][r] += 1;
        self.buckets[bucket(took)] += 1;
        self.sum_nanos += took.as_nanos() as u64;
        self.pending += 1;
    }

    /// Adds the counts to the shared metrics when enough have gathered (or `force`).
    pub fn flush(&mut self, metrics: &Metrics, force: bool) {
        if self.pending == 0
            || !force
                && self.pending < 256
                && self.last_flush.elapsed() < Duration::from_millis(100)
        {
            return;
        }
        for (t, row) in self.requests.iter_mut().enumerate() {
            for (r, n) in row.iter_mut().enumerate() {
                if *n > 0 {
                    metrics
                        .requests
                        .get_or_create(&[
                            ("type", rtype::name(QTYPES[t])),
                            ("rcode", RCODES[r].name()),
                        ])
                        .inc_by(*n);
                    *n = 0;
                }
            }
        }
        for (i, n) in self.buckets.iter_mut().enumerate() {
            if *n > 0 {
                metrics.duration.0.counts[i].fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        metrics
            .duration
            .0
            .sum_nanos
            .fetch_add(self.sum_nanos, Ordering::Relaxed);
        self.sum_nanos = 0;
        self.pending = 0;
        self.last_flush = std::time::Instant::now();
    }
}

/// The http routes.
pub fn router(shared: Arc<crate::Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(shared)
}

async fn healthz(State(s): State<Arc<crate::Shared>>) -> (StatusCode, &'static str) {
    if s.metrics.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "zone not built yet")
    }
}

async fn metrics_text(
    State(s): State<Arc<crate::Shared>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
