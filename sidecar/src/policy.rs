//! The egress policy: pure data and one decision function, judged on the address that
//! will actually be dialled (after DNS resolution), never on what the client wrote.
//!
//! # Precedence (first rule that matches wins)
//!
//! 0. The configured job-manager endpoint (host and port of `SIDECAR_JOB_MANAGER_URL`)
//!    is allowed: the runtime's calls to it are how results and key injection work.
//! 1. Ports: a denied port (`deny_ports`) is refused; when `allow_ports` is non-empty,
//!    any other port is refused; kubelet ports (10250, 10255) are refused unless listed
//!    in `allow_ports`.
//! 2. Names (before any DNS lookup): `deny_hosts` refuses; `allow_hosts` exempts the name
//!    from the built-in name rules (its addresses are still checked in step 3); built-in
//!    names are refused: cloud metadata (`metadata.google.internal`, ...), the Kubernetes
//!    API (`kubernetes.default*`), `localhost` and `*.localhost`.
//! 3. Every resolved address (IPv6 that embeds IPv4 — mapped, SIIT, NAT64 incl. local-use,
//!    6to4, Teredo server and client, compatible — judged as the IPv4 it leads to):
//!    `deny_cidrs` refuses; `allow_cidrs` allows; then the built-in classes refuse:
//!    configured API server addresses, cloud metadata, unspecified, loopback,
//!    link-local, multicast/broadcast/reserved (incl. documentation and benchmarking
//!    ranges), and private ranges (RFC 1918, CGNAT, ULA) only when `deny_private` is
//!    set. Anything else is public: allowed, unless `deny_public` is set (allow-list
//!    mode: only `allow_cidrs` and the job manager are reachable).
//!
//! A request is refused when *any* resolved address is refused: a DNS answer that mixes a
//! public and a forbidden address is treated as hostile rather than raced.
//! Allow lists beat built-in rules by design (an operator who allows `127.0.0.1/32` for a
//! benchmark means it); deny lists beat allow lists.
use crate::authority::{effective_ip, embedded_ipv4, Host, Target};
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[cfg(test)]
mod tests;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

/// Why a destination was allowed or refused. The label is used in logs, metrics and the
/// `x-sidecar-error` header alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    // --- refusals
    Metadata,
    LinkLocal,
    Loopback,
    Unspecified,
    KubernetesApi,
    Kubelet,
    Private,
    Reserved,
    DeniedCidr,
    DeniedHost,
    DeniedPort,
    PortNotAllowed,
    /// Behind an upstream proxy: the name does not resolve locally, so no address rule
    /// could run (`--upstream-proxy-unresolved refuse`, the default).
    Unresolved,
    /// A public address while `deny_public` is set.
    PublicDenied,
    // --- allowances
    Public,
    PrivateAllowed,
    AllowedCidr,
    JobManager,
}

impl Class {
    pub const DENIALS: [Class; 14] = [
        Class::Metadata,
        Class::LinkLocal,
        Class::Loopback,
        Class::Unspecified,
        Class::KubernetesApi,
        Class::Kubelet,
        Class::Private,
        Class::Reserved,
        Class::DeniedCidr,
        Class::DeniedHost,
        Class::DeniedPort,
        Class::PortNotAllowed,
        Class::Unresolved,
        Class::PublicDenied,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Class::Metadata => "metadata",
            Class::LinkLocal => "link_local",
            Class::Loopback => "loopback",
            Class::Unspecified => "unspecified",
            Class::KubernetesApi => "kubernetes_api",
            Class::Kubelet => "kubelet",
            Class::Private => "private",
            Class::Reserved => "reserved",
            Class::DeniedCidr => "denied_cidr",
            Class::DeniedHost => "denied_host",
            Class::DeniedPort => "denied_port",
            Class::PortNotAllowed => "port_not_allowed",
            Class::Unresolved => "unresolved",
            Class::PublicDenied => "public_denied",
            Class::Public => "public",
            Class::PrivateAllowed => "private_allowed",
            Class::AllowedCidr => "allowed_cidr",
            Class::JobManager => "job_manager",
        }
    }

    pub fn from_label(s: &str) -> Option<Class> {
        Class::DENIALS
            .into_iter()
            .chain([Class::Public, Class::PrivateAllowed, Class::AllowedCidr, Class::JobManager])
            .find(|c| c.label() == s)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub class: Class,
    /// Human-readable, safe to show the runtime (it only names the destination).
    pub reason: String,
}

