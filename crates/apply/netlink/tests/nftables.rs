//! Apply-layer tests of `podnet_netlink::nftables` in fresh network namespaces (prefix
//! `pnt<pid>-`, removed on drop, also when a test panics). Needs root and the `nft` tool
//! (used only to look at the result, never to write).

use podnet_netlink::netns;
use podnet_netlink::nftables::{NftError, Nftables};
use podnet_nft::example::{self, SLOTS};
use podnet_nft::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Named namespaces removed on drop.
struct Namespaces {
    prefix: String,
    made: Vec<String>,
}

impl Namespaces {
    fn new(tag: &str) -> Namespaces {
        Namespaces {
            prefix: format!("pnt{}-{tag}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        let _ = netns::delete_named(&full);
        netns::create_named(&full).expect("create namespace");
        self.made.push(full.clone());
        full
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.made {
            let _ = netns::delete_named(n);
        }
    }
}

fn nft_in(ns: &str) -> Nftables {
    let fd = netns::open(netns::named_path(ns)).expect("open namespace");
    Nftables::open_in(&fd).expect("open nftables socket")
}

/// `ip netns exec NS nft ARGS…` → (success, stdout, stderr).
fn nft_tool(ns: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft"]).args(args);
    cmd.stdin(std::process::Stdio::piped());
    cmd.stdout(std::process::Stdio::piped());
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run nft (is nftables installed?)");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write nft script");
        }
    }
    let out = child.wait_with_output().expect("wait for nft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn list_table(ns: &str, family: &str, table: &str) -> String {
    let (ok, out, err) = nft_tool(ns, &["list", "table", family, table], None);
    assert!(ok, "nft list table {family} {table} in {ns}: {err}");
    out
}

fn ip(ns: &str, args: &str) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (1) Encoding == rendering: the same transaction applied through netlink in one
/// namespace and as rendered text through `nft -f` in another lists identically.
#[test]
fn encoded_and_rendered_transactions_list_identically() {
    let mut nss = Namespaces::new("same");
    let (a, b) = (nss.ns("netlink"), nss.ns("text"));
    let table = example::services_table("podnet-svc", 5, 3);
    let tx = Transaction::replace_table(&table);

    nft_in(&a).apply(&tx).expect("apply through netlink");
    let text = render_transaction(&tx);
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&text));
    assert!(ok, "nft -f of the rendered text failed: {err}\n{text}");

    let via_netlink = list_table(&a, "ip", "podnet-svc");
    let via_text = list_table(&b, "ip", "podnet-svc");
    assert_eq!(
        via_netlink, via_text,
        "listing after netlink (left) differs from listing after nft -f (right)"
    );
    // The table-block rendering (dump form) means the same too.
    let c = nss.ns("block");
    let block = render_table(&table);
    let (ok, _, err) = nft_tool(&c, &["-f", "-"], Some(&block));
    assert!(ok, "nft -f of the rendered table failed: {err}\n{block}");
    assert_eq!(via_netlink, list_table(&c, "ip", "podnet-svc"));
    // The listing has what we put in (guards against both paths failing the same way).
    for needle in [
        "map service-ips",
        "typeof numgen random mod 1 : ip daddr . th dport",
        "goto svc-4",
        "dnat ip to numgen random mod 3 offset 32 map @endpoints-0",
        "meta mark set meta mark | 0x00004000",
        "masquerade fully-random",
        "reject with tcp reset",
        "notrack",
        "update @affinity { ip saddr . ip daddr timeout 1m }",
        "comment \"services without endpoints\"",
        "10.244.0.0/16 . 10.96.0.1",
        "ct state established,related accept",
        "fib daddr type local iifname vmap @nodeport-ifaces",
    ] {
        assert!(
            via_netlink.contains(needle),
            "missing {needle:?} in\n{via_netlink}"
        );
    }
}

