//! How long a whole zone build takes, how long a commit of one changed Service takes
//! (the incremental path the server uses), and how fast the pure answer path is:
//! `cargo run --release -p podnet-dns --example zone_scale [SERVICES]` — SERVICES ClusterIP
//! Services with two named ports each, plus one headless Service per 10 with 5 endpoints.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use podnet_dns::{Outcome, ServiceInfo, ZoneConfig, ZoneState, answer_query, build_zone, wire};
use serde_json::json;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("a number"));
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80},
                {"name": "metrics", "port": 9090}]}}))
        .unwrap();
        services.push(svc);
        if i % 10 == 0 {
            let name = format!("headless-{i}");
            services.push(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "db"},
                    "spec": {"clusterIP": "None"}}))
                .unwrap(),
            );
            let eps: Vec<_> = (0..5)
                .map(|k| {
                    json!({"addresses": [format!("10.244.{}.{}", (i / 10) % 250, k + 1)],
                    "hostname": format!("db-{k}")})
                })
                .collect();
            let s: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-1"), "namespace": "db",
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4", "ports": [{"name": "pg", "port": 5432}],
                "endpoints": eps}))
            .unwrap();
            slices.push(s);
        }
    }
    let start = Instant::now();
    let (zone, problems) = build_zone(&ZoneConfig::default(), &services, &slices);
    let built = start.elapsed();
    println!(
        "{} Services, {} slices: {} records, {} names, built in {:?} ({} problems)",
        services.len(),
        slices.len(),
        zone.record_count(),
        zone.name_count(),
        built,
        problems.len()
    );
    // One change at a time, committed: what the server does per change.
    let mut state = ZoneState::new(ZoneConfig::default());
    for s in &slices {
        state.apply_slice(podnet_dns::SliceInfo::from_slice(s).unwrap());
    }
    for s in &services {
        state.apply_service(ServiceInfo::from_service(s).unwrap());
    }
    let start = Instant::now();
    let mut held = state.commit(1);
    println!("incremental state, first commit: {:?}", start.elapsed());
    let mut times = Vec::new();
    for k in 0..50u32 {
        // A new Service, then its deletion; and a headless Service's endpoints changing.
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("new-{k}"), "namespace": "ns-1"},
            "spec": {"clusterIP": format!("10.100.0.{}", k + 1),
                "ports": [{"name": "http", "port": 80}]}}))
        .unwrap();
        state.apply_service(ServiceInfo::from_service(&svc).unwrap());
        let t = Instant::now();
        // Readers still hold the previous snapshot, as in the server.
        let next = state.commit(2 + k);
        times.push(t.elapsed());
        drop(std::mem::replace(&mut held, next));
        state.delete_service("ns-1", &format!("new-{k}"));
        let t = Instant::now();
        let next = state.commit(2 + k);
        times.push(t.elapsed());
        drop(std::mem::replace(&mut held, next));
    }
    times.sort();
    println!(
        "one change committed: median {:?}, max {:?} ({} commits, previous snapshot held)",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
    drop(held);
    // The pure answer path: parse, look up, copy.
    let queries: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let mut q = Vec::new();
            wire::write_header(&mut q, i as u16, wire::flag::RD, [1, 0, 0, 0]);
            let name = format!("svc-{}.ns-{}.svc.cluster.local", i * 7 % n, i * 7 % n % 100);
            q.extend_from_slice(&wire::name_from_str(&name).unwrap());
            q.extend_from_slice(&[0, 1, 0, 1]);
            q
        })
        .collect();
    let mut out = Vec::with_capacity(512);
    let rounds = 2000;
    let start = Instant::now();
    let mut answered = 0usize;
    for _ in 0..rounds {
        for q in &queries {
            if let Outcome::Reply(_) = answer_query(Some(&zone), zone.apex(), q, false, &mut out) {
                answered += 1;
            }
        }
    }
    let per = start.elapsed() / (rounds * queries.len()) as u32;
    println!("answer_query: {per:?} per query ({answered} answered)");
}
