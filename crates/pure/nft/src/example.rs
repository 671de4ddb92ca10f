//! Pure: a representative Services table built with the IR — the shape podnet's planner
//! produces, used by the golden test, the netns tests and the scale benchmark.
//!
//! ```text
//! map service-ips   ipv4_addr . inet_proto . inet_service : verdict   VIP:port → goto svc-N
//! map endpoints-S   typeof numgen random mod 1 : ip daddr . th dport  slot → endpoint
//! chain svc-N       meta l4proto tcp dnat ip addr . port to numgen random mod K offset O map @endpoints-S
//! ```
//! Service `N` owns endpoint slots `O = N * SLOTS .. O + K` of map `endpoints-S`,
//! `S = N / SHARD`: no anonymous sets, and an endpoint change is one element.
//!
//! Why shards: every rule that looks a map up *binds* it, and the kernel checks each
//! element added to a map against every binding (`nft_add_set_elem` walks
//! `set->bindings`; binding a map to a new chain walks its elements), so one map shared
//! by all N service rules makes a full load O(N × elements): measured on kernel 6.18,
//! 5k services took 2.8 s and 10k services 95 s. With at most [`SHARD`] rules per map
//! the cost is O(SHARD × elements), linear in N.
use crate::ir::*;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Endpoint slots reserved per service in the `endpoints` map.
pub const SLOTS: u32 = 8;
/// Services per endpoints map (see the module docs).
pub const SHARD: u32 = 128;
/// The masquerade mark bit.
pub const MASQ_MARK: u32 = 0x4000;

/// The VIP of service `n` (10.96.0.0/12).
pub fn vip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n)
}

/// Endpoint `k` of service `n` (10.244.0.0/16 and up).
pub fn endpoint(n: u32, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n * SLOTS + k)
}

/// The endpoints map of service `n`.
pub fn endpoints_map(n: u32) -> String {
    format!("endpoints-{}", n / SHARD)
}

/// The declaration of an endpoints map: slot (a `numgen` result) → address . port.
pub fn endpoints_map_decl(name: &str) -> Set {
    Set {
        key: KeyDecl::Typeof(vec![Expr::Numgen {
            modulus: 1,
            offset: 0,
        }]),
        data: Some(SetData::Typeof(vec![Expr::IpDaddr, Expr::ThDport])),
        ..Set::new(name, vec![])
    }
}

