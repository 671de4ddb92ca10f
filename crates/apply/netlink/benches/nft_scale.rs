//! Scale of nf_tables through netlink (root; runs in a throwaway network namespace):
//! a Services table of N services × 5 endpoints loaded in one batch, then single changes
//! against the loaded table, in two shapes:
//! - `chains`: podnet-nft's example table, a chain per service (`svc-N` with a numgen
//!   dnat-map rule over a sharded `endpoints-K` map), one `service-ips` element and 5
//!   endpoint elements each;
//! - `pickers`: the table podnet-services' `Proxy` builds (what the agent sends): one
//!   `service-ips` element per service, 5 elements in the shared `endpoints-5` map keyed
//!   by (frontend, index), one `pick-5` chain for all.
//!
//! `cargo bench -p podnet-netlink --bench nft_scale [-- SERVICES…]` (default 10000 50000).

use podnet_netlink::netns;
use podnet_netlink::nftables::Nftables;
use podnet_nft::example::{self, SLOTS};
use podnet_nft::*;
use std::time::{Duration, Instant};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn run(services: u32) {
    const ENDPOINTS: u32 = 5;
    let ns = Ns(format!("pnt{}-bench-{services}", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace");
    let fd = netns::open(netns::named_path(&ns.0)).expect("open namespace");
    let mut nft = Nftables::open_in(&fd).expect("open nftables socket");

    let t0 = Instant::now();
    let table = example::services_table("podnet-svc", services, ENDPOINTS);
    let tx = Transaction::replace_table(&table);
    let build = t0.elapsed();
    let t1 = Instant::now();
    let batch = encode_transaction(&tx, 1).expect("encode");
    let encode = t1.elapsed();
    let bytes = batch.bytes.len();
    let msgs = batch.messages();
    drop(batch);
    let t2 = Instant::now();
    nft.apply(&tx).expect("full load");
    let load = t2.elapsed();

    // One endpoint replaced in service 0 (delete one element, add one).
    let mut change = Transaction::new(Family::Ip, "podnet-svc");
    change.push(Op::DeleteElements {
        set: example::endpoints_map(0),
        elems: vec![Element::key(vec![Value::Integer(0)])],
    });
    change.push(Op::AddElements {
        set: example::endpoints_map(0),
        elems: vec![Element::values(
            vec![Value::Integer(0)],
            vec![
                Value::Ipv4(std::net::Ipv4Addr::new(10, 245, 0, 1)),
                Value::Port(8080),
            ],
        )],
    });
    let mut one = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        nft.apply(&change).expect("endpoint change");
        one.push(t.elapsed());
    }
    one.sort();

    // A new service: chain, rule, dispatch element, endpoints.
    let n = services;
    let chain = format!("svc-{n}");
    let mut add = Transaction::new(Family::Ip, "podnet-svc");
    if n.is_multiple_of(example::SHARD) {
        add.push(Op::AddSet(example::endpoints_map_decl(
            &example::endpoints_map(n),
        )));
    }
    add.push(Op::AddChain(Chain::regular(chain.clone())));
    add.push(Op::AddRule {
        chain: chain.clone(),
        rule: Rule::new(vec![
            Stmt::Match {
                expr: Expr::MetaL4Proto,
                op: CmpOp::Eq,
                value: Value::TCP,
            },
            Stmt::DnatMap {
                keys: vec![Expr::Numgen {
                    modulus: ENDPOINTS,
                    offset: n * SLOTS,
                }],
                map: example::endpoints_map(n),
                ipv6: false,
            },
        ]),
    });
    add.push(Op::AddElements {
        set: example::endpoints_map(n),
        elems: (0..ENDPOINTS)
            .map(|k| {
                Element::values(
                    vec![Value::Integer(n * SLOTS + k)],
                    vec![Value::Ipv4(example::endpoint(n, k)), Value::Port(8080)],
                )
            })
            .collect(),
    });
    add.push(Op::AddElements {
        set: "service-ips".into(),
        elems: vec![Element::verdict(
            vec![Value::Ipv4(example::vip(n)), Value::TCP, Value::Port(80)],
            Verdict::Goto(chain),
        )],
    });
    let t3 = Instant::now();
    nft.apply(&add).expect("add a service");
    let add_service = t3.elapsed();

    // The full replace again, over the loaded table.
    let t4 = Instant::now();
    nft.apply(&tx).expect("full replace");
    let replace = t4.elapsed();

    println!(
        "chains services={services} chains={} elements={} | build IR {} | encode {} ({:.1} MiB, {msgs} messages) | full load {} | endpoint change p50 {} max {} | add service {} | full replace over loaded {}",
        services + 8,
        services * (ENDPOINTS + 1),
        ms(build),
        ms(encode),
        bytes as f64 / (1024.0 * 1024.0),
        ms(load),
        ms(one[one.len() / 2]),
        ms(*one.last().unwrap()),
        ms(add_service),
        ms(replace),
    );
}

/// The same services as podnet-services programs them.
fn run_pickers(services: u32) {
    use podnet_services::{Endpoint, ObjectName, PortName, Protocol, Proxy, ProxyConfig};
    const ENDPOINTS: u32 = 5;
    let port = |n: u32, first_endpoint: u32| podnet_services::ServicePort {
        name: PortName {
            namespace: "default".into(),
            service: format!("svc-{n}").into(),
            port: "".into(),
            protocol: Protocol::Tcp,
        },
        cluster_ip: example::vip(n),
        port: 80,
        node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        affinity_seconds: None,
        external_local: false,
        internal_local: false,
        health_check_node_port: None,
        cluster_endpoints: (0..ENDPOINTS)
            .map(|k| Endpoint {
                ip: example::endpoint(n, first_endpoint + k),
                port: 8080,
                local: false,
            })
            .collect(),
        local_endpoints: vec![],
        has_endpoints: true,
    };
    let update = |n: u32, first_endpoint: u32| {
        vec![(
            ObjectName::new("default", &format!("svc-{n}")),
            vec![port(n, first_endpoint)],
        )]
    };
    let ns = Ns(format!("pnt{}-bench-p{services}", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace");
    let fd = netns::open(netns::named_path(&ns.0)).expect("open namespace");
    let mut nft = Nftables::open_in(&fd).expect("open nftables socket");
    let mut proxy = Proxy::new(ProxyConfig {
        cluster_cidr: Some(("10.128.0.0".parse().unwrap(), 9)),
        service_cidr: Some(("10.96.0.0".parse().unwrap(), 12)),
    });

    let t0 = Instant::now();
    let tx = proxy
        .sync((0..services).map(|n| port(n, 0)).collect())
        .transaction;
    let build = t0.elapsed();
    let t1 = Instant::now();
    let batch = encode_transaction(&tx, 1).expect("encode");
    let encode = t1.elapsed();
    let bytes = batch.bytes.len();
    let msgs = batch.messages();
    drop(batch);
    let t2 = Instant::now();
    nft.apply(&tx).expect("full load");
    let load = t2.elapsed();
    drop(tx);
    let table = proxy.table();
    let chains = table.chains.len();
    let elements: usize = table.sets.iter().map(|(_, e)| e.len()).sum();
    drop(table);

    // One endpoint replaced in service 0 (one element out, one in), back and forth.
    let mut one = Vec::new();
    for i in 0..20 {
        let change = proxy.sync_services(update(0, (i + 1) % 2)).transaction;
        assert_eq!(change.len(), 2, "{}", render_transaction(&change));
        let t = Instant::now();
        nft.apply(&change).expect("endpoint change");
        one.push(t.elapsed());
    }
    one.sort();

    // A new service: its dispatch element and endpoints.
    let add = proxy.sync_services(update(services, 0)).transaction;
    let t3 = Instant::now();
    nft.apply(&add).expect("add a service");
    let add_service = t3.elapsed();

    // The full replace again, over the loaded table.
    proxy.failed();
    let tx = proxy.sync_services(Vec::new()).transaction;
    let t4 = Instant::now();
    nft.apply(&tx).expect("full replace");
    let replace = t4.elapsed();

    println!(
        "pickers services={services} chains={chains} elements={elements} | build (Proxy::sync) {} | encode {} ({:.1} MiB, {msgs} messages) | full load {} | endpoint change p50 {} max {} | add service {} | full replace over loaded {}",
        ms(build),
        ms(encode),
        bytes as f64 / (1024.0 * 1024.0),
        ms(load),
        ms(one[one.len() / 2]),
        ms(*one.last().unwrap()),
        ms(add_service),
        ms(replace),
    );
}

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 50_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n);
        run_pickers(n);
    }
}
