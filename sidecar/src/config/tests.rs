use super::*;
use crate::policy::HostPattern;

fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut argv = vec!["sidecar"];
    argv.extend_from_slice(args);
    let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let cli = Cli::try_parse_with_env(argv, &map).expect("flags parse");
    // The first error: the cases below name the setting a check stops at.
    parse_config(&cli, &map).map_err(|errors| errors.first().clone())
}

#[test]
fn defaults() {
    let c = parse(&[], &[]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:3128".parse().unwrap());
    assert!(c.admin_listen.is_none() && c.ingress.is_none() && c.job_manager.is_none());
    assert!(!c.report_only && !c.policy.deny_private);
    assert_eq!(c.result_deadline, Duration::from_secs(600));
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.log_format, LogFormat::Text);
}

#[test]
fn flags_beat_env_and_lists_split() {
    let c = parse(
        &["--listen", "127.0.0.1:0", "--allow-cidr", "127.0.0.1/32", "--allow-cidr", "10.0.0.1"],
        &[
            (ENV_LISTEN, "0.0.0.0:1"),
            (ENV_ALLOW_CIDRS, "192.168.0.0/16"),
            (ENV_DENY_CIDRS, " 10.1.0.0/16 , 10.2.0.0/16 ,"),
            (ENV_DENY_PORTS, "25,465"),
            (ENV_DENY_PRIVATE, "TRUE"),
            (ENV_REPORT_ONLY, "1"),
            (ENV_API_SERVER_ADDRESSES, "10.96.0.1,10.0.0.1:6443"),
            (ENV_KUBERNETES_SERVICE_HOST, "10.96.0.2"),
            (ENV_LOG_FORMAT, "JSON"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
    let allow: Vec<String> = c.policy.allow_cidrs.iter().map(|n| n.to_string()).collect();
    assert_eq!(allow, ["127.0.0.1/32", "10.0.0.1/32"]);
    assert_eq!(c.policy.deny_cidrs.len(), 2);
    assert_eq!(c.policy.deny_ports, [25, 465]);
    assert!(c.policy.deny_private && c.report_only);
    assert_eq!(c.policy.api_servers.len(), 3, "the pod's KUBERNETES_SERVICE_HOST is added");
    assert_eq!(c.policy.api_servers[1].port, Some(6443));
    assert_eq!(c.log_format, LogFormat::Json);
}

#[test]
fn job_mode_needs_manager_and_key() {
    let e = parse(&["--job-dir", "/x"], &[]).unwrap_err();
    assert_eq!(e.setting, ENV_JOB_MANAGER_URL);
    let e = parse(&["--job-dir", "/x", "--job-manager-url", "http://jm:8080"], &[]).unwrap_err();
    assert_eq!(e.setting, ENV_INTERNAL_API_KEY);
    let c =
        parse(&["--job-dir", "/x", "--job-manager-url", "http://JM:8080/"], &[(ENV_INTERNAL_API_KEY, "k")]).unwrap();
    let jm = c.job_manager.unwrap();
    assert_eq!(jm.base, "http://jm:8080");
    assert_eq!(c.policy.job_manager, Some(jm.target));
    assert_eq!(c.internal_api_key, KeySource::Inline(Secret::new("k")));
    let c = parse(&["--job-manager-url", "http://jm", "--internal-api-key-file", "-"], &[]).unwrap();
    assert_eq!(c.internal_api_key, KeySource::Stdin);
    assert_eq!(c.job_manager.unwrap().target.port, 80);
}

#[test]
fn upstream_proxy_settings() {
    let c = parse(&["--upstream-proxy", "http://us%40r:p%3Ass@proxy.corp:3128"], &[]).unwrap();
    let p = c.upstream_proxy.unwrap();
    assert_eq!((p.tls, p.host.as_str(), p.port), (false, "proxy.corp", 3128));
    use base64::Engine;
    let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("us@r:p:ss"));
    assert_eq!(p.authorization.unwrap().expose(), want);
    let c = parse(&["--upstream-proxy", "https://proxy.corp", "--upstream-proxy-insecure"], &[]).unwrap();
    let p = c.upstream_proxy.unwrap();
    assert!(p.tls && p.insecure && p.port == 443 && p.authorization.is_none());
    let e = parse(&["--upstream-proxy", "http://proxy.corp:3128", "--upstream-proxy-insecure"], &[]).unwrap_err();
    assert_eq!(e.setting, ENV_UPSTREAM_PROXY_CA_FILE);
}

/// (flags, env, the setting the error must name)
type BadCase = (&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

#[test]
fn every_bad_value_names_its_setting() {
    let cases: &[BadCase] = &[
        (&["--listen", "localhost:3128"], &[], ENV_LISTEN),
        (&[], &[(ENV_ADMIN_LISTEN, "9901")], ENV_ADMIN_LISTEN),
        (&["--allow-cidr", "10.0.0.0/33"], &[], ENV_ALLOW_CIDRS),
        (&[], &[(ENV_DENY_CIDRS, "nope")], ENV_DENY_CIDRS),
        (&["--allow-host", "a b"], &[], ENV_ALLOW_HOSTS),
        (&[], &[(ENV_DENY_HOSTS, "*.")], ENV_DENY_HOSTS),
        (&["--allow-port", "0"], &[], ENV_ALLOW_PORTS),
        (&[], &[(ENV_DENY_PORTS, "70000")], ENV_DENY_PORTS),
        (&[], &[(ENV_DENY_PRIVATE, "maybe")], ENV_DENY_PRIVATE),
        (&[], &[(ENV_REPORT_ONLY, "2")], ENV_REPORT_ONLY),
        (&["--api-server-address", "kubernetes"], &[], ENV_API_SERVER_ADDRESSES),
        (&["--job-manager-url", "https://jm"], &[(ENV_INTERNAL_API_KEY, "k")], ENV_JOB_MANAGER_URL),
        (&["--job-manager-url", "jm:8080"], &[(ENV_INTERNAL_API_KEY, "k")], ENV_JOB_MANAGER_URL),
        (&["--job-manager-url", "http://jm/x"], &[(ENV_INTERNAL_API_KEY, "k")], ENV_JOB_MANAGER_URL),
        (&["--ingress-listen", "0.0.0.0:8443"], &[(ENV_INTERNAL_API_KEY, "k")], ENV_INGRESS_UPSTREAM),
        (&["--ingress-listen", "0.0.0.0:8443", "--ingress-upstream", "127.0.0.1:8081"], &[], ENV_INTERNAL_API_KEY),
        (&["--upstream-proxy", "socks5://p:1"], &[], ENV_UPSTREAM_PROXY),
        (
            &["--upstream-proxy", "http://p:1", "--upstream-proxy-unresolved", "maybe"],
            &[],
            ENV_UPSTREAM_PROXY_UNRESOLVED,
        ),
        (&[], &[(ENV_UPSTREAM_PROXY_UNRESOLVED, "forward")], ENV_UPSTREAM_PROXY_UNRESOLVED),
        (&["--log-format", "xml"], &[], ENV_LOG_FORMAT),
        (&["--log-level", "sidecar=loud"], &[], ENV_LOG_LEVEL),
        (&["--job-id", "a/b"], &[], ENV_JOB_ID),
        // A job token without the rest of the hand-off, or with a job dir too.
        (&["--job-manager-url", "http://jm:8080"], &[(ENV_INTERNAL_API_KEY, "k"), (ENV_JOB_TOKEN, "t")], ENV_JOB_TOKEN),
        (&["--job-id", "j1"], &[(ENV_JOB_TOKEN, "t")], ENV_JOB_TOKEN),
        (
            &["--job-id", "j1", "--job-dir", "/tmp/x", "--job-manager-url", "http://jm:8080"],
            &[(ENV_INTERNAL_API_KEY, "k"), (ENV_JOB_TOKEN, "t")],
            ENV_JOB_TOKEN,
        ),
        (&["--result-deadline-secs", "0"], &[], ENV_RESULT_DEADLINE_SECS),
        (&["--shutdown-grace-secs=-1"], &[], ENV_SHUTDOWN_GRACE_SECS),
        (&["--max-header-bytes", "100"], &[], ENV_MAX_HEADER_BYTES),
        (&["--max-body-bytes", "0"], &[], ENV_MAX_BODY_BYTES),
        (&["--max-body-memory-bytes", "0"], &[], ENV_MAX_BODY_MEMORY_BYTES),
        (&["--max-body-memory-bytes", "1000"], &[], ENV_MAX_BODY_MEMORY_BYTES),
        (&[], &[(ENV_MAX_BODY_BYTES, "2000"), (ENV_MAX_BODY_MEMORY_BYTES, "1999")], ENV_MAX_BODY_MEMORY_BYTES),
        (&["--body-read-timeout-ms", "0"], &[], ENV_BODY_READ_TIMEOUT_MS),
        (&[], &[(ENV_BODY_READ_TIMEOUT_MS, "soon")], ENV_BODY_READ_TIMEOUT_MS),
        (&["--connect-timeout-ms", "x"], &[], ENV_CONNECT_TIMEOUT_MS),
        (&["--max-connections", "0"], &[], ENV_MAX_CONNECTIONS),
        (&["--max-admin-connections", "0"], &[], ENV_MAX_ADMIN_CONNECTIONS),
        (&[], &[(ENV_MAX_INGRESS_CONNECTIONS, "many")], ENV_MAX_INGRESS_CONNECTIONS),
        (&["--max-tunnels=-3"], &[], ENV_MAX_TUNNELS),
    ];
    for (args, env, setting) in cases {
        let e = parse(args, env).expect_err(&format!("{args:?} {env:?} should fail"));
        assert_eq!(e.setting, *setting, "{args:?} {env:?}: {e}");
        assert!(e.to_string().starts_with(&format!("invalid {setting} (")), "{e}");
    }
}

#[test]
fn standalone_is_the_default_policy() {
    let c = Config::standalone("127.0.0.1:0".parse().unwrap());
    assert!(c.policy.allow_cidrs.is_empty() && c.job_manager.is_none());
}

#[test]
fn job_handed_over_by_id_and_token() {
    let c = parse(
        &["--job-manager-url", "http://jm.ns.svc:8080"],
        &[(ENV_INTERNAL_API_KEY, "k"), (ENV_JOB_ID, "j1"), (ENV_JOB_TOKEN, " v1.1.2.3 \n")],
    )
    .unwrap();
    assert_eq!(c.job_id.as_deref(), Some("j1"));
    assert_eq!(c.job_token.as_ref().map(|t| t.expose().to_string()).as_deref(), Some("v1.1.2.3"));
    assert!(c.job_dir.is_none());
    // Never printed, e.g. when the config is logged for debugging.
    assert!(!format!("{c:?}").contains("v1.1.2.3"));
    // An empty token is no token.
    assert!(parse(&[], &[(ENV_JOB_TOKEN, "  ")]).unwrap().job_token.is_none());
}

#[test]
fn upstream_proxy_bypass_list() {
    let env = [(ENV_UPSTREAM_PROXY_BYPASS, ".svc.cluster.local,10.0.0.0/8, 192.168.1.7 ,example.com")];
    let c = parse(&["--upstream-proxy", "http://proxy:3128"], &env).unwrap();
    let b = &c.upstream_proxy.unwrap().bypass;
    assert_eq!(
        b.hosts,
        [HostPattern::parse(".svc.cluster.local").unwrap(), HostPattern::parse("example.com").unwrap()]
    );
    assert_eq!(b.cidrs, ["10.0.0.0/8".parse().unwrap(), "192.168.1.7/32".parse().unwrap()]);
    // Flags replace the env list, as for every list setting.
    let args = ["--upstream-proxy", "http://proxy:3128", "--upstream-proxy-bypass", "10.1.0.0/16"];
    let b = parse(&args, &env).unwrap().upstream_proxy.unwrap().bypass;
    assert!(b.hosts.is_empty());
    assert_eq!(b.cidrs, ["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
    for (args, env) in [
        (&["--upstream-proxy", "http://proxy:3128", "--upstream-proxy-bypass", "bad host!"][..], &[][..]),
        (&["--upstream-proxy-bypass", "10.0.0.0/8"][..], &[][..]),
        (&[][..], &[(ENV_UPSTREAM_PROXY_BYPASS, ".svc")][..]),
    ] {
        let e = parse(args, env).unwrap_err();
        assert_eq!(e.setting, ENV_UPSTREAM_PROXY_BYPASS, "{args:?} {env:?}: {e}");
    }
}

#[test]
fn every_bad_setting_is_reported_at_once_in_check_order() {
    let map: HashMap<String, String> = [(ENV_DENY_PRIVATE, "maybe"), (ENV_LOG_FORMAT, "xml")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cli = Cli::try_parse_with_env(["sidecar", "--listen", "x", "--max-tunnels", "0"], &map).unwrap();
    let errors = parse_config(&cli, &map).unwrap_err();
    let settings: Vec<&str> = errors.0.iter().map(|e| e.setting).collect();
    assert_eq!(settings, [ENV_LISTEN, ENV_DENY_PRIVATE, ENV_LOG_FORMAT, ENV_MAX_TUNNELS]);
    assert_eq!(errors.to_string().lines().count(), 4, "{errors}");
}

#[test]
fn empty_values_fall_back_to_the_defaults_clap_owns() {
    let c = parse(&["--listen", " "], &[(ENV_LOG_LEVEL, ""), (ENV_MAX_TUNNELS, "  ")]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:3128".parse().unwrap());
    assert_eq!((c.log_level.as_str(), c.limits.max_tunnels), ("info", Limits::default().max_tunnels));
}

#[test]
fn a_cli_built_without_clap_gets_claps_defaults() {
    // Every setting's id is looked up in the clap command (a typo would trip a debug
    // assertion), and the defaults match what clap fills in.
    let c = parse_config(&Cli::default(), &HashMap::<String, String>::new()).unwrap();
    let d = parse(&[], &[]).unwrap();
    assert_eq!((c.listen, c.limits, c.log_format), (d.listen, d.limits, d.log_format));
    assert_eq!((c.result_deadline, c.shutdown_grace, c.worker_threads), (d.result_deadline, d.shutdown_grace, 0));
    assert_eq!(c.log_level, d.log_level);
}

#[test]
fn unresolved_names_behind_an_upstream_proxy_are_refused_unless_forward_is_set() {
    let p = parse(&["--upstream-proxy", "http://proxy:3128"], &[]).unwrap().upstream_proxy.unwrap();
    assert_eq!(p.unresolved, Unresolved::Refuse);
    let env = [(ENV_UPSTREAM_PROXY_UNRESOLVED, " forward ")];
    let p = parse(&["--upstream-proxy", "http://proxy:3128"], &env).unwrap().upstream_proxy.unwrap();
    assert_eq!(p.unresolved, Unresolved::Forward);
    let args = ["--upstream-proxy", "http://proxy:3128", "--upstream-proxy-unresolved", "refuse"];
    assert_eq!(parse(&args, &env).unwrap().upstream_proxy.unwrap().unresolved, Unresolved::Refuse);
    // Refuse is the default anyway, so it is accepted without an upstream proxy.
    assert!(parse(&[], &[(ENV_UPSTREAM_PROXY_UNRESOLVED, "refuse")]).is_ok());
}

#[test]
fn an_inherited_listener_replaces_listen_and_needs_the_key_from_a_file() {
    let key_file = [(ENV_INTERNAL_API_KEY_FILE, "/proc/self/fd/5")];
    let c = parse(&[], &[(ENV_LISTEN_STDIN, "true"), key_file[0]]).unwrap();
    assert!(c.listen_stdin);
    assert!(!parse(&[], &[]).unwrap().listen_stdin, "off by default");

    let both = parse(&["--listen", "127.0.0.1:0", "--listen-stdin"], &key_file).unwrap_err();
    assert_eq!(both.setting, ENV_LISTEN_STDIN);
    assert_eq!(both.message, "give either --listen or --listen-stdin, not both");
    let both_env = parse(&[], &[(ENV_LISTEN, "127.0.0.1:0"), (ENV_LISTEN_STDIN, "1"), key_file[0]]).unwrap_err();
    assert_eq!(both_env.message, "give either --listen or --listen-stdin, not both");

    let key_on_stdin = parse(&["--listen-stdin"], &[(ENV_INTERNAL_API_KEY_FILE, "-")]).unwrap_err();
    assert_eq!(key_on_stdin.setting, ENV_LISTEN_STDIN);
    assert_eq!(key_on_stdin.message, "stdin is the listener: the internal API key must come from a file, not `-`");
}
