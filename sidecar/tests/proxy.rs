//! The forward proxy and CONNECT tunnels against real local servers.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK_ALLOWED: &[&str] = &["--allow-cidr", "127.0.0.1/32"];

#[tokio::test]
async fn forwards_with_keep_alive_on_both_sides() {
    let origin = Origin::start().await;
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let mut client = Client::connect(sc.addr).await;
    for i in 0..3 {
        let body = format!("payload {i}");
        let req = Request::post(origin.url("/echo")).body(Full::new(Bytes::from(body.clone()))).unwrap();
        let (status, headers, got) = client.send(req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, body.as_bytes());
        assert_eq!(headers["x-end-to-end"], "kept");
    }
    assert_eq!(origin.seen.lock().unwrap().len(), 3);
    assert_eq!(origin.connections.load(std::sync::atomic::Ordering::SeqCst), 1, "upstream connection reused");
    let seen = origin.last();
    assert_eq!(seen.uri, "/echo", "origin gets origin-form");
    assert_eq!(seen.headers["host"], origin.addr.to_string());
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn chunked_bodies_both_ways() {
    let origin = Origin::start().await;
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let (status, _, body) = proxy_get(sc.addr, &origin.url("/chunked")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"first,second,third");

    // A chunked request body, written by hand.
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        origin.url("/echo"),
        origin.addr
    );
    let answer = raw_exchange(sc.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello world"), "{answer}");
    assert_eq!(&origin.last().body[..], b"hello world");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn hop_by_hop_headers_removed_both_directions() {
    let origin = Origin::start().await;
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let req = Request::get(origin.url("/"))
        .header("connection", "x-request-hop, keep-alive")
        .header("x-request-hop", "must go")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-internal-api-key", "runtime-chosen")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .unwrap();
    let (status, headers, _) = send(sc.addr, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = origin.last().headers;
    for h in ["x-request-hop", "keep-alive", "proxy-authorization", "proxy-connection", "te", "x-internal-api-key"] {
        assert!(!seen.contains_key(h), "{h} reached the origin");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    for h in ["x-response-hop", "keep-alive", "x-internal-api-key"] {
        assert!(!headers.contains_key(h), "{h} reached the client");
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn userinfo_trick_goes_to_the_real_host_and_is_stripped() {
    let origin = Origin::start().await;
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let url = format!("http://allowed.example:pw@{}/x", origin.addr);
    let (status, _, _) = proxy_get(sc.addr, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(origin.last().headers["host"], origin.addr.to_string());
    // Without the allowance the same trick aimed at metadata is refused.
    let (status, headers, _) = proxy_get(sc.addr, "http://allowed.example@169.254.169.254/latest/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sidecar-error"], "metadata");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn connect_tunnel_passes_half_close() {
    let echo = half_close_echo().await;
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let (head, mut s) = connect_tunnel(sc.addr, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping through the tunnel").await.unwrap();
    s.shutdown().await.unwrap(); // half-close: the echo answers only after seeing EOF
    let mut got = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, "echo:ping through the tunnel");
    let m = sc.metrics().await;
    assert!(m.contains("sidecar_tunnels_total 1"), "{m}");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn refusals_answer_403_with_reason_and_count() {
    let sc = Sidecar::start(config(&[], &[]), resolver(&[("evil.example", &["169.254.169.254"])])).await;
    let (status, headers, body) = proxy_get(sc.addr, "http://evil.example/latest/meta-data/").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sidecar-error"], "metadata");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("evil.example resolves to 169.254.169.254 is a cloud metadata address"), "{body}");
    let (head, _) = connect_tunnel(sc.addr, "127.0.0.1:22").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-sidecar-error: loopback"), "{head}");
    let m = sc.metrics().await;
    assert!(m.contains(r#"sidecar_denials_total{class="metadata",enforced="true"} 1"#), "{m}");
    assert!(m.contains(r#"sidecar_denials_total{class="loopback",enforced="true"} 1"#), "{m}");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn report_only_lets_through_and_counts() {
    let origin = Origin::start().await;
    let sc = Sidecar::start(config(&["--report-only"], &[]), resolver(&[])).await;
    let (status, _, _) = proxy_get(sc.addr, &origin.url("/")).await;
    assert_eq!(status, StatusCode::OK, "loopback origin reached in report-only mode");
    let m = sc.metrics().await;
    assert!(m.contains(r#"sidecar_denials_total{class="loopback",enforced="false"} 1"#), "{m}");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn names_are_resolved_once_and_judged_by_address() {
    let origin = Origin::start().await;
    // `origin.test` resolves to loopback: refused unless loopback is allowed.
    let sc = Sidecar::start(config(&[], &[]), resolver(&[("origin.test", &["127.0.0.1"])])).await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let (status, headers, _) = proxy_get(sc.addr, &url).await;
    assert_eq!(
        (status, &headers["x-sidecar-error"]),
        (StatusCode::FORBIDDEN, &"loopback".parse::<http::HeaderValue>().unwrap())
    );
    sc.stop().await.unwrap();

    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[("origin.test", &["127.0.0.1"])])).await;
    let (status, _, _) = proxy_get(sc.addr, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(origin.last().headers["host"], format!("origin.test:{}", origin.addr.port()));
    // A DNS failure is a 502 with its own label.
    let (status, headers, _) = proxy_get(sc.addr, "http://nxdomain.test/").await;
    assert_eq!((status, headers["x-sidecar-error"].to_str().unwrap()), (StatusCode::BAD_GATEWAY, "dns_failure"));
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn local_api_served_for_own_address_in_any_spelling() {
    let sc = Sidecar::start(config(&[], &[]), resolver(&[])).await;
    let port = sc.addr.port();
    for host in ["127.0.0.1", "localhost", "127.1", "2130706433"] {
        let (status, _, body) = proxy_get(sc.addr, &format!("http://{host}:{port}/healthz")).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]), "{host}");
    }
    // Another loopback port is not us: refused.
    let (status, _, _) = proxy_get(sc.addr, &format!("http://127.0.0.1:{}/", port.wrapping_add(1).max(1))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    // Bind and drop a listener to get a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let (status, headers, _) = proxy_get(sc.addr, &format!("http://{dead}/")).await;
    assert_eq!((status, headers["x-sidecar-error"].to_str().unwrap()), (StatusCode::BAD_GATEWAY, "connect_failed"));
    let (head, _) = connect_tunnel(sc.addr, &dead.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    sc.healthy().await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn transfer_encoding_beats_content_length_and_only_one_request_reaches_origin() {
    let origin = Origin::start().await;
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    // A smuggling attempt: chunked body "hi", a Content-Length that disagrees, and a
    // second request hidden after the chunked terminator.
    let raw = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.url("/echo"),
        origin.url("/smuggled")
    );
    let answer = raw_exchange(sc.addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = origin.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(&seen[0].body[..], b"hi");
    assert_ne!(seen[0].headers.get("content-length").map(|v| v.as_bytes()), Some(&b"40"[..]));
    sc.stop().await.unwrap();
}

/// Bulk data both ways at once through a tunnel (the spliced path): every byte arrives
/// in order, each side's EOF is passed on, and the byte counters match what moved.
#[tokio::test]
async fn connect_tunnel_relays_megabytes_both_ways_and_counts_them() {
    const UP: usize = 3 * 1024 * 1024 + 11;
    const DOWN: usize = 5 * 1024 * 1024 + 7;
    let pattern = |len: usize, seed: usize| -> Vec<u8> { (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect() };
    // Origin: sends DOWN bytes and half-closes while reading the client's bytes to EOF,
    // then reports what it received.
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let down_data = pattern(DOWN, 7);
    let served = tokio::spawn({
        let down_data = down_data.clone();
        async move {
            let (s, _) = origin.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let send = async move {
                w.write_all(&down_data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let recv = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(send, recv).1
        }
    });
    let sc = Sidecar::start(config(LOOPBACK_ALLOWED, &[]), resolver(&[])).await;
    let (head, s) = connect_tunnel(sc.addr, &origin_addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let up_data = pattern(UP, 3);
    let (mut r, mut w) = s.into_split();
    let send = async {
        w.write_all(&up_data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got_down) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(send, recv) })
        .await
        .expect("tunnel transfer finished");
    let got_up = served.await.unwrap();
    assert!(got_down == down_data, "downstream: {} of {DOWN} bytes, or out of order", got_down.len());
    assert!(got_up == up_data, "upstream: {} of {UP} bytes, or out of order", got_up.len());
    let m = sc.metrics().await;
    assert!(m.contains(&format!("sidecar_tunnel_received_bytes_total{{side=\"client\"}} {UP}")), "{m}");
    assert!(m.contains(&format!("sidecar_tunnel_received_bytes_total{{side=\"upstream\"}} {DOWN}")), "{m}");
    sc.stop().await.unwrap();
}
