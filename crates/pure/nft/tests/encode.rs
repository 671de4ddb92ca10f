//! Byte-level tests of the netlink encoding against nft 1.0.6 itself.
//!
//! `fixtures/nft-1.0.6-mnl.hex` is what `nft --debug=mnl -f fixtures/nft-1.0.6-mnl.nft`
//! sent (run inside a throwaway network namespace on kernel 6.18), one message a line:
//! the netlink type, then the message after its 16-byte header (nfgenmsg + attributes).
//! Sequence numbers and header flags are not compared (nft numbers and flags messages
//! its own way; the kernel does not care).

use podnet_nft::*;
use std::net::Ipv4Addr;
use std::time::Duration;

fn fixture_tx() -> Transaction {
    let mut tx = Transaction::new(Family::Ip, "t");
    let mut ci = Set::new("ci", vec![Type::Ipv4Addr, Type::InetService]);
    ci.flags.interval = true;
    let mut dyn_ = Set::new("dyn", vec![Type::Ipv4Addr]);
    dyn_.flags.timeout = true;
    dyn_.flags.dynamic = true;
    dyn_.timeout = Some(Duration::from_secs(10));
    dyn_.comment = Some("x".into());
    let ep = Set {
        key: KeyDecl::Typeof(vec![Expr::Numgen {
            modulus: 1,
            offset: 0,
        }]),
        data: Some(SetData::Typeof(vec![Expr::IpDaddr, Expr::ThDport])),
        ..Set::new("ep", vec![])
    };
    let nat = |hook, priority| BaseChain {
        kind: ChainKind::Nat,
        hook,
        priority,
        policy: Policy::Accept,
        device: None,
    };
    tx.push(Op::AddTable)
        .push(Op::AddSet(Set::map(
            "cd",
            vec![Type::Ipv4Addr],
            SetData::Types(vec![Type::Ipv4Addr, Type::InetService]),
        )))
        .push(Op::AddSet(ep))
        .push(Op::AddSet(ci))
        .push(Op::AddSet(dyn_))
        .push(Op::AddSet(Set::map(
            "vm",
            vec![Type::Ipv4Addr, Type::InetProto, Type::InetService],
            SetData::Verdict,
        )))
        .push(Op::AddChain(Chain::base(
            "post",
            nat(Hook::Postrouting, 100),
        )))
        .push(Op::AddChain(Chain::regular("svc")))
        .push(Op::AddChain(Chain::base(
            "pre",
            nat(Hook::Prerouting, -100),
        )))
        .push(Op::AddElements {
            set: "ci".into(),
            elems: vec![
                Element::key(vec![
                    Value::Ipv4Prefix(Ipv4Addr::new(10, 0, 0, 0), 8),
                    Value::Port(80),
                ]),
                Element::key(vec![
                    Value::Ipv4Prefix(Ipv4Addr::new(1, 2, 3, 4), 32),
                    Value::Port(53),
                ]),
            ],
        })
        .push(Op::AddElements {
            set: "ep".into(),
            elems: vec![Element::values(
                vec![Value::Integer(4096)],
                vec![Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), Value::Port(80)],
            )],
        })
        .push(Op::AddElements {
            set: "vm".into(),
            elems: vec![Element::verdict(
                vec![
                    Value::Ipv4(Ipv4Addr::new(10, 96, 0, 1)),
                    Value::TCP,
                    Value::Port(80),
                ],
                Verdict::Goto("svc".into()),
            )],
        })
        .push(Op::AddRule {
            chain: "svc".into(),
            rule: Rule::new(vec![
                Stmt::Match {
                    expr: Expr::MetaL4Proto,
                    op: CmpOp::Eq,
                    value: Value::TCP,
                },
                Stmt::DnatMap {
                    keys: vec![Expr::Numgen {
                        modulus: 3,
                        offset: 4096,
                    }],
                    map: "ep".into(),
                    ipv6: false,
                },
            ]),
        })
        .push(Op::AddRule {
            chain: "pre".into(),
            rule: Rule::new(vec![Stmt::Vmap {
                keys: vec![Expr::IpDaddr, Expr::MetaL4Proto, Expr::ThDport],
                map: "vm".into(),
            }]),
        })
        .push(Op::AddRule {
            chain: "post".into(),
            rule: Rule::new(vec![
                Stmt::MatchBits {
                    expr: Expr::MetaMark,
                    mask: 0x4000,
                    op: CmpOp::Eq,
                    value: 0x4000,
                },
                Stmt::Masquerade { fully_random: true },
            ])
            .with_comment("masq"),
        });
    let m = |expr, op, value| Stmt::Match { expr, op, value };
    let rule = |chain: &str, stmts| Op::AddRule {
        chain: chain.into(),
        rule: Rule::new(stmts),
    };
    tx.push(Op::AddChain(Chain::regular("x")))
        .push(Op::AddChain(Chain::base(
            "in",
            BaseChain {
                kind: ChainKind::Filter,
                hook: Hook::Input,
                priority: 0,
                policy: Policy::Drop,
                device: None,
            },
        )))
        .push(rule(
            "in",
            vec![
                Stmt::MatchBits {
                    expr: Expr::CtState,
                    mask: ct_state::ESTABLISHED | ct_state::RELATED,
                    op: CmpOp::Ne,
                    value: 0,
                },
                Stmt::Verdict(Verdict::Accept),
            ],
        ))
        .push(rule(
            "in",
            vec![
                Stmt::MatchBits {
                    expr: Expr::CtStatus,
                    mask: ct_status::DNAT,
                    op: CmpOp::Ne,
                    value: 0,
                },
                Stmt::Counter,
                Stmt::Verdict(Verdict::Accept),
            ],
        ))
        .push(rule(
            "in",
            vec![
                m(
                    Expr::FibDaddrType,
                    CmpOp::Eq,
                    Value::AddrType(AddrType::Local),
                ),
                m(Expr::MetaIifname, CmpOp::Ne, Value::IfName("lo".into())),
                m(
                    Expr::IpSaddr,
                    CmpOp::Eq,
                    Value::Ipv4Prefix(Ipv4Addr::new(10, 244, 0, 0), 16),
                ),
                m(
                    Expr::IpDaddr,
                    CmpOp::Ne,
                    Value::Ipv4Prefix(Ipv4Addr::new(10, 128, 0, 0), 9),
                ),
                Stmt::Verdict(Verdict::Return),
            ],
        ))
        .push(rule(
            "in",
            vec![
                m(Expr::MetaL4Proto, CmpOp::Eq, Value::TCP),
                Stmt::Reject(Reject::TcpReset),
            ],
        ))
        .push(rule("in", vec![Stmt::Reject(Reject::IcmpPortUnreachable)]))
        .push(rule(
            "in",
            vec![
                Stmt::InSet {
                    keys: vec![Expr::IpSaddr, Expr::ThDport],
                    set: "ci".into(),
                    negate: true,
                },
                Stmt::SetUpdate {
                    set: "dyn".into(),
                    keys: vec![Expr::IpSaddr],
                    timeout: Some(Duration::from_secs(60)),
                },
                Stmt::Verdict(Verdict::Jump("x".into())),
            ],
        ))
        .push(Op::AddChain(Chain::base(
            "raw",
            BaseChain {
                kind: ChainKind::Filter,
                hook: Hook::Prerouting,
                priority: -300,
                policy: Policy::Accept,
                device: None,
            },
        )))
        .push(rule("raw", vec![Stmt::NoTrack]))
        .push(rule(
            "in",
            vec![
                m(Expr::MetaMark, CmpOp::Eq, Value::Mark(0x10)),
                Stmt::MarkSetOr(0x4000),
                Stmt::Verdict(Verdict::Goto("x".into())),
            ],
        ))
        .push(rule(
            "pre",
            vec![
                m(
                    Expr::IpDaddr,
                    CmpOp::Eq,
                    Value::Ipv4(Ipv4Addr::new(10, 96, 0, 9)),
                ),
                m(Expr::MetaL4Proto, CmpOp::Eq, Value::TCP),
                m(Expr::ThDport, CmpOp::Eq, Value::Port(80)),
                Stmt::Dnat {
                    addr: Ipv4Addr::new(10, 244, 1, 1).into(),
                    port: Some(8080),
                },
            ],
        ))
        .push(rule(
            "pre",
            vec![Stmt::Dnat {
                addr: Ipv4Addr::new(10, 244, 1, 2).into(),
                port: None,
            }],
        ));
    tx
}

