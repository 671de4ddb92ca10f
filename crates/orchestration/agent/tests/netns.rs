//! Apply-layer tests in fresh network namespaces (prefix `pa<pid>-`, removed on Drop):
//! two nodes on an underlay bridge, a pod behind each, an external host. `LinuxNodeNet`
//! and `LinuxNft` program them; real TCP crosses in host-gw and VXLAN mode, mode switches
//! in place, and the masquerade rewrites exactly egress to the outside.

use podnet_agent::Mode;
use podnet_agent::ops::{LinuxNft, LinuxNodeNet, NftOps, NodeNetOps};
use podnet_agent::sync::{SyncConfig, Syncer};
use podnet_netlink::netns;
use podnet_nodenet::{NodeInfo, diff, plan_node, render_masquerade};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Named namespaces removed on drop (also when the test panics).
struct Lab {
    prefix: String,
    made: Vec<String>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab {
            prefix: format!("pa{}-{tag}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        netns::create_named(&full).expect("create namespace");
        self.made.push(full.clone());
        ip(&full, "link set lo up");
        full
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.made {
            let _ = netns::delete_named(n);
        }
    }
}

/// `ip -n NS ARGS…`, must succeed.
fn ip(ns: &str, args: &str) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command run inside `ns` (from a thread that entered it).
fn in_ns_output(ns: &str, cmd: &[&str]) -> String {
    let fd = netns::open(netns::named_path(ns)).unwrap();
    let out = netns::run_in(&fd, || Command::new(cmd[0]).args(&cmd[1..]).output())
        .unwrap()
        .expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = netns::named_path(ns);
    std::thread::spawn(move || {
        let fd = netns::open(path).unwrap();
        let _g = netns::enter(&fd).unwrap();
        f()
    })
    .join()
    .expect("thread in namespace panicked")
}

/// A TCP server in `ns` on `addr` accepting one connection; the handle yields the peer
/// address it saw and the bytes it received.
fn serve_once(ns: &str, addr: SocketAddr) -> JoinHandle<(SocketAddr, Vec<u8>)> {
    let path = netns::named_path(ns);
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let fd = netns::open(path).unwrap();
        let _g = netns::enter(&fd).unwrap();
        let l = TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        s.write_all(b"bye").ok();
        (peer, buf)
    });
    ready_rx.recv().unwrap();
    h
}

/// Connects from `ns` to `addr`, sends `msg`, closes; returns the server's view.
fn tcp(ns: &str, addr: &str, msg: &'static [u8]) -> SocketAddr {
    let addr: SocketAddr = addr.parse().unwrap();
    let srv_ns = SERVER_NS.with(|s| s.borrow().clone());
    let server = serve_once(&srv_ns, addr);
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.write_all(msg).unwrap();
    });
    let (peer, got) = server.join().unwrap();
    assert_eq!(got, msg);
    peer
}

