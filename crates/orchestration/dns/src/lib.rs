//! Orchestration: `podnet dns` — the cluster DNS server (what CoreDNS does behind the
//! `kube-dns` Service), serving the zone `podnet-dns` builds from Services and
//! EndpointSlices and forwarding every other name to upstream servers through a cache.
//!
//! Flow: kube watches on Services and EndpointSlices ([`watch`]) feed the few fields the
//! zone needs into a `podnet_dns::ZoneState`; 20 ms after a change, the names of the
//! objects that changed are re-encoded (pure) and the new snapshot — sharing every
//! untouched shard with the old one — is swapped in atomically (`arc-swap`): readers
//! never lock and never see half a zone.
//! Until both watches have listed once nothing in the zone is answered (SERVFAIL), and
//! `/healthz` is 503.
//!
//! Serving ([`udp`], [`tcp`]): one `SO_REUSEPORT` UDP socket per worker thread, each a
//! plain blocking `recvmmsg` → answer → `sendmmsg` loop on a std thread (the kernel
//! spreads clients over the sockets; no async runtime, no locks, no allocation for zone
//! answers);
//! cache hits are answered on the same thread. Misses and aliases go to the tokio runtime
//! ([`forward`]): UDP to the first upstream, TCP when the answer is truncated, the next
//! upstream on timeout, SERVFAIL when all fail. TCP: RFC 1035 2-byte framing, several
//! queries per connection, answered in order, idle timeout.
//!
//! Why faster than CoreDNS: CoreDNS's UDP path is a goroutine per query through a plugin
//! chain that allocates a `dns.Msg`, looks the name up in informer indexes and packs a
//! new reply with compression; podnet's zone replies are pre-encoded per (name, type) at
//! build time and copied (see `podnet_dns::zone`), cached upstream answers are replayed as
//! bytes, and the threads never meet on a lock for zone answers.

pub mod forward;
pub mod metrics;
pub mod tcp;
pub mod udp;
pub mod watch;

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use metrics::Metrics;
use podnet_dns::{Cache, Zone};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP and TCP address to serve on (`0.0.0.0:53`).
    pub listen: SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub zone: String,
    /// Where names outside the zone go, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// `/metrics` and `/healthz` (`0.0.0.0:9153`, CoreDNS's port).
    pub metrics_addr: SocketAddr,
    /// TTL of the zone's records, seconds (5).
    pub ttl: u32,
    /// Forwarded answers kept (10 000).
    pub cache_size: usize,
    /// UDP worker threads; 0 = one per CPU.
    pub udp_workers: usize,
    /// How long one upstream gets to answer (2 s).
    pub upstream_timeout: Duration,
    /// A TCP connection without a query for this long is closed (10 s).
    pub tcp_idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:53".parse().expect("valid"),
            zone: "cluster.local".into(),
            upstreams: Vec::new(),
            metrics_addr: "0.0.0.0:9153".parse().expect("valid"),
            ttl: 5,
            cache_size: 10_000,
            udp_workers: 0,
            upstream_timeout: Duration::from_secs(2),
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// What every part of the server shares.
pub struct Shared {
    pub zone: ArcSwapOption<Zone>,
    /// The zone's apex (lowercase wire form), known before the first zone exists.
    pub apex: Vec<u8>,
    pub cache: Mutex<Cache>,
    pub metrics: Metrics,
    pub forwarder: forward::Forwarder,
    /// The cache's clock starts here.
    pub started: Instant,
    /// Set when the server stops: the UDP threads end.
    pub stop: AtomicBool,
    /// UDP queries handed to the runtime and not answered yet.
    pub in_flight: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// Time for the cache.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The bound sockets, before serving: tests learn the ports here.
pub struct Server {
    config: Config,
    shared: Arc<Shared>,
    udp: Vec<std::net::UdpSocket>,
    tcp: std::net::TcpListener,
    metrics: std::net::TcpListener,
}

impl Server {
    /// Binds the UDP sockets (one per worker, `SO_REUSEPORT`), the TCP listener on the
    /// same port, and the metrics listener.
    pub fn bind(config: Config) -> Result<Server> {
        let apex = podnet_dns::wire::name_from_str(&config.zone)
            .with_context(|| format!("zone {:?} is not a domain name", config.zone))?;
        let workers = match config.udp_workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let udp = udp::bind(config.listen, workers)?;
        let port = udp[0].local_addr()?.port();
        let tcp_addr = SocketAddr::new(config.listen.ip(), port);
        let tcp = std::net::TcpListener::bind(tcp_addr)
            .with_context(|| format!("listen on TCP {tcp_addr}"))?;
        let metrics = std::net::TcpListener::bind(config.metrics_addr)
            .with_context(|| format!("listen on {}", config.metrics_addr))?;
        let shared = Arc::new(Shared {
            zone: ArcSwapOption::empty(),
            apex,
            cache: Mutex::new(Cache::new(config.cache_size)),
            metrics: Metrics::new(),
            forwarder: forward::Forwarder::new(config.upstreams.clone(), config.upstream_timeout),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            in_flight: Default::default(),
        });
        Ok(Server {
            config,
            shared,
            udp,
            tcp,
            metrics,
        })
    }

    /// The DNS address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().expect("bound")
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.local_addr().expect("bound")
    }

