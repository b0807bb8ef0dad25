use super::*;

/// One netlink message of a batch, split the way the kernel reads it.
#[derive(Debug)]
struct Msg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    version: u8,
    res_id: u16,
    attrs: &'a [u8],
}

/// Splits a batch into messages, asserting every length and alignment on the way.
fn messages(buf: &[u8]) -> Vec<Msg<'_>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        assert!(rest.len() >= NLMSG_HDRLEN + NFGENMSG_LEN, "truncated message");
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0, "message length {len} not NLMSG_ALIGNed");
        assert!(len >= NLMSG_HDRLEN + NFGENMSG_LEN && len <= rest.len(), "message length {len} out of bounds");
        out.push(Msg {
            ty: u16::from_ne_bytes(rest[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(rest[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(rest[8..12].try_into().unwrap()),
            family: rest[16],
            version: rest[17],
            res_id: u16::from_be_bytes(rest[18..20].try_into().unwrap()),
            attrs: &rest[20..len],
        });
        assert_eq!(u32::from_ne_bytes(rest[12..16].try_into().unwrap()), 0, "nlmsg_pid must be 0 (the kernel)");
        rest = &rest[len..];
    }
    out
}

/// Attributes as (type with flags, payload).
type Attrs<'a> = Vec<(u16, &'a [u8])>;

/// Splits a run of attributes into (type with flags, payload), asserting that each
/// length covers its payload exactly, padding is zero and the run ends on the last pad.
fn attrs(buf: &[u8]) -> Attrs<'_> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "truncated attribute header");
        let len = u16::from_ne_bytes(rest[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(rest[2..4].try_into().unwrap());
        assert!(len >= 4 && len <= rest.len(), "attribute {ty:#x} length {len} out of bounds");
        let padded = (len + 3) & !3;
        assert!(padded <= rest.len(), "attribute {ty:#x} padding runs past its parent");
        assert!(rest[len..padded].iter().all(|&b| b == 0), "attribute {ty:#x} padding is not zero");
        out.push((ty, &rest[4..len]));
        rest = &rest[padded..];
    }
    out
}

/// The payload of the one attribute of type `ty` (NLA_F_NESTED required iff `nested`).
fn get<'a>(list: &[(u16, &'a [u8])], ty: u16, nested: bool) -> &'a [u8] {
    let found: Vec<_> = list.iter().filter(|(t, _)| t & !NLA_F_NESTED == ty).collect();
    assert_eq!(found.len(), 1, "expected one attribute {ty} in {list:?}");
    assert_eq!(found[0].0 & NLA_F_NESTED != 0, nested, "NLA_F_NESTED on attribute {ty}");
    found[0].1
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4-byte attribute"))
}

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// (expression name, its NFTA_EXPR_DATA attributes) of every expression of a rule.
fn expressions<'a>(rule: &Msg<'a>) -> Vec<(String, Attrs<'a>)> {
    let top = attrs(rule.attrs);
    attrs(get(&top, NFTA_RULE_EXPRESSIONS, true))
        .into_iter()
        .map(|(ty, elem)| {
            assert_eq!(ty, NFTA_LIST_ELEM | NLA_F_NESTED);
            let e = attrs(elem);
            let name = get(&e, NFTA_EXPR_NAME, false);
            assert_eq!(name.last(), Some(&0), "expression name NUL-terminated");
            let name = String::from_utf8(name[..name.len() - 1].to_vec()).unwrap();
            (name, attrs(get(&e, NFTA_EXPR_DATA, true)))
        })
        .collect()
}