impl Decision {
    fn allow(class: Class, reason: impl Into<String>) -> Self {
        Self { verdict: Verdict::Allow, class, reason: reason.into() }
    }
    pub fn deny(class: Class, reason: impl Into<String>) -> Self {
        Self { verdict: Verdict::Deny, class, reason: reason.into() }
    }
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// A host pattern: `example.com` (exactly), `*.example.com` (subdomains only) or
/// `.example.com` (the domain and its subdomains).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    suffix: String,
    apex: bool,
    subdomains: bool,
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (suffix, apex, subdomains) = if let Some(rest) = s.strip_prefix("*.") {
            (rest.to_string(), false, true)
        } else if let Some(rest) = s.strip_prefix('.') {
            (rest.to_string(), true, true)
        } else {
            (s.clone(), true, false)
        };
        let valid = !suffix.is_empty()
            && suffix
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if !valid {
            return Err(format!("invalid host pattern {s:?} (use example.com, *.example.com or .example.com)"));
        }
        Ok(Self { suffix, apex, subdomains })
    }

    pub fn matches(&self, name: &str) -> bool {
        if name == self.suffix {
            return self.apex;
        }
        self.subdomains
            && name.len() > self.suffix.len()
            && name.ends_with(self.suffix.as_str())
            && name.as_bytes()[name.len() - self.suffix.len() - 1] == b'.'
    }
}

/// Destinations dialled directly instead of through the upstream proxy (a NO_PROXY list):
/// host patterns matched against the name asked for, CIDRs against the address asked
/// for or any address it resolved to. Routing only: the destination policy has already
/// decided before this is asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamBypass {
    pub hosts: Vec<HostPattern>,
    pub cidrs: Vec<IpNet>,
}

impl UpstreamBypass {
    pub fn matches(&self, target: &Target, resolved: &[IpAddr]) -> bool {
        let ip_in = |ip: &IpAddr| self.cidrs.iter().any(|n| n.contains(ip) || n.contains(&effective_ip(*ip)));
        match &target.host {
            Host::Name(name) => self.hosts.iter().any(|p| p.matches(name)) || resolved.iter().any(ip_in),
            Host::Ip(ip) => ip_in(ip),
        }
    }
}

/// An API server address to refuse: any port, or one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiServer {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

pub const KUBELET_PORTS: [u16; 2] = [10250, 10255];

/// Names refused before resolution because they are cloud metadata services.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.com",
    "metadata.platformequinix.com",
    "metadata.tencentyun.com",
];

/// Cloud metadata and credential endpoints, refused on every port.
const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, DigitalOcean
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
    Ipv4Addr::new(169, 254, 170, 23),  // AWS EKS Pod Identity agent
    Ipv4Addr::new(169, 254, 169, 123), // AWS time sync
    Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer (80, 443, 32526: host agent, extensions)
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(192, 0, 0, 192),     // Oracle Cloud (legacy)
];
const METADATA_V6: &[Ipv6Addr] = &[
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), // AWS IMDS (IPv6 endpoint)
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),  // AWS EKS Pod Identity agent (IPv6)
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),  // GCP metadata server (IPv6)
    // Oracle Cloud IMDS over IPv6: OCI's "Getting Instance Metadata" documents
    // http://[fd00:c1::a9fe:a9fe]/opc/v2/ (the v4 169.254.169.254 in the low 32 bits).
    Ipv6Addr::new(0xfd00, 0xc1, 0, 0, 0, 0, 0xa9fe, 0xa9fe),
];

/// Documentation and benchmarking ranges (RFC 5737, 2544, 3849, 9637, 5180): never a
/// real destination, so a name resolving there is refused as reserved.
const RESERVED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
];
const RESERVED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48),
];