    /// Serves until the future is dropped (the UDP threads end within 200 ms then) or a
    /// watch or server fails.
    pub async fn serve(self, client: kube::Client) -> Result<()> {
        let Server {
            config,
            shared,
            udp,
            tcp,
            metrics,
        } = self;
        let _stop = StopOnDrop(shared.clone());
        let rt = tokio::runtime::Handle::current();
        for (i, sock) in udp.into_iter().enumerate() {
            let shared = shared.clone();
            let rt = rt.clone();
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp::serve(sock, shared, rt))
                .context("start a UDP worker")?;
        }
        tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        metrics.set_nonblocking(true)?;
        let metrics = tokio::net::TcpListener::from_std(metrics)?;
        tracing::info!(
            listen = %tcp.local_addr()?,
            zone = %config.zone,
            upstreams = ?config.upstreams,
            "serving DNS"
        );
        let http = axum::serve(metrics, metrics::router(shared.clone()));
        tokio::select! {
            r = http.into_future() => r.context("metrics server"),
            r = tcp::serve(tcp, shared.clone(), config.tcp_idle_timeout) => r,
            r = watch::run(client, shared.clone(), &config) => r,
        }
    }
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// Binds and serves: `podnet dns`.
pub async fn run(config: Config, client: kube::Client) -> Result<()> {
    Server::bind(config)?.serve(client).await
}

/// Answers one query that needs more than the zone (a cache miss or an alias): the
/// complete reply, or `None` to say nothing. Used by both transports.
pub async fn answer_slow(shared: &Shared, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
    use podnet_dns::wire::{self, Rcode};
    use podnet_dns::{Outcome, Resolution};
    let started = Instant::now();
    let zone = shared.zone.load_full();
    let mut out = Vec::with_capacity(512);
    let outcome = podnet_dns::answer_query(zone.as_deref(), &shared.apex, packet, tcp, &mut out);
    let q = wire::parse_query(packet).ok();
    let rcode = match (outcome, q) {
        (Outcome::Drop, _) => return None,
        (Outcome::Reply(rcode), _) => rcode,
        (_, None) => return None,
        (Outcome::Forward, Some(q)) => {
            let mut nb = [0u8; wire::MAX_NAME];
            let lname = q.lower_name(&mut nb);
            match shared.resolve(lname, q.qtype, q.qclass).await {
                Some((stored, elapsed)) => stored.write_reply(&q, elapsed, &mut out),
                None => {
                    wire::rcode_reply(&mut out, &q, Rcode::ServFail);
                    Rcode::ServFail
                }
            }
        }
        (Outcome::Alias, Some(q)) => {
            let zone = zone.as_deref()?;
            let mut nb = [0u8; wire::MAX_NAME];
            let lname = q.lower_name(&mut nb);
            let Resolution::Cname { answer, target } = zone.resolve(lname, q.qtype) else {
                return None;
            };
            let found = if wire::ends_with_name(target, &shared.apex) {
                resolve_in_zone(zone, target, q.qtype)
            } else {
                shared.resolve(target, q.qtype, q.qclass).await
            };
            let limit = if tcp { 65535 } else { q.max_udp() };
            zone.write_alias_reply(
                &q,
                answer,
                found.as_ref().map(|(s, e)| (s, *e)),
                limit,
                &mut out,
            )
        }
    };
    if let Ok(q) = wire::parse_query(packet) {
        // Forwarded answers are replayed uncompressed: they may outgrow even TCP's 65535.
        wire::fit(&mut out, &q, if tcp { 65535 } else { q.max_udp() });
    }
    let qtype = wire::parse_query(packet).map_or(0, |q| q.qtype);
    shared.metrics.observe(qtype, rcode, started.elapsed());
    Some(out)
}

/// An alias whose target is in the zone: the zone's answer, read back as a [`Stored`].
fn resolve_in_zone(zone: &Zone, target: &[u8], qtype: u16) -> Option<(podnet_dns::Stored, u32)> {
    use podnet_dns::wire;
    let mut query = Vec::new();
    wire::write_header(&mut query, 0, wire::flag::RD, [1, 0, 0, 0]);
    query.extend_from_slice(target);
    query.extend_from_slice(&qtype.to_be_bytes());
    query.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    let mut out = Vec::new();
    match podnet_dns::answer_query(Some(zone), zone.apex(), &query, true, &mut out) {
        podnet_dns::Outcome::Reply(_) => podnet_dns::Stored::from_response(&out).map(|s| (s, 0)),
        _ => None,
    }
}

impl Shared {
    /// A forwarded answer for (lowercase name, type, class): from the cache, else from
    /// the upstreams (then cached). `None` when every upstream failed.
    pub async fn resolve(
        &self,
        lname: &[u8],
        qtype: u16,
        qclass: u16,
    ) -> Option<(podnet_dns::Stored, u32)> {
        let mut kb = [0u8; podnet_dns::cache::MAX_KEY];
        let key = podnet_dns::cache::key(lname, qtype, qclass, &mut kb);
        if let Some((s, e)) = self
            .cache
            .lock()
            .expect("cache lock")
            .get(key, self.now())
            .map(|(s, e)| (s.clone(), e))
        {
            self.metrics.cache_hits.inc();
            return Some((s, e));
        }
        self.metrics.cache_misses.inc();
        let Some(stored) = self.forwarder.exchange(lname, qtype, qclass).await else {
            self.metrics.forward_failures.inc();
            return None;
        };
        self.cache
            .lock()
            .expect("cache lock")
            .insert(key, stored.clone(), self.now());
        Some((stored, 0))
    }
}
