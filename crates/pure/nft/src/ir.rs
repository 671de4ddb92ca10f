//! Pure: the typed IR of nf_tables objects and of one transaction.
//!
//! Invariant: every value here can be both rendered to `nft -f` text ([`crate::render`])
//! and encoded to netlink ([`crate::encode`]) with the same meaning; the netns test in
//! podnet-netlink (`tests/nftables.rs`) proves it by comparing the kernel's listings of
//! both paths.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
    /// Bound to one device's ingress: sees packets as the driver hands them over, before
    /// the IP stack (and conntrack) does.
    Netdev,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainKind {
    Filter,
    Nat,
}

/// Netfilter hooks: the five of the ip/ip6/inet families, and the netdev family's
/// `ingress` (its device is [`BaseChain::device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
    Ingress,
}

/// What a base chain does with packets no rule decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: attached to a hook.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub kind: ChainKind,
    pub hook: Hook,
    /// As nft's numeric priority (`dstnat` = -100, `srcnat` = 100, `raw` = -300, …).
    pub priority: i32,
    pub policy: Policy,
    /// The device of a netdev `ingress` chain (required there, refused elsewhere).
    pub device: Option<String>,
}

/// A chain: a regular one (`base: None`, reached by jump/goto) or a base chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    pub name: String,
    pub base: Option<BaseChain>,
}

impl Chain {
    /// A regular chain.
    pub fn regular(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            base: None,
        }
    }

    /// A base chain.
    pub fn base(name: impl Into<String>, base: BaseChain) -> Chain {
        Chain {
            name: name.into(),
            base: Some(base),
        }
    }
}

/// Data types of set keys and map values (nft's datatypes of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// `ipv4_addr`, 4 bytes, network order.
    Ipv4Addr,
    /// `ipv6_addr`, 16 bytes, network order.
    Ipv6Addr,
    /// `inet_proto`, 1 byte (padded to 4 in concatenations).
    InetProto,
    /// `inet_service`, 2 bytes network order (padded to 4 in concatenations).
    InetService,
    /// `mark`, a 32-bit integer in host order.
    Mark,
    /// `ifname`, 16 bytes, NUL padded.
    IfName,
}

/// How a set's key (or a map's data) is declared. `Typeof` is needed where nft's type
/// checker would refuse a `type` declaration, e.g. a map looked up with the result of
/// `numgen` (nft 1.0.6: "datatype mismatch, map expects packet mark, mapping expression
/// has type integer"). The kernel only sees widths; `typeof` is stored in the set's
/// userdata exactly as nft stores it, so `nft list` prints it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyDecl {
    Types(Vec<Type>),
    Typeof(Vec<Expr>),
}

/// What a map maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetData {
    /// A verdict map (`vmap`): data is a [`Verdict`].
    Verdict,
    /// Values, e.g. `ipv4_addr . inet_service` for a dnat map.
    Types(Vec<Type>),
    /// Values declared by expression (`typeof ip daddr . th dport`); only together with a
    /// `typeof` key (nft 1.0.6 does not mix the two forms in one declaration).
    Typeof(Vec<Expr>),
}

/// Set flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SetFlags {
    /// Elements may be prefixes/ranges (`Value::Ipv4Prefix`, `Value::Ipv6Prefix`).
    pub interval: bool,
    /// Elements may expire.
    pub timeout: bool,
    /// Rules may add elements (`update @set { … }`).
    pub dynamic: bool,
}

/// A named set, or a map when `data` is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    pub name: String,
    pub key: KeyDecl,
    pub data: Option<SetData>,
    pub flags: SetFlags,
    /// Default element timeout (needs `flags.timeout`).
    pub timeout: Option<Duration>,
    /// Maximum number of elements (`size N`); needed by nft for dynamic sets it creates,
    /// optional for the kernel.
    pub size: Option<u32>,
    pub comment: Option<String>,
}

impl Set {
    /// A plain set of `key` values.
    pub fn new(name: impl Into<String>, key: Vec<Type>) -> Set {
        Set {
            name: name.into(),
            key: KeyDecl::Types(key),
            data: None,
            flags: SetFlags::default(),
            timeout: None,
            size: None,
            comment: None,
        }
    }

    /// A map from `key` to `data`.
    pub fn map(name: impl Into<String>, key: Vec<Type>, data: SetData) -> Set {
        Set {
            data: Some(data),
            ..Set::new(name, key)
        }
    }

    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }
}

