//! Pure: the zone kept up to date object by object — a change re-encodes only the names
//! it touches, and a commit is a new [`Zone`] snapshot sharing every unchanged shard.
//!
//! Bookkeeping, so that a commit never looks at the rest of the cluster:
//! - Each Service (with the EndpointSlices labelled for it) is one *entry* with a small
//!   id; the SOA and `dns-version` records are entry 0. An entry's records are a pure
//!   function of its inputs ([`render_service`]).
//! - Each name of the zone lists the entries with records there (its owners: one, except
//!   for PTR names of an address several Services use) and counts the names with records
//!   below it (an empty non-terminal exists while that count is above 0).
//! - Changing an object saves the entry's inputs as the zone shows them (once per
//!   commit) and marks it dirty. A commit renders each dirty entry's old and new inputs;
//!   the names whose records differ — and the SRV names whose targets are among them (the
//!   targets' addresses are their additional section; a Service's SRV targets are its
//!   own names) — are re-encoded from all their owners' records; owners, record counts
//!   and the non-terminal counts above are adjusted; a name left without records or
//!   names below disappears.
//!
//! A commit therefore costs the changed entries' rendering plus, per touched name, one
//! copy of its shard the first time the shard changes while the previous snapshot is
//! still shared (64 shards: at 55k Services a shard holds ~5k names, copied in about a
//! millisecond; fewer shards keep the readers' lookups in cache). `tests/state.rs`
//! checks that any sequence of changes gives the zone a full build of the end state
//! gives.

