//! Builders for integration tests: an in-process sidecar on 127.0.0.1:0, a local
//! origin, a TCP echo with half-close, a fake job manager, and a plain HTTP/1.1 client
//! that talks to the proxy in absolute form.
#![allow(dead_code)]
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sidecar::config::{parse_config, Cli, Config};
use sidecar::resolve::StaticResolver;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Configuration from flags and an env map, exactly as the binary would build it. In
/// allow-list mode unless the test says otherwise (`SIDECAR_DENY_PUBLIC` /
/// `SIDECAR_DENY_PRIVATE` in `env`): a test's sidecar reaches only what it allows.
pub fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
    let mut argv = vec!["sidecar", "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(args);
    let mut map: HashMap<String, String> = HashMap::from([
        ("SIDECAR_DENY_PUBLIC".to_string(), "true".to_string()),
        ("SIDECAR_DENY_PRIVATE".to_string(), "true".to_string()),
    ]);
    map.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let cli = Cli::try_parse_with_env(argv, &map).expect("flags parse");
    parse_config(&cli, &map).expect("valid config")
}

pub fn resolver(entries: &[(&str, &[&str])]) -> StaticResolver {
    StaticResolver::new(
        entries.iter().map(|(n, ips)| (n.to_string(), ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect())),
    )
}

pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub ingress: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), sidecar::RunError>>,
}

impl Sidecar {
    pub async fn start(config: Config, resolver: StaticResolver) -> Self {
        let extras = sidecar::Extras {
            resolver: Some(Arc::new(resolver)),
            result_backoff: common::backoff::Backoff::new(Duration::from_millis(20), Duration::from_millis(200)),
        };
        Self::start_with(config, extras).await
    }

    pub async fn start_with(config: Config, extras: sidecar::Extras) -> Self {
        let s = Self::spawn(config, extras).await;
        // The listeners are bound, so this connects; readiness is the signal we wait on.
        assert_eq!(s.get_local("/readyz").await.0, StatusCode::OK);
        s
    }

    /// Started, not necessarily ready yet.
    pub async fn spawn(config: Config, extras: sidecar::Extras) -> Self {
        let listeners = sidecar::Listeners::bind(&config).await.expect("bind");
        let ready = listeners.addrs();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(sidecar::run_with(config, extras, listeners, async {
            let _ = rx.await;
        }));
        Self { addr: ready.listen, admin: ready.admin, ingress: ready.ingress, stop: Some(tx), handle }
    }

    pub async fn stop(mut self) -> Result<(), sidecar::RunError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.handle.await.expect("sidecar task")
    }

    /// Origin-form request to the local API.
    pub async fn get_local(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        send(self.addr, Request::get(path).header("host", self.addr.to_string()).body(Full::default()).unwrap()).await
    }

    pub async fn healthy(&self) {
        let (status, _, body) = self.get_local("/healthz").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]), "sidecar must still be healthy");
    }

    pub async fn metrics(&self) -> String {
        String::from_utf8(self.get_local("/metrics").await.2.to_vec()).unwrap()
    }
}

/// One request on a fresh connection to `to` (the request target is sent as written:
/// absolute-form for proxying, origin-form for the local API).
pub async fn send(to: SocketAddr, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let mut c = Client::connect(to).await;
    c.send(req).await
}

pub async fn proxy_get(proxy: SocketAddr, url: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(proxy, Request::get(url).body(Full::default()).unwrap()).await
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(to: SocketAddr) -> Self {
        let stream = TcpStream::connect(to).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn.with_upgrades());
        Self { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        self.sender.ready().await.expect("connection usable");
        let resp = self.sender.send_request(req).await.expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        (parts.status, parts.headers, body)
    }
}

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub connection: usize,
}

/// An HTTP origin that records every request and answers:
/// `/chunked` with a streamed (chunked) body, `/status/N` with status N, else "origin ok"
/// plus hop-by-hop and key headers the proxy must strip.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                let seen = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(origin_answer(req, n, seen).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, seen, connections }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("origin saw a request")
    }
}

type OriginBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

