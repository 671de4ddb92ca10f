//! Pure: the proxy's memory of what its table holds, and the transaction that takes the
//! table from that to the next desired set of service ports. Invariant: after
//! [`Proxy::sync`] the memory describes the desired state; the caller reports whether the
//! kernel took the transaction ([`Proxy::failed`] if not), and the next sync is then a full
//! replace, so a failed transaction can never leave the memory and the kernel apart.
//!
//! Compared with kube-proxy's nftables proxier, which re-renders every service chain it
//! considers changed and keeps the previous transaction's text to compare: here a port
//! whose [`ServicePort`] value is unchanged costs one comparison; a changed port costs the
//! difference of its own objects (usually one element deleted and one added), and
//! nothing is ever read back from the kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use podnet_nft::{Chain, Element, Op, Rule, Set, Table, Transaction, Value};

use crate::incremental::ObjectName;
use crate::model::{PortName, Problem, Protocol, ServicePort};
use crate::render::{
    FAMILY, Map, PortObjects, ProxyConfig, Shared, TABLE, filter_hook_chains, frontend_key, names,
    render_base, render_port,
};

/// One programmed port. Its objects are rendered again when needed ([`render_port`] is a
/// function of the port and the config): keeping them would cost several times the
/// port's own size, for every port. Ordered and looked up by the port's name (a set of
/// these, not a map by name: the name would be kept twice, ~200 bytes a port).
#[derive(Clone, Debug)]
struct Programmed {
    port: ServicePort,
}

impl PartialEq for Programmed {
    fn eq(&self, other: &Self) -> bool {
        self.port.name == other.port.name
    }
}

impl Eq for Programmed {}

impl PartialOrd for Programmed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Programmed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.port.name.cmp(&other.port.name)
    }
}

impl std::borrow::Borrow<PortName> for Programmed {
    fn borrow(&self) -> &PortName {
        &self.port.name
    }
}

/// A port refused because another one holds its dispatch element (map, key).
type Refused = (Map, Vec<Value>, ServicePort);

/// What a sync produced.
#[derive(Clone, Debug)]
pub struct SyncPlan {
    /// The transaction to send; empty when nothing changed, or when a deferred whole-table
    /// replace is to be sent as [`Proxy::replace_parts`] (`full` and
    /// [`Proxy::sync_services_deferred`]).
    pub transaction: Transaction,
    /// Whether the sync replaces the whole table (the first one, and the one after a
    /// refused transaction).
    pub full: bool,
    /// Ports left out (an address:port another port already owns).
    pub problems: Vec<Problem>,
    /// Ports whose objects changed (added, changed or removed).
    pub changed: Vec<PortName>,
    /// UDP endpoints no longer used by a port that used them: once the transaction is in,
    /// conntrack entries DNATed to them must go, or a client that keeps its source port
    /// keeps sending into the old endpoint (kubernetes#19029).
    pub stale_udp: Vec<std::net::SocketAddrV4>,
    /// UDP service addresses (cluster, external, load-balancer IP : port) that had no
    /// endpoint and now have one: conntrack entries a client created towards them
    /// before (not DNATed, e.g. sent before the Service was programmed) must go, or that
    /// client never reaches an endpoint.
    pub fresh_udp: Vec<std::net::SocketAddrV4>,
}

