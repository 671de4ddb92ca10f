//! Orchestration: the `healthCheckNodePort` servers — what kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go` serves for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, so that a load balancer sends a Service's traffic only
//! to nodes that have an endpoint of it.
//!
//! Per such Service, HTTP on `0.0.0.0:<healthCheckNodePort>` of the node, any method and
//! path: status 200 when the node has local endpoints and the proxy is healthy, else 503;
//! headers `Content-Type: application/json` and `X-Content-Type-Options: nosniff`; the body
//! kube-proxy writes, byte for byte (indented with tabs there, spaces here):
//!
//! ```text
//! {
//!     "service": {
//!         "namespace": "NS",
//!         "name": "NAME"
//!     },
//!     "localEndpoints": N,
//!     "serviceProxyHealthy": true
//! }
//! ```
//!
//! Invariants: the set of servers follows the programmed ports after every sync (a Service
//! that goes, or whose port changes, has its listener closed before any new one opens); a
//! port that cannot be bound is logged and tried again at the next sync (kube-proxy does
//! the same); counts change only after a sync.
//!
//! The counts come from the ports the proxy programmed ([`Proxy::ports`]), through the pure
//! [`plan_health_checks`]: per Service, the distinct local endpoints (IP, port) of all its
//! ports, as kube-proxy's `LocalReadyEndpoints` counts them. One difference: podnet's local
//! endpoints fall back to serving-and-terminating ones when no ready one is left (the
//! traffic still goes there), so such a node answers 200 where kube-proxy answers 503.
//! `serviceProxyHealthy` is whether the last services sync was taken by the kernel
//! (kube-proxy: whether its last sync is recent).
//!
//! [`Proxy::ports`]: podnet_services::Proxy::ports

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use podnet_services::ServicePort;
use tokio::task::JoinHandle;

/// A Service: (namespace, name).
pub type ServiceKey = (String, String);

/// What one Service's health check serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    pub local_endpoints: usize,
}

/// Pure: the health checks of the programmed `ports` — one per Service that has a
/// `healthCheckNodePort` (set only with `externalTrafficPolicy: Local`), counting the
/// distinct (IP, port) of its ports' local endpoints.
pub fn plan_health_checks<'a>(
    ports: impl IntoIterator<Item = &'a ServicePort>,
) -> BTreeMap<ServiceKey, HealthCheck> {
    let mut found: BTreeMap<ServiceKey, (u16, BTreeSet<(std::net::Ipv4Addr, u16)>)> =
        BTreeMap::new();
    for p in ports {
        let Some(node_port) = p.health_check_node_port else {
            continue;
        };
        let key = (p.name.namespace.to_string(), p.name.service.to_string());
        let entry = found.entry(key).or_insert((node_port, BTreeSet::new()));
        entry
            .1
            .extend(p.local_endpoints.iter().map(|e| (e.ip, e.port)));
    }
    found
        .into_iter()
        .map(|(k, (node_port, eps))| {
            (
                k,
                HealthCheck {
                    node_port,
                    local_endpoints: eps.len(),
                },
            )
        })
        .collect()
}

/// The health checks of what `syncer` programmed.
pub fn checks_of<T: crate::services::TransactionOps>(
    syncer: &crate::services::Shared<T>,
) -> BTreeMap<ServiceKey, HealthCheck> {
    let s = syncer.lock().unwrap_or_else(|e| e.into_inner());
    plan_health_checks(s.proxy().ports())
}

/// Pure: kube-proxy's answer for a Service with `count` local endpoints.
pub fn render_health(
    namespace: &str,
    name: &str,
    count: usize,
    proxy_healthy: bool,
) -> (StatusCode, String) {
    let status = if count > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let q = |s: &str| serde_json::to_string(s).expect("a string always serializes");
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        q(namespace),
        q(name)
    );
    (status, body)
}

/// What one server answers from.
struct Instance {
    namespace: String,
    name: String,
    endpoints: AtomicUsize,
    proxy_healthy: Arc<AtomicBool>,
}

struct Server {
    port: u16,
    instance: Arc<Instance>,
    task: JoinHandle<()>,
}

