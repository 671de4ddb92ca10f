//! Scale of the agent's Services path (root; runs in a throwaway network namespace):
//! N Services × 5 endpoints as `k8s-openapi` objects (as the API server sends them) go
//! through `ServiceSyncer` into a real nf_tables table over netlink: the first full sync,
//! then single-endpoint changes (time from "object changed" to "transaction applied"),
//! and the process's memory. `cargo bench -p podnet-agent --bench services_scale
//! [-- SERVICES… [--changes N]]` (default 10000 50000, 200 changes). Each size runs in a
//! child process of its own, so its memory figures are its own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::watcher;
use podnet_agent::services::{Changes, LinuxTransactions, ServiceSyncer, ServicesConfig};
use podnet_netlink::netns;

const ENDPOINTS: u32 = 5;
const NODES: u32 = 50;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// splitmix64: a seeded, dependency-free RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 10 + i)
}

fn pod_ip(i: u32, k: u32, generation: u32) -> Ipv4Addr {
    // 10.128.0.0/9: room for 8M distinct addresses.
    let n = (i * ENDPOINTS + k + generation * 997) % (1 << 23);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n)
}

fn uid(kind: u32, i: u32) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

fn meta(name: String, i: u32, kind: u32, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(format!("ns-{}", i % 100)),
        uid: Some(uid(kind, i)),
        resource_version: Some(format!("{}", 1000 + i)),
        labels: Some(labels),
        ..Default::default()
    }
}

