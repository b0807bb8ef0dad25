//! Upstream (corporate) proxy chaining, plain HTTP and CONNECT, with basic auth.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiny upstream proxy: answers absolute-form requests itself (echoing the target) and
/// opens CONNECT tunnels; records each request line and Proxy-Authorization.
/// (method, request target, Proxy-Authorization) of each request the upstream proxy saw.
type SeenByUpstream = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

async fn upstream_proxy() -> (std::net::SocketAddr, SeenByUpstream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: SeenByUpstream = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let auth = req.headers().get("proxy-authorization").map(|v| v.to_str().unwrap().to_string());
                        s.lock().unwrap().push((req.method().to_string(), req.uri().to_string(), auth));
                        if req.method() == http::Method::CONNECT {
                            let target = req.uri().authority().unwrap().to_string();
                            tokio::spawn(async move {
                                let up = hyper::upgrade::on(req).await.unwrap();
                                let mut up = TokioIo::new(up);
                                let mut origin = tokio::net::TcpStream::connect(target).await.unwrap();
                                let _ = tokio::io::copy_bidirectional(&mut up, &mut origin).await;
                            });
                            return Ok::<_, Infallible>(Response::new(Either::Right(Empty::<Bytes>::new())));
                        }
                        let body = format!("upstream proxy saw {}", req.uri());
                        Ok(Response::new(Either::Left(Full::new(Bytes::from(body)))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn http_and_connect_go_through_the_upstream_proxy_with_auth() {
    let (up, seen) = upstream_proxy().await;
    let echo = half_close_echo().await;
    let upstream = format!("http://alice:s3cr%40t@{up}");
    let cfg = config(
        &["--upstream-proxy", &upstream, "--allow-cidr", "127.0.0.1/32", "--upstream-proxy-unresolved", "forward"],
        &[],
    );
    // No resolver entry for example.test: forwarded, the corporate proxy resolves.
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    let want_auth = "Basic YWxpY2U6czNjckB0"; // alice:s3cr@t

    let req = Request::get("http://example.test/path?q=1")
        .header("proxy-authorization", "Basic cnVudGltZQ==")
        .body(Full::default())
        .unwrap();
    let (status, _, body) = send(sc.addr, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"upstream proxy saw http://example.test/path?q=1", "absolute form to the upstream proxy");
    let (method, uri, auth) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), uri.as_str(), auth.as_deref()),
        ("GET", "http://example.test/path?q=1", Some(want_auth))
    );

    let (head, mut s) = connect_tunnel(sc.addr, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"via upstream").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "echo:via upstream");
    let (method, uri, auth) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), uri.as_str(), auth.as_deref()),
        ("CONNECT", echo.to_string().as_str(), Some(want_auth))
    );

    // Policy still applies before anything reaches the upstream proxy.
    let before = seen.lock().unwrap().len();
    let (status, headers, _) = proxy_get(sc.addr, "http://169.254.169.254/").await;
    assert_eq!((status, headers["x-sidecar-error"].to_str().unwrap()), (StatusCode::FORBIDDEN, "metadata"));
    let (head, _) = connect_tunnel(sc.addr, "metadata.google.internal:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(seen.lock().unwrap().len(), before, "refused requests never reach the upstream proxy");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn upstream_proxy_refusing_connect_is_502() {
    let (up, _) = upstream_proxy().await;
    let upstream = format!("http://{up}");
    let sc = Sidecar::start(config(&["--upstream-proxy", &upstream], &[]), resolver(&[])).await;
    // The in-test upstream proxy cannot reach this name: its tunnel fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg = config(&["--upstream-proxy", &format!("http://{dead}"), "--allow-cidr", "127.0.0.3/32"], &[]);
    let sc2 = Sidecar::start(cfg, resolver(&[("example.test", &["127.0.0.3"])])).await;
    let (head, _) = connect_tunnel(sc2.addr, "example.test:443").await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("x-sidecar-error: upstream_proxy"), "{head}");
    sc2.healthy().await;
    sc2.stop().await.unwrap();
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn job_manager_is_reached_directly_not_through_the_upstream_proxy() {
    let (up, seen) = upstream_proxy().await;
    let mut jm = FakeJobManager::start(&[]).await;
    let (upstream, jm_url) = (format!("http://corp:pw@{up}"), format!("http://{}", jm.addr));
    let cfg =
        config(&["--upstream-proxy", &upstream, "--job-manager-url", &jm_url], &[("SIDECAR_INTERNAL_API_KEY", "k")]);
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    let (status, _, _) = proxy_get(sc.addr, &format!("{jm_url}/internal/v1/ping")).await;
    assert_eq!(status, StatusCode::OK);
    let call = jm.next_call().await;
    assert_eq!(call.headers["x-internal-api-key"], "k");
    assert!(!call.headers.contains_key("proxy-authorization"));
    assert!(seen.lock().unwrap().is_empty(), "the upstream proxy saw job-manager traffic");
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn bypass_list_is_dialled_directly_and_the_rest_goes_upstream() {
    let (up, seen) = upstream_proxy().await;
    let mut origin = FakeJobManager::start(&[]).await;
    let port = origin.addr.port();
    let upstream = format!("http://{up}");
    let cfg = config(
        &[
            "--upstream-proxy",
            &upstream,
            "--allow-cidr",
            "127.0.0.1/32",
            "--allow-cidr",
            "127.0.0.3/32",
            "--upstream-proxy-bypass",
            ".corp.internal",
            "--upstream-proxy-bypass",
            "127.0.0.1/32",
        ],
        &[],
    );
    // example.test is allowed but not bypassed: it goes upstream (a routing bug would dial
    // an unused loopback address, never the internet).
    let names = [("api.corp.internal", &["127.0.0.1"][..]), ("example.test", &["127.0.0.3"][..])];
    let sc = Sidecar::start(cfg, resolver(&names)).await;
    // By name (and, for the second, by address): straight to the origin.
    for url in [format!("http://api.corp.internal:{port}/by-name"), format!("http://127.0.0.1:{port}/by-cidr")] {
        let (status, _, body) = proxy_get(sc.addr, &url).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"jm"[..]), "{url}");
        assert!(origin.next_call().await.uri.ends_with(url.rsplit('/').next().unwrap()));
    }
    assert!(seen.lock().unwrap().is_empty(), "the upstream proxy saw bypassed traffic");
    // Anything else goes through the upstream proxy (which answers itself: nothing leaves).
    let (status, _, _) = proxy_get(sc.addr, "http://example.test/elsewhere").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 1);
    sc.stop().await.unwrap();
}

