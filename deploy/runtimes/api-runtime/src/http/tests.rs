use super::*;

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

#[test]
fn the_proxy_is_the_sidecar_whatever_no_proxy_says() {
    let p = Proxies::from_env(&env(&[
        ("HTTP_PROXY", "http://127.0.0.1:3128"),
        ("https_proxy", "http://127.0.0.1:3129"),
        ("NO_PROXY", "*"),
    ]))
    .unwrap();
    assert_eq!(p.http, ("127.0.0.1".to_string(), 3128));
    assert_eq!(p.https, ("127.0.0.1".to_string(), 3129));
}

#[test]
fn without_proxy_variables_the_job_api_is_the_proxy() {
    let p = Proxies::from_env(&env(&[("JOB_API_URL", "http://[::1]:3128")])).unwrap();
    assert_eq!(p.http, ("::1".to_string(), 3128));
    assert_eq!(p.https, p.http);
}

#[test]
fn no_proxy_at_all_or_a_bad_one_is_an_error() {
    assert_eq!(
        Proxies::from_env(&env(&[])).unwrap_err(),
        "no proxy: none of HTTP_PROXY, HTTPS_PROXY, JOB_API_URL is set"
    );
    assert_eq!(
        Proxies::from_env(&env(&[("HTTP_PROXY", "socks5://127.0.0.1:1080")])).unwrap_err(),
        "proxy URL \"socks5://127.0.0.1:1080\": only http:// proxies are supported"
    );
}

#[test]
fn only_http_and_https_urls_with_a_host_are_requested() {
    assert!(parse_url("https://example.com/a?b=1").is_ok());
    assert_eq!(
        parse_url("ftp://example.com/f").unwrap_err().to_string(),
        "unsupported URL \"ftp://example.com/f\" (http:// or https:// only)"
    );
    assert_eq!(
        parse_url("file:///etc/passwd").unwrap_err().to_string(),
        "bad URL \"file:///etc/passwd\": invalid format"
    );
    assert!(parse_url("not a url").is_err());
}

#[test]
fn redirect_locations_resolve_against_the_answering_url() {
    let base: Uri = "https://example.com:8443/a/b/page?x=1".parse().unwrap();
    for (location, want) in [
        ("https://other.test/z", "https://other.test/z"),
        ("//cdn.test/img", "https://cdn.test/img"),
        ("/root?y=2", "https://example.com:8443/root?y=2"),
        ("sibling", "https://example.com:8443/a/b/sibling"),
    ] {
        assert_eq!(resolve_location(&base, location).unwrap(), want, "{location}");
    }
    assert!(resolve_location(&base, "ftp://x/").is_err());
}

/// A one-shot HTTP server on loopback answering each connection with `answer`, recording
/// what it read: it stands in for the sidecar (the real one is in `tests/api_runtime.rs`).
async fn fake_proxy(answer: &'static str) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
            s.write_all(answer.as_bytes()).await.unwrap();
        }
        seen
    });
    (port, task)
}

fn request(url: &str) -> HttpRequest {
    HttpRequest {
        method: Method::GET,
        url: url.into(),
        headers: vec![],
        body: None,
        timeout: Duration::from_secs(5),
        follow_redirects: true,
    }
}

#[tokio::test]
async fn http_goes_to_the_proxy_in_absolute_form() {
    let (port, seen) = fake_proxy("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok").await;
    let proxies = Proxies { http: ("127.0.0.1".into(), port), https: ("127.0.0.1".into(), port) };
    let mut hops = Vec::new();
    let resp = fetch(&proxies, request("http://origin.test:8080/p?q=1"), &mut hops).await.unwrap();
    assert_eq!((resp.status, &resp.body[..]), (200, &b"ok"[..]));
    assert_eq!(resp.headers.iter().find(|(k, _)| k == "x-a").map(|(_, v)| v.as_str()), Some("1"));
    assert_eq!(hops.len(), 1);
    assert!(hops[0].timings.total_ms >= hops[0].timings.connect_ms);
    let seen = seen.await.unwrap();
    assert!(seen[0].starts_with("GET http://origin.test:8080/p?q=1 HTTP/1.1\r\n"), "{seen:?}");
    assert!(seen[0].to_ascii_lowercase().contains("host: origin.test:8080\r\n"), "{seen:?}");
}

#[tokio::test]
async fn https_asks_the_proxy_for_a_tunnel_and_reports_its_refusal() {
    let (port, seen) = fake_proxy(
        "HTTP/1.1 403 Forbidden\r\nx-sidecar-error: metadata\r\ncontent-length: 32\r\n\r\n169.254.169.254 is metadata, no\n",
    )
    .await;
    let proxies = Proxies { http: ("127.0.0.1".into(), port), https: ("127.0.0.1".into(), port) };
    let mut hops = Vec::new();
    let err = fetch(&proxies, request("https://169.254.169.254/latest"), &mut hops).await.unwrap_err();
    assert_eq!(
        err,
        HttpError::Refused { status: 403, label: "metadata".into(), reason: "169.254.169.254 is metadata, no".into() }
    );
    assert_eq!(
        hops[0].error.as_deref(),
        Some("refused by the sidecar (403 metadata): 169.254.169.254 is metadata, no")
    );
    assert!(seen.await.unwrap()[0].starts_with("CONNECT 169.254.169.254:443 HTTP/1.1\r\n"));
}

#[tokio::test]
async fn a_sidecar_answer_to_a_plain_request_is_a_failure_not_the_destinations_answer() {
    let (port, _) =
        fake_proxy("HTTP/1.1 502 Bad Gateway\r\nx-sidecar-error: connect_failed\r\ncontent-length: 7\r\n\r\nrefused")
            .await;
    let proxies = Proxies { http: ("127.0.0.1".into(), port), https: ("127.0.0.1".into(), port) };
    let err = fetch(&proxies, request("http://origin.test/"), &mut Vec::new()).await.unwrap_err();
    assert_eq!(err.to_string(), "refused by the sidecar (502 connect_failed): refused");
}

#[tokio::test]
async fn without_a_sidecar_a_request_fails_and_never_goes_direct() {
    // A port nothing listens on stands for a sidecar that is gone.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let proxies = Proxies { http: ("127.0.0.1".into(), port), https: ("127.0.0.1".into(), port) };
    let err = fetch(&proxies, request("http://127.0.0.1:9/"), &mut Vec::new()).await.unwrap_err();
    let HttpError::Failed(message) = err else { panic!("{err:?}") };
    assert!(message.starts_with(&format!("cannot connect to the sidecar at 127.0.0.1:{port}: ")), "{message}");
}