/// The base chains, dispatch sets and helper chains (no services, no endpoints maps).
pub fn base_table(name: &str) -> Table {
    let nat = |hook, priority| BaseChain {
        kind: ChainKind::Nat,
        hook,
        priority,
        policy: Policy::Accept,
        device: None,
    };
    let filter = |hook, priority, policy| BaseChain {
        kind: ChainKind::Filter,
        hook,
        priority,
        policy,
        device: None,
    };
    let mut t = Table::new(Family::Ip, name);
    let mut service_ips = Set::map(
        "service-ips",
        vec![Type::Ipv4Addr, Type::InetProto, Type::InetService],
        SetData::Verdict,
    );
    service_ips.comment = Some("ClusterIP:port to service chain".into());
    let mut no_endpoints = Set::new(
        "no-endpoints",
        vec![Type::Ipv4Addr, Type::InetProto, Type::InetService],
    );
    no_endpoints.size = Some(65536);
    let mut local_cidrs = Set::new("local-cidrs", vec![Type::Ipv4Addr]);
    local_cidrs.flags.interval = true;
    let mut affinity = Set::new("affinity", vec![Type::Ipv4Addr, Type::Ipv4Addr]);
    affinity.flags = SetFlags {
        interval: false,
        timeout: true,
        dynamic: true,
    };
    affinity.timeout = Some(Duration::from_secs(10800));
    let ifaces = Set::map("nodeport-ifaces", vec![Type::IfName], SetData::Verdict);
    t.sets = vec![
        (service_ips, vec![]),
        (no_endpoints, vec![]),
        (
            local_cidrs,
            vec![
                Element::key(vec![Value::Ipv4Prefix(Ipv4Addr::new(10, 244, 0, 0), 16)]),
                Element::key(vec![Value::Ipv4Prefix(Ipv4Addr::new(192, 168, 50, 11), 32)]),
            ],
        ),
        (affinity, vec![]),
        (
            ifaces,
            vec![Element::verdict(
                vec![Value::IfName("lo".into())],
                Verdict::Return,
            )],
        ),
    ];
    let m = |expr, op, value| Stmt::Match { expr, op, value };
    let tuple = vec![Expr::IpDaddr, Expr::MetaL4Proto, Expr::ThDport];
    t.chains = vec![
        (
            Chain::base(
                "raw-prerouting",
                filter(Hook::Prerouting, -300, Policy::Accept),
            ),
            vec![Rule::new(vec![
                m(
                    Expr::IpDaddr,
                    CmpOp::Eq,
                    Value::Ipv4Prefix(Ipv4Addr::new(10, 99, 0, 0), 24),
                ),
                Stmt::NoTrack,
            ])],
        ),
        (
            Chain::base("nat-prerouting", nat(Hook::Prerouting, -100)),
            vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump(
                "services".into(),
            ))])],
        ),
        (
            Chain::base("nat-output", nat(Hook::Output, -100)),
            vec![Rule::new(vec![Stmt::Verdict(Verdict::Jump(
                "services".into(),
            ))])],
        ),
        (
            Chain::base("nat-postrouting", nat(Hook::Postrouting, 100)),
            vec![Rule::new(vec![
                Stmt::MatchBits {
                    expr: Expr::MetaMark,
                    mask: MASQ_MARK,
                    op: CmpOp::Eq,
                    value: MASQ_MARK,
                },
                Stmt::Masquerade { fully_random: true },
            ])],
        ),
        (
            Chain::base("filter-input", filter(Hook::Input, 0, Policy::Accept)),
            vec![
                Rule::new(vec![
                    Stmt::MatchBits {
                        expr: Expr::CtState,
                        mask: ct_state::ESTABLISHED | ct_state::RELATED,
                        op: CmpOp::Ne,
                        value: 0,
                    },
                    Stmt::Verdict(Verdict::Accept),
                ]),
                Rule::new(vec![
                    Stmt::MatchBits {
                        expr: Expr::CtStatus,
                        mask: ct_status::DNAT,
                        op: CmpOp::Ne,
                        value: 0,
                    },
                    Stmt::Counter,
                    Stmt::Verdict(Verdict::Accept),
                ]),
                Rule::new(vec![
                    Stmt::MatchBits {
                        expr: Expr::CtStatus,
                        mask: ct_status::DNAT,
                        op: CmpOp::Eq,
                        value: 0,
                    },
                    Stmt::MatchBits {
                        expr: Expr::CtState,
                        mask: ct_state::NEW | ct_state::ESTABLISHED,
                        op: CmpOp::Eq,
                        value: ct_state::NEW,
                    },
                    Stmt::MatchBits {
                        expr: Expr::MetaMark,
                        mask: MASQ_MARK,
                        op: CmpOp::Ne,
                        value: MASQ_MARK,
                    },
                    Stmt::Counter,
                ]),
                Rule::new(vec![
                    m(Expr::MetaL4Proto, CmpOp::Eq, Value::TCP),
                    Stmt::InSet {
                        keys: tuple.clone(),
                        set: "no-endpoints".into(),
                        negate: false,
                    },
                    Stmt::Reject(Reject::TcpReset),
                ])
                .with_comment("services without endpoints"),
                Rule::new(vec![
                    Stmt::InSet {
                        keys: tuple.clone(),
                        set: "no-endpoints".into(),
                        negate: false,
                    },
                    Stmt::Reject(Reject::IcmpPortUnreachable),
                ]),
                Rule::new(vec![
                    m(Expr::MetaIifname, CmpOp::Ne, Value::IfName("lo".into())),
                    m(Expr::MetaOifname, CmpOp::Eq, Value::IfName("eth0".into())),
                    m(
                        Expr::IpSaddr,
                        CmpOp::Ne,
                        Value::Ipv4Prefix(Ipv4Addr::new(10, 128, 0, 0), 9),
                    ),
                    m(Expr::ThSport, CmpOp::Ne, Value::Port(22)),
                    Stmt::Verdict(Verdict::Drop),
                ]),
            ],
        ),
        (
            Chain::regular("services"),
            vec![
                Rule::new(vec![Stmt::Vmap {
                    keys: tuple.clone(),
                    map: "service-ips".into(),
                }]),
                Rule::new(vec![
                    m(
                        Expr::FibDaddrType,
                        CmpOp::Eq,
                        Value::AddrType(AddrType::Local),
                    ),
                    Stmt::Vmap {
                        keys: vec![Expr::MetaIifname],
                        map: "nodeport-ifaces".into(),
                    },
                ]),
                Rule::new(vec![
                    m(
                        Expr::IpDaddr,
                        CmpOp::Eq,
                        Value::Ipv4(Ipv4Addr::new(10, 96, 255, 1)),
                    ),
                    m(Expr::MetaL4Proto, CmpOp::Eq, Value::TCP),
                    m(Expr::ThDport, CmpOp::Eq, Value::Port(80)),
                    Stmt::Dnat {
                        addr: Ipv4Addr::new(10, 244, 255, 5).into(),
                        port: Some(8080),
                    },
                ]),
                Rule::new(vec![
                    m(Expr::MetaMark, CmpOp::Eq, Value::Mark(0x10)),
                    Stmt::Verdict(Verdict::Goto("mark-for-masquerade".into())),
                ]),
            ],
        ),
        (
            Chain::regular("mark-for-masquerade"),
            vec![Rule::new(vec![Stmt::MarkSetOr(MASQ_MARK)])],
        ),
        (
            Chain::regular("affinity-check"),
            vec![Rule::new(vec![
                Stmt::InSet {
                    keys: vec![Expr::IpSaddr, Expr::IpDaddr],
                    set: "local-cidrs-pairs".into(),
                    negate: true,
                },
                Stmt::SetUpdate {
                    set: "affinity".into(),
                    keys: vec![Expr::IpSaddr, Expr::IpDaddr],
                    timeout: Some(Duration::from_secs(60)),
                },
                Stmt::Verdict(Verdict::Return),
            ])],
        ),
    ];
    // An interval set with concatenated keys (the kernel's pipapo set type).
    let mut pairs = Set::new("local-cidrs-pairs", vec![Type::Ipv4Addr, Type::Ipv4Addr]);
    pairs.flags.interval = true;
    t.sets.push((
        pairs,
        vec![Element::key(vec![
            Value::Ipv4Prefix(Ipv4Addr::new(10, 244, 0, 0), 16),
            Value::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
        ])],
    ));
    t
}

