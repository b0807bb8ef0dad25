//! One validation pass over a loaded [`Config`]. Pure apart from reading the
//! user-defined variables file, which must parse before the process starts.
use super::error::ConfigError;
use super::model::{Config, ExecutorKind, UpstreamProxyUnresolved, DEFAULT_MAX_RESULT_BYTES, MAX_MAX_RESULT_BYTES};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// The seed's log levels (`jobManager.logLevel`).
pub const LOG_LEVELS: [&str; 8] = ["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF", "TRACE"];

/// `brokerApiEndpoint` value that selects the in-process broker.
pub const EMBEDDED_BROKER: &str = "embedded";

/// A configuration that passed validation, plus what validation derived from it.
#[derive(Clone, Debug)]
pub struct Validated {
    pub config: Config,
    /// The user-defined variables as one JSON object (from JSON, file or path).
    pub user_defined_variables: serde_json::Map<String, serde_json::Value>,
    /// `listen`, parsed.
    pub listen: SocketAddr,
    /// Settings accepted but ignored or risky, to log at startup.
    pub warnings: Vec<String>,
}

/// Validate once; the first broken rule is reported.
pub fn validate(config: Config) -> Result<Validated, ConfigError> {
    let c = &config;
    let mut warnings = Vec::new();

    if !(1..=900).contains(&c.check_timeout) {
        return Err(ConfigError::invalid(
            "checkTimeout",
            format!("must be between 1 and 900 seconds, got {}", c.check_timeout),
        ));
    }
    let embedded = c.broker_api_endpoint == EMBEDDED_BROKER;
    if !embedded {
        let ep = c.broker_api_endpoint.as_str();
        if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.len() <= "https://".len() {
            return Err(ConfigError::invalid(
                "brokerApiEndpoint",
                format!("must be an http(s) URL or `{EMBEDDED_BROKER}`, got {ep:?}"),
            ));
        }
        if c.location_key.trim().is_empty() {
            return Err(ConfigError::invalid(
                "locationKey",
                "is required unless brokerApiEndpoint is `embedded` (chart: set it or name its Secret)",
            ));
        }
    }
    if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(c.log_level.trim())) {
        return Err(ConfigError::invalid(
            "logLevel",
            format!("must be one of {}, got {:?}", LOG_LEVELS.join(", "), c.log_level),
        ));
    }
    if !c.api_proxy_host.is_empty() && c.api_proxy_port == 0 {
        return Err(ConfigError::invalid("apiProxyPort", "is required (1..=65535) when apiProxyHost is set"));
    }
    if c.api_proxy_host.is_empty()
        && (!c.broker_api_proxy_username.is_empty() || !c.broker_api_proxy_pw.is_empty() || c.api_proxy_port != 0)
    {
        return Err(ConfigError::invalid(
            "apiProxyHost",
            "is required when apiProxyPort, brokerApiProxyUsername or brokerApiProxyPw is set",
        ));
    }
    if !c.broker_api_proxy_pw.is_empty() && c.broker_api_proxy_username.is_empty() {
        return Err(ConfigError::invalid("brokerApiProxyUsername", "is required when brokerApiProxyPw is set"));
    }
    if !c.jvm_opts.trim().is_empty() {
        warnings.push(format!(
            "jvmOpts ({:?}) is accepted for chart compatibility and ignored: this job manager has no JVM",
            c.jvm_opts
        ));
    }
    for r in c.runtimes.iter() {
        if let Some(n) = r.completions {
            warnings.push(format!(
                "runtimes[].completions ({}: {n}) is accepted for chart compatibility and ignored: each job runs in a \
                 pod of its own, started when the job arrives; runtimes[].parallelism bounds how many run at once",
                r.name
            ));
        }
    }
    if !c.sidecar.enabled {
        return Err(ConfigError::invalid(
            "sidecar.enabled",
            "cannot be false: the sidecar is every runtime's only way to its job and back (it fetches the job with \
             the single-use token and reports the result) and its egress policy is what keeps runtimes away from \
             cloud metadata, the API server and private ranges. To roll out a policy without enforcing it, use \
             sidecar.reportOnly: true",
        ));
    }
    if c.hostname_override.trim().is_empty() {
        return Err(ConfigError::invalid("hostnameOverride", "must not be empty (sidecars call this Service name)"));
    }
    let listen: SocketAddr =
        c.listen.parse().map_err(|_| ConfigError::invalid("listen", format!("must be ip:port, got {:?}", c.listen)))?;
    if c.poll.interval_ms < 10 || c.poll.interval_ms > 3_600_000 {
        return Err(ConfigError::invalid(
            "poll.intervalMs",
            format!("must be between 10 and 3600000 ms, got {}", c.poll.interval_ms),
        ));
    }
    if c.poll.batch_size == 0 || c.poll.batch_size > 1000 {
        return Err(ConfigError::invalid(
            "poll.batchSize",
            format!("must be between 1 and 1000, got {}", c.poll.batch_size),
        ));
    }
    if c.shutdown_grace_secs > 3600 {
        return Err(ConfigError::invalid("shutdownGraceSecs", "must be at most 3600"));
    }
    if !(DEFAULT_MAX_RESULT_BYTES..=MAX_MAX_RESULT_BYTES).contains(&c.max_result_bytes) {
        return Err(ConfigError::invalid(
            "maxResultBytes",
            format!(
                "must be between {DEFAULT_MAX_RESULT_BYTES} (the broker API's body limit) and {MAX_MAX_RESULT_BYTES}, got {}",
                c.max_result_bytes
            ),
        ));
    }
    if c.executor == ExecutorKind::Kubernetes && c.internal_api_key.trim().is_empty() {
        return Err(ConfigError::invalid(
            "internalApiKey",
            "is required with the kubernetes executor (every replica and sidecar must share it)",
        ));
    }
    if c.executor == ExecutorKind::Kubernetes {
        validate_kubernetes_executor(c)?;
    }
    validate_broker_tls(c)?;
    validate_runtimes(c)?;
    validate_sidecar(c)?;
    crate::backend::local::isolation::UidRange::parse(&c.local.uid_range, nix::unistd::geteuid().as_raw())
        .map_err(|reason| ConfigError::invalid("local.uidRange", reason))?;
    validate_runtime_pods(c)?;
    let user_defined_variables = user_defined_variables(c)?;
    Ok(Validated { listen, user_defined_variables, warnings, config })
}

