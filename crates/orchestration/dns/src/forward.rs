//! Orchestration: forwarding to the upstream servers — UDP with an EDNS0 OPT (1232
//! bytes) first, the same question again over TCP when the answer comes back truncated,
//! the next upstream when one does not answer within the timeout (or answers something
//! unreadable). The caller turns "nobody answered" into SERVFAIL.
//!
//! Each exchange uses a fresh ephemeral UDP socket (a random source port per query) and
//! a random ID; replies whose ID or question do not match are ignored (RFC 5452 §9.1).

use podnet_dns::Stored;
use podnet_dns::wire;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

/// The upstreams and how long each one gets.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    counter: AtomicU64,
    random: std::hash::RandomState,
}

#[derive(Debug)]
enum Failure {
    Timeout,
    Io(std::io::Error),
    Unreadable,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "no answer in time"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Unreadable => write!(f, "an answer to another question"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder {
            upstreams,
            timeout,
            counter: AtomicU64::new(0),
            random: std::hash::RandomState::new(),
        }
    }

    fn random_id(&self) -> u16 {
        let mut h = self.random.build_hasher();
        h.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// Asks the upstreams, in order, for (lowercase name, type, class).
    pub async fn exchange(&self, lname: &[u8], qtype: u16, qclass: u16) -> Option<Stored> {
        let id = self.random_id();
        let mut query = Vec::with_capacity(lname.len() + 32);
        wire::write_header(&mut query, id, wire::flag::RD, [1, 0, 0, 1]);
        query.extend_from_slice(lname);
        query.extend_from_slice(&qtype.to_be_bytes());
        query.extend_from_slice(&qclass.to_be_bytes());
        let question = query[wire::HEADER_LEN..].to_vec();
        wire::push_opt(&mut query, wire::Rcode::NoError);
        for up in &self.upstreams {
            let reply = match self.udp(*up, &query, id, &question).await {
                Ok(r) if r[2] & 0x02 != 0 => self.tcp(*up, &query, id, &question).await,
                r => r,
            };
            match reply.map(|r| Stored::from_response(&r)) {
                Ok(Some(s)) => return Some(s),
                Ok(None) => tracing::debug!(upstream = %up, "unreadable answer"),
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, name = %wire::name_to_string(lname), "upstream failed")
                }
            }
        }
        None
    }

    async fn udp(
        &self,
        up: SocketAddr,
        query: &[u8],
        id: u16,
        question: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let local: IpAddr = match up {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let sock = UdpSocket::bind((local, 0)).await?;
        sock.connect(up).await?;
        sock.send(query).await?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(Failure::Timeout),
            };
            if matches(&buf[..n], id, question) {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    async fn tcp(
        &self,
        up: SocketAddr,
        query: &[u8],
        id: u16,
        question: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let exchange = async {
            let mut s = TcpStream::connect(up).await?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            s.write_all(&framed).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await?;
            Ok::<_, Failure>(buf)
        };
        let buf = timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failure::Timeout)??;
        if matches(&buf, id, question) {
            Ok(buf)
        } else {
            Err(Failure::Unreadable)
        }
    }
}

/// A response to our query: QR set, our ID, our question (names compared ignoring case).
fn matches(msg: &[u8], id: u16, question: &[u8]) -> bool {
    if msg.len() < wire::HEADER_LEN + question.len() || msg[2] & 0x80 == 0 {
        return false;
    }
    if u16::from_be_bytes([msg[0], msg[1]]) != id || msg[4..6] != [0, 1] {
        return false;
    }
    let theirs = &msg[wire::HEADER_LEN..wire::HEADER_LEN + question.len()];
    theirs.eq_ignore_ascii_case(question)
}

/// The `nameserver` lines of a resolv.conf, port 53 (what CoreDNS's
/// `forward . /etc/resolv.conf` uses; a DNS pod runs with `dnsPolicy: Default`, so this
/// is the node's resolver, not the cluster DNS itself).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// An upstream given as `IP` (port 53) or `IP:PORT` / `[IPv6]:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resolv_conf_and_upstream_flags() {
        let conf =
            "# c\nsearch x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\noptions ndots:5\n";
        assert_eq!(
            upstreams_from_resolv_conf(conf),
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(parse_upstream("10.0.0.1").unwrap().port(), 53);
        assert_eq!(parse_upstream("10.0.0.1:5353").unwrap().port(), 5353);
        assert_eq!(parse_upstream("[::1]:54").unwrap().port(), 54);
        assert!(parse_upstream("dns.example").is_err());
    }
}
