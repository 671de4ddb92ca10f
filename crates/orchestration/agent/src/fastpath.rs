//! Orchestration: the owner of the pod-to-pod fast path (table `netdev podnet-fastpath`;
//! what it does and why it is safe: podnet-nodenet's `fastpath` module).
//!
//! Three syncers feed it, each its own part, through one [`Shared`] value:
//! - the node syncer (the kernel thread): this node's pod CIDR, the next hop of every
//!   peer pod CIDR, the devices (bridge, VXLAN device or underlay link) and the local
//!   pods' host veths — re-read every [`crate::LINK_POLL`], so a new pod is on the fast
//!   path within about a second of its veth appearing;
//! - the Services syncer: every endpoint address it programs ([`FastPath::services`]),
//!   **before** the transaction that lets the Services table DNAT to it. An address the
//!   Services stop using lingers in `slow` while conntrack holds a DNATed flow to it
//!   ([`FastPath::release_lingering`]): its replies must still be un-NATed on this node;
//! - the policy syncer: the local pods a policy isolates ([`FastPath::isolated`]).
//!
//! Until every enabled feeder has reported once, the table holds no `fwd` rule
//! (disarmed): at start the previous run's table is replaced by a disarmed one, so no
//! packet takes the fast path on stale inputs.
//!
//! Kernel writes: the table's shape (chains, peer maps) is diffed against what was last
//! programmed (`podnet_nft::diff_tables`); the `slow` set's elements are added and deleted
//! one by one as addresses change — at 50k Services they are most of the table. A refused
//! transaction makes the next one a whole-table replace.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use ipnet::Ipv4Net;
use podnet_nft::{Device, Op, Table, Transaction, diff_tables};
use podnet_nodenet::{FastPathPlan, SLOW_SET, render_fastpath, slow_elements};

/// The fast path, shared by the syncers that feed it.
pub type Shared = Arc<Mutex<FastPath>>;

/// Why an address is in `slow` (bits).
const ENDPOINT: u8 = 1;
const LINGER: u8 = 2;
const ISOLATED: u8 = 4;

/// The kernel side.
pub trait FastPathKernel: Send {
    /// Applies one transaction atomically.
    fn apply(&mut self, tx: &Transaction) -> Result<()>;
    /// The addresses conntrack holds DNATed flows to (any protocol).
    fn dnat_targets(&mut self) -> Result<BTreeSet<Ipv4Addr>>;
}

/// What the node syncer knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub pod_cidr: Ipv4Net,
    pub bridge: Device,
    pub peer_device: Device,
    pub next_hops: Vec<(Ipv4Net, Ipv4Addr)>,
}

pub struct FastPath {
    kernel: Box<dyn FastPathKernel>,
    topology: Option<Topology>,
    pod_links: BTreeSet<String>,
    waiting_services: bool,
    waiting_policy: bool,
    /// Address → why it is slow (never 0: such entries are removed).
    slow: BTreeMap<Ipv4Addr, u8>,
    isolated: BTreeSet<Ipv4Addr>,
    lingering: BTreeSet<Ipv4Addr>,
    /// Addresses touched since the last transaction → whether they were in `slow` then.
    touched: BTreeMap<Ipv4Addr, bool>,
    /// The shape the kernel holds (None: unknown, the next commit replaces the table).
    programmed: Option<Table>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl FastPath {
    /// `services` / `policy`: whether those syncers run (the fast path waits for their
    /// first report).
    pub fn new(kernel: Box<dyn FastPathKernel>, services: bool, policy: bool) -> FastPath {
        FastPath {
            kernel,
            topology: None,
            pod_links: BTreeSet::new(),
            waiting_services: services,
            waiting_policy: policy,
            slow: BTreeMap::new(),
            isolated: BTreeSet::new(),
            lingering: BTreeSet::new(),
            touched: BTreeMap::new(),
            programmed: None,
            metrics: None,
        }
    }

    /// Reports its state in `metrics` (`podnet_agent_fast_path_*`) after every commit.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> FastPath {
        self.metrics = Some(metrics);
        self
    }

    pub fn shared(self) -> Shared {
        Arc::new(Mutex::new(self))
    }

