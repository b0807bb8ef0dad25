use super::*;
use crate::authority::parse_authority;

fn policy() -> EgressPolicy {
    EgressPolicy {
        api_servers: vec![ApiServer { ip: "10.96.0.1".parse().unwrap(), port: None }],
        job_manager: Some(parse_authority("job-manager.ns.svc:8080", None).unwrap()),
        ..Default::default()
    }
}

/// (case, policy tweak, authority, resolved addresses, verdict, class, reason fragment)
type Case = (&'static str, fn(&mut EgressPolicy), &'static str, &'static [&'static str], Verdict, Class, &'static str);

fn none(_: &mut EgressPolicy) {}

const CASES: &[Case] = &[
    ("public literal", none, "93.184.216.34:80", &[], Verdict::Allow, Class::Public, "93.184.216.34 is public"),
    ("public name", none, "example.com:443", &["93.184.216.34"], Verdict::Allow, Class::Public, "is public"),
    (
        "metadata literal",
        none,
        "169.254.169.254:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "169.254.169.254 is a cloud metadata address",
    ),
    ("metadata decimal", none, "2852039166:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    (
        "metadata mapped v6",
        none,
        "[::ffff:169.254.169.254]:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "::ffff:169.254.169.254 (= 169.254.169.254)",
    ),
    ("metadata ec2 v6", none, "[fd00:ec2::254]:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    (
        "metadata gcp name",
        none,
        "metadata.google.internal:80",
        &["169.254.169.254"],
        Verdict::Deny,
        Class::Metadata,
        "metadata.google.internal is a cloud metadata service",
    ),
    ("ecs metadata", none, "169.254.170.2:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    ("link local", none, "169.254.1.1:80", &[], Verdict::Deny, Class::LinkLocal, "link-local"),
    ("link local v6", none, "[fe80::1]:80", &[], Verdict::Deny, Class::LinkLocal, "link-local"),
    ("loopback", none, "127.0.0.1:8080", &[], Verdict::Deny, Class::Loopback, "127.0.0.1 is loopback"),
    ("loopback v6", none, "[::1]:8080", &[], Verdict::Deny, Class::Loopback, "loopback"),
    ("loopback short", none, "127.1:80", &[], Verdict::Deny, Class::Loopback, "loopback"),
    ("localhost name", none, "LocalHost.:80", &[], Verdict::Deny, Class::Loopback, "localhost is loopback"),
    ("sub localhost", none, "a.localhost:80", &[], Verdict::Deny, Class::Loopback, "loopback"),
    ("unspecified", none, "0.0.0.0:80", &[], Verdict::Deny, Class::Unspecified, "unspecified"),
    ("zero short", none, "0:80", &[], Verdict::Deny, Class::Unspecified, "unspecified"),
    ("multicast", none, "224.0.0.1:80", &[], Verdict::Deny, Class::Reserved, "multicast"),
    ("broadcast", none, "255.255.255.255:80", &[], Verdict::Deny, Class::Reserved, "reserved"),
    (
        "kubernetes name",
        none,
        "kubernetes.default.svc.cluster.local:443",
        &[],
        Verdict::Deny,
        Class::KubernetesApi,
        "Kubernetes API",
    ),
    ("kubernetes short", none, "kubernetes:443", &[], Verdict::Deny, Class::KubernetesApi, "Kubernetes API"),
    (
        "api server address",
        none,
        "10.96.0.1:443",
        &[],
        Verdict::Deny,
        Class::KubernetesApi,
        "10.96.0.1 is the Kubernetes API server",
    ),
    (
        "name resolving to api server",
        none,
        "sneaky.example:443",
        &["10.96.0.1"],
        Verdict::Deny,
        Class::KubernetesApi,
        "sneaky.example resolves to 10.96.0.1",
    ),
    ("kubelet port", none, "10.0.0.5:10250", &[], Verdict::Deny, Class::Kubelet, "port 10250 is a kubelet port"),
    ("kubelet ro port", none, "10.0.0.5:10255", &[], Verdict::Deny, Class::Kubelet, "kubelet"),
    (
        "private allowed by default",
        none,
        "10.1.2.3:80",
        &[],
        Verdict::Allow,
        Class::PrivateAllowed,
        "private (allowed)",
    ),
    (
        "private denied",
        |p| p.deny_private = true,
        "10.1.2.3:80",
        &[],
        Verdict::Deny,
        Class::Private,
        "10.1.2.3 is a private address",
    ),
    ("ula denied", |p| p.deny_private = true, "[fd12::1]:80", &[], Verdict::Deny, Class::Private, "private"),
    (
        "public denied in allow-list mode",
        |p| p.deny_public = true,
        "93.184.216.34:443",
        &[],
        Verdict::Deny,
        Class::PublicDenied,
        "93.184.216.34 is public and only allowed CIDRs may be reached",
    ),
    (
        "allow-list mode: a name resolving public",
        |p| p.deny_public = true,
        "example.test:443",
        &["2606:2800:220:1::1"],
        Verdict::Deny,
        Class::PublicDenied,
        "example.test resolves to 2606:2800:220:1::1 is public",
    ),
    (
        "allow-list mode: an allowed CIDR passes",
        |p| {
            p.deny_public = true;
            p.allow_cidrs = vec!["93.184.216.0/24".parse().unwrap()];
        },
        "93.184.216.34:443",
        &[],
        Verdict::Allow,
        Class::AllowedCidr,
        "allowed CIDR",
    ),
    (
        "allow-list mode leaves private to deny-private",
        |p| p.deny_public = true,
        "10.1.2.3:80",
        &[],
        Verdict::Allow,
        Class::PrivateAllowed,
        "private (allowed)",
    ),
    ("cgnat denied", |p| p.deny_private = true, "100.64.1.1:80", &[], Verdict::Deny, Class::Private, "private"),
    (
        "name resolving to metadata",
        none,
        "evil.example:80",
        &["169.254.169.254"],
        Verdict::Deny,
        Class::Metadata,
        "evil.example resolves to 169.254.169.254",
    ),
    (
        "mixed answer refused",
        none,
        "rebind.example:80",
        &["93.184.216.34", "127.0.0.1"],
        Verdict::Deny,
        Class::Loopback,
        "resolves to 127.0.0.1",
    ),
    ("no addresses", none, "empty.example:80", &[], Verdict::Deny, Class::Unspecified, "has no addresses"),
    (
        "allow cidr beats loopback",
        |p| p.allow_cidrs = vec!["127.0.0.1/32".parse().unwrap()],
        "127.0.0.1:8080",
        &[],
        Verdict::Allow,
        Class::AllowedCidr,
        "allowed CIDR",
    ),
    (
        "allow cidr via short form",
        |p| p.allow_cidrs = vec!["127.0.0.1/32".parse().unwrap()],
        "127.1:8080",
        &[],
        Verdict::Allow,
        Class::AllowedCidr,
        "allowed CIDR",
    ),
    (
        "allow cidr does not cover neighbour",
        |p| p.allow_cidrs = vec!["127.0.0.1/32".parse().unwrap()],
        "127.0.0.2:80",
        &[],
        Verdict::Deny,
        Class::Loopback,
        "loopback",
    ),
    (
        "deny cidr beats allow cidr",
        |p| {
            p.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
            p.deny_cidrs = vec!["10.1.0.0/16".parse().unwrap()];
        },
        "10.1.2.3:80",
        &[],
        Verdict::Deny,
        Class::DeniedCidr,
        "10.1.2.3 is in a denied CIDR",
    ),
    (
        "deny cidr on public",
        |p| p.deny_cidrs = vec!["93.184.0.0/16".parse().unwrap()],
        "example.com:80",
        &["93.184.216.34"],
        Verdict::Deny,
        Class::DeniedCidr,
        "example.com resolves to 93.184.216.34 is in a denied CIDR",
    ),
    (
        "deny host exact",
        |p| p.deny_hosts = vec![HostPattern::parse("example.com").unwrap()],
        "EXAMPLE.com.:80",
        &["93.184.216.34"],
        Verdict::Deny,
        Class::DeniedHost,
        "host example.com is on the deny list",
    ),
    (
        "deny host wildcard",
        |p| p.deny_hosts = vec![HostPattern::parse("*.example.com").unwrap()],
        "a.b.example.com:80",
        &["93.184.216.34"],
        Verdict::Deny,
        Class::DeniedHost,
        "deny list",
    ),
    (
        "wildcard skips apex",
        |p| p.deny_hosts = vec![HostPattern::parse("*.example.com").unwrap()],
        "example.com:80",
        &["93.184.216.34"],
        Verdict::Allow,
        Class::Public,
        "public",
    ),
    (
        "suffix trick is not subdomain",
        |p| p.deny_hosts = vec![HostPattern::parse(".example.com").unwrap()],
        "notexample.com:80",
        &["93.184.216.34"],
        Verdict::Allow,
        Class::Public,
        "public",
    ),
    (
        "allow host lifts name rule only",
        |p| p.allow_hosts = vec![HostPattern::parse("metadata.google.internal").unwrap()],
        "metadata.google.internal:80",
        &["169.254.169.254"],
        Verdict::Deny,
        Class::Metadata,
        "resolves to 169.254.169.254",
    ),
    (
        "allow host with public address",
        |p| p.allow_hosts = vec![HostPattern::parse("localhost").unwrap()],
        "localhost:80",
        &["93.184.216.34"],
        Verdict::Allow,
        Class::Public,
        "public",
    ),
    (
        "deny port",
        |p| p.deny_ports = vec![25],
        "example.com:25",
        &["93.184.216.34"],
        Verdict::Deny,
        Class::DeniedPort,
        "port 25 is on the deny list",
    ),
    (
        "port not allowed",
        |p| p.allow_ports = vec![80, 443],
        "example.com:8080",
        &["93.184.216.34"],
        Verdict::Deny,
        Class::PortNotAllowed,
        "port 8080 is not on the allow list",
    ),
    (
        "allowed port",
        |p| p.allow_ports = vec![80, 443],
        "example.com:443",
        &["93.184.216.34"],
        Verdict::Allow,
        Class::Public,
        "public",
    ),
    (
        "kubelet port explicitly allowed",
        |p| p.allow_ports = vec![10250],
        "93.184.216.34:10250",
        &[],
        Verdict::Allow,
        Class::Public,
        "public",
    ),
    (
        "job manager endpoint",
        none,
        "job-manager.ns.svc:8080",
        &[],
        Verdict::Allow,
        Class::JobManager,
        "is the job manager",
    ),
    (
        "job manager other port",
        none,
        "job-manager.ns.svc:9090",
        &["10.0.0.9"],
        Verdict::Allow,
        Class::PrivateAllowed,
        "private",
    ),
    (
        "api server with port only that port",
        |p| p.api_servers = vec![ApiServer { ip: "10.0.0.1".parse().unwrap(), port: Some(6443) }],
        "10.0.0.1:80",
        &[],
        Verdict::Allow,
        Class::PrivateAllowed,
        "private",
    ),
    (
        "api server port match",
        |p| p.api_servers = vec![ApiServer { ip: "10.0.0.1".parse().unwrap(), port: Some(6443) }],
        "10.0.0.1:6443",
        &[],
        Verdict::Deny,
        Class::KubernetesApi,
        "Kubernetes API server",
    ),
    ("nat64 metadata", none, "[64:ff9b::a9fe:a9fe]:80", &[], Verdict::Deny, Class::Metadata, "(= 169.254.169.254)"),
    // Metadata endpoints beyond 169.254.169.254, every port.
    (
        "gcp v6 metadata",
        none,
        "[fd20:ce::254]:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "fd20:ce::254 is a cloud metadata address",
    ),
    ("eks pod identity v6", none, "[fd00:ec2::23]:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    ("eks pod identity v4", none, "169.254.170.23:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    (
        "azure wireserver",
        none,
        "168.63.129.16:32526",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "168.63.129.16 is a cloud metadata address",
    ),
    ("alibaba", none, "100.100.100.200:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    ("oci v6 metadata", none, "[fd00:c1::a9fe:a9fe]:80", &[], Verdict::Deny, Class::Metadata, "cloud metadata"),
    (
        "metadata v6 by name",
        none,
        "gcp.example:80",
        &["fd20:ce::254"],
        Verdict::Deny,
        Class::Metadata,
        "gcp.example resolves to fd20:ce::254",
    ),
    // Embedded IPv4: the whole decision is the IPv4 address's.
    (
        "siit metadata",
        none,
        "[::ffff:0:a9fe:a9fe]:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "::ffff:0:a9fe:a9fe (= 169.254.169.254)",
    ),
    (
        "nat64 local-use metadata",
        none,
        "[64:ff9b:1::a9fe:a9fe]:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "(= 169.254.169.254)",
    ),
    ("6to4 metadata", none, "[2002:a9fe:a9fe::1]:80", &[], Verdict::Deny, Class::Metadata, "(= 169.254.169.254)"),
    (
        "teredo client metadata",
        none,
        "[2001:0:5db8:d822::5601:5601]:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "(= 169.254.169.254)",
    ),
    (
        "teredo server metadata",
        none,
        "[2001:0:a9fe:a9fe::a247:27dd]:80",
        &[],
        Verdict::Deny,
        Class::Metadata,
        "(= 169.254.169.254)",
    ),
    (
        "teredo both public",
        none,
        "[2001:0:5db8:d822::a247:27dd]:80",
        &[],
        Verdict::Allow,
        Class::Public,
        "(= 93.184.216.34) is public",
    ),
    ("compat loopback", none, "[::7f00:1]:80", &[], Verdict::Deny, Class::Loopback, "(= 127.0.0.1) is loopback"),
    (
        "nat64 private allowed",
        none,
        "[64:ff9b::a00:1]:80",
        &[],
        Verdict::Allow,
        Class::PrivateAllowed,
        "(= 10.0.0.1) is private",
    ),
    (
        "nat64 private denied",
        |p| p.deny_private = true,
        "[64:ff9b::10.0.0.1]:80",
        &[],
        Verdict::Deny,
        Class::Private,
        "(= 10.0.0.1) is a private address",
    ),
    (
        "6to4 private denied",
        |p| p.deny_private = true,
        "[2002:a00:1::]:80",
        &[],
        Verdict::Deny,
        Class::Private,
        "(= 10.0.0.1)",
    ),
    (
        "teredo private client denied",
        |p| p.deny_private = true,
        "[2001:0:5db8:d822::f5ff:fffe]:80",
        &[],
        Verdict::Deny,
        Class::Private,
        "(= 10.0.0.1)",
    ),
    (
        "6to4 api server",
        none,
        "[2002:a60:1::]:443",
        &[],
        Verdict::Deny,
        Class::KubernetesApi,
        "(= 10.96.0.1) is the Kubernetes API server",
    ),
    (
        "embedded ipv4 in an allowed cidr",
        |p| {
            p.deny_private = true;
            p.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        },
        "[64:ff9b::10.1.2.3]:80",
        &[],
        Verdict::Allow,
        Class::AllowedCidr,
        "(= 10.1.2.3) is in an allowed CIDR",
    ),
    (
        "embedded ipv4 in a denied cidr",
        |p| p.deny_cidrs = vec!["93.184.216.0/24".parse().unwrap()],
        "[2002:5db8:d822::]:80",
        &[],
        Verdict::Deny,
        Class::DeniedCidr,
        "(= 93.184.216.34) is in a denied CIDR",
    ),
    (
        "deny cidr on the ipv6 form itself",
        |p| p.deny_cidrs = vec!["2002::/16".parse().unwrap()],
        "[2002:5db8:d822::]:80",
        &[],
        Verdict::Deny,
        Class::DeniedCidr,
        "2002:5db8:d822:: is in a denied CIDR",
    ),
    ("public v6", none, "[2606:4700::1111]:443", &[], Verdict::Allow, Class::Public, "2606:4700::1111 is public"),
    // Documentation and benchmarking ranges.
    (
        "test-net-1",
        none,
        "192.0.2.1:80",
        &[],
        Verdict::Deny,
        Class::Reserved,
        "192.0.2.1 is multicast, broadcast, documentation, benchmarking or reserved",
    ),
    ("test-net-2", none, "198.51.100.255:80", &[], Verdict::Deny, Class::Reserved, "documentation"),
    ("test-net-3", none, "203.0.113.0:80", &[], Verdict::Deny, Class::Reserved, "documentation"),
    ("benchmarking v4", none, "198.19.1.1:80", &[], Verdict::Deny, Class::Reserved, "benchmarking"),
    ("benchmarking v4 edge", none, "198.20.0.1:80", &[], Verdict::Allow, Class::Public, "is public"),
    ("documentation v6", none, "[2001:db8::1]:80", &[], Verdict::Deny, Class::Reserved, "documentation"),
    ("documentation v6 3fff", none, "[3fff:fff::1]:80", &[], Verdict::Deny, Class::Reserved, "documentation"),
    ("documentation v6 3fff edge", none, "[3fff:1000::1]:80", &[], Verdict::Allow, Class::Public, "is public"),
    ("benchmarking v6", none, "[2001:2:0:ffff::1]:80", &[], Verdict::Deny, Class::Reserved, "benchmarking"),
    ("benchmarking v6 edge", none, "[2001:2:1::1]:80", &[], Verdict::Allow, Class::Public, "is public"),
    (
        "documentation by name",
        none,
        "docs.example:80",
        &["93.184.216.34", "192.0.2.10"],
        Verdict::Deny,
        Class::Reserved,
        "docs.example resolves to 192.0.2.10",
    ),
];

#[test]
fn decision_table() {
    for (name, tweak, authority, resolved, verdict, class, reason) in CASES {
        let mut p = policy();
        tweak(&mut p);
        let target = parse_authority(authority, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        let addrs: Vec<IpAddr> = match (&target.host, resolved.is_empty()) {
            (Host::Ip(ip), true) => vec![*ip],
            _ => resolved.iter().map(|s| s.parse().unwrap()).collect(),
        };
        let d = p.decide(&target, &addrs);
        assert_eq!((d.verdict, d.class), (*verdict, *class), "case {name:?}: {d:?}");
        assert!(d.reason.contains(reason), "case {name:?}: reason {:?} lacks {reason:?}", d.reason);
    }
}

#[test]
fn name_rules_need_no_lookup() {
    let p = policy();
    for a in ["metadata.google.internal:80", "kubernetes.default.svc:443", "localhost:1"] {
        let t = parse_authority(a, None).unwrap();
        assert!(p.decide_name(&t).is_some_and(|d| !d.is_allowed()), "{a}");
    }
    let t = parse_authority("example.com:80", None).unwrap();
    assert_eq!(p.decide_name(&t), None);
}

#[test]
fn labels_round_trip() {
    for c in Class::DENIALS {
        assert_eq!(Class::from_label(c.label()), Some(c));
    }
    assert_eq!(Class::from_label("nope"), None);
}

#[test]
fn host_patterns() {
    assert!(HostPattern::parse("").is_err());
    assert!(HostPattern::parse("*.").is_err());
    assert!(HostPattern::parse("a b").is_err());
    let p = HostPattern::parse(".Example.com.").unwrap();
    assert!(p.matches("example.com") && p.matches("x.example.com") && !p.matches("xexample.com"));
}

#[test]
fn upstream_bypass_matches_names_and_addresses() {
    use crate::authority::{Host, Target};
    let b = UpstreamBypass {
        hosts: vec![HostPattern::parse(".svc.cluster.local").unwrap(), HostPattern::parse("exact.example").unwrap()],
        cidrs: vec!["10.0.0.0/8".parse().unwrap()],
    };
    let name = |n: &str| Target { host: Host::Name(n.into()), port: 80 };
    let ip = |s: &str| Target { host: Host::Ip(s.parse().unwrap()), port: 80 };
    let ten: IpAddr = "10.1.2.3".parse().unwrap();
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    // (target, resolved, bypassed)
    let cases = [
        (name("api.ns.svc.cluster.local"), vec![], true),
        (name("svc.cluster.local"), vec![], true),
        (name("exact.example"), vec![], true),
        (name("sub.exact.example"), vec![public], false),
        (name("internal.corp"), vec![ten], true),
        (name("internal.corp"), vec![public, ten], true),
        (name("www.example.com"), vec![public], false),
        (ip("10.9.9.9"), vec![], true),
        (ip("::ffff:10.9.9.9"), vec![], true),
        (ip("11.0.0.1"), vec![], false),
    ];
    for (target, resolved, want) in cases {
        assert_eq!(b.matches(&target, &resolved), want, "{target} {resolved:?}");
    }
    assert!(!UpstreamBypass::default().matches(&name("anything"), &[ten]));
}
