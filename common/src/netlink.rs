//! Netlink framing both binaries read: the kernel's answers (`NLMSG_ERROR`: an ACK or an
//! errno, for the request whose sequence number it echoes). The sidecar's `egress-init`
//! (nf_tables) and the job manager's isolation launcher (`RTM_NEWLINK`) send their own
//! requests and read the answers here.

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// One answer from the kernel: an NLMSG_ERROR carries the sequence number of the message
/// it answers and 0 (an ACK) or a negative errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub seq: u32,
    /// 0 for an acknowledgement, else the errno (positive).
    pub errno: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed netlink reply from the kernel ({0})")]
pub struct MalformedReply(pub &'static str);

/// A native-endian u32 from 4 bytes the caller has bounds-checked.
fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the netlink messages of one datagram, keeping the error/ACK answers.
pub fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply>, MalformedReply> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            return Err(MalformedReply("truncated header"));
        }
        let len = ne_u32(&buf[0..4]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(MalformedReply("bad message length"));
        }
        if ty == NLMSG_ERROR {
            // struct nlmsgerr { int error; struct nlmsghdr msg; ... }: the seq of the
            // message answered is in the echoed header, not in ours.
            if len < NLMSG_HDRLEN + 4 + NLMSG_HDRLEN {
                return Err(MalformedReply("short error message"));
            }
            let error = ne_u32(&buf[16..20]) as i32;
            let seq = ne_u32(&buf[28..32]);
            out.push(Reply { seq, errno: -error });
        } else if ty == NLMSG_DONE {
            break;
        }
        // NLMSG_ALIGN: the next message starts on a 4-byte boundary.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The errno answering request `seq` in one datagram (0 is the ACK).
pub fn answer_to(buf: &[u8], seq: u32) -> Result<i32, MalformedReply> {
    parse_replies(buf)?.into_iter().find(|r| r.seq == seq).map(|r| r.errno).ok_or(MalformedReply("no answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_s_answer_gives_its_errno() {
        // nlmsghdr, the error, then the request's header echoed (its seq at 28..32).
        let answer = |kind: u16, seq: u32, error: i32| {
            let mut a = vec![0u8; 36];
            a[0..4].copy_from_slice(&36u32.to_ne_bytes());
            a[4..6].copy_from_slice(&kind.to_ne_bytes());
            a[8..12].copy_from_slice(&seq.to_ne_bytes());
            a[16..20].copy_from_slice(&error.to_ne_bytes());
            a[28..32].copy_from_slice(&seq.to_ne_bytes());
            a
        };
        assert_eq!(answer_to(&answer(NLMSG_ERROR, 1, 0), 1), Ok(0));
        assert_eq!(answer_to(&answer(NLMSG_ERROR, 1, -1), 1), Ok(1), "EPERM");
        assert!(answer_to(&answer(NLMSG_ERROR, 2, 0), 1).is_err(), "another request's answer");
        assert!(answer_to(&answer(3, 1, 0), 1).is_err(), "not an error/ack message");
        assert!(answer_to(&[0u8; 8], 1).is_err());
    }
}