/// The proxy's state machine.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    ports: BTreeSet<Programmed>,
    /// Ports refused at the last sync (their problem), tried again at every sync: the
    /// port that held their address may have left meanwhile.
    rejected: BTreeMap<PortName, ServicePort>,
    /// The elements of the maps ports can collide in (service and node-port dispatch),
    /// as [`frontend_key`]s: each belongs to one programmed port. The pickers' maps are
    /// not tracked: their keys start with a frontend its dispatch element claims.
    owners: HashSet<u64>,
    /// Shared pickers (`pick-N` and its map `endpoints-N`, `ext-pick-N`, …) → ports
    /// using it.
    shared: BTreeMap<Shared, usize>,
    /// The shared pickers the kernel holds (as of the last transaction built).
    shared_programmed: BTreeSet<Shared>,
    /// Local endpoint IP → how many ports use it (the shared `hairpin` set).
    hairpin: BTreeMap<Ipv4Addr, usize>,
    /// Elements of `no-endpoint-ips` and `no-endpoint-nodeports` programmed: the
    /// filter base chains ([`filter_hook_chains`]) exist while there are any.
    no_endpoint: usize,
    /// Whether the kernel holds those chains (as of the last transaction built).
    filter_hooks_programmed: bool,
    /// False until a transaction built by `sync` has been taken whole by the kernel.
    in_step: bool,
    /// Endpoint IP → how many programmed ports can DNAT to it, while tracked
    /// ([`Proxy::track_endpoints`]: the agent's fast path needs them).
    endpoint_refs: Option<BTreeMap<Ipv4Addr, usize>>,
    /// Endpoint IPs whose count went to or from zero since [`Proxy::take_endpoint_changes`].
    endpoints_touched: BTreeSet<Ipv4Addr>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        Proxy {
            config,
            ports: BTreeSet::new(),
            rejected: BTreeMap::new(),
            owners: HashSet::new(),
            shared: BTreeMap::new(),
            shared_programmed: BTreeSet::new(),
            hairpin: BTreeMap::new(),
            no_endpoint: 0,
            filter_hooks_programmed: false,
            in_step: false,
            endpoint_refs: None,
            endpoints_touched: BTreeSet::new(),
        }
    }

    /// Starts counting the endpoint IPs of the programmed ports (every one counts as
    /// changed at the next [`Proxy::take_endpoint_changes`]).
    pub fn track_endpoints(&mut self) {
        if self.endpoint_refs.is_some() {
            return;
        }
        let mut refs: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for p in &self.ports {
            for ip in render_port(&p.port, &self.config).endpoints {
                *refs.entry(ip).or_default() += 1;
            }
        }
        self.endpoints_touched.extend(refs.keys().copied());
        self.endpoint_refs = Some(refs);
    }

    /// The endpoint IPs that some programmed port started or stopped using since the
    /// last call, each with whether one uses it now (empty unless tracked). The ports are
    /// those of the transaction last built: call it before sending that transaction.
    pub fn take_endpoint_changes(&mut self) -> Vec<(Ipv4Addr, bool)> {
        let refs = self.endpoint_refs.as_ref();
        std::mem::take(&mut self.endpoints_touched)
            .into_iter()
            .map(|ip| (ip, refs.is_some_and(|r| r.contains_key(&ip))))
            .collect()
    }

    /// The kernel refused the last transaction: the next sync replaces the whole table.
    pub fn failed(&mut self) {
        self.in_step = false;
    }

    /// Number of service ports programmed.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The service ports programmed, by name.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.iter().map(|p| &p.port)
    }

    /// The objects of a programmed port.
    fn objects(&self, p: &Programmed) -> PortObjects {
        render_port(&p.port, &self.config)
    }

    /// The whole table as the memory describes it (for dumps and full replaces).
    pub fn table(&self) -> Table {
        let mut all = Assembly::default();
        for p in self.ports.iter() {
            all.add(self.objects(p));
        }
        self.assemble(all)
    }

    /// The table of the fixed part, the shared pickers, the hairpin set and `ports`.
    fn assemble(&self, ports: Assembly) -> Table {
        let mut t = render_base(&self.config, self.no_endpoint > 0);
        let mut elements: BTreeMap<String, Vec<Element>> = ports
            .elements
            .into_iter()
            .map(|(map, e)| (map.name(), e))
            .collect();
        elements.insert(
            names::HAIRPIN.to_string(),
            self.hairpin.keys().map(|ip| hairpin_element(*ip)).collect(),
        );
        t.sets.extend(
            self.shared
                .keys()
                .filter_map(Shared::set)
                .chain(ports.sets)
                .map(|s| (s, Vec::new())),
        );
        for (set, elems) in &mut t.sets {
            if let Some(e) = elements.remove(set.name.as_str()) {
                *elems = e;
            }
        }
        t.chains.extend(
            self.shared
                .keys()
                .map(|s| (Chain::regular(s.chain()), s.rules(&self.config))),
        );
        t.chains.extend(
            ports
                .chains
                .into_iter()
                .map(|(c, r)| (Chain::regular(c), r)),
        );
        t
    }

    /// Takes the memory to `desired` (every service port of the node, any order) and
    /// returns the transaction that takes the kernel there: the whole table on the first
    /// sync and after a failure, only the differences otherwise (nothing when nothing
    /// changed).
    pub fn sync(&mut self, mut desired: Vec<ServicePort>) -> SyncPlan {
        // By name, the last of a name winning.
        desired.reverse();
        desired.sort_by(|a, b| a.name.cmp(&b.name));
        desired.dedup_by(|a, b| a.name == b.name);
        let current: Vec<PortName> = self.ports.iter().map(|p| p.port.name.clone()).collect();
        self.step(current, desired, true)
    }

    /// As [`Proxy::sync`], given only the Services that changed since the last sync, each
    /// with all its ports now (none: the Service is gone or programs nothing). The ports
    /// of other Services stay as they are, so the cost follows the size of the change,
    /// not of the table; the outcome (memory, transaction, problems) is the one `sync`
    /// gives for the whole desired state.
    pub fn sync_services(&mut self, updates: Vec<(ObjectName, Vec<ServicePort>)>) -> SyncPlan {
        self.services_step(updates, true)
    }

    /// As [`Proxy::sync_services`], except that a whole-table replace is not built: the
    /// plan has `full` set and an empty transaction, and the caller sends the ops of
    /// [`Proxy::replace_parts`] as one transaction. At 50k Services the replace is 300k
    /// elements, which as IR took ~70 MB at once; in parts, only its netlink batch exists
    /// whole.
    pub fn sync_services_deferred(
        &mut self,
        updates: Vec<(ObjectName, Vec<ServicePort>)>,
    ) -> SyncPlan {
        self.services_step(updates, false)
    }

    fn services_step(
        &mut self,
        updates: Vec<(ObjectName, Vec<ServicePort>)>,
        materialize: bool,
    ) -> SyncPlan {
        let mut current = Vec::new();
        // One Vec (sorted below), not a map: at 50k ports a map's nodes and cloned names
        // were tens of megabytes of small allocations at the first sync's peak.
        let mut desired = Vec::new();
        // Only needed when some port was refused (50k names in a set cost ~0.1 s).
        let mut updated = BTreeSet::new();
        for (service, ports) in updates {
            // Nothing programmed yet (the first sync): no port to look up.
            if !self.ports.is_empty() {
                let first = PortName {
                    namespace: service.namespace.clone(),
                    service: service.name.clone(),
                    port: "".into(),
                    protocol: Protocol::Tcp, // the smallest: with "", the Service's first name
                };
                current.extend(
                    self.ports
                        .range::<PortName, _>(first..)
                        .map(|p| &p.port.name)
                        .take_while(|n| {
                            n.namespace == service.namespace && n.service == service.name
                        })
                        .cloned(),
                );
            }
            desired.extend(ports);
            if !self.rejected.is_empty() {
                updated.insert(service);
            }
        }
        // Refused ports of Services that did not change are tried again, as `sync` does.
        for (name, port) in &self.rejected {
            if !updated.contains(&ObjectName::new(&name.namespace, &name.service)) {
                desired.push(port.clone());
            }
        }
        current.sort();
        current.dedup();
        // A Service comes once in `updates`, and refused ports only for the others.
        desired.sort_by(|a, b| a.name.cmp(&b.name));
        self.step(current, desired, materialize)
    }

    /// One sync over the ports `current` (programmed, sorted) and `desired` (the desired
    /// state of those and of any port to add, sorted by name, one per name); ports
    /// outside both are left alone. A whole-table replace is built only with
    /// `materialize`.
    fn step(
        &mut self,
        current: Vec<PortName>,
        mut desired: Vec<ServicePort>,
        materialize: bool,
    ) -> SyncPlan {
        let mut problems = Vec::new();
        let mut changed = Vec::new();

        // Removed ports, and changed ones: old objects out of the memory.
        let mut old: Vec<(Programmed, PortObjects)> = Vec::new();
        let mut unchanged = vec![false; desired.len()];
        for name in current {
            let same = desired
                .binary_search_by(|d| d.name.cmp(&name))
                .ok()
                .filter(|i| self.ports.get(&name).is_some_and(|p| desired[*i] == p.port));
            if let Some(i) = same {
                unchanged[i] = true;
                continue;
            }
            let p = self.ports.take(&name).expect("listed");
            let objects = self.objects(&p);
            self.release(&objects);
            changed.push(name);
            old.push((p, objects));
        }
        let previous: BTreeSet<&PortName> = old.iter().map(|(p, _)| &p.port.name).collect();
        // New and changed ports.
        // The objects of new and changed ports, for the difference; none when the whole
        // table is sent (it is rendered again from the ports, in parts: kept, the objects
        // would be the whole table as IR at once).
        let full = !self.in_step;
        let first = self.ports.is_empty();
        let mut new: Vec<(PortName, Option<PortObjects>)> = Vec::new();
        let mut unchanged = unchanged.into_iter();
        desired.retain(|_| !unchanged.next().unwrap_or(false));
        let mut refused = Vec::new();
        // Collected in place (a `Programmed` is a `ServicePort`): no second list.
        let programmed: Vec<Programmed> = desired
            .into_iter()
            .filter_map(|port| match self.program(port) {
                Ok((p, objects)) => {
                    let name = &p.port.name;
                    if !previous.contains(name) {
                        changed.push(name.clone()); // new (a changed one is listed)
                    }
                    if full {
                        // Only UDP ports are looked at again (for conntrack).
                        if name.protocol == Protocol::Udp {
                            new.push((name.clone(), None));
                        }
                    } else {
                        new.push((name.clone(), Some(objects)));
                    }
                    Some(p)
                }
                Err(r) => {
                    refused.push(*r);
                    None
                }
            })
            .collect();
        if first {
            // Built in one go from the sorted list: a B-tree filled by `insert` in
            // order leaves its nodes about two thirds full (at 50k ports ~6 MB more,
            // for as long as the ports are programmed).
            self.ports = programmed.into_iter().collect();
        } else {
            self.ports.extend(programmed);
        }
        // Refused ports, named after the port holding their frontend (programmed now).
        let mut rejected = BTreeMap::new();
        for (map, key, port) in refused {
            let message = format!(
                "{:?} in {} is already used by {}",
                key.iter()
                    .map(podnet_nft::render::render_value)
                    .collect::<Vec<_>>(),
                map.name(),
                self.owner(&map, &key)
                    .map_or_else(|| "another port".to_string(), |o| o.to_string()),
            );
            problems.push(Problem {
                object: format!("Service {}/{}", port.name.namespace, port.name.service),
                message,
            });
            rejected.insert(port.name.clone(), port);
        }
        self.rejected = rejected;
        changed.sort();
        let old_ports: BTreeMap<&PortName, &ServicePort> =
            old.iter().map(|(p, _)| (&p.port.name, &p.port)).collect();
        let mut fresh_udp = BTreeSet::new();
        for (name, _) in new.iter().filter(|(n, _)| n.protocol == Protocol::Udp) {
            let now = &self.ports.get(name).expect("programmed").port;
            let had = old_ports
                .get(name)
                .is_some_and(|p| !endpoints_of(p).is_empty());
            if !had && !endpoints_of(now).is_empty() {
                for ip in std::iter::once(&now.cluster_ip)
                    .chain(&now.external_ips)
                    .chain(&now.load_balancer_ips)
                {
                    fresh_udp.insert(std::net::SocketAddrV4::new(*ip, now.port));
                }
            }
        }
        let mut stale_udp = BTreeSet::new();
        for (p, _) in old
            .iter()
            .filter(|(p, _)| p.port.name.protocol == Protocol::Udp)
        {
            let now: BTreeSet<(Ipv4Addr, u16)> = self
                .ports
                .get(&p.port.name)
                .map(|n| endpoints_of(&n.port))
                .unwrap_or_default();
            for e in endpoints_of(&p.port).difference(&now) {
                stale_udp.insert(std::net::SocketAddrV4::new(e.0, e.1));
            }
        }

        let transaction = if full {
            drop(old);
            drop(new);
            if materialize {
                collect_parts(FAMILY, TABLE, self.replace_parts())
            } else {
                Transaction::new(FAMILY, TABLE)
            }
        } else {
            let old: Vec<PortObjects> = old.into_iter().map(|(_, o)| o).collect();
            let new: Vec<PortObjects> = new.into_iter().filter_map(|(_, o)| o).collect();
            self.difference(&old, &new)
        };
        self.shared_programmed = self.shared.keys().copied().collect();
        self.filter_hooks_programmed = self.no_endpoint > 0;
        self.in_step = true;
        SyncPlan {
            transaction,
            full,
            problems,
            changed,
            stale_udp: stale_udp.into_iter().collect(),
            fresh_udp: fresh_udp.into_iter().collect(),
        }
    }

    /// Renders a port and claims its element keys; a refused port comes back with the
    /// dispatch element (map, key) another port holds.
    fn program(&mut self, port: ServicePort) -> Result<(Programmed, PortObjects), Box<Refused>> {
        let objects = render_port(&port, &self.config);
        let taken = objects
            .elements
            .iter()
            .find(|(map, e)| frontend_key(map, &e.key).is_some_and(|k| self.owners.contains(&k)));
        if let Some((map, e)) = taken {
            return Err(Box::new((map.clone(), e.key.clone(), port)));
        }
        for (map, e) in &objects.elements {
            if let Some(k) = frontend_key(map, &e.key) {
                self.owners.insert(k);
            }
            if is_no_endpoint(map) {
                self.no_endpoint += 1;
            }
        }
        for s in &objects.shared {
            *self.shared.entry(*s).or_default() += 1;
        }
        for ip in &objects.hairpin {
            *self.hairpin.entry(*ip).or_default() += 1;
        }
        if let Some(refs) = &mut self.endpoint_refs {
            for ip in &objects.endpoints {
                let n = refs.entry(*ip).or_default();
                *n += 1;
                if *n == 1 {
                    self.endpoints_touched.insert(*ip);
                }
            }
        }
        Ok((Programmed { port }, objects))
    }

    /// The programmed port that has `key` in `map` (a dispatch map). Only for reporting
    /// a conflict: it looks at the ports whose addresses or node port could match before
    /// rendering any.
    fn owner(&self, map: &Map, key: &[Value]) -> Option<&PortName> {
        let mut addr = None;
        let mut number = None;
        for v in key {
            match v {
                Value::Ipv4(a) => addr = Some(*a),
                Value::Port(p) => number = Some(*p),
                _ => {}
            }
        }
        self.ports
            .iter()
            .filter(|p| {
                let p = &p.port;
                match addr {
                    Some(a) => {
                        Some(p.port) == number
                            && (p.cluster_ip == a
                                || p.external_ips.contains(&a)
                                || p.load_balancer_ips.contains(&a))
                    }
                    None => p.node_port == number,
                }
            })
            .find(|p| {
                self.objects(p)
                    .elements
                    .iter()
                    .any(|(m, e)| m == map && e.key == key)
            })
            .map(|p| &p.port.name)
    }

    /// Gives back a port's keys, shared pickers and hairpin references.
    fn release(&mut self, objects: &PortObjects) {
        for (map, e) in &objects.elements {
            if let Some(k) = frontend_key(map, &e.key) {
                self.owners.remove(&k);
            }
            if is_no_endpoint(map) {
                self.no_endpoint -= 1;
            }
        }
        for s in &objects.shared {
            if let Some(n) = self.shared.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    self.shared.remove(s);
                }
            }
        }
        for ip in &objects.hairpin {
            if let Some(n) = self.hairpin.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.hairpin.remove(ip);
                }
            }
        }
        if let Some(refs) = &mut self.endpoint_refs {
            for ip in &objects.endpoints {
                if let Some(n) = refs.get_mut(ip) {
                    *n -= 1;
                    if *n == 0 {
                        refs.remove(ip);
                        self.endpoints_touched.insert(*ip);
                    }
                }
            }
        }
    }

    /// The ops from `old` objects to the now-programmed objects of `new` ports. Order:
    /// element deletions, chain flushes, chain and set deletions (nothing refers to them
    /// any more), set and chain creations, rules, element additions.
    fn difference(&self, old: &[PortObjects], new: &[PortObjects]) -> Transaction {
        let mut before = Objects::default();
        for o in old {
            before.add(o);
        }
        let mut after = Objects::default();
        for o in new {
            after.add(o);
        }
        // The shared hairpin set: compare the referenced IPs before and after.
        let mut hairpin_before: BTreeMap<Ipv4Addr, isize> = BTreeMap::new();
        for o in old {
            for ip in &o.hairpin {
                *hairpin_before.entry(*ip).or_default() += 1;
            }
        }
        for o in new {
            for ip in &o.hairpin {
                *hairpin_before.entry(*ip).or_default() -= 1;
            }
        }

        let mut tx = Transaction::new(FAMILY, TABLE);
        let mut deletions: BTreeMap<String, Vec<Element>> = BTreeMap::new();
        let mut additions: BTreeMap<String, Vec<Element>> = BTreeMap::new();
        for ((map, key), data) in &before.elements {
            if after.elements.get(&(*map, *key)) != Some(data) {
                deletions
                    .entry(map.name())
                    .or_default()
                    .push(Element::key(key.to_vec()));
            }
        }
        for ((map, key), data) in &after.elements {
            if before.elements.get(&(*map, *key)) != Some(data) {
                additions.entry(map.name()).or_default().push(Element {
                    key: key.to_vec(),
                    data: (*data).clone(),
                });
            }
        }
        for (ip, delta) in hairpin_before {
            // delta = references before − after, among the ports that changed.
            let now = self.hairpin.get(&ip).copied().unwrap_or(0) as isize;
            let was = now + delta;
            if was > 0 && now == 0 {
                deletions
                    .entry(names::HAIRPIN.into())
                    .or_default()
                    .push(hairpin_element(ip));
            } else if was == 0 && now > 0 {
                additions
                    .entry(names::HAIRPIN.into())
                    .or_default()
                    .push(hairpin_element(ip));
            }
        }
        // The filter base chains go first when the last no-endpoint frontend goes.
        let hooks = self.no_endpoint > 0;
        if self.filter_hooks_programmed && !hooks {
            for (chain, _) in filter_hook_chains() {
                tx.push(Op::FlushChain(chain.name.clone()));
                tx.push(Op::DeleteChain(chain.name));
            }
        }
        for (set, elems) in deletions {
            tx.push(Op::DeleteElements { set, elems });
        }
        // A set whose declaration changes is deleted and created again; every chain that
        // could name it is then rewritten.
        let rebuilt: BTreeSet<&str> = before
            .sets
            .iter()
            .filter(|(n, s)| after.sets.get(*n).is_some_and(|a| a != *s))
            .map(|(n, _)| *n)
            .collect();
        let rewrite = |name: &str, rules: &Vec<Rule>| {
            !rebuilt.is_empty() || after.chains.get(name).copied() != Some(rules)
        };
        for (name, rules) in &before.chains {
            if rewrite(name, rules) {
                tx.push(Op::FlushChain(name.to_string()));
            }
        }
        // Shared pickers no port uses any more: emptied first (they name each other and
        // their maps), then deleted.
        let unused: Vec<&Shared> = self
            .shared_programmed
            .iter()
            .filter(|s| !self.shared.contains_key(*s))
            .collect();
        for s in &unused {
            tx.push(Op::FlushChain(s.chain()));
        }
        for name in before.chains.keys() {
            if !after.chains.contains_key(name) {
                tx.push(Op::DeleteChain(name.to_string()));
            }
        }
        for s in &unused {
            tx.push(Op::DeleteChain(s.chain()));
        }
        for name in before.sets.keys() {
            if !after.sets.contains_key(name) || rebuilt.contains(name) {
                tx.push(Op::DeleteSet(name.to_string()));
            }
        }
        // Pickers' maps: gone when their last port went (their rules are flushed above).
        for set in unused.iter().filter_map(|s| s.set()) {
            tx.push(Op::DeleteSet(set.name));
        }
        let fresh_shared: Vec<&Shared> = self
            .shared
            .keys()
            .filter(|s| !self.shared_programmed.contains(*s))
            .collect();
        for set in fresh_shared.iter().filter_map(|s| s.set()) {
            tx.push(Op::AddSet(set));
        }
        for (name, set) in &after.sets {
            if before.sets.get(name) != Some(set) {
                tx.push(Op::AddSet((*set).clone()));
            }
        }
        for s in &fresh_shared {
            tx.push(Op::AddChain(Chain::regular(s.chain())));
        }
        for name in after.chains.keys() {
            if !before.chains.contains_key(name) {
                tx.push(Op::AddChain(Chain::regular(name.to_string())));
            }
        }
        for s in fresh_shared {
            let chain = s.chain();
            for rule in s.rules(&self.config) {
                tx.push(Op::AddRule {
                    chain: chain.clone(),
                    rule,
                });
            }
        }
        for (name, rules) in &after.chains {
            let fresh = before.chains.get(name).is_none_or(|b| rewrite(name, b));
            if fresh {
                for rule in *rules {
                    tx.push(Op::AddRule {
                        chain: name.to_string(),
                        rule: rule.clone(),
                    });
                }
            }
        }
        for (set, elems) in additions {
            tx.push(Op::AddElements { set, elems });
        }
        // … and come last, after the first no-endpoint frontend's element.
        if hooks && !self.filter_hooks_programmed {
            for (chain, rules) in filter_hook_chains() {
                tx.add_chain(chain, rules);
            }
        }
        tx
    }
}

