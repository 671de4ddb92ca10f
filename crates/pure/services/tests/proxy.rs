//! Pure tests of the proxy's table: a golden rendering of a representative node, and the
//! sync state machine (first sync is a full replace, a second sync with nothing changed is
//! empty, an endpoint change is one element out and one in per frontend, a new endpoint
//! count moves the port's elements to that count's picker, a failure leads to a full
//! replace, a conflicting address is reported and skipped).

use podnet_nft::{Op, render_table};
use podnet_services::{Endpoint, ObjectName, PortName, Protocol, Proxy, ProxyConfig, ServicePort};

fn ep(ip: &str, port: u16, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        local,
    }
}

fn port(
    ns: &str,
    name: &str,
    port_name: &str,
    protocol: Protocol,
    ip: &str,
    port: u16,
) -> ServicePort {
    ServicePort {
        name: PortName {
            namespace: ns.into(),
            service: name.into(),
            port: port_name.into(),
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
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
        service_cidr: Some(("10.96.0.0".parse().unwrap(), 12)),
    }
}

/// One of each shape: plain ClusterIP, UDP, NodePort + externalIP (Cluster policy),
/// LoadBalancer with Local policy, ClientIP affinity, no endpoints at all, and
/// internalTrafficPolicy Local without a local endpoint.
fn node_ports() -> Vec<ServicePort> {
    let mut web = port("default", "web", "http", Protocol::Tcp, "10.96.0.10", 80);
    web.cluster_endpoints = vec![ep("10.244.1.5", 8080, true), ep("10.244.2.5", 8080, false)];
    web.has_endpoints = true;
    web.node_port = Some(30080);
    web.external_ips = vec!["172.18.0.100".parse().unwrap()];

    let mut dns = port(
        "kube-system",
        "kube-dns",
        "dns",
        Protocol::Udp,
        "10.96.0.53",
        53,
    );
    dns.cluster_endpoints = vec![ep("10.244.2.9", 53, false)];
    dns.has_endpoints = true;

    let mut lb = port("default", "shop", "", Protocol::Tcp, "10.96.0.11", 443);
    lb.cluster_endpoints = vec![ep("10.244.1.7", 8443, true), ep("10.244.3.7", 8443, false)];
    lb.local_endpoints = vec![ep("10.244.1.7", 8443, true)];
    lb.has_endpoints = true;
    lb.external_local = true;
    lb.node_port = Some(31443);
    lb.load_balancer_ips = vec!["172.18.0.150".parse().unwrap()];
    lb.health_check_node_port = Some(32000);

    let mut sticky = port("default", "sticky", "", Protocol::Tcp, "10.96.0.12", 80);
    sticky.cluster_endpoints = vec![ep("10.244.2.8", 80, false), ep("10.244.3.8", 80, false)];
    sticky.has_endpoints = true;
    sticky.affinity_seconds = Some(60);

    let empty = port("default", "empty", "", Protocol::Sctp, "10.96.0.13", 9000);

    let mut itp = port("default", "node-local", "", Protocol::Tcp, "10.96.0.14", 80);
    itp.internal_local = true;
    itp.has_endpoints = true; // elsewhere only

    vec![web, dns, lb, sticky, empty, itp]
}

#[test]
fn golden_table() {
    let mut proxy = Proxy::new(config());
    let plan = proxy.sync(node_ports());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(
        plan.transaction.ops[..2],
        [Op::AddTable, Op::DeleteTable],
        "first sync replaces"
    );
    let text = render_table(&proxy.table());
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/node.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &text).unwrap();
    }
    let want = std::fs::read_to_string(golden).unwrap();
    assert_eq!(
        text, want,
        "rendered table differs from {golden} (UPDATE_GOLDEN=1 to rewrite)"
    );
}

#[test]
fn second_sync_with_nothing_changed_is_empty() {
    let mut proxy = Proxy::new(config());
    proxy.sync(node_ports());
    let plan = proxy.sync(node_ports());
    assert!(plan.transaction.is_empty(), "{:?}", plan.transaction);
    assert!(plan.changed.is_empty());
}

#[test]
fn one_endpoint_change_is_one_element_out_and_one_in_per_frontend() {
    let mut proxy = Proxy::new(config());
    let mut ports = node_ports();
    proxy.sync(ports.clone());
    // web: cluster IP, one external IP and a node port, 2 endpoints.
    ports[0].cluster_endpoints[1] = ep("10.244.2.6", 8080, false);
    let plan = proxy.sync(ports);
    let text = podnet_nft::render_transaction(&plan.transaction);
    assert_eq!(
        text,
        "delete element ip podnet-services endpoints-2 { 10.96.0.10 . tcp . 80 . 1, \
         172.18.0.100 . tcp . 80 . 1 }\n\
         delete element ip podnet-services nodeport-endpoints-2 { tcp . 30080 . 1 }\n\
         add element ip podnet-services endpoints-2 { 10.96.0.10 . tcp . 80 . 1 : 10.244.2.6 . 8080, \
         172.18.0.100 . tcp . 80 . 1 : 10.244.2.6 . 8080 }\n\
         add element ip podnet-services nodeport-endpoints-2 { tcp . 30080 . 1 : 10.244.2.6 . 8080 }\n"
    );
    assert_eq!(plan.changed.len(), 1);
    assert_eq!(&*plan.changed[0].service, "web");
}

