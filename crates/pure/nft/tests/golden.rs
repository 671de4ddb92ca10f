//! Golden tests of the rendering: the example Services table as a table block and as
//! the transaction that replaces it, plus an incremental change. Expected text lives in
//! `tests/golden/`; `UPDATE_GOLDEN=1` rewrites it. (That `nft -f` accepts this text and
//! means what the netlink encoding means is proven in podnet-netlink's
//! `tests/nftables.rs`.)

use podnet_nft::example::{self, SLOTS};
use podnet_nft::*;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(actual, expected, "golden file {name} differs");
}

#[test]
fn services_table_block() {
    golden(
        "services-table.nft",
        &render_table(&example::services_table("podnet-svc", 3, 2)),
    );
}

#[test]
fn services_table_replace_transaction() {
    let tx = Transaction::replace_table(&example::services_table("podnet-svc", 3, 2));
    golden("services-replace.nft", &render_transaction(&tx));
}

#[test]
fn replace_table_owned_is_replace_table() {
    let t = example::services_table("podnet-svc", 3, 2);
    assert!(t.sets.iter().any(|(_, e)| !e.is_empty()) && t.chains.len() > 2);
    assert_eq!(
        Transaction::replace_table_owned(t.clone()),
        Transaction::replace_table(&t)
    );
}

#[test]
fn incremental_change() {
    let mut tx = Transaction::new(Family::Ip, "podnet-svc");
    tx.push(Op::DeleteElements {
        set: example::endpoints_map(1),
        elems: vec![Element::values(
            vec![Value::Integer(SLOTS)],
            vec![Value::Ipv4(Ipv4Addr::new(10, 244, 0, 8)), Value::Port(8080)],
        )],
    })
    .push(Op::AddElements {
        set: example::endpoints_map(1),
        elems: vec![Element::values(
            vec![Value::Integer(SLOTS)],
            vec![Value::Ipv4(Ipv4Addr::new(10, 244, 9, 9)), Value::Port(8443)],
        )],
    })
    .push(Op::FlushChain("svc-1".into()))
    .push(Op::AddRule {
        chain: "svc-1".into(),
        rule: Rule::new(vec![
            Stmt::Match {
                expr: Expr::MetaL4Proto,
                op: CmpOp::Eq,
                value: Value::UDP,
            },
            Stmt::DnatMap {
                keys: vec![Expr::Numgen {
                    modulus: 1,
                    offset: SLOTS,
                }],
                map: example::endpoints_map(1),
                ipv6: false,
            },
        ]),
    })
    .push(Op::FlushMap("service-ips".into()))
    .push(Op::FlushSet("no-endpoints".into()))
    .push(Op::AddElements {
        set: "empty-is-nothing".into(),
        elems: vec![],
    })
    .push(Op::DeleteChain("svc-2".into()))
    .push(Op::DeleteSet("affinity".into()))
    .push(Op::DeleteTable);
    golden("incremental.nft", &render_transaction(&tx));
}

#[test]
fn durations_render_as_nft_writes_them() {
    let d = |ms| render::render_duration(Duration::from_millis(ms));
    assert_eq!(d(0), "0s");
    assert_eq!(d(10_000), "10s");
    assert_eq!(d(10_800_000), "3h");
    assert_eq!(d(90_061_001), "1d1h1m1s1ms");
}