/// Every endpoint a port sends to (cluster and local).
fn endpoints_of(p: &ServicePort) -> BTreeSet<(Ipv4Addr, u16)> {
    p.cluster_endpoints
        .iter()
        .chain(&p.local_endpoints)
        .map(|e| (e.ip, e.port))
        .collect()
}

/// Ports rendered per part of a whole-table replace ([`Proxy::replace_parts`]): ~6k
/// elements, a few hundred kilobytes of IR at a time.
const PART_PORTS: usize = 1024;

impl Proxy {
    /// The whole-table replace of the memory, as parts to send in order as one
    /// transaction: `add table; delete table; add table`, the sets, chains and rules,
    /// then the elements, rendered [`PART_PORTS`] ports at a time. Its ops, with the
    /// element operations of each set joined in the order of the sets, are the
    /// transaction a full [`Proxy::sync_services`] returns.
    pub fn replace_parts(&self) -> impl Iterator<Item = Vec<Op>> + '_ {
        // The fixed part, the shared pickers and the affinity ports' own chains and sets.
        let mut t = render_base(&self.config, self.no_endpoint > 0);
        t.sets.extend(
            self.shared
                .keys()
                .filter_map(Shared::set)
                .map(|s| (s, Vec::new())),
        );
        t.chains.extend(
            self.shared
                .keys()
                .map(|s| (Chain::regular(s.chain()), s.rules(&self.config))),
        );
        for p in self.ports.iter() {
            if p.port.affinity_seconds.is_some() {
                let o = self.objects(p);
                t.sets.extend(o.sets.into_iter().map(|s| (s, Vec::new())));
                t.chains
                    .extend(o.chains.into_iter().map(|(c, r)| (Chain::regular(c), r)));
            }
        }
        let mut head = vec![Op::AddTable, Op::DeleteTable, Op::AddTable];
        let mut rules = Vec::new();
        let mut chains = Vec::new();
        let sets: Vec<String> = t.sets.iter().map(|(s, _)| s.name.clone()).collect();
        head.extend(t.sets.into_iter().map(|(s, _)| Op::AddSet(s)));
        for (chain, chain_rules) in t.chains {
            rules.extend(chain_rules.into_iter().map(|rule| Op::AddRule {
                chain: chain.name.clone(),
                rule,
            }));
            chains.push(Op::AddChain(chain));
        }
        head.extend(chains);
        head.extend(rules);
        let index: HashMap<String, usize> = sets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        let mut ports = self.ports.iter().peekable();
        let elements = std::iter::from_fn(move || {
            ports.peek()?;
            let mut by_set: Vec<Vec<Element>> = vec![Vec::new(); sets.len()];
            let mut last: Option<(Map, usize)> = None;
            for p in ports.by_ref().take(PART_PORTS) {
                for (map, e) in self.objects(p).elements {
                    let i = match &last {
                        Some((m, i)) if *m == map => *i,
                        _ => {
                            let i = index[map.name().as_str()];
                            last = Some((map, i));
                            i
                        }
                    };
                    by_set[i].push(e);
                }
            }
            Some(element_ops(&sets, by_set))
        });
        let hairpin = std::iter::once_with(move || {
            let elems: Vec<Element> = self.hairpin.keys().map(|ip| hairpin_element(*ip)).collect();
            if elems.is_empty() {
                Vec::new()
            } else {
                vec![Op::AddElements {
                    set: names::HAIRPIN.to_string(),
                    elems,
                }]
            }
        });
        std::iter::once(head).chain(elements).chain(hairpin)
    }
}