use crate::objects::{ServiceInfo, SliceInfo};
use crate::wire;
use crate::zone::{
    Names, Node, Problem, Rdata, Records, SHARDS, Shard, Zone, ZoneConfig, encode_node,
    render_service, render_static, shard_of,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// `(namespace, name)`.
type Key = (Box<str>, Box<str>);

/// The objects of one entry, as rendered or as they are now.
#[derive(Debug, Clone, Default)]
struct Inputs {
    service: Option<Arc<ServiceInfo>>,
    slices: Vec<Arc<SliceInfo>>,
}

#[derive(Debug)]
struct Entry {
    id: u32,
    service: Option<Arc<ServiceInfo>>,
    /// Slices labelled for this Service, by slice name.
    slices: BTreeMap<Box<str>, Arc<SliceInfo>>,
    /// The inputs the zone shows, saved at the first change after a commit; `Some`
    /// exactly while the entry is dirty.
    shown: Option<Inputs>,
    problems: Vec<Problem>,
}

impl Entry {
    fn inputs(&self) -> Inputs {
        Inputs {
            service: self.service.clone(),
            slices: self.slices.values().cloned().collect(),
        }
    }
}

/// The zone, changed object by object; [`ZoneState::commit`] makes the snapshot readers
/// use.
#[derive(Debug)]
pub struct ZoneState {
    config: ZoneConfig,
    names: Names,
    shards: Vec<Arc<Shard>>,
    entries: HashMap<Key, Entry>,
    /// id → entry key; `None` for a free id (and id 0, the static records).
    keys: Vec<Option<Key>>,
    free: Vec<u32>,
    slices: HashMap<Key, Arc<SliceInfo>>,
    dirty: Vec<u32>,
    /// The static records are not in the zone yet.
    fresh: bool,
    /// Dirty entries committed per step.
    chunk: usize,
    records: usize,
    name_count: usize,
}

fn render(svc_suffix: &[u8], inputs: &Inputs, problems: &mut Vec<Problem>) -> Records {
    match &inputs.service {
        Some(svc) => {
            let slices: Vec<&SliceInfo> = inputs.slices.iter().map(|s| &**s).collect();
            render_service(svc_suffix, svc, &slices, problems)
        }
        None => Records::new(),
    }
}

/// Sorted and without repeats (the form names are encoded from).
fn canonical(mut v: Vec<Rdata>) -> Vec<Rdata> {
    v.sort_unstable();
    v.dedup();
    v
}

impl ZoneState {
    /// An empty cluster: the apex with its SOA, `dns-version`, `svc.` and `pod.`.
    pub fn new(config: ZoneConfig) -> ZoneState {
        let names = Names::new(&config.zone);
        let mut state = ZoneState {
            config,
            names,
            shards: (0..SHARDS).map(|_| Arc::new(Shard::default())).collect(),
            entries: HashMap::new(),
            keys: vec![None],
            free: Vec::new(),
            slices: HashMap::new(),
            dirty: Vec::new(),
            fresh: true,
            chunk: 1024,
            records: 0,
            name_count: 0,
        };
        for always in [
            state.names.svc_suffix.clone(),
            state.names.pod_suffix.clone(),
        ] {
            state.node_or_insert(&always);
        }
        state
    }

    /// Commits `n` changed Services per step (1024 by default): fewer bound the memory a
    /// large commit holds at once; tests use small steps to cover names shared across
    /// steps.
    pub fn with_commit_step(mut self, n: usize) -> ZoneState {
        self.chunk = n.max(1);
        self
    }

    /// Adds or replaces a Service (the same content again changes nothing).
    pub fn apply_service(&mut self, svc: ServiceInfo) {
        let key = (svc.namespace.clone(), svc.name.clone());
        if let Some(e) = self.entries.get(&key)
            && e.service.as_deref() == Some(&svc)
        {
            return;
        }
        self.mark(&key).service = Some(Arc::new(svc));
    }

    /// Removes a Service (its slices stay, waiting for it).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        let key: Key = (namespace.into(), name.into());
        if self.entries.get(&key).is_some_and(|e| e.service.is_some()) {
            self.mark(&key).service = None;
        }
    }

    /// Adds or replaces an EndpointSlice.
    pub fn apply_slice(&mut self, slice: SliceInfo) {
        let key = (slice.namespace.clone(), slice.name.clone());
        if self.slices.get(&key).is_some_and(|s| **s == slice) {
            return;
        }
        let slice = Arc::new(slice);
        if let Some(old) = self.slices.insert(key.clone(), slice.clone()) {
            self.detach(&old);
        }
        if let Some(svc) = &slice.service {
            let owner = (slice.namespace.clone(), svc.clone());
            self.mark(&owner).slices.insert(key.1, slice.clone());
        }
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let key: Key = (namespace.into(), name.into());
        if let Some(old) = self.slices.remove(&key) {
            self.detach(&old);
        }
    }

    /// Makes the state hold exactly these Services and slices (after a watch listed
    /// everything again): what is gone is deleted, the rest applied (unchanged objects
    /// cost nothing).
    pub fn replace_all(&mut self, services: Vec<ServiceInfo>, slices: Vec<SliceInfo>) {
        self.replace_slices(slices);
        self.replace_services(services);
    }

    /// Makes the state hold exactly these Services (slices untouched).
    pub fn replace_services(&mut self, services: Vec<ServiceInfo>) {
        let keep: HashSet<Key> = services
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .entries
            .iter()
            .filter(|(k, e)| e.service.is_some() && !keep.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in gone {
            self.delete_service(&ns, &name);
        }
        for s in services {
            self.apply_service(s);
        }
    }

    /// Makes the state hold exactly these EndpointSlices (Services untouched).
    pub fn replace_slices(&mut self, slices: Vec<SliceInfo>) {
        let keep: HashSet<Key> = slices
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let gone: Vec<Key> = self
            .slices
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.delete_slice(&ns, &name);
        }
        for s in slices {
            self.apply_slice(s);
        }
    }

    /// Changes wait for the next commit.
    pub fn has_changes(&self) -> bool {
        self.fresh || !self.dirty.is_empty()
    }

    /// Objects left out of the zone as of the last commit, and why (sorted).
    pub fn problems(&self) -> Vec<Problem> {
        let mut all: Vec<Problem> = self
            .entries
            .values()
            .flat_map(|e| e.problems.iter().cloned())
            .collect();
        all.sort_by(|a, b| (&a.object, &a.reason).cmp(&(&b.object, &b.reason)));
        all
    }

    /// Services and EndpointSlices held.
    pub fn object_counts(&self) -> (usize, usize) {
        let services = self
            .entries
            .values()
            .filter(|e| e.service.is_some())
            .count();
        (services, self.slices.len())
    }

    fn detach(&mut self, slice: &SliceInfo) {
        if let Some(svc) = &slice.service {
            let owner = (slice.namespace.clone(), svc.clone());
            self.mark(&owner).slices.remove(&slice.name);
        }
    }

    /// The entry of a Service (created if new), marked dirty with its shown inputs saved.
    fn mark(&mut self, key: &Key) -> &mut Entry {
        if !self.entries.contains_key(key) {
            let id = match self.free.pop() {
                Some(id) => {
                    self.keys[id as usize] = Some(key.clone());
                    id
                }
                None => {
                    self.keys.push(Some(key.clone()));
                    (self.keys.len() - 1) as u32
                }
            };
            self.entries.insert(
                key.clone(),
                Entry {
                    id,
                    service: None,
                    slices: BTreeMap::new(),
                    shown: None,
                    problems: Vec::new(),
                },
            );
            // New: the zone shows nothing of it yet.
            let e = self.entries.get_mut(key).expect("just inserted");
            e.shown = Some(Inputs::default());
            self.dirty.push(id);
            return e;
        }
        let e = self.entries.get_mut(key).expect("present");
        if e.shown.is_none() {
            e.shown = Some(e.inputs());
            self.dirty.push(e.id);
        }
        e
    }

    /// The records an entry has now (renders are kept for the commit).
    fn records_of<'r>(&self, id: u32, renders: &'r mut HashMap<u32, Records>) -> &'r Records {
        renders.entry(id).or_insert_with(|| {
            if id == 0 {
                return render_static(&self.names.apex);
            }
            let key = self.keys[id as usize].as_ref().expect("a live id");
            let inputs = self.entries[key].inputs();
            render(&self.names.svc_suffix, &inputs, &mut Vec::new())
        })
    }

    /// All records of a name now, from all its owners (sorted, without repeats).
    fn name_records(&self, name: &[u8], renders: &mut HashMap<u32, Records>) -> Vec<Rdata> {
        let Some(node) = self.node(name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for id in node.owners.to_vec() {
            if let Some(rs) = self.records_of(id, renders).get(name) {
                out.extend(rs.iter().cloned());
            }
        }
        canonical(out)
    }

    fn node(&self, name: &[u8]) -> Option<&Node> {
        self.shards[shard_of(name)].get(name)
    }

    fn node_mut(&mut self, name: &[u8]) -> Option<&mut Node> {
        Arc::make_mut(&mut self.shards[shard_of(name)]).get_mut(name)
    }

    fn node_or_insert(&mut self, name: &[u8]) -> &mut Node {
        let shard = Arc::make_mut(&mut self.shards[shard_of(name)]);
        if !shard.contains_key(name) {
            self.name_count += 1;
            shard.insert(name.into(), Node::default());
        }
        shard.get_mut(name).expect("present")
    }

    /// Removes a name that has no records, no names below and is not one of the fixed
    /// names.
    fn remove_if_unused(&mut self, name: &[u8]) {
        let Some(n) = self.node(name) else { return };
        let fixed = name == self.names.apex.as_slice()
            || name == self.names.svc_suffix.as_slice()
            || name == self.names.pod_suffix.as_slice();
        if !fixed && n.owners.is_empty() && n.sets.is_empty() && n.below == 0 {
            Arc::make_mut(&mut self.shards[shard_of(name)]).remove(name);
            self.name_count -= 1;
        }
    }

    /// Where the ancestors of an in-zone name start, from its parent up to the apex.
    fn ancestors(&self, name: &[u8]) -> Vec<usize> {
        if !wire::ends_with_name(name, &self.names.apex) {
            return Vec::new();
        }
        let apex_at = name.len() - self.names.apex.len();
        wire::label_offsets(name)
            .skip(1)
            .take_while(|o| *o <= apex_at)
            .collect()
    }

    /// Re-encodes one name from its owners' records.
    fn reencode(&mut self, name: &[u8], renders: &mut HashMap<u32, Records>) {
        if self.node(name).is_none() {
            return;
        }
        let set = self.name_records(name, renders);
        let (sets, cname) = {
            let mut addresses = |t: &[u8]| self.name_records(t, renders);
            encode_node(&self.config, &self.names.apex, name, &set, &mut addresses)
        };
        let node = self.node_mut(name).expect("present");
        let had = !node.sets.is_empty();
        let old_count = node.count as usize;
        node.sets = sets;
        node.cname = cname;
        node.count = set.len() as u32;
        let has = !node.sets.is_empty();
        self.records = self.records + set.len() - old_count;
        if had != has {
            for o in self.ancestors(name) {
                let a = &name[o..];
                if has {
                    self.node_or_insert(a).below += 1;
                } else {
                    let n = self
                        .node_mut(a)
                        .expect("an ancestor of a name with records");
                    n.below -= 1;
                    self.remove_if_unused(a);
                }
            }
        }
        self.remove_if_unused(name);
    }

    /// Renders one dirty entry before and after, moves its ownership of names, and
    /// adds the names to re-encode to `touched`; keeps its new render in `renders`.
    fn commit_entry(
        &mut self,
        id: u32,
        renders: &mut HashMap<u32, Records>,
        touched: &mut Vec<Vec<u8>>,
    ) {
        let key = self.keys[id as usize]
            .clone()
            .expect("a dirty entry is live");
        let e = self.entries.get_mut(&key).expect("a dirty entry exists");
        let shown = e.shown.take().expect("a dirty entry saved what it showed");
        let now = e.inputs();
        let mut problems = Vec::new();
        let new = render(&self.names.svc_suffix, &now, &mut problems);
        e.problems = problems;
        let gone = e.service.is_none() && e.slices.is_empty();
        let old = render(&self.names.svc_suffix, &shown, &mut Vec::new());
        let mut changed: HashSet<&[u8]> = HashSet::new();
        for (name, rs) in &old {
            match new.get(name) {
                None => {
                    if let Some(n) = self.node_mut(name) {
                        n.owners.remove(id);
                    }
                    changed.insert(name);
                }
                Some(now) if canonical(now.clone()) != canonical(rs.clone()) => {
                    changed.insert(name);
                }
                Some(_) => {}
            }
        }
        for name in new.keys() {
            if !old.contains_key(name) {
                self.node_or_insert(name).owners.insert(id);
                changed.insert(name);
            }
        }
        // SRV names whose targets' addresses changed: their additional section.
        for (name, rs) in &new {
            let targets_changed = rs.iter().any(
                |r| matches!(r, Rdata::Srv { target, .. } if changed.contains(target.as_slice())),
            );
            if targets_changed && !changed.contains(name.as_slice()) {
                touched.push(name.clone());
            }
        }
        touched.extend(changed.into_iter().map(<[u8]>::to_vec));
        if gone {
            self.entries.remove(&key);
            self.keys[id as usize] = None;
            self.free.push(id);
        } else {
            renders.insert(id, new);
        }
    }

    /// Applies the changes since the last commit; the new snapshot, with this SOA serial.
    pub fn commit(&mut self, serial: u32) -> Zone {
        self.config.serial = serial;
        let mut touched: Vec<Vec<u8>> = Vec::new();
        if std::mem::take(&mut self.fresh) {
            for name in render_static(&self.names.apex).into_keys() {
                self.node_or_insert(&name).owners.insert(0);
                touched.push(name);
            }
        }
        // In steps of `chunk` entries, each re-encoding the names it touched: the renders
        // held at once stay bounded (a first commit of 50k Services would otherwise hold
        // every record twice). A name shared with an entry of a later step is encoded
        // again in that step, from its final owners.
        let dirty = std::mem::take(&mut self.dirty);
        for step in dirty.chunks(self.chunk) {
            let mut renders: HashMap<u32, Records> = HashMap::new();
            for &id in step {
                self.commit_entry(id, &mut renders, &mut touched);
            }
            touched.sort_unstable();
            touched.dedup();
            for name in std::mem::take(&mut touched) {
                self.reencode(&name, &mut renders);
            }
        }
        // The apex (its SOA carries the serial), and the static names of a first commit
        // without changed entries.
        let mut renders: HashMap<u32, Records> = HashMap::new();
        touched.push(self.names.apex.clone());
        for name in touched {
            self.reencode(&name, &mut renders);
        }
        Zone {
            apex: self.names.apex.clone(),
            pod_suffix: self.names.pod_suffix.clone(),
            ttl: self.config.ttl,
            serial,
            shards: self.shards.clone(),
            records: self.records,
            names: self.name_count,
        }
    }
}
