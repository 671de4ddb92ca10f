//! Orchestration: the built-in echo workload — every answer is one line naming the pod that
//! answered and the peer address it saw, so connectivity checks can assert both who served
//! a request and whether the source address survived (no SNAT between pods) or was
//! masqueraded.
//!
//! Like `agnhost netexec` (the Kubernetes e2e workhorse), one process serves every declared
//! port. Unlike it, the same port answers raw TCP (the line right away), HTTP/1.1 (the line
//! as a `text/plain` body) and UDP (the line as the reply datagram), and the answer is one
//! machine-parsable line ([`parse_reply`]) rather than JSON, so `busybox wget`, `curl`, `nc`
//! and a plain `connect` all read it.
//!
//! SCTP ports answer an INIT with an INIT-ACK whose State Cookie is the line
//! ([`crate::sctp`]), spoken on a raw socket: the lab's kernel has no SCTP stack
//! (`CONFIG_IP_SCTP` unset, so no SCTP sockets) but does track and NAT SCTP. That first
//! exchange is all a Service needs to show: the INIT is DNATed to an endpoint (the line names
//! it and the source it saw), the INIT-ACK is un-NATed back (the client accepts it only from
//! the address and port it sent to, with its own tag) with the CRC32c recomputed, and
//! conntrack holds the SCTP flow. Not proven: data transfer, multi-homing.
//!
//! Environment: `POD_NAME`, `POD_NAMESPACE`, `POD_IP`, `NODE_NAME`, `CONTAINER_NAME`,
//! `ECHO_TCP_PORTS`, `ECHO_UDP_PORTS` and `ECHO_SCTP_PORTS` (comma lists). With no port at
//! all it serves TCP 8080 — a pod of image `podnet/echo` that declares no port still answers
//! somewhere. `ECHO_DRAIN_SECONDS` (default 0: SIGTERM ends it at once): on SIGTERM keep
//! serving that long, then exit 0 — what a preStop drain gives a real server, so a pod
//! being deleted keeps answering while its endpoint is terminating.

use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// The port served when the environment declares none.
pub const DEFAULT_PORT: u16 = 8080;

/// How long a TCP connection may stay silent before the line is written anyway.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(50);
/// How long an HTTP client may take to finish sending its request head.
const HTTP_HEAD_WAIT: Duration = Duration::from_secs(2);

/// Methods that make a connection an HTTP request.
const HTTP_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Who this process is: the fixed part of every answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pod: String,
    pub namespace: String,
    pub ip: String,
    pub node: String,
    pub container: String,
}

/// One parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReply {
    pub pod: String,
    pub namespace: String,
    pub ip: String,
    pub node: String,
    pub container: String,
    pub peer: SocketAddr,
}

/// The ports to serve.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ports {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    pub sctp: Vec<u16>,
}

/// Pure: the answer line for one peer.
pub fn render_reply(id: &Identity, peer: SocketAddr) -> String {
    format!(
        "pod={} namespace={} ip={} node={} container={} peer={peer}\n",
        id.pod, id.namespace, id.ip, id.node, id.container
    )
}

/// Pure: parses one answer line (a trailing newline and surrounding blanks are fine).
pub fn parse_reply(line: &str) -> Option<EchoReply> {
    let (mut pod, mut namespace, mut ip, mut node, mut container, mut peer) =
        (None, None, None, None, None, None);
    for field in line.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        let slot = match key {
            "pod" => &mut pod,
            "namespace" => &mut namespace,
            "ip" => &mut ip,
            "node" => &mut node,
            "container" => &mut container,
            "peer" => &mut peer,
            _ => return None,
        };
        if slot.replace(value.to_string()).is_some() {
            return None;
        }
    }
    Some(EchoReply {
        pod: pod?,
        namespace: namespace?,
        ip: ip?,
        node: node?,
        container: container?,
        peer: peer?.parse().ok()?,
    })
}

/// Pure: a comma list of ports (blanks ignored).
pub fn parse_ports(list: &str) -> Result<Vec<u16>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u16>().with_context(|| format!("bad port {s:?}")))
        .collect()
}

