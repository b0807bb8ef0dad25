//! An https:// upstream proxy: trusted through --upstream-proxy-ca-file, refused without
//! it, accepted with --upstream-proxy-insecure. Certificates come from the openssl CLI.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl on PATH");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA and a server certificate for localhost signed by it.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]);
    openssl(dir, &csr);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// An https upstream proxy that answers absolute-form requests itself.
async fn tls_upstream_proxy(dir: &Path) -> std::net::SocketAddr {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let auth = req.headers().get("proxy-authorization").map(|v| v.to_str().unwrap().to_string());
                    let body = format!("tls upstream saw {} auth={}", req.uri(), auth.unwrap_or_default());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstream_proxy_with_ca_file_insecure_and_untrusted() {
    let dir = temp_dir("tls");
    certificates(&dir);
    let up = tls_upstream_proxy(&dir).await;
    let upstream = format!("https://u:p@localhost:{}", up.port());
    let ca = dir.join("ca.pem");
    // Allowed, never dialled: the upstream proxy answers itself (and a routing bug would
    // dial an unused loopback address, not the internet).
    let resolver = || resolver(&[("example.test", &["127.0.0.3"])]);

    let sc = Sidecar::start(
        config(
            &[
                "--upstream-proxy",
                &upstream,
                "--upstream-proxy-ca-file",
                ca.to_str().unwrap(),
                "--allow-cidr",
                "127.0.0.3/32",
            ],
            &[],
        ),
        resolver(),
    )
    .await;
    let (status, _, body) = proxy_get(sc.addr, "http://example.test/a").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(&body[..], b"tls upstream saw http://example.test/a auth=Basic dTpw");
    sc.stop().await.unwrap();

    let sc =
        Sidecar::start(config(&["--upstream-proxy", &upstream, "--allow-cidr", "127.0.0.3/32"], &[]), resolver()).await;
    let (status, headers, body) = proxy_get(sc.addr, "http://example.test/a").await;
    assert_eq!(
        (status, headers["x-sidecar-error"].to_str().unwrap()),
        (StatusCode::BAD_GATEWAY, "upstream_proxy"),
        "{body:?}"
    );
    assert!(String::from_utf8_lossy(&body).contains("TLS"), "{body:?}");
    sc.stop().await.unwrap();

    let sc = Sidecar::start(
        config(&["--upstream-proxy", &upstream, "--upstream-proxy-insecure", "--allow-cidr", "127.0.0.3/32"], &[]),
        resolver(),
    )
    .await;
    let (status, _, _) = proxy_get(sc.addr, "http://example.test/a").await;
    assert_eq!(status, StatusCode::OK);
    sc.stop().await.unwrap();
}
