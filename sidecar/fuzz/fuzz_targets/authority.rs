//! Fuzz target for the destination parser (`sidecar::authority`): the code every
//! client-written host goes through before the policy judges it. Beyond "never panics",
//! it checks the properties the policy relies on:
//! - a parsed target prints to a form that parses back to the same target (so what is
//!   logged and judged is what is dialled);
//! - anything std reads as a dotted-quad IPv4 or an IPv6 literal comes out as exactly
//!   that address (no spelling turns a literal into a name the policy would not match);
//! - a parsed port is never 0;
//! - `effective_ip` is idempotent (mapped/compat/NAT64 unwrap once to the final v4).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sidecar::authority::{effective_ip, parse_authority, parse_host, target_of_uri, Host};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };

    for default_port in [None, Some(80)] {
        if let Ok(t) = parse_authority(s, default_port) {
            assert_ne!(t.port, 0, "port 0 accepted from {s:?}");
            let printed = t.to_string();
            let again = parse_authority(&printed, None)
                .unwrap_or_else(|e| panic!("{s:?} -> {printed:?} does not re-parse: {e}"));
            assert_eq!(again, t, "{s:?} -> {printed:?} re-parses differently");
        }
    }

    if let Ok(host) = parse_host(s) {
        if let Host::Ip(ip) = host {
            let eff = effective_ip(ip);
            assert_eq!(effective_ip(eff), eff, "effective_ip not idempotent for {ip}");
        }
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            assert_eq!(host, Host::Ip(IpAddr::V4(v4)), "dotted quad {s:?} misread");
        }
    }
    if let Ok(v6) = s.parse::<Ipv6Addr>() {
        let bracketed = format!("[{s}]");
        assert_eq!(parse_host(&bracketed), Ok(Host::Ip(IpAddr::V6(v6))), "IPv6 literal {bracketed:?} misread");
    }

    // Absolute-form request targets as hyper hands them over.
    if let Ok(uri) = s.parse::<http::Uri>() {
        if let Ok(t) = target_of_uri(&uri) {
            assert_ne!(t.port, 0);
        }
    }
});