async fn origin_answer(req: Request<Incoming>, connection: usize, seen: Arc<Mutex<Vec<Seen>>>) -> Response<OriginBody> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
        connection,
    });
    if path == "/chunked" {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> =
            ["first,", "second,", "third"].iter().map(|s| Ok(Frame::data(Bytes::from_static(s.as_bytes())))).collect();
        return Response::new(http_body_util::Either::Right(StreamBody::new(futures_util::stream::iter(chunks))));
    }
    let status = path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()).unwrap_or(200);
    let mut text = format!("origin ok {} {}", parts.method, body.len());
    if path == "/echo" {
        text = String::from_utf8_lossy(&body).to_string();
    }
    Response::builder()
        .status(status)
        .header("connection", "x-response-hop")
        .header("x-response-hop", "must go")
        .header("keep-alive", "timeout=5")
        .header("x-internal-api-key", "must never reach the runtime")
        .header("x-end-to-end", "kept")
        .body(http_body_util::Either::Left(Full::new(Bytes::from(text))))
        .unwrap()
}

/// A TCP server that reads until the client half-closes, then answers `echo:<data>` and
/// closes: it only answers if the proxy passed the half-close on.
pub async fn half_close_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(b"echo:").await;
                    let _ = s.write_all(&buf).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Opens a CONNECT tunnel through the proxy with a raw socket; returns the status line
/// and (on 200) the stream.
pub async fn connect_tunnel(proxy: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    (head, s)
}

/// Reads a response head (through the blank line) byte by byte.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match s.read_u8().await {
            Ok(b) => head.push(b),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&head).to_string()
}

/// Writes raw bytes and reads whatever comes back until the server closes (or 5 s).
pub async fn raw_exchange(to: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// A fake job manager: records every request; answers with the queued statuses in
/// order, then 200.
pub struct FakeJobManager {
    pub addr: SocketAddr,
    pub statuses: Arc<Mutex<VecDeque<u16>>>,
    /// The body of a 200 answer to `GET` (the job a sidecar fetches); default "jm".
    pub job: Arc<Mutex<Option<String>>>,
    pub calls: mpsc::UnboundedReceiver<Seen>,
}

impl FakeJobManager {
    pub async fn start(statuses: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, statuses)
    }

    pub fn serve(listener: TcpListener, statuses: &[u16]) -> Self {
        let addr = listener.local_addr().unwrap();
        let statuses = Arc::new(Mutex::new(statuses.iter().copied().collect::<VecDeque<u16>>()));
        let (tx, calls) = mpsc::unbounded_channel();
        let st = statuses.clone();
        let job = Arc::new(Mutex::new(None::<String>));
        let job_body = job.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, tx, job_body) = (st.clone(), tx.clone(), job_body.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (st, tx, job_body) = (st.clone(), tx.clone(), job_body.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let status = st.lock().unwrap().pop_front().unwrap_or(200);
                            let answer = match job_body.lock().unwrap().clone() {
                                Some(j) if parts.method == http::Method::GET && status == 200 => Bytes::from(j),
                                _ => Bytes::from_static(b"jm"),
                            };
                            let _ = tx.send(Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                                connection: status as usize,
                            });
                            Ok::<_, Infallible>(Response::builder().status(status).body(Full::new(answer)).unwrap())
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { addr, statuses, job, calls }
    }

    /// The next call, or a panic after 10 s.
    pub async fn next_call(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.calls.recv())
            .await
            .expect("job manager called in time")
            .expect("channel open")
    }
}

/// A private temporary directory (`tempfile`: a unique name, removed when dropped),
/// usable wherever a `&Path` is.
pub struct TempDir(tempfile::TempDir);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        self.0.path()
    }
}

pub fn temp_dir(name: &str) -> TempDir {
    TempDir(tempfile::Builder::new().prefix(&format!("sidecar-test-{name}-")).tempdir().unwrap())
}

/// Polls `cond` every 10 ms for up to 5 s (for effects with no event to wait on, such
/// as a file being removed after delivery).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes a job directory (job.json + token) for job `id`.
pub fn job_dir(id: &str, token: &str) -> TempDir {
    let dir = temp_dir("job");
    let job = serde_json::json!({
        "id": id, "runtime_type": "node-api-runtime", "timeout_secs": 30, "attempt": 2,
        "signature": "c2lnbmF0dXJl", "payload": {"script": "fetch('http://example.com')"}
    });
    std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    dir
}

pub fn post_json(path_or_url: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path_or_url)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
