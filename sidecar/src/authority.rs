//! Destination parsing: turn whatever a client wrote (absolute URI, CONNECT target) into
//! one canonical [`Target`]. Every spelling a libc or browser would accept for an address
//! must come out as that address, otherwise a policy keyed on addresses is bypassable:
//! `2130706433`, `0x7f.1`, `017700000001`, `127.1`, `[::ffff:127.0.0.1]`, `LOCALHOST.`,
//! `%31%32%37.0.0.1`, `http://allowed.com@127.0.0.1/`. Anything ambiguous is an error,
//! never a guess.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[cfg(test)]
mod tests;

/// A destination host: an address literal, or a normalised DNS name (lower case, no
/// trailing dot, ASCII only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Host and port of one destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("empty host")]
    EmptyHost,
    #[error("missing port")]
    MissingPort,
    #[error("invalid port {0:?}")]
    BadPort(String),
    #[error("invalid percent-encoding in host")]
    BadPercentEncoding,
    #[error("invalid IPv4 address {0:?}")]
    BadIpv4(String),
    #[error("invalid IPv6 address {0:?}")]
    BadIpv6(String),
    #[error("invalid character {0:?} in host")]
    BadChar(char),
    #[error("unsupported scheme {0:?} (only http is proxied in absolute form; use CONNECT for https)")]
    UnsupportedScheme(String),
    #[error("request target has no host")]
    NoAuthority,
}

impl AuthorityError {
    pub fn label(&self) -> &'static str {
        match self {
            AuthorityError::UnsupportedScheme(_) => "unsupported_scheme",
            _ => "bad_target",
        }
    }
}

/// Parses a host as it appears in an authority (without port): brackets, percent
/// encoding, case, trailing dots and the inet_aton IPv4 forms are all normalised.
pub fn parse_host(raw: &str) -> Result<Host, AuthorityError> {
    let decoded;
    let mut s = raw;
    if s.contains('%') {
        decoded = percent_decode(s)?;
        s = &decoded;
    }
    if s.is_empty() {
        return Err(AuthorityError::EmptyHost);
    }
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(|| AuthorityError::BadIpv6(s.to_string()))?;
        let ip: Ipv6Addr = inner.parse().map_err(|_| AuthorityError::BadIpv6(s.to_string()))?;
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    if s.contains(':') {
        // An unbracketed IPv6 literal cannot be told apart from host:port; refuse it.
        return match s.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(Host::Ip(IpAddr::V6(ip))),
            Err(_) => Err(AuthorityError::BadChar(':')),
        };
    }
    let trimmed = s.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(AuthorityError::EmptyHost);
    }
    if let Some(c) = trimmed.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))) {
        return Err(AuthorityError::BadChar(c));
    }
    let lower = if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(trimmed)
    };
    if let Some(ip) = parse_ipv4_loose(&lower)? {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    if lower.split('.').any(str::is_empty) {
        return Err(AuthorityError::BadChar('.'));
    }
    Ok(Host::Name(lower.into_owned()))
}

/// IPv4 the way `inet_aton` (and so curl, browsers' URL parsers) reads it: one to four
/// parts, each decimal, octal (leading `0`) or hex (`0x`), the last part filling the
/// remaining bytes. Returns `Ok(None)` for things that are names; a string whose last
/// label is numeric but is not a valid address is an error (WHATWG URL does the same),
/// so `1.2.3.999` cannot slip through as a "name".
pub fn parse_ipv4_loose(s: &str) -> Result<Option<Ipv4Addr>, AuthorityError> {
    let last = s.rsplit('.').next().unwrap_or(s);
    if !looks_numeric(last) {
        return Ok(None);
    }
    let bad = || AuthorityError::BadIpv4(s.to_string());
    // No allocation: this runs for every proxied request.
    let mut nums = [0u64; 4];
    let mut n = 0;
    for p in s.split('.') {
        if n == 4 {
            return Err(bad());
        }
        nums[n] = parse_ipv4_part(p).ok_or_else(bad)?;
        n += 1;
    }
    let (init, last) = (&nums[..n - 1], nums[n - 1]);
    if init.iter().any(|&x| x > 255) {
        return Err(bad());
    }
    let last_bits = 8 * (5 - n as u32);
    if last_bits < 32 && last >= 1u64 << last_bits || last > u32::MAX as u64 {
        return Err(bad());
    }
    let mut v: u32 = 0;
    for (i, x) in init.iter().enumerate() {
        v |= (*x as u32) << (24 - 8 * i as u32);
    }
    v |= last as u32;
    Ok(Some(Ipv4Addr::from(v)))
}

fn looks_numeric(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    label.chars().all(|c| c.is_ascii_digit())
}

