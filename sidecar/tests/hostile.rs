//! Hostile input: each case gets a clear error and the process stays healthy.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn status_of(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn malformed_request_lines_get_400() {
    let sc = Sidecar::start(config(&[], &[]), resolver(&[])).await;
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://exa mple.com/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ];
    for raw in cases {
        let answer = raw_exchange(sc.addr, raw).await;
        assert!(status_of(&answer).starts_with("HTTP/1.1 400"), "{:?} -> {answer:?}", String::from_utf8_lossy(raw));
        sc.healthy().await;
    }
    // An HTTP/2 preface on the HTTP/1 port: refused (closed or 400), nothing else.
    let answer = raw_exchange(sc.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(answer.is_empty() || status_of(&answer).starts_with("HTTP/1.1 400"), "{answer:?}");
    sc.healthy().await;
    // Unsupported scheme in absolute form: our own 400, with a label.
    let answer =
        raw_exchange(sc.addr, b"GET ftp://example.com/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(status_of(&answer).starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("x-sidecar-error: unsupported_scheme"), "{answer}");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn garbage_connect_targets_get_400() {
    let sc = Sidecar::start(config(&[], &[]), resolver(&[])).await;
    for target in ["nonsense", ":443", "[::1:443", "host:99999", "host:-1", "/path", "*", "a..b:443", "0x1ffffffff:443"]
    {
        let raw = format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(sc.addr, raw.as_bytes()).await;
        assert!(status_of(&answer).starts_with("HTTP/1.1 400"), "{target} -> {answer:?}");
        sc.healthy().await;
    }
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let sc = Sidecar::start(config(&["--max-header-bytes", "8192"], &[]), resolver(&[])).await;
    let raw = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let answer = raw_exchange(sc.addr, raw.as_bytes()).await;
    assert!(status_of(&answer).starts_with("HTTP/1.1 431"), "{answer:?}");
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_exchange(sc.addr, format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    assert!(status_of(&answer).starts_with("HTTP/1.1 431"), "{answer:?}");
    sc.healthy().await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let jm = FakeJobManager::start(&[]).await;
    let dir = job_dir("hostile-1", "tok");
    let jm_url = format!("http://{}", jm.addr);
    let cfg = config(
        &["--job-dir", dir.to_str().unwrap(), "--job-manager-url", &jm_url, "--max-body-bytes", "4096"],
        &[("SIDECAR_INTERNAL_API_KEY", "k")],
    );
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    // Declared too large: refused before reading.
    let raw = "POST /v1/result HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 99999999999\r\n\r\n";
    let answer = raw_exchange(sc.addr, raw.as_bytes()).await;
    assert!(status_of(&answer).starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("x-sidecar-error: result_too_large"), "{answer}");
    assert!(answer.contains("result too large: 99999999999 bytes > 4096 bytes limit"), "{answer}");
    // That result was the job's one outcome (reported failed); a fresh job for the next.
    sc.stop().await.unwrap();
    let dir = job_dir("hostile-2", "tok");
    let cfg = config(
        &["--job-dir", dir.to_str().unwrap(), "--job-manager-url", &jm_url, "--max-body-bytes", "4096"],
        &[("SIDECAR_INTERNAL_API_KEY", "k")],
    );
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    // Chunked without a length: refused once the limit is crossed.
    // (Only the response head is read: the sidecar answers and closes while the rest of
    // the body is unread, which resets the connection.)
    let chunk = "a".repeat(1000);
    let mut raw = String::from("POST /v1/result HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..5 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
    assert!(head.contains("x-sidecar-error: result_too_large"), "{head:?}");
    sc.healthy().await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn slowloris_is_cut_off() {
    let sc = Sidecar::start(config(&["--header-read-timeout-ms", "300"], &[]), resolver(&[])).await;
    let mut s = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // Never finish the head: the sidecar must close the connection on its own.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "connection still open after the header-read timeout");
    let answer = String::from_utf8_lossy(&rest);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    sc.healthy().await;
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn connection_and_tunnel_limits_answer_503() {
    let echo = half_close_echo().await;
    let cfg = config(&["--max-connections", "3", "--max-tunnels", "1", "--allow-cidr", "127.0.0.1/32"], &[]);
    let sc = Sidecar::start(cfg, resolver(&[])).await;

    let (head, mut tunnel) = connect_tunnel(sc.addr, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = connect_tunnel(sc.addr, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("x-sidecar-error: too_many_tunnels"), "{head}");

    // The tunnel holds one connection slot; fill the other two with idle clients.
    let idle1 = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    let idle2 = tokio::net::TcpStream::connect(sc.addr).await.unwrap();
    eventually("the cap is reached", || async {
        let answer = raw_exchange(sc.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        answer.starts_with("HTTP/1.1 503") && answer.contains("x-sidecar-error: too_many_connections")
    })
    .await;

    // Freeing slots brings service back.
    drop((idle1, idle2));
    tunnel.shutdown().await.unwrap();
    let mut sink = Vec::new();
    tunnel.read_to_end(&mut sink).await.unwrap();
    eventually("slots freed", || async {
        raw_exchange(sc.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    sc.stop().await.unwrap();
}

/// Each listener has its own cap: tunnels filling the proxy listener's leave the admin
/// probes and the ingress serving.
#[tokio::test]
async fn a_full_proxy_listener_never_starves_the_admin_probes_or_the_ingress() {
    let echo = half_close_echo().await;
    let runtime = Origin::start().await;
    let upstream = runtime.addr.to_string();
    let cfg = config(
        &[
            "--max-connections",
            "4",
            "--max-admin-connections",
            "2",
            "--allow-cidr",
            "127.0.0.1/32",
            "--admin-listen",
            "127.0.0.1:0",
            "--ingress-listen",
            "127.0.0.1:0",
            "--ingress-upstream",
            &upstream,
        ],
        &[("SIDECAR_INTERNAL_API_KEY", "k")],
    );
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    let (admin, ingress) = (sc.admin.unwrap(), sc.ingress.unwrap());
    // Two tunnels hold two slots; two idle clients take the rest.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (head, s) = connect_tunnel(sc.addr, &echo.to_string()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tunnels.push(s);
    }
    for _ in 0..2 {
        tunnels.push(tokio::net::TcpStream::connect(sc.addr).await.unwrap());
    }
    eventually("the proxy cap is reached", || async {
        let answer = raw_exchange(sc.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections")
    })
    .await;

    for _ in 0..3 {
        let answer = raw_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ready\n"), "{answer}");
    }
    let req = http::Request::get("/work").header("host", "runtime").header("x-internal-api-key", "k");
    let (status, _, body) = send(ingress, req.body(Default::default()).unwrap()).await;
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"origin ok GET 0"[..]));

    // The admin listener's own (small) cap still holds.
    let idle: Vec<_> = futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(admin))).await;
    eventually("the admin cap is reached", || async {
        raw_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 503")
    })
    .await;
    drop((idle, tunnels));
    sc.stop().await.unwrap();
}
