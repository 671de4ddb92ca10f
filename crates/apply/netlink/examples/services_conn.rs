//! Per-packet cost of Services (issue 4): the tools `scripts/bench-services` drives.
//! Apply-layer example (root for `load-podnet`; the rest needs no privilege).
//!
//! - `load-podnet NETNS SERVICES`: podnet's Services table with SERVICES service ports,
//!   built exactly as the agent builds it — [`ServicePort`] values → [`Proxy::sync`] → one
//!   transaction → [`Nftables::apply`] in the named namespace. The measured service
//!   ([`VIP`]:80) has [`ENDPOINTS`] endpoints, all the server pod ([`SERVER`]) on ports
//!   8080…; the other services have 5 endpoints each at distinct pod addresses elsewhere.
//! - `kube-proxy-nft SERVICES`: the same services as kube-proxy's nftables proxier writes
//!   them (`pkg/proxy/nftables`: per-service and per-endpoint chains, an anonymous
//!   `numgen random mod N vmap` per service, `service-ips` dispatch), as `nft -f` text on
//!   stdout.
//! - `server PORT…`: accepts on every port (one thread each) and closes each connection at
//!   once.
//! - `client ADDR:PORT[,ADDR:PORT…] THREADS SECS`: THREADS threads, each in a loop:
//!   connect (to the addresses in turn), wait for the server's close (EOF: the server
//!   accepted), close. Prints one line: connections per second, p50/p99 of the `connect`
//!   call (SYN → SYN-ACK as the client sees it), connections, errors.
//!
//! The ruleset shapes are documented at their builders; the bench script documents the
//! topology and how the figures are read.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podnet_netlink::netns;
use podnet_netlink::nftables::Nftables;
use podnet_services::{Endpoint, PortName, Protocol, Proxy, ProxyConfig, ServicePort};

/// The measured service's cluster IP (port 80).
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The server pod: every endpoint of the measured service.
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
/// Endpoints per service (the measured one: ports 8080..8080+ENDPOINTS on the server).
const ENDPOINTS: u32 = 5;
const FIRST_PORT: u16 = 8080;
/// Pods (the client, the server and every other endpoint are in it).
const CLUSTER_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 240, 0, 0), 12);
const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

/// Service `i` (0 is the measured one): (cluster IP, endpoints, on this node).
fn service(i: u32) -> (Ipv4Addr, Vec<(Ipv4Addr, u16)>, bool) {
    if i == 0 {
        let eps = (0..ENDPOINTS)
            .map(|k| (SERVER, FIRST_PORT + k as u16))
            .collect();
        return (VIP, eps, true);
    }
    // Cluster IPs from 10.96.1.0 on; endpoints at 10.240.0.0 + 5·i + k (a /14 holds 50k × 5).
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i);
    let base = u32::from(Ipv4Addr::new(10, 240, 0, 0)) + ENDPOINTS * i;
    let eps = (0..ENDPOINTS)
        .map(|k| (Ipv4Addr::from(base + k), 8080))
        .collect();
    (vip, eps, false)
}

fn port_name(i: u32) -> PortName {
    PortName {
        namespace: "bench".into(),
        service: format!("svc-{i}").into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
    }
}

/// What the planner (`plan_services`) yields for a ClusterIP Service with one TCP port
/// and ready endpoints under the Cluster policy.
fn service_port(i: u32) -> ServicePort {
    let (cluster_ip, eps, local) = service(i);
    ServicePort {
        name: port_name(i),
        cluster_ip,
        port: 80,
        node_port: None,
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        affinity_seconds: None,
        external_local: false,
        internal_local: false,
        health_check_node_port: None,
        cluster_endpoints: eps
            .into_iter()
            .map(|(ip, port)| Endpoint { ip, port, local })
            .collect(),
        local_endpoints: Vec::new(),
        has_endpoints: true,
    }
}

