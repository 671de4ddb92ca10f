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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use podnet_nft::{Chain, Element, Op, Rule, Set, Table, Transaction, Value};

use crate::incremental::ObjectName;
use crate::model::{PortName, Problem, Protocol, ServicePort};
use crate::render::{
    FAMILY, PortObjects, ProxyConfig, Ranges, TABLE, names, render_base, render_port,
};
use crate::slots::Slots;

/// One programmed port: the input and its index ranges (base, size). Its objects are
/// rendered again when needed ([`render_port`] is a function of these and the config):
/// keeping them would cost several times the port's own size, for every port.
#[derive(Clone, Debug)]
struct Programmed {
    port: ServicePort,
    ranges: [Option<(u32, u32)>; 2],
}

/// What a sync produced.
#[derive(Clone, Debug)]
pub struct SyncPlan {
    pub transaction: Transaction,
    /// Ports left out (an address:port another port already owns, index space exhausted).
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
    slots: Slots,
    ports: BTreeMap<PortName, Programmed>,
    /// Ports refused at the last sync (their problem), tried again at every sync: the
    /// port that held their address may have left meanwhile.
    rejected: BTreeMap<PortName, ServicePort>,
    /// (map, key) → the port that owns the element, for the maps ports can collide in
    /// (service and node-port dispatch). The `endpoints-K` / `endpoint-chains-K` shards
    /// are not tracked: their keys are the owner's index range, which [`Slots`] never
    /// hands out twice.
    owners: HashMap<(String, Vec<Value>), PortName>,
    /// Shared maps (`endpoints-K` shards) → (declaration, ports using it).
    shared: BTreeMap<String, (Set, usize)>,
    /// The shared maps the kernel holds (as of the last transaction built).
    shared_programmed: BTreeSet<String>,
    /// Local endpoint IP → how many ports use it (the shared `hairpin` set).
    hairpin: BTreeMap<Ipv4Addr, usize>,
    /// False until a transaction built by `sync` has been taken whole by the kernel.
    in_step: bool,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        Proxy {
            config,
            slots: Slots::default(),
            ports: BTreeMap::new(),
            rejected: BTreeMap::new(),
            owners: HashMap::new(),
            shared: BTreeMap::new(),
            shared_programmed: BTreeSet::new(),
            hairpin: BTreeMap::new(),
            in_step: false,
        }
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
        self.ports.values().map(|p| &p.port)
    }

    /// The objects of a programmed port.
    fn objects(&self, p: &Programmed) -> PortObjects {
        let r = Ranges {
            cluster: p.ranges[0].map(|r| r.0),
            local: p.ranges[1].map(|r| r.0),
        };
        render_port(&p.port, r, &self.config)
    }

    /// The whole table as the memory describes it (for dumps and full replaces).
    pub fn table(&self) -> Table {
        let mut t = render_base(&self.config);
        let mut elements: BTreeMap<String, Vec<Element>> = BTreeMap::new();
        t.sets
            .extend(self.shared.values().map(|(s, _)| (s.clone(), Vec::new())));
        for p in self.ports.values() {
            let objects = self.objects(p);
            t.sets
                .extend(objects.sets.into_iter().map(|s| (s, Vec::new())));
            t.chains.extend(
                objects
                    .chains
                    .into_iter()
                    .map(|(c, r)| (Chain::regular(c), r)),
            );
            for (map, e) in objects.elements {
                elements.entry(map).or_default().push(e);
            }
        }
        elements.insert(
            names::HAIRPIN.to_string(),
            self.hairpin.keys().map(|ip| hairpin_element(*ip)).collect(),
        );
        for (set, elems) in &mut t.sets {
            if let Some(e) = elements.remove(set.name.as_str()) {
                *elems = e;
            }
        }
        t
    }

    /// Takes the memory to `desired` (every service port of the node, any order) and
    /// returns the transaction that takes the kernel there: the whole table on the first
    /// sync and after a failure, only the differences otherwise (nothing when nothing
    /// changed).
    pub fn sync(&mut self, desired: Vec<ServicePort>) -> SyncPlan {
        let desired: BTreeMap<PortName, ServicePort> =
            desired.into_iter().map(|p| (p.name.clone(), p)).collect();
        let current: Vec<PortName> = self.ports.keys().cloned().collect();
        self.step(current, desired)
    }

    /// As [`Proxy::sync`], given only the Services that changed since the last sync, each
    /// with all its ports now (none: the Service is gone or programs nothing). The ports
    /// of other Services stay as they are, so the cost follows the size of the change,
    /// not of the table; the outcome (memory, transaction, problems) is the one `sync`
    /// gives for the whole desired state.
    pub fn sync_services(&mut self, updates: Vec<(ObjectName, Vec<ServicePort>)>) -> SyncPlan {
        let mut current = Vec::new();
        let mut desired = BTreeMap::new();
        let mut updated = BTreeSet::new();
        for (service, ports) in updates {
            let first = PortName {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                port: String::new(),
                protocol: Protocol::Tcp, // the smallest: with "", the Service's first name
            };
            current.extend(
                self.ports
                    .range(first..)
                    .map(|(n, _)| n)
                    .take_while(|n| n.namespace == service.namespace && n.service == service.name)
                    .cloned(),
            );
            desired.extend(ports.into_iter().map(|p| (p.name.clone(), p)));
            updated.insert(service);
        }
        // Refused ports of Services that did not change are tried again, as `sync` does.
        for (name, port) in &self.rejected {
            if !updated.contains(&ObjectName::new(&name.namespace, &name.service)) {
                desired.insert(name.clone(), port.clone());
            }
        }
        current.sort();
        current.dedup();
        self.step(current, desired)
    }

    /// One sync over the ports `current` (programmed, sorted) and `desired` (the desired
    /// state of those and of any port to add); ports outside both are left alone.
    fn step(
        &mut self,
        current: Vec<PortName>,
        mut desired: BTreeMap<PortName, ServicePort>,
    ) -> SyncPlan {
        let mut problems = Vec::new();
        let mut changed = Vec::new();

        // Removed ports, and changed ones: old objects out of the memory.
        let mut old: Vec<(Programmed, PortObjects)> = Vec::new();
        for name in current {
            let keep = desired
                .get(&name)
                .is_some_and(|d| *d == self.ports[&name].port);
            if keep {
                desired.remove(&name);
                continue;
            }
            let p = self.ports.remove(&name).expect("listed");
            let objects = self.objects(&p);
            // A changed port keeps its index ranges where they still fit (fewer elements
            // change); a removed port gives them back.
            self.release(&p, &objects, !desired.contains_key(&name));
            changed.push(name);
            old.push((p, objects));
        }
        let mut reusable: BTreeMap<&PortName, [Option<(u32, u32)>; 2]> =
            old.iter().map(|(p, _)| (&p.port.name, p.ranges)).collect();
        // New and changed ports.
        // The objects of new and changed ports, for the difference; none when the whole
        // table is sent (kept, they would be a second copy of it at the peak).
        let full = !self.in_step;
        let mut new: Vec<(PortName, Option<PortObjects>)> = Vec::new();
        let mut rejected = BTreeMap::new();
        for (name, port) in desired {
            let previous = reusable.remove(&name);
            match self.program(port, previous.unwrap_or_default()) {
                Ok((p, objects)) => {
                    if previous.is_none() {
                        changed.push(name.clone()); // new (a changed one is listed)
                    }
                    self.ports.insert(name.clone(), p);
                    new.push((name, (!full).then_some(objects)));
                }
                Err(refused) => {
                    let (message, port) = *refused;
                    problems.push(Problem {
                        object: format!("Service {}/{}", name.namespace, name.service),
                        message,
                    });
                    rejected.insert(name, port);
                }
            }
        }
        self.rejected = rejected;
        changed.sort();
        let old_ports: BTreeMap<&PortName, &ServicePort> =
            old.iter().map(|(p, _)| (&p.port.name, &p.port)).collect();
        let mut fresh_udp = BTreeSet::new();
        for (name, _) in new.iter().filter(|(n, _)| n.protocol == Protocol::Udp) {
            let now = &self.ports[name].port;
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
            drop((old, new));
            replace(self.table())
        } else {
            let old: Vec<PortObjects> = old.into_iter().map(|(_, o)| o).collect();
            let new: Vec<PortObjects> = new.into_iter().filter_map(|(_, o)| o).collect();
            self.difference(&old, &new)
        };
        self.shared_programmed = self.shared.keys().cloned().collect();
        self.in_step = true;
        SyncPlan {
            transaction,
            problems,
            changed,
            stale_udp: stale_udp.into_iter().collect(),
            fresh_udp: fresh_udp.into_iter().collect(),
        }
    }

    /// Renders a port with fresh index ranges and claims its element keys; a refused port
    /// comes back with the reason.
    /// `previous` are the ranges the port held before this sync (not yet freed): kept when
    /// the size still fits, freed otherwise.
    fn program(
        &mut self,
        port: ServicePort,
        previous: [Option<(u32, u32)>; 2],
    ) -> Result<(Programmed, PortObjects), Box<(String, ServicePort)>> {
        let counts = [port.cluster_endpoints.len(), port.local_endpoints.len()];
        let mut ranges = [None, None];
        for (i, n) in counts.into_iter().enumerate() {
            let want = (n > 0).then(|| Slots::range_for(n));
            if let Some((base, size)) = previous[i] {
                if want == Some(size) {
                    ranges[i] = Some((base, size));
                    continue;
                }
                self.slots.free(base, size);
            }
            if let Some(size) = want {
                let Some(base) = self.slots.alloc(size) else {
                    for (b, s) in ranges.iter().chain(&previous[i + 1..]).flatten() {
                        self.slots.free(*b, *s);
                    }
                    return Err(Box::new((
                        "the endpoint index space is exhausted".into(),
                        port,
                    )));
                };
                ranges[i] = Some((base, size));
            }
        }
        let r = Ranges {
            cluster: ranges[0].map(|r| r.0),
            local: ranges[1].map(|r| r.0),
        };
        let objects = render_port(&port, r, &self.config);
        let taken = owned_elements(&objects).find_map(|(map, e)| {
            self.owners
                .get(&(map.clone(), e.key.clone()))
                .map(|owner| (map, e, owner))
        });
        if let Some((map, e, owner)) = taken {
            let message = format!(
                "{:?} in {map} is already used by {owner}",
                e.key
                    .iter()
                    .map(podnet_nft::render::render_value)
                    .collect::<Vec<_>>()
            );
            for (b, s) in ranges.iter().flatten() {
                self.slots.free(*b, *s);
            }
            return Err(Box::new((message, port)));
        }
        for (map, e) in owned_elements(&objects) {
            self.owners
                .insert((map.clone(), e.key.clone()), port.name.clone());
        }
        for set in &objects.shared_sets {
            match self.shared.get_mut(&set.name) {
                Some(entry) => entry.1 += 1,
                None => {
                    self.shared.insert(set.name.clone(), (set.clone(), 1));
                }
            }
        }
        for ip in &objects.hairpin {
            *self.hairpin.entry(*ip).or_default() += 1;
        }
        Ok((Programmed { port, ranges }, objects))
    }

    /// Gives back a port's keys and hairpin references, and its ranges if `ranges`.
    fn release(&mut self, p: &Programmed, objects: &PortObjects, ranges: bool) {
        if ranges {
            for (b, s) in p.ranges.iter().flatten() {
                self.slots.free(*b, *s);
            }
        }
        for (map, e) in owned_elements(objects) {
            self.owners.remove(&(map.clone(), e.key.clone()));
        }
        for set in &objects.shared_sets {
            if let Some(entry) = self.shared.get_mut(&set.name) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.shared.remove(&set.name);
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
        let mut deletions: BTreeMap<&str, Vec<Element>> = BTreeMap::new();
        let mut additions: BTreeMap<&str, Vec<Element>> = BTreeMap::new();
        for ((map, key), data) in &before.elements {
            if after.elements.get(&(map.clone(), key.clone())) != Some(data) {
                deletions
                    .entry(map)
                    .or_default()
                    .push(Element::key(key.clone()));
            }
        }
        for ((map, key), data) in &after.elements {
            if before.elements.get(&(map.clone(), key.clone())) != Some(data) {
                additions.entry(map).or_default().push(Element {
                    key: key.clone(),
                    data: data.clone(),
                });
            }
        }
        for (ip, delta) in hairpin_before {
            // delta = references before − after, among the ports that changed.
            let now = self.hairpin.get(&ip).copied().unwrap_or(0) as isize;
            let was = now + delta;
            if was > 0 && now == 0 {
                deletions
                    .entry(names::HAIRPIN)
                    .or_default()
                    .push(hairpin_element(ip));
            } else if was == 0 && now > 0 {
                additions
                    .entry(names::HAIRPIN)
                    .or_default()
                    .push(hairpin_element(ip));
            }
        }
        for (set, elems) in deletions {
            tx.push(Op::DeleteElements {
                set: set.to_string(),
                elems,
            });
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
        for name in before.chains.keys() {
            if !after.chains.contains_key(name) {
                tx.push(Op::DeleteChain(name.to_string()));
            }
        }
        for name in before.sets.keys() {
            if !after.sets.contains_key(name) || rebuilt.contains(name) {
                tx.push(Op::DeleteSet(name.to_string()));
            }
        }
        // Shared shards: gone when their last port went (their rules are flushed above).
        for name in self.shared_programmed.iter() {
            if !self.shared.contains_key(name) {
                tx.push(Op::DeleteSet(name.clone()));
            }
        }
        for (name, (set, _)) in &self.shared {
            if !self.shared_programmed.contains(name) {
                tx.push(Op::AddSet(set.clone()));
            }
        }
        for (name, set) in &after.sets {
            if before.sets.get(name) != Some(set) {
                tx.push(Op::AddSet((*set).clone()));
            }
        }
        for name in after.chains.keys() {
            if !before.chains.contains_key(name) {
                tx.push(Op::AddChain(Chain::regular(name.to_string())));
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
            tx.push(Op::AddElements {
                set: set.to_string(),
                elems,
            });
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

/// The elements of a port whose keys may collide with another port's: all but those of
/// the shared index maps (`endpoints-K`, `endpoint-chains-K`), keyed by the port's own
/// index range.
fn owned_elements(o: &PortObjects) -> impl Iterator<Item = &(String, Element)> {
    o.elements
        .iter()
        .filter(|(map, _)| !o.shared_sets.iter().any(|s| s.name == *map))
}

/// [`Transaction::replace_table`] without copying the table (at 50k services a copy is
/// tens of megabytes at the moment memory peaks).
fn replace(table: Table) -> Transaction {
    let mut tx = Transaction::new(table.family, table.name);
    tx.push(Op::AddTable);
    tx.push(Op::DeleteTable);
    tx.push(Op::AddTable);
    let mut elements = Vec::new();
    for (set, elems) in table.sets {
        if !elems.is_empty() {
            elements.push(Op::AddElements {
                set: set.name.clone(),
                elems,
            });
        }
        tx.push(Op::AddSet(set));
    }
    let mut rules = Vec::new();
    for (chain, chain_rules) in table.chains {
        rules.extend(chain_rules.into_iter().map(|rule| Op::AddRule {
            chain: chain.name.clone(),
            rule,
        }));
        tx.push(Op::AddChain(chain));
    }
    tx.ops.extend(rules);
    tx.ops.extend(elements);
    tx
}

fn hairpin_element(ip: Ipv4Addr) -> Element {
    Element::key(vec![Value::Ipv4(ip), Value::Ipv4(ip)])
}

/// The objects of several ports, indexed for comparison.
#[derive(Default)]
struct Objects<'a> {
    chains: BTreeMap<&'a str, &'a Vec<Rule>>,
    sets: BTreeMap<&'a str, &'a Set>,
    elements: BTreeMap<(String, Vec<Value>), Option<podnet_nft::ElemData>>,
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
            self.elements
                .insert((map.clone(), e.key.clone()), e.data.clone());
        }
    }
}