/// One value of a key or of map data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    /// `inet_proto`: 6 = tcp, 17 = udp, 132 = sctp.
    Proto(u8),
    Port(u16),
    Mark(u32),
    /// A plain 32-bit integer in host order: keys of maps looked up with `numgen`.
    Integer(u32),
    /// A 1-byte integer (`ip ttl`'s values).
    Byte(u8),
    IfName(String),
    /// A fib address type (`fib daddr type local`).
    AddrType(AddrType),
    /// `10.0.0.0/8`: in matches (`ip saddr 10.0.0.0/8`) and interval sets only.
    Ipv4Prefix(Ipv4Addr, u8),
    /// `fd00::/8`: in matches and interval sets only.
    Ipv6Prefix(Ipv6Addr, u8),
    /// `10.0.0.1-10.0.0.6` (first <= last): an address range, in (single-key) interval
    /// sets only. The kernel holds an interval as two elements (its start, and the address
    /// after it), so one range costs what one prefix costs, however many prefixes it spans.
    Ipv4Range(Ipv4Addr, Ipv4Addr),
    /// `80-90` (first <= last; `80-80` is the single port, listed as `80`): a port range,
    /// in interval sets only. In a concatenated interval set every element needs its range
    /// end, so exact values there are written as ranges (`Ipv4Prefix(a, 32)`,
    /// `PortRange(p, p)`).
    PortRange(u16, u16),
}

impl Value {
    pub const TCP: Value = Value::Proto(6);
    pub const UDP: Value = Value::Proto(17);
    pub const SCTP: Value = Value::Proto(132);

    /// An address of either family.
    pub fn ip(addr: IpAddr) -> Value {
        match addr {
            IpAddr::V4(a) => Value::Ipv4(a),
            IpAddr::V6(a) => Value::Ipv6(a),
        }
    }
}

/// Route types as `fib … type` reports them (`RTN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrType {
    Unicast = 1,
    Local = 2,
    Broadcast = 3,
    Multicast = 5,
}

/// A verdict: in a rule, or as the data of a verdict map element.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// Where a map element points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ElemData {
    Verdict(Verdict),
    Values(Vec<Value>),
}

/// A set element (`data` for maps; ignored by deletions).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    pub key: Vec<Value>,
    pub data: Option<ElemData>,
}

impl Element {
    pub fn key(key: Vec<Value>) -> Element {
        Element { key, data: None }
    }

    pub fn verdict(key: Vec<Value>, verdict: Verdict) -> Element {
        Element {
            key,
            data: Some(ElemData::Verdict(verdict)),
        }
    }

    pub fn values(key: Vec<Value>, data: Vec<Value>) -> Element {
        Element {
            key,
            data: Some(ElemData::Values(data)),
        }
    }
}

/// Value sources of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expr {
    IpSaddr,
    IpDaddr,
    /// `ip ttl`: the IPv4 header's time to live (1 byte, values [`Value::Byte`]).
    IpTtl,
    Ip6Saddr,
    Ip6Daddr,
    /// Transport header source port (`th sport`): only meaningful after an l4proto match.
    ThSport,
    ThDport,
    MetaL4Proto,
    MetaMark,
    MetaIifname,
    MetaOifname,
    /// `fib daddr type`: the route type of the destination (local, unicast, …).
    FibDaddrType,
    /// `ct status` bits (see [`ct_status`]).
    CtStatus,
    /// `ct state` bits (see [`ct_state`]).
    CtState,
    /// `numgen random mod M offset O`: a random number in O..O+M.
    Numgen {
        modulus: u32,
        offset: u32,
    },
}

/// Bits of `ct state`.
pub mod ct_state {
    pub const INVALID: u32 = 1;
    pub const ESTABLISHED: u32 = 2;
    pub const RELATED: u32 = 4;
    pub const NEW: u32 = 8;
    pub const UNTRACKED: u32 = 64;
}

/// Bits of `ct status` (`IPS_*`).
pub mod ct_status {
    pub const EXPECTED: u32 = 1;
    pub const SEEN_REPLY: u32 = 2;
    pub const ASSURED: u32 = 4;
    pub const CONFIRMED: u32 = 8;
    pub const SNAT: u32 = 16;
    pub const DNAT: u32 = 32;
    pub const DYING: u32 = 512;
}

/// Comparison of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    /// `>`: only on single big-endian scalar values (`ip ttl > 1`; no prefixes, ranges,
    /// host-order integers or names, and not in bit matches).
    Gt,
}

/// Rejection kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// `reject with tcp reset` (the rule must match tcp first).
    TcpReset,
    /// `reject with icmp type port-unreachable` (ip family).
    IcmpPortUnreachable,
    /// `reject with icmpx type port-unreachable` (inet family).
    IcmpxPortUnreachable,
    /// `reject with icmp type admin-prohibited` (ip family; ICMP code 13, "communication
    /// administratively prohibited": what a policy refusal says).
    IcmpAdminProhibited,
}