    /// Whether the `fwd` rules are in (as of the last commit).
    pub fn armed(&self) -> bool {
        self.topology.is_some() && !self.waiting_services && !self.waiting_policy
    }

    /// The addresses in `slow`.
    pub fn slow(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.slow.keys().copied()
    }

    /// The node syncer's part; commits if it changed.
    pub fn set_topology(
        &mut self,
        topology: Option<Topology>,
        pod_links: BTreeSet<String>,
    ) -> Result<()> {
        if self.topology == topology && self.pod_links == pod_links && self.programmed.is_some() {
            return Ok(());
        }
        self.topology = topology;
        self.pod_links = pod_links;
        self.commit()
    }

    /// The Services syncer's report: each address whose use changed, and whether some
    /// programmed Service port now uses it. Committed at once: the caller must not let
    /// its own transaction DNAT to a new address unless this succeeded.
    pub fn services(&mut self, changes: impl IntoIterator<Item = (Ipv4Addr, bool)>) -> Result<()> {
        for (ip, used) in changes {
            if used {
                self.lingering.remove(&ip);
                self.update(ip, |b| (b | ENDPOINT) & !LINGER);
            } else if self.slow.get(&ip).is_some_and(|b| b & ENDPOINT != 0) {
                self.lingering.insert(ip);
                self.update(ip, |b| (b & !ENDPOINT) | LINGER);
            }
        }
        self.waiting_services = false;
        self.commit()
    }

    /// The policy syncer's report: the local pods isolated now (all of them).
    pub fn isolated(&mut self, now: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let before = std::mem::take(&mut self.isolated);
        for ip in before.difference(now) {
            self.update(*ip, |b| b & !ISOLATED);
        }
        for ip in now.difference(&before) {
            self.update(*ip, |b| b | ISOLATED);
        }
        self.isolated = now.clone();
        self.waiting_policy = false;
        self.commit()
    }

    /// Lets go of former endpoints conntrack holds no DNATed flow to any more.
    pub fn release_lingering(&mut self) -> Result<usize> {
        if self.lingering.is_empty() {
            return Ok(0);
        }
        let targets = self.kernel.dnat_targets()?;
        let done: Vec<Ipv4Addr> = self
            .lingering
            .iter()
            .filter(|ip| !targets.contains(ip))
            .copied()
            .collect();
        for ip in &done {
            self.lingering.remove(ip);
            self.update(*ip, |b| b & !LINGER);
        }
        if !done.is_empty() {
            self.commit()?;
        }
        Ok(done.len())
    }

    /// Retries after a refused transaction (the node syncer calls it on its tick).
    pub fn retry(&mut self) -> Result<()> {
        if self.programmed.is_none() && self.topology.is_some() {
            self.commit()
        } else {
            Ok(())
        }
    }

    fn update(&mut self, ip: Ipv4Addr, f: impl FnOnce(u8) -> u8) {
        let was = self.slow.get(&ip).copied().unwrap_or(0);
        self.touched.entry(ip).or_insert(was != 0);
        match f(was) {
            0 => self.slow.remove(&ip),
            b => self.slow.insert(ip, b),
        };
    }

