//! `sidecar.*` config -> the sidecar's `SIDECAR_*` policy, upstream-proxy, logging and
//! result-size environment: one pure mapping for both executors (local processes, pod
//! templates).
use crate::config::model::{Config, LogFormat, UpstreamProxyUnresolved};
use common::runtime_api::sidecar_env;

/// What the sidecar's policy env is made of: the egress policy, the upstream proxy and
/// how the sidecar logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarPolicy {
    pub allow_cidrs: Vec<String>,
    pub deny_cidrs: Vec<String>,
    pub allow_hosts: Vec<String>,
    pub deny_hosts: Vec<String>,
    pub api_server_addresses: Vec<String>,
    pub deny_private: bool,
    pub deny_public: bool,
    pub report_only: bool,
    pub upstream_proxy: String,
    pub upstream_proxy_bypass: Vec<String>,
    pub upstream_proxy_unresolved: UpstreamProxyUnresolved,
    pub log_format: LogFormat,
    pub log_level: String,
    /// `maxResultBytes`: the sidecar's body limit is the result API's.
    pub max_result_bytes: u64,
}

impl From<&Config> for SidecarPolicy {
    fn from(c: &Config) -> Self {
        let s = &c.sidecar;
        Self {
            allow_cidrs: s.allow_cidrs.clone(),
            deny_cidrs: s.deny_cidrs.clone(),
            allow_hosts: s.allow_hosts.clone(),
            deny_hosts: s.deny_hosts.clone(),
            api_server_addresses: s.api_server_addresses.clone(),
            deny_private: s.deny_private,
            deny_public: s.deny_public,
            report_only: s.report_only,
            upstream_proxy: s.upstream_proxy.clone(),
            upstream_proxy_bypass: s.upstream_proxy_bypass.clone(),
            upstream_proxy_unresolved: s.upstream_proxy_unresolved,
            log_format: c.log_format,
            log_level: c.log_level.clone(),
            max_result_bytes: c.max_result_bytes,
        }
    }
}

impl SidecarPolicy {
    /// The env, in a stable order; empty lists are left out.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut list = |name: &str, v: &[String]| {
            if !v.is_empty() {
                env.push((name.to_string(), v.join(",")));
            }
        };
        list(sidecar_env::ALLOW_CIDRS, &self.allow_cidrs);
        list(sidecar_env::DENY_CIDRS, &self.deny_cidrs);
        list(sidecar_env::ALLOW_HOSTS, &self.allow_hosts);
        list(sidecar_env::DENY_HOSTS, &self.deny_hosts);
        list(sidecar_env::API_SERVER_ADDRESSES, &self.api_server_addresses);
        if self.deny_private {
            env.push((sidecar_env::DENY_PRIVATE.into(), "true".into()));
        }
        if self.deny_public {
            env.push((sidecar_env::DENY_PUBLIC.into(), "true".into()));
        }
        if self.report_only {
            env.push((sidecar_env::REPORT_ONLY.into(), "true".into()));
        }
        if !self.upstream_proxy.is_empty() {
            env.push((sidecar_env::UPSTREAM_PROXY.into(), self.upstream_proxy.clone()));
            if !self.upstream_proxy_bypass.is_empty() {
                env.push((sidecar_env::UPSTREAM_PROXY_BYPASS.into(), self.upstream_proxy_bypass.join(",")));
            }
            let unresolved = match self.upstream_proxy_unresolved {
                UpstreamProxyUnresolved::Refuse => "refuse",
                UpstreamProxyUnresolved::Forward => "forward",
            };
            env.push((sidecar_env::UPSTREAM_PROXY_UNRESOLVED.into(), unresolved.into()));
        }
        let format = match self.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        env.push((sidecar_env::LOG_FORMAT.into(), format.into()));
        env.push((sidecar_env::LOG_LEVEL.into(), crate::telemetry::level_directive(&self.log_level).into()));
        env.push((sidecar_env::MAX_BODY_BYTES.into(), self.max_result_bytes.to_string()));
        env
    }
}

/// The sidecar's policy env for `c` (the local executor's entry point).
pub fn sidecar_policy_env(c: &Config) -> Vec<(String, String)> {
    SidecarPolicy::from(c).env()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_env_carries_the_policy_and_the_upstream_proxy_with_its_bypass() {
        let mut c = Config::default();
        c.sidecar.allow_cidrs = vec!["10.0.0.0/8".into(), "192.168.0.0/16".into()];
        c.sidecar.deny_private = true;
        c.sidecar.deny_public = true;
        c.sidecar.upstream_proxy_bypass = vec![".svc.cluster.local".into()];
        let env: std::collections::BTreeMap<_, _> = sidecar_policy_env(&c).into_iter().collect();
        assert_eq!(env[sidecar_env::ALLOW_CIDRS], "10.0.0.0/8,192.168.0.0/16");
        assert_eq!(env[sidecar_env::DENY_PRIVATE], "true");
        assert_eq!(env[sidecar_env::DENY_PUBLIC], "true");
        // No upstream proxy: no bypass either (the sidecar would refuse it alone).
        assert!(!env.contains_key(sidecar_env::UPSTREAM_PROXY_BYPASS));
        assert!(!env.contains_key(sidecar_env::UPSTREAM_PROXY_UNRESOLVED));
        c.sidecar.upstream_proxy = "http://proxy.corp:3128".into();
        let env: std::collections::BTreeMap<_, _> = sidecar_policy_env(&c).into_iter().collect();
        assert_eq!(env[sidecar_env::UPSTREAM_PROXY], "http://proxy.corp:3128");
        assert_eq!(env[sidecar_env::UPSTREAM_PROXY_BYPASS], ".svc.cluster.local");
        // Said explicitly, so the pod spec shows it.
        assert_eq!(env[sidecar_env::UPSTREAM_PROXY_UNRESOLVED], "refuse");
        c.sidecar.upstream_proxy_unresolved = UpstreamProxyUnresolved::Forward;
        let env: std::collections::BTreeMap<_, _> = sidecar_policy_env(&c).into_iter().collect();
        assert_eq!(env[sidecar_env::UPSTREAM_PROXY_UNRESOLVED], "forward");
    }
}
