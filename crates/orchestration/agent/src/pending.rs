//! Orchestration: one kind's share of a watch's pending changes — the services and policy
//! loops feed kube watch events straight into it (no reflector store, no copies of whole
//! objects), and a sync takes what accumulated.
//!
//! A re-list (`Init` … `InitDone`) after the watch was down carries no deletions, so the
//! set of objects listed is kept: once complete, every object not in it is gone.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;

/// Object name `N` → its latest input `I`, and the list bookkeeping.
#[derive(Debug)]
pub(crate) struct Pending<N, I> {
    /// Object → its latest state (`None`: deleted).
    pub(crate) latest: HashMap<N, Option<I>>,
    /// A (re-)list in progress: the objects listed so far.
    listing: Option<HashSet<N>>,
    /// A complete list not yet applied: every object not in it is gone (deleted while
    /// the watch was down). Objects applied after it are added to it.
    pub(crate) listed: Option<HashSet<N>>,
    /// Whether a first complete list was seen.
    pub(crate) ready: bool,
}

impl<N, I> Default for Pending<N, I> {
    fn default() -> Self {
        Pending {
            latest: HashMap::new(),
            listing: None,
            listed: None,
            ready: false,
        }
    }
}

impl<N: Eq + Hash + Clone, I> Pending<N, I> {
    /// Records one watch event; `read` names the object and reads the input kept of it.
    pub(crate) fn event<K>(&mut self, event: watcher::Event<K>, read: impl Fn(&K) -> (N, I)) {
        match event {
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitApply(k) | watcher::Event::Apply(k) => {
                let (name, input) = read(&k);
                for set in [&mut self.listing, &mut self.listed].into_iter().flatten() {
                    set.insert(name.clone());
                }
                self.latest.insert(name, Some(input));
            }
            watcher::Event::Delete(k) => {
                let (name, _) = read(&k);
                for set in [&mut self.listing, &mut self.listed].into_iter().flatten() {
                    set.remove(&name);
                }
                self.latest.insert(name, None);
            }
            watcher::Event::InitDone => {
                self.listed = self.listing.take();
                self.ready = true;
            }
        }
    }

    /// The changes to apply, leaving a list in progress and `ready` here.
    pub(crate) fn take(&mut self) -> Pending<N, I> {
        Pending {
            latest: std::mem::take(&mut self.latest),
            listing: None,
            listed: self.listed.take(),
            ready: self.ready,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.latest.is_empty() && self.listed.is_none()
    }
}

/// A poisoned lock is still used: the state behind it is replaced whole per event.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Feeds one kind's watch events into `changes` (`read` is the loop's `Changes` method
/// for the kind) and wakes the sync loop, except in the middle of a list.
pub(crate) async fn watch<K, C>(
    api: Api<K>,
    changes: Arc<Mutex<C>>,
    notify: Arc<Notify>,
    read: fn(&mut C, watcher::Event<K>),
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                let wake = !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_));
                read(&mut lock(&changes), ev);
                if wake {
                    notify.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching {}", K::plural(&())),
        }
    }
}
