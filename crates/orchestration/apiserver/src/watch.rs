//! Orchestration: list filtering and watch streams. Invariant: a watch is subscribed to the
//! event fan-out in the same critical section in which its starting point (current objects
//! or history replay) is read, so no event is lost or duplicated between the two.
//!
//! A watch from resourceVersion R replays the history after R; R older than the history →
//! one ERROR event with a 410 Expired Status (kube's watcher then relists). No R or "0" →
//! the current objects as ADDED first (what the real server does), then a BOOKMARK marked
//! `k8s.io/initial-events-end` when `sendInitialEvents=true` (kube's streaming-list mode).
//! A watcher that falls behind the fan-out buffer also gets 410 rather than a silent gap.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use podnet_cluster::Selector;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::error::{ApiError, ApiResult};
use crate::resource::Kind;
use crate::store::{Event, Store, event_line, labels_of};

/// `?fieldSelector=`: equality on dotted paths (`metadata.name`, `spec.nodeName`, ...).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, eq, val) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector term {term:?}"
                )));
            };
            let path = path.trim();
            if path.is_empty() || !path.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {path:?}"
                )));
            }
            out.push((
                format!("/{}", path.replace('.', "/")),
                eq,
                val.trim().to_string(),
            ));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.0.iter().all(|(ptr, eq, want)| {
            let got = match v.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub kind: Kind,
    pub ns: Option<String>,
    pub labels: Selector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        (self.labels.is_empty() || self.labels.matches(&labels_of(v))) && self.fields.matches(v)
    }

    /// The line this watcher sends for `ev`, if any.
    fn line(&self, ev: &Event) -> Option<Bytes> {
        if ev.kind != self.kind || self.ns.as_ref().is_some_and(|n| *n != ev.ns) {
            return None;
        }
        if self.labels.is_empty() && self.fields.is_empty() {
            return Some(ev.line.clone());
        }
        let now = self.matches(&ev.object);
        match ev.type_ {
            "MODIFIED" => {
                let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(ev.line.clone()),
                    (false, true) => Some(event_line("ADDED", &ev.object)),
                    (true, false) => Some(event_line("DELETED", &ev.object)),
                    (false, false) => None,
                }
            }
            _ => now.then(|| ev.line.clone()),
        }
    }
}

pub struct WatchRequest {
    pub filter: Filter,
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

pub fn start(store: &Arc<Mutex<Store>>, req: WatchRequest) -> Response {
    let (initial, rx, mut last_rv) = {
        let s = store.lock().unwrap_or_else(|e| e.into_inner());
        let mut initial = Vec::new();
        let rx = match req.resource_version.filter(|rv| *rv != 0) {
            None => {
                for o in s.list(req.filter.kind, req.filter.ns.as_deref()) {
                    if req.filter.matches(o) {
                        initial.push(event_line("ADDED", o));
                    }
                }
                if req.send_initial_events {
                    initial.push(bookmark(req.filter.kind, s.rv, true));
                }
                Some(s.tx.subscribe())
            }
            Some(rv) => match s.events_since(rv) {
                Some(events) => {
                    initial.extend(events.iter().filter_map(|e| req.filter.line(e)));
                    Some(s.tx.subscribe())
                }
                None => {
                    let e = ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        s.history_floor
                    ));
                    initial.push(event_line("ERROR", &e.to_status()));
                    None
                }
            },
        };
        (initial, rx, s.rv)
    };
    let (tx, body_rx) = mpsc::channel::<Bytes>(256);
    let filter = req.filter;
    let kind = filter.kind;
    let bookmarks = req.bookmarks;
    let timeout = req.timeout;
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut rx) = rx else {
            return;
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    if tx.send(bookmark(kind, last_rv, false)).await.is_err() {
                        return;
                    }
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => {
                        last_rv = ev.rv;
                        if let Some(line) = filter.line(&ev)
                            && tx.send(line).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e = ApiError::gone(format!("watcher fell {n} events behind; relist"));
                        let _ = tx.send(event_line("ERROR", &e.to_status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Parses list/watch query parameters into a filter.
pub fn filter_from_query(
    kind: Kind,
    ns: Option<String>,
    q: &BTreeMap<String, String>,
) -> ApiResult<Filter> {
    let labels = match q.get("labelSelector") {
        Some(s) => Selector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => Selector::default(),
    };
    let fields = match q.get("fieldSelector") {
        Some(s) => FieldSelector::parse(s)?,
        None => FieldSelector::default(),
    };
    Ok(Filter {
        kind,
        ns,
        labels,
        fields,
    })
}
