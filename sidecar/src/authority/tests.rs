use super::*;

fn v4(s: &str) -> Host {
    Host::Ip(s.parse().unwrap())
}

#[test]
fn ipv4_spellings_normalise() {
    let cases: &[(&str, &str)] = &[
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("169.254.43518", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0XA9FEA9FE", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("%31%32%37.0.0.1", "127.0.0.1"),
    ];
    for (input, want) in cases {
        assert_eq!(parse_host(input), Ok(v4(want)), "{input}");
    }
}

#[test]
fn invalid_numeric_hosts_are_errors_not_names() {
    for input in ["1.2.3.999", "256.1", "08.1.1.1", "1.2.3.4.5", "4294967296", "0x1ffffffff", "1.0x100.1.1"] {
        assert!(matches!(parse_host(input), Err(AuthorityError::BadIpv4(_))), "{input}: {:?}", parse_host(input));
    }
}

#[test]
fn names_normalise() {
    assert_eq!(parse_host("Metadata.Google.Internal."), Ok(Host::Name("metadata.google.internal".into())));
    assert_eq!(parse_host("example.com"), Ok(Host::Name("example.com".into())));
    assert_eq!(parse_host("1.2.3.example"), Ok(Host::Name("1.2.3.example".into())));
    assert_eq!(parse_host("%6c%6fcalhost"), Ok(Host::Name("localhost".into())));
}

#[test]
fn bad_hosts_are_refused() {
    assert_eq!(parse_host(""), Err(AuthorityError::EmptyHost));
    assert_eq!(parse_host("..."), Err(AuthorityError::EmptyHost));
    assert_eq!(parse_host("a..b"), Err(AuthorityError::BadChar('.')));
    assert_eq!(parse_host("a b"), Err(AuthorityError::BadChar(' ')));
    assert_eq!(parse_host("%zz"), Err(AuthorityError::BadPercentEncoding));
    assert_eq!(parse_host("%2531"), Err(AuthorityError::BadPercentEncoding));
    assert!(parse_host("[::1").is_err());
    assert!(parse_host("[fe80::1%25eth0]").is_err());
    assert!(parse_host("exämple.com").is_err());
}

#[test]
fn ipv6_forms() {
    assert_eq!(parse_host("[::1]"), Ok(Host::Ip("::1".parse().unwrap())));
    assert_eq!(parse_host("[::FFFF:169.254.169.254]"), Ok(Host::Ip("::ffff:a9fe:a9fe".parse().unwrap())));
    let mapped: IpAddr = "::ffff:169.254.169.254".parse().unwrap();
    assert_eq!(effective_ip(mapped), "169.254.169.254".parse::<IpAddr>().unwrap());
    let compat: IpAddr = "::169.254.169.254".parse().unwrap();
    assert_eq!(effective_ip(compat), "169.254.169.254".parse::<IpAddr>().unwrap());
    let nat64: IpAddr = "64:ff9b::a9fe:a9fe".parse().unwrap();
    assert_eq!(effective_ip(nat64), "169.254.169.254".parse::<IpAddr>().unwrap());
    let one: IpAddr = "::1".parse().unwrap();
    assert_eq!(effective_ip(one), one, "::1 is IPv6 loopback, not 0.0.0.1");
}

/// (address, the IPv4 it embeds and Teredo's second one)
type Embedded = (&'static str, Option<(&'static str, Option<&'static str>)>);

#[test]
fn ipv4_embedded_in_ipv6() {
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    let cases: &[Embedded] = &[
        ("::ffff:169.254.169.254", Some(("169.254.169.254", None))),
        ("::ffff:0:169.254.169.254", Some(("169.254.169.254", None))),
        ("64:ff9b::10.0.0.1", Some(("10.0.0.1", None))),
        ("64:ff9b:1:2:3:4:a00:1", Some(("10.0.0.1", None))),
        ("2002:a9fe:a9fe:1::2", Some(("169.254.169.254", None))),
        ("2001:0:5db8:d822:8000:f227:5601:5601", Some(("93.184.216.34", Some("169.254.169.254")))),
        ("::10.0.0.1", Some(("10.0.0.1", None))),
        ("::", None),
        ("::1", None),
        ("64:ff9b:2::a00:1", None),
        ("2001:db8::a00:1", None),
        ("2001:2::1", None),
        ("2606:4700::1111", None),
        ("fd00:ec2::254", None),
        ("169.254.169.254", None),
    ];
    for (ip, want) in cases {
        let got = embedded_ipv4(ip.parse().unwrap());
        let want = want.map(|(a, b)| (v4(a), b.map(v4)));
        assert_eq!(got, want, "{ip}");
    }
}

#[test]
fn authorities() {
    let t = parse_authority("allowed.com@169.254.169.254", Some(80)).unwrap();
    assert_eq!(t, Target { host: v4("169.254.169.254"), port: 80 });
    let t = parse_authority("a@b@127.1:8080", Some(80)).unwrap();
    assert_eq!(t, Target { host: v4("127.0.0.1"), port: 8080 });
    let t = parse_authority("[::1]:443", None).unwrap();
    assert_eq!(t.port, 443);
    assert_eq!(parse_authority("example.com", None), Err(AuthorityError::MissingPort));
    assert_eq!(parse_authority("example.com:", Some(80)).unwrap().port, 80);
    assert!(matches!(parse_authority("example.com:0", None), Err(AuthorityError::BadPort(_))));
    assert!(matches!(parse_authority("example.com:65536", None), Err(AuthorityError::BadPort(_))));
    assert!(matches!(parse_authority("example.com:+80", None), Err(AuthorityError::BadPort(_))));
    assert!(parse_authority("[::1]x", None).is_err());
    assert_eq!(parse_authority("", None), Err(AuthorityError::EmptyHost));
    assert_eq!(parse_authority(":80", None), Err(AuthorityError::EmptyHost));
}

#[test]
fn uris() {
    let uri: http::Uri = "http://user:pw@0x7f.1:81/x".parse().unwrap();
    assert_eq!(target_of_uri(&uri).unwrap(), Target { host: v4("127.0.0.1"), port: 81 });
    let uri: http::Uri = "HTTP://Example.COM/".parse().unwrap();
    assert_eq!(target_of_uri(&uri).unwrap(), Target { host: Host::Name("example.com".into()), port: 80 });
    let uri: http::Uri = "https://example.com/".parse().unwrap();
    assert!(matches!(target_of_uri(&uri), Err(AuthorityError::UnsupportedScheme(_))));
    let uri: http::Uri = "/v1/job".parse().unwrap();
    assert_eq!(target_of_uri(&uri), Err(AuthorityError::NoAuthority));
}

#[test]
fn display_round_trips() {
    let t = parse_authority("[::1]:443", None).unwrap();
    assert_eq!(t.to_string(), "[::1]:443");
    assert_eq!(parse_authority(&t.to_string(), None).unwrap(), t);
}