/// (1b) The same for an inet table with IPv6 expressions, prefixes and dnat.
#[test]
fn inet_table_with_ipv6_lists_identically() {
    let mut nss = Namespaces::new("inet");
    let (a, b) = (nss.ns("netlink"), nss.ns("text"));
    let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
    let mut t = Table::new(Family::Inet, "podnet-v6");
    let mut cidrs = Set::new("cidrs6", vec![Type::Ipv6Addr]);
    cidrs.flags.interval = true;
    let eps6 = Set {
        key: KeyDecl::Typeof(vec![Expr::Numgen {
            modulus: 1,
            offset: 0,
        }]),
        data: Some(SetData::Typeof(vec![Expr::Ip6Daddr, Expr::ThDport])),
        ..Set::new("endpoints6", vec![])
    };
    let svc6 = Set::map(
        "service-ips6",
        vec![Type::Ipv6Addr, Type::InetProto, Type::InetService],
        SetData::Verdict,
    );
    let marks = Set::map(
        "marks",
        vec![Type::Mark],
        SetData::Types(vec![Type::Ipv6Addr, Type::InetService]),
    );
    t.sets = vec![
        (
            cidrs,
            vec![
                Element::key(vec![Value::Ipv6Prefix(v6("fd00:10:244::"), 48)]),
                Element::key(vec![Value::Ipv6Prefix(v6("2001:db8::1"), 128)]),
            ],
        ),
        (
            eps6,
            vec![Element::values(
                vec![Value::Integer(3)],
                vec![Value::Ipv6(v6("fd00:10:244::5")), Value::Port(8080)],
            )],
        ),
        (
            svc6,
            vec![Element::verdict(
                vec![
                    Value::Ipv6(v6("fd00:10:96::1")),
                    Value::UDP,
                    Value::Port(53),
                ],
                Verdict::Jump("svc6".into()),
            )],
        ),
        (
            marks,
            vec![Element::values(
                vec![Value::Mark(7)],
                vec![Value::Ipv6(v6("fd00::7")), Value::Port(7)],
            )],
        ),
    ];
    let nat = BaseChain {
        kind: ChainKind::Nat,
        hook: Hook::Prerouting,
        priority: -100,
        policy: Policy::Accept,
        device: None,
    };
    let filter = BaseChain {
        kind: ChainKind::Filter,
        hook: Hook::Forward,
        priority: 0,
        policy: Policy::Drop,
        device: None,
    };
    let m = |expr, op, value| Stmt::Match { expr, op, value };
    t.chains = vec![
        (
            Chain::base("pre", nat),
            vec![
                Rule::new(vec![Stmt::Vmap {
                    keys: vec![Expr::Ip6Daddr, Expr::MetaL4Proto, Expr::ThDport],
                    map: "service-ips6".into(),
                }]),
                Rule::new(vec![
                    m(Expr::Ip6Daddr, CmpOp::Eq, Value::Ipv6(v6("fd00:10:96::2"))),
                    m(Expr::MetaL4Proto, CmpOp::Eq, Value::TCP),
                    Stmt::Dnat {
                        addr: v6("fd00:10:244::9").into(),
                        port: Some(443),
                    },
                ]),
            ],
        ),
        (
            Chain::regular("svc6"),
            vec![Rule::new(vec![
                m(Expr::MetaL4Proto, CmpOp::Eq, Value::UDP),
                Stmt::DnatMap {
                    keys: vec![Expr::Numgen {
                        modulus: 1,
                        offset: 3,
                    }],
                    map: "endpoints6".into(),
                    ipv6: true,
                },
            ])],
        ),
        (
            Chain::base("filter-forward", filter),
            vec![
                Rule::new(vec![
                    m(
                        Expr::Ip6Saddr,
                        CmpOp::Eq,
                        Value::Ipv6Prefix(v6("fd00:10:244::"), 48),
                    ),
                    m(
                        Expr::Ip6Daddr,
                        CmpOp::Ne,
                        Value::Ipv6Prefix(v6("fd00:10:96::"), 52),
                    ),
                    Stmt::Verdict(Verdict::Accept),
                ]),
                Rule::new(vec![
                    Stmt::InSet {
                        keys: vec![Expr::Ip6Saddr],
                        set: "cidrs6".into(),
                        negate: false,
                    },
                    Stmt::Reject(Reject::IcmpxPortUnreachable),
                ]),
            ],
        ),
    ];
    let tx = Transaction::replace_table(&t);
    nft_in(&a).apply(&tx).expect("apply through netlink");
    let text = render_transaction(&tx);
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&text));
    assert!(ok, "nft -f of the rendered text failed: {err}\n{text}");
    let via_netlink = list_table(&a, "inet", "podnet-v6");
    assert_eq!(via_netlink, list_table(&b, "inet", "podnet-v6"));
    for needle in [
        "fd00:10:244::/48",
        "dnat ip6 to [fd00:10:244::9]:443",
        "ip6 saddr @cidrs6 reject",
        "ip6 saddr fd00:10:244::/48 ip6 daddr != fd00:10:96::/52 accept",
        "0x00000007 : fd00::7 . 7",
        "ip6 daddr != fd00:10:96::/52",
    ] {
        assert!(
            via_netlink.contains(needle),
            "missing {needle:?} in\n{via_netlink}"
        );
    }
}

