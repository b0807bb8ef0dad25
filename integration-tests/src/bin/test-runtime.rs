//! `test-runtime`: a tiny runtime for the local executor, the demo and the Kubernetes
//! end-to-end tests. It does what the job's payload says, through the sidecar, exactly as
//! a real runtime would.
//!
//! Ephemeral (default): `GET {JOB_API_URL}/v1/job`, run the payload, `POST
//! {JOB_API_URL}/v1/result`, exit 0 (also when the job failed: the result says so).
//! Persistent: `test-runtime --serve 127.0.0.1:8081 [--max-concurrent N]` accepts `POST
//! /v1/jobs` (a `RuntimeJob`) with 202, or 429 when N jobs are running, and posts each
//! result to `{JOB_API_URL}/v1/jobs/{id}/result`.
//!
//! Payload actions:
//! - `{"action":"fetch","url":"...","expectStatus":200}`: through `HTTP_PROXY` /
//!   `HTTPS_PROXY` (honouring `NO_PROXY`); succeeded when the status matches.
//! - `{"action":"sleep","secs":N}` then succeed.
//! - `{"action":"env","name":"VAR"}`: succeed with `{"VAR": <its value, or null>}` as
//!   output (what the pod's environment gave the runtime, e.g. `USER_DEFINED_VARIABLES`).
//! - `{"action":"fail","message":"..."}`: post a failed result.
//! - `{"action":"exit","code":N}`: exit with that code without posting anything.
//! - `{"action":"crash"}`: abort (a signal death, no result).
//! - `{"action":"steps","steps":[...]}`: run several in order, stop at the first failure.
//!
//! One log line per step on stderr.