/// A TCP server that records every byte it receives (all connections) and answers each
/// connection's first request head with `200 ok`, then closes.
async fn byte_recorder(ip: &str) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            head.extend_from_slice(&buf[..n]);
                            s.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// The leak this guards against: an in-cluster CIDR on the bypass list includes the
/// runtime's own pod, so anything sent there the runtime can read.
#[tokio::test]
async fn upstream_credentials_never_reach_a_bypassed_destination() {
    let (up, seen_by_upstream) = upstream_proxy().await;
    let (origin, seen_by_origin) = byte_recorder("127.0.0.1").await;
    // Not on the bypass list (127.0.0.1/32 is): reached through the upstream proxy.
    let (elsewhere, _) = byte_recorder("127.0.0.2").await;
    let upstream = format!("http://corp:hunter2@{up}");
    let want_auth = "Basic Y29ycDpodW50ZXIy"; // corp:hunter2
    let cfg = config(
        &[
            "--upstream-proxy",
            &upstream,
            "--allow-cidr",
            "127.0.0.0/8",
            "--upstream-proxy-bypass",
            ".pods.internal",
            "--upstream-proxy-bypass",
            "127.0.0.1/32",
        ],
        &[],
    );
    let names = [("runtime.pods.internal", &["127.0.0.1"][..]), ("by-cidr.example", &["127.0.0.1"][..])];
    let sc = Sidecar::start(cfg, resolver(&names)).await;
    let port = origin.port();
    let urls = [
        format!("http://127.0.0.1:{port}/literal"),
        format!("http://runtime.pods.internal:{port}/by-name"),
        format!("http://by-cidr.example:{port}/by-resolved-address"),
    ];
    for url in &urls {
        // With and without credentials of the client's own: neither may pass.
        for client_auth in [None, Some("Basic cnVudGltZQ==")] {
            let mut req = Request::get(url.as_str());
            if let Some(a) = client_auth {
                req = req.header("proxy-authorization", a);
            }
            let (status, _, body) = send(sc.addr, req.body(Full::default()).unwrap()).await;
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]), "{url}");
        }
    }
    for target in [origin.to_string(), format!("runtime.pods.internal:{port}")] {
        let (head, mut s) = connect_tunnel(sc.addr, &target).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{target}: {head}");
        s.write_all(b"GET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.ends_with("ok"), "{got}");
    }
    let origin_saw = String::from_utf8_lossy(&seen_by_origin.lock().unwrap()).to_ascii_lowercase();
    for path in ["/literal", "/by-name", "/by-resolved-address", "/tunnelled"] {
        assert!(origin_saw.contains(path), "{path} never reached the origin: {origin_saw}");
    }
    assert!(!origin_saw.contains("proxy-authorization"), "{origin_saw}");
    assert!(!origin_saw.contains(&want_auth.to_ascii_lowercase()), "{origin_saw}");
    assert!(seen_by_upstream.lock().unwrap().is_empty(), "bypassed traffic went upstream");

    // Everything else still goes through the upstream proxy, with its credentials.
    let (status, _, body) = proxy_get(sc.addr, "http://127.0.0.2/via-upstream").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"upstream proxy saw http://127.0.0.2/via-upstream"[..]));
    let (head, _) = connect_tunnel(sc.addr, &elsewhere.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = seen_by_upstream.lock().unwrap().clone();
    let seen: Vec<(&str, &str, Option<&str>)> =
        seen.iter().map(|(m, u, a)| (m.as_str(), u.as_str(), a.as_deref())).collect();
    let elsewhere = elsewhere.to_string();
    assert_eq!(
        seen,
        [("GET", "http://127.0.0.2/via-upstream", Some(want_auth)), ("CONNECT", elsewhere.as_str(), Some(want_auth))]
    );
    sc.stop().await.unwrap();
}