fn parse_ipv4_part(p: &str) -> Option<u64> {
    if p.is_empty() || p.len() > 34 {
        return None;
    }
    if let Some(hex) = p.strip_prefix("0x") {
        if hex.is_empty() {
            return Some(0);
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if p.len() > 1 && p.starts_with('0') {
        return u64::from_str_radix(&p[1..], 8).ok();
    }
    p.parse().ok()
}

fn percent_decode(s: &str) -> Result<String, AuthorityError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(AuthorityError::BadPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| AuthorityError::BadPercentEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| AuthorityError::BadPercentEncoding)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let out = String::from_utf8(out).map_err(|_| AuthorityError::BadPercentEncoding)?;
    // Double encoding (`%2531`) or an IPv6 zone id: refuse rather than decode twice.
    if out.contains('%') {
        return Err(AuthorityError::BadPercentEncoding);
    }
    Ok(out)
}

/// Parses `host[:port]` (an authority, possibly with `userinfo@`). The port defaults to
/// `default_port` when absent; `None` means a port is required (CONNECT).
pub fn parse_authority(authority: &str, default_port: Option<u16>) -> Result<Target, AuthorityError> {
    // Userinfo tricks: `allowed.com@169.254.169.254` goes to what follows the last '@'.
    let hostport = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    if hostport.is_empty() {
        return Err(AuthorityError::EmptyHost);
    }
    let (host, port) = if hostport.starts_with('[') {
        match hostport.find(']') {
            Some(end) => {
                let rest = &hostport[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if rest.is_empty() => None,
                    None => return Err(AuthorityError::BadIpv6(hostport.to_string())),
                };
                (&hostport[..=end], port)
            }
            None => return Err(AuthorityError::BadIpv6(hostport.to_string())),
        }
    } else {
        match hostport.rfind(':') {
            Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some("") | None => default_port.ok_or(AuthorityError::MissingPort)?,
        Some(p) => parse_port(p)?,
    };
    Ok(Target { host: parse_host(host)?, port })
}

fn parse_port(p: &str) -> Result<u16, AuthorityError> {
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort(p.to_string()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::BadPort(p.to_string())),
        Ok(n) => Ok(n),
    }
}

/// The destination of an absolute-form request (`http://host[:port]/...`).
pub fn target_of_uri(uri: &http::Uri) -> Result<Target, AuthorityError> {
    let authority = uri.authority().ok_or(AuthorityError::NoAuthority)?;
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => 80,
        Some(other) => return Err(AuthorityError::UnsupportedScheme(other.to_string())),
        None => return Err(AuthorityError::NoAuthority),
    };
    parse_authority(authority.as_str(), Some(default_port))
}

/// The IPv4 addresses an IPv6 address leads to, judged in its place (RFC 6052,
/// 6145, 3056, 4380, 4291): IPv4-mapped `::ffff:a.b.c.d`, SIIT `::ffff:0:a.b.c.d`,
/// NAT64 `64:ff9b::/96` and local-use `64:ff9b:1::/48` (last 32 bits), 6to4 `2002::/16`
/// (bits 16..48), Teredo `2001::/32` (server: bits 32..64; client: last 32 bits
/// inverted; both count), IPv4-compatible `::a.b.c.d` (deprecated; `::` and `::1` are
/// themselves). `None` for IPv4 and every other IPv6 address.
pub fn embedded_ipv4(ip: IpAddr) -> Option<(Ipv4Addr, Option<Ipv4Addr>)> {
    let IpAddr::V6(v6) = ip else {
        return None;
    };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    let tail = v4(s[6], s[7]);
    let zero = |r: std::ops::Range<usize>| s[r].iter().all(|&x| x == 0);
    match s {
        _ if zero(0..5) && s[5] == 0xffff => Some((tail, None)),
        _ if zero(0..4) && s[4] == 0xffff && s[5] == 0 => Some((tail, None)),
        [0x64, 0xff9b, ..] if zero(2..6) => Some((tail, None)),
        [0x64, 0xff9b, 1, ..] => Some((tail, None)),
        [0x2002, hi, lo, ..] => Some((v4(hi, lo), None)),
        [0x2001, 0, hi, lo, ..] => Some((v4(hi, lo), Some(Ipv4Addr::from(!u32::from(tail))))),
        _ if zero(0..6) && !(s[6] == 0 && s[7] <= 1) => Some((tail, None)),
        _ => None,
    }
}

/// The address the policy should judge in place of `ip`: the (first) IPv4 address it
/// embeds ([`embedded_ipv4`]), or itself. The policy judges Teredo's second one too.
pub fn effective_ip(ip: IpAddr) -> IpAddr {
    embedded_ipv4(ip).map_or(ip, |(v4, _)| IpAddr::V4(v4))
}