/// (1c) The same for a netdev table: a chain on one device's ingress hook (VXLAN mode's
/// `podnet-tunnel`), whose IPv4 and IPv6 matches need the EtherType dependency nft adds
/// (`meta protocol ip`/`ip6`, elided again in listings).
#[test]
fn netdev_ingress_table_lists_identically() {
    let mut nss = Namespaces::new("netdev");
    let (a, b) = (nss.ns("netlink"), nss.ns("text"));
    for ns in [&a, &b] {
        ip(ns, "link add under0 type veth peer name under1");
    }
    let mut t = Table::new(Family::Netdev, "podnet-tunnel");
    t.sets = vec![(
        Set::new("node-ips", vec![Type::Ipv4Addr]),
        ["192.168.50.11", "192.168.50.12"]
            .iter()
            .map(|s| Element::key(vec![Value::Ipv4(s.parse().unwrap())]))
            .collect(),
    )];
    let in_nodes = |key| Stmt::InSet {
        keys: vec![key],
        set: "node-ips".into(),
        negate: false,
    };
    let m = |expr, op, value| Stmt::Match { expr, op, value };
    t.chains = vec![(
        Chain::base(
            "underlay-ingress",
            BaseChain {
                kind: ChainKind::Filter,
                hook: Hook::Ingress,
                priority: -300,
                policy: Policy::Accept,
                device: Some("under0".into()),
            },
        ),
        vec![
            Rule::new(vec![
                m(Expr::MetaL4Proto, CmpOp::Eq, Value::UDP),
                m(Expr::ThDport, CmpOp::Eq, Value::Port(4789)),
                in_nodes(Expr::IpSaddr),
                in_nodes(Expr::IpDaddr),
                Stmt::NoTrack,
            ]),
            Rule::new(vec![
                m(
                    Expr::Ip6Daddr,
                    CmpOp::Eq,
                    Value::Ipv6("fd00::1".parse().unwrap()),
                ),
                Stmt::Counter,
            ]),
        ],
    )];
    let tx = Transaction::replace_table(&t);
    nft_in(&a).apply(&tx).expect("apply through netlink");
    let text = render_transaction(&tx);
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&text));
    assert!(ok, "nft -f of the rendered text failed: {err}\n{text}");
    let via_netlink = list_table(&a, "netdev", "podnet-tunnel");
    assert_eq!(via_netlink, list_table(&b, "netdev", "podnet-tunnel"));
    // Listings elide the dependencies; the kernel's expressions show them (the rules'
    // part: a hash set dumps its elements in no fixed order).
    let exprs = |ns: &str| {
        let (ok, out, err) = nft_tool(
            ns,
            &[
                "--debug=netlink",
                "list",
                "table",
                "netdev",
                "podnet-tunnel",
            ],
            None,
        );
        assert!(ok, "{err}");
        out.lines()
            .filter(|l| !l.starts_with("\telement "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let via_netlink_exprs = exprs(&a);
    assert_eq!(via_netlink_exprs, exprs(&b));
    for needle in [
        "type filter hook ingress device \"under0\" priority -300; policy accept;",
        "udp dport 4789 ip saddr @node-ips ip daddr @node-ips notrack",
        "ip6 daddr fd00::1 counter",
    ] {
        assert!(
            via_netlink.contains(needle),
            "missing {needle:?} in\n{via_netlink}"
        );
    }
    for needle in [
        "[ meta load protocol => reg 1 ]\n  [ cmp eq reg 1 0x00000008 ]",
        "[ meta load protocol => reg 1 ]\n  [ cmp eq reg 1 0x0000dd86 ]",
    ] {
        assert!(
            via_netlink_exprs.contains(needle),
            "missing {needle:?} in\n{via_netlink_exprs}"
        );
    }
    // Removing it leaves nothing, and removing what is not there is no error.
    for _ in 0..2 {
        nft_in(&a)
            .apply(&Transaction::remove_table(Family::Netdev, "podnet-tunnel"))
            .expect("remove the table");
        let (_, out, _) = nft_tool(&a, &["list", "tables"], None);
        assert!(!out.contains("podnet-tunnel"), "{out}");
    }
}

/// The ifindex of `dev` in namespace `ns`.
fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", dev])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip -n {ns} link show dev {dev}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
}

/// (1d) A netdev fast path: `ip ttl > 1` and `fwd ip to … device …`, to a fixed next hop
/// and through a next-hop map. nft resolves the device names to ifindexes when it parses
/// the text; podnet takes them from the IR ([`Device::index`], resolved here in the
/// namespace the table goes to). Also a `typeof ip ttl` set, whose user data names the
/// field.
#[test]
fn netdev_fwd_table_lists_identically() {
    let mut nss = Namespaces::new("fwd");
    let (a, b) = (nss.ns("netlink"), nss.ns("text"));
    for ns in [&a, &b] {
        ip(ns, "link add eth0 type veth peer name eth1");
        ip(ns, "link add br0 type bridge");
    }
    let device = |name: &str| Device {
        name: name.into(),
        index: ifindex(&a, name),
    };
    // Same creation order, same indexes: the two paths' expressions can be compared.
    for dev in ["eth0", "br0"] {
        assert_eq!(ifindex(&a, dev), ifindex(&b, dev), "{dev}");
    }
    let net = |s: &str| Value::Ipv4Prefix(s.parse().unwrap(), 24);
    let addr = |s: &str| Value::Ipv4(s.parse().unwrap());
    let m = |expr, op, value| Stmt::Match { expr, op, value };
    let slow = |key| Stmt::InSet {
        keys: vec![key],
        set: "slow".into(),
        negate: true,
    };
    let mut next_hops = Set::map(
        "next-hops",
        vec![Type::Ipv4Addr],
        SetData::Types(vec![Type::Ipv4Addr]),
    );
    next_hops.flags.interval = true;
    let ttls = Set {
        key: KeyDecl::Typeof(vec![Expr::IpTtl]),
        ..Set::new("ttls", vec![])
    };
    let mut t = Table::new(Family::Netdev, "T");
    t.sets = vec![
        (
            next_hops,
            vec![Element::values(
                vec![net("10.244.2.0")],
                vec![addr("192.168.50.12")],
            )],
        ),
        (Set::new("slow", vec![Type::Ipv4Addr]), vec![]),
        (
            ttls,
            vec![
                Element::key(vec![Value::Byte(1)]),
                Element::key(vec![Value::Byte(255)]),
            ],
        ),
    ];
    t.chains = vec![
        (
            Chain::regular("to-peers"),
            vec![Rule::new(vec![
                m(Expr::IpSaddr, CmpOp::Eq, net("10.244.1.0")),
                m(Expr::IpTtl, CmpOp::Gt, Value::Byte(1)),
                slow(Expr::IpSaddr),
                slow(Expr::IpDaddr),
                Stmt::Fwd {
                    to: FwdTo::Map {
                        keys: vec![Expr::IpDaddr],
                        map: "next-hops".into(),
                    },
                    device: device("eth0"),
                },
            ])],
        ),
        (
            Chain::base(
                "from-peers",
                BaseChain {
                    kind: ChainKind::Filter,
                    hook: Hook::Ingress,
                    priority: -300,
                    policy: Policy::Accept,
                    device: Some("eth0".into()),
                },
            ),
            vec![Rule::new(vec![
                m(Expr::IpDaddr, CmpOp::Eq, net("10.244.1.0")),
                m(Expr::IpDaddr, CmpOp::Ne, addr("10.244.1.1")),
                m(Expr::IpTtl, CmpOp::Gt, Value::Byte(1)),
                Stmt::Fwd {
                    to: FwdTo::Key(Expr::IpDaddr),
                    device: device("br0"),
                },
            ])],
        ),
    ];
    let tx = Transaction::replace_table(&t);
    nft_in(&a).apply(&tx).expect("apply through netlink");
    let text = render_transaction(&tx);
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&text));
    assert!(ok, "nft -f of the rendered text failed: {err}\n{text}");
    let via_netlink = list_table(&a, "netdev", "T");
    assert_eq!(
        via_netlink,
        list_table(&b, "netdev", "T"),
        "listing after netlink (left) differs from listing after nft -f (right)"
    );
    // The table-block rendering means the same too.
    let c = nss.ns("block");
    ip(&c, "link add eth0 type veth peer name eth1");
    ip(&c, "link add br0 type bridge");
    let block = render_table(&t);
    let (ok, _, err) = nft_tool(&c, &["-f", "-"], Some(&block));
    assert!(ok, "nft -f of the rendered table failed: {err}\n{block}");
    assert_eq!(via_netlink, list_table(&c, "netdev", "T"));
    for needle in [
        "typeof ip ttl",
        "elements = { 10.244.2.0/24 : 192.168.50.12 }",
        "ip saddr 10.244.1.0/24 ip ttl > 1 ip saddr != @slow ip daddr != @slow \
         fwd ip to ip daddr map @next-hops device \"eth0\"",
        "type filter hook ingress device \"eth0\" priority -300; policy accept;",
        "ip daddr 10.244.1.0/24 ip daddr != 10.244.1.1 ip ttl > 1 \
         fwd ip to ip daddr device \"br0\"",
    ] {
        assert!(
            via_netlink.contains(needle),
            "missing {needle:?} in\n{via_netlink}"
        );
    }
    // The kernel's expressions, rules only (elements: nft adds an interval end at 0.0.0.0
    // that podnet leaves out; hash sets dump in no fixed order).
    let exprs = |ns: &str| {
        let (ok, out, err) = nft_tool(
            ns,
            &["--debug=netlink", "list", "table", "netdev", "T"],
            None,
        );
        assert!(ok, "{err}");
        let start = out
            .find("netdev T to-peers")
            .expect("rules in the debug listing");
        let end = out
            .find("table netdev T {")
            .expect("the listing after the rules");
        out[start..end].to_string()
    };
    let via_netlink_exprs = exprs(&a);
    assert_eq!(via_netlink_exprs, exprs(&b));
    for needle in [
        "[ payload load 1b @ network header + 8 => reg 1 ]\n  [ cmp gt reg 1 0x00000001 ]"
            .to_string(),
        format!("[ immediate reg 1 0x{:08x} ]", ifindex(&a, "br0")),
        "[ lookup reg 2 set next-hops dreg 2 0x0 ]\n  [ fwd sreg_dev 1 sreg_addr 2 nfproto 2 ]"
            .to_string(),
    ] {
        assert!(
            via_netlink_exprs.contains(&needle),
            "missing {needle:?} in\n{via_netlink_exprs}"
        );
    }
}

