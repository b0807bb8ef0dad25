//! Typed value parsers: CIDRs, ports, API server addresses, the job manager and
//! upstream proxy URLs. Pure functions from a string to a value or a message.
use super::{JobManagerEndpoint, UpstreamProxy};
use crate::authority::{parse_authority, parse_host, Host};
use crate::policy::{ApiServer, UpstreamBypass};
use common::secret::Secret;
use std::net::SocketAddr;

pub(super) fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    // A bare address means just that address.
    s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from).map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)"))
}

pub(super) fn parse_port_setting(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

pub(super) fn parse_api_server(s: &str) -> Result<ApiServer, String> {
    if let Ok(ip) = s.parse() {
        return Ok(ApiServer { ip, port: None });
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(ApiServer { ip: sa.ip(), port: Some(sa.port()) });
    }
    Err(format!("{s:?} is not an IP or IP:PORT"))
}

pub(super) fn parse_job_manager_url(s: &str) -> Result<JobManagerEndpoint, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!("scheme {other:?} is not supported (the job manager Service is plain http in-cluster)"))
        }
        None => return Err(format!("{s:?} needs a scheme, e.g. http://job-manager:8080")),
    }
    let authority = uri.authority().ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err("credentials do not belong in the job manager URL".into());
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{s:?} must not have a path (the result path is fixed)"));
    }
    let target = parse_authority(authority.as_str(), Some(80)).map_err(|e| e.to_string())?;
    Ok(JobManagerEndpoint { base: format!("http://{target}"), target })
}

pub(super) fn parse_upstream_proxy(s: &str) -> Result<UpstreamProxy, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("must be http://[user:pass@]host:port or https://...".into()),
    };
    let authority = uri.authority().ok_or("has no host")?.as_str();
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let target = parse_authority(hostport, Some(if tls { 443 } else { 80 })).map_err(|e| e.to_string())?;
    let host = match &target.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.clone(),
    };
    let authorization = userinfo
        .map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let user = percent_decode_lossless(user)?;
            let pass = percent_decode_lossless(pass)?;
            use base64::Engine;
            Ok::<_, String>(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )))
        })
        .transpose()?;
    // Validate the host spelling once, so dialing never meets a surprise.
    parse_host(&host).map_err(|e| e.to_string())?;
    Ok(UpstreamProxy {
        tls,
        host,
        port: target.port,
        authorization,
        ca_file: None,
        insecure: false,
        bypass: UpstreamBypass::default(),
        unresolved: super::Unresolved::Refuse,
    })
}

pub(super) fn percent_decode_lossless(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding in credentials")?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}