/// The running health check servers of one node.
pub struct HealthServers {
    bind: IpAddr,
    proxy_healthy: Arc<AtomicBool>,
    servers: BTreeMap<ServiceKey, Server>,
}

impl HealthServers {
    /// Servers will listen on `bind` (`0.0.0.0` on a node, as kube-proxy by default).
    pub fn new(bind: IpAddr) -> HealthServers {
        HealthServers {
            bind,
            proxy_healthy: Arc::new(AtomicBool::new(false)),
            servers: BTreeMap::new(),
        }
    }

    /// The ports served now, by Service.
    pub fn serving(&self) -> BTreeMap<ServiceKey, u16> {
        self.servers
            .iter()
            .map(|(k, s)| (k.clone(), s.port))
            .collect()
    }

    /// Takes the servers to `checks`: closes those no longer wanted (or on another port),
    /// opens the new ones, sets every count and the proxy's health.
    pub async fn sync(&mut self, checks: &BTreeMap<ServiceKey, HealthCheck>, proxy_healthy: bool) {
        self.proxy_healthy.store(proxy_healthy, Ordering::Relaxed);
        let gone: Vec<ServiceKey> = self
            .servers
            .iter()
            .filter(|(k, s)| checks.get(*k).is_none_or(|c| c.node_port != s.port))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(s) = self.servers.remove(&key) {
                tracing::info!(service = %format!("{}/{}", key.0, key.1), port = s.port, "closing health check");
                s.task.abort();
                // Dropped (listener closed) once the aborted task is: the port is free again.
                let _ = s.task.await;
            }
        }
        for (key, check) in checks {
            if let Some(s) = self.servers.get(key) {
                s.instance
                    .endpoints
                    .store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            let instance = Arc::new(Instance {
                namespace: key.0.clone(),
                name: key.1.clone(),
                endpoints: AtomicUsize::new(check.local_endpoints),
                proxy_healthy: self.proxy_healthy.clone(),
            });
            match serve(
                SocketAddr::new(self.bind, check.node_port),
                instance.clone(),
            ) {
                Ok(task) => {
                    tracing::info!(service = %format!("{}/{}", key.0, key.1), port = check.node_port, "serving health check");
                    self.servers.insert(
                        key.clone(),
                        Server {
                            port: check.node_port,
                            instance,
                            task,
                        },
                    );
                }
                Err(e) => tracing::warn!(
                    service = %format!("{}/{}", key.0, key.1),
                    port = check.node_port,
                    error = %e,
                    "cannot serve health check; retried at the next sync"
                ),
            }
        }
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for s in self.servers.values() {
            s.task.abort();
        }
    }
}

fn serve(addr: SocketAddr, instance: Arc<Instance>) -> std::io::Result<JoinHandle<()>> {
    // Bound here, synchronously, so a port in use is reported by this sync.
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let router = Router::new().fallback(answer).with_state(instance);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(%addr, error = %e, "health check server ended");
        }
    }))
}