fn load_podnet(ns: &str, services: u32) -> Result<(), String> {
    let t0 = Instant::now();
    let mut proxy = Proxy::new(ProxyConfig {
        cluster_cidr: Some(CLUSTER_CIDR),
        service_cidr: Some(SERVICE_CIDR),
    });
    let plan = proxy.sync((0..services).map(service_port).collect());
    if !plan.problems.is_empty() {
        return Err(format!("planner problems: {:?}", &plan.problems[..1]));
    }
    let planned = t0.elapsed();
    let fd = netns::open(netns::named_path(ns)).map_err(|e| e.to_string())?;
    let mut nft = Nftables::open_in(&fd).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    nft.apply(&plan.transaction).map_err(|e| e.to_string())?;
    eprintln!(
        "podnet table: {services} services x {ENDPOINTS} endpoints in {ns}: {} ops, planned in {:.0} ms, applied in {:.0} ms",
        plan.transaction.len(),
        planned.as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// A stand-in for kube-proxy's 8-character hash prefix (base32 of a SHA-256 there): the
/// names have the same shape and length; only the per-packet path matters here.
fn hash8(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..8)
        .map(|k| A[((h >> (5 * k)) & 31) as usize] as char)
        .collect()
}

/// kube-proxy's nftables proxier's table (v1.31+ `pkg/proxy/nftables/proxier.go`, as its
/// `TestOverallNFTablesRules` expects it) for ClusterIP services, node IP 10.244.0.1:
///
/// ```text
/// add table ip kube-proxy { comment "rules for kube-proxy" ; }
/// … base sets, maps and chains (filter hooks at -110 and 0, nat at ±100) …
/// add chain ip kube-proxy service-HASH-ns/svc/tcp/port
/// add rule … service-… ip daddr VIP ip saddr != CLUSTER-CIDR jump mark-for-masquerade
/// add rule … service-… numgen random mod 5 vmap { 0 : goto endpoint-…, 1 : … }
/// add chain ip kube-proxy endpoint-HASH-ns/svc/tcp/port__IP/PORT
/// add rule … endpoint-… ip saddr IP jump mark-for-masquerade
/// add rule … endpoint-… meta l4proto tcp dnat to IP:PORT
/// add element ip kube-proxy cluster-ips { VIP }
/// add element ip kube-proxy service-ips { VIP . tcp . 80 : goto service-… }
/// ```
fn kube_proxy_nft(services: u32) -> String {
    use std::fmt::Write;
    let (cip, clen) = CLUSTER_CIDR;
    let (sip, slen) = SERVICE_CIDR;
    let t = "ip kube-proxy";
    let mut s = String::new();
    let w = &mut s;
    // The base: kube-proxy's baseRules.
    let _ = write!(
        w,
        r#"add table {t} {{ comment "rules for kube-proxy" ; }}
add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set {t} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; }}
add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; }}
add chain {t} cluster-ips-check
add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}
add chain {t} filter-input {{ type filter hook input priority 0 ; }}
add chain {t} filter-output {{ type filter hook output priority 0 ; }}
add chain {t} firewall-check
add chain {t} mark-for-masquerade
add chain {t} masquerading
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {t} nodeport-endpoints-check
add chain {t} reject-chain
add chain {t} services
add chain {t} service-endpoints-check
add rule {t} cluster-ips-check ip daddr @cluster-ips reject
add rule {t} cluster-ips-check ip daddr {{ {sip}/{slen} }} drop
add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward ct state new jump cluster-ips-check
add rule {t} filter-input ct state new jump nodeport-endpoints-check
add rule {t} filter-input ct state new jump service-endpoints-check
add rule {t} filter-output ct state new jump service-endpoints-check
add rule {t} filter-output-pre-dnat ct state new jump firewall-check
add rule {t} filter-output ct state new jump cluster-ips-check
add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule {t} mark-for-masquerade mark set mark or 0x4000
add rule {t} masquerading mark and 0x4000 == 0 return
add rule {t} masquerading mark set mark xor 0x4000
add rule {t} masquerading masquerade fully-random
add rule {t} nat-output jump services
add rule {t} nat-postrouting jump masquerading
add rule {t} nat-prerouting jump services
add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {t} reject-chain reject
add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element {t} nodeport-ips {{ 10.244.0.1 }}
add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
"#
    );
    for i in 0..services {
        let (vip, eps, _) = service(i);
        let name = port_name(i).to_string();
        let svc = format!("service-{}-{name}", hash8(&name));
        let _ = writeln!(w, "add chain {t} {svc}");
        let _ = writeln!(
            w,
            "add rule {t} {svc} ip daddr {vip} ip saddr != {cip}/{clen} jump mark-for-masquerade"
        );
        let mut vmap = Vec::new();
        for (k, (ip, port)) in eps.iter().enumerate() {
            let ep_name = format!("{name}__{ip}/{port}");
            let ep = format!("endpoint-{}-{ep_name}", hash8(&ep_name));
            let _ = writeln!(w, "add chain {t} {ep}");
            let _ = writeln!(
                w,
                "add rule {t} {ep} ip saddr {ip} jump mark-for-masquerade"
            );
            let _ = writeln!(w, "add rule {t} {ep} meta l4proto tcp dnat to {ip}:{port}");
            vmap.push(format!("{k} : goto {ep}"));
        }
        let _ = writeln!(
            w,
            "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            vmap.join(" , ")
        );
        let _ = writeln!(w, "add element {t} cluster-ips {{ {vip} }}");
        let _ = writeln!(
            w,
            "add element {t} service-ips {{ {vip} . tcp . 80 : goto {svc} }}"
        );
    }
    s
}

