//! `$http`'s client. Every request goes to the sidecar's proxy, never to the destination:
//! absolute-form for `http://`, a CONNECT tunnel (then TLS, rustls) for `https://`. The
//! sidecar decides where a script may go; this client has no other way out.
//!
//! Timings are what a client of the sidecar can see, per hop: `connect` (TCP to the
//! sidecar), `tunnel` (CONNECT answered: the sidecar resolved and reached the
//! destination; https only), `tls`, `wait` (request written to response head), `download`
//! and `total`. For `http://` the sidecar's DNS and connect fall inside `wait`.
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body kept in memory (the script's heap limit applies on top).
pub const MAX_RESPONSE_BODY: usize = 8 * 1024 * 1024;
/// Redirects followed at most before the request fails.
pub const MAX_REDIRECTS: usize = 10;
const USER_AGENT: &str = concat!("api-runtime/", env!("CARGO_PKG_VERSION"));

/// One request as the script asked for it (already validated).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    pub timeout: Duration,
    pub follow_redirects: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    pub connect_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ms: Option<f64>,
    pub wait_ms: f64,
    pub download_ms: f64,
    pub total_ms: f64,
}

/// One hop: a request actually sent (a redirect makes two).
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    pub method: Method,
    pub url: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub timings: Timings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub status_text: String,
    /// Lower-case names; repeated headers joined with `, `.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The URL that answered (after redirects).
    pub url: String,
    pub redirect_urls: Vec<String>,
    pub timings: Timings,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("refused by the sidecar ({status} {label}): {reason}")]
    Refused { status: u16, label: String, reason: String },
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// What `$http` needs from the outside: send a request, call back with the answer and
/// the hops it took. The engine does not know about sockets.
pub trait HttpPort: Send + Sync {
    fn send(&self, req: HttpRequest, done: Box<dyn FnOnce(HttpOutcome) + Send>);
}

pub struct HttpOutcome {
    pub result: Result<HttpResponse, HttpError>,
    pub hops: Vec<Hop>,
}

/// The sidecar's proxy address (host, port) for each scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxies {
    pub http: (String, u16),
    pub https: (String, u16),
}

impl Proxies {
    /// `HTTP_PROXY` / `HTTPS_PROXY` (either case), each falling back to the other and then
    /// to `JOB_API_URL` (the sidecar serves both). `NO_PROXY` is ignored on purpose: a
    /// script has no direct way out.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        use common::runtime_api::runtime_env::{HTTPS_PROXY, HTTP_PROXY, JOB_API_URL};
        let var = |k: &str| env(k).or_else(|| env(&k.to_ascii_lowercase())).filter(|v| !v.trim().is_empty());
        let http = var(HTTP_PROXY).or_else(|| var(HTTPS_PROXY)).or_else(|| var(JOB_API_URL));
        let https = var(HTTPS_PROXY).or_else(|| var(HTTP_PROXY)).or_else(|| var(JOB_API_URL));
        match (http, https) {
            (Some(h), Some(s)) => Ok(Self { http: proxy_addr(&h)?, https: proxy_addr(&s)? }),
            _ => Err(format!("no proxy: none of {HTTP_PROXY}, {HTTPS_PROXY}, {JOB_API_URL} is set")),
        }
    }
}

fn proxy_addr(url: &str) -> Result<(String, u16), String> {
    let uri: Uri = url.trim().parse().map_err(|e| format!("proxy URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("proxy URL {url:?}: only http:// proxies are supported"));
    }
    let host = uri.host().ok_or_else(|| format!("proxy URL {url:?} has no host"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), uri.port_u16().unwrap_or(80)))
}

/// The client the runtime uses: requests run as tasks on `handle`.
pub struct ProxyClient {
    proxies: Proxies,
    handle: tokio::runtime::Handle,
}

impl ProxyClient {
    pub fn new(proxies: Proxies, handle: tokio::runtime::Handle) -> Self {
        Self { proxies, handle }
    }
}

impl HttpPort for ProxyClient {
    fn send(&self, req: HttpRequest, done: Box<dyn FnOnce(HttpOutcome) + Send>) {
        let proxies = self.proxies.clone();
        self.handle.spawn(async move {
            let mut hops = Vec::new();
            let timeout = req.timeout;
            let result = match tokio::time::timeout(timeout, fetch(&proxies, req, &mut hops)).await {
                Ok(r) => r,
                Err(_) => Err(HttpError::Timeout(timeout)),
            };
            done(HttpOutcome { result, hops });
        });
    }
}