#[test]
fn a_new_endpoint_count_moves_the_elements_and_removing_cleans_up() {
    let mut proxy = Proxy::new(config());
    let mut ports = node_ports();
    proxy.sync(ports.clone());
    ports[0].cluster_endpoints = (0..9)
        .map(|i| ep(&format!("10.244.2.{}", 10 + i), 8080, false))
        .collect();
    let plan = proxy.sync(ports.clone());
    let text = podnet_nft::render_transaction(&plan.transaction);
    for want in [
        // Out of the 2-endpoint picker (which shop still uses)…
        "delete element ip podnet-services endpoints-2 { 10.96.0.10 . tcp . 80 . 0, 10.96.0.10 . tcp . 80 . 1, 172.18.0.100 . tcp . 80 . 0, 172.18.0.100 . tcp . 80 . 1 }",
        "delete element ip podnet-services service-ips { 10.96.0.10 . tcp . 80, 172.18.0.100 . tcp . 80 }",
        // …whose external entry nobody else uses…
        "flush chain ip podnet-services ext-pick-2",
        "delete chain ip podnet-services ext-pick-2",
        // …into a new 9-endpoint picker.
        "add map ip podnet-services endpoints-9 { typeof ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport; }",
        "add rule ip podnet-services pick-9 dnat ip addr . port to ip daddr . meta l4proto . th dport . numgen random mod 9 map @endpoints-9",
        "add element ip podnet-services service-ips { 10.96.0.10 . tcp . 80 : goto pick-9, 172.18.0.100 . tcp . 80 : goto ext-pick-9 }",
        "delete element ip podnet-services hairpin { 10.244.1.5 . 10.244.1.5 }",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    assert!(!text.contains("pick-2 {"), "pick-2 stays: {text}");
    assert!(!text.contains("chain ip podnet-services pick-2"), "{text}");
    // Remove every port: the table is back to its fixed part.
    let plan = proxy.sync(vec![]);
    assert!(proxy.is_empty());
    let text = podnet_nft::render_transaction(&plan.transaction);
    for want in [
        "delete chain ip podnet-services svc-default/sticky/tcp",
        "delete set ip podnet-services aff-default/sticky/tcp/10.244.2.8/80",
        "delete chain ip podnet-services pick-9",
        "delete set ip podnet-services endpoints-9",
        "delete set ip podnet-services picks-svc-default/sticky/tcp",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    let base = render_table(&Proxy::new(config()).table());
    assert_eq!(render_table(&proxy.table()), base);
}

#[test]
fn a_failed_transaction_makes_the_next_sync_a_full_replace() {
    let mut proxy = Proxy::new(config());
    proxy.sync(node_ports());
    proxy.failed();
    let plan = proxy.sync(node_ports());
    assert_eq!(plan.transaction.ops[..2], [Op::AddTable, Op::DeleteTable]);
}

#[test]
fn an_address_already_in_use_is_reported_and_skipped() {
    let mut proxy = Proxy::new(config());
    let mut ports = node_ports();
    let mut clash = port("other", "thief", "", Protocol::Tcp, "10.96.0.10", 80);
    clash.cluster_endpoints = vec![ep("10.244.3.3", 80, false)];
    clash.has_endpoints = true;
    ports.push(clash);
    let plan = proxy.sync(ports);
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    assert!(
        plan.problems[0]
            .to_string()
            .starts_with("Service other/thief:"),
        "{}",
        plan.problems[0]
    );
    assert!(
        plan.problems[0]
            .to_string()
            .contains("in service-ips is already used by default/web/tcp/http"),
        "{}",
        plan.problems[0]
    );
    assert_eq!(proxy.len(), 6, "the other ports are programmed");
}

#[test]
fn removed_udp_endpoints_are_reported_for_conntrack_cleanup() {
    let mut proxy = Proxy::new(config());
    let mut ports = node_ports();
    proxy.sync(ports.clone());
    // kube-dns (UDP) moves from 10.244.2.9 to 10.244.3.9; web (TCP) changes too.
    ports[1].cluster_endpoints = vec![ep("10.244.3.9", 53, false)];
    ports[0].cluster_endpoints.pop();
    let plan = proxy.sync(ports.clone());
    assert_eq!(
        plan.stale_udp,
        ["10.244.2.9:53".parse().unwrap()],
        "TCP endpoints never listed"
    );
    assert!(plan.fresh_udp.is_empty(), "kube-dns had endpoints before");
    // The UDP Service goes away: its endpoints are stale too.
    ports.remove(1);
    let plan = proxy.sync(ports);
    assert_eq!(plan.stale_udp, ["10.244.3.9:53".parse().unwrap()]);
}

#[test]
fn a_udp_service_gaining_its_first_endpoint_is_reported_fresh() {
    let mut proxy = Proxy::new(config());
    let mut dns = port(
        "kube-system",
        "kube-dns",
        "dns",
        Protocol::Udp,
        "10.96.0.53",
        53,
    );
    let first = proxy.sync(vec![dns.clone()]);
    assert!(first.fresh_udp.is_empty(), "no endpoint yet");
    dns.cluster_endpoints = vec![ep("10.244.2.9", 53, false)];
    dns.has_endpoints = true;
    let plan = proxy.sync(vec![dns]);
    assert_eq!(plan.fresh_udp, ["10.96.0.53:53".parse().unwrap()]);
}

/// The representative ports and 2500 more (with 1 to 4 endpoints, some local), so that
/// a whole-table replace spans several parts.
fn many_ports() -> Vec<ServicePort> {
    let mut ports = node_ports();
    for i in 0..2500u32 {
        let ip = std::net::Ipv4Addr::from(0x0a60_1000 + i).to_string();
        let mut p = port("bulk", &format!("svc-{i}"), "http", Protocol::Tcp, &ip, 80);
        p.cluster_endpoints = (0..1 + i % 4)
            .map(|k| {
                let ep_ip = std::net::Ipv4Addr::from(0x0af4_0000 + 8 * i + k).to_string();
                ep(&ep_ip, 8080, k == 0 && i % 7 == 0)
            })
            .collect();
        p.has_endpoints = true;
        ports.push(p);
    }
    ports
}

#[test]
fn a_deferred_replace_sends_in_parts_what_the_whole_replace_holds() {
    let ports = many_ports();
    let mut whole = Proxy::new(config());
    let tx = whole.sync(ports.clone()).transaction;

    let mut deferred = Proxy::new(config());
    let mut by_service: std::collections::BTreeMap<ObjectName, Vec<ServicePort>> =
        std::collections::BTreeMap::new();
    for p in ports {
        by_service
            .entry(ObjectName::new(&p.name.namespace, &p.name.service))
            .or_default()
            .push(p);
    }
    let plan = deferred.sync_services_deferred(by_service.into_iter().collect());
    assert!(plan.full, "the first sync replaces the table");
    assert!(
        plan.transaction.is_empty(),
        "the replace is left to the parts"
    );
    let parts: Vec<Vec<Op>> = deferred.replace_parts().collect();
    assert!(parts.len() > 3, "{} parts", parts.len());

    // The same ops: everything but elements in the same order, then per set the same
    // elements in the same order.
    let split = |ops: Vec<Op>| {
        let mut other = Vec::new();
        let mut elements: Vec<(String, Vec<podnet_nft::Element>)> = Vec::new();
        for op in ops {
            match op {
                Op::AddElements { set, elems } => {
                    match elements.iter_mut().find(|(s, _)| *s == set) {
                        Some((_, e)) => e.extend(elems),
                        None => elements.push((set, elems)),
                    }
                }
                op => other.push(op),
            }
        }
        elements.sort_by(|a, b| a.0.cmp(&b.0));
        (other, elements)
    };
    let (whole_other, whole_elements) = split(tx.ops.clone());
    let (parts_other, parts_elements) = split(parts.into_iter().flatten().collect());
    assert_eq!(whole_other, parts_other);
    assert_eq!(whole_elements, parts_elements);
    let elements: usize = whole_elements.iter().map(|(_, e)| e.len()).sum();
    assert!(elements > 2500 * 2, "{elements} elements");

    // And it is the table the proxy describes (what the dump shows).
    let mut table = podnet_nft::Table::new(tx.family, tx.table.clone());
    for op in tx.ops {
        match op {
            Op::AddSet(s) => table.sets.push((s, Vec::new())),
            Op::AddChain(c) => table.chains.push((c, Vec::new())),
            Op::AddRule { chain, rule } => {
                let c = table
                    .chains
                    .iter_mut()
                    .find(|(c, _)| c.name == chain)
                    .unwrap();
                c.1.push(rule);
            }
            Op::AddElements { set, elems } => {
                let s = table.sets.iter_mut().find(|(s, _)| s.name == set).unwrap();
                s.1.extend(elems);
            }
            Op::AddTable | Op::DeleteTable => {}
            other => panic!("unexpected op in a replace: {other:?}"),
        }
    }
    assert_eq!(table, whole.table());
}
