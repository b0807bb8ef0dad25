//! `job-manager check --url http://host:port/readyz`: one HTTP GET, exit 0 on a 2xx
//! answer. The chart's `helm test` pod runs it in the job-manager image (FROM scratch:
//! no shell, no curl) against the Service.
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The answer's status and the start of its body, or why there was none.
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url:?}: only http:// URLs are checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: job-manager-check\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send to {addr}: {e}"))?;
        let mut answer = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut answer).await.map_err(|e| format!("read from {addr}: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer =
        tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url}: no answer within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| text.starts_with("HTTP/"))
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.chars().take(2000).collect()).unwrap_or_default();
    Ok((status, body))
}

/// The subcommand: prints the outcome, returns the exit status.
pub async fn run(url: &str, timeout: Duration) -> i32 {
    match get(url, timeout).await {
        Ok((status, _)) if (200..300).contains(&status) => {
            println!("{url}: {status}");
            0
        }
        Ok((status, body)) => {
            eprintln!("{url}: {status}\n{body}");
            1
        }
        Err(e) => {
            eprintln!("job-manager check: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(answer: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /readyz HTTP/1.1\r\n"));
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        format!("http://{addr}/readyz")
    }

    #[tokio::test]
    async fn a_2xx_passes_anything_else_fails_with_the_body() {
        let url = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        assert_eq!(run(&url, Duration::from_secs(5)).await, 0);
        let url = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nbroker unreachable").await;
        assert_eq!(get(&url, Duration::from_secs(5)).await.unwrap(), (503, "broker unreachable".into()));
        let url = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\nbroker unreachable").await;
        assert_eq!(run(&url, Duration::from_secs(5)).await, 1);
    }

    #[tokio::test]
    async fn bad_urls_and_silent_servers_fail_clearly() {
        assert!(get("https://x/readyz", Duration::from_secs(1)).await.unwrap_err().contains("only http://"));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = get(&format!("http://{closed}/readyz"), Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("connect"), "{err}");
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/readyz", silent.local_addr().unwrap());
        let err = get(&url, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.contains("no answer within"), "{err}");
        drop(silent);
    }
}
