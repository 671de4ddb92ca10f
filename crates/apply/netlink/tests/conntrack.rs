//! Apply-layer tests of `podnet_netlink::conntrack` in fresh network namespaces (prefix
//! `pct<pid>-`, removed on drop, also when a test panics). Needs root, `ip`, `nft` (to set
//! up DNAT rules inside the namespaces) and the `conntrack` tool (Debian package
//! `conntrack`, installed by scripts/setup), used only to look at the table independently
//! of the code under test.
//!
//! Layout of each test: a client namespace `c` (10.77.0.1 on `c0`) and a server namespace
//! `s` (10.77.0.2 and 10.77.0.3 on `s0`) joined by a veth. The client's nat/output chain
//! DNATs Service addresses to the endpoints A = 10.77.0.2:8080 and B = 10.77.0.3:8080, so
//! the conntrack entries live in the client namespace.

use podnet_netlink::conntrack::{Conntrack, ConntrackError, Entry};
use podnet_netlink::netns;
use std::io::Write;
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const A: &str = "10.77.0.2:8080";
const B: &str = "10.77.0.3:8080";
const VIP1: &str = "10.96.0.10:53";
const VIP2: &str = "10.96.0.11:53";

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().expect("socket address")
}

/// Named namespaces removed on drop.
struct Namespaces {
    prefix: String,
    made: Vec<String>,
}

