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

use podnet_nft::{Chain, Element, Op, Rule, Set, Transaction, Value};

use crate::model::{PortName, Problem, Protocol, ServicePort};
use crate::render::{
    FAMILY, PortObjects, ProxyConfig, Ranges, TABLE, names, render_base, render_port,
};
use crate::slots::Slots;

/// One programmed port: the input, its index ranges (base, size) and its objects.
#[derive(Clone, Debug)]
struct Programmed {
    port: ServicePort,
    ranges: [Option<(u32, u32)>; 2],
    objects: PortObjects,
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
    /// (map, key) → the port that owns the element.
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

    /// The whole table as the memory describes it (for dumps and full replaces).
    pub fn table(&self) -> podnet_nft::Table {
        let mut t = render_base(&self.config);
        let mut elements: BTreeMap<&str, Vec<Element>> = BTreeMap::new();
        t.sets
            .extend(self.shared.values().map(|(s, _)| (s.clone(), Vec::new())));
        for p in self.ports.values() {
            t.sets
                .extend(p.objects.sets.iter().map(|s| (s.clone(), Vec::new())));
            t.chains.extend(
                p.objects
                    .chains
                    .iter()
                    .map(|(c, r)| (Chain::regular(c.clone()), r.clone())),
            );
            for (map, e) in &p.objects.elements {
                elements.entry(map).or_default().push(e.clone());
            }
        }
        elements.insert(
            names::HAIRPIN,
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
        let mut problems = Vec::new();
        let mut changed = Vec::new();
        let mut desired: BTreeMap<PortName, ServicePort> =
            desired.into_iter().map(|p| (p.name.clone(), p)).collect();

        // Removed ports, and changed ones: old objects out of the memory.
        let mut old: Vec<Programmed> = Vec::new();
        let names: Vec<PortName> = self.ports.keys().cloned().collect();
        for name in names {
            let keep = desired
                .get(&name)
                .is_some_and(|d| *d == self.ports[&name].port);
            if keep {
                desired.remove(&name);
                continue;
            }
            let p = self.ports.remove(&name).expect("listed");
            // A changed port keeps its index ranges where they still fit (fewer elements
            // change); a removed port gives them back.
            self.release(&p, !desired.contains_key(&name));
            changed.push(name);
            old.push(p);
        }
        let mut reusable: BTreeMap<&PortName, [Option<(u32, u32)>; 2]> =
            old.iter().map(|p| (&p.port.name, p.ranges)).collect();
        // New and changed ports.
        let mut new: Vec<PortName> = Vec::new();
        for (name, port) in desired {
            let previous = reusable.remove(&name).unwrap_or_default();
            match self.program(port, previous) {
                Ok(p) => {
                    if !changed.contains(&name) {
                        changed.push(name.clone());
                    }
                    self.ports.insert(name.clone(), p);
                    new.push(name);
                }
                Err(message) => problems.push(Problem {
                    object: format!("Service {}/{}", name.namespace, name.service),
                    message,
                }),
            }
        }
        changed.sort();
        let mut fresh_udp = BTreeSet::new();
        for name in new.iter().filter(|n| n.protocol == Protocol::Udp) {
            let now = &self.ports[name].port;
            let had = old
                .iter()
                .find(|p| p.port.name == *name)
                .is_some_and(|p| !endpoints_of(&p.port).is_empty());
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
        for p in old.iter().filter(|p| p.port.name.protocol == Protocol::Udp) {
            let now: BTreeSet<(Ipv4Addr, u16)> = self
                .ports
                .get(&p.port.name)
                .map(|n| endpoints_of(&n.port))
                .unwrap_or_default();
            for e in endpoints_of(&p.port).difference(&now) {
                stale_udp.insert(std::net::SocketAddrV4::new(e.0, e.1));
            }
        }

        let transaction = if self.in_step {
            self.difference(&old, &new)
        } else {
            Transaction::replace_table(&self.table())
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

    /// Renders a port with fresh index ranges and claims its element keys.
    /// `previous` are the ranges the port held before this sync (not yet freed): kept when
    /// the size still fits, freed otherwise.
    fn program(
        &mut self,
        port: ServicePort,
        previous: [Option<(u32, u32)>; 2],
    ) -> Result<Programmed, String> {
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
                    for (b, s) in ranges.iter().flatten() {
                        self.slots.free(*b, *s);
                    }
                    return Err("the endpoint index space is exhausted".into());
                };
                ranges[i] = Some((base, size));
            }
        }
        let r = Ranges {
            cluster: ranges[0].map(|r| r.0),
            local: ranges[1].map(|r| r.0),
        };
        let objects = render_port(&port, r, &self.config);
        let taken = objects.elements.iter().find_map(|(map, e)| {
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
            return Err(message);
        }
        for (map, e) in &objects.elements {
            self.owners
                .insert((map.clone(), e.key.clone()), port.name.clone());
        }
        for set in &objects.shared_sets {
            self.shared
                .entry(set.name.clone())
                .or_insert_with(|| (set.clone(), 0))
                .1 += 1;
        }
        for ip in &objects.hairpin {
            *self.hairpin.entry(*ip).or_default() += 1;
        }
        Ok(Programmed {
            port,
            ranges,
            objects,
        })
    }

    /// Gives back a port's keys and hairpin references, and its ranges if `ranges`.
    fn release(&mut self, p: &Programmed, ranges: bool) {
        if ranges {
            for (b, s) in p.ranges.iter().flatten() {
                self.slots.free(*b, *s);
            }
        }
        for (map, e) in &p.objects.elements {
            self.owners.remove(&(map.clone(), e.key.clone()));
        }
        for set in &p.objects.shared_sets {
            if let Some(entry) = self.shared.get_mut(&set.name) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.shared.remove(&set.name);
                }
            }
        }
        for ip in &p.objects.hairpin {
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
    fn difference(&self, old: &[Programmed], new: &[PortName]) -> Transaction {
        let mut before = Objects::default();
        for p in old {
            before.add(&p.objects);
        }
        let mut after = Objects::default();
        for n in new {
            after.add(&self.ports[n].objects);
        }
        // The shared hairpin set: compare the referenced IPs before and after.
        let mut hairpin_before: BTreeMap<Ipv4Addr, isize> = BTreeMap::new();
        for p in old {
            for ip in &p.objects.hairpin {
                *hairpin_before.entry(*ip).or_default() += 1;
            }
        }
        for n in new {
            for ip in &self.ports[n].objects.hairpin {
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
