//! Pure tests of `plan_services`: endpoint categorisation, traffic policies, named ports,
//! and bad objects skipped without touching the rest.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_services::{Endpoint, NodeContext, Protocol, ServicePort, Snapshot, plan_services};
use serde_json::json;

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn slice(v: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

fn node() -> NodeContext {
    NodeContext::new("node-1")
}

/// Pods of 10.244.1.0/24 run on node-1, the node planned for.
fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        local: ip.starts_with("10.244.1."),
    }
}

fn web(extra_spec: serde_json::Value) -> Service {
    let mut spec = json!({"type": "ClusterIP", "clusterIP": "10.96.0.20", "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "dns", "port": 53, "protocol": "UDP"}]});
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    svc(json!({"metadata": {"name": "web", "namespace": "prod"}, "spec": spec}))
}

/// Two slices: the named port resolves to 8080 on one group of pods, 9090 on another.
fn web_slices() -> Vec<EndpointSlice> {
    let e = |ip: &str, node: &str, ready: bool, terminating: bool, serving: bool| {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    };
    vec![
        slice(
            json!({"metadata": {"name": "web-a", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [e("10.244.1.5", "node-1", true, false, true), e("10.244.2.5", "node-2", true, false, true),
                          e("10.244.1.6", "node-1", false, true, true)]}),
        ),
        slice(
            json!({"metadata": {"name": "web-b", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}],
            "endpoints": [e("10.244.3.7", "node-3", true, false, true)]}),
        ),
    ]
}

fn plan(services: &[Service], slices: &[EndpointSlice]) -> Vec<ServicePort> {
    let (ports, problems) = plan_services(Snapshot { services, slices }, &node());
    assert!(problems.is_empty(), "{problems:?}");
    ports
}

#[test]
fn cluster_ip_ports_with_named_target_ports_resolved_per_slice() {
    let ports = plan(&[web(json!({}))], &web_slices());
    assert_eq!(ports.len(), 2);
    let dns = &ports[0];
    assert_eq!(dns.name.to_string(), "prod/web/udp/dns");
    assert_eq!(dns.name.protocol, Protocol::Udp);
    assert_eq!(
        dns.cluster_endpoints,
        [ep("10.244.1.5", 5353), ep("10.244.2.5", 5353)]
    );
    let http = &ports[1];
    assert_eq!(http.name.to_string(), "prod/web/tcp/http");
    assert_eq!(http.cluster_ip.to_string(), "10.96.0.20");
    assert_eq!(http.port, 80);
    assert_eq!(
        http.internal_endpoints(),
        [
            ep("10.244.1.5", 8080),
            ep("10.244.2.5", 8080),
            ep("10.244.3.7", 9090)
        ]
    );
    assert!(
        http.local_endpoints.is_empty(),
        "no Local policy: local endpoints unused"
    );
    assert!(http.has_endpoints);
    assert_eq!(http.node_port, None);
}

#[test]
fn terminating_endpoints_are_used_only_when_no_ready_one_is_left() {
    let e = |ip: &str, ready: bool, serving: bool, terminating: bool| {
        json!({"addresses": [ip], "nodeName": "node-1",
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    };
    let s = |eps: serde_json::Value| {
        slice(
            json!({"metadata": {"name": "web-x", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}),
        )
    };
    let svc = web(json!({"ports": [{"name": "http", "port": 80}]}));
    let ports = plan(
        std::slice::from_ref(&svc),
        &[s(json!([
            e("10.244.1.5", false, true, true),
            e("10.244.1.6", false, false, true)
        ]))],
    );
    assert_eq!(ports[0].cluster_endpoints, [ep("10.244.1.5", 8080)]);
    assert!(ports[0].has_endpoints);
    // Terminating and not serving: none usable, so the port has no endpoints (refused).
    let ports = plan(&[svc], &[s(json!([e("10.244.1.6", false, false, true)]))]);
    assert!(ports[0].cluster_endpoints.is_empty());
    assert!(!ports[0].has_endpoints);
}

#[test]
fn traffic_policies_local() {
    let svc = web(
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}], "externalIPs": ["192.0.2.10"]}),
    );
    let mut svc = svc;
    svc.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.20"}]}}))
            .unwrap();
    let ports = plan(&[svc], &web_slices());
    let http = &ports[0];
    assert!(http.external_local && !http.internal_local);
    assert_eq!(http.node_port, Some(30080));
    assert_eq!(http.health_check_node_port, Some(32000));
    assert_eq!(
        http.external_ips,
        ["192.0.2.10".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        http.load_balancer_ips,
        ["192.0.2.20".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // External traffic: this node's ready endpoints only (10.244.1.6 is terminating).
    assert_eq!(http.external_endpoints(), [ep("10.244.1.5", 8080)]);
    // Cluster-IP traffic still goes everywhere.
    assert_eq!(http.internal_endpoints().len(), 3);

    let itp =
        web(json!({"internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}));
    let ports = plan(&[itp], &web_slices());
    assert_eq!(ports[0].internal_endpoints(), [ep("10.244.1.5", 8080)]);
    assert!(
        ports[0].cluster_endpoints.is_empty(),
        "no policy uses cluster endpoints"
    );
}

#[test]
fn session_affinity_and_skipped_services() {
    let aff = web(json!({"sessionAffinity": "ClientIP", "ports": [{"name": "http", "port": 80}]}));
    assert_eq!(plan(&[aff], &[])[0].affinity_seconds, Some(10800));
    let headless = web(json!({"clusterIP": "None"}));
    let external_name = svc(json!({"metadata": {"name": "x", "namespace": "prod"},
        "spec": {"type": "ExternalName", "externalName": "example.org"}}));
    let mut other_proxy = web(json!({}));
    other_proxy.metadata.labels = Some(
        [(
            "service.kubernetes.io/service-proxy-name".to_string(),
            "other".to_string(),
        )]
        .into(),
    );
    assert!(plan(&[headless, external_name, other_proxy], &web_slices()).is_empty());
}

#[test]
fn a_bad_service_is_reported_and_the_others_are_planned() {
    let bad = svc(json!({"metadata": {"name": "bad", "namespace": "prod"},
        "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}, {"port": 81, "protocol": "ICMP"}]}}));
    let bad_ip = svc(json!({"metadata": {"name": "bad-ip", "namespace": "prod"},
        "spec": {"clusterIP": "10.96.0.999", "ports": [{"port": 80}]}}));
    let services = [bad, web(json!({})), bad_ip];
    let slices = web_slices();
    let (ports, problems) = plan_services(
        Snapshot {
            services: &services,
            slices: &slices,
        },
        &node(),
    );
    assert_eq!(ports.len(), 2, "web's two ports, nothing of the bad ones");
    assert!(ports.iter().all(|p| &*p.name.service == "web"));
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert!(
        text[0].starts_with("Service prod/bad: spec.ports[1].protocol"),
        "{text:?}"
    );
    assert!(
        text[1].contains("Service prod/bad-ip: clusterIP \"10.96.0.999\""),
        "{text:?}"
    );
}

#[test]
fn node_ports_outside_the_range_are_reported_and_not_programmed() {
    let s = web(json!({"type": "NodePort", "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 9000,
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 8080},
                  {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}));
    let services = [s];
    let slices = web_slices();
    let snapshot = Snapshot {
        services: &services,
        slices: &slices,
    };
    let (ports, problems) = plan_services(snapshot, &node());
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "Service prod/web: healthCheckNodePort 9000 is outside the NodePort range 30000-32767; not served",
            "Service prod/web: port http: nodePort 8080 is outside the NodePort range 30000-32767; not programmed",
        ],
    );
    // The rest of the Service is programmed: both cluster IP ports, the in-range node port.
    assert_eq!(ports.len(), 2);
    let by_name = |n: &str| ports.iter().find(|p| &*p.name.port == n).unwrap();
    assert_eq!(by_name("http").node_port, None);
    assert_eq!(by_name("dns").node_port, Some(30053));
    assert!(ports.iter().all(|p| p.health_check_node_port.is_none()));
    // A wider range (a cluster started with --service-node-port-range=8000-32767): all in.
    let wide = NodeContext {
        node_port_range: 8000..=32767,
        ..node()
    };
    let (ports, problems) = plan_services(snapshot, &wide);
    assert!(problems.is_empty(), "{problems:?}");
    let by_name = |n: &str| ports.iter().find(|p| &*p.name.port == n).unwrap();
    assert_eq!(by_name("http").node_port, Some(8080));
    assert!(ports.iter().all(|p| p.health_check_node_port == Some(9000)));
}
