//! The SSRF corpus (tests/data/ssrf-corpus.txt), through the pure policy and through the
//! running proxy: every spelling must be refused with the expected class.
#![allow(clippy::unwrap_used)] // in a test, an unwrap is an assertion
mod support;

use sidecar::authority::{parse_authority, target_of_uri, Host};
use sidecar::policy::{Class, Verdict};
use sidecar::resolve::{Resolve, StaticResolver};
use support::*;

struct Case {
    line: usize,
    kind: String,
    target: String,
    expected: String,
}

fn corpus() -> Vec<Case> {
    let text = include_str!("data/ssrf-corpus.txt");
    let cases: Vec<Case> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "corpus line {}: {l:?}", i + 1);
            Case { line: i + 1, kind: f[0].into(), target: f[1].into(), expected: f[2].into() }
        })
        .collect();
    for c in &cases {
        assert!(matches!(c.kind.as_str(), "GET" | "CONNECT"), "line {}: kind {}", c.line, c.kind);
        assert!(
            c.expected == "bad_target" || Class::from_label(&c.expected).is_some(),
            "line {}: {}",
            c.line,
            c.expected
        );
    }
    assert!(cases.len() > 100, "the corpus is the point; {} cases", cases.len());
    cases
}

fn corpus_resolver() -> StaticResolver {
    resolver(&[
        ("evil.example", &["169.254.169.254"]),
        ("mapped.example", &["::ffff:169.254.169.254"]),
        ("v6meta.example", &["fd00:ec2::254"]),
        ("api.example", &["10.96.0.1"]),
        ("rebind.example", &["93.184.216.34", "127.0.0.1"]),
        ("lo.example", &["127.0.0.2"]),
        ("node.example", &["10.0.0.5"]),
    ])
}

/// The corpus is about the default policy (public and private allowed); its running
/// proxy sends anything allowed to a dead upstream proxy, so nothing leaves.
const DEFAULT_POLICY: [(&str, &str); 2] = [("SIDECAR_DENY_PUBLIC", "false"), ("SIDECAR_DENY_PRIVATE", "false")];

fn corpus_config() -> sidecar::config::Config {
    config(&["--api-server-address", "10.96.0.1"], &DEFAULT_POLICY)
}

#[tokio::test]
async fn corpus_through_pure_policy() {
    let policy = corpus_config().policy;
    let resolver = corpus_resolver();
    for c in corpus() {
        let parsed = match c.kind.as_str() {
            "GET" => c
                .target
                .parse::<http::Uri>()
                .map_err(|e| e.to_string())
                .and_then(|u| target_of_uri(&u).map_err(|e| e.to_string())),
            _ => parse_authority(&c.target, None).map_err(|e| e.to_string()),
        };
        let target = match (parsed, c.expected.as_str()) {
            (Err(_), "bad_target") => continue,
            (Err(e), _) => panic!("line {}: {} did not parse: {e}", c.line, c.target),
            (Ok(t), "bad_target") => panic!("line {}: {} parsed as {t}, expected a parse error", c.line, c.target),
            (Ok(t), _) => t,
        };
        let addrs = match &target.host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(n) => resolver.resolve(n).await.unwrap_or_default(),
        };
        let d = policy.decide(&target, &addrs);
        assert_eq!(d.verdict, Verdict::Deny, "line {}: {} allowed: {}", c.line, c.target, d.reason);
        assert_eq!(d.class.label(), c.expected, "line {}: {}: {}", c.line, c.target, d.reason);
        assert!(!d.reason.is_empty());
    }
}

#[tokio::test]
async fn corpus_through_running_proxy() {
    // Egress goes to a dead upstream proxy: should a corpus line ever be allowed by
    // mistake, the test fails with a 502 instead of reaching the internet.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = format!("http://{dead}");
    let cfg = config(&["--api-server-address", "10.96.0.1", "--upstream-proxy", &upstream], &DEFAULT_POLICY);
    let sc = Sidecar::start(cfg, corpus_resolver()).await;
    for c in corpus() {
        let raw = format!("{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", c.kind, c.target);
        let answer = raw_exchange(sc.addr, raw.as_bytes()).await;
        let status_line = answer.lines().next().unwrap_or_default().to_string();
        let label = answer
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-sidecar-error: ").map(str::to_string))
            .unwrap_or_default();
        if c.expected == "bad_target" {
            // Either our parser (400 bad_target) or hyper's request-line parser (plain 400).
            assert!(status_line.starts_with("HTTP/1.1 400"), "line {}: {} -> {answer:?}", c.line, c.target);
            assert!(label.is_empty() || label == "bad_target", "line {}: {label}", c.line);
        } else {
            assert!(status_line.starts_with("HTTP/1.1 403"), "line {}: {} -> {answer:?}", c.line, c.target);
            assert_eq!(label, c.expected, "line {}: {}", c.line, c.target);
        }
    }
    sc.healthy().await;
    sc.stop().await.unwrap();
}