/// Statements of a rule, evaluated left to right.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// `EXPR VALUE` / `EXPR != VALUE` (a prefix value matches the masked expression).
    Match {
        expr: Expr,
        op: CmpOp,
        value: Value,
    },
    /// `(EXPR & mask) op value`, for flag-like expressions (32-bit ones: `ct state`,
    /// `ct status`, `meta mark`). `ct state established,related` is
    /// `{ mask: ESTABLISHED|RELATED, op: Ne, value: 0 }`; `meta mark & 0x4000 == 0x4000`
    /// is `{ mask: 0x4000, op: Eq, value: 0x4000 }`.
    MatchBits {
        expr: Expr,
        mask: u32,
        op: CmpOp,
        value: u32,
    },
    /// `KEY1 . KEY2 @set` (or `!= @set`).
    InSet {
        keys: Vec<Expr>,
        set: String,
        negate: bool,
    },
    /// `KEY1 . KEY2 vmap @map`.
    Vmap {
        keys: Vec<Expr>,
        map: String,
    },
    /// `dnat to ADDR[:PORT]` (`dnat ip to` / `dnat ip6 to` in inet tables).
    Dnat {
        addr: IpAddr,
        port: Option<u16>,
    },
    /// `dnat ip addr . port to KEYS map @map`: the map's data is `ipv4_addr . inet_service`
    /// (or `ipv6_addr . inet_service` with `ipv6`). The rule must match the transport
    /// protocol before (nft refuses a port mapping otherwise).
    DnatMap {
        keys: Vec<Expr>,
        map: String,
        ipv6: bool,
    },
    Masquerade {
        fully_random: bool,
    },
    /// `meta mark set meta mark | BITS`.
    MarkSetOr(u32),
    Reject(Reject),
    Counter,
    /// `update @set { KEYS [timeout T] }`: adds or refreshes an element of a dynamic set.
    SetUpdate {
        set: String,
        keys: Vec<Expr>,
        timeout: Option<Duration>,
    },
    NoTrack,
    /// `fwd ip to ADDR device "DEV"` (netdev tables only): sends the packet out of
    /// `device` to the IPv4 next hop `to` (its neighbour entry gives the MAC); the packet
    /// is stolen, no later statement sees it.
    Fwd {
        to: FwdTo,
        device: Device,
    },
    Verdict(Verdict),
}

/// The next-hop address of a [`Stmt::Fwd`] (IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FwdTo {
    /// `fwd ip to ip daddr …`: an `ipv4_addr` expression.
    Key(Expr),
    /// `fwd ip to KEYS map @map …`: looked up in a map whose data is `ipv4_addr`.
    Map { keys: Vec<Expr>, map: String },
}

/// A network device as a rule names it: `name` for the text, `index` (its ifindex in
/// the table's network namespace) for netlink — nft resolves the name when it parses
/// the rule and stores the index, so the two must agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Device {
    pub name: String,
    pub index: u32,
}

/// A rule: statements plus an optional comment (kept in the rule's userdata, as nft does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub stmts: Vec<Stmt>,
    pub comment: Option<String>,
}

impl Rule {
    pub fn new(stmts: Vec<Stmt>) -> Rule {
        Rule {
            stmts,
            comment: None,
        }
    }

    pub fn with_comment(mut self, comment: impl Into<String>) -> Rule {
        self.comment = Some(comment.into());
        self
    }
}

/// One operation of a [`Transaction`]. The table of every operation is the transaction's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if missing (`add table`: no error if it exists).
    AddTable,
    /// Deletes the table and everything in it (error if missing: precede it with
    /// `AddTable` to delete "if present", as [`Transaction::replace_table`] does).
    DeleteTable,
    /// Creates the chain if missing.
    AddChain(Chain),
    /// Removes every rule of the chain.
    FlushChain(String),
    DeleteChain(String),
    /// Appends a rule.
    AddRule {
        chain: String,
        rule: Rule,
    },
    /// Creates the set if missing (its declaration must then match).
    AddSet(Set),
    /// Removes every element of a set (`flush set`).
    FlushSet(String),
    /// Removes every element of a map (`flush map`: nft 1.0.6 refuses `flush set` on a
    /// map; the kernel message is the same).
    FlushMap(String),
    DeleteSet(String),
    /// Adds elements (existing identical elements are not an error).
    AddElements {
        set: String,
        elems: Vec<Element>,
    },
    /// Deletes elements; a missing element fails the transaction (ENOENT).
    DeleteElements {
        set: String,
        elems: Vec<Element>,
    },
}