fn validate_runtimes(c: &Config) -> Result<(), ConfigError> {
    if c.runtimes.iter().filter(|r| r.enabled).count() == 0 {
        return Err(ConfigError::invalid("runtimes", "must list at least one enabled runtime type"));
    }
    let mut seen = BTreeSet::new();
    for (i, r) in c.runtimes.iter().enumerate() {
        let key = format!("runtimes[{i}]");
        if !is_dns_label(&r.name) {
            return Err(ConfigError::invalid(
                "runtimes",
                format!(
                    "{key}.name must be a DNS label (lowercase letters, digits, '-', at most 63), got {:?}",
                    r.name
                ),
            ));
        }
        if !seen.insert(r.name.as_str()) {
            return Err(ConfigError::invalid(
                "runtimes",
                format!("runtime names must be unique; {:?} repeats", r.name),
            ));
        }
        if r.parallelism == 0 {
            return Err(ConfigError::invalid("runtimes", format!("{key}.parallelism ({}) must be at least 1", r.name)));
        }
        if r.enabled && c.executor == ExecutorKind::Local && r.command.is_empty() {
            return Err(ConfigError::invalid(
                "runtimes",
                format!("{key}.command ({}) is required with the local executor (the runtime's argv)", r.name),
            ));
        }
        if r.replicas.min > r.replicas.max {
            return Err(ConfigError::invalid(
                "runtimes",
                format!("{key}.replicas ({}): min {} exceeds max {}", r.name, r.replicas.min, r.replicas.max),
            ));
        }
    }
    Ok(())
}

