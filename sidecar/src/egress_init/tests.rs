use super::*;

#[test]
fn proxy_uid_must_be_a_numeric_non_root_valid_uid() {
    struct Case {
        input: &'static str,
        want: Result<u32, &'static str>,
    }
    let cases = [
        Case { input: "2102", want: Ok(2102) },
        Case { input: "1", want: Ok(1) },
        Case { input: "4294967294", want: Ok(4294967294) },
        Case {
            input: "0",
            want: Err("0 is root: every root process would be let out, and the sidecar never runs as root"),
        },
        Case { input: "4294967295", want: Err("4294967295 is the invalid UID (-1)") },
        Case { input: "abc", want: Err("\"abc\" is not a numeric UID") },
        Case { input: "-5", want: Err("\"-5\" is not a numeric UID") },
        Case { input: "", want: Err("\"\" is not a numeric UID") },
        Case { input: "4294967296", want: Err("\"4294967296\" is not a numeric UID") },
    ];
    for c in cases {
        assert_eq!(parse_proxy_uid(c.input), c.want.map_err(String::from), "input {:?}", c.input);
    }
}

#[test]
fn the_flag_is_parsed_after_the_subcommand_word() {
    let args = EgressInitArgs::try_parse_from(["egress-init", "--proxy-uid", "2102"]).unwrap();
    assert_eq!(args.proxy_uid, 2102);
    let err = EgressInitArgs::try_parse_from(["egress-init", "--proxy-uid", "0"]).unwrap_err();
    assert_eq!(
        one_line(&err.to_string()),
        "invalid value '0' for '--proxy-uid <UID>': 0 is root: every root process would be let out, \
         and the sidecar never runs as root"
    );
}

#[test]
fn clap_errors_shrink_to_their_first_line() {
    assert_eq!(one_line("error: bad thing\n\nUsage: x\n"), "bad thing");
    assert_eq!(one_line("\n\n"), "bad arguments");
    assert_eq!(
        one_line("error: the following required arguments were not provided:\n  --proxy-uid <UID>\n\nUsage: x"),
        "the following required arguments were not provided: --proxy-uid <UID>"
    );
}
