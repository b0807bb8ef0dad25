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
