use super::*;
use nix::errno::Errno;

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

#[test]
fn kernel_refusals_read_as_one_line_naming_the_cause() {
    struct Case {
        errno: Errno,
        want: &'static str,
    }
    let step = || "add chain output".to_string();
    let cases = [
        Case {
            errno: Errno::EPERM,
            want: "cannot program nftables in this network namespace: Operation not permitted (os error 1); \
                   the init container needs CAP_NET_ADMIN",
        },
        Case {
            errno: Errno::EOPNOTSUPP,
            want: "this kernel has no usable nf_tables (add chain output: Operation not supported (os error 95)); \
                   it needs nf_tables with the inet family, filter chains and the meta expression \
                   (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET)",
        },
        Case {
            errno: Errno::ENOENT,
            want: "this kernel has no usable nf_tables (add chain output: No such file or directory (os error 2)); \
                   it needs nf_tables with the inet family, filter chains and the meta expression \
                   (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET)",
        },
        Case {
            errno: Errno::EBUSY,
            want: "the kernel refused to add chain output: Device or resource busy (os error 16)",
        },
    ];
    for c in cases {
        let line = apply::refusal(step(), c.errno).to_string();
        assert_eq!(line, c.want, "errno {}", c.errno);
        assert_eq!(line.lines().count(), 1);
    }
}

#[test]
fn the_fallback_warning_is_one_line_saying_tcp_will_time_out() {
    let line = without_reset_warning(Errno::ENOENT);
    assert_eq!(
        line,
        "warning: this kernel has no nftables reject expression (module nft_reject_inet; the kernel said: \
         No such file or directory (os error 2)), so the ruleset is installed without `reject with tcp reset`: \
         a runtime's direct TCP connects to outside will time out instead of being reset"
    );
    assert_eq!(line.lines().count(), 1);
}