/// (6, small) Loading is linear in the number of services: 10k services with 5
/// endpoints each load in one batch well under the quadratic regime (a single shared
/// endpoints map took 95 s for this; see podnet-nft's `example` docs), and one
/// endpoint change afterwards is a few milliseconds. Full figures: `benches/nft_scale.rs`.
#[test]
fn ten_thousand_services_load_fast() {
    let mut nss = Namespaces::new("scale");
    let a = nss.ns("a");
    let mut nft = nft_in(&a);
    let tx = Transaction::replace_table(&example::services_table("podnet-svc", 10_000, 5));
    let started = Instant::now();
    nft.apply(&tx).expect("load 10k services");
    let load = started.elapsed();
    assert!(load < Duration::from_secs(8), "full load took {load:?}");

    let map = example::endpoints_map(9_999);
    let slot = 9_999 * SLOTS + 2;
    let mut change = Transaction::new(Family::Ip, "podnet-svc");
    change.push(Op::DeleteElements {
        set: map.clone(),
        elems: vec![Element::key(vec![Value::Integer(slot)])],
    });
    change.push(Op::AddElements {
        set: map.clone(),
        elems: vec![Element::values(
            vec![Value::Integer(slot)],
            vec![Value::Ipv4(Ipv4Addr::new(10, 245, 1, 2)), Value::Port(9090)],
        )],
    });
    let started = Instant::now();
    nft.apply(&change).expect("endpoint change");
    let one = started.elapsed();
    assert!(one < Duration::from_millis(500), "one change took {one:?}");
    let (ok, out, err) = nft_tool(&a, &["list", "map", "ip", "podnet-svc", &map], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{slot} : 10.245.1.2 . 9090")),
        "{out}"
    );
    eprintln!("10k services: full load {load:?}, one endpoint change {one:?}");
}