use bytes::Bytes;
use common::runtime_api::{runtime_env, RuntimeJob, RuntimeOutcome, RuntimeResult};
use common::runtime_client::{exit, RuntimeClient};
use http::{header, HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest fetched body kept (the digest and size cover only what was read).
const MAX_FETCH_BODY: usize = 8 * 1024 * 1024;
/// Bytes of the fetched body echoed in the result.
const HEAD_BYTES: usize = 256;

const NAME: &str = "test-runtime";

fn log(job: &str, what: impl std::fmt::Display) {
    eprintln!("{NAME}: job {job}: {what}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(Mode::Version) => {
            println!("{NAME} {}", common::build_info::LONG_VERSION);
            return;
        }
        Ok(mode) => mode,
        Err(e) => {
            eprintln!("{NAME}: {e}\nusage: test-runtime [--serve ADDR [--max-concurrent N]] | --version");
            std::process::exit(exit::USAGE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        match RuntimeClient::from_env(NAME, &|k| std::env::var(k).ok()) {
            Ok(client) => match mode {
                Mode::Serve { addr, max_concurrent } => {
                    client.serve(addr, max_concurrent, |job| async move { run_job(&job).await }).await
                }
                Mode::Once | Mode::Version => client.run_once(|job| async move { Ok(run_job(&job).await) }).await,
            },
            Err(e) => {
                eprintln!("{NAME}: {e}");
                exit::CONFIG
            }
        }
    });
    std::process::exit(code);
}

#[derive(Debug, PartialEq)]
enum Mode {
    Version,
    Once,
    Serve { addr: std::net::SocketAddr, max_concurrent: usize },
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    let mut serve = None;
    let mut max_concurrent = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--version" | "-V" => return Ok(Mode::Version),
            "--serve" => {
                let v = it.next().ok_or("--serve needs an address")?;
                serve = Some(v.parse().map_err(|e| format!("--serve {v}: {e}"))?);
            }
            "--max-concurrent" => {
                let v = it.next().ok_or("--max-concurrent needs a number")?;
                max_concurrent =
                    v.parse().ok().filter(|n| *n > 0).ok_or(format!("--max-concurrent {v}: not a positive number"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(match serve {
        Some(addr) => Mode::Serve { addr, max_concurrent },
        None => Mode::Once,
    })
}

/// Run the payload; `exit` and `crash` end the process right here.
async fn run_job(job: &RuntimeJob) -> RuntimeResult {
    let started = Instant::now();
    let id = job.id.to_string();
    let deadline = Duration::from_secs(u64::from(job.timeout_secs.max(1)));
    let (outcome, message, output) = match run_action(&id, &job.payload, deadline).await {
        Ok((message, output)) => (RuntimeOutcome::Succeeded, message, output),
        Err((message, output)) => (RuntimeOutcome::Failed, message, output),
    };
    RuntimeResult { outcome, message, output, duration_ms: Some(started.elapsed().as_millis() as u64) }
}

type StepResult = Result<(String, Value), (String, Value)>;

async fn run_action(id: &str, payload: &Value, deadline: Duration) -> StepResult {
    let action = payload.get("action").and_then(Value::as_str).unwrap_or_default();
    match action {
        "fetch" => {
            let Some(url) = payload.get("url").and_then(Value::as_str) else {
                return Err(("fetch: payload has no \"url\"".into(), Value::Null));
            };
            let expect = payload.get("expectStatus").and_then(Value::as_u64).unwrap_or(200) as u16;
            fetch(id, url, expect, deadline).await
        }
        "sleep" => {
            let secs = payload.get("secs").and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
            log(id, format_args!("sleeping {secs}s"));
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok((format!("slept {secs}s"), json!({ "slept_secs": secs })))
        }
        "env" => {
            let Some(name) = payload.get("name").and_then(Value::as_str) else {
                return Err(("env: payload has no \"name\"".into(), Value::Null));
            };
            let value = std::env::var(name).ok();
            log(id, format_args!("env {name}: {}", if value.is_some() { "set" } else { "unset" }));
            Ok((format!("env {name}"), json!({ name: value })))
        }
        "fail" => {
            let message = payload.get("message").and_then(Value::as_str).unwrap_or("failed on request").to_string();
            log(id, format_args!("failing: {message}"));
            Err((message, Value::Null))
        }
        "exit" => {
            let code = payload.get("code").and_then(Value::as_i64).unwrap_or(1) as i32;
            log(id, format_args!("exiting with code {code} without a result"));
            std::process::exit(code);
        }
        "crash" => {
            log(id, "crashing (abort)");
            std::process::abort();
        }
        "steps" => {
            let steps = payload.get("steps").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut outputs = Vec::with_capacity(steps.len());
            for (i, step) in steps.iter().enumerate() {
                match Box::pin(run_action(id, step, deadline)).await {
                    Ok((_, out)) => outputs.push(out),
                    Err((message, out)) => {
                        outputs.push(out);
                        return Err((format!("step {}: {message}", i + 1), Value::Array(outputs)));
                    }
                }
            }
            Ok((format!("{} steps done", steps.len()), Value::Array(outputs)))
        }
        other => {
            log(id, format_args!("unknown action {other:?}"));
            Err((format!("unknown action {other:?}"), Value::Null))
        }
    }
}

async fn fetch(id: &str, url: &str, expect: u16, deadline: Duration) -> StepResult {
    let proxy = proxy_for(url, &|k| std::env::var(k).ok());
    match request(Method::GET, url, None, proxy.as_deref(), deadline).await {
        Err(e) => {
            log(id, format_args!("fetch {url}: {e}"));
            Err((format!("fetch {url}: {e}"), json!({ "error": e })))
        }
        Ok(resp) => {
            log(id, format_args!("fetch {url} -> {}", resp.status));
            let head_len = resp.body.len().min(HEAD_BYTES);
            let mut output = json!({
                "status": resp.status,
                "bytes": resp.body.len(),
                "sha256": hex(&Sha256::digest(&resp.body)),
                "head": String::from_utf8_lossy(&resp.body[..head_len]),
            });
            let proxy_error =
                resp.headers.get(common::headers::PROXY_ERROR).and_then(|v| v.to_str().ok()).map(str::to_string);
            if let Some(label) = &proxy_error {
                output["proxy_error"] = json!(label);
            }
            if resp.status == expect {
                Ok((format!("GET {url} -> {}", resp.status), output))
            } else {
                let reason = refusal_reason(&resp.body, proxy_error.as_deref());
                Err((format!("expected status {expect}, got {}: {reason}", resp.status), output))
            }
        }
    }
}

/// A readable reason from an error answer: a JSON body's `message`/`reason`/`error`, else
/// its text; the sidecar's refusal label when there is nothing else.
fn refusal_reason(body: &[u8], proxy_error: Option<&str>) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let field = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let parts: Vec<String> = ["error", "reason", "message"].iter().filter_map(|k| field(k)).collect();
        if !parts.is_empty() {
            return parts.join(": ");
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string();
    match (text.is_empty(), proxy_error) {
        (false, _) => text,
        (true, Some(label)) => label.to_string(),
        (true, None) => "(empty body)".to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The proxy URL to use for `url`, from `HTTP_PROXY`/`HTTPS_PROXY` (either case),
/// unless `NO_PROXY` covers its host.
fn proxy_for(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let var = |upper: &str| env(upper).or_else(|| env(&upper.to_ascii_lowercase())).filter(|v| !v.is_empty());
    let proxy = match uri.scheme_str() {
        Some("https") => var(runtime_env::HTTPS_PROXY),
        _ => var(runtime_env::HTTP_PROXY),
    }?;
    let no_proxy = var(runtime_env::NO_PROXY).unwrap_or_default();
    if no_proxy_matches(&no_proxy, &host) {
        None
    } else {
        Some(proxy)
    }
}

/// `NO_PROXY` semantics as curl has them: `*` matches everything; an entry matches the
/// host itself and its subdomains (a leading dot is optional); ports are ignored.
fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    no_proxy.split(',').map(str::trim).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.trim_start_matches('[');
        let entry = match entry.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
            _ => entry,
        };
        let entry = entry.trim_end_matches(']').trim_start_matches('.').to_ascii_lowercase();
        host == entry || host.ends_with(&format!(".{entry}"))
    })
}

struct Fetched {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

/// One HTTP/1.1 request: direct, or through an HTTP proxy (absolute form for `http://`,
/// a CONNECT tunnel for `https://`), with rustls and the webpki roots for `https://`.
async fn request(
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
    proxy: Option<&str>,
    timeout: Duration,
) -> Result<Fetched, String> {
    match tokio::time::timeout(timeout, request_inner(method, url, body, proxy)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn request_inner(
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
    proxy: Option<&str>,
) -> Result<Fetched, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("unsupported URL {url:?} (http:// or https:// only)")),
    };
    let host = uri.host().ok_or_else(|| format!("URL {url:?} has no host"))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_else(|| host.clone());
    let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let proxy_addr: Option<(String, u16)> = match proxy {
        Some(p) => {
            let pu: Uri = p.parse().map_err(|e| format!("bad proxy URL {p:?}: {e}"))?;
            let ph = pu.host().ok_or_else(|| format!("proxy URL {p:?} has no host"))?;
            Some((ph.trim_start_matches('[').trim_end_matches(']').to_string(), pu.port_u16().unwrap_or(80)))
        }
        None => None,
    };

    let mut builder =
        Request::builder().method(method).header(header::HOST, &authority).header(header::USER_AGENT, "test-runtime");
    // Absolute form only when an http:// request goes to a proxy; else origin form.
    builder = if proxy_addr.is_some() && !https {
        builder.uri(uri.clone())
    } else {
        builder.uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
    };
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;

    let (target_host, target_port) = proxy_addr.clone().unwrap_or_else(|| (bare_host.clone(), port));
    let mut tcp = TcpStream::connect((target_host.as_str(), target_port))
        .await
        .map_err(|e| format!("cannot connect to {target_host}:{target_port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if !https {
        return exchange(tcp, req).await;
    }
    if proxy_addr.is_some() {
        connect_tunnel(&mut tcp, &format!("{host}:{port}")).await?;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name =
        rustls::pki_types::ServerName::try_from(bare_host.clone()).map_err(|e| format!("TLS name {bare_host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {bare_host}: {e}"))?;
    exchange(tls, req).await
}

/// CONNECT through the proxy; a refusal (e.g. the sidecar's 403) is returned as the
/// error text with the proxy's reason.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> Result<(), String> {
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("CONNECT {authority}: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte-wise so no tunnel bytes are consumed; the head is small.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || tcp.read(&mut byte).await.map_err(|e| format!("CONNECT {authority}: {e}"))? == 0 {
            return Err(format!("CONNECT {authority}: the proxy closed the connection"));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if (200..300).contains(&status) {
        return Ok(());
    }
    // Read the refusal body if a length was given, to report the reason.
    let len = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(64 * 1024);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut body)).await;
    let label = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(common::headers::PROXY_ERROR)))
        .map(|(_, v)| v.trim().to_string());
    Err(format!("proxy refused CONNECT {authority} with {status}: {}", refusal_reason(&body, label.as_deref())))
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<Fetched, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body =
        Limited::new(body, MAX_FETCH_BODY).collect().await.map_err(|e| format!("reading the body: {e}"))?.to_bytes();
    Ok(Fetched { status: parts.status.as_u16(), headers: parts.headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches("*", "example.com"));
        assert!(no_proxy_matches("example.com", "example.com"));
        assert!(no_proxy_matches(".example.com", "api.example.com"));
        assert!(no_proxy_matches("example.com", "api.example.com"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("localhost, 127.0.0.1:3128", "127.0.0.1"));
        assert!(no_proxy_matches("[::1]", "::1"));
        assert!(!no_proxy_matches("", "example.com"));
    }

    #[test]
    fn proxy_selection() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let e = env(&[
            ("HTTP_PROXY", "http://127.0.0.1:3128"),
            ("https_proxy", "http://127.0.0.1:3129"),
            ("NO_PROXY", "internal"),
        ]);
        assert_eq!(proxy_for("http://example.com/x", &e).as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(proxy_for("https://example.com/x", &e).as_deref(), Some("http://127.0.0.1:3129"));
        assert_eq!(proxy_for("http://svc.internal/x", &e), None);
        assert_eq!(proxy_for("http://example.com", &env(&[])), None);
    }

    #[test]
    fn refusal_reasons() {
        let json_body = br#"{"error":"denied","reason":"destination 169.254.169.254 is a metadata address"}"#;
        assert_eq!(refusal_reason(json_body, None), "denied: destination 169.254.169.254 is a metadata address");
        assert_eq!(refusal_reason(b"  forbidden by policy\n", Some("policy")), "forbidden by policy");
        assert_eq!(refusal_reason(b"", Some("policy_denied")), "policy_denied");
        assert_eq!(refusal_reason(b"", None), "(empty body)");
    }

    #[test]
    fn args() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_args(&s(&[])), Ok(Mode::Once));
        assert_eq!(
            parse_args(&s(&["--serve", "127.0.0.1:8081", "--max-concurrent", "3"])),
            Ok(Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: 3 })
        );
        assert!(parse_args(&s(&["--max-concurrent", "0"])).is_err());
        assert!(parse_args(&s(&["--bogus"])).is_err());
        assert_eq!(parse_args(&s(&["--version"])), Ok(Mode::Version));
    }
}