    /// Sends what changed: the whole table when the kernel's is unknown, else the shape's
    /// difference and the `slow` elements touched.
    fn commit(&mut self) -> Result<()> {
        let Some(t) = &self.topology else {
            // Nothing to build on yet (no pod CIDR, no bridge): the kernel keeps what it
            // has — a disarmed table at most, see `new`'s caller.
            self.touched.clear();
            return Ok(());
        };
        let shape = render_fastpath(&FastPathPlan {
            pod_cidr: t.pod_cidr,
            bridge: t.bridge.clone(),
            peer_device: t.peer_device.clone(),
            next_hops: t.next_hops.clone(),
            pod_links: self.pod_links.clone(),
            armed: self.armed(),
        });
        let touched = std::mem::take(&mut self.touched);
        let mut tx = match &self.programmed {
            Some(old) => diff_tables(old, &shape),
            None => Transaction::replace_table(&shape),
        };
        let replaced = tx.ops.iter().any(|op| matches!(op, Op::DeleteTable));
        if replaced {
            if !self.slow.is_empty() {
                tx.push(Op::AddElements {
                    set: SLOW_SET.into(),
                    elems: slow_elements(self.slow.keys().copied()),
                });
            }
        } else {
            let (mut add, mut del) = (Vec::new(), Vec::new());
            for (ip, was) in touched {
                match (was, self.slow.contains_key(&ip)) {
                    (false, true) => add.push(ip),
                    (true, false) => del.push(ip),
                    _ => {}
                }
            }
            if !del.is_empty() {
                tx.push(Op::DeleteElements {
                    set: SLOW_SET.into(),
                    elems: slow_elements(del),
                });
            }
            if !add.is_empty() {
                tx.push(Op::AddElements {
                    set: SLOW_SET.into(),
                    elems: slow_elements(add),
                });
            }
        }
        if tx.is_empty() {
            return Ok(());
        }
        match self.kernel.apply(&tx) {
            Ok(()) => {
                self.programmed = Some(shape);
                if let Some(m) = &self.metrics {
                    m.fast_path_armed.set(i64::from(self.armed()));
                    m.fast_path_pods.set(self.pod_links.len() as i64);
                    m.fast_path_slow.set(self.slow.len() as i64);
                }
                Ok(())
            }
            Err(e) => {
                self.programmed = None;
                if let Some(m) = &self.metrics {
                    m.fast_path_errors.inc();
                }
                Err(e.context("fast path transaction refused; the next one replaces the table"))
            }
        }
    }
}

/// Removes the table a previous run left (its inputs are stale): until this run arms its
/// own, every packet takes the full path.
pub fn remove_table(kernel: &mut impl FastPathKernel) -> Result<()> {
    kernel.apply(&Transaction::remove_table(
        podnet_nft::Family::Netdev,
        podnet_nodenet::FASTPATH_TABLE,
    ))
}

/// The Services proxy's sockets (nf_tables and ctnetlink, opened in the node's namespace)
/// serve the fast path too.
impl FastPathKernel for crate::services::LinuxTransactions {
    fn apply(&mut self, tx: &Transaction) -> Result<()> {
        self.nft.apply(tx).map_err(anyhow::Error::from)
    }