#[test]
fn the_batch_adds_deletes_and_rebuilds_only_our_table_between_begin_and_end() {
    let batch = install_batch(2102, 100, TcpRefusal::Reset);
    let msgs = messages(&batch.bytes);
    let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
    assert_eq!(
        types,
        [
            NFNL_MSG_BATCH_BEGIN,
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_DELTABLE),
            nft(NFT_MSG_NEWTABLE),
            nft(NFT_MSG_NEWCHAIN),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            nft(NFT_MSG_NEWRULE),
            NFNL_MSG_BATCH_END,
        ]
    );
    let seqs: Vec<u32> = msgs.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (100..109).collect::<Vec<_>>());
    assert_eq!(batch.steps.iter().map(|s| s.seq).collect::<Vec<_>>(), seqs);

    // Begin/end: AF_UNSPEC, res_id = the nftables subsystem (big-endian), no ACK asked.
    for m in [&msgs[0], &msgs[8]] {
        assert_eq!((m.flags, m.family, m.version, m.res_id), (NLM_F_REQUEST, 0, 0, NFNL_SUBSYS_NFTABLES));
        assert!(m.attrs.is_empty());
    }
    assert_eq!(&batch.bytes[18..20], &[0, 10], "res_id is big-endian");
    assert!(!batch.steps[0].acked && !batch.steps[8].acked);

    // Every message between asks for an ACK, in the inet family, and names our table.
    for (m, step) in msgs[1..8].iter().zip(&batch.steps[1..8]) {
        assert_eq!((m.family, m.version, m.res_id), (NFPROTO_INET, 0, 0));
        assert_eq!(m.flags & (NLM_F_REQUEST | NLM_F_ACK), NLM_F_REQUEST | NLM_F_ACK);
        assert!(step.acked);
        assert_eq!(get(&attrs(m.attrs), 1, false), b"sidecar_egress\0", "NFTA_*_TABLE/NAME is ours");
    }
    // Adding a table never uses NLM_F_EXCL, so an existing one is not an error.
    const NLM_F_EXCL: u16 = 0x200;
    assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
    assert_eq!(msgs[2].flags, NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(msgs[3].flags & NLM_F_EXCL, 0);
    for rule in &msgs[5..8] {
        assert_eq!(rule.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
    }
    assert_eq!(batch.reset_rule_seq, Some(106));
}

#[test]
fn the_delete_table_message_is_byte_for_byte_what_the_kernel_expects() {
    let batch = install_batch(2102, 7, TcpRefusal::Reset);
    // After begin (20 bytes) and add table (20 + name 20 + flags 8).
    let start = 20 + 48;
    #[rustfmt::skip]
    let mut expected: Vec<u8> = [
        &40u32.to_ne_bytes()[..],           // nlmsg_len: 16 + 4 + 20
        &((10u16 << 8) | 2).to_ne_bytes(),  // NFT_MSG_DELTABLE
        &5u16.to_ne_bytes(),                // NLM_F_REQUEST | NLM_F_ACK
        &9u32.to_ne_bytes(),                // seq: begin 7, add 8, delete 9
        &0u32.to_ne_bytes(),                // pid
        &[1, 0, 0, 0],                      // nfgenmsg: NFPROTO_INET, V0, res_id 0
        &19u16.to_ne_bytes(),               // nla_len: 4 + "sidecar_egress\0"
        &1u16.to_ne_bytes(),                // NFTA_TABLE_NAME
    ].concat();
    expected.extend_from_slice(b"sidecar_egress\0\0");
    assert_eq!(&batch.bytes[start..start + 40], &expected[..]);
}

#[test]
fn the_chain_hooks_output_at_priority_0_as_a_filter_with_policy_accept() {
    let batch = install_batch(2102, 1, TcpRefusal::Reset);
    let msgs = messages(&batch.bytes);
    let chain = attrs(msgs[4].attrs);
    assert_eq!(get(&chain, NFTA_CHAIN_TABLE, false), b"sidecar_egress\0");
    assert_eq!(get(&chain, NFTA_CHAIN_NAME, false), b"output\0");
    assert_eq!(get(&chain, NFTA_CHAIN_TYPE, false), b"filter\0");
    assert_eq!(be32(get(&chain, NFTA_CHAIN_POLICY, false)), NF_ACCEPT);
    let hook = attrs(get(&chain, NFTA_CHAIN_HOOK, true));
    assert_eq!(be32(get(&hook, NFTA_HOOK_HOOKNUM, false)), NF_INET_LOCAL_OUT);
    assert_eq!(get(&hook, NFTA_HOOK_PRIORITY, false), &[0, 0, 0, 0]);
}

#[test]
fn rule_one_accepts_loopback_by_the_ifnamsiz_padded_name() {
    let batch = install_batch(2102, 1, TcpRefusal::Reset);
    let msgs = messages(&batch.bytes);
    assert_eq!(get(&attrs(msgs[5].attrs), NFTA_RULE_CHAIN, false), b"output\0");
    let e = expressions(&msgs[5]);
    assert_eq!(e.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["meta", "cmp", "immediate"]);

    assert_eq!(be32(get(&e[0].1, NFTA_META_KEY, false)), NFT_META_OIFNAME);
    assert_eq!(be32(get(&e[0].1, NFTA_META_DREG, false)), NFT_REG_1);

    assert_eq!(be32(get(&e[1].1, NFTA_CMP_SREG, false)), NFT_REG_1);
    assert_eq!(be32(get(&e[1].1, NFTA_CMP_OP, false)), NFT_CMP_EQ);
    let data = attrs(get(&e[1].1, NFTA_CMP_DATA, true));
    assert_eq!(get(&data, NFTA_DATA_VALUE, false), b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0");

    assert_eq!(be32(get(&e[2].1, NFTA_IMMEDIATE_DREG, false)), NFT_REG_VERDICT);
    let data = attrs(get(&e[2].1, NFTA_IMMEDIATE_DATA, true));
    let verdict = attrs(get(&data, NFTA_DATA_VERDICT, true));
    assert_eq!(be32(get(&verdict, NFTA_VERDICT_CODE, false)), NF_ACCEPT);
}

#[test]
fn rule_three_drops_every_socket_uid_but_the_proxys_in_native_byte_order() {
    for uid in [2102u32, 1, 65534, 0x0102_0304] {
        let batch = install_batch(uid, 1, TcpRefusal::Reset);
        let msgs = messages(&batch.bytes);
        let e = expressions(&msgs[7]);
        assert_eq!(e.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["meta", "cmp", "immediate"]);
        assert_eq!(be32(get(&e[0].1, NFTA_META_KEY, false)), NFT_META_SKUID);
        assert_eq!(be32(get(&e[1].1, NFTA_CMP_OP, false)), NFT_CMP_NEQ);
        let data = attrs(get(&e[1].1, NFTA_CMP_DATA, true));
        assert_eq!(get(&data, NFTA_DATA_VALUE, false), uid.to_ne_bytes());
        let data = attrs(get(&e[2].1, NFTA_IMMEDIATE_DATA, true));
        let verdict = attrs(get(&data, NFTA_DATA_VERDICT, true));
        assert_eq!(get(&verdict, NFTA_VERDICT_CODE, false), &[0, 0, 0, 0], "NF_DROP");
        assert_eq!(batch.steps[7].what, format!("add rule `meta skuid != {uid} drop`"));
    }
}

#[test]
fn rule_two_resets_tcp_from_every_socket_uid_but_the_proxys() {
    for uid in [2102u32, 1, 0x0102_0304] {
        let batch = install_batch(uid, 1, TcpRefusal::Reset);
        let msgs = messages(&batch.bytes);
        assert_eq!(get(&attrs(msgs[6].attrs), NFTA_RULE_CHAIN, false), b"output\0");
        let e = expressions(&msgs[6]);
        assert_eq!(e.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["meta", "cmp", "meta", "cmp", "reject"]);
        // meta l4proto tcp: one byte, compared as one byte.
        assert_eq!(be32(get(&e[0].1, NFTA_META_KEY, false)), NFT_META_L4PROTO);
        assert_eq!(be32(get(&e[0].1, NFTA_META_DREG, false)), NFT_REG_1);
        assert_eq!(be32(get(&e[1].1, NFTA_CMP_SREG, false)), NFT_REG_1);
        assert_eq!(be32(get(&e[1].1, NFTA_CMP_OP, false)), NFT_CMP_EQ);
        let data = attrs(get(&e[1].1, NFTA_CMP_DATA, true));
        assert_eq!(get(&data, NFTA_DATA_VALUE, false), &[6], "IPPROTO_TCP");
        // meta skuid != uid, as in the drop rule.
        assert_eq!(be32(get(&e[2].1, NFTA_META_KEY, false)), NFT_META_SKUID);
        assert_eq!(be32(get(&e[3].1, NFTA_CMP_OP, false)), NFT_CMP_NEQ);
        let data = attrs(get(&e[3].1, NFTA_CMP_DATA, true));
        assert_eq!(get(&data, NFTA_DATA_VALUE, false), uid.to_ne_bytes());
        // reject with tcp reset: the type alone, no ICMP code.
        assert_eq!(e[4].1.len(), 1, "reject carries only NFTA_REJECT_TYPE: {:?}", e[4].1);
        assert_eq!(get(&e[4].1, NFTA_REJECT_TYPE, false), &[0, 0, 0, 1], "NFT_REJECT_TCP_RST, big-endian");
        assert_eq!(
            batch.steps[6].what,
            format!("add rule `meta l4proto tcp meta skuid != {uid} reject with tcp reset`")
        );
        assert_eq!(batch.reset_rule_seq, Some(batch.steps[6].seq));
    }
}

#[test]
fn the_l4proto_compare_and_the_reject_expression_are_byte_for_byte_what_the_kernel_expects() {
    let batch = install_batch(2102, 1, TcpRefusal::Reset);
    let msgs = messages(&batch.bytes);
    let list = attrs(get(&attrs(msgs[6].attrs), NFTA_RULE_EXPRESSIONS, true));
    let ne16 = |v: u16| v.to_ne_bytes();
    let nested = |ty: u16| (ty | NLA_F_NESTED).to_ne_bytes();

    // NFTA_LIST_ELEM { NAME "cmp", DATA { SREG 1, OP EQ, DATA { VALUE [6] } } }
    #[rustfmt::skip]
    let cmp: Vec<u8> = [
        &ne16(44)[..], &nested(NFTA_LIST_ELEM),
        &ne16(8), &ne16(NFTA_EXPR_NAME), b"cmp\0",
        &ne16(32), &nested(NFTA_EXPR_DATA),
        &ne16(8), &ne16(NFTA_CMP_SREG), &[0, 0, 0, 1],
        &ne16(8), &ne16(NFTA_CMP_OP), &[0, 0, 0, 0],
        &ne16(12), &nested(NFTA_CMP_DATA),
        &ne16(5), &ne16(NFTA_DATA_VALUE), &[6, 0, 0, 0], // one byte and its padding
    ].concat();
    // NFTA_LIST_ELEM { NAME "reject", DATA { TYPE NFT_REJECT_TCP_RST } }
    #[rustfmt::skip]
    let reject: Vec<u8> = [
        &ne16(28)[..], &nested(NFTA_LIST_ELEM),
        &ne16(11), &ne16(NFTA_EXPR_NAME), b"reject\0\0",
        &ne16(12), &nested(NFTA_EXPR_DATA),
        &ne16(8), &ne16(NFTA_REJECT_TYPE), &[0, 0, 0, 1],
    ].concat();
    // `attrs` strips each element's 4-byte header; the whole element is that plus payload.
    let elem = |i: usize| {
        let payload = list[i].1;
        let start = payload.as_ptr() as usize - batch.bytes.as_ptr() as usize - 4;
        &batch.bytes[start..start + 4 + payload.len()]
    };
    assert_eq!(elem(1), &cmp[..]);
    assert_eq!(elem(4), &reject[..]);
}

#[test]
fn without_the_reset_the_batch_is_loopback_accept_and_drop_only() {
    let batch = install_batch(2102, 1, TcpRefusal::Drop);
    let msgs = messages(&batch.bytes);
    assert_eq!(msgs.len(), 8);
    assert_eq!(msgs[7].ty, NFNL_MSG_BATCH_END);
    assert_eq!(batch.reset_rule_seq, None);
    let rules: Vec<&str> = batch.steps.iter().filter_map(|s| s.what.strip_prefix("add rule ")).collect();
    assert_eq!(rules, ["`oifname \"lo\" accept`", "`meta skuid != 2102 drop`"]);
    assert!(msgs[5..7].iter().all(|m| expressions(m).iter().all(|(n, _)| n != "reject")));
}

#[test]
fn only_enoent_or_eopnotsupp_on_the_reset_rule_falls_back() {
    let batch = install_batch(2102, 1, TcpRefusal::Reset);
    let reset = batch.reset_rule_seq.unwrap();
    assert_eq!(reset, 7);
    let falls_back = |seq: u32, errno: Errno| batch.reset_rule_unavailable(Reply { seq, errno: errno as i32 });
    // No reject expression: unknown type (ENOENT) or unsupported (EOPNOTSUPP).
    assert!(falls_back(reset, Errno::ENOENT));
    assert!(falls_back(reset, Errno::EOPNOTSUPP));
    // Any other errno on that rule is a real failure.
    for errno in [Errno::EPERM, Errno::EINVAL, Errno::EBUSY, Errno::EAFNOSUPPORT, Errno::ENOMEM] {
        assert!(!falls_back(reset, errno), "{errno}");
    }
    // The same errnos on any other step mean no usable nf_tables at all.
    for seq in (1..=9).filter(|&s| s != reset) {
        assert!(!falls_back(seq, Errno::ENOENT), "seq {seq}");
        assert!(!falls_back(seq, Errno::EOPNOTSUPP), "seq {seq}");
    }
    // An ACK is not a refusal; a batch without the rule never falls back.
    assert!(!batch.reset_rule_unavailable(Reply { seq: reset, errno: 0 }));
    let fallback = install_batch(2102, 1, TcpRefusal::Drop);
    assert!(!fallback.reset_rule_unavailable(Reply { seq: reset, errno: Errno::ENOENT as i32 }));
}

#[test]
fn ifname_pads_to_ifnamsiz() {
    assert_eq!(ifname("lo").len(), 16);
    assert_eq!(&ifname("eth0")[..5], b"eth0\0");
}

fn error_msg(error: i32, seq: u32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&36u32.to_ne_bytes());
    m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    m.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
    m.extend_from_slice(&seq.to_ne_bytes()); // our header's seq is not the one that counts
    m.extend_from_slice(&4242u32.to_ne_bytes());
    m.extend_from_slice(&error.to_ne_bytes());
    // echoed header of the message answered
    m.extend_from_slice(&40u32.to_ne_bytes());
    m.extend_from_slice(&nft(NFT_MSG_NEWRULE).to_ne_bytes());
    m.extend_from_slice(&5u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

#[test]
fn replies_are_read_as_acks_and_errnos_by_the_seq_they_answer() {
    let mut dgram = error_msg(0, 5);
    dgram.extend(error_msg(-1, 6));
    dgram.extend(error_msg(-2, 7));
    assert_eq!(
        parse_replies(&dgram).unwrap(),
        [Reply { seq: 5, errno: 0 }, Reply { seq: 6, errno: 1 }, Reply { seq: 7, errno: 2 }]
    );
}

#[test]
fn malformed_replies_are_errors_not_panics() {
    let good = error_msg(0, 5);
    assert_eq!(parse_replies(&good[..10]), Err(MalformedReply("truncated header")));
    let mut long = good.clone();
    long[0] = 200;
    assert_eq!(parse_replies(&long), Err(MalformedReply("bad message length")));
    let mut short = good[..20].to_vec();
    short[0..4].copy_from_slice(&20u32.to_ne_bytes());
    assert_eq!(parse_replies(&short), Err(MalformedReply("short error message")));
    assert_eq!(parse_replies(&[]), Ok(vec![]));
}