/// Pure: whether the first bytes of a connection are (the start of) an HTTP request line.
/// `None` while they are a strict prefix of a method and more bytes could decide.
fn looks_like_http(head: &[u8]) -> Option<bool> {
    for m in HTTP_METHODS {
        let with_space = format!("{m} ");
        let w = with_space.as_bytes();
        if head.starts_with(w) {
            return Some(true);
        }
        if w.starts_with(head) {
            return None;
        }
    }
    Some(false)
}

/// Pure: the HTTP/1.1 response carrying `body`.
fn render_http(body: &str, head_only: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}

/// Pure: `ECHO_DRAIN_SECONDS` (blank is 0).
pub fn parse_drain(s: &str) -> Result<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Duration::ZERO);
    }
    s.parse::<u64>()
        .map(Duration::from_secs)
        .with_context(|| format!("bad number of seconds {s:?}"))
}

/// Serves until `stop` completes, then `drain` longer, then returns `Ok` (or the servers'
/// error, if they fail first).
pub async fn serve_with_drain(
    id: Identity,
    servers: Servers,
    stop: impl Future<Output = ()>,
    drain: Duration,
) -> Result<()> {
    let drained = async {
        stop.await;
        eprintln!("echo: stopping: still serving for {drain:?}");
        tokio::time::sleep(drain).await;
        eprintln!("echo: drained");
    };
    tokio::select! {
        r = serve(id, servers) => r,
        () = drained => Ok(()),
    }
}

/// Reads identity and ports from the environment and serves until killed (or, with
/// `ECHO_DRAIN_SECONDS`, until that long after SIGTERM).
pub fn run_from_env() -> Result<()> {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let id = Identity {
        pod: var("POD_NAME"),
        namespace: var("POD_NAMESPACE"),
        ip: var("POD_IP"),
        node: var("NODE_NAME"),
        container: var("CONTAINER_NAME"),
    };
    let mut ports = Ports {
        tcp: parse_ports(&var("ECHO_TCP_PORTS")).context("ECHO_TCP_PORTS")?,
        udp: parse_ports(&var("ECHO_UDP_PORTS")).context("ECHO_UDP_PORTS")?,
        sctp: parse_ports(&var("ECHO_SCTP_PORTS")).context("ECHO_SCTP_PORTS")?,
    };
    if ports.tcp.is_empty() && ports.udp.is_empty() && ports.sctp.is_empty() {
        ports.tcp.push(DEFAULT_PORT);
    }
    let drain = parse_drain(&var("ECHO_DRAIN_SECONDS")).context("ECHO_DRAIN_SECONDS")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the echo runtime")?;
    let result = rt.block_on(async move {
        // Caught before anything is served, and only when asked: without a drain SIGTERM
        // keeps its default (the process ends at once).
        let mut term = if drain.is_zero() {
            None
        } else {
            Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("catching SIGTERM")?,
            )
        };
        let servers = bind(Ipv4Addr::UNSPECIFIED, &ports).await?;
        eprintln!(
            "echo: serving tcp {:?} udp {:?} sctp {:?}",
            ports.tcp, ports.udp, ports.sctp
        );
        match &mut term {
            None => serve(id, servers).await,
            Some(term) => {
                let stop = async {
                    term.recv().await;
                };
                serve_with_drain(id, servers, stop, drain).await
            }
        }
    });
    // The SCTP server is a blocking thread that never returns: do not wait for it.
    rt.shutdown_background();
    result
}

/// Bound sockets, ready to serve.
pub struct Servers {
    pub tcp: Vec<TcpListener>,
    pub udp: Vec<UdpSocket>,
    /// The raw SCTP socket and the ports it answers (none when no SCTP port is served).
    pub sctp: Option<(crate::sctp::Listener, Vec<u16>)>,
}