/// The request, following redirects when asked. Each hop is pushed to `hops` as it ends.
pub async fn fetch(proxies: &Proxies, req: HttpRequest, hops: &mut Vec<Hop>) -> Result<HttpResponse, HttpError> {
    let mut method = req.method.clone();
    let mut url = req.url.clone();
    let mut body = req.body.clone();
    let mut headers = req.headers.clone();
    let mut redirect_urls = Vec::new();
    loop {
        let uri = parse_url(&url)?;
        let mut hop =
            Hop { method: method.clone(), url: url.clone(), status: None, error: None, timings: Timings::default() };
        let answer = one_hop(proxies, &method, &uri, &headers, body.clone(), &mut hop.timings).await;
        match &answer {
            Ok(r) => hop.status = Some(r.status),
            Err(e) => hop.error = Some(e.to_string()),
        }
        hops.push(hop);
        let mut resp = answer?;
        let location = resp.headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
        let next = match location {
            Some(loc) if req.follow_redirects && matches!(resp.status, 301 | 302 | 303 | 307 | 308) => loc,
            _ => {
                resp.url = url;
                resp.redirect_urls = redirect_urls;
                return Ok(resp);
            }
        };
        if redirect_urls.len() >= MAX_REDIRECTS {
            return Err(HttpError::Failed(format!("more than {MAX_REDIRECTS} redirects (last to {next})")));
        }
        let next_url = resolve_location(&uri, &next)?;
        // 303, and 301/302 after a POST, turn into a GET without a body (what browsers do).
        if resp.status == 303 || (matches!(resp.status, 301 | 302) && method == Method::POST) {
            method = Method::GET;
            body = None;
            headers.retain(|(k, _)| k != header::CONTENT_TYPE);
        }
        // Credentials stay with the origin they were meant for.
        let next_uri = parse_url(&next_url)?;
        if next_uri.authority() != uri.authority() || next_uri.scheme() != uri.scheme() {
            headers.retain(|(k, _)| k != header::AUTHORIZATION && k != header::COOKIE);
        }
        redirect_urls.push(next_url.clone());
        url = next_url;
    }
}