async fn answer(State(i): State<Arc<Instance>>) -> Response {
    let (status, body) = render_health(
        &i.namespace,
        &i.name,
        i.endpoints.load(Ordering::Relaxed),
        i.proxy_healthy.load(Ordering::Relaxed),
    );
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_services::{Endpoint, PortName, Protocol};
    use std::io::{Read, Write};
    use std::net::Ipv4Addr;

    fn port(ns: &str, svc: &str, name: &str, hc: Option<u16>, local: &[(u8, u16)]) -> ServicePort {
        ServicePort {
            name: PortName {
                namespace: ns.into(),
                service: svc.into(),
                port: name.into(),
                protocol: Protocol::Tcp,
            },
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            node_port: Some(30080),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity_seconds: None,
            external_local: hc.is_some(),
            internal_local: false,
            health_check_node_port: hc,
            cluster_endpoints: Vec::new(),
            local_endpoints: local
                .iter()
                .map(|(i, p)| Endpoint {
                    ip: Ipv4Addr::new(10, 244, 0, *i),
                    port: *p,
                    local: true,
                })
                .collect(),
            has_endpoints: !local.is_empty(),
        }
    }

    #[test]
    fn counts_distinct_local_endpoints_per_service() {
        let ports = [
            port("a", "web", "http", Some(31000), &[(2, 8080), (3, 8080)]),
            // Same pods on another port: distinct (IP, port), as kube-proxy counts.
            port("a", "web", "https", Some(31000), &[(2, 8443), (2, 8080)]),
            port("a", "none", "", Some(31001), &[]),
            port("a", "cluster", "", None, &[(4, 80)]),
        ];
        let checks = plan_health_checks(&ports);
        assert_eq!(
            checks,
            BTreeMap::from([
                (
                    ("a".into(), "none".into()),
                    HealthCheck {
                        node_port: 31001,
                        local_endpoints: 0
                    }
                ),
                (
                    ("a".into(), "web".into()),
                    HealthCheck {
                        node_port: 31000,
                        local_endpoints: 3
                    }
                ),
            ])
        );
    }

    #[test]
    fn answers_as_kube_proxy() {
        let (status, body) = render_health("default", "web", 2, true);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "default", "name": "web"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert_eq!(
            render_health("default", "web", 0, true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, body) = render_health("default", "web", 2, false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"serviceProxyHealthy\": false"));
    }

    /// One HTTP/1.1 request on a real socket: (status line, headers, body).
    fn get(port: u16, path: &str) -> std::io::Result<(String, String, String)> {
        let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        Ok((status.into(), headers.to_ascii_lowercase(), body.into()))
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_follow_the_checks_on_real_sockets() {
        let (p1, p2) = (free_port(), free_port());
        let key = |n: &str| ("default".to_string(), n.to_string());
        let check = |node_port, local_endpoints| HealthCheck {
            node_port,
            local_endpoints,
        };
        let mut hs = HealthServers::new(Ipv4Addr::LOCALHOST.into());
        hs.sync(
            &BTreeMap::from([(key("web"), check(p1, 2)), (key("idle"), check(p2, 0))]),
            true,
        )
        .await;
        let call =
            move |p: u16, path: &'static str| tokio::task::spawn_blocking(move || get(p, path));
        let (status, headers, body) = call(p1, "/any/path?x=1").await.unwrap().unwrap();
        assert!(status.contains(" 200 "), "{status}");
        assert!(
            headers.contains("content-type: application/json"),
            "{headers}"
        );
        assert!(
            headers.contains("x-content-type-options: nosniff"),
            "{headers}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["localEndpoints"], 2);
        let (status, _, body) = call(p2, "/").await.unwrap().unwrap();
        assert!(status.contains(" 503 "), "{status}");
        assert!(body.contains("\"localEndpoints\": 0"), "{body}");

        // Counts follow the next sync; a Service that goes has its port closed.
        hs.sync(&BTreeMap::from([(key("web"), check(p1, 0))]), true)
            .await;
        let (status, _, _) = call(p1, "/").await.unwrap().unwrap();
        assert!(status.contains(" 503 "), "{status}");
        assert!(call(p2, "/").await.unwrap().is_err(), "closed");
        assert_eq!(hs.serving(), BTreeMap::from([(key("web"), p1)]));

        // Moved to another port: the old one closes, the new one answers; an unhealthy
        // proxy answers 503 whatever the count.
        hs.sync(&BTreeMap::from([(key("web"), check(p2, 1))]), true)
            .await;
        assert!(call(p1, "/").await.unwrap().is_err(), "closed");
        assert!(call(p2, "/").await.unwrap().unwrap().0.contains(" 200 "));
        hs.sync(&BTreeMap::from([(key("web"), check(p2, 1))]), false)
            .await;
        assert!(call(p2, "/").await.unwrap().unwrap().0.contains(" 503 "));

        // A port already taken is reported and retried at the next sync.
        let blocker = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, p1)).unwrap();
        hs.sync(
            &BTreeMap::from([(key("web"), check(p2, 1)), (key("b"), check(p1, 1))]),
            true,
        )
        .await;
        assert!(!hs.serving().contains_key(&key("b")));
        drop(blocker);
        hs.sync(
            &BTreeMap::from([(key("web"), check(p2, 1)), (key("b"), check(p1, 1))]),
            true,
        )
        .await;
        assert_eq!(hs.serving().get(&key("b")), Some(&p1));
        assert!(call(p1, "/").await.unwrap().unwrap().0.contains(" 200 "));
    }
}