fn in_v4(ip: Ipv4Addr, nets: &[(Ipv4Addr, u8)]) -> bool {
    nets.iter().any(|&(net, len)| (u32::from(ip) ^ u32::from(net)) >> (32 - len) == 0)
}

fn in_v6(ip: Ipv6Addr, nets: &[(Ipv6Addr, u8)]) -> bool {
    nets.iter().any(|&(net, len)| (u128::from(ip) ^ u128::from(net)) >> (128 - len) == 0)
}

#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    pub allow_cidrs: Vec<IpNet>,
    pub deny_cidrs: Vec<IpNet>,
    pub allow_hosts: Vec<HostPattern>,
    pub deny_hosts: Vec<HostPattern>,
    pub allow_ports: Vec<u16>,
    pub deny_ports: Vec<u16>,
    pub deny_private: bool,
    /// Refuse public addresses too (allow-list mode).
    pub deny_public: bool,
    pub api_servers: Vec<ApiServer>,
    /// The job manager's endpoint (step 0).
    pub job_manager: Option<Target>,
}

impl EgressPolicy {
    /// Steps 0-2: everything that can be decided before DNS. `Some` is final (an
    /// allowance for the job manager or any refusal); `None` means "resolve, then ask
    /// [`EgressPolicy::decide_addresses`]".
    pub fn decide_name(&self, target: &Target) -> Option<Decision> {
        if self.job_manager.as_ref() == Some(target) {
            return Some(Decision::allow(Class::JobManager, format!("{target} is the job manager")));
        }
        let port = target.port;
        if self.deny_ports.contains(&port) {
            return Some(Decision::deny(Class::DeniedPort, format!("port {port} is on the deny list")));
        }
        if !self.allow_ports.is_empty() && !self.allow_ports.contains(&port) {
            return Some(Decision::deny(Class::PortNotAllowed, format!("port {port} is not on the allow list")));
        }
        if KUBELET_PORTS.contains(&port) && !self.allow_ports.contains(&port) {
            return Some(Decision::deny(Class::Kubelet, format!("port {port} is a kubelet port")));
        }
        let Host::Name(name) = &target.host else {
            return None;
        };
        if self.deny_hosts.iter().any(|p| p.matches(name)) {
            return Some(Decision::deny(Class::DeniedHost, format!("host {name} is on the deny list")));
        }
        if self.allow_hosts.iter().any(|p| p.matches(name)) {
            return None;
        }
        if METADATA_NAMES.contains(&name.as_str()) {
            return Some(Decision::deny(Class::Metadata, format!("{name} is a cloud metadata service")));
        }
        if name == "kubernetes" || name.starts_with("kubernetes.default") {
            return Some(Decision::deny(Class::KubernetesApi, format!("{name} is the Kubernetes API")));
        }
        if name == "localhost" || name.ends_with(".localhost") {
            return Some(Decision::deny(Class::Loopback, format!("{name} is loopback")));
        }
        None
    }

    /// Step 3 for every address the destination resolved to (or its literal address).
    pub fn decide_addresses(&self, target: &Target, addrs: &[IpAddr]) -> Decision {
        let mut allowed = None;
        for &ip in addrs {
            let d = self.decide_ip(ip, target.port);
            if !d.is_allowed() {
                return match &target.host {
                    Host::Name(name) => Decision { reason: format!("{name} resolves to {}", d.reason), ..d },
                    Host::Ip(_) => d,
                };
            }
            // Report the most specific allowance (an allow-list hit over "public").
            if allowed.as_ref().is_none_or(|a: &Decision| a.class == Class::Public) {
                allowed = Some(d);
            }
        }
        allowed.unwrap_or_else(|| Decision::deny(Class::Unspecified, format!("{} has no addresses", target.host)))
    }

    /// The whole decision for a destination and the addresses it resolved to.
    pub fn decide(&self, target: &Target, addrs: &[IpAddr]) -> Decision {
        self.decide_name(target).unwrap_or_else(|| self.decide_addresses(target, addrs))
    }

