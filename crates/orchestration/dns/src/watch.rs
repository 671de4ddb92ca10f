//! Orchestration: the zone follows the cluster — reflectors on Services and
//! EndpointSlices (all namespaces); after both have listed once, the zone is built and
//! swapped in, and rebuilt 50 ms after any later change (a burst of events is one
//! rebuild; an event during a build triggers the next). The whole zone is rebuilt each
//! time: pure, and fast next to the 1 s within which answers must follow the cluster.

use crate::{Config, Shared};
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use podnet_dns::{ZoneConfig, build_zone};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// How long a burst of events is gathered into one rebuild.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// Watches and rebuilds until a watch ends.
pub async fn run(client: kube::Client, shared: Arc<Shared>, config: &Config) -> Result<()> {
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (eps_reader, eps_writer) = reflector::store::<EndpointSlice>();
    let notify = Arc::new(Notify::new());
    let services = reflect(
        Api::<Service>::all(client.clone()),
        svc_writer,
        notify.clone(),
    );
    let slices = reflect(
        Api::<EndpointSlice>::all(client),
        eps_writer,
        notify.clone(),
    );
    let zone_name = config.zone.clone();
    let ttl = config.ttl;
    let build = async move {
        svc_reader
            .wait_until_ready()
            .await
            .context("Service watch ended before its first list")?;
        eps_reader
            .wait_until_ready()
            .await
            .context("EndpointSlice watch ended before its first list")?;
        let mut last_problems = Vec::new();
        loop {
            let started = std::time::Instant::now();
            let svcs = svc_reader.state();
            let eps = eps_reader.state();
            let serial = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() as u32);
            let zc = ZoneConfig {
                zone: zone_name.clone(),
                ttl,
                serial,
            };
            let (zone, problems) = build_zone(
                &zc,
                svcs.iter().map(|s| s.as_ref()),
                eps.iter().map(|s| s.as_ref()),
            );
            shared.metrics.zone_records.set(zone.record_count() as i64);
            shared.metrics.zone_problems.set(problems.len() as i64);
            shared.metrics.zone_builds.inc();
            tracing::debug!(
                records = zone.record_count(),
                services = svcs.len(),
                slices = eps.len(),
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "zone built"
            );
            shared.zone.store(Some(Arc::new(zone)));
            if !shared.metrics.ready() {
                tracing::info!(
                    services = svcs.len(),
                    slices = eps.len(),
                    "first zone built"
                );
                shared.metrics.set_ready();
            }
            if problems != last_problems {
                for p in &problems {
                    tracing::warn!(object = %p.object, reason = %p.reason, "left out of the zone");
                }
                last_problems = problems;
            }
            notify.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
        }
    };
    tokio::select! {
        () = services => Err(anyhow::anyhow!("Service watch ended")),
        () = slices => Err(anyhow::anyhow!("EndpointSlice watch ended")),
        r = build => r,
    }
}

async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, notify: Arc<Notify>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => notify.notify_one(),
            Err(e) => tracing::warn!(error = %e, "watching {}", K::plural(&())),
        }
    }
}
