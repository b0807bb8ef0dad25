//! The sidecar's local runtime API (`common/CONTRACTS.md`, "Hand-off of one ephemeral
//! job"): `GET {JOB_API_URL}/v1/job`, `POST {JOB_API_URL}/v1/result` (or
//! `/v1/jobs/{id}/result` for persistent workloads). Plain HTTP/1.1 on loopback.
use bytes::Bytes;
use common::runtime_api::{RuntimeJob, RuntimeResult, LOCAL_JOB_PATH};
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const MAX_ANSWER: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LocalApi {
    base: String,
    authority: String,
}

struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Bytes,
}

impl LocalApi {
    /// From `JOB_API_URL` (e.g. `http://127.0.0.1:3128`).
    pub fn new(url: &str) -> Result<LocalApi, String> {
        let base = url.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e| format!("JOB_API_URL {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("JOB_API_URL {url:?}: only http:// is supported (the sidecar is on loopback)"));
        }
        let authority = uri.authority().ok_or_else(|| format!("JOB_API_URL {url:?} has no host"))?.to_string();
        Ok(LocalApi { base, authority })
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer, String> {
        let exchange = async {
            let tcp = TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
            let _ = tcp.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, &self.authority)
                .header(header::USER_AGENT, "browser-runtime");
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse().ok());
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status, retry_after, body })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer in 10s".to_string())?
    }

    /// The job; the sidecar may still be coming up, so connection failures and 5xx are
    /// retried for a few seconds.
    pub async fn fetch_job(&self) -> Result<RuntimeJob, String> {
        let mut last = String::new();
        for attempt in 0..20u64 {
            match self.request(Method::GET, LOCAL_JOB_PATH, None).await {
                Ok(a) if a.status == 200 => {
                    return serde_json::from_slice(&a.body).map_err(|e| format!("not a RuntimeJob: {e}"));
                }
                Ok(a) if (400..500).contains(&a.status) => {
                    return Err(format!("status {}: {}", a.status, String::from_utf8_lossy(&a.body)));
                }
                Ok(a) => last = format!("status {}: {}", a.status, String::from_utf8_lossy(&a.body)),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1).min(10))).await;
        }
        Err(last)
    }

    /// Posts a result as the contract asks: 2xx = held durably; 4xx final; 5xx (503 with
    /// `Retry-After`: the sidecar cannot store it right now) and connection failures
    /// retried until `until`, the job's deadline.
    pub async fn post_result(&self, path: &str, result: &RuntimeResult, until: Instant) -> Result<(), String> {
        let body = serde_json::to_vec(result).expect("RuntimeResult serializes");
        let mut attempt = 0u64;
        loop {
            let mut wait = Duration::from_millis(100 * (attempt + 1).min(10));
            let last = match self.request(Method::POST, path, Some(body.clone())).await {
                Ok(a) if (200..300).contains(&a.status) => return Ok(()),
                Ok(a) if (400..500).contains(&a.status) => {
                    return Err(format!("status {}: {}", a.status, String::from_utf8_lossy(&a.body)));
                }
                Ok(a) => {
                    if let Some(secs) = a.retry_after {
                        wait = Duration::from_secs(secs.min(5));
                    }
                    format!("status {}: {}", a.status, String::from_utf8_lossy(&a.body))
                }
                Err(e) => e,
            };
            attempt += 1;
            if Instant::now() + wait >= until {
                return Err(format!("{last} (gave up at the job's deadline after {attempt} attempts)"));
            }
            tokio::time::sleep(wait).await;
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_api_urls() {
        assert_eq!(LocalApi::new("http://127.0.0.1:3128/").unwrap().authority, "127.0.0.1:3128");
        assert!(LocalApi::new("https://127.0.0.1:3128").unwrap_err().contains("only http://"));
        assert!(LocalApi::new("not a url at all").is_err());
    }
}
