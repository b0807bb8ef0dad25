//! Connect (DNS included) and tunnel idle timeouts.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use sidecar::resolve::{Resolve, ResolveFuture};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A resolver that never answers: only the connect timeout can end the wait.
struct Unanswering;

impl Resolve for Unanswering {
    fn resolve<'a>(&'a self, _: &'a str) -> ResolveFuture<'a> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn connect_timeout_covers_dns_and_answers_504() {
    let extras = sidecar::Extras { resolver: Some(Arc::new(Unanswering)), ..Default::default() };
    let sc = Sidecar::start_with(config(&["--connect-timeout-ms", "200"], &[]), extras).await;
    let (status, headers, _) = proxy_get(sc.addr, "http://slow-dns.test/").await;
    assert_eq!((status.as_u16(), headers["x-sidecar-error"].to_str().unwrap()), (504, "connect_timeout"));
    let (head, _) = connect_tunnel(sc.addr, "slow-dns.test:443").await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    sc.healthy().await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    // An echo that never closes by itself: it only answers what it gets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let cfg = config(&["--allow-cidr", "127.0.0.1/32", "--tunnel-idle-timeout-secs", "1"], &[]);
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    let (head, mut s) = connect_tunnel(sc.addr, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"hi").await.unwrap();
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"hi");
    // Now silence: the sidecar closes the tunnel after the idle timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle tunnel still open");
    eventually("tunnel gauge back to zero", || async { sc.metrics().await.contains("sidecar_open_tunnels 0") }).await;
    sc.stop().await.unwrap();
}
