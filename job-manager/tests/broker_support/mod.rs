//! Shared pieces of the broker tests: the embedded broker served on loopback, a tiny
//! HTTP proxy that checks `Proxy-Authorization`, a TLS terminator with a self-signed
//! certificate, and a raw HTTP/1 client for hostile requests.
#![allow(dead_code)] // each test binary uses a different subset

use common::broker::PollRequest;
use common::secret::Secret;
use common::{Job, JobId};
use job_manager::broker::client::{BrokerClientConfig, HttpBroker, ProxySettings, RetryPolicy};
use job_manager::broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const KEY: &str = "location-key-123";

pub struct Served {
    pub broker: EmbeddedBroker,
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Served {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub async fn serve(broker: EmbeddedBroker) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let b = broker.clone();
    tokio::spawn(async move {
        b.serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Served { broker, addr, _stop: stop }
}

pub fn broker(visibility: Duration) -> EmbeddedBroker {
    EmbeddedBroker::new(EmbeddedOptions { visibility_timeout: visibility, location_key: Secret::new(KEY) })
}

pub async fn serve_new() -> Served {
    serve(broker(Duration::from_secs(30))).await
}

pub fn job(id: &str) -> Job {
    serde_json::from_value(serde_json::json!({
        "id": id, "runtime_type": "rt", "timeout_secs": 5, "payload": {"action": "sleep", "secs": 0}
    }))
    .unwrap()
}

pub fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

pub fn poll_req(max: u32) -> PollRequest {
    serde_json::from_value(serde_json::json!({"demands": [{"runtime_type": "rt", "max": max}], "consumer": "jm-test"}))
        .unwrap()
}

pub fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff: common::backoff::Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
    }
}

pub fn client_config(endpoint: &str) -> BrokerClientConfig {
    BrokerClientConfig {
        endpoint: endpoint.to_string(),
        location_key: Secret::new(KEY),
        timeout: Duration::from_secs(5),
        proxy: None,
        tls: Default::default(),
    }
}

pub fn client(endpoint: &str) -> HttpBroker {
    HttpBroker::new(client_config(endpoint)).unwrap().with_retry_policy(fast_retries(3))
}

pub fn proxy_settings(addr: SocketAddr, user: &str, password: &str, accept_self_signed: bool) -> ProxySettings {
    ProxySettings {
        host: addr.ip().to_string(),
        port: addr.port(),
        username: Some(user.to_string()),
        password: Some(Secret::new(password)),
        accept_self_signed,
    }
}

/// What the test proxy saw: one entry per request head it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub request_line: String,
    pub proxy_authorization: Option<String>,
}

/// A minimal forward proxy: absolute-form requests and CONNECT tunnels, each connection
/// tunnelled to the first request's target. Answers 407 unless `Proxy-Authorization`
/// equals `expected_auth`.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<ProxiedRequest>>>,
}

pub async fn start_proxy(expected_auth: &str) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let expected = expected_auth.to_string();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (log, expected) = (log.clone(), expected.clone());
            tokio::spawn(async move {
                let _ = proxy_connection(conn, log, expected).await;
            });
        }
    });
    TestProxy { addr, seen }
}

async fn read_head(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

async fn proxy_connection(
    mut conn: TcpStream,
    log: Arc<Mutex<Vec<ProxiedRequest>>>,
    expected: String,
) -> std::io::Result<()> {
    let head = read_head(&mut conn).await?;
    let text = String::from_utf8_lossy(&head).to_string();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    let auth = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("proxy-authorization")))
        .map(|(_, v)| v.trim().to_string());
    log.lock().unwrap().push(ProxiedRequest { request_line: request_line.clone(), proxy_authorization: auth.clone() });
    if auth.as_deref() != Some(expected.as_str()) {
        conn.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default().to_string();
    if method == "CONNECT" {
        let mut upstream = TcpStream::connect(target.replace("localhost", "127.0.0.1")).await?;
        conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    } else {
        // Absolute form: http://host:port/path. Forward the head unchanged (the broker's
        // HTTP server takes absolute-form too) minus the proxy credentials.
        let authority = target.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
        let mut upstream = TcpStream::connect(authority).await?;
        let forwarded: String = text
            .split_inclusive("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("proxy-authorization"))
            .collect();
        upstream.write_all(forwarded.as_bytes()).await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
    }
    Ok(())
}

/// Terminates TLS with the committed self-signed certificate (CN/SAN `localhost`,
/// 127.0.0.1) and pipes the plaintext to `backend`.
pub async fn start_tls_terminator(backend: SocketAddr) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(include_bytes!("selfsigned-cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("selfsigned-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// A TLS terminator with the private test CA's `localhost` certificate; with
/// `require_client_cert`, only clients presenting a certificate of that CA get through.
pub async fn start_private_tls_terminator(backend: SocketAddr, require_client_cert: bool) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(include_bytes!("private-server-cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("private-server-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(include_bytes!("private-ca-cert.pem")).unwrap()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(builder.with_single_cert(certs, key).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// Send raw bytes, half-close, and return the whole answer as text. Writes and reads run
/// concurrently: the server may answer (413) and close before it read all we send.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let conn = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.shutdown().await;
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).to_string()
}

/// A well-formed request with the right key and `Connection: close`.
pub fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: broker\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default()
}
