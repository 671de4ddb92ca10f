//! Orchestration: the zone follows the cluster — watches on Services and EndpointSlices
//! (all namespaces) feed a [`ZoneState`] with the few fields the zone needs (the objects
//! themselves are dropped at once; no reflector stores). Once both watches have listed,
//! the zone is committed and swapped in (`arc-swap`); after that, a change is committed
//! [`DEBOUNCE`] after the first event of a burst. A commit re-encodes only the names of
//! the objects that changed and shares every untouched shard with the previous snapshot:
//! milliseconds at 50k Services (`docs/benchmarks.md`, issue 6), so answers follow the
//! cluster well within the 1 s the issue asks. A watch that lists again (after a lost
//! watch) is applied as a whole at its end: what disappeared meanwhile is deleted.

use crate::{Config, Shared};
use anyhow::{Result, bail};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use podnet_dns::{ServiceInfo, SliceInfo, ZoneConfig, ZoneState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long a burst of events is gathered into one commit.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// One watch's progress: `None` until its first list is complete.
struct Listing<T> {
    /// Objects of a list in progress.
    pending: Option<Vec<T>>,
    listed: bool,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            pending: None,
            listed: false,
        }
    }
}

fn watch<K>(api: Api<K>) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    watch_stream(api, watcher::Config::default()).default_backoff()
}

/// Applies one Service event; whether the zone may have changed.
fn on_service(state: &mut ZoneState, l: &mut Listing<ServiceInfo>, ev: Event<Service>) -> bool {
    match ev {
        Event::Init => l.pending = Some(Vec::new()),
        Event::InitApply(s) => {
            if let (Some(p), Some(s)) = (&mut l.pending, ServiceInfo::from_service(&s)) {
                p.push(s);
            }
        }
        Event::InitDone => {
            state.replace_services(l.pending.take().unwrap_or_default());
            l.listed = true;
            return true;
        }
        Event::Apply(s) => match ServiceInfo::from_service(&s) {
            Some(s) => state.apply_service(s),
            None => delete_service(state, &s),
        },
        Event::Delete(s) => delete_service(state, &s),
    }
    l.pending.is_none()
}

fn delete_service(state: &mut ZoneState, s: &Service) {
    if let Some(name) = s.metadata.name.as_deref() {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        state.delete_service(ns, name);
    }
}

/// Applies one EndpointSlice event; whether the zone may have changed.
fn on_slice(state: &mut ZoneState, l: &mut Listing<SliceInfo>, ev: Event<EndpointSlice>) -> bool {
    match ev {
        Event::Init => l.pending = Some(Vec::new()),
        Event::InitApply(s) => {
            if let (Some(p), Some(s)) = (&mut l.pending, SliceInfo::from_slice(&s)) {
                p.push(s);
            }
        }
        Event::InitDone => {
            state.replace_slices(l.pending.take().unwrap_or_default());
            l.listed = true;
            return true;
        }
        Event::Apply(s) => {
            if let Some(s) = SliceInfo::from_slice(&s) {
                state.apply_slice(s);
            }
        }
        Event::Delete(s) => {
            if let Some(name) = s.metadata.name.as_deref() {
                let ns = s.metadata.namespace.as_deref().unwrap_or("default");
                state.delete_slice(ns, name);
            }
        }
    }
    l.pending.is_none()
}

/// Watches and commits until a watch ends.
pub async fn run(client: kube::Client, shared: Arc<Shared>, config: &Config) -> Result<()> {
    let services = watch(Api::<Service>::all(client.clone()));
    let slices = watch(Api::<EndpointSlice>::all(client));
    futures::pin_mut!(services);
    futures::pin_mut!(slices);
    let mut state = ZoneState::new(ZoneConfig {
        zone: config.zone.clone(),
        ttl: config.ttl,
        serial: 1,
    });
    let (mut svc_list, mut eps_list) = (Listing::default(), Listing::default());
    let mut last_problems = Vec::new();
    // When the changes gathered so far are committed.
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        let ready = svc_list.listed && eps_list.listed;
        let changed = tokio::select! {
            ev = services.next() => match ev {
                None => bail!("Service watch ended"),
                Some(Ok(ev)) => on_service(&mut state, &mut svc_list, ev),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching services");
                    false
                }
            },
            ev = slices.next() => match ev {
                None => bail!("EndpointSlice watch ended"),
                Some(Ok(ev)) => on_slice(&mut state, &mut eps_list, ev),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching endpointslices");
                    false
                }
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                if ready && due.is_some() =>
            {
                due = None;
                commit(&mut state, &shared, &mut last_problems);
                false
            }
        };
        if !ready && svc_list.listed && eps_list.listed {
            // The first zone: at once (it holds whatever was due too).
            due = None;
            commit(&mut state, &shared, &mut last_problems);
            let (services, slices) = state.object_counts();
            tracing::info!(services, slices, "first zone built");
            shared.metrics.set_ready();
        } else if changed && due.is_none() && state.has_changes() {
            due = Some(tokio::time::Instant::now() + DEBOUNCE);
        }
    }
}

fn commit(state: &mut ZoneState, shared: &Shared, last_problems: &mut Vec<podnet_dns::Problem>) {
    let started = Instant::now();
    let serial = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32);
    let zone = state.commit(serial);
    let problems = state.problems();
    shared.metrics.zone_records.set(zone.record_count() as i64);
    shared.metrics.zone_problems.set(problems.len() as i64);
    shared.metrics.zone_builds.inc();
    tracing::debug!(
        records = zone.record_count(),
        names = zone.name_count(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "zone committed"
    );
    shared.zone.store(Some(Arc::new(zone)));
    if problems != *last_problems {
        for p in &problems {
            tracing::warn!(object = %p.object, reason = %p.reason, "left out of the zone");
        }
        *last_problems = problems;
    }
}
