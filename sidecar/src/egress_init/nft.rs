//! The egress firewall as nf_tables netlink messages, encoded by hand: no I/O in here.
//!
//! libnftnl (and the crates that wrap it) are GPL, and the sidecar image has no `nft`
//! binary, so [`install_batch`] writes the bytes `nft -f` would send for
//!
//! ```text
//! table inet sidecar_egress {
//!     chain output {
//!         type filter hook output priority 0; policy accept;
//!         oifname "lo" accept
//!         meta l4proto tcp meta skuid != <proxy uid> reject with tcp reset
//!         meta skuid != <proxy uid> drop
//!     }
//! }
//! ```
//!
//! as one nfnetlink batch, which the kernel applies atomically: all of it or none.
//! The batch starts with `add table` (never refused when the table exists), `delete
//! table`, then builds the table afresh, so a rerun replaces our table, and only ours.
//!
//! Separate rules rather than one folded `oifname != "lo" meta skuid != uid drop`: each
//! says one thing and `nft list ruleset` reads as above. The reset rule answers another
//! UID's outgoing TCP SYN with a RST, so its connect() fails at once with ECONNREFUSED
//! instead of retransmitting a dropped SYN for about two minutes; the kernel-made RST
//! travels over loopback, which the first rule lets through. The drop rule takes the
//! rest (UDP, ICMP: the sender sees EPERM).
//!
//! The `reject` expression lives in its own module (nft_reject_inet). A kernel without it
//! refuses the reset rule with ENOENT (or EOPNOTSUPP); [`install_batch`] with
//! [`TcpRefusal::Drop`] builds the same batch without that rule, for the caller to
//! re-send (see [`Batch::reset_rule_unavailable`]): TCP is then dropped like the rest.
//!
//! `meta skuid` does not match a packet with no full socket (kernel-made RSTs, TIME_WAIT
//! ACKs); those pass under policy accept, and only CAP_NET_RAW could forge such packets,
//! which the runtime does not hold.
//!
//! Layout references: `include/uapi/linux/netlink.h`, `netfilter/nfnetlink.h` and
//! `netfilter/nf_tables.h` in the kernel tree.

#[cfg(test)]
mod tests;

use nix::errno::Errno;

/// Our table, in the `inet` family (IPv4 and IPv6 in one). Nothing else is touched.
pub const TABLE: &str = "sidecar_egress";
/// Our base chain, on the output hook.
pub const CHAIN: &str = "output";

// netlink.h
#[cfg(test)]
pub(crate) use common::netlink::{NLMSG_ERROR, NLMSG_HDRLEN};
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_HDRLEN: usize = 4;

// nfnetlink.h
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
#[cfg(test)]
pub(crate) const NFGENMSG_LEN: usize = 4;
const AF_UNSPEC: u8 = 0;
pub(crate) const NFPROTO_INET: u8 = 1;

// nf_tables.h: messages
pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
pub(crate) const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;

// nf_tables.h: attributes
pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFTA_TABLE_FLAGS: u16 = 2;
pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_CHAIN_POLICY: u16 = 5;
pub(crate) const NFTA_CHAIN_TYPE: u16 = 7;
pub(crate) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(crate) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_META_DREG: u16 = 1;
pub(crate) const NFTA_META_KEY: u16 = 2;
pub(crate) const NFTA_CMP_SREG: u16 = 1;
pub(crate) const NFTA_CMP_OP: u16 = 2;
pub(crate) const NFTA_CMP_DATA: u16 = 3;
pub(crate) const NFTA_IMMEDIATE_DREG: u16 = 1;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_REJECT_TYPE: u16 = 1;

// nf_tables.h / netfilter.h: values
pub(crate) const NF_INET_LOCAL_OUT: u32 = 3;
pub(crate) const NF_DROP: u32 = 0;
pub(crate) const NF_ACCEPT: u32 = 1;
pub(crate) const NFT_REG_VERDICT: u32 = 0;
/// The first 16-byte data register: wide enough for an interface name.
pub(crate) const NFT_REG_1: u32 = 1;
pub(crate) const NFT_META_OIFNAME: u32 = 7;
pub(crate) const NFT_META_SKUID: u32 = 10;
/// The transport protocol number, one byte (`meta l4proto`).
pub(crate) const NFT_META_L4PROTO: u32 = 16;
pub(crate) const IPPROTO_TCP: u8 = 6;
/// `reject with tcp reset` (enum nft_reject_types).
pub(crate) const NFT_REJECT_TCP_RST: u32 = 1;
pub(crate) const NFT_CMP_EQ: u32 = 0;
pub(crate) const NFT_CMP_NEQ: u32 = 1;
/// `meta oifname` loads the name NUL-padded to IFNAMSIZ; the compare takes all of it.
pub(crate) const IFNAMSIZ: usize = 16;