/// An ordered list of operations on one table, applied atomically: all or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub family: Family,
    pub table: String,
    pub ops: Vec<Op>,
}

impl Transaction {
    pub fn new(family: Family, table: impl Into<String>) -> Transaction {
        Transaction {
            family,
            table: table.into(),
            ops: Vec::new(),
        }
    }

    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// `add chain` and its rules, in order.
    pub fn add_chain(&mut self, chain: Chain, rules: Vec<Rule>) -> &mut Self {
        let name = chain.name.clone();
        self.ops.push(Op::AddChain(chain));
        self.ops.extend(rules.into_iter().map(|rule| Op::AddRule {
            chain: name.clone(),
            rule,
        }));
        self
    }

    /// The atomic full replace of `table`, whether or not it exists:
    /// `add table; delete table; add table; …its content…`. Established connections keep
    /// their conntrack NAT bindings, and there is no instant without the ruleset.
    pub fn replace_table(table: &Table) -> Transaction {
        let mut tx = Transaction::new(table.family, table.name.clone());
        tx.ops.push(Op::AddTable);
        tx.ops.push(Op::DeleteTable);
        tx.ops.extend(table.ops());
        tx
    }

    /// Removes table `name` of `family` whether or not it exists (`add table` makes sure
    /// there is one to delete; the two are one atomic transaction).
    pub fn remove_table(family: Family, name: impl Into<String>) -> Transaction {
        let mut tx = Transaction::new(family, name);
        tx.ops.push(Op::AddTable);
        tx.ops.push(Op::DeleteTable);
        tx
    }

    /// [`Transaction::replace_table`] taking the table: its sets, chains, rules and
    /// elements move into the operations instead of being copied (a table of 200k
    /// elements).
    pub fn replace_table_owned(table: Table) -> Transaction {
        let mut tx = Transaction::new(table.family, table.name.clone());
        tx.ops.push(Op::AddTable);
        tx.ops.push(Op::DeleteTable);
        tx.ops.extend(table.into_ops());
        tx
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A whole table's desired content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub sets: Vec<(Set, Vec<Element>)>,
    pub chains: Vec<(Chain, Vec<Rule>)>,
}

impl Table {
    pub fn new(family: Family, name: impl Into<String>) -> Table {
        Table {
            family,
            name: name.into(),
            sets: Vec::new(),
            chains: Vec::new(),
        }
    }

    /// The operations that create this table from nothing: the table, its sets, its
    /// chains, then the elements (verdict map elements name chains), then the rules
    /// (which name sets and chains).
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = vec![Op::AddTable];
        ops.extend(self.sets.iter().map(|(set, _)| Op::AddSet(set.clone())));
        ops.extend(
            self.chains
                .iter()
                .map(|(chain, _)| Op::AddChain(chain.clone())),
        );
        for (chain, rules) in &self.chains {
            for rule in rules {
                ops.push(Op::AddRule {
                    chain: chain.name.clone(),
                    rule: rule.clone(),
                });
            }
        }
        for (set, elems) in &self.sets {
            if !elems.is_empty() {
                ops.push(Op::AddElements {
                    set: set.name.clone(),
                    elems: elems.clone(),
                });
            }
        }
        ops
    }

    /// [`Table::ops`], the table moved into them.
    pub fn into_ops(self) -> Vec<Op> {
        let mut ops = vec![Op::AddTable];
        let mut elements = Vec::new();
        for (set, elems) in self.sets {
            if !elems.is_empty() {
                elements.push(Op::AddElements {
                    set: set.name.clone(),
                    elems,
                });
            }
            ops.push(Op::AddSet(set));
        }
        let mut rules = Vec::new();
        for (chain, chain_rules) in self.chains {
            for rule in chain_rules {
                rules.push(Op::AddRule {
                    chain: chain.name.clone(),
                    rule,
                });
            }
            ops.push(Op::AddChain(chain));
        }
        ops.extend(rules);
        ops.extend(elements);
        ops
    }
}

/// The longest name nf_tables accepts (`NFT_NAME_MAXLEN` 256 with the NUL).
pub const NAME_MAX: usize = 255;

/// Whether `name` is usable unquoted in nft text and by the kernel: a letter or `_`
/// first, then letters, digits, `_`, `-`, `.`, `/`; at most [`NAME_MAX`] bytes.
/// A name that is an nft keyword (`fwd`, `ip`, `counter`, …) passes this check and the
/// kernel takes it, but `nft -f` cannot parse the rendered text (nft 1.0.6 accepts no
/// quoted chain names): podnet's names are compound (`svc-…`, `nat-prerouting`).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    name.len() <= NAME_MAX
        && (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}