/// (2) An error in the middle changes nothing and names the failing op.
#[test]
fn failing_op_changes_nothing_and_is_named() {
    let mut nss = Namespaces::new("err");
    let a = nss.ns("a");
    let mut nft = nft_in(&a);
    let table = example::services_table("podnet-svc", 3, 2);
    nft.apply(&Transaction::replace_table(&table))
        .expect("initial load");
    let before = list_table(&a, "ip", "podnet-svc");

    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::AddElements {
        set: "service-ips".into(),
        elems: vec![Element::verdict(
            vec![
                Value::Ipv4(Ipv4Addr::new(10, 96, 1, 1)),
                Value::TCP,
                Value::Port(443),
            ],
            Verdict::Goto("svc-0".into()),
        )],
    });
    tx.push(Op::AddChain(Chain::regular("svc-new")));
    tx.push(Op::AddRule {
        chain: "svc-new".into(),
        rule: Rule::new(vec![Stmt::Verdict(Verdict::Jump("no-such-chain".into()))]),
    });
    tx.push(Op::FlushChain("services".into()));
    let err = nft
        .apply(&tx)
        .expect_err("jump to a missing chain must fail");
    assert_eq!(err.op_index(), Some(2), "{err}");
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("add rule ip podnet-svc svc-new jump no-such-chain"),
        "{text}"
    );
    assert_eq!(list_table(&a, "ip", "podnet-svc"), before, "state changed");

    // A refused element (delete of a missing one) in a later op is named too.
    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::FlushChain("svc-0".into()));
    tx.push(Op::DeleteElements {
        set: "service-ips".into(),
        elems: vec![Element::key(vec![
            Value::Ipv4(Ipv4Addr::new(10, 96, 9, 9)),
            Value::TCP,
            Value::Port(1),
        ])],
    });
    let err = nft
        .apply(&tx)
        .expect_err("deleting a missing element must fail");
    assert!(
        matches!(err, NftError::Op { index: 1, .. }) && err.errno() == Some(libc::ENOENT),
        "{err}"
    );
    assert_eq!(list_table(&a, "ip", "podnet-svc"), before, "state changed");

    // A refused big element operation is named briefly.
    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::AddElements {
        set: "no-such-set".into(),
        elems: (0..10_000u32)
            .map(|i| Element::key(vec![Value::Ipv4(Ipv4Addr::from(i))]))
            .collect(),
    });
    let err = nft.apply(&tx).expect_err("elements of a missing set");
    assert_eq!(
        (err.op_index(), err.errno()),
        (Some(0), Some(libc::ENOENT)),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("(and 9997 more elements)") && text.len() < 400,
        "{text}"
    );

    // The same transaction sent in parts: refused as a whole, the op named the same way.
    let parts = tx.ops.clone().into_iter().map(|op| vec![op]);
    let err = nft
        .apply_parts(Family::Ip, "podnet-svc", parts)
        .expect_err("elements of a missing set, in parts");
    assert_eq!(
        (err.op_index(), err.errno()),
        (Some(0), Some(libc::ENOENT)),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("(and 9997 more elements)") && text.len() < 400,
        "{text}"
    );
    assert_eq!(list_table(&a, "ip", "podnet-svc"), before, "state changed");

    // Invalid IR is refused before anything is sent.
    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::AddChain(Chain::regular("bad name")));
    assert!(matches!(nft.apply(&tx), Err(NftError::Invalid(_))));
}

fn count_elements(ns: &str, set: &str) -> usize {
    let (ok, out, err) = nft_tool(ns, &["-j", "list", "set", "ip", "podnet-svc", set], None);
    assert!(ok, "{err}");
    // Elements of this map are `"elem"`-free JSON arrays of concat keys; count "concat".
    out.matches("\"concat\"").count()
}

/// (3) Incremental updates: add 1000 elements, delete 500 of them.
#[test]
fn incremental_element_updates() {
    let mut nss = Namespaces::new("inc");
    let a = nss.ns("a");
    let mut nft = nft_in(&a);
    let mut t = Table::new(Family::Ip, "podnet-svc");
    t.sets.push((
        Set::new("seen", vec![Type::Ipv4Addr, Type::InetService]),
        vec![],
    ));
    nft.apply(&Transaction::replace_table(&t)).expect("create");
    let elems: Vec<Element> = (0..1000u32)
        .map(|i| {
            Element::key(vec![
                Value::Ipv4(Ipv4Addr::from(0x0a00_0000 + i)),
                Value::Port(1000 + i as u16),
            ])
        })
        .collect();
    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::AddElements {
        set: "seen".into(),
        elems: elems.clone(),
    });
    nft.apply(&tx).expect("add 1000");
    assert_eq!(count_elements(&a, "seen"), 1000);

    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::DeleteElements {
        set: "seen".into(),
        elems: elems.iter().step_by(2).cloned().collect(),
    });
    nft.apply(&tx).expect("delete 500");
    assert_eq!(count_elements(&a, "seen"), 500);
    let listing = list_table(&a, "ip", "podnet-svc");
    assert!(listing.contains("10.0.0.1 . 1001"), "{listing}");
    assert!(!listing.contains("10.0.0.2 . 1002"), "{listing}");
}

/// (4) The atomic replace works whether or not the table exists.
#[test]
fn replace_table_whether_or_not_it_exists() {
    let mut nss = Namespaces::new("repl");
    let a = nss.ns("a");
    let mut nft = nft_in(&a);
    let first = example::services_table("podnet-svc", 2, 2);
    nft.apply(&Transaction::replace_table(&first))
        .expect("replace when missing");
    let listing = list_table(&a, "ip", "podnet-svc");
    assert!(listing.contains("chain svc-1"), "{listing}");

    let second = example::services_table("podnet-svc", 1, 1);
    nft.apply(&Transaction::replace_table(&second))
        .expect("replace when present");
    let listing = list_table(&a, "ip", "podnet-svc");
    assert!(listing.contains("chain svc-0"), "{listing}");
    assert!(
        !listing.contains("chain svc-1"),
        "old content left: {listing}"
    );

    // The same replace sent in parts (one op each) lists the same.
    nft.apply(&Transaction::replace_table(&first))
        .expect("back to the first");
    let whole = list_table(&a, "ip", "podnet-svc");
    nft.apply(&Transaction::replace_table(&second))
        .expect("the second again");
    let tx = Transaction::replace_table(&first);
    let sent = nft
        .apply_parts(
            tx.family,
            &tx.table,
            tx.ops.iter().map(|op| vec![op.clone()]),
        )
        .expect("replace in parts");
    assert_eq!(sent, tx.ops.len());
    assert_eq!(list_table(&a, "ip", "podnet-svc"), whole);
}