/// One nf_tables expression of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta load <key> => reg 1`
    Meta { key: u32 },
    /// `cmp <op> reg 1 <data>`
    Cmp { op: u32, data: Vec<u8> },
    /// `immediate reg 0 <verdict>`
    Verdict(u32),
    /// `reject type <type>` (a terminal statement: the packet is dropped after it).
    Reject { ty: u32 },
}

/// How the chain refuses another UID's outgoing TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpRefusal {
    /// Answer the SYN with a RST: connect() fails at once with ECONNREFUSED.
    Reset,
    /// Drop it like any other packet (the kernel lacks the `reject` expression):
    /// connect() retransmits and times out.
    Drop,
}

/// The rules of our chain, in order, each with the text `nft` would show for it.
pub fn rules(proxy_uid: u32, tcp: TcpRefusal) -> Vec<(String, Vec<Expr>)> {
    // The kernel stores the uid in the register as a native-endian u32.
    let not_proxy = || Expr::Cmp { op: NFT_CMP_NEQ, data: proxy_uid.to_ne_bytes().to_vec() };
    let mut rules = vec![(
        "oifname \"lo\" accept".to_string(),
        vec![
            Expr::Meta { key: NFT_META_OIFNAME },
            Expr::Cmp { op: NFT_CMP_EQ, data: ifname("lo") },
            Expr::Verdict(NF_ACCEPT),
        ],
    )];
    if tcp == TcpRefusal::Reset {
        rules.push((
            reset_rule_text(proxy_uid),
            vec![
                Expr::Meta { key: NFT_META_L4PROTO },
                Expr::Cmp { op: NFT_CMP_EQ, data: vec![IPPROTO_TCP] },
                Expr::Meta { key: NFT_META_SKUID },
                not_proxy(),
                Expr::Reject { ty: NFT_REJECT_TCP_RST },
            ],
        ));
    }
    rules.push((
        format!("meta skuid != {proxy_uid} drop"),
        vec![Expr::Meta { key: NFT_META_SKUID }, not_proxy(), Expr::Verdict(NF_DROP)],
    ));
    rules
}

/// The reset rule as `nft list ruleset` prints it.
pub fn reset_rule_text(proxy_uid: u32) -> String {
    format!("meta l4proto tcp meta skuid != {proxy_uid} reject with tcp reset")
}

/// An interface name as `meta oifname` loads it: NUL-padded to IFNAMSIZ.
pub fn ifname(name: &str) -> Vec<u8> {
    assert!(name.len() < IFNAMSIZ, "interface name {name:?} longer than IFNAMSIZ - 1");
    let mut out = name.as_bytes().to_vec();
    out.resize(IFNAMSIZ, 0);
    out
}

/// A batch ready to send, and what each of its messages does (to name the one the
/// kernel refuses).
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub steps: Vec<Step>,
    /// The sequence number of the TCP reset rule's message, if the batch has one.
    pub reset_rule_seq: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub seq: u32,
    /// Whether the message asks for an acknowledgement (every one but begin/end).
    pub acked: bool,
    pub what: String,
}

impl Batch {
    pub fn step(&self, seq: u32) -> Option<&Step> {
        self.steps.iter().find(|s| s.seq == seq)
    }

    /// Whether the kernel's first refusal of this batch says only that the `reject`
    /// expression is unavailable (no nft_reject_inet: ENOENT when the expression type is
    /// unknown, EOPNOTSUPP when it is unsupported), so the batch without the reset rule
    /// may be sent instead. Any other step or errno is a real failure.
    pub fn reset_rule_unavailable(&self, refusal: Reply) -> bool {
        self.reset_rule_seq == Some(refusal.seq)
            && matches!(Errno::from_raw(refusal.errno), Errno::ENOENT | Errno::EOPNOTSUPP)
    }
}