#[tokio::test]
async fn unresolvable_names_are_refused_behind_an_upstream_proxy_unless_forwarding_is_asked_for() {
    let (up, seen) = upstream_proxy().await;
    let upstream = format!("http://{up}");
    let sc = Sidecar::start(config(&["--upstream-proxy", &upstream], &[]), resolver(&[])).await;
    let (status, headers, body) = proxy_get(sc.addr, "http://nowhere.test/").await;
    assert_eq!((status, headers["x-sidecar-error"].to_str().unwrap()), (StatusCode::FORBIDDEN, "unresolved"));
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("nowhere.test does not resolve locally"), "{body}");
    assert!(body.contains("SIDECAR_UPSTREAM_PROXY_UNRESOLVED=refuse"), "{body}");
    let (head, _) = connect_tunnel(sc.addr, "nowhere.test:443").await;
    assert!(head.starts_with("HTTP/1.1 403") && head.contains("x-sidecar-error: unresolved"), "{head}");
    assert!(seen.lock().unwrap().is_empty(), "the upstream proxy saw an unchecked name");
    sc.stop().await.unwrap();

    let cfg = config(&["--upstream-proxy", &upstream], &[("SIDECAR_UPSTREAM_PROXY_UNRESOLVED", "forward")]);
    let sc = Sidecar::start(cfg, resolver(&[])).await;
    let (status, _, body) = proxy_get(sc.addr, "http://nowhere.test/").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"upstream proxy saw http://nowhere.test/"[..]));
    sc.stop().await.unwrap();
}