/// (5) Real packets: a TCP connection to a VIP:port reaches a listener through the
/// `service-ips` verdict map, the service chain and the `endpoints` dnat map.
#[test]
fn dnat_map_reaches_real_listeners() {
    let mut nss = Namespaces::new("pkt");
    let client = nss.ns("client");
    let server = nss.ns("server");
    let server_fd = netns::open(netns::named_path(&server)).expect("open server namespace");
    ip(&client, "link set lo up");
    ip(&server, "link set lo up");
    let client_fd = netns::open(netns::named_path(&client)).expect("open client namespace");
    ip(
        &client,
        &format!("link add veth-c type veth peer name veth-s netns {server}"),
    );
    ip(&client, "addr add 10.200.0.1/24 dev veth-c");
    ip(&client, "link set veth-c up");
    ip(&client, "route add default via 10.200.0.2");
    ip(&server, "addr add 10.200.0.2/24 dev veth-s");
    ip(&server, "link set veth-s up");

    // Two endpoints on the server, two listening ports.
    let listeners: Vec<TcpListener> = netns::run_in(&server_fd, || {
        [8080u16, 8081]
            .iter()
            .map(|p| TcpListener::bind(("10.200.0.2", *p)).expect("bind listener"))
            .collect()
    })
    .expect("enter server namespace");
    let mut servers = Vec::new();
    for l in listeners {
        let port = l.local_addr().unwrap().port();
        servers.push(std::thread::spawn(move || {
            let mut served = 0;
            l.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                match l.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let mut buf = [0u8; 4];
                        s.read_exact(&mut buf).unwrap();
                        s.write_all(format!("port {port}").as_bytes()).unwrap();
                        served += 1;
                        if &buf == b"stop" {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            served
        }));
    }

    // The services table in the client namespace: VIP 10.96.0.10:80 → svc-7 → 2 endpoints.
    let mut t = example::base_table("podnet-svc");
    t.sets
        .push((example::endpoints_map_decl("endpoints-0"), Vec::new()));
    t.chains.push((
        Chain::regular("svc-7"),
        vec![Rule::new(vec![
            Stmt::Match {
                expr: Expr::MetaL4Proto,
                op: CmpOp::Eq,
                value: Value::TCP,
            },
            Stmt::DnatMap {
                keys: vec![Expr::Numgen {
                    modulus: 2,
                    offset: 7 * SLOTS,
                }],
                map: "endpoints-0".into(),
                ipv6: false,
            },
        ])],
    ));
    for (set, elems) in &mut t.sets {
        match set.name.as_str() {
            "service-ips" => elems.push(Element::verdict(
                vec![
                    Value::Ipv4(Ipv4Addr::new(10, 96, 0, 10)),
                    Value::TCP,
                    Value::Port(80),
                ],
                Verdict::Goto("svc-7".into()),
            )),
            "endpoints-0" => {
                for (k, port) in [8080u16, 8081].into_iter().enumerate() {
                    elems.push(Element::values(
                        vec![Value::Integer(7 * SLOTS + k as u32)],
                        vec![Value::Ipv4(Ipv4Addr::new(10, 200, 0, 2)), Value::Port(port)],
                    ));
                }
            }
            _ => {}
        }
    }
    nft_in(&client)
        .apply(&Transaction::replace_table(&t))
        .expect("apply services table");

    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut seen = std::collections::BTreeMap::new();
    netns::run_in(&client_fd, || {
        for i in 0..40 {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect {i} to the VIP: {e}"));
            s.write_all(b"ping").unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            *seen.entry(reply).or_insert(0) += 1;
        }
        // Stop both servers: connect until each has seen "stop".
        for _ in 0..200 {
            if servers.iter().all(|h| h.is_finished()) {
                break;
            }
            for port in [8080u16, 8081] {
                if let Ok(mut s) = TcpStream::connect_timeout(
                    &SocketAddr::from(([10, 200, 0, 2], port)),
                    Duration::from_secs(1),
                ) {
                    let _ = s.write_all(b"stop");
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
            }
        }
    })
    .expect("enter client namespace");
    let served: Vec<usize> = servers.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(seen.len(), 2, "both endpoints should be chosen: {seen:?}");
    assert_eq!(seen.values().sum::<i32>(), 40);
    assert!(served.iter().all(|n| *n >= 2), "{served:?}");
}

/// (1c) A typeof-keyed verdict map (the services table's `endpoint-chains-K`) sent through
/// netlink lists as nft itself would list it, and nft can read that listing back.
#[test]
fn typeof_verdict_map_lists_and_reads_back() {
    let mut nss = Namespaces::new("tvm");
    let (a, b) = (nss.ns("netlink"), nss.ns("reload"));
    let mut table = Table::new(Family::Ip, "podnet-tvm");
    table.sets.push((
        Set {
            key: KeyDecl::Typeof(vec![Expr::Numgen {
                modulus: 1,
                offset: 0,
            }]),
            data: Some(SetData::Verdict),
            ..Set::new("endpoint-chains-0", vec![])
        },
        vec![],
    ));
    nft_in(&a)
        .apply(&Transaction::replace_table(&table))
        .expect("apply through netlink");
    let listing = list_table(&a, "ip", "podnet-tvm");
    assert!(
        listing.contains("typeof numgen random mod 1 : verdict"),
        "{listing}"
    );
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&listing));
    assert!(ok, "nft cannot read the listing back: {err}\n{listing}");
    assert_eq!(list_table(&b, "ip", "podnet-tvm"), listing);
}

/// (1d) `diff_tables` against the kernel: walking a table through several shapes by
/// differences leaves exactly what loading the last shape whole leaves.
#[test]
fn table_differences_land_exactly_the_new_table() {
    let mut nss = Namespaces::new("diff");
    let (a, b) = (nss.ns("steps"), nss.ns("whole"));
    let mut nft = nft_in(&a);
    let shapes = [(5, 3), (8, 2), (3, 4), (3, 4), (6, 1)];
    let mut current: Option<Table> = None;
    for (services, endpoints) in shapes {
        let next = example::services_table("podnet-diff", services, endpoints);
        let tx = match &current {
            None => Transaction::replace_table(&next),
            Some(old) => diff_tables(old, &next),
        };
        if current.as_ref() == Some(&next) {
            assert!(tx.is_empty(), "no change must send nothing");
        }
        if !tx.is_empty() {
            nft.apply(&tx).unwrap_or_else(|e| {
                panic!("{services}x{endpoints}: {e}\n{}", render_transaction(&tx))
            });
        }
        current = Some(next);
    }
    nft_in(&b)
        .apply(&Transaction::replace_table(current.as_ref().unwrap()))
        .unwrap();
    let sorted = |s: String| {
        let mut l: Vec<String> = s.lines().map(String::from).collect();
        l.sort();
        l
    };
    assert_eq!(
        sorted(list_table(&a, "ip", "podnet-diff")),
        sorted(list_table(&b, "ip", "podnet-diff"))
    );
}