/// The whole install as one batch: add table, delete table, add table, add chain, add
/// rules. Sequence numbers run from `first_seq`.
pub fn install_batch(proxy_uid: u32, first_seq: u32, tcp: TcpRefusal) -> Batch {
    let mut w = Writer::new(first_seq);
    w.batch_marker(NFNL_MSG_BATCH_BEGIN, "begin the nf_tables batch");

    let table = |w: &mut Writer, ty: u16, flags: u16, what: &str| {
        let m = w.begin(ty, flags, what);
        w.attr_str(NFTA_TABLE_NAME, TABLE);
        if ty == NFT_MSG_NEWTABLE {
            w.attr_be32(NFTA_TABLE_FLAGS, 0);
        }
        w.end(m);
    };
    // Adding first makes the delete succeed on a first run too.
    table(&mut w, NFT_MSG_NEWTABLE, NLM_F_CREATE, &format!("add table inet {TABLE}"));
    table(&mut w, NFT_MSG_DELTABLE, 0, &format!("delete the previous table inet {TABLE}"));
    table(&mut w, NFT_MSG_NEWTABLE, NLM_F_CREATE, &format!("create table inet {TABLE}"));

    let m = w.begin(
        NFT_MSG_NEWCHAIN,
        NLM_F_CREATE,
        &format!("add chain {CHAIN} (type filter hook output priority 0; policy accept)"),
    );
    w.attr_str(NFTA_CHAIN_TABLE, TABLE);
    w.attr_str(NFTA_CHAIN_NAME, CHAIN);
    let hook = w.nest_begin(NFTA_CHAIN_HOOK);
    w.attr_be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT);
    w.attr_be32(NFTA_HOOK_PRIORITY, 0);
    w.nest_end(hook);
    w.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
    w.attr_str(NFTA_CHAIN_TYPE, "filter");
    w.end(m);

    let mut reset_rule_seq = None;
    for (text, exprs) in rules(proxy_uid, tcp) {
        if exprs.iter().any(|e| matches!(e, Expr::Reject { .. })) {
            reset_rule_seq = Some(w.seq);
        }
        let m = w.begin(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &format!("add rule `{text}`"));
        w.attr_str(NFTA_RULE_TABLE, TABLE);
        w.attr_str(NFTA_RULE_CHAIN, CHAIN);
        let list = w.nest_begin(NFTA_RULE_EXPRESSIONS);
        for e in &exprs {
            w.expr(e);
        }
        w.nest_end(list);
        w.end(m);
    }

    w.batch_marker(NFNL_MSG_BATCH_END, "end the nf_tables batch");
    Batch { bytes: w.buf, steps: w.steps, reset_rule_seq }
}

/// Netlink message and attribute writer: lengths are patched in when a message or a
/// nest ends; every attribute is padded to 4 bytes (NLA_ALIGN).
struct Writer {
    buf: Vec<u8>,
    steps: Vec<Step>,
    seq: u32,
}

impl Writer {
    fn new(first_seq: u32) -> Self {
        Writer { buf: Vec::with_capacity(1024), steps: Vec::new(), seq: first_seq }
    }

    fn header(&mut self, ty: u16, flags: u16, family: u8, res_id: u16, what: &str) -> usize {
        let start = self.buf.len();
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in `end`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
                                                         // struct nfgenmsg
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.steps.push(Step { seq, acked: flags & NLM_F_ACK != 0, what: what.to_string() });
        start
    }

    /// Batch begin/end: no acknowledgement (the kernel acks the messages between).
    fn batch_marker(&mut self, ty: u16, what: &str) {
        let m = self.header(ty, NLM_F_REQUEST, AF_UNSPEC, NFNL_SUBSYS_NFTABLES, what);
        self.end(m);
    }

    fn begin(&mut self, nft_msg: u16, flags: u16, what: &str) -> usize {
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | nft_msg;
        self.header(ty, NLM_F_REQUEST | NLM_F_ACK | flags, NFPROTO_INET, 0, what)
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// A NUL-terminated string (NLA_STRING as the kernel's nla_strscpy expects it).
    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut payload = s.as_bytes().to_vec();
        payload.push(0);
        self.attr(ty, &payload);
    }

    /// nf_tables' numeric attributes are big-endian.
    fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn nest_begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes()); // nla_len, patched in `nest_end`
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn nest_end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    /// NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }
    fn expr(&mut self, e: &Expr) {
        let elem = self.nest_begin(NFTA_LIST_ELEM);
        let name = match e {
            Expr::Meta { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Verdict(_) => "immediate",
            Expr::Reject { .. } => "reject",
        };
        self.attr_str(NFTA_EXPR_NAME, name);
        let d = self.nest_begin(NFTA_EXPR_DATA);
        match e {
            Expr::Meta { key } => {
                self.attr_be32(NFTA_META_DREG, NFT_REG_1);
                self.attr_be32(NFTA_META_KEY, *key);
            }
            Expr::Cmp { op, data } => {
                self.attr_be32(NFTA_CMP_SREG, NFT_REG_1);
                self.attr_be32(NFTA_CMP_OP, *op);
                let v = self.nest_begin(NFTA_CMP_DATA);
                self.attr(NFTA_DATA_VALUE, data);
                self.nest_end(v);
            }
            Expr::Verdict(code) => {
                self.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let v = self.nest_begin(NFTA_IMMEDIATE_DATA);
                let verdict = self.nest_begin(NFTA_DATA_VERDICT);
                self.attr_be32(NFTA_VERDICT_CODE, *code);
                self.nest_end(verdict);
                self.nest_end(v);
            }
            // A TCP reset takes no ICMP code.
            Expr::Reject { ty } => self.attr_be32(NFTA_REJECT_TYPE, *ty),
        }
        self.nest_end(d);
        self.nest_end(elem);
    }
}

pub use common::netlink::{parse_replies, MalformedReply, Reply};