fn service(i: u32) -> Service {
    let labels = BTreeMap::from([("app".to_string(), format!("app-{i}"))]);
    Service {
        metadata: meta(format!("svc-{i}"), i, 1, labels.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(vip(i).to_string()),
            cluster_ips: Some(vec![vip(i).to_string()]),
            ip_families: Some(vec!["IPv4".into()]),
            ip_family_policy: Some("SingleStack".into()),
            internal_traffic_policy: Some("Cluster".into()),
            session_affinity: Some("None".into()),
            selector: Some(labels),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(i: u32, generation: u32, rv: u64) -> EndpointSlice {
    let ns = format!("ns-{}", i % 100);
    let labels = BTreeMap::from([
        ("kubernetes.io/service-name".to_string(), format!("svc-{i}")),
        (
            "endpointslice.kubernetes.io/managed-by".to_string(),
            "endpointslice-controller.k8s.io".to_string(),
        ),
    ]);
    let mut metadata = meta(format!("svc-{i}-x7k2p"), i, 2, labels);
    metadata.generate_name = Some(format!("svc-{i}-"));
    metadata.resource_version = Some(rv.to_string());
    metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: format!("svc-{i}"),
        uid: uid(1, i),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: (0..ENDPOINTS)
            .map(|k| Endpoint {
                addresses: vec![pod_ip(i, k, generation).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", (i + k) % NODES)),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(format!("app-{i}-{k}")),
                    namespace: Some(ns.clone()),
                    uid: Some(uid(3, i * ENDPOINTS + k)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

/// (VmRSS, VmHWM) in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Where the first sync's time goes, without the kernel: the same objects through the
/// pure planner and proxy, then the encoding of the transaction.
fn pure_costs(services: u32) -> String {
    let node = podnet_services::NodeContext::new("node-0");
    let mut planner = podnet_services::Planner::new(node);
    let t = Instant::now();
    for i in 0..services {
        planner.apply_service(&service(i));
        planner.apply_slice(&slice(i, 0, 1));
    }
    let read = t.elapsed();
    let t = Instant::now();
    let updates = planner.plan();
    let plan = t.elapsed();
    let mut proxy = podnet_services::Proxy::new(podnet_services::ProxyConfig {
        cluster_cidr: Some(("10.128.0.0".parse().unwrap(), 9)),
        service_cidr: Some(("10.96.0.0".parse().unwrap(), 12)),
    });
    let t = Instant::now();
    let sync = proxy.sync_services(updates);
    let transaction = t.elapsed();
    let t = Instant::now();
    let batch = podnet_nft::encode_transaction(&sync.transaction, 1).expect("encode");
    let encode = t.elapsed();
    let batch_mib = batch.bytes.len() as f64 / (1024.0 * 1024.0);
    drop(batch);
    let ns = Ns(format!("pnsb{}-pure-{services}", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace (root needed)");
    let fd = netns::open(netns::named_path(&ns.0)).expect("open namespace");
    let mut nft = podnet_netlink::nftables::Nftables::open_in(&fd).expect("nf_tables socket");
    let t = Instant::now();
    nft.apply(&sync.transaction).expect("load");
    let kernel = t.elapsed();
    format!(
        "pure parts: objects built + read {} | plan {} | Proxy::sync_services (render, transaction) {} ({} ops) | encode {} ({:.1} MiB) | Nftables::apply (encode + kernel) {}",
        ms(read),
        ms(plan),
        ms(transaction),
        sync.transaction.len(),
        ms(encode),
        batch_mib,
        ms(kernel),
    )
}

fn run(services: u32, changes_n: u32) {
    let ns = Ns(format!("pnsb{}-{services}", std::process::id()));
    let _ = netns::delete_named(&ns.0);
    netns::create_named(&ns.0).expect("create namespace (root needed)");
    let fd = netns::open(netns::named_path(&ns.0)).expect("open namespace");
    let kernel = LinuxTransactions::open_in(&fd).expect("open nf_tables and conntrack sockets");
    let mut syncer = ServiceSyncer::new(
        ServicesConfig {
            node_name: "node-0".into(),
            cluster_cidr: "10.128.0.0/9".parse().unwrap(),
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            node_port_range: podnet_services::DEFAULT_NODE_PORT_RANGE,
        },
        kernel,
    );

    let (rss_start, _) = memory();
    // The agent's path (services::run): watch events are read into `Changes` as they
    // arrive (the objects are dropped at once), and each sync takes what gathered. The
    // first list comes as Init, InitApply × N, InitDone, as kube's watcher sends it.
    let mut changes = Changes::new(syncer.node().clone());
    let mut rv = 1_000_000u64;
    let t = Instant::now();
    changes.service_event(watcher::Event::Init);
    changes.slice_event(watcher::Event::Init);
    for i in 0..services {
        changes.service_event(watcher::Event::InitApply(service(i)));
        changes.slice_event(watcher::Event::InitApply(slice(i, 0, rv)));
        rv += 1;
    }
    changes.service_event(watcher::Event::InitDone);
    changes.slice_event(watcher::Event::InitDone);
    let listed = t.elapsed();
    let (rss_listed, _) = memory();
    assert!(changes.ready());
    let t = Instant::now();
    let first = syncer.sync_changes(changes.take()).expect("first sync");
    let first_sync = t.elapsed();
    assert_eq!(first.ports, services as usize, "every service programmed");
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    let (rss_loaded, hwm_loaded) = memory();

    let mut rng = Rng(0x5eed ^ u64::from(services));
    let mut times = Vec::new();
    let mut ops = 0;
    for c in 0..changes_n {
        let i = rng.below(services);
        // Built before the clock starts: the API client's decoding is not the proxy's.
        let changed = slice(i, c + 1, rv);
        rv += 1;
        let t = Instant::now();
        changes.slice_event(watcher::Event::Apply(changed));
        let r = syncer.sync_changes(changes.take()).expect("sync");
        times.push(t.elapsed());
        assert!(r.ops > 0, "the change reached the kernel");
        ops += r.ops;
    }
    times.sort();
    let (rss_end, hwm_end) = memory();
    drop(syncer);
    drop(changes);
    let (rss_dropped, _) = memory();
    println!(
        "services={services} endpoints={} | events read {} + first full sync {} = {} | {changes_n} endpoint changes ({:.1} ops each): p50 {} p99 {} max {} | RSS before {:.0} MiB, events read {:.0} MiB, after load {:.0} MiB (peak {:.0}), after changes {:.0} MiB (peak {:.0}), all dropped {:.0} MiB",
        services * ENDPOINTS,
        ms(listed),
        ms(first_sync),
        ms(listed + first_sync),
        ops as f64 / f64::from(changes_n.max(1)),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap()),
        rss_start,
        rss_listed,
        rss_loaded,
        hwm_loaded,
        rss_end,
        hwm_end,
        rss_dropped,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes = Vec::new();
    let mut changes = 200;
    let mut child = false;
    let mut pure = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--changes" => changes = it.next().and_then(|v| v.parse().ok()).expect("--changes N"),
            "--child" => child = true,
            "--pure" => pure = true,
            a if a.starts_with('-') => {} // cargo bench passes --bench
            a => sizes.push(a.parse::<u32>().expect("a number of services")),
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 50_000];
    }
    if pure {
        for n in sizes {
            println!("services={n} {}", pure_costs(n));
        }
        return;
    }
    if child {
        for n in sizes {
            run(n, changes);
        }
        return;
    }
    println!(
        "Baselines (issue 4, FIELD-NOTES; nft 1.0.6, kube-proxy-shaped table): 10k services first load 40 s, \
         one element change 230-320 ms; 50k: 16 min to load, 7.6-14 s per change. \
         Kernel only (nft_scale, netlink, 2026-11-30, shared pickers): 10k load 0.13 s; 50k load 0.75 s, change p50 < 0.1 ms max 0.1 ms \
         (chain per service, same run: 50k load 2.1 s, change p50 0.8 ms max 8.1 ms)."
    );
    println!(
        "Targets (issue 4): 50k x 5 full sync < 3 s, memory < 100 MB, one endpoint change < 20 ms p99."
    );
    let exe = std::env::current_exe().expect("own path");
    for n in sizes {
        let status = std::process::Command::new(&exe)
            .args(["--child", &n.to_string(), "--changes", &changes.to_string()])
            // The malloc settings `podnet agent` runs with (unless the caller set its own).
            .env(
                "GLIBC_TUNABLES",
                std::env::var_os("GLIBC_TUNABLES")
                    .unwrap_or_else(|| podnet_agent::MALLOC_TUNABLES.into()),
            )
            .status()
            .expect("run child");
        assert!(status.success(), "size {n} failed");
    }
}
