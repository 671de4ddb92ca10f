//! Pure: the plan kept up to date object by object. Invariant: after [`Planner::plan`],
//! the ports of every Service ever returned (the latest return per Service) are exactly
//! what [`crate::plan_services`] gives for the objects the planner was last told about
//! (slices taken in name order), and [`Planner::problems`] is its problem list.
//!
//! The agent watches Services and EndpointSlices and tells the planner each change; a
//! change marks its Service dirty and [`Planner::plan`] re-plans only the dirty ones, so
//! the cost of an endpoint change does not grow with the number of Services. The planner
//! keeps what the plan reads of each object (a checked [`ServiceShape`], per slice a
//! [`SliceView`]), not the objects: the Kubernetes objects of 50k Services and their
//! slices take hundreds of megabytes, these a few tens.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    NodeContext, Problem, ServicePort, ServiceShape, SliceView, object_name, parse_service,
    service_problem, slice_view,
};

/// A Service (or an EndpointSlice) by namespace and name. The names are shared
/// (`Arc<str>`): the planner's records, the watch's pending changes and the proxy's
/// [`crate::PortName`]s hold one copy of each between them, and a clone allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectName {
    pub fn new(namespace: &str, name: &str) -> ObjectName {
        ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The name of an object ("default" for a missing namespace, as the plan reads it).
    pub fn of(meta: &ObjectMeta) -> ObjectName {
        let (ns, name) = object_name(meta);
        ObjectName::new(ns, name)
    }
}

/// What the plan reads of one Service, checked: a few hundred bytes instead of the
/// object. Made where the object arrives (the watch), so the object can go at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInput {
    name: ObjectName,
    /// `Ok(None)`: nothing to program; `Err`: its problem.
    shape: Result<Option<ServiceShape>, String>,
}

impl ServiceInput {
    pub fn new(svc: &Service) -> ServiceInput {
        ServiceInput {
            name: ObjectName::of(&svc.metadata),
            shape: parse_service(svc),
        }
    }

    pub fn name(&self) -> &ObjectName {
        &self.name
    }
}

/// What the plan reads of one EndpointSlice, for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInput {
    name: ObjectName,
    /// The Service it feeds and its view (`None`: ignored, not IPv4 or not linked).
    view: Option<(ObjectName, SliceView)>,
    problems: Vec<Problem>,
}

impl SliceInput {
    pub fn new(slice: &EndpointSlice, node: &NodeContext) -> SliceInput {
        let mut problems = Vec::new();
        let name = ObjectName::of(&slice.metadata);
        // A slice belongs to a Service of its own namespace: one copy of that name.
        let view = slice_view(slice, node, &mut problems).map(|(_, svc, view)| {
            let service = ObjectName {
                namespace: name.namespace.clone(),
                name: svc.into(),
            };
            (service, view)
        });
        SliceInput {
            name,
            view,
            problems,
        }
    }

    pub fn name(&self) -> &ObjectName {
        &self.name
    }
}

/// Which kind of object a problem belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Service,
    Slice,
}

/// What the planner keeps of one Service: its checked shape and its slices' views, in
/// one entry (one copy of the Service's name, one hash table for all Services).
#[derive(Debug, Default)]
struct Entry {
    /// `None`: the Service itself is not known (only slices naming it); `Some(Ok(None))`:
    /// nothing to program; `Some(Err)`: its problem.
    shape: Option<Result<Option<ServiceShape>, String>>,
    /// Its slices' views, sorted by slice name (the order the plan merges them in). A Vec:
    /// most Services have one slice, and a one-entry BTreeMap allocates a whole node
    /// (~800 bytes at 50k Services: 40 MB).
    views: Vec<(Arc<str>, SliceView)>,
}