pub fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let uri: Uri = url.parse().map_err(|e| HttpError::Failed(format!("bad URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(HttpError::Failed(format!("unsupported URL {url:?} (http:// or https:// only)"))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(HttpError::Failed(format!("URL {url:?} has no host")));
    }
    Ok(uri)
}

/// A `Location` against the URL that answered: absolute, scheme-relative, absolute path
/// or relative path (query and fragment kept as given).
pub fn resolve_location(base: &Uri, location: &str) -> Result<String, HttpError> {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let has_scheme = location.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let resolved = if has_scheme {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    };
    parse_url(&resolved).map(|_| resolved)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

async fn one_hop(
    proxies: &Proxies,
    method: &Method,
    uri: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    body: Option<Bytes>,
    timings: &mut Timings,
) -> Result<HttpResponse, HttpError> {
    let started = Instant::now();
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_else(|| host.clone());
    let (proxy_host, proxy_port) = if https { &proxies.https } else { &proxies.http };

    let mut builder = Request::builder().method(method.clone()).header(header::HOST, &authority);
    builder =
        if https { builder.uri(uri.path_and_query().map_or("/", |p| p.as_str())) } else { builder.uri(uri.clone()) };
    let mut has_ua = false;
    for (k, v) in headers {
        has_ua |= k == header::USER_AGENT;
        builder = builder.header(k, v);
    }
    if !has_ua {
        builder = builder.header(header::USER_AGENT, USER_AGENT);
    }
    let req = builder.body(Full::new(body.unwrap_or_default())).map_err(|e| HttpError::Failed(e.to_string()))?;

    let mut tcp = TcpStream::connect((proxy_host.as_str(), *proxy_port))
        .await
        .map_err(|e| HttpError::Failed(format!("cannot connect to the sidecar at {proxy_host}:{proxy_port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    timings.connect_ms = ms(started.elapsed());
    if !https {
        return exchange(tcp, req, started, timings).await;
    }
    let t = Instant::now();
    connect_tunnel(&mut tcp, &format!("{host}:{port}")).await?;
    timings.tunnel_ms = Some(ms(t.elapsed()));
    let t = Instant::now();
    let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let name = rustls::pki_types::ServerName::try_from(bare.clone())
        .map_err(|e| HttpError::Failed(format!("TLS name {bare}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(tls_config().map_err(HttpError::Failed)?)
        .connect(name, tcp)
        .await
        .map_err(|e| HttpError::Failed(format!("TLS handshake with {bare}: {e}")))?;
    timings.tls_ms = Some(ms(t.elapsed()));
    exchange(tls, req, started, timings).await
}

/// Trust roots: the system's bundle (the image ships one), the webpki roots, and the PEM
/// file named by `NODE_EXTRA_CA_CERTS` (the name Node runtimes use; the job manager sets it
/// when the chart's `runtimePods.caBundle` is given: origins behind a private CA). Built on
/// first use so a check without https pays nothing for it; an unreadable or empty bundle
/// fails every https request with a message naming the file, never silently trusts less.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if let Some(path) = std::env::var_os(EXTRA_CA_ENV).filter(|p| !p.is_empty()) {
                let path = std::path::PathBuf::from(path);
                let pem = std::fs::read(&path)
                    .map_err(|e| format!("{EXTRA_CA_ENV}={}: cannot read the CA bundle: {e}", path.display()))?;
                for cert in
                    common::pem::certificates(&pem).map_err(|e| format!("{EXTRA_CA_ENV}={}: {e}", path.display()))?
                {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{EXTRA_CA_ENV}={}: not a usable CA certificate: {e}", path.display()))?;
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        })
        .clone()
}

/// The environment variable naming extra trusted CA certificates (PEM).
pub const EXTRA_CA_ENV: &str = "NODE_EXTRA_CA_CERTS";

/// CONNECT through the sidecar; its refusal becomes [`HttpError::Refused`] with its reason.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> Result<(), HttpError> {
    let io_err = |e: std::io::Error| HttpError::Failed(format!("CONNECT {authority}: {e}"));
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .map_err(io_err)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte-wise so no tunnel bytes are consumed; the head is small.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || tcp.read(&mut byte).await.map_err(io_err)? == 0 {
            return Err(HttpError::Failed(format!("CONNECT {authority}: the sidecar closed the connection")));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if (200..300).contains(&status) {
        return Ok(());
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.trim().to_string())
    };
    let len = field("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0).min(64 * 1024);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut body)).await;
    Err(HttpError::Refused {
        status,
        label: field(common::headers::PROXY_ERROR).unwrap_or_else(|| "refused".into()),
        reason: reason_text(&body),
    })
}

fn reason_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]).trim().to_string();
    if text.is_empty() {
        "(no reason given)".into()
    } else {
        text
    }
}

async fn exchange<S>(
    io: S,
    req: Request<Full<Bytes>>,
    started: Instant,
    timings: &mut Timings,
) -> Result<HttpResponse, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Failed(format!("HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let t = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| HttpError::Failed(format!("request: {e}")))?;
    timings.wait_ms = ms(t.elapsed());
    let t = Instant::now();
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BODY)
        .collect()
        .await
        .map_err(|e| HttpError::Failed(format!("reading the body: {e}")))?
        .to_bytes();
    timings.download_ms = ms(t.elapsed());
    timings.total_ms = ms(started.elapsed());
    // An answer of the sidecar itself (a refusal, an unreachable destination) is not the
    // destination's: the request failed.
    if let Some(label) = parts.headers.get(common::headers::PROXY_ERROR).and_then(|v| v.to_str().ok()) {
        return Err(HttpError::Refused {
            status: parts.status.as_u16(),
            label: label.to_string(),
            reason: reason_text(&body),
        });
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).to_string();
        match headers.iter_mut().find(|(n, _)| n == k.as_str()) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(&v);
            }
            None => headers.push((k.as_str().to_string(), v)),
        }
    }
    Ok(HttpResponse {
        status: parts.status.as_u16(),
        status_text: parts.status.canonical_reason().unwrap_or_default().to_string(),
        headers,
        body,
        url: String::new(),
        redirect_urls: Vec::new(),
        timings: timings.clone(),
    })
}

#[cfg(test)]
mod tests;
