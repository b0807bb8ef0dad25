//! One function per group of settings, each checking its settings in a fixed order
//! into the shared [`Check`]: listeners, egress policy, ingress, upstream proxy,
//! logging. [`parse_config`](super::parse_config) calls them in that order.
use super::check::{err, parse_addr, Check};
use super::values::{parse_api_server, parse_cidr, parse_port_setting, parse_upstream_proxy};
use super::*;
use crate::policy::{ApiServer, EgressPolicy, HostPattern, UpstreamBypass};
use crate::telemetry::log_filter;

pub(super) struct Listeners {
    pub listen: SocketAddr,
    /// `--listen` was given (not defaulted), for the exclusion with `--listen-stdin`.
    pub listen_given: bool,
    pub listen_stdin: bool,
    pub admin_listen: Option<SocketAddr>,
    pub ready_file: Option<PathBuf>,
}

/// Where the proxy and the admin endpoints listen, and where the bound addresses go.
pub(super) fn listeners(c: &mut Check<'_>, cli: &Cli) -> Listeners {
    let listen = c
        .ok(parse_addr(c.one(&cli.listen, "listen"), ENV_LISTEN, "--listen"))
        .flatten()
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3128)));
    let listen_given = c.one(&cli.listen, "listen").is_some();
    let listen_stdin = c.flag(&cli.listen_stdin, ENV_LISTEN_STDIN, "--listen-stdin");
    let admin_listen =
        c.ok(parse_addr(c.one(&cli.admin_listen, "admin_listen"), ENV_ADMIN_LISTEN, "--admin-listen")).flatten();
    // Never fails: its place in the check order does not matter.
    let ready_file = c.one(&cli.ready_file, "ready_file").map(PathBuf::from);
    Listeners { listen, listen_given, listen_stdin, admin_listen, ready_file }
}

/// An inherited listener replaces `--listen`, and takes stdin, so the key cannot come
/// from there.
pub(super) fn listener_rules(c: &mut Check<'_>, listeners: &Listeners, key: &KeySource) {
    if !listeners.listen_stdin {
        return;
    }
    if listeners.listen_given {
        c.fail(err(ENV_LISTEN_STDIN, "--listen-stdin", "give either --listen or --listen-stdin, not both"));
    }
    if *key == KeySource::Stdin {
        c.fail(err(
            ENV_LISTEN_STDIN,
            "--listen-stdin",
            "stdin is the listener: the internal API key must come from a file, not `-`",
        ));
    }
}

/// The egress policy (job manager target excepted) and report-only mode.
pub(super) fn egress_policy(c: &mut Check<'_>, cli: &Cli) -> (EgressPolicy, bool) {
    let mut policy = EgressPolicy::default();
    for s in c.list(&cli.allow_cidrs) {
        let r = parse_cidr(&s).map_err(|m| err(ENV_ALLOW_CIDRS, "--allow-cidr", m));
        policy.allow_cidrs.extend(c.ok(r));
    }
    for s in c.list(&cli.deny_cidrs) {
        let r = parse_cidr(&s).map_err(|m| err(ENV_DENY_CIDRS, "--deny-cidr", m));
        policy.deny_cidrs.extend(c.ok(r));
    }
    for s in c.list(&cli.allow_hosts) {
        let r = HostPattern::parse(&s).map_err(|m| err(ENV_ALLOW_HOSTS, "--allow-host", m));
        policy.allow_hosts.extend(c.ok(r));
    }
    for s in c.list(&cli.deny_hosts) {
        let r = HostPattern::parse(&s).map_err(|m| err(ENV_DENY_HOSTS, "--deny-host", m));
        policy.deny_hosts.extend(c.ok(r));
    }
    for s in c.list(&cli.allow_ports) {
        let r = parse_port_setting(&s).map_err(|m| err(ENV_ALLOW_PORTS, "--allow-port", m));
        policy.allow_ports.extend(c.ok(r));
    }
    for s in c.list(&cli.deny_ports) {
        let r = parse_port_setting(&s).map_err(|m| err(ENV_DENY_PORTS, "--deny-port", m));
        policy.deny_ports.extend(c.ok(r));
    }
    policy.deny_private = c.flag(&cli.deny_private, ENV_DENY_PRIVATE, "--deny-private");
    policy.deny_public = c.flag(&cli.deny_public, ENV_DENY_PUBLIC, "--deny-public");
    let report_only = c.flag(&cli.report_only, ENV_REPORT_ONLY, "--report-only");
    for s in c.list(&cli.api_server_addresses) {
        let r = parse_api_server(&s).map_err(|m| err(ENV_API_SERVER_ADDRESSES, "--api-server-address", m));
        policy.api_servers.extend(c.ok(r));
    }
    // In a pod, Kubernetes tells us where its API is; refuse it without being asked.
    if let Some(host) = c.env.get(ENV_KUBERNETES_SERVICE_HOST).filter(|s| !s.is_empty()) {
        if let Ok(ip) = host.trim().parse() {
            policy.api_servers.push(ApiServer { ip, port: None });
        }
    }
    (policy, report_only)
}

