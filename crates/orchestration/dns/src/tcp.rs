//! Orchestration: DNS over TCP (RFC 1035 §4.2.2, RFC 7766) — each message behind a
//! 2-byte length, several queries per connection answered in order, the connection
//! closed after `idle` without a complete query, or after a message that is not a query.

use crate::Shared;
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, idle: Duration) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: keep serving the others.
                tracing::warn!(error = %e, "TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = connection(stream, shared, idle).await;
        });
    }
}

async fn connection(mut s: TcpStream, shared: Arc<Shared>, idle: Duration) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match timeout(idle, s.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        buf.resize(u16::from_be_bytes(len) as usize, 0);
        match timeout(idle, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let Some(reply) = crate::answer_slow(&shared, &buf, true).await else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        s.write_all(&framed).await?;
    }
}
