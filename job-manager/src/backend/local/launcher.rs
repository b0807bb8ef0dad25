//! `job-manager isolate sidecar|runtime --uid <UID> -- <program> [args...]`: the hidden
//! launcher the local executor starts each job's processes through when it runs as root.
//! Internal, not part of the CLI: it is not in `--help`, and its arguments may change.
//!
//! It runs as root in the freshly spawned child, before any thread exists, does the
//! privileged part and `exec`s the real program, which keeps its pid (so the executor's
//! pids, process groups, kills and adoption work on the program as before):
//!
//! - `sidecar`: creates the job's network namespace (`unshare(CLONE_NEWNET)`, loopback
//!   up), binds the proxy listener on `127.0.0.1:0` inside it, keeps a handle to it open
//!   across exec (the executor finds it in `/proc/<sidecar>/fd` to put the runtime there),
//!   returns to the host namespace (the sidecar's egress is the host's), puts the listener
//!   on stdin (`SIDECAR_LISTEN_STDIN`), drops to the sidecar UID and hands the internal
//!   key (read from its own stdin) over a pipe named by `SIDECAR_INTERNAL_API_KEY_FILE`.
//! - `runtime`: enters the network namespace given as stdin, stdin becomes `/dev/null`,
//!   drops to the runtime UID with `no_new_privs`, execs the runtime (searched in `PATH`).
//!
//! No `unsafe`: fds move only through std's stdin handle and `/proc/self/fd/<n>` paths.
use common::runtime_api::sidecar_env;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use nix::unistd::{Gid, Uid};
use std::ffi::{CString, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;

/// The subcommand's name (`job-manager isolate ...`).
pub const SUBCOMMAND: &str = "isolate";

/// The launcher could not do its part (as shells do when a command cannot be run).
const EXIT_CANNOT_LAUNCH: i32 = 126;
const EXIT_USAGE: i32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    Runtime,
    /// Kill every process of the UID (what a runtime left behind, also outside its
    /// process group): `kill(-1, SIGKILL)` as that UID, so nothing else is reached.
    Reap,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Runtime => "runtime",
            Role::Reap => "reap",
        }
    }
}

/// What one launch does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub role: Role,
    /// UID and GID the program runs as.
    pub uid: u32,
    /// argv of the program; `argv[0]` is the program.
    pub argv: Vec<OsString>,
}

/// The launcher's argv after `isolate`, as the executor builds it with [`args`].
pub fn parse_args(args: &[OsString]) -> Result<Launch, String> {
    let text = |a: &OsString| a.to_str().map(str::to_string).ok_or_else(|| format!("{a:?} is not UTF-8"));
    let role = match args.first().map(text).transpose()?.as_deref() {
        Some("sidecar") => Role::Sidecar,
        Some("runtime") => Role::Runtime,
        Some("reap") => Role::Reap,
        Some(other) => return Err(format!("unknown role {other:?} (sidecar or runtime)")),
        None => return Err("usage: isolate sidecar|runtime|reap --uid <UID> -- <program> [args...]".into()),
    };
    if args.get(1).map(text).transpose()?.as_deref() != Some("--uid") {
        return Err("--uid <UID> must follow the role".into());
    }
    let raw = args.get(2).map(text).transpose()?.ok_or("--uid needs a value")?;
    let uid: u32 = raw.parse().map_err(|_| format!("{raw:?} is not a numeric UID"))?;
    if uid == 0 || uid == u32::MAX {
        return Err(format!("{uid} is not an unprivileged UID"));
    }
    if args.get(3).map(text).transpose()?.as_deref() != Some("--") {
        return Err("`-- <program> [args...]` must follow --uid".into());
    }
    let argv = args[4..].to_vec();
    if argv.is_empty() && role != Role::Reap {
        return Err("no program after --".into());
    }
    Ok(Launch { role, uid, argv })
}

/// The launcher arguments that run `argv` as `role` under `uid` (inverse of [`parse_args`]).
pub fn args(role: Role, uid: u32, argv: &[OsString]) -> Vec<OsString> {
    let mut out: Vec<OsString> =
        vec![SUBCOMMAND.into(), role.as_str().into(), "--uid".into(), uid.to_string().into(), "--".into()];
    out.extend(argv.iter().cloned());
    out
}

/// `job-manager isolate ...`; returns only on failure (the exit code).
pub fn main(args: impl Iterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.collect();
    let launch = match parse_args(&args) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("job-manager isolate: {e}");
            return EXIT_USAGE;
        }
    };
    let err = match launch.role {
        Role::Sidecar => launch_sidecar(&launch),
        Role::Runtime => launch_runtime(&launch),
        Role::Reap => match reap(launch.uid) {
            Ok(()) => return 0,
            Err(e) => e,
        },
    };
    eprintln!("job-manager isolate {}: {err}", launch.role.as_str());
    EXIT_CANNOT_LAUNCH
}

