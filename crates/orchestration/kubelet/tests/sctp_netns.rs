//! Netns integration: the echo workload's SCTP answer (raw INIT → INIT-ACK) between two
//! namespaces joined by a veth pair, and on loopback. Needs root (raw sockets, namespaces);
//! makes only namespaces named `pnks<pid>…` and removes them, also on failure.

use podnet_kubelet::echo;
use podnet_kubelet::sctp;
use podnet_netlink::netns;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

/// A named namespace removed on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        assert!(
            nix::unistd::geteuid().is_root(),
            "SCTP netns tests need root (they do not skip)"
        );
        let name = format!("pnks{}{tag}", std::process::id());
        let _ = netns::delete_named(&name);
        netns::create_named(&name).expect("create namespace");
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = netns::open(netns::named_path(&self.0)).unwrap();
        std::thread::scope(|s| s.spawn(|| netns::run_in(&fd, f).unwrap()).join().unwrap())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.0);
    }
}

fn id() -> echo::Identity {
    echo::Identity {
        pod: "sctp-pod".into(),
        namespace: "default".into(),
        ip: "10.99.8.2".into(),
        node: "n1".into(),
        container: "echo".into(),
    }
}

/// Starts the echo workload serving SCTP `ports` in `ns` (its raw socket opened there).
fn serve_in(ns: &Ns, ports: &[u16]) {
    let ports = echo::Ports {
        sctp: ports.to_vec(),
        ..Default::default()
    };
    let servers = ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(echo::bind(Ipv4Addr::UNSPECIFIED, &ports))
            .unwrap()
    });
    // Detached: the serving thread ends with the test process.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _ = rt.block_on(echo::serve(id(), servers));
    });
}

#[test]
fn a_peer_namespace_gets_the_line_in_the_init_ack() {
    let pod = Ns::new("pod");
    let client = Ns::new("cli");
    let pid = std::process::id() % 100_000;
    let (a, b) = (format!("pka{pid}"), format!("pkb{pid}"));
    client.ip(&[
        "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &pod.0,
    ]);
    client.ip(&["addr", "add", "10.99.8.1/24", "dev", &a]);
    client.ip(&["link", "set", &a, "up"]);
    pod.ip(&["addr", "add", "10.99.8.2/24", "dev", &b]);
    // A second address: the answer must leave from the one the INIT was sent to.
    pod.ip(&["addr", "add", "10.99.8.3/24", "dev", &b]);
    pod.ip(&["link", "set", &b, "up"]);

    // Nothing serves SCTP yet: the pod's kernel (no SCTP stack) answers protocol
    // unreachable, and the probe reports it at once.
    let to = SocketAddrV4::new("10.99.8.2".parse().unwrap(), 8132);
    let started = Instant::now();
    let err = client
        .run(|| sctp::probe(to, Duration::from_secs(3)))
        .unwrap_err();
    assert!(format!("{err:#}").contains("ENOPROTOOPT"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(1), "{err:#}");

    serve_in(&pod, &[8132, 9132]);

    for (dst, port) in [("10.99.8.2", 8132), ("10.99.8.3", 9132)] {
        let to = SocketAddrV4::new(dst.parse().unwrap(), port);
        let r = client
            .run(|| sctp::probe(to, Duration::from_secs(3)))
            .unwrap_or_else(|e| panic!("{to}: {e:#}"));
        assert_eq!(r.pod, "sctp-pod");
        assert_eq!(r.container, "echo");
        assert_eq!(r.peer.ip().to_string(), "10.99.8.1", "the source it saw");
        assert!(
            r.peer.port() >= 49152,
            "the probe's source port: {}",
            r.peer
        );
    }

    // A port not served gets no answer: the probe times out.
    let to = SocketAddrV4::new("10.99.8.2".parse().unwrap(), 7);
    let started = Instant::now();
    let err = client
        .run(|| sctp::probe(to, Duration::from_millis(300)))
        .unwrap_err();
    assert!(format!("{err:#}").contains("no INIT-ACK"), "{err:#}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn loopback_in_one_namespace() {
    let ns = Ns::new("lo");
    serve_in(&ns, &[8132]);
    let r = ns
        .run(|| sctp::probe("127.0.0.1:8132".parse().unwrap(), Duration::from_secs(3)))
        .unwrap();
    assert_eq!(r.pod, "sctp-pod");
    assert_eq!(r.peer.ip().to_string(), "127.0.0.1");
}