/// The ingress listener and the runtime address behind it (both or neither), and
/// whether `--ingress-listen` was given at all (for the cross-setting rules).
pub(super) fn ingress(c: &mut Check<'_>, cli: &Cli) -> (Option<Ingress>, bool) {
    let ingress_listen = c.one(&cli.ingress_listen, "ingress_listen");
    let ingress_upstream = c.one(&cli.ingress_upstream, "ingress_upstream");
    let ingress = match (ingress_listen, ingress_upstream) {
        (Some(listen), Some(upstream)) => {
            let listen = c.ok(parse_addr(Some(listen), ENV_INGRESS_LISTEN, "--ingress-listen")).flatten();
            let upstream = c.ok(parse_addr(Some(upstream), ENV_INGRESS_UPSTREAM, "--ingress-upstream")).flatten();
            listen.zip(upstream).map(|(listen, upstream)| Ingress { listen, upstream })
        }
        (None, None) => None,
        (Some(listen), None) => {
            c.ok(parse_addr(Some(listen), ENV_INGRESS_LISTEN, "--ingress-listen"));
            c.fail(err(ENV_INGRESS_UPSTREAM, "--ingress-upstream", "required with --ingress-listen"));
            None
        }
        (None, Some(upstream)) => {
            c.ok(parse_addr(Some(upstream), ENV_INGRESS_UPSTREAM, "--ingress-upstream"));
            c.fail(err(ENV_INGRESS_LISTEN, "--ingress-listen", "required with --ingress-upstream"));
            None
        }
    };
    let ingress_given = c.one(&cli.ingress_listen, "ingress_listen").is_some();
    (ingress, ingress_given)
}

/// The upstream proxy egress is chained through, its TLS trust and its bypass list.
pub(super) fn upstream_proxy(c: &mut Check<'_>, cli: &Cli) -> Option<UpstreamProxy> {
    let upstream_proxy_insecure =
        c.flag(&cli.upstream_proxy_insecure, ENV_UPSTREAM_PROXY_INSECURE, "--upstream-proxy-insecure");
    let upstream_proxy_ca_file = c.one(&cli.upstream_proxy_ca_file, "upstream_proxy_ca_file").map(PathBuf::from);
    let upstream_proxy_url = c.one(&cli.upstream_proxy, "upstream_proxy");
    let upstream_proxy = upstream_proxy_url
        .as_deref()
        .map(|s| parse_upstream_proxy(s).map_err(|m| err(ENV_UPSTREAM_PROXY, "--upstream-proxy", m)))
        .transpose();
    let upstream_proxy = c.ok(upstream_proxy).flatten().map(|p| UpstreamProxy {
        ca_file: upstream_proxy_ca_file.clone(),
        insecure: upstream_proxy_insecure,
        ..p
    });
    let mut bypass = UpstreamBypass::default();
    for s in c.list(&cli.upstream_proxy_bypass) {
        match parse_cidr(&s) {
            Ok(n) => bypass.cidrs.push(n),
            Err(_) => {
                let r = HostPattern::parse(&s)
                    .map_err(|m| err(ENV_UPSTREAM_PROXY_BYPASS, "--upstream-proxy-bypass", format!("{m}, or a CIDR")));
                bypass.hosts.extend(c.ok(r));
            }
        }
    }
    if !c.list(&cli.upstream_proxy_bypass).is_empty() && upstream_proxy_url.is_none() {
        c.fail(err(ENV_UPSTREAM_PROXY_BYPASS, "--upstream-proxy-bypass", "only meaningful with --upstream-proxy"));
    }
    let unresolved = match c.one(&cli.upstream_proxy_unresolved, "upstream_proxy_unresolved").as_deref() {
        None | Some("refuse") => Unresolved::Refuse,
        Some("forward") => Unresolved::Forward,
        Some(other) => {
            let m = format!("{other:?} is not refuse or forward");
            c.fail(err(ENV_UPSTREAM_PROXY_UNRESOLVED, "--upstream-proxy-unresolved", m));
            Unresolved::Refuse
        }
    };
    if cli.upstream_proxy_unresolved.as_deref().is_some_and(|s| s.trim() == "forward") && upstream_proxy_url.is_none() {
        let m = "only meaningful with --upstream-proxy";
        c.fail(err(ENV_UPSTREAM_PROXY_UNRESOLVED, "--upstream-proxy-unresolved", m));
    }
    let upstream_proxy = upstream_proxy.map(|p| UpstreamProxy { bypass, unresolved, ..p });
    if upstream_proxy.as_ref().is_some_and(|p| !p.tls) && (upstream_proxy_ca_file.is_some() || upstream_proxy_insecure)
    {
        c.fail(err(
            ENV_UPSTREAM_PROXY_CA_FILE,
            "--upstream-proxy-ca-file",
            "only meaningful with an https:// upstream proxy",
        ));
    }
    upstream_proxy
}

/// The log format and the tracing filter.
pub(super) fn logging(c: &mut Check<'_>, cli: &Cli) -> (LogFormat, String) {
    let log_format = match c.one(&cli.log_format, "log_format").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.fail(err(ENV_LOG_FORMAT, "--log-format", format!("{other:?} is not text or json")));
            LogFormat::Text
        }
    };
    let log_level = c.one(&cli.log_level, "log_level").unwrap_or_else(|| "info".into());
    if log_filter(&log_level).is_err() {
        c.fail(err(
            ENV_LOG_LEVEL,
            "--log-level",
            format!("{log_level:?} is not a log filter (e.g. info, sidecar=debug)"),
        ));
    }
    (log_format, log_level)
}