/// The incremental planner.
#[derive(Debug)]
pub struct Planner {
    node: NodeContext,
    /// Service → its shape and slices' views (an entry exists while either does).
    services: HashMap<ObjectName, Entry>,
    /// How many entries have a shape (the Services known).
    known: usize,
    /// Slice → the name of the Service it feeds, in the slice's own namespace (`None`:
    /// ignored, not IPv4 or not linked). The name is the Service entry's.
    slices: HashMap<ObjectName, Option<Arc<str>>>,
    /// The problems of the objects that have some (few: kept apart so that listing them
    /// costs nothing per Service).
    problems: BTreeMap<(Kind, ObjectName), Vec<Problem>>,
    /// Services to re-plan.
    dirty: BTreeSet<ObjectName>,
}

impl Planner {
    pub fn new(node: NodeContext) -> Planner {
        Planner {
            node,
            services: HashMap::new(),
            known: 0,
            slices: HashMap::new(),
            problems: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// The node planned for.
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// `name` with the names of the Service entry that has it, when there is one (so
    /// that what refers to a Service shares its entry's strings).
    fn shared(&self, name: ObjectName) -> ObjectName {
        match self.services.get_key_value(&name) {
            Some((k, _)) => k.clone(),
            None => name,
        }
    }

    /// Makes room for `services` more Services and `slices` more slices (a first list:
    /// the tables are sized once instead of growing, and rehashing, as they fill).
    pub fn reserve(&mut self, services: usize, slices: usize) {
        self.services.reserve(services);
        self.slices.reserve(slices);
    }

    /// A Service was added or changed.
    pub fn apply_service(&mut self, svc: &Service) {
        self.set_service(ServiceInput::new(svc));
    }

    /// A Service was added or changed (already read).
    pub fn set_service(&mut self, input: ServiceInput) {
        let ServiceInput {
            name: key,
            mut shape,
        } = input;
        let mut messages: Vec<String> = shape.as_ref().err().cloned().into_iter().collect();
        if let Ok(Some(s)) = &mut shape {
            messages.extend(s.confine_node_ports(&self.node.node_port_range));
        }
        self.set_problems(
            Kind::Service,
            &key,
            messages
                .into_iter()
                .map(|m| service_problem(&key.namespace, &key.name, m))
                .collect(),
        );
        let key = self.shared(key);
        let entry = self.services.entry(key.clone()).or_default();
        if entry.shape.as_ref() != Some(&shape) {
            if entry.shape.is_none() {
                self.known += 1;
            }
            entry.shape = Some(shape);
            self.dirty.insert(key);
        }
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, key: &ObjectName) {
        self.set_problems(Kind::Service, key, Vec::new());
        if let Some(entry) = self.services.get_mut(key)
            && entry.shape.take().is_some()
        {
            self.known -= 1;
            if entry.views.is_empty() {
                self.services.remove(key);
            }
            self.dirty.insert(key.clone());
        }
    }

    /// An EndpointSlice was added or changed.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let input = SliceInput::new(slice, &self.node);
        self.set_slice(input);
    }

    /// An EndpointSlice was added or changed (already read, for this planner's node).
    pub fn set_slice(&mut self, input: SliceInput) {
        let SliceInput {
            name: mut key,
            view,
            problems,
        } = input;
        let service = view.as_ref().map(|(svc, _)| &svc.name);
        if let Some((k, old)) = self.slices.get_key_value(&key) {
            let moved = old.as_ref() != service;
            key = k.clone();
            if moved {
                self.forget_view(&key); // moved to another Service (its label changed)
            }
        }
        let mut service = None;
        if let Some((svc, view)) = view {
            let svc = self.shared(svc);
            // The slice's namespace is its Service's: one copy of it.
            key.namespace = svc.namespace.clone();
            service = Some(svc.name.clone());
            let views = &mut self.services.entry(svc.clone()).or_default().views;
            match views.binary_search_by(|(n, _)| n.cmp(&key.name)) {
                Ok(i) if views[i].1 == view => {}
                Ok(i) => {
                    views[i].1 = view;
                    self.dirty.insert(svc);
                }
                Err(i) => {
                    // Most Services have one slice: room for one (a pushed Vec has room
                    // for 4).
                    views.reserve_exact(1);
                    views.insert(i, (key.name.clone(), view));
                    self.dirty.insert(svc);
                }
            }
        }
        self.set_problems(Kind::Slice, &key, problems);
        self.slices.insert(key, service);
    }

    /// An EndpointSlice was deleted.
    pub fn delete_slice(&mut self, key: &ObjectName) {
        self.forget_view(key);
        self.set_problems(Kind::Slice, key, Vec::new());
        self.slices.remove(key);
    }

    /// Drops the slice's view from its Service (which becomes dirty).
    fn forget_view(&mut self, slice: &ObjectName) {
        let Some(Some(service)) = self.slices.get(slice) else {
            return;
        };
        let service = ObjectName {
            namespace: slice.namespace.clone(),
            name: service.clone(),
        };
        if let Some(entry) = self.services.get_mut(&service)
            && let Ok(i) = entry.views.binary_search_by(|(n, _)| n.cmp(&slice.name))
        {
            entry.views.remove(i);
            if entry.views.is_empty() && entry.shape.is_none() {
                self.services.remove(&service);
            }
            self.dirty.insert(service);
        }
    }

    /// Deletes every Service `keep` refuses (after a re-list: the ones not listed).
    pub fn retain_services(&mut self, mut keep: impl FnMut(&ObjectName) -> bool) {
        let gone: Vec<ObjectName> = self
            .services
            .iter()
            .filter(|(k, e)| e.shape.is_some() && !keep(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.delete_service(&k);
        }
    }

    /// Deletes every EndpointSlice `keep` refuses.
    pub fn retain_slices(&mut self, mut keep: impl FnMut(&ObjectName) -> bool) {
        let gone: Vec<ObjectName> = self.slices.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.delete_slice(&k);
        }
    }

    /// Replaces everything the planner knows with a whole snapshot (the Services and
    /// slices not in it are deleted); only what differs becomes dirty.
    pub fn replace_all(&mut self, services: &[Service], slices: &[EndpointSlice]) {
        let svc_names: BTreeSet<ObjectName> = services
            .iter()
            .map(|s| ObjectName::of(&s.metadata))
            .collect();
        let slice_names: BTreeSet<ObjectName> =
            slices.iter().map(|s| ObjectName::of(&s.metadata)).collect();
        self.retain_services(|k| svc_names.contains(k));
        self.retain_slices(|k| slice_names.contains(k));
        for s in services {
            self.apply_service(s);
        }
        for s in slices {
            self.apply_slice(s);
        }
    }

    /// Whether some Service waits to be re-planned.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Re-plans the Services changed since the last call: each with all its ports now
    /// (none when it is gone, not programmed here, or bad), sorted by Service.
    pub fn plan(&mut self) -> Vec<(ObjectName, Vec<ServicePort>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|key| match self.services.get_key_value(&key) {
                Some((
                    k,
                    Entry {
                        shape: Some(Ok(Some(shape))),
                        views,
                    },
                )) => {
                    // The entry's names: the ports share them.
                    let views = views.iter().map(|(_, v)| v);
                    let mut ports = shape.ports(&k.namespace, &k.name, views);
                    ports.sort_by(|a, b| a.name.cmp(&b.name));
                    (k.clone(), ports)
                }
                _ => (key, Vec::new()),
            })
            .collect()
    }

    /// Every problem of the objects known (bad Services, bad slice ports), sorted.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self.problems.values().flatten().cloned().collect();
        out.sort();
        out
    }

    fn set_problems(&mut self, kind: Kind, key: &ObjectName, problems: Vec<Problem>) {
        if problems.is_empty() {
            self.problems.remove(&(kind, key.clone()));
        } else {
            self.problems.insert((kind, key.clone()), problems);
        }
    }

    /// Number of Services known.
    pub fn services(&self) -> usize {
        self.known
    }
}