/// The fixture's script is what `render_transaction` prints for the same IR.
#[test]
fn fixture_script_is_the_rendering() {
    let want = include_str!("fixtures/nft-1.0.6-mnl.nft");
    assert_eq!(render_transaction(&fixture_tx()), want);
}

/// Splits a batch into (type, bytes after the 16-byte header).
fn messages(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([bytes[off + 4], bytes[off + 5]]);
        out.push((ty, bytes[off + 16..off + len].to_vec()));
        off += len.div_ceil(4) * 4;
    }
    out
}

/// An attribute tree, for readable failures.
fn dump(b: &[u8], depth: usize, out: &mut String) {
    let mut off = 0;
    while off + 4 <= b.len() {
        let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([b[off + 2], b[off + 3]]);
        if len < 4 || off + len > b.len() {
            out.push_str(&format!("{:w$}?? {}\n", "", hex(&b[off..]), w = depth * 2));
            return;
        }
        let body = &b[off + 4..off + len];
        if ty & 0x8000 != 0 {
            out.push_str(&format!("{:w$}[{}]\n", "", ty & 0x7fff, w = depth * 2));
            dump(body, depth + 1, out);
        } else {
            out.push_str(&format!("{:w$}{} = {}\n", "", ty, hex(body), w = depth * 2));
        }
        off += len.div_ceil(4) * 4;
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Asserts that `bytes` holds the messages of a `type hex` fixture (one per line, as
/// captured from `nft --debug=mnl`), naming the first that differs with both dumped.
fn assert_messages_match(bytes: &[u8], fixture: &str) {
    let want: Vec<(u16, Vec<u8>)> = fixture
        .lines()
        .map(|l| {
            let (ty, body) = l.split_once(' ').unwrap();
            (ty.parse().unwrap(), unhex(body))
        })
        .collect();
    let got = messages(bytes);
    assert_eq!(got.len(), want.len(), "message count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            let (mut gs, mut ws) = (String::new(), String::new());
            dump(&g.1[4..], 1, &mut gs);
            dump(&w.1[4..], 1, &mut ws);
            panic!(
                "message {i}: type {} vs nft's {}\nours:\n{gs}\nnft's:\n{ws}",
                g.0, w.0
            );
        }
    }
}

#[test]
fn batch_matches_nft_byte_for_byte() {
    let fixture = include_str!("fixtures/nft-1.0.6-mnl.hex");
    let want: Vec<(u16, Vec<u8>)> = fixture
        .lines()
        .map(|l| {
            let (ty, body) = l.split_once(' ').unwrap();
            (ty.parse().unwrap(), unhex(body))
        })
        .collect();
    let batch = encode_transaction(&fixture_tx(), 0).unwrap();
    let got = messages(&batch.bytes);
    assert_eq!(got.len(), want.len(), "message count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if g != w {
            let (mut gs, mut ws) = (String::new(), String::new());
            dump(&g.1[4..], 1, &mut gs);
            dump(&w.1[4..], 1, &mut ws);
            panic!(
                "message {i}: type {} vs nft's {}\nours:\n{gs}\nnft's:\n{ws}",
                g.0, w.0
            );
        }
    }
}

#[test]
fn sequence_numbers_map_back_to_ops() {
    let tx = fixture_tx();
    let batch = encode_transaction(&tx, 100).unwrap();
    assert_eq!(batch.first_seq, 100);
    assert_eq!(batch.messages(), tx.len());
    assert_eq!(batch.op_of_seq(100), None, "batch begin");
    assert_eq!(batch.op_of_seq(101), Some(0));
    assert_eq!(batch.op_of_seq(100 + tx.len() as u32), Some(tx.len() - 1));
    assert_eq!(batch.op_of_seq(batch.end_seq()), None, "batch end");
    assert_eq!(batch.ack_seq(), Some(100 + tx.len() as u32));
    // Only the last op message asks for an ACK.
    let mut off = 0;
    let mut acks = Vec::new();
    while off < batch.bytes.len() {
        let b = &batch.bytes[off..];
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        let seq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
        if flags & 0x4 != 0 {
            acks.push(seq);
        }
        off += len;
    }
    assert_eq!(acks, vec![batch.ack_seq().unwrap()]);
}

#[test]
fn many_elements_are_packed_under_64k_per_message() {
    let mut tx = Transaction::new(Family::Ip, "t");
    let elems: Vec<Element> = (0..250_000u32)
        .map(|i| {
            Element::values(
                vec![Value::Integer(i)],
                vec![
                    Value::Ipv4(Ipv4Addr::from(0x0af4_0000 + i)),
                    Value::Port(8080),
                ],
            )
        })
        .collect();
    tx.push(Op::AddElements {
        set: "endpoints".into(),
        elems,
    });
    tx.push(Op::FlushChain("x".into()));
    let started = std::time::Instant::now();
    let batch = encode_transaction(&tx, 1).unwrap();
    let took = started.elapsed();
    let msgs = messages(&batch.bytes);
    // begin + element messages + flush + end
    assert!(msgs.len() > 100, "{}", msgs.len());
    for (ty, body) in &msgs {
        assert!(
            body.len() < 65_000,
            "message of type {ty}: {} bytes",
            body.len()
        );
    }
    assert_eq!(batch.op_of_seq(2), Some(0));
    assert_eq!(batch.op_of_seq(batch.ack_seq().unwrap()), Some(1));
    assert_eq!(batch.op_of_seq(batch.ack_seq().unwrap() - 1), Some(0));
    // Generous for debug builds on a shared 2-core machine (release: a few ms).
    assert!(took.as_secs_f64() < 5.0, "encoding took {took:?}");
}

#[test]
fn invalid_ir_is_refused_with_the_op_index() {
    let mut tx = Transaction::new(Family::Ip, "t");
    tx.push(Op::AddTable);
    tx.push(Op::AddRule {
        chain: "c".into(),
        rule: Rule::new(vec![Stmt::Match {
            expr: Expr::IpDaddr,
            op: CmpOp::Eq,
            value: Value::Port(80),
        }]),
    });
    assert!(matches!(
        encode_transaction(&tx, 0),
        Err(EncodeError::Invalid { op: 1, .. })
    ));
    let mut tx = Transaction::new(Family::Ip, "t");
    tx.push(Op::AddChain(Chain::regular("9lives")));
    assert!(matches!(
        encode_transaction(&tx, 0),
        Err(EncodeError::Name { op: 0, .. })
    ));
    assert!(is_valid_name("svc-1.tcp/a_b"));
    assert!(!is_valid_name(&"a".repeat(256)));
    assert!(is_valid_name(&"a".repeat(255)));
}

/// Hooks and families must fit: `ingress` only in netdev tables and with a device, the
/// IP hooks only elsewhere and without one; no NAT in a netdev table.
#[test]
fn base_chains_fit_their_family() {
    let chain = |hook, device: Option<&str>| {
        Op::AddChain(Chain::base(
            "c",
            BaseChain {
                kind: ChainKind::Filter,
                hook,
                priority: 0,
                policy: Policy::Accept,
                device: device.map(str::to_string),
            },
        ))
    };
    let refused = |family, op: Op| {
        let mut tx = Transaction::new(family, "t");
        tx.push(Op::AddTable);
        tx.push(op);
        matches!(
            encode_transaction(&tx, 0),
            Err(EncodeError::Invalid { op: 1, .. })
        )
    };
    assert!(!refused(Family::Netdev, chain(Hook::Ingress, Some("eth0"))));
    assert!(refused(Family::Netdev, chain(Hook::Ingress, None)));
    assert!(refused(
        Family::Netdev,
        chain(Hook::Prerouting, Some("eth0"))
    ));
    assert!(refused(Family::Ip, chain(Hook::Ingress, Some("eth0"))));
    assert!(refused(Family::Ip, chain(Hook::Output, Some("eth0"))));
    assert!(refused(
        Family::Netdev,
        chain(Hook::Ingress, Some("a name"))
    ));
    assert!(refused(
        Family::Netdev,
        chain(Hook::Ingress, Some("sixteen-bytes-xx"))
    ));
    let masquerade = Op::AddRule {
        chain: "c".into(),
        rule: Rule::new(vec![Stmt::Masquerade {
            fully_random: false,
        }]),
    };
    assert!(refused(Family::Netdev, masquerade.clone()));
    assert!(!refused(Family::Ip, masquerade));
}

/// The encoder fed op by op writes the batch `encode_transaction` writes, and checks
/// each op as it comes (a bad one is refused with its index, nothing encoded of it).
#[test]
fn encoding_op_by_op_gives_the_same_batch() {
    let tx = pickers_tx();
    let whole = encode_transaction(&tx, 7).unwrap();
    let mut e = BatchEncoder::new(tx.family, &tx.table, 7).unwrap();
    for op in &tx.ops {
        e.push(op).unwrap();
    }
    assert_eq!(e.len(), tx.ops.len());
    let parts = e.finish();
    assert_eq!(parts.bytes, whole.bytes);
    assert_eq!(parts.end_seq(), whole.end_seq());
    assert_eq!(parts.op_of_seq(9), whole.op_of_seq(9));

    let mut e = BatchEncoder::new(Family::Ip, "t", 0).unwrap();
    e.push(&Op::AddTable).unwrap();
    let bad = Op::AddChain(Chain::regular("9lives"));
    assert!(matches!(e.push(&bad), Err(EncodeError::Name { op: 1, .. })));
    assert_eq!(e.len(), 1);
    assert!(matches!(
        BatchEncoder::new(Family::Ip, "9t", 0),
        Err(EncodeError::Name { op: 0, .. })
    ));
}

/// A typeof-keyed verdict map (podnet's `endpoint-chains-K`) carries the same user data as
/// nft's, so `nft list` prints `typeof numgen ... : verdict` and can read it back. Bytes
/// from `nft --debug=mnl add map ip t m "{ typeof numgen inc mod 1 : verdict; }"` (nft
/// 1.0.6), with the numgen type byte changed from inc (0) to random (1), which podnet uses.
#[test]
fn typeof_verdict_map_user_data_matches_nft() {
    let mut tx = Transaction::new(Family::Ip, "t");
    tx.push(Op::AddTable).push(Op::AddSet(Set {
        key: KeyDecl::Typeof(vec![Expr::Numgen {
            modulus: 1,
            offset: 0,
        }]),
        data: Some(SetData::Verdict),
        ..Set::new("m", vec![])
    }));
    let batch = encode_transaction(&tx, 0).unwrap();
    let set = messages(&batch.bytes)
        .into_iter()
        .find(|(ty, _)| *ty == (10 << 8) | 9)
        .expect("a NEWSET message")
        .1;
    let want = concat!(
        "000401000000",                             // key byte order: host
        "010400000000",                             // data byte order
        "031a",                                     // key typeof:
        "000417000000",                             //   expression 23 (numgen)
        "0112000401000000010401000000020400000000", //   random, mod 1, offset 0
        "0408000401000000",                         // data typeof: expression 1 (verdict)...
        "0100",                                     // ...with no attributes
        "060400000000",                             // data interval: no
    );
    let got = hex(&set);
    assert!(
        got.contains(want),
        "set user data differs from nft's:\n{got}\nwant it to contain\n{want}"
    );
}

/// podnet-services' pickers: maps keyed by a frontend and a `numgen` index (`typeof ip
/// daddr . meta l4proto . th dport . numgen random mod 1`, and without the address for node
/// ports), the rules that look them up, and elements. `fixtures/nft-1.0.6-mnl-pickers.hex`
/// is what `nft --debug=mnl -f fixtures/nft-1.0.6-mnl-pickers.nft` sent (nft 1.0.6, kernel
/// 6.18, in a throwaway namespace; nft's cache-reading message dropped).
fn pickers_tx() -> Transaction {
    let map = |name: &str, address: bool| {
        let mut key = if address { vec![Expr::IpDaddr] } else { vec![] };
        key.extend([
            Expr::MetaL4Proto,
            Expr::ThDport,
            Expr::Numgen {
                modulus: 1,
                offset: 0,
            },
        ]);
        Set {
            key: KeyDecl::Typeof(key),
            data: Some(SetData::Typeof(vec![Expr::IpDaddr, Expr::ThDport])),
            ..Set::new(name, vec![])
        }
    };
    let rule = |map: &str, address: bool| {
        let mut keys = if address { vec![Expr::IpDaddr] } else { vec![] };
        keys.extend([
            Expr::MetaL4Proto,
            Expr::ThDport,
            Expr::Numgen {
                modulus: 5,
                offset: 0,
            },
        ]);
        Op::AddRule {
            chain: "c".into(),
            rule: Rule::new(vec![Stmt::DnatMap {
                keys,
                map: map.into(),
                ipv6: false,
            }]),
        }
    };
    let endpoint = vec![Value::Ipv4(Ipv4Addr::new(10, 244, 1, 5)), Value::Port(8080)];
    let mut tx = Transaction::new(Family::Ip, "t");
    tx.push(Op::AddTable)
        .push(Op::AddSet(map("m", true)))
        .push(Op::AddSet(map("n", false)))
        .push(Op::AddChain(Chain::regular("c")))
        .push(rule("m", true))
        .push(rule("n", false))
        .push(Op::AddElements {
            set: "m".into(),
            elems: vec![Element::values(
                vec![
                    Value::Ipv4(Ipv4Addr::new(10, 96, 0, 10)),
                    Value::TCP,
                    Value::Port(80),
                    Value::Integer(3),
                ],
                endpoint.clone(),
            )],
        })
        .push(Op::AddElements {
            set: "n".into(),
            elems: vec![Element::values(
                vec![Value::TCP, Value::Port(30080), Value::Integer(3)],
                endpoint,
            )],
        });
    tx
}

#[test]
fn pickers_match_nft_byte_for_byte() {
    assert_eq!(
        render_transaction(&pickers_tx()),
        include_str!("fixtures/nft-1.0.6-mnl-pickers.nft")
    );
    assert_messages_match(
        &encode_transaction(&pickers_tx(), 0).unwrap().bytes,
        include_str!("fixtures/nft-1.0.6-mnl-pickers.hex"),
    );
}

/// An address range in an interval set is one interval, as a prefix is: start, and an
/// end element at last + 1 (so a range that is a prefix encodes as that prefix does).
#[test]
fn address_ranges_encode_as_one_interval() {
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let tx_of = |v: Value| {
        let mut set = Set::new("r", vec![Type::Ipv4Addr]);
        set.flags.interval = true;
        let mut tx = Transaction::new(Family::Ip, "t");
        tx.push(Op::AddTable);
        tx.push(Op::AddSet(set));
        tx.push(Op::AddElements {
            set: "r".into(),
            elems: vec![Element::key(vec![v])],
        });
        tx
    };
    let bytes = |v: Value| encode_transaction(&tx_of(v), 0).unwrap().bytes;
    assert_eq!(
        bytes(Value::Ipv4Range(v4("10.0.0.0"), v4("10.0.0.255"))),
        bytes(Value::Ipv4Prefix(v4("10.0.0.0"), 24))
    );
    // 10.0.0.1-10.0.0.6 is four prefixes, one interval: its start and 10.0.0.7.
    let range = bytes(Value::Ipv4Range(v4("10.0.0.1"), v4("10.0.0.6")));
    let has = |b: &[u8], octets: [u8; 4]| b.windows(4).any(|w| w == octets);
    assert!(has(&range, [10, 0, 0, 1]) && has(&range, [10, 0, 0, 7]));
    assert!(!has(&range, [10, 0, 0, 6]) && !has(&range, [10, 0, 0, 2]));
    // An open end (up to 255.255.255.255) has no end element, as for a prefix.
    assert_eq!(
        bytes(Value::Ipv4Range(v4("128.0.0.0"), v4("255.255.255.255"))),
        bytes(Value::Ipv4Prefix(v4("128.0.0.0"), 1))
    );
    let text = render_transaction(&tx_of(Value::Ipv4Range(v4("10.0.0.1"), v4("10.0.0.6"))));
    assert!(text.contains("r { 10.0.0.1-10.0.0.6 }"), "{text}");
    // Reversed, or in a match: refused.
    assert!(
        encode_transaction(&tx_of(Value::Ipv4Range(v4("10.0.0.6"), v4("10.0.0.1"))), 0).is_err()
    );
    let mut tx = Transaction::new(Family::Ip, "t");
    tx.push(Op::AddRule {
        chain: "c".into(),
        rule: Rule::new(vec![Stmt::Match {
            expr: Expr::IpSaddr,
            op: CmpOp::Eq,
            value: Value::Ipv4Range(v4("10.0.0.1"), v4("10.0.0.6")),
        }]),
    });
    assert!(encode_transaction(&tx, 0).is_err());
}

/// The netdev fast path: `ip ttl > 1` and `fwd ip to … device …`, with and without a
/// next-hop map. `fixtures/nft-1.0.6-mnl-fwd.hex` is what `nft --debug=mnl -f
/// fixtures/nft-1.0.6-mnl-fwd.nft` sent (nft 1.0.6, kernel 6.18, in a throwaway namespace
/// where `eth0` has ifindex 3 and `br0` ifindex 4; nft's cache-reading message dropped).
fn fwd_tx() -> Transaction {
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
    let mut tx = Transaction::new(Family::Netdev, "t");
    tx.push(Op::AddTable)
        .push(Op::AddSet(next_hops))
        .push(Op::AddSet(Set::new("slow", vec![Type::Ipv4Addr])))
        .add_chain(
            Chain::regular("to-peers"),
            vec![Rule::new(vec![
                m(
                    Expr::IpSaddr,
                    CmpOp::Eq,
                    Value::Ipv4Prefix(Ipv4Addr::new(10, 244, 1, 0), 24),
                ),
                m(Expr::IpTtl, CmpOp::Gt, Value::Byte(1)),
                slow(Expr::IpSaddr),
                slow(Expr::IpDaddr),
                Stmt::Fwd {
                    to: FwdTo::Map {
                        keys: vec![Expr::IpDaddr],
                        map: "next-hops".into(),
                    },
                    device: Device {
                        name: "eth0".into(),
                        index: 3,
                    },
                },
            ])],
        )
        .add_chain(
            Chain::regular("from-peers"),
            vec![Rule::new(vec![
                m(
                    Expr::IpDaddr,
                    CmpOp::Eq,
                    Value::Ipv4Prefix(Ipv4Addr::new(10, 244, 1, 0), 24),
                ),
                m(
                    Expr::IpDaddr,
                    CmpOp::Ne,
                    Value::Ipv4(Ipv4Addr::new(10, 244, 1, 1)),
                ),
                m(Expr::IpTtl, CmpOp::Gt, Value::Byte(1)),
                Stmt::Fwd {
                    to: FwdTo::Key(Expr::IpDaddr),
                    device: Device {
                        name: "br0".into(),
                        index: 4,
                    },
                },
            ])],
        );
    tx
}

#[test]
fn fwd_rules_render_as_nft_lists_them() {
    let tx = fwd_tx();
    let rules: Vec<String> = tx
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::AddRule { rule, .. } => Some(render_rule(rule)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rules,
        [
            "ip saddr 10.244.1.0/24 ip ttl > 1 ip saddr != @slow ip daddr != @slow \
             fwd ip to ip daddr map @next-hops device \"eth0\"",
            "ip daddr 10.244.1.0/24 ip daddr != 10.244.1.1 ip ttl > 1 \
             fwd ip to ip daddr device \"br0\"",
        ]
    );
}

#[test]
fn fwd_matches_nft_byte_for_byte() {
    assert_eq!(
        render_transaction(&fwd_tx()),
        include_str!("fixtures/nft-1.0.6-mnl-fwd.nft")
    );
    assert_messages_match(
        &encode_transaction(&fwd_tx(), 0).unwrap().bytes,
        include_str!("fixtures/nft-1.0.6-mnl-fwd.hex"),
    );
}

/// `fwd` exists only in netdev tables; `>` only against one big-endian scalar value;
/// `ip ttl` takes bytes; a fwd needs a usable device and an IPv4 address expression.
#[test]
fn fwd_and_gt_are_refused_where_they_make_no_sense() {
    let refused = |family, stmts: Vec<Stmt>| {
        let mut tx = Transaction::new(family, "t");
        tx.push(Op::AddTable).push(Op::AddRule {
            chain: "c".into(),
            rule: Rule::new(stmts),
        });
        match encode_transaction(&tx, 0) {
            Err(EncodeError::Invalid { op: 1, what }) => Some(what),
            Err(e) => panic!("unexpected {e:?}"),
            Ok(_) => None,
        }
    };
    let fwd = |to, name: &str, index| Stmt::Fwd {
        to,
        device: Device {
            name: name.into(),
            index,
        },
    };
    let to_daddr = || FwdTo::Key(Expr::IpDaddr);
    assert_eq!(
        refused(Family::Netdev, vec![fwd(to_daddr(), "eth0", 3)]),
        None
    );
    for family in [Family::Ip, Family::Ip6, Family::Inet] {
        let what = refused(family, vec![fwd(to_daddr(), "eth0", 3)]).expect("refused");
        assert!(what.contains("only available in netdev tables"), "{what}");
    }
    for bad in [
        fwd(to_daddr(), "eth0", 0),
        fwd(to_daddr(), "", 3),
        fwd(to_daddr(), "a b", 3),
        fwd(to_daddr(), "sixteen-bytes-xx", 3),
        fwd(FwdTo::Key(Expr::ThDport), "eth0", 3),
        fwd(FwdTo::Key(Expr::Ip6Daddr), "eth0", 3),
        fwd(
            FwdTo::Map {
                keys: vec![Expr::IpDaddr],
                map: "9hops".into(),
            },
            "eth0",
            3,
        ),
        fwd(
            FwdTo::Map {
                keys: vec![],
                map: "hops".into(),
            },
            "eth0",
            3,
        ),
    ] {
        assert!(
            refused(Family::Netdev, vec![bad.clone()]).is_some(),
            "{bad:?}"
        );
    }

    let m = |expr, op, value| Stmt::Match { expr, op, value };
    let ok = [
        m(Expr::IpTtl, CmpOp::Gt, Value::Byte(1)),
        m(Expr::IpTtl, CmpOp::Ne, Value::Byte(0)),
        m(Expr::ThDport, CmpOp::Gt, Value::Port(1024)),
        m(
            Expr::IpSaddr,
            CmpOp::Gt,
            Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
        ),
    ];
    for s in ok {
        assert_eq!(refused(Family::Netdev, vec![s.clone()]), None, "{s:?}");
    }
    let bad = [
        // A prefix is a range of values, not one.
        m(
            Expr::IpSaddr,
            CmpOp::Gt,
            Value::Ipv4Prefix(Ipv4Addr::new(10, 0, 0, 0), 8),
        ),
        m(
            Expr::IpSaddr,
            CmpOp::Gt,
            Value::Ipv4Range(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9)),
        ),
        m(Expr::ThDport, CmpOp::Gt, Value::PortRange(1, 2)),
        // Host-order integers would need nft's byteorder conversion.
        m(Expr::MetaMark, CmpOp::Gt, Value::Mark(1)),
        m(Expr::MetaIifname, CmpOp::Gt, Value::IfName("eth0".into())),
        // `ip ttl` is a byte.
        m(Expr::IpTtl, CmpOp::Eq, Value::Proto(1)),
        m(Expr::IpTtl, CmpOp::Eq, Value::Port(1)),
        Stmt::MatchBits {
            expr: Expr::MetaMark,
            mask: 1,
            op: CmpOp::Gt,
            value: 0,
        },
    ];
    for s in bad {
        let what = refused(Family::Netdev, vec![s.clone()]).expect("refused");
        assert!(!what.is_empty(), "{s:?}");
    }
    // IPv4 fields (ttl too) need an IPv4 table.
    assert!(refused(Family::Ip6, vec![m(Expr::IpTtl, CmpOp::Gt, Value::Byte(1))]).is_some());
}

/// `typeof ip ttl` is stored as nft stores it (payload of ip, field ttl: 8), so a set
/// keyed by ttls lists as `typeof ip ttl`; `ip ttl` renders in such a declaration too.
#[test]
fn ttl_sets_render_by_typeof() {
    let set = Set {
        key: KeyDecl::Typeof(vec![Expr::IpTtl]),
        ..Set::new("ttls", vec![])
    };
    let mut t = Table::new(Family::Netdev, "t");
    t.sets.push((
        set,
        vec![
            Element::key(vec![Value::Byte(1)]),
            Element::key(vec![Value::Byte(64)]),
        ],
    ));
    assert_eq!(
        render_table(&t),
        "table netdev t {\n\tset ttls {\n\t\ttypeof ip ttl\n\t\telements = { 1, 64 }\n\t}\n}\n"
    );
    assert!(encode_transaction(&Transaction::replace_table(&t), 0).is_ok());
}