/// (1e) The NetworkPolicy table (interval verdict maps, port-range sets, admin-prohibited
/// rejects) lists the same through netlink as through `nft -f`, and policy changes land
/// by difference exactly as a whole load would.
#[test]
fn policy_table_lists_identically_and_changes_by_difference() {
    use serde_json::json;
    let mut nss = Namespaces::new("pol");
    let (a, b, c) = (nss.ns("netlink"), nss.ns("text"), nss.ns("whole"));
    let pods: Vec<k8s_openapi::api::core::v1::Pod> = (0..6)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("p{i}"), "namespace": if i < 3 { "x" } else { "y" },
                             "labels": {"pod": format!("p{}", i % 3)}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                    "ports": [{"name": "web", "containerPort": 8080 + i}]}]},
                "status": {"phase": "Running", "podIP": format!("10.244.1.{}", 10 + i)},
            }))
            .unwrap()
        })
        .collect();
    let cluster = podnet_policy::Cluster::new(&pods, &[]);
    let policy = |name: &str, spec: serde_json::Value| {
        serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(
            json!({"metadata": {"name": name, "namespace": "x"}, "spec": spec}),
        )
        .unwrap()
    };
    let first = [
        policy("deny", json!({"podSelector": {}})),
        policy(
            "web",
            json!({"podSelector": {"matchLabels": {"pod": "p0"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.12/31"]}},
                                  {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "p1"}}}],
                         "ports": [{"port": "web"}, {"port": 9000, "endPort": 9100, "protocol": "UDP"},
                                   {"protocol": "SCTP"}]}],
            "egress": [{"to": [{"podSelector": {}}]}]}),
        ),
    ];
    let table = |nps: &[k8s_openapi::api::networking::v1::NetworkPolicy]| {
        let (ps, problems) = podnet_policy::read_policies(nps);
        assert!(problems.is_empty(), "{problems:?}");
        podnet_policy::render(&podnet_policy::plan_pods(&ps, &cluster, Some("node-1")))
    };
    let t1 = table(&first);
    nft_in(&a)
        .apply(&Transaction::replace_table(&t1))
        .expect("apply through netlink");
    let text = render_table(&t1);
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&text));
    assert!(ok, "nft -f failed: {err}\n{text}");
    let listing = list_table(&a, "ip", "podnet-policy");
    assert_eq!(listing, list_table(&b, "ip", "podnet-policy"));
    for needle in [
        "ip daddr vmap @ingress-pods",
        "meta l4proto . th dport @ports-",
        "udp . 9000-9100",
        "sctp . 0-65535",
        "tcp . 8080",
        "reject with icmp admin-prohibited",
    ] {
        assert!(listing.contains(needle), "missing {needle:?} in\n{listing}");
    }
    // The except leaves a hole: 10.244.1.12-13 is in no peer map element.
    assert!(!listing.contains("10.244.1.12/31 :"), "{listing}");

    // A change: web drops its egress rule and a new policy admits y's pods on 81.
    let second = [
        policy("deny", json!({"podSelector": {}})),
        policy(
            "web",
            json!({"podSelector": {"matchLabels": {"pod": "p0"}},
            "ingress": [{"ports": [{"port": "web"}]}]}),
        ),
        policy(
            "from-y",
            json!({"podSelector": {"matchLabels": {"pod": "p2"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels":
                {"kubernetes.io/metadata.name": "y"}}}], "ports": [{"port": 81}]}]}),
        ),
    ];
    let t2 = table(&second);
    let tx = diff_tables(&t1, &t2);
    assert!(
        !matches!(tx.ops.first(), Some(Op::AddTable)),
        "a difference, not a replace"
    );
    nft_in(&a).apply(&tx).expect("apply the difference");
    nft_in(&c)
        .apply(&Transaction::replace_table(&t2))
        .expect("load whole");
    assert_eq!(
        list_table(&a, "ip", "podnet-policy"),
        list_table(&c, "ip", "podnet-policy")
    );
}