    fn dnat_targets(&mut self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut out = BTreeSet::new();
        for proto in [6, 17, 132] {
            for e in self.conntrack.dump(proto)? {
                if e.reply.src.ip() != e.orig.dst.ip() {
                    out.insert(*e.reply.src.ip());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_nft::render_transaction;

    /// Records each transaction rendered; refuses the next one when `refuse` is set.
    #[derive(Clone, Default)]
    struct Fake {
        sent: Arc<Mutex<Vec<String>>>,
        refuse: Arc<Mutex<bool>>,
        dnat: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
    }

    impl FastPathKernel for Fake {
        fn apply(&mut self, tx: &Transaction) -> Result<()> {
            podnet_nft::validate(tx)?;
            if std::mem::take(&mut *self.refuse.lock().unwrap()) {
                anyhow::bail!("refused");
            }
            self.sent.lock().unwrap().push(render_transaction(tx));
            Ok(())
        }
        fn dnat_targets(&mut self) -> Result<BTreeSet<Ipv4Addr>> {
            Ok(self.dnat.lock().unwrap().clone())
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn topology() -> Topology {
        Topology {
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            bridge: Device {
                name: "podnet0".into(),
                index: 4,
            },
            peer_device: Device {
                name: "podnet.vxlan".into(),
                index: 3,
            },
            next_hops: vec![("10.244.2.0/24".parse().unwrap(), ip("10.244.2.0"))],
        }
    }

    fn links(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn last(f: &Fake) -> String {
        f.sent.lock().unwrap().last().cloned().unwrap_or_default()
    }

    #[test]
    fn armed_only_once_every_feeder_reported() {
        let f = Fake::default();
        let mut fp = FastPath::new(Box::new(f.clone()), true, true);
        fp.set_topology(Some(topology()), links(&["pna"])).unwrap();
        assert!(!fp.armed());
        assert!(
            last(&f).contains("delete table netdev podnet-fastpath"),
            "{}",
            last(&f)
        );
        assert!(!last(&f).contains("fwd"), "{}", last(&f));
        fp.services([(ip("10.244.2.7"), true)]).unwrap();
        assert!(!fp.armed(), "policy has not reported");
        assert!(!last(&f).contains("fwd"));
        fp.isolated(&BTreeSet::new()).unwrap();
        assert!(fp.armed());
        assert!(
            last(&f).contains("fwd ip to ip daddr map @next-hops"),
            "{}",
            last(&f)
        );
        // Nothing changed: nothing sent.
        let n = f.sent.lock().unwrap().len();
        fp.set_topology(Some(topology()), links(&["pna"])).unwrap();
        fp.isolated(&BTreeSet::new()).unwrap();
        fp.services([]).unwrap();
        assert_eq!(f.sent.lock().unwrap().len(), n);
    }

    #[test]
    fn endpoints_are_slow_at_once_and_leave_after_their_flows() {
        let f = Fake::default();
        let mut fp = FastPath::new(Box::new(f.clone()), true, false);
        fp.set_topology(Some(topology()), links(&[])).unwrap();
        fp.services([(ip("10.244.2.7"), true)]).unwrap();
        assert!(last(&f).contains("10.244.2.7"), "{}", last(&f));
        // No longer an endpoint, but conntrack still holds a DNATed flow to it.
        f.dnat.lock().unwrap().insert(ip("10.244.2.7"));
        fp.services([(ip("10.244.2.7"), false)]).unwrap();
        assert_eq!(fp.slow().collect::<Vec<_>>(), [ip("10.244.2.7")]);
        assert_eq!(fp.release_lingering().unwrap(), 0);
        f.dnat.lock().unwrap().clear();
        assert_eq!(fp.release_lingering().unwrap(), 1);
        assert_eq!(fp.slow().count(), 0);
        assert!(
            last(&f).contains("delete element netdev podnet-fastpath slow { 10.244.2.7 }"),
            "{}",
            last(&f)
        );
        // An endpoint again before its flows ended: it stays, without lingering.
        fp.services([(ip("10.244.2.8"), true)]).unwrap();
        f.dnat.lock().unwrap().insert(ip("10.244.2.8"));
        fp.services([(ip("10.244.2.8"), false)]).unwrap();
        fp.services([(ip("10.244.2.8"), true)]).unwrap();
        f.dnat.lock().unwrap().clear();
        assert_eq!(fp.release_lingering().unwrap(), 0);
        assert_eq!(fp.slow().collect::<Vec<_>>(), [ip("10.244.2.8")]);
    }

    #[test]
    fn isolated_pods_follow_the_policy_syncer() {
        let f = Fake::default();
        let mut fp = FastPath::new(Box::new(f.clone()), false, true);
        fp.set_topology(Some(topology()), links(&[])).unwrap();
        fp.isolated(&[ip("10.244.1.5"), ip("10.244.1.6")].into())
            .unwrap();
        fp.isolated(&[ip("10.244.1.6")].into()).unwrap();
        assert!(
            last(&f).contains("delete element netdev podnet-fastpath slow { 10.244.1.5 }"),
            "{}",
            last(&f)
        );
        assert_eq!(fp.slow().collect::<Vec<_>>(), [ip("10.244.1.6")]);
    }

    #[test]
    fn a_refused_transaction_makes_the_next_a_whole_replace() {
        let f = Fake::default();
        let mut fp = FastPath::new(Box::new(f.clone()), true, false);
        fp.set_topology(Some(topology()), links(&["pna"])).unwrap();
        fp.services([(ip("10.244.2.7"), true)]).unwrap();
        *f.refuse.lock().unwrap() = true;
        assert!(fp.services([(ip("10.244.3.9"), true)]).is_err());
        fp.retry().unwrap();
        let tx = last(&f);
        assert!(tx.contains("delete table netdev podnet-fastpath"), "{tx}");
        assert!(
            tx.contains("10.244.2.7") && tx.contains("10.244.3.9"),
            "{tx}"
        );
        // A new pod's veth: one chain more, no replace.
        fp.set_topology(Some(topology()), links(&["pna", "pnb"]))
            .unwrap();
        let tx = last(&f);
        assert!(!tx.contains("delete table"), "{tx}");
        assert!(tx.contains("pod-pnb"), "{tx}");
    }
}
