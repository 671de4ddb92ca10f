//! `podnet dns` end to end with real packets on loopback: the lab's API server in
//! process, Services and EndpointSlices created through it, the server on ephemeral
//! ports queried over UDP and TCP (queries built and replies read by hickory-proto), and
//! Debian's dnsmasq as the upstream for names outside the zone.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use podnet_dns_server::{Config, Server};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// dnsmasq, killed by pid when the test ends (also on failure).
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_dnsmasq(hosts: &std::path::Path) -> Dnsmasq {
    let port = free_port();
    let child = Command::new("dnsmasq")
        .args([
            "--no-resolv",
            "--no-hosts",
            "--address=/example.test/192.0.2.7",
            // Its local answers have TTL 0 (never cached) otherwise.
            "--local-ttl=60",
            // 100 addresses for one name: more than 1232 bytes, truncated over UDP.
            &format!("--addn-hosts={}", hosts.display()),
            "-k",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--user=root",
        ])
        .spawn()
        .expect("dnsmasq (apt-get install dnsmasq-base)");
    let d = Dnsmasq {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let start = Instant::now();
    loop {
        let r = try_udp(d.addr, &query("www.example.test.", RecordType::A, None));
        if r.is_some() {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "dnsmasq did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x5151, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

fn try_udp(addr: SocketAddr, q: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send_to(q, addr).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn udp(addr: SocketAddr, name: &str, t: RecordType) -> Message {
    udp_raw(addr, &query(name, t, None))
}

fn udp_raw(addr: SocketAddr, q: &[u8]) -> Message {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(q, addr).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).expect("a UDP reply");
    Message::from_vec(&buf[..n]).unwrap()
}

fn tcp(conn: &mut TcpStream, q: &[u8]) -> Message {
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    conn.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of a metric line starting with `prefix`, 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits (at most `within`) until `f` holds; returns how long it took.
fn within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn slice(name: &str, service: &str, ips: &[String]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        "endpoints": endpoints}))
    .unwrap()
}

#[test]
fn serves_the_cluster_zone_and_forwards_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let lines: String = (1..=100)
        .map(|i| format!("198.51.100.{i} many.example.test\n"))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    let dnsmasq = start_dnsmasq(&hosts);
    // An upstream that never answers (the socket is held open: no ICMP), tried first.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap()
    });
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    rt.block_on(async {
        for s in [
            svc(
                json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.50",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            ),
            svc(
                json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None",
                "ports": [{"name": "pg", "port": 5432}]}}),
            ),
            svc(json!({"metadata": {"name": "big"}, "spec": {"clusterIP": "None"}})),
            svc(
                json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName",
                "externalName": "www.example.test"}}),
            ),
        ] {
            svcs.create(&PostParams::default(), &s).await.unwrap();
        }
        let big: Vec<String> = (1..=60).map(|i| format!("10.244.9.{i}")).collect();
        for s in [
            slice("db-1", "db", &["10.244.1.5".to_string()]),
            slice("big-1", "big", &big),
        ] {
            slices.create(&PostParams::default(), &s).await.unwrap();
        }
    });

    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![silent.local_addr().unwrap(), dnsmasq.addr],
        upstream_timeout: Duration::from_millis(300),
        udp_workers: 2,
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let dns = server.local_addr();
    let http = server.metrics_addr();
    let serving = rt.spawn(server.serve(client.clone()));
    within("healthz 200", Duration::from_secs(10), || {
        http_get(http, "/healthz").starts_with("HTTP/1.1 200")
    });

    // A, SRV (with the additional A), PTR, TXT.
    let m = udp(dns, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(answers(&m), ["web.default.svc.cluster.local. A 10.96.0.50"]);
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.id, 0x5151);
    let m = udp(
        dns,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        answers(&m),
        ["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(m.additionals.len(), 1);
    let m = udp(
        dns,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        answers(&m),
        [
            "_pg._tcp.db.default.svc.cluster.local. SRV 0 100 5432 10-244-1-5.db.default.svc.cluster.local."
        ]
    );
    let m = udp(dns, "50.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        answers(&m),
        ["50.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."]
    );
    let m = udp(dns, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(answers(&m), ["dns-version.cluster.local. TXT 1.1.0"]);

    // NXDOMAIN and NODATA, both with the SOA.
    let m = udp(dns, "missing.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    let m = udp(dns, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    // Forwarded through dnsmasq (the silent upstream times out first), then cached.
    let before = http_get(http, "/metrics");
    let m = udp(dns, "www.example.test.", RecordType::A);
    assert_eq!(answers(&m), ["www.example.test. A 192.0.2.7"]);
    assert!(!m.metadata.authoritative);
    let m = udp(dns, "WWW.Example.Test.", RecordType::A);
    assert_eq!(answers(&m), ["WWW.Example.Test. A 192.0.2.7"]);
    let after = http_get(http, "/metrics");
    assert_eq!(
        metric(&after, "podnet_dns_cache_misses_total")
            - metric(&before, "podnet_dns_cache_misses_total"),
        1.0
    );
    assert_eq!(
        metric(&after, "podnet_dns_cache_hits_total")
            - metric(&before, "podnet_dns_cache_hits_total"),
        1.0
    );

    // ExternalName: the CNAME, and the target's address found through the upstream.
    let m = udp(dns, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        answers(&m),
        [
            "ext.default.svc.cluster.local. CNAME www.example.test.",
            "www.example.test. A 192.0.2.7"
        ]
    );

    // TCP: several queries on one connection.
    let mut conn = TcpStream::connect(dns).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let m = tcp(
        &mut conn,
        &query("web.default.svc.cluster.local.", RecordType::A, None),
    );
    assert_eq!(answers(&m), ["web.default.svc.cluster.local. A 10.96.0.50"]);
    let m = tcp(&mut conn, &query("www.example.test.", RecordType::A, None));
    assert_eq!(answers(&m), ["www.example.test. A 192.0.2.7"]);

    // Truncated over UDP (60 addresses do not fit in 512 bytes), whole over TCP.
    let m = udp(dns, "big.default.svc.cluster.local.", RecordType::A);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    let m = tcp(
        &mut conn,
        &query("big.default.svc.cluster.local.", RecordType::A, None),
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    // With EDNS the client's size is used.
    let m = udp_raw(
        dns,
        &query("big.default.svc.cluster.local.", RecordType::A, Some(4096)),
    );
    assert_eq!(m.answers.len(), 60);

    // An upstream answer too long for UDP: podnet asks again over TCP and has it all.
    let m = tcp(&mut conn, &query("many.example.test.", RecordType::A, None));
    assert_eq!(m.answers.len(), 100);
    let m = udp_raw(dns, &query("many.example.test.", RecordType::A, Some(4096)));
    assert_eq!(m.answers.len(), 100);
    let m = udp(dns, "many.example.test.", RecordType::A);
    assert!(m.metadata.truncation);

    // A malformed query gets FORMERR (its ID kept), and the server keeps answering.
    let mut bad = query("web.default.svc.cluster.local.", RecordType::A, None);
    bad.truncate(20);
    bad[0] = 0x42;
    bad[1] = 0x42;
    let m = udp_raw(dns, &bad);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, 0x4242);
    let m = tcp(&mut conn, &bad);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let m = udp(dns, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers.len(), 1);

    // Changes are followed within 1 s: a new Service, a new endpoint, a deletion.
    rt.block_on(async {
        svcs.create(
            &PostParams::default(),
            &svc(
                json!({"metadata": {"name": "late"}, "spec": {"clusterIP": "10.96.0.77",
                "ports": [{"port": 80}]}}),
            ),
        )
        .await
        .unwrap();
    });
    let took = within("new Service answered", Duration::from_secs(1), || {
        udp(dns, "late.default.svc.cluster.local.", RecordType::A)
            .answers
            .len()
            == 1
    });
    eprintln!("new Service answered after {took:?}");
    rt.block_on(async {
        let patch = json!({"endpoints": [
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
            {"addresses": ["10.244.1.6"], "hostname": "db-1", "conditions": {"ready": true}}]});
        slices
            .patch("db-1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    });
    within("new endpoint answered", Duration::from_secs(1), || {
        answers(&udp(
            dns,
            "db-1.db.default.svc.cluster.local.",
            RecordType::A,
        )) == ["db-1.db.default.svc.cluster.local. A 10.244.1.6"]
    });
    rt.block_on(async {
        svcs.delete("late", &DeleteParams::default()).await.unwrap();
    });
    within("deleted Service gone", Duration::from_secs(1), || {
        udp(dns, "late.default.svc.cluster.local.", RecordType::A)
            .metadata
            .response_code
            == ResponseCode::NXDomain
    });

    let text = http_get(http, "/metrics");
    for m in [
        "podnet_dns_requests_total{type=\"A\",rcode=\"NOERROR\"}",
        "podnet_dns_requests_total{type=\"A\",rcode=\"NXDOMAIN\"}",
        "podnet_dns_requests_total{type=\"SRV\",rcode=\"NOERROR\"}",
        "podnet_dns_requests_total{type=\"other\",rcode=\"FORMERR\"}",
        "podnet_dns_request_duration_seconds_bucket",
        "podnet_dns_zone_builds_total",
    ] {
        assert!(text.contains(m), "{m} missing in\n{text}");
    }
    serving.abort();
    drop(dnsmasq);
}

#[test]
fn all_upstreams_failing_is_servfail() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(podnet_apiserver::serve(listener, Default::default()));
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap()
    });
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![silent.local_addr().unwrap()],
        upstream_timeout: Duration::from_millis(200),
        udp_workers: 1,
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let dns = server.local_addr();
    let http = server.metrics_addr();
    let serving = rt.spawn(server.serve(client));
    within("healthz 200", Duration::from_secs(10), || {
        http_get(http, "/healthz").starts_with("HTTP/1.1 200")
    });
    let m = udp(dns, "www.example.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        metric(
            &http_get(http, "/metrics"),
            "podnet_dns_forward_failures_total"
        ) >= 1.0
    );
    // The zone is still answered.
    let m = udp(dns, "dns-version.cluster.local.", RecordType::TXT);
    assert!(matches!(&m.answers[0].data, RData::TXT(_)));
    serving.abort();
}