fn launch_sidecar(launch: &Launch) -> String {
    match sidecar_steps(launch) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn launch_runtime(launch: &Launch) -> String {
    match runtime_steps(launch) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn sidecar_steps(launch: &Launch) -> Result<std::convert::Infallible, String> {
    require_root()?;
    let mut key = String::new();
    std::io::stdin().lock().read_to_string(&mut key).map_err(|e| format!("cannot read the key from stdin: {e}"))?;
    let key = key.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        return Err("no internal API key on stdin".into());
    }
    let host = std::fs::File::open("/proc/self/ns/net").map_err(|e| format!("cannot open the host netns: {e}"))?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    loopback_up().map_err(|e| format!("cannot bring lo up in the job's netns: {e}"))?;
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind the proxy listener: {e}"))?;
    // Open across exec: the runtime's netns lives as long as the sidecar, and the
    // executor enters it through /proc/<sidecar pid>/fd.
    let job_netns =
        std::fs::File::open("/proc/self/ns/net").map_err(|e| format!("cannot open the job's netns: {e}"))?;
    keep_across_exec(&job_netns)?;
    setns(&host, CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot return to the host netns: {e}"))?;
    drop(host);
    nix::unistd::dup2_stdin(&listener).map_err(|e| format!("cannot put the listener on stdin: {e}"))?;
    drop(listener);
    drop_privileges(launch.uid)?;
    // Created after the switch, so the pipe is the sidecar's to open through /proc.
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    std::fs::File::from(write)
        .write_all(format!("{key}\n").as_bytes())
        .map_err(|e| format!("cannot pass the key on: {e}"))?;
    keep_across_exec(&read)?;
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| k != sidecar_env::LISTEN && k != sidecar_env::INTERNAL_API_KEY_FILE)
        .collect();
    env.push((sidecar_env::LISTEN_STDIN.into(), "true".into()));
    env.push((sidecar_env::INTERNAL_API_KEY_FILE.into(), format!("/proc/self/fd/{}", read.as_raw_fd()).into()));
    let argv = cstrings(launch.argv.iter())?;
    let env = cstrings(env.iter().map(|(k, v)| {
        let mut kv = k.clone();
        kv.push("=");
        kv.push(v);
        kv
    }))?;
    nix::unistd::execve(&argv[0], &argv, &env).map_err(|e| format!("cannot exec {:?}: {e}", launch.argv[0]))
}

fn runtime_steps(launch: &Launch) -> Result<std::convert::Infallible, String> {
    require_root()?;
    let before = std::fs::read_link("/proc/self/ns/net").map_err(|e| format!("cannot read the own netns: {e}"))?;
    setns(std::io::stdin().as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("stdin is not a network namespace to enter: {e}"))?;
    let after = std::fs::read_link("/proc/self/ns/net").map_err(|e| format!("cannot read the job's netns: {e}"))?;
    if after == before {
        return Err(format!("stdin is the launcher's own network namespace {before:?}: refusing"));
    }
    let devnull = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(devnull).map_err(|e| format!("cannot replace stdin: {e}"))?;
    drop_privileges(launch.uid)?;
    // setuid programs (su, sudo, ping) must not take the runtime back to root.
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    let argv = cstrings(launch.argv.iter())?;
    nix::unistd::execvp(&argv[0], &argv).map_err(|e| format!("cannot exec {:?}: {e}", launch.argv[0]))
}

fn reap(uid: u32) -> Result<(), String> {
    require_root()?;
    drop_privileges(uid)?;
    // ESRCH: nothing of the UID was left.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!("kill(-1) as {uid}: {e}")),
    }
}

fn require_root() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("must run as root (the local executor starts it so only when it is root)".into());
    }
    Ok(())
}

/// No supplementary groups, then gid, then uid (the other order would leave root's
/// groups or lose the right to change them); then check it cannot be undone.
fn drop_privileges(uid: u32) -> Result<(), String> {
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups([]): {e}"))?;
    nix::unistd::setgid(Gid::from_raw(uid)).map_err(|e| format!("setgid({uid}): {e}"))?;
    nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid({uid}): {e}"))?;
    if nix::unistd::geteuid().as_raw() != uid || nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(format!("privileges not dropped to {uid}"));
    }
    Ok(())
}

fn keep_across_exec(fd: &impl AsFd) -> Result<(), String> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map(drop).map_err(|e| format!("F_SETFD: {e}"))
}

fn cstrings<'a>(items: impl Iterator<Item = impl std::borrow::Borrow<OsString> + 'a>) -> Result<Vec<CString>, String> {
    items
        .map(|s| CString::new(s.borrow().as_bytes()).map_err(|_| format!("{:?} contains a NUL byte", s.borrow())))
        .collect()
}