fn server(ports: &[u16]) -> Result<(), String> {
    let mut handles = Vec::new();
    for &port in ports {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
            .map_err(|e| format!("bind :{port}: {e}"))?;
        handles.push(std::thread::spawn(move || {
            loop {
                match l.accept() {
                    Ok((s, _)) => drop(s), // close at once: the client reads EOF
                    Err(e) => eprintln!("accept :{port}: {e}"),
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn client(addrs: Vec<SocketAddr>, threads: usize, secs: f64) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut first_error = None;
                let mut buf = [0u8; 16];
                let mut next = t;
                while !stop.load(Ordering::Relaxed) {
                    let addr = addrs[next % addrs.len()];
                    next += 1;
                    let t0 = Instant::now();
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            let connected = t0.elapsed();
                            match s.read(&mut buf) {
                                Ok(0) => {
                                    lat.push(connected.as_nanos().min(u32::MAX as u128) as u32)
                                }
                                Ok(_) => errors += 1,
                                Err(e) => {
                                    errors += 1;
                                    first_error.get_or_insert(format!("read: {e}"));
                                }
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(format!("connect: {e}"));
                        }
                    }
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for w in workers {
        let (l, e, f) = w.join().map_err(|_| "client thread panicked")?;
        lat.extend(l);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if lat.is_empty() {
        return Err(format!(
            "no connection completed ({errors} errors; first: {})",
            first_error.unwrap_or_default()
        ));
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
    println!(
        "rate={:.0} p50_us={:.1} p99_us={:.1} conns={} errors={errors}",
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        lat.len()
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: services_conn load-podnet NETNS SERVICES | kube-proxy-nft SERVICES | server PORT… | client ADDR:PORT[,ADDR:PORT…] THREADS SECS"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("load-podnet") => load_podnet(&arg::<String>(&args, 1), arg(&args, 2)),
        Some("kube-proxy-nft") => {
            print!("{}", kube_proxy_nft(arg(&args, 1)));
            Ok(())
        }
        Some("server") if args.len() > 1 => {
            server(&(1..args.len()).map(|i| arg(&args, i)).collect::<Vec<u16>>())
        }
        Some("client") => match args.get(1).map(|a| {
            a.split(',')
                .map(str::parse)
                .collect::<Result<Vec<SocketAddr>, _>>()
        }) {
            Some(Ok(addrs)) if !addrs.is_empty() => client(addrs, arg(&args, 2), arg(&args, 3)),
            _ => usage(),
        },
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("services_conn: {e}");
        std::process::exit(1);
    }
}