    /// One resolved address. An IPv6 address that embeds IPv4 ([`embedded_ipv4`]:
    /// mapped, SIIT, NAT64, 6to4, Teredo, compatible) is judged as the IPv4 address it
    /// leads to, the whole decision (lists, API server, classes); Teredo carries two
    /// (server and client) and is refused if either is. A deny CIDR on the IPv6 form
    /// itself still refuses.
    fn decide_ip(&self, raw: IpAddr, port: u16) -> Decision {
        if self.deny_cidrs.iter().any(|n| n.contains(&raw)) {
            return Decision::deny(Class::DeniedCidr, format!("{raw} is in a denied CIDR"));
        }
        let Some((first, second)) = embedded_ipv4(raw) else {
            return self.decide_one(raw, raw, port);
        };
        let d = self.decide_one(raw, IpAddr::V4(first), port);
        match second {
            Some(other) if d.is_allowed() => self.decide_one(raw, IpAddr::V4(other), port),
            _ => d,
        }
    }

    /// `ip` judged on behalf of `raw` (the address resolved, which may embed `ip`).
    fn decide_one(&self, raw: IpAddr, ip: IpAddr, port: u16) -> Decision {
        let shown = if ip == raw { ip.to_string() } else { format!("{raw} (= {ip})") };
        if self.deny_cidrs.iter().any(|n| n.contains(&ip)) {
            return Decision::deny(Class::DeniedCidr, format!("{shown} is in a denied CIDR"));
        }
        if self.allow_cidrs.iter().any(|n| n.contains(&ip) || n.contains(&raw)) {
            return Decision::allow(Class::AllowedCidr, format!("{shown} is in an allowed CIDR"));
        }
        if self.api_servers.iter().any(|a| a.ip == ip && a.port.is_none_or(|p| p == port)) {
            return Decision::deny(Class::KubernetesApi, format!("{shown} is the Kubernetes API server"));
        }
        let class = classify(ip);
        let what = match class {
            Class::Metadata => "a cloud metadata address",
            Class::Unspecified => "an unspecified address",
            Class::Loopback => "loopback",
            Class::LinkLocal => "link-local",
            Class::Reserved => "multicast, broadcast, documentation, benchmarking or reserved",
            Class::Private if self.deny_private => "a private address",
            Class::Private => return Decision::allow(Class::PrivateAllowed, format!("{shown} is private (allowed)")),
            _ if self.deny_public => {
                return Decision::deny(
                    Class::PublicDenied,
                    format!("{shown} is public and only allowed CIDRs may be reached (deny-public)"),
                )
            }
            _ => return Decision::allow(Class::Public, format!("{shown} is public")),
        };
        Decision::deny(class, format!("{shown} is {what}"))
    }
}

/// The built-in class of an (effective) address: one of the refusal classes, `Private`,
/// or `Public`.
pub fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if METADATA_V4.contains(&v4) {
                Class::Metadata
            } else if o[0] == 0 {
                Class::Unspecified
            } else if v4.is_loopback() {
                Class::Loopback
            } else if v4.is_link_local() {
                Class::LinkLocal
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 || in_v4(v4, RESERVED_V4) {
                Class::Reserved
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                // RFC 1918, CGNAT 100.64/10 (also used by some clusters).
                Class::Private
            } else {
                Class::Public
            }
        }
        IpAddr::V6(v6) => {
            let s0 = v6.segments()[0];
            if METADATA_V6.contains(&v6) {
                Class::Metadata
            } else if v6.is_unspecified() {
                Class::Unspecified
            } else if v6.is_loopback() {
                Class::Loopback
            } else if (s0 & 0xffc0) == 0xfe80 {
                Class::LinkLocal
            } else if v6.is_multicast() || (s0 & 0xffc0) == 0xfec0 || in_v6(v6, RESERVED_V6) {
                Class::Reserved
            } else if (s0 & 0xfe00) == 0xfc00 {
                Class::Private
            } else {
                Class::Public
            }
        }
    }
}