thread_local! {
    static SERVER_NS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn tcp_to(server_ns: &str, client_ns: &str, addr: &str) -> String {
    SERVER_NS.with(|s| *s.borrow_mut() = server_ns.to_string());
    tcp(client_ns, addr, b"hello").ip().to_string()
}

struct Cluster {
    lab: Lab,
    n1: String,
    n2: String,
    p1: String,
    p2: String,
    ext: String,
    conf: tempfile::TempDir,
}

/// underlay bridge (ns `ul`): n1 192.168.77.1, n2 .2, ext .100; pod p1 10.244.1.2 behind
/// n1's `pod0` (10.244.1.1), pod p2 10.244.2.2 behind n2's.
fn cluster(tag: &str) -> Cluster {
    let mut lab = Lab::new(tag);
    let ul = lab.ns("ul");
    let n1 = lab.ns("n1");
    let n2 = lab.ns("n2");
    let p1 = lab.ns("p1");
    let p2 = lab.ns("p2");
    let ext = lab.ns("ext");
    ip(&ul, "link add br0 type bridge");
    ip(&ul, "link set br0 up");
    for (ns, addr, port) in [
        (&n1, "192.168.77.1/24", "u1"),
        (&n2, "192.168.77.2/24", "u2"),
        (&ext, "192.168.77.100/24", "u3"),
    ] {
        ip(
            ns,
            &format!("link add eth0 type veth peer name {port} netns {ul}"),
        );
        ip(ns, &format!("addr add {addr} dev eth0"));
        ip(ns, "link set eth0 up");
        ip(&ul, &format!("link set {port} master br0"));
        ip(&ul, &format!("link set {port} up"));
    }
    for (node, pod, net) in [(&n1, &p1, 1), (&n2, &p2, 2)] {
        ip(
            node,
            &format!("link add pod0 type veth peer name eth0 netns {pod}"),
        );
        ip(node, &format!("addr add 10.244.{net}.1/24 dev pod0"));
        ip(node, "link set pod0 up");
        ip(pod, &format!("addr add 10.244.{net}.2/24 dev eth0"));
        ip(pod, "link set eth0 up");
        ip(pod, &format!("route add default via 10.244.{net}.1"));
    }
    Cluster {
        lab,
        n1,
        n2,
        p1,
        p2,
        ext,
        conf: tempfile::tempdir().unwrap(),
    }
}

fn nodes() -> Vec<NodeInfo> {
    vec![
        NodeInfo {
            name: "n1".into(),
            ip: "192.168.77.1".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
        },
        NodeInfo {
            name: "n2".into(),
            ip: "192.168.77.2".parse().unwrap(),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
        },
    ]
}

/// One sync of node `name` in `ns` with the real kernel by a fresh `Syncer` (as after
/// an agent restart); checks the read-back and that a second sync writes nothing.
/// Returns the first sync's writes (its nft transaction included).
fn sync_node(c: &Cluster, ns: &str, name: &str, mode: Mode, nodes: Vec<NodeInfo>) -> usize {
    sync_node_except(c, ns, name, mode, nodes, Vec::new())
}

/// [`sync_node`] with masquerade exceptions.
fn sync_node_except(
    c: &Cluster,
    ns: &str,
    name: &str,
    mode: Mode,
    nodes: Vec<NodeInfo>,
    masquerade_exceptions: Vec<ipnet::Ipv4Net>,
) -> usize {
    let cfg = SyncConfig {
        node_name: name.into(),
        mode,
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        cni_conf_dir: c.conf.path().join(name),
        cni_data_dir: "/var/lib/cni/podnet".into(),
        underlay_mtu: 1500,
        masquerade_exceptions,
    };
    in_ns(ns, move || {
        let mut s = Syncer::new(cfg, LinuxNodeNet::open().unwrap(), LinuxNft);
        let first = s.sync(&nodes).unwrap_or_else(|e| panic!("sync: {e:#}"));
        // Read back equals the plan, and a second sync writes nothing to the kernel.
        let me = nodes.iter().find(|n| n.name == s.config.node_name).unwrap();
        let plan = plan_node(me, &nodes, mode, 1500);
        let state = s.net.read_state().unwrap();
        assert_eq!(
            state,
            plan.as_state(),
            "kernel read back differs from the plan"
        );
        assert!(diff(&state, &plan).is_empty());
        let second = s.sync(&nodes).unwrap();
        assert_eq!(second.kernel_writes, 0, "a second sync writes nothing");
        first.kernel_writes
    })
}

#[test]
fn pods_talk_across_nodes_in_both_modes_and_modes_switch_in_place() {
    let c = cluster("x");
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    // A foreign route podnet must never touch.
    ip(&c.n1, "route add 10.99.0.0/24 via 192.168.77.2");

    for mode in [Mode::HostGw, Mode::Vxlan, Mode::HostGw] {
        for (ns, name) in [(&c.n1, "n1"), (&c.n2, "n2")] {
            let writes = sync_node(&c, ns, name, mode, nodes());
            assert!(writes > 0, "{mode}: first sync in {name} wrote");
        }
        // pod → pod across nodes: real TCP, the pod's own address arrives (no NAT).
        assert_eq!(
            tcp_to(&c.p2, &c.p1, "10.244.2.2:7001"),
            "10.244.1.2",
            "{mode}"
        );
        assert_eq!(
            tcp_to(&c.p1, &c.p2, "10.244.1.2:7002"),
            "10.244.2.2",
            "{mode}"
        );
        // node → remote pod: in VXLAN the node's VTEP address is the source.
        let seen = tcp_to(&c.p2, &c.n1, "10.244.2.2:7003");
        let want = if mode == Mode::Vxlan {
            "10.244.1.0"
        } else {
            "192.168.77.1"
        };
        assert_eq!(seen, want, "{mode}");
        let routes = in_ns_output(&c.n1, &["ip", "route", "show", "proto", "201"]);
        if mode == Mode::Vxlan {
            assert!(
                routes.contains("10.244.2.0/24 via 10.244.2.0 dev podnet.vxlan onlink"),
                "{routes}"
            );
            let fdb = in_ns_output(&c.n1, &["bridge", "fdb", "show", "dev", "podnet.vxlan"]);
            assert!(fdb.contains("dst 192.168.77.2"), "{fdb}");
            let link = in_ns_output(&c.n1, &["ip", "-d", "link", "show", "podnet.vxlan"]);
            assert!(
                link.contains("mtu 1450") && link.contains("dstport 4789"),
                "{link}"
            );
        } else {
            assert_eq!(
                routes.trim(),
                "10.244.2.0/24 via 192.168.77.2 dev eth0",
                "{routes}"
            );
            // No tunnel, no tunnel table (also after the VXLAN round before).
            let tables = in_ns_output(&c.n1, &["nft", "list", "tables"]);
            assert!(!tables.contains("podnet-tunnel"), "{tables}");
            let links = in_ns_output(&c.n1, &["ip", "link"]);
            assert!(
                !links.contains("podnet.vxlan"),
                "VXLAN device removed: {links}"
            );
        }
        let all = in_ns_output(&c.n1, &["ip", "route"]);
        assert!(
            all.contains("10.99.0.0/24 via 192.168.77.2"),
            "foreign route kept: {all}"
        );
    }
    let fwd = in_ns_output(&c.n1, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward,
        "the host's own namespace is untouched"
    );
}

#[test]
fn node_leaving_removes_its_kernel_entries() {
    let c = cluster("l");
    sync_node(&c, &c.n1, "n1", Mode::Vxlan, nodes());
    let mut three = nodes();
    three.push(NodeInfo {
        name: "n3".into(),
        ip: "192.168.77.3".parse().unwrap(),
        pod_cidr: "10.244.3.0/24".parse().unwrap(),
    });
    sync_node(&c, &c.n1, "n1", Mode::Vxlan, three);
    let writes = sync_node(&c, &c.n1, "n1", Mode::Vxlan, nodes());
    // route + neighbour + FDB of n3, plus this Syncer's first apply of its two nft tables
    // (masquerade, tunnel).
    assert_eq!(writes, 3 + 2);
    // The received tunnel packets' notrack hooks the link holding the node IP, and n3 is
    // out of its node set.
    let tunnel = in_ns_output(&c.n1, &["nft", "list", "table", "netdev", "podnet-tunnel"]);
    assert!(
        tunnel.contains("hook ingress device \"eth0\"")
            && tunnel.contains("192.168.77.2")
            && !tunnel.contains("192.168.77.3"),
        "{tunnel}"
    );
    let fdb = in_ns_output(&c.n1, &["bridge", "fdb", "show", "dev", "podnet.vxlan"]);
    assert!(
        !fdb.contains("192.168.77.3") && fdb.contains("192.168.77.2"),
        "{fdb}"
    );
    let neigh = in_ns_output(&c.n1, &["ip", "neigh", "show", "dev", "podnet.vxlan"]);
    assert!(
        !neigh.contains("10.244.3.0") && neigh.contains("10.244.2.0"),
        "{neigh}"
    );
}

#[test]
fn masquerade_rewrites_only_egress_leaving_the_cluster() {
    let c = cluster("m");
    for (ns, name) in [(&c.n1, "n1"), (&c.n2, "n2")] {
        sync_node(&c, ns, name, Mode::HostGw, nodes());
    }
    // pod → outside: the node IP arrives.
    assert_eq!(tcp_to(&c.ext, &c.p1, "192.168.77.100:7101"), "192.168.77.1");
    // pod → another node's IP and pod → pod: the pod IP arrives.
    assert_eq!(tcp_to(&c.n2, &c.p1, "192.168.77.2:7102"), "10.244.1.2");
    assert_eq!(tcp_to(&c.p2, &c.p1, "10.244.2.2:7103"), "10.244.1.2");
    // node → pod is not NATed either.
    assert_eq!(tcp_to(&c.p1, &c.n2, "10.244.1.2:7104"), "192.168.77.2");
    let table = in_ns_output(&c.n1, &["nft", "list", "table", "ip", "podnet-nat"]);
    assert!(
        table.contains("masquerade") && table.contains("192.168.77.2"),
        "{table}"
    );
}

#[test]
fn masquerade_exceptions_keep_the_pod_address() {
    let c = cluster("e");
    // The outside host routes the cluster CIDR back via n1 (a peered network would).
    ip(&c.ext, "route add 10.244.0.0/16 via 192.168.77.1");
    let except: Vec<ipnet::Ipv4Net> = vec![
        "192.168.77.96/29".parse().unwrap(),
        "192.168.77.100/32".parse().unwrap(),
        "172.16.0.0/12".parse().unwrap(),
    ];
    sync_node_except(&c, &c.n1, "n1", Mode::HostGw, nodes(), except.clone());
    sync_node(&c, &c.n2, "n2", Mode::HostGw, nodes());
    // pod → an excepted outside address: the pod's own address arrives.
    assert_eq!(tcp_to(&c.ext, &c.p1, "192.168.77.100:7111"), "10.244.1.2");
    // The other node still masquerades everything leaving the cluster.
    assert_eq!(tcp_to(&c.ext, &c.p2, "192.168.77.100:7112"), "192.168.77.2");
    let table = in_ns_output(&c.n1, &["nft", "list", "table", "ip", "podnet-nat"]);
    assert!(
        table.contains("set no-masquerade")
            && table.contains("192.168.77.96/29")
            && table.contains("172.16.0.0/12")
            && table.contains("ip daddr != @no-masquerade masquerade"),
        "{table}"
    );
    // Without exceptions again: masqueraded (the table is replaced whole).
    sync_node(&c, &c.n1, "n1", Mode::HostGw, nodes());
    assert_eq!(tcp_to(&c.ext, &c.p1, "192.168.77.100:7113"), "192.168.77.1");
}

#[test]
fn replacing_the_nat_table_keeps_established_connections() {
    let c = cluster("e");
    sync_node(&c, &c.n1, "n1", Mode::HostGw, nodes());
    let addr: SocketAddr = "192.168.77.100:7201".parse().unwrap();
    let server = serve_once(&c.ext, addr);
    let p1 = netns::named_path(&c.p1);
    let n1 = c.n1.clone();
    let (step_tx, step_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let fd = netns::open(p1).unwrap();
        let _g = netns::enter(&fd).unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.write_all(b"before,").unwrap();
        sent_tx.send(()).unwrap();
        step_rx.recv().unwrap();
        s.write_all(b"after").unwrap();
    });
    sent_rx.recv().unwrap();
    // Replace the table atomically with a different node set, twice.
    in_ns(&n1, || {
        let mut nft = LinuxNft;
        let cidr = "10.244.0.0/16".parse().unwrap();
        nft.replace_table(&render_masquerade(
            cidr,
            &[],
            &["192.168.77.9".parse().unwrap()],
            podnet_nodenet::Mode::Vxlan,
        ))
        .unwrap();
        nft.replace_table(&render_masquerade(
            cidr,
            &[],
            &[],
            podnet_nodenet::Mode::HostGw,
        ))
        .unwrap();
    });
    step_tx.send(()).unwrap();
    client.join().unwrap();
    let (peer, got) = server.join().unwrap();
    assert_eq!(peer.ip().to_string(), "192.168.77.1");
    assert_eq!(got, b"before,after");
    drop(c.lab);
}