const RTM_NEWLINK: u16 = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const IFF_UP: u32 = 0x1;
/// `lo` is always ifindex 1 in a new network namespace.
const LOOPBACK_IFINDEX: i32 = 1;

/// One `RTM_NEWLINK` request setting `IFF_UP` on interface `ifindex`: an `nlmsghdr`
/// (16 bytes) and an `ifinfomsg` (16 bytes), native byte order, no attributes.
pub fn link_up_request(ifindex: i32, seq: u32) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0..4].copy_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes()); // nlmsg_flags
    m[8..12].copy_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
                                                  // nlmsg_pid 0: to the kernel. ifinfomsg: family AF_UNSPEC, pad, type 0.
    m[20..24].copy_from_slice(&ifindex.to_ne_bytes()); // ifi_index
    m[24..28].copy_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    m[28..32].copy_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    m
}

fn loopback_up() -> Result<(), String> {
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
        .map_err(|e| format!("NETLINK_ROUTE socket: {e}"))?;
    let request = link_up_request(LOOPBACK_IFINDEX, 1);
    sendto(fd.as_raw_fd(), &request, &NetlinkAddr::new(0, 0), MsgFlags::empty()).map_err(|e| format!("sendto: {e}"))?;
    let mut answer = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).map_err(|e| format!("recv: {e}"))?;
    match common::netlink::answer_to(&answer[..n], 1).map_err(|e| e.to_string())? {
        0 => Ok(()),
        errno => Err(format!("RTM_NEWLINK refused: {}", nix::errno::Errno::from_raw(errno))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_round_trip_and_keep_the_program_s_own_flags() {
        let argv = os(&["/bin/sh", "-c", "echo --uid 0 --"]);
        let built = args(Role::Runtime, 200000, &argv);
        assert_eq!(built[0], SUBCOMMAND);
        let parsed = parse_args(&built[1..]).unwrap();
        assert_eq!(parsed, Launch { role: Role::Runtime, uid: 200000, argv });
        let sidecar = parse_args(&os(&["sidecar", "--uid", "7", "--", "/bin/sidecar"])).unwrap();
        assert_eq!((sidecar.role, sidecar.uid), (Role::Sidecar, 7));
        let reap = parse_args(&args(Role::Reap, 9, &[])[1..]).unwrap();
        assert_eq!(reap, Launch { role: Role::Reap, uid: 9, argv: vec![] });
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        struct Case {
            args: &'static [&'static str],
            reason: &'static str,
        }
        let cases = [
            Case { args: &[], reason: "usage: isolate sidecar|runtime|reap --uid <UID> -- <program> [args...]" },
            Case { args: &["shell", "--uid", "7", "--", "x"], reason: "unknown role \"shell\" (sidecar or runtime)" },
            Case { args: &["reap", "--uid", "0", "--"], reason: "0 is not an unprivileged UID" },
            Case { args: &["runtime", "--", "x"], reason: "--uid <UID> must follow the role" },
            Case { args: &["runtime", "--uid"], reason: "--uid needs a value" },
            Case { args: &["runtime", "--uid", "nobody", "--", "x"], reason: "\"nobody\" is not a numeric UID" },
            Case { args: &["runtime", "--uid", "0", "--", "x"], reason: "0 is not an unprivileged UID" },
            Case {
                args: &["runtime", "--uid", "4294967295", "--", "x"],
                reason: "4294967295 is not an unprivileged UID",
            },
            Case { args: &["runtime", "--uid", "7", "x"], reason: "`-- <program> [args...]` must follow --uid" },
            Case { args: &["runtime", "--uid", "7", "--"], reason: "no program after --" },
        ];
        for c in cases {
            assert_eq!(parse_args(&os(c.args)), Err(c.reason.to_string()), "{:?}", c.args);
        }
    }

    #[test]
    fn the_link_up_request_is_one_rtm_newlink_with_iff_up_for_the_interface() {
        let m = link_up_request(1, 7);
        let mut expected = Vec::new();
        expected.extend_from_slice(&32u32.to_ne_bytes()); // length: header + ifinfomsg
        expected.extend_from_slice(&16u16.to_ne_bytes()); // RTM_NEWLINK
        expected.extend_from_slice(&5u16.to_ne_bytes()); // NLM_F_REQUEST | NLM_F_ACK
        expected.extend_from_slice(&7u32.to_ne_bytes()); // seq
        expected.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        expected.extend_from_slice(&[0, 0]); // AF_UNSPEC, pad
        expected.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
        expected.extend_from_slice(&1i32.to_ne_bytes()); // ifi_index: lo
        expected.extend_from_slice(&1u32.to_ne_bytes()); // ifi_flags: IFF_UP
        expected.extend_from_slice(&1u32.to_ne_bytes()); // ifi_change: IFF_UP
        assert_eq!(m.to_vec(), expected);
    }
}