/// `brokerTls.*`: the files are read and the TLS settings built once here, so a missing
/// or malformed PEM file ends the start (exit 64) naming it.
fn validate_broker_tls(c: &Config) -> Result<(), ConfigError> {
    use crate::broker::client::connector::{tls_config, TlsMaterial};
    let t = &c.broker_tls;
    if t.ca_file.is_empty() && t.client_cert_file.is_empty() && t.client_key_file.is_empty() {
        return Ok(());
    }
    let material = TlsMaterial::read(&t.ca_file, &t.client_cert_file, &t.client_key_file)
        .map_err(|reason| ConfigError::invalid("brokerTls", reason))?;
    tls_config(c.broker_api_proxy_self_signed_cert, &material)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid("brokerTls", e.to_string()))
}

/// What the Kubernetes executor needs before it creates a pod: a Secret name for the
/// sidecars' internal API key and an image for every container (an empty repository
/// would render `image: :latest`, which the API server takes and the kubelet never pulls).
fn validate_kubernetes_executor(c: &Config) -> Result<(), ConfigError> {
    if c.kubernetes.internal_api_key_secret_name.trim().is_empty() {
        return Err(ConfigError::invalid(
            "kubernetes.internalApiKeySecretName",
            "is required with the kubernetes executor: sidecars read the internal API key from this Secret \
             (chart: set from global.internalApiKey or global.internalApiKeySecretName)",
        ));
    }
    for (i, r) in c.runtimes.iter().enumerate().filter(|(_, r)| r.enabled) {
        if let Some(problem) = image_problem(&r.image) {
            return Err(ConfigError::invalid("runtimes", format!("runtimes[{i}].image ({}): {problem}", r.name)));
        }
    }
    if let Some(problem) = image_problem(&c.sidecar.image) {
        return Err(ConfigError::invalid("sidecar.image.repository", problem));
    }
    Ok(())
}

/// Why an image cannot be pulled as configured, if it cannot.
fn image_problem(image: &super::model::ImageSettings) -> Option<String> {
    let repo = image.repository.trim();
    if repo.is_empty() {
        return Some(format!(
            "repository is required with the kubernetes executor (got an empty one: the image would be `:{}`)",
            image.tag
        ));
    }
    if repo.chars().any(|c| c.is_whitespace() || c.is_ascii_uppercase()) || repo.starts_with(['/', ':', '@', '.', '-'])
    {
        return Some(format!(
            "repository {repo:?} is not an image repository (lowercase, e.g. registry.example.com/team/runtime)"
        ));
    }
    if image.tag.chars().any(char::is_whitespace) {
        return Some(format!("tag {:?} must not contain whitespace", image.tag));
    }
    if !image.digest.is_empty() && !is_digest(&image.digest) {
        return Some(format!("digest {:?} is not an image digest (e.g. sha256:<64 hex digits>)", image.digest));
    }
    None
}