/// Binds every port on `addr` (port 0 binds an ephemeral one; see the sockets' local
/// addresses). SCTP ports share one raw socket that sees every address of the namespace.
pub async fn bind(addr: Ipv4Addr, ports: &Ports) -> Result<Servers> {
    let mut servers = Servers {
        tcp: Vec::new(),
        udp: Vec::new(),
        sctp: None,
    };
    if !ports.sctp.is_empty() {
        servers.sctp = Some((crate::sctp::Listener::open()?, ports.sctp.clone()));
    }
    for &p in &ports.tcp {
        servers.tcp.push(
            TcpListener::bind((addr, p))
                .await
                .with_context(|| format!("binding tcp {addr}:{p}"))?,
        );
    }
    for &p in &ports.udp {
        servers.udp.push(
            UdpSocket::bind((addr, p))
                .await
                .with_context(|| format!("binding udp {addr}:{p}"))?,
        );
    }
    Ok(servers)
}

/// Serves every socket until one fails for good.
pub async fn serve(id: Identity, servers: Servers) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for l in servers.tcp {
        let id = id.clone();
        tasks.spawn(async move {
            loop {
                let (conn, peer) = match l.accept().await {
                    Ok(c) => c,
                    // Out of descriptors and the like: back off, keep serving.
                    Err(e) => {
                        eprintln!("echo: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let line = render_reply(&id, peer);
                tokio::spawn(async move {
                    let _ = answer_tcp(conn, &line).await;
                });
            }
        });
    }
    for s in servers.udp {
        let id = id.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((_, peer)) => {
                        let _ = s.send_to(render_reply(&id, peer).as_bytes(), peer).await;
                    }
                    Err(e) => {
                        eprintln!("echo: udp recv: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    if let Some((listener, ports)) = servers.sctp {
        let id = id.clone();
        tasks.spawn_blocking(move || {
            if let Err(e) = listener.serve(&id, &ports) {
                eprintln!("echo: {e:#}");
            }
        });
    }
    if tasks.is_empty() {
        bail!("nothing to serve");
    }
    // The servers loop forever: the first one to end is an error.
    match tasks.join_next().await {
        Some(Err(e)) => Err(e).context("echo server task"),
        _ => bail!("an echo server stopped"),
    }
}

async fn answer_tcp(mut conn: TcpStream, line: &str) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
    // Decide raw vs HTTP from the first bytes, waiting at most FIRST_BYTES_WAIT.
    let http = loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
            Ok(Ok(n)) => {
                head.extend_from_slice(&buf[..n]);
                match looks_like_http(&head) {
                    Some(v) => break v,
                    None => continue,
                }
            }
        }
    };
    if !http {
        conn.write_all(line.as_bytes()).await?;
        return conn.shutdown().await;
    }
    // Read the rest of the request head so closing does not reset the connection.
    let deadline = tokio::time::Instant::now() + HTTP_HEAD_WAIT;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let head_only = head.starts_with(b"HEAD ");
    conn.write_all(render_http(line, head_only).as_bytes())
        .await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn id() -> Identity {
        Identity {
            pod: "web-1".into(),
            namespace: "default".into(),
            ip: "10.244.1.5".into(),
            node: "worker-1".into(),
            container: "echo".into(),
        }
    }

    #[test]
    fn reply_round_trips() {
        let peer: SocketAddr = "10.244.2.7:40000".parse().unwrap();
        let line = render_reply(&id(), peer);
        assert_eq!(
            line,
            "pod=web-1 namespace=default ip=10.244.1.5 node=worker-1 container=echo peer=10.244.2.7:40000\n"
        );
        let r = parse_reply(&line).unwrap();
        assert_eq!(r.pod, "web-1");
        assert_eq!(r.namespace, "default");
        assert_eq!(r.ip, "10.244.1.5");
        assert_eq!(r.node, "worker-1");
        assert_eq!(r.container, "echo");
        assert_eq!(r.peer, peer);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert_eq!(parse_reply(""), None);
        assert_eq!(parse_reply("HTTP/1.1 200 OK"), None);
        assert_eq!(
            parse_reply("pod=a namespace=b ip=c node=d container=e peer=nope"),
            None
        );
        assert_eq!(
            parse_reply("pod=a namespace=b ip=c node=d container=e"),
            None
        );
        assert_eq!(
            parse_reply("pod=a pod=a namespace=b ip=c node=d container=e peer=1.2.3.4:5"),
            None
        );
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        assert_eq!(parse_ports("80, 8080,").unwrap(), vec![80, 8080]);
        assert!(parse_ports("80,x").is_err());
    }

    #[test]
    fn http_detection() {
        assert_eq!(looks_like_http(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(looks_like_http(b"GE"), None);
        assert_eq!(looks_like_http(b"HEAD /"), Some(true));
        assert_eq!(looks_like_http(b"hello"), Some(false));
        assert_eq!(looks_like_http(b"GETX"), Some(false));
    }

    async fn start() -> (SocketAddr, SocketAddr) {
        let servers = bind(
            Ipv4Addr::LOCALHOST,
            &Ports {
                tcp: vec![0],
                udp: vec![0],
                sctp: vec![],
            },
        )
        .await
        .unwrap();
        let tcp = servers.tcp[0].local_addr().unwrap();
        let udp = servers.udp[0].local_addr().unwrap();
        tokio::spawn(serve(id(), servers));
        (tcp, udp)
    }

    #[test]
    fn drain_parses() {
        assert_eq!(parse_drain("").unwrap(), Duration::ZERO);
        assert_eq!(parse_drain(" 20 ").unwrap(), Duration::from_secs(20));
        assert!(parse_drain("-1").is_err());
        assert!(parse_drain("soon").is_err());
    }

    #[tokio::test]
    async fn after_stop_it_keeps_answering_for_the_drain_then_ends() {
        let servers = bind(
            Ipv4Addr::LOCALHOST,
            &Ports {
                tcp: vec![0],
                udp: vec![],
                sctp: vec![],
            },
        )
        .await
        .unwrap();
        let tcp = servers.tcp[0].local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let drain = Duration::from_millis(600);
        let task = tokio::spawn(serve_with_drain(id(), servers, stop, drain));
        let answer = async || {
            let mut c = TcpStream::connect(tcp).await?;
            let mut out = String::new();
            c.read_to_string(&mut out).await?;
            std::io::Result::Ok(parse_reply(&out).map(|r| r.pod))
        };
        assert_eq!(answer().await.unwrap().as_deref(), Some("web-1"));
        let stopped = tokio::time::Instant::now();
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(answer().await.unwrap().as_deref(), Some("web-1"));
        assert!(!task.is_finished(), "ended before the drain was over");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(stopped.elapsed() >= drain);
        // The listener tasks are aborted with the servers; give the abort a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(answer().await.is_err(), "still listening after the drain");
    }

    #[tokio::test]
    async fn tcp_raw_connect_gets_the_line() {
        let (tcp, _) = start().await;
        let mut c = TcpStream::connect(tcp).await.unwrap();
        let local = c.local_addr().unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        let r = parse_reply(&out).unwrap();
        assert_eq!(r.peer, local);
        assert_eq!(r.pod, "web-1");
        assert!(out.ends_with('\n') && out.lines().count() == 1);
    }

    #[tokio::test]
    async fn tcp_non_http_bytes_get_the_line() {
        let (tcp, _) = start().await;
        let mut c = TcpStream::connect(tcp).await.unwrap();
        let local = c.local_addr().unwrap();
        c.write_all(b"ping\n").await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert_eq!(parse_reply(&out).unwrap().peer, local);
    }

    #[tokio::test]
    async fn http_get_gets_a_valid_response() {
        let (tcp, _) = start().await;
        let mut c = TcpStream::connect(tcp).await.unwrap();
        let local = c.local_addr().unwrap();
        // Split the request line to exercise the partial-method wait.
        c.write_all(b"GE").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        c.write_all(b"T / HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain"));
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(parse_reply(body).unwrap().peer, local);
    }

    #[tokio::test]
    async fn http_head_has_no_body() {
        let (tcp, _) = start().await;
        let mut c = TcpStream::connect(tcp).await.unwrap();
        c.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"));
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn udp_datagram_gets_the_line() {
        let (_, udp) = start().await;
        let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        s.send_to(b"x", udp).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, udp);
        let r = parse_reply(std::str::from_utf8(&buf[..n]).unwrap()).unwrap();
        assert_eq!(r.peer, s.local_addr().unwrap());
        assert_eq!(r.container, "echo");
    }
}