/// One `AddElements` per set with elements, in the order of `sets`.
fn element_ops(sets: &[String], by_set: Vec<Vec<Element>>) -> Vec<Op> {
    sets.iter()
        .zip(by_set)
        .filter(|(_, e)| !e.is_empty())
        .map(|(set, elems)| Op::AddElements {
            set: set.clone(),
            elems,
        })
        .collect()
}

/// The transaction of [`Proxy::replace_parts`]: its ops in order, the element operations
/// of each set joined into one, after everything else, in the order the sets were added.
fn collect_parts(
    family: podnet_nft::Family,
    table: &str,
    parts: impl Iterator<Item = Vec<Op>>,
) -> Transaction {
    let mut tx = Transaction::new(family, table);
    let mut sets: Vec<String> = Vec::new();
    let mut elements: HashMap<String, Vec<Element>> = HashMap::new();
    for op in parts.flatten() {
        match op {
            Op::AddElements { set, elems } => elements.entry(set).or_default().extend(elems),
            op => {
                if let Op::AddSet(s) = &op {
                    sets.push(s.name.clone());
                }
                tx.push(op);
            }
        }
    }
    for set in sets {
        if let Some(elems) = elements.remove(&set) {
            tx.push(Op::AddElements { set, elems });
        }
    }
    tx
}