/// A listing as a sorted bag of its lines and element entries (the kernel's hash order of
/// elements differs between two loads of the same content).
fn normalized(listing: &str) -> Vec<String> {
    let mut parts: Vec<String> = listing
        .replace("elements = {", "elements = {\n")
        .split(['\n', ','])
        .map(|p| p.trim().trim_end_matches('}').trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    parts.sort();
    parts
}

/// (1f) podnet-services' own table (shared pickers keyed by frontend and `numgen`,
/// affinity chains): loaded through netlink it lists as `nft -f` of its rendering does,
/// and a series of syncs applied by difference (endpoint counts changing, pickers
/// appearing and going, a Local policy losing its local endpoint, Services removed and
/// added) leaves what loading the final table whole leaves.
#[test]
fn services_proxy_table_lists_identically_and_changes_by_difference() {
    use podnet_services::{Endpoint, PortName, Protocol, Proxy, ProxyConfig, ServicePort};
    let ep = |ip: &str, port: u16, local: bool| Endpoint {
        ip: ip.parse().unwrap(),
        port,
        local,
    };
    let port = |name: &str, protocol: Protocol, ip: &str, port: u16| ServicePort {
        name: PortName {
            namespace: "default".into(),
            service: name.into(),
            port: "".into(),
            protocol,
        },
        cluster_ip: ip.parse().unwrap(),
        port,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_seconds: None,
        external_local: false,
        internal_local: false,
        health_check_node_port: None,
        cluster_endpoints: vec![],
        local_endpoints: vec![],
        has_endpoints: false,
    };
    let mut web = port("web", Protocol::Tcp, "10.96.0.10", 80);
    web.cluster_endpoints = vec![ep("10.244.1.5", 8080, true), ep("10.244.2.5", 8080, false)];
    web.has_endpoints = true;
    web.node_port = Some(30080);
    web.external_ips = vec!["172.18.0.100".parse().unwrap()];
    let mut dns = port("dns", Protocol::Udp, "10.96.0.53", 53);
    dns.cluster_endpoints = vec![ep("10.244.2.9", 53, false)];
    dns.has_endpoints = true;
    let mut shop = port("shop", Protocol::Tcp, "10.96.0.11", 443);
    shop.cluster_endpoints = vec![ep("10.244.1.7", 8443, true), ep("10.244.3.7", 8443, false)];
    shop.local_endpoints = vec![ep("10.244.1.7", 8443, true)];
    shop.has_endpoints = true;
    shop.external_local = true;
    shop.node_port = Some(31443);
    shop.load_balancer_ips = vec!["172.18.0.150".parse().unwrap()];
    let mut sticky = port("sticky", Protocol::Sctp, "10.96.0.12", 80);
    sticky.cluster_endpoints = vec![ep("10.244.2.8", 80, false), ep("10.244.3.8", 80, false)];
    sticky.has_endpoints = true;
    sticky.affinity_seconds = Some(60);
    sticky.node_port = Some(30012);
    let empty = port("empty", Protocol::Tcp, "10.96.0.13", 9000);
    let vacant = port("vacant", Protocol::Udp, "10.96.0.14", 7000);

    let config = ProxyConfig {
        cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
        service_cidr: Some(("10.96.0.0".parse().unwrap(), 12)),
    };
    let mut nss = Namespaces::new("svcs");
    let (a, b) = (nss.ns("steps"), nss.ns("text"));
    let mut nft = nft_in(&a);
    let mut proxy = Proxy::new(config);
    let mut ports = vec![web, dns, shop, sticky, empty];
    let plan = proxy.sync(ports.clone());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    nft.apply(&plan.transaction)
        .expect("first sync through netlink");
    let block = render_table(&proxy.table());
    let (ok, _, err) = nft_tool(&b, &["-f", "-"], Some(&block));
    assert!(ok, "nft -f of the rendered table failed: {err}\n{block}");
    let listing = list_table(&a, "ip", "podnet-services");
    assert_eq!(
        normalized(&listing),
        normalized(&list_table(&b, "ip", "podnet-services")),
        "netlink listing:\n{listing}"
    );
    for needle in [
        "typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport",
        "typeof meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport",
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints-2",
        "10.96.0.10 . tcp . 80 . 1 : 10.244.2.5 . 8080",
        "tcp . 31443 : goto ext-nodeport-local-2-1",
        "numgen random mod 2 vmap @picks-svc-default/sticky/sctp",
    ] {
        assert!(listing.contains(needle), "missing {needle:?} in\n{listing}");
    }

    type Step<'a> = &'a dyn Fn(&mut Vec<ServicePort>);
    let steps: [Step; 6] = [
        // web grows to 3 endpoints: out of pick-2 (shop stays), ext-pick-2 goes.
        &|p| p[0].cluster_endpoints.push(ep("10.244.3.5", 8080, false)),
        // shop loses its local endpoint: Local traffic from outside is dropped.
        &|p| {
            p[2].local_endpoints.clear();
            p[2].cluster_endpoints.remove(0);
        },
        // dns goes (pick-1 with it), the affinity port changes an endpoint.
        &|p| {
            p.remove(1);
            p[2].cluster_endpoints[1] = ep("10.244.3.9", 80, false);
        },
        // empty gets endpoints; web back to 2.
        &|p| {
            p[3].cluster_endpoints = vec![ep("10.244.2.20", 9000, false)];
            p[3].has_endpoints = true;
            p[0].cluster_endpoints.pop();
        },
        // everything but the affinity port goes.
        &|p| p.retain(|p| p.affinity_seconds.is_some()),
        // a port without endpoints comes: the filter base chains come back.
        &|p| p.push(vacant.clone()),
    ];
    // The filter base chains exist exactly while some frontend has no endpoint.
    let hooks = [true, true, true, false, false, true];
    assert!(listing.contains("chain filter-prerouting"), "{listing}");
    for (i, step) in steps.iter().enumerate() {
        step(&mut ports);
        let plan = proxy.sync(ports.clone());
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        assert!(
            !plan.transaction.ops.contains(&Op::DeleteTable),
            "step {i} is a difference"
        );
        nft.apply(&plan.transaction)
            .unwrap_or_else(|e| panic!("step {i}: {e}\n{}", render_transaction(&plan.transaction)));
        let d = nss.ns(&format!("whole{i}"));
        nft_in(&d)
            .apply(&Transaction::replace_table(&proxy.table()))
            .unwrap();
        assert_eq!(
            normalized(&list_table(&a, "ip", "podnet-services")),
            normalized(&list_table(&d, "ip", "podnet-services")),
            "step {i}:\n{}",
            render_transaction(&plan.transaction)
        );
        let listing = list_table(&a, "ip", "podnet-services");
        for chain in ["chain filter-prerouting", "chain filter-output"] {
            assert_eq!(
                listing.contains(chain),
                hooks[i],
                "step {i}: {chain}\n{listing}"
            );
        }
    }
}
