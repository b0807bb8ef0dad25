//! Sends the batch to the kernel over an NETLINK_NETFILTER socket and reads every answer.
use super::nft::{self, Batch, Reply, TcpRefusal};
use nix::errno::Errno;
use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;

/// Why the firewall is not in place. Each message is the one line the init container
/// prints, so it names the cause and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "cannot program nftables in this network namespace: {}; the init container needs CAP_NET_ADMIN",
        os(*.0)
    )]
    NotPermitted(Errno),
    #[error(
        "this kernel has no usable nf_tables ({step}: {}); it needs nf_tables with the inet family, \
         filter chains and the meta expression (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET)",
        os(*.errno)
    )]
    Unsupported { step: String, errno: Errno },
    #[error("the kernel refused to {step}: {}", os(*.errno))]
    Refused { step: String, errno: Errno },
    #[error("netlink {op} failed: {}", os(*.errno))]
    Io { op: &'static str, errno: Errno },
    #[error("the kernel did not answer {0} (no acknowledgement within 5 s)")]
    Unanswered(String),
    #[error(transparent)]
    Malformed(#[from] nft::MalformedReply),
}

/// "Operation not permitted (os error 1)", as std prints an OS error.
fn os(errno: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno as i32)
}

/// What [`install`] put in place.
#[derive(Debug)]
pub enum Installed {
    /// The full ruleset: another UID's TCP is reset, the rest dropped.
    Full,
    /// The kernel has no `reject` expression (it refused the reset rule with `errno`), so
    /// the ruleset went in without it: another UID's TCP connects time out.
    WithoutTcpReset { errno: Errno },
}

/// Installs (or replaces) our table in the current network namespace. The batch is
/// atomic, so when the kernel refuses only the reset rule nothing is in place and the
/// batch without it is sent on a fresh socket.
pub fn install(proxy_uid: u32) -> Result<Installed, ApplyError> {
    let full = nft::install_batch(proxy_uid, 1, TcpRefusal::Reset);
    match send(&full)? {
        None => Ok(Installed::Full),
        Some(r) if full.reset_rule_unavailable(r) => {
            let fallback = nft::install_batch(proxy_uid, 1, TcpRefusal::Drop);
            match send(&fallback)? {
                None => Ok(Installed::WithoutTcpReset { errno: Errno::from_raw(r.errno) }),
                Some(r) => Err(refused(&fallback, r)),
            }
        }
        Some(r) => Err(refused(&full, r)),
    }
}

/// The kernel's first refusal of `batch`, named by its step.
fn refused(batch: &Batch, reply: Reply) -> ApplyError {
    let step = batch.step(reply.seq).map_or_else(|| format!("message {}", reply.seq), |s| s.what.clone());
    refusal(step, Errno::from_raw(reply.errno))
}

/// What the kernel's errno for one step of the batch means for the operator.
pub(crate) fn refusal(step: String, errno: Errno) -> ApplyError {
    match errno {
        Errno::EPERM | Errno::EACCES => ApplyError::NotPermitted(errno),
        e if unsupported(e) => ApplyError::Unsupported { step, errno: e },
        e => ApplyError::Refused { step, errno: e },
    }
}

fn unsupported(errno: Errno) -> bool {
    matches!(errno, Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT | Errno::EOPNOTSUPP | Errno::ENOENT)
}

/// Sends `batch` and reads its answers: `Ok(None)` when every message was acknowledged,
/// `Ok(Some(_))` with the first (lowest-seq) refusal, which means nothing was applied.
fn send(batch: &Batch) -> Result<Option<Reply>, ApplyError> {
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
        .map_err(|errno| match errno {
            // No nfnetlink at all.
            e if unsupported(e) => ApplyError::Unsupported { step: "open a NETLINK_NETFILTER socket".into(), errno: e },
            e => ApplyError::Io { op: "socket", errno: e },
        })?;
    // The kernel handles the batch inside sendto, so answers are queued when it returns;
    // the timeout only guards against a kernel that never answers.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))
        .map_err(|errno| ApplyError::Io { op: "setsockopt", errno })?;
    let kernel = NetlinkAddr::new(0, 0);
    let sent = sendto(fd.as_raw_fd(), &batch.bytes, &kernel, MsgFlags::empty())
        .map_err(|errno| ApplyError::Io { op: "sendto", errno })?;
    if sent != batch.bytes.len() {
        return Err(ApplyError::Io { op: "sendto (short write)", errno: Errno::EMSGSIZE });
    }

    // Every message asking for an ACK gets exactly one answer (an ACK or its error); an
    // error on the batch itself (EPERM) is answered under the begin message's seq.
    let mut pending: BTreeSet<u32> = batch.steps.iter().filter(|s| s.acked).map(|s| s.seq).collect();
    let mut first_error: Option<Reply> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while !pending.is_empty() {
        // After an error the kernel may not answer the rest: take what is queued, no wait.
        let flags = if first_error.is_some() { MsgFlags::MSG_DONTWAIT } else { MsgFlags::empty() };
        let n = match recv(fd.as_raw_fd(), &mut buf, flags) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => break,
            Err(errno) => return Err(ApplyError::Io { op: "recv", errno }),
        };
        for reply in nft::parse_replies(&buf[..n])? {
            pending.remove(&reply.seq);
            if reply.errno != 0 && first_error.is_none_or(|f| reply.seq < f.seq) {
                first_error = Some(reply);
            }
        }
    }
    if first_error.is_some() {
        return Ok(first_error);
    }
    if let Some(seq) = pending.first() {
        return Err(ApplyError::Unanswered(batch.step(*seq).map_or_else(|| seq.to_string(), |s| s.what.clone())));
    }
    Ok(None)
}
