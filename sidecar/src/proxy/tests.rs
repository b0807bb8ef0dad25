use super::normalize::strip_userinfo;
use super::*;
use http::header::{self, HeaderMap, HeaderValue};
use http::Uri;

#[test]
fn hop_by_hop_headers_and_connection_listed_ones_go() {
    let mut h = HeaderMap::new();
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, X-Custom-Hop"));
    h.append(header::CONNECTION, HeaderValue::from_static("x-second"));
    h.insert("x-custom-hop", HeaderValue::from_static("1"));
    h.insert("x-second", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::TRAILER, HeaderValue::from_static("x-t"));
    h.insert("x-end-to-end", HeaderValue::from_static("kept"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    strip_hop_by_hop(&mut h);
    let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(h[header::CONTENT_TYPE], "text/plain");
}

#[test]
fn userinfo_is_removed_from_forwarded_uri() {
    let uri: Uri = "http://allowed.com:pw@1.2.3.4:8080/p?q=1".parse().unwrap();
    assert_eq!(strip_userinfo(&uri).unwrap().to_string(), "http://1.2.3.4:8080/p?q=1");
}

/// The rescue layer's mapping: each layer's cause gets the exact answer it got when
/// these checks were inline (status, label, body).
#[test]
fn rescue_answers_each_cause_as_before() {
    use crate::authority::AuthorityError;
    use crate::error::ProxyError;
    let cases: Vec<(BoxError, u16, &str, &str)> = vec![
        (
            Box::new(RouteError::BadTarget(AuthorityError::MissingPort)),
            400,
            AuthorityError::MissingPort.label(),
            "bad request target: missing port\n",
        ),
        (Box::new(RouteError::ConnectWithoutAuthority), 400, "bad_request", "CONNECT needs host:port\n"),
        (Box::new(NormalizeError::BadAuthority), 400, "bad_request", "bad authority\n"),
        (Box::new(NormalizeError::BadTarget), 400, "bad_request", "bad request target\n"),
        (Box::new(TunnelLimitError::Tunnels), 503, "too_many_tunnels", "too many open tunnels\n"),
        (Box::new(TunnelLimitError::Connections), 503, "too_many_tunnels", "too many open tunnels\n"),
        (
            Box::new(ProxyError::ConnectTimeout { target: "a:1".into() }),
            504,
            "connect_timeout",
            "connecting to a:1 timed out\n",
        ),
        (Box::new(std::io::Error::other("boom")), 502, "upstream_failed", "upstream request failed: boom\n"),
    ];
    for (e, status, label, body) in cases {
        let p = rescue::cause(e);
        let resp = p.response();
        assert_eq!(resp.status().as_u16(), status, "{p}");
        assert_eq!(resp.headers()[common::headers::PROXY_ERROR], label, "{p}");
        assert_eq!(format!("{p}\n"), body);
    }
}

fn echo_headers(
) -> impl tower::Service<http::Request<()>, Response = http::Response<HeaderMap>, Error = BoxError, Future = impl Send> + Clone
{
    tower::service_fn(|req: http::Request<()>| async move {
        let mut resp = http::Response::new(req.headers().clone());
        // An upstream that sends the key back: it must not reach the runtime.
        resp.headers_mut().insert(common::headers::INTERNAL_API_KEY, HeaderValue::from_static("leak"));
        Ok::<_, BoxError>(resp)
    })
}

#[tokio::test]
async fn the_key_goes_only_to_the_job_manager_and_client_credentials_nowhere() {
    use crate::authority::parse_authority;
    use tower::{Layer, ServiceExt};
    let jm = parse_authority("jm:8080", None).unwrap();
    let other = parse_authority("example.com:80", None).unwrap();
    let svc = InjectKeyLayer::new(Some("k"), Some(jm.clone())).layer(echo_headers());
    let request = |target: &crate::authority::Target| {
        let mut req = http::Request::new(());
        req.headers_mut().insert(common::headers::INTERNAL_API_KEY, HeaderValue::from_static("runtime-chosen"));
        req.headers_mut().insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic runtime"));
        req.extensions_mut().insert(target.clone());
        req
    };

    let resp = svc.clone().oneshot(request(&jm)).await.unwrap();
    let sent = resp.body();
    assert_eq!(sent[common::headers::INTERNAL_API_KEY], "k");
    assert!(sent[common::headers::INTERNAL_API_KEY].is_sensitive());
    assert!(!sent.contains_key(header::PROXY_AUTHORIZATION));
    assert!(!resp.headers().contains_key(common::headers::INTERNAL_API_KEY));

    let resp = svc.oneshot(request(&other)).await.unwrap();
    let sent = resp.body();
    assert!(!sent.contains_key(common::headers::INTERNAL_API_KEY));
    // The upstream proxy's own credentials are Forward's business (it knows the route).
    assert!(!sent.contains_key(header::PROXY_AUTHORIZATION));
    assert!(!resp.headers().contains_key(common::headers::INTERNAL_API_KEY));
}

#[tokio::test]
async fn normalize_takes_host_from_the_authority_without_userinfo() {
    use tower::{Layer, ServiceExt};
    let mut req = http::Request::new(());
    *req.uri_mut() = "http://user:pw@example.com:8080/p".parse().unwrap();
    req.headers_mut().insert(header::HOST, HeaderValue::from_static("elsewhere"));
    *req.version_mut() = http::Version::HTTP_10;
    let seen = tower::service_fn(|req: http::Request<()>| async move {
        Ok::<_, BoxError>((req.uri().to_string(), req.headers()[header::HOST].clone(), req.version()))
    });
    let (uri, host, version) = NormalizeLayer.layer(seen).oneshot(req).await.unwrap();
    assert_eq!(uri, "http://example.com:8080/p");
    assert_eq!(host, "example.com:8080");
    assert_eq!(version, http::Version::HTTP_11);
}