/// Adds `services` services with `endpoints` endpoints each (≤ [`SLOTS`]): a chain
/// `svc-N`, its `service-ips` element, its endpoints map (declared when missing) and its
/// elements there.
pub fn add_services(t: &mut Table, services: u32, endpoints: u32) {
    let mut vmap = Vec::with_capacity(services as usize);
    for n in 0..services {
        let chain = format!("svc-{n}");
        let map = endpoints_map(n);
        t.chains.push((
            Chain::regular(chain.clone()),
            vec![Rule::new(vec![
                Stmt::Match {
                    expr: Expr::MetaL4Proto,
                    op: CmpOp::Eq,
                    value: Value::TCP,
                },
                Stmt::DnatMap {
                    keys: vec![Expr::Numgen {
                        modulus: endpoints,
                        offset: n * SLOTS,
                    }],
                    map: map.clone(),
                    ipv6: false,
                },
            ])],
        ));
        vmap.push(Element::verdict(
            vec![Value::Ipv4(vip(n)), Value::TCP, Value::Port(80)],
            Verdict::Goto(chain),
        ));
        if t.sets.last().is_none_or(|(s, _)| s.name != map) {
            t.sets.push((endpoints_map_decl(&map), Vec::new()));
        }
        let elems = &mut t.sets.last_mut().expect("just pushed").1;
        for k in 0..endpoints {
            elems.push(Element::values(
                vec![Value::Integer(n * SLOTS + k)],
                vec![Value::Ipv4(endpoint(n, k)), Value::Port(8080)],
            ));
        }
    }
    if let Some((_, elems)) = t.sets.iter_mut().find(|(s, _)| s.name == "service-ips") {
        elems.extend(vmap);
    }
}

/// The example table with `services` services of `endpoints` endpoints.
pub fn services_table(name: &str, services: u32, endpoints: u32) -> Table {
    let mut t = base_table(name);
    add_services(&mut t, services, endpoints);
    t
}