/// The maps of frontends without endpoints (what the filter base chains are for).
fn is_no_endpoint(map: &Map) -> bool {
    matches!(map, Map::NoEndpointIps | Map::NoEndpointNodeports)
}

fn hairpin_element(ip: Ipv4Addr) -> Element {
    Element::key(vec![Value::Ipv4(ip), Value::Ipv4(ip)])
}

/// The objects of several ports, indexed for comparison.
#[derive(Default)]
struct Objects<'a> {
    chains: BTreeMap<&'a str, &'a Vec<Rule>>,
    sets: BTreeMap<&'a str, &'a Set>,
    elements: BTreeMap<(&'a Map, &'a [Value]), &'a Option<podnet_nft::ElemData>>,
}

impl<'a> Objects<'a> {
    fn add(&mut self, o: &'a PortObjects) {
        for (c, r) in &o.chains {
            self.chains.insert(c.as_str(), r);
        }
        for s in &o.sets {
            self.sets.insert(s.name.as_str(), s);
        }
        for (map, e) in &o.elements {
            self.elements.insert((map, &e.key), &e.data);
        }
    }
}

/// The objects of many ports gathered into one table's worth (elements by map).
#[derive(Default)]
struct Assembly {
    chains: Vec<(String, Vec<Rule>)>,
    sets: Vec<Set>,
    elements: BTreeMap<Map, Vec<Element>>,
}

impl Assembly {
    fn add(&mut self, o: PortObjects) {
        self.chains.extend(o.chains);
        self.sets.extend(o.sets);
        let mut elements = o.elements.into_iter().peekable();
        while let Some((map, e)) = elements.next() {
            let list = self.elements.entry(map.clone()).or_default();
            list.push(e);
            // A port's elements of one map come together: one lookup for the run.
            while let Some((_, e)) = elements.next_if(|(m, _)| *m == map) {
                list.push(e);
            }
        }
    }
}