impl Namespaces {
    fn new(tag: &str) -> Namespaces {
        Namespaces {
            prefix: format!("pct{}-{tag}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn ns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        let _ = netns::delete_named(&full);
        netns::create_named(&full).expect("create namespace");
        self.made.push(full.clone());
        full
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.made {
            let _ = netns::delete_named(n);
        }
    }
}

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

/// `ip netns exec NS nft -f -` with `script` (one atomic transaction).
fn nft_f(ns: &str, script: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft (is nftables installed?)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write nft script");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f in {ns} failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Replaces the client's NAT table: each `(proto, vip, endpoint)` becomes a DNAT rule.
fn dnat_rules(ns: &str, rules: &[(&str, &str, &str)]) {
    let mut script = String::from(
        "table ip ct-test\ndelete table ip ct-test\ntable ip ct-test {\n\
         \tchain out {\n\t\ttype nat hook output priority -100; policy accept;\n",
    );
    for (proto, vip, ep) in rules {
        let vip = addr(vip);
        script += &format!(
            "\t\tip daddr {} {proto} dport {} dnat to {ep}\n",
            vip.ip(),
            vip.port()
        );
    }
    script += "\t}\n}\n";
    nft_f(ns, &script);
}

/// `conntrack -L -p PROTO` in `ns`: one line per entry.
fn conntrack_tool(ns: &str, proto: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "conntrack", "-L", "-p", proto])
        .output()
        .expect("run conntrack (apt-get install conntrack; see scripts/setup)");
    assert!(
        out.status.success(),
        "conntrack -L in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The tool's line of the entry whose original tuple is `src` → `dst`, if any.
fn tool_line(lines: &[String], src: &str, dst: &str) -> Option<String> {
    let (src, dst) = (addr(src), addr(dst));
    let needle = format!(
        "src={} dst={} sport={} dport={} ",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    );
    let found: Vec<&String> = lines.iter().filter(|l| l.contains(&needle)).collect();
    assert!(found.len() <= 1, "several entries for {needle}: {found:?}");
    found.first().map(|l| l.to_string())
}

/// A client and a server namespace joined by a veth, with sockets made inside them.
struct Lab {
    client: String,
    server: String,
    _nss: Namespaces,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let mut nss = Namespaces::new(tag);
        let (client, server) = (nss.ns("c"), nss.ns("s"));
        ip(
            &client,
            &format!("link add c0 type veth peer name s0 netns {server}"),
        );
        ip(&client, "addr add 10.77.0.1/24 dev c0");
        ip(&client, "link set lo up");
        ip(&client, "link set c0 up");
        ip(&client, "route add 10.96.0.0/12 dev c0");
        ip(&server, "addr add 10.77.0.2/24 dev s0");
        ip(&server, "addr add 10.77.0.3/24 dev s0");
        ip(&server, "link set lo up");
        ip(&server, "link set s0 up");
        Lab {
            client,
            server,
            _nss: nss,
        }
    }

    fn in_ns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
        let fd = netns::open(netns::named_path(ns)).expect("open namespace");
        netns::run_in(&fd, f).expect("enter namespace")
    }

    /// A UDP socket bound to `at` in the server namespace.
    fn server_udp(&self, at: &str) -> UdpSocket {
        let s = Lab::in_ns(&self.server, || UdpSocket::bind(at)).expect("bind server socket");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        s
    }

    /// A UDP socket on the fixed source port `port` in the client namespace.
    fn client_udp(&self, port: u16) -> UdpSocket {
        Lab::in_ns(&self.client, || UdpSocket::bind(("0.0.0.0", port))).expect("bind client")
    }

    fn conntrack(&self) -> Conntrack {
        let fd = netns::open(netns::named_path(&self.client)).expect("open namespace");
        Conntrack::open_in(&fd).expect("open ctnetlink socket")
    }
}

/// The datagrams `sock` receives within `wait`.
fn received(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    let until = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn send(sock: &UdpSocket, to: &str, what: &str) {
    sock.send_to(what.as_bytes(), to).expect("send datagram");
}

fn client(port: u16) -> String {
    format!("10.77.0.1:{port}")
}

/// Exactly the UDP entries DNATed to A go; an entry DNATed to B, an entry sent to A
/// directly (not NATed) and a TCP connection DNATed to A stay. Our dump agrees with the
/// `conntrack` tool; deleting again finds nothing; deleting vanished entries is no error.
#[test]
fn deletes_only_entries_dnated_to_the_endpoint() {
    let lab = Lab::new("only");
    dnat_rules(
        &lab.client,
        &[("udp", VIP1, A), ("udp", VIP2, B), ("tcp", VIP1, A)],
    );
    let (a, b) = (lab.server_udp(A), lab.server_udp(B));
    let listener = Lab::in_ns(&lab.server, || TcpListener::bind(A)).expect("bind tcp");

    let (c1, c2, c3) = (
        lab.client_udp(40001),
        lab.client_udp(40002),
        lab.client_udp(40003),
    );
    send(&c1, VIP1, "via-vip1");
    send(&c2, VIP2, "via-vip2");
    send(&c3, A, "direct");
    let tcp = Lab::in_ns(&lab.client, || TcpStream::connect(VIP1)).expect("tcp via VIP1");
    let _accepted = listener.accept().expect("accept");
    let tcp_src = tcp.local_addr().expect("tcp local address").to_string();
    let wait = Duration::from_millis(300);
    let mut at_a = received(&a, wait);
    at_a.sort();
    assert_eq!(at_a, ["direct", "via-vip1"]);
    assert_eq!(received(&b, wait), ["via-vip2"]);

    // The tool sees the three UDP entries, NATed as set up.
    let lines = conntrack_tool(&lab.client, "udp");
    let l1 = tool_line(&lines, &client(40001), VIP1).expect("entry c1 → VIP1");
    assert!(
        l1.contains("src=10.77.0.2 dst=10.77.0.1 sport=8080 dport=40001"),
        "{l1}"
    );
    let l2 = tool_line(&lines, &client(40002), VIP2).expect("entry c2 → VIP2");
    assert!(
        l2.contains("src=10.77.0.3 dst=10.77.0.1 sport=8080 dport=40002"),
        "{l2}"
    );
    assert!(tool_line(&lines, &client(40003), A).is_some(), "{lines:?}");
    assert!(tool_line(&conntrack_tool(&lab.client, "tcp"), &tcp_src, VIP1).is_some());

    // Our dump agrees with the tool.
    let mut ct = lab.conntrack();
    let ours = ct.dump(17).expect("dump udp");
    assert_eq!(ours.len(), lines.len(), "ours: {ours:?}\ntool: {lines:?}");
    let e1 = ours
        .iter()
        .find(|e| e.orig.src == addr(&client(40001)))
        .expect("c1 in our dump");
    assert_eq!(
        (e1.proto, e1.orig.dst, e1.reply.src, e1.reply.dst),
        (17, addr(VIP1), addr(A), addr(&client(40001)))
    );
    assert!(ours.iter().all(|e| e.proto == 17));
    let to_a: Vec<Entry> = ct.dump_dnat_to(17, addr(A)).expect("dump dnat to A");
    assert_eq!(to_a, [*e1]);

    // The delete: exactly one entry goes.
    assert_eq!(ct.delete_dnat_to(17, addr(A)).expect("delete"), 1);
    let lines = conntrack_tool(&lab.client, "udp");
    assert_eq!(tool_line(&lines, &client(40001), VIP1), None, "{lines:?}");
    assert!(
        tool_line(&lines, &client(40002), VIP2).is_some(),
        "{lines:?}"
    );
    assert!(tool_line(&lines, &client(40003), A).is_some(), "{lines:?}");
    assert!(
        tool_line(&conntrack_tool(&lab.client, "tcp"), &tcp_src, VIP1).is_some(),
        "a TCP entry went with the UDP delete"
    );
    assert_eq!(ct.delete_dnat_to(17, addr(A)).expect("delete again"), 0);

    // The protocol counts: now the TCP connection DNATed to A goes.
    assert_eq!(ct.delete_dnat_to(6, addr(A)).expect("delete tcp"), 1);
    assert_eq!(
        tool_line(&conntrack_tool(&lab.client, "tcp"), &tcp_src, VIP1),
        None
    );

    // Entries that vanished between dump and delete are not an error, nor counted.
    let to_b = ct.dump_dnat_to(17, addr(B)).expect("dump dnat to B");
    assert_eq!(to_b.len(), 1);
    assert_eq!(ct.delete(&to_b).expect("delete B's"), 1);
    assert_eq!(ct.delete(&to_b).expect("delete B's again"), 0);

    // The direct, non-NATed entry survived everything.
    let lines = conntrack_tool(&lab.client, "udp");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(tool_line(&lines, &client(40003), A).is_some(), "{lines:?}");

    assert!(matches!(
        ct.dump_dnat_to(1, addr(A)),
        Err(ConntrackError::Unsupported(1))
    ));
}

/// Several endpoints in one exchange: each endpoint's DNATed entries go, nothing else.
#[test]
fn deletes_for_several_endpoints_at_once() {
    let lab = Lab::new("many");
    dnat_rules(&lab.client, &[("udp", VIP1, A), ("udp", VIP2, B)]);
    let (_a, _b) = (lab.server_udp(A), lab.server_udp(B));
    let clients: Vec<UdpSocket> = (0..6).map(|i| lab.client_udp(41000 + i)).collect();
    for (i, c) in clients.iter().enumerate() {
        send(c, if i % 2 == 0 { VIP1 } else { VIP2 }, "x");
    }
    send(&clients[0], A, "direct");
    let mut ct = lab.conntrack();
    // Entries appear once the packets passed the output hook; sendto returns after that.
    assert_eq!(ct.dump(17).expect("dump").len(), 7);
    let third = addr("10.77.0.4:8080");
    assert_eq!(
        ct.delete_dnat_to_any(17, &[addr(A), addr(B), third])
            .expect("delete many"),
        6
    );
    let left = ct.dump(17).expect("dump after");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].orig.dst, left[0].reply.src), (addr(A), addr(A)));
    assert_eq!(ct.delete_dnat_to_any(17, &[]).expect("nothing"), 0);
}