/// `algorithm:hex`, as an OCI digest (`sha256:` + 64 lowercase hex digits).
fn is_digest(s: &str) -> bool {
    let Some((algorithm, hex)) = s.split_once(':') else { return false };
    !algorithm.is_empty()
        && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn validate_sidecar(c: &Config) -> Result<(), ConfigError> {
    for (key, list) in [("sidecar.allowCidrs", &c.sidecar.allow_cidrs), ("sidecar.denyCidrs", &c.sidecar.deny_cidrs)] {
        for cidr in list {
            if !is_cidr(cidr) {
                return Err(ConfigError::invalid(key, format!("{cidr:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/8)")));
            }
        }
    }
    if !c.sidecar.upstream_proxy_bypass.is_empty() && c.sidecar.upstream_proxy.is_empty() {
        return Err(ConfigError::invalid(
            "sidecar.upstreamProxyBypass",
            "only meaningful with sidecar.upstreamProxy (nothing to bypass)",
        ));
    }
    if c.sidecar.upstream_proxy_unresolved == UpstreamProxyUnresolved::Forward && c.sidecar.upstream_proxy.is_empty() {
        return Err(ConfigError::invalid(
            "sidecar.upstreamProxyUnresolved",
            "forward is only meaningful with sidecar.upstreamProxy (nothing to forward to)",
        ));
    }
    for entry in &c.sidecar.api_server_addresses {
        let ok = entry.parse::<std::net::IpAddr>().is_ok() || entry.parse::<SocketAddr>().is_ok();
        if !ok {
            return Err(ConfigError::invalid(
                "sidecar.apiServerAddresses",
                format!("{entry:?} is not an ip or ip:port"),
            ));
        }
    }
    Ok(())
}

/// What runtime pods are made of: the UIDs the egress firewall tells apart, the
/// NetworkPolicy's CIDRs, RuntimeClass names. Checked whatever the executor (`render`
/// shows Kubernetes objects for a local config too).
fn validate_runtime_pods(c: &Config) -> Result<(), ConfigError> {
    let k = &c.kubernetes;
    let (sidecar, runtime) = (k.sidecar_uid(), k.runtime_uid());
    // The pod-wide runtime context, then each runtime type's own.
    let runtimes = std::iter::once((String::new(), runtime))
        .chain(c.runtimes.iter().map(|r| (format!(" ({}: runtimes[].securityContext)", r.name), k.runtime_uid_of(r))));
    for (which, runtime) in runtimes {
        if let (Some(s), Some(r)) = (sidecar, runtime) {
            if s == r {
                return Err(ConfigError::invalid(
                    "kubernetes.securityContext.runAsUser",
                    format!(
                        "the sidecar and the runtime{which} both run as UID {s}; they must differ (the egress firewall \
                         lets only the sidecar's UID send packets off the pod, and a shared UID would give the runtime \
                         the sidecar's files and process)"
                    ),
                ));
            }
        }
    }
    if k.egress_firewall.enabled {
        match sidecar {
            None => {
                return Err(ConfigError::invalid(
                    "kubernetes.securityContext.runAsUser",
                    "must be set (in the sidecar's or the pod's security context) while \
                     kubernetes.egressFirewall.enabled: the firewall lets only that UID out",
                ))
            }
            Some(uid) if uid <= 0 => {
                return Err(ConfigError::invalid(
                    "kubernetes.securityContext.runAsUser",
                    format!("must be a non-root UID while kubernetes.egressFirewall.enabled, got {uid}"),
                ))
            }
            Some(_) => {}
        }
        if runtime.is_none() || c.runtimes.iter().any(|r| k.runtime_uid_of(r).is_none()) {
            return Err(ConfigError::invalid(
                "kubernetes.runtimeSecurityContext.runAsUser",
                "must be set (in the runtime's or the pod's security context) while \
                 kubernetes.egressFirewall.enabled: a runtime running as its image's user could be the sidecar's UID",
            ));
        }
    }
    for cidr in &k.network_policy.deny_cidrs {
        if !is_cidr(cidr) || cidr.ends_with("/0") {
            return Err(ConfigError::invalid(
                "kubernetes.networkPolicy.denyCidrs",
                format!("{cidr:?} is not a CIDR with a non-zero prefix (e.g. 10.0.0.0/16 or fd00::/64)"),
            ));
        }
    }
    let ca = &k.runtime_ca_bundle;
    if !ca.config_map_name.is_empty()
        && (!is_dns_subdomain(&ca.config_map_name) || ca.key.is_empty() || ca.key.contains('/'))
    {
        return Err(ConfigError::invalid(
            "kubernetes.runtimeCaBundle",
            format!("configMapName {:?} must be a ConfigMap name and key {:?} a file name", ca.config_map_name, ca.key),
        ));
    }
    if !k.priority_class_name.is_empty() && !is_dns_subdomain(&k.priority_class_name) {
        return Err(ConfigError::invalid(
            "kubernetes.priorityClassName",
            format!("{:?} is not a PriorityClass name (a DNS subdomain)", k.priority_class_name),
        ));
    }
    let classes = std::iter::once(("kubernetes.runtimeClassName", &k.runtime_class_name))
        .chain(c.runtimes.iter().map(|r| ("runtimes[].runtimeClassName", &r.runtime_class_name)));
    for (key, name) in classes {
        if !name.is_empty() && !is_dns_subdomain(name) {
            return Err(ConfigError::invalid(
                key,
                format!("{name:?} is not a RuntimeClass name (a DNS subdomain: lowercase letters, digits, '-', '.')"),
            ));
        }
    }
    Ok(())
}

/// At most one source; each must be a JSON object.
pub fn user_defined_variables(c: &Config) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let u = &c.user_defined_variables;
    let set = [&u.user_defined_json, &u.user_defined_file, &u.user_defined_path]
        .iter()
        .filter(|s| !s.trim().is_empty())
        .count();
    if set > 1 {
        return Err(ConfigError::invalid(
            "userDefinedVariables",
            "set only one of userDefinedJson, userDefinedFile, userDefinedPath",
        ));
    }
    let parse = |key: &str, text: &str| -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            Ok(_) => Err(ConfigError::invalid(key, "must be a JSON object")),
            Err(e) => Err(ConfigError::invalid(key, format!("must be a JSON object: {e}"))),
        }
    };
    if !u.user_defined_json.trim().is_empty() {
        return parse("userDefinedVariables.userDefinedJson", &u.user_defined_json);
    }
    if !u.user_defined_file.trim().is_empty() {
        let key = "userDefinedVariables.userDefinedFile";
        let text = std::fs::read_to_string(&u.user_defined_file)
            .map_err(|e| ConfigError::invalid(key, format!("cannot read {:?}: {e}", u.user_defined_file)))?;
        return parse(key, &text);
    }
    if !u.user_defined_path.trim().is_empty() {
        let key = "userDefinedVariables.userDefinedPath";
        let file = user_defined_path_file(c)?;
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ConfigError::invalid(
                key,
                format!(
                    "cannot read {} ({:?} on the data volume mounted at kubernetes.persistence.mountPath {:?}): {e}",
                    file.display(),
                    u.user_defined_path,
                    c.kubernetes.persistence.mount_path
                ),
            )
        })?;
        return parse(key, &text);
    }
    Ok(serde_json::Map::new())
}

/// The file name `userDefinedPath` names when it is a directory (as the synthetics job
/// manager's chart mounts it: `--set ...userDefinedPath=variables`).
pub const USER_DEFINED_VARIABLES_FILE: &str = "user_defined_variables.json";

/// `userDefinedPath` on the data volume (`kubernetes.persistence.mountPath`, which the
/// chart mounts in the job-manager pod as in runtime pods): the file itself, or a
/// directory holding [`USER_DEFINED_VARIABLES_FILE`]. It must stay inside the volume.
fn user_defined_path_file(c: &Config) -> Result<std::path::PathBuf, ConfigError> {
    let rel = std::path::Path::new(c.user_defined_variables.user_defined_path.trim());
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(ConfigError::invalid(
            "userDefinedVariables.userDefinedPath",
            "must be a relative path inside the persistent volume (no leading '/', no '..')",
        ));
    }
    let path = std::path::Path::new(&c.kubernetes.persistence.mount_path).join(rel);
    Ok(if path.is_dir() { path.join(USER_DEFINED_VARIABLES_FILE) } else { path })
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain, as Kubernetes object names are.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub fn is_cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else { return false };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else { return false };
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    prefix <= if ip.is_ipv4() { 32 } else { 128 }
}