/// The bug this exists for: a UDP client sending from one fixed source port keeps its
/// entry, so after the Service's endpoint changes from A to B its datagrams still go to A
/// (a black hole once A is gone) — until the entry DNATed to A is deleted; the very next
/// datagram reaches B.
#[test]
fn fixed_port_udp_client_reaches_the_new_endpoint_after_the_delete() {
    let lab = Lab::new("move");
    let (a, b) = (lab.server_udp(A), lab.server_udp(B));
    let wait = Duration::from_millis(300);
    let c = lab.client_udp(40010);

    dnat_rules(&lab.client, &[("udp", VIP1, A)]);
    send(&c, VIP1, "1");
    assert_eq!(received(&a, wait), ["1"]);

    // The Service's endpoint changes to B; the client keeps its source port.
    dnat_rules(&lab.client, &[("udp", VIP1, B)]);
    for n in ["2", "3"] {
        send(&c, VIP1, n);
    }
    assert_eq!(
        received(&a, wait),
        ["2", "3"],
        "stale entry should still DNAT to A"
    );
    assert!(
        received(&b, wait).is_empty(),
        "B got datagrams before the delete"
    );
    let line = tool_line(&conntrack_tool(&lab.client, "udp"), &client(40010), VIP1)
        .expect("entry of the client");
    assert!(
        line.contains("src=10.77.0.2 dst=10.77.0.1 sport=8080"),
        "{line}"
    );

    let mut ct = lab.conntrack();
    assert_eq!(ct.delete_dnat_to(17, addr(A)).expect("delete"), 1);

    send(&c, VIP1, "4");
    assert_eq!(
        received(&b, wait),
        ["4"],
        "the next datagram should reach B"
    );
    assert!(
        received(&a, wait).is_empty(),
        "A still got datagrams after the delete"
    );
    let line = tool_line(&conntrack_tool(&lab.client, "udp"), &client(40010), VIP1)
        .expect("new entry of the client");
    assert!(
        line.contains("src=10.77.0.3 dst=10.77.0.1 sport=8080"),
        "{line}"
    );
    // Nothing is DNATed to A any more.
    assert!(ct.dump_dnat_to(17, addr(A)).expect("dump").is_empty());
}

/// More entries than one dump datagram and one delete `sendmsg` hold, with entries that
/// vanished in the middle of a batch: the count is exact and nothing else goes.
#[test]
fn many_entries_span_several_datagrams_and_sends() {
    let lab = Lab::new("big");
    dnat_rules(&lab.client, &[("udp", VIP1, A)]);
    let _a = lab.server_udp(A);
    const N: u16 = 700;
    for port in 42000..42000 + N {
        // The entry outlives the socket.
        send(&lab.client_udp(port), VIP1, "x");
    }
    send(&lab.client_udp(41999), A, "direct");
    let mut ct = lab.conntrack();
    let to_a = ct.dump_dnat_to(17, addr(A)).expect("dump");
    assert_eq!(to_a.len(), N as usize);
    assert_eq!(conntrack_tool(&lab.client, "udp").len(), N as usize + 1);

    // Every third entry goes first, so the big delete meets ENOENTs inside its batches.
    let gone: Vec<Entry> = to_a.iter().step_by(3).copied().collect();
    assert_eq!(ct.delete(&gone).expect("delete some"), gone.len());
    assert_eq!(
        ct.delete(&to_a).expect("delete all"),
        N as usize - gone.len()
    );
    assert_eq!(ct.delete_dnat_to(17, addr(A)).expect("delete again"), 0);
    assert_eq!(ct.delete(&to_a).expect("delete all again"), 0);
    let lines = conntrack_tool(&lab.client, "udp");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(tool_line(&lines, &client(41999), A).is_some(), "{lines:?}");
}
