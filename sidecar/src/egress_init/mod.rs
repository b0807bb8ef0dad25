//! `sidecar egress-init --proxy-uid <UID>`: the pod's egress firewall, run once as an
//! init container before the sidecar and the runtime start.
//!
//! It installs, through nf_tables netlink in the pod's network namespace (no `nft` or
//! `iptables` binary: the image is FROM scratch), one table `inet sidecar_egress` whose
//! output chain lets loopback traffic and the proxy UID's packets out and refuses every
//! other locally-made packet, IPv4 and IPv6, TCP, UDP and ICMP alike. A runtime that
//! ignores `HTTP_PROXY` reaches only loopback, where the sidecar listens: its TCP
//! connects fail at once with ECONNREFUSED (the SYN is answered with a RST, `reject with
//! tcp reset`), and its UDP and ICMP sends fail with EPERM (dropped). See [`nft`] for the
//! exact ruleset.
//!
//! A kernel without the nftables `reject` expression (module nft_reject_inet) refuses
//! the reset rule; the ruleset then goes in without it (TCP is dropped like the rest, so
//! a direct connect times out after about two minutes instead of failing at once) and
//! one warning line on stderr says so; the exit code is still 0.
//!
//! Rerunning it (an init container restart) replaces our table atomically and leaves one
//! copy; other tables are never touched. It needs CAP_NET_ADMIN in the pod's network
//! namespace and nothing else (no CAP_NET_RAW).
//!
//! Exit codes: 0 installed (one line on stdout says what), 64 bad arguments (a missing,
//! non-numeric or root proxy UID), 1 the kernel refused or lacks nf_tables (one line on
//! stderr naming the cause).
pub mod apply;
pub mod nft;

#[cfg(test)]
mod tests;

use crate::config::EXIT_BAD_CONFIG;
use clap::Parser;
use std::ffi::OsString;
use std::process::ExitCode;

/// The argv[1] that selects this command instead of the proxy.
pub const SUBCOMMAND: &str = "egress-init";

/// Install the pod's egress firewall: only the proxy UID (and loopback) may send.
#[derive(Debug, Parser)]
#[command(name = "egress-init", bin_name = "sidecar egress-init", version)]
pub struct EgressInitArgs {
    /// The UID the sidecar runs as: the only UID whose packets may leave the pod. Not 0.
    #[arg(long, value_name = "UID", env = "EGRESS_INIT_PROXY_UID", value_parser = parse_proxy_uid)]
    pub proxy_uid: u32,
}

/// A UID the firewall may let out: a number, neither root nor the invalid UID -1.
pub fn parse_proxy_uid(s: &str) -> Result<u32, String> {
    let uid: u32 = s.trim().parse().map_err(|_| format!("{s:?} is not a numeric UID"))?;
    match uid {
        0 => Err("0 is root: every root process would be let out, and the sidecar never runs as root".into()),
        u32::MAX => Err("4294967295 is the invalid UID (-1)".into()),
        uid => Ok(uid),
    }
}

/// Runs the command; `args` starts at "egress-init" (the binary's argv[1]).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match EgressInitArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprintln!("egress-init: {}", one_line(&e.to_string()));
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    match apply::install(args.proxy_uid) {
        Ok(installed) => {
            if let apply::Installed::WithoutTcpReset { errno } = installed {
                eprintln!("egress-init: {}", without_reset_warning(errno));
            }
            println!(
                "egress-init: installed table inet {} (chain {}, hook output): only loopback and uid {} may send",
                nft::TABLE,
                nft::CHAIN,
                args.proxy_uid
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress-init: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The one stderr line when the reset rule had to be left out.
fn without_reset_warning(errno: nix::errno::Errno) -> String {
    format!(
        "warning: this kernel has no nftables reject expression (module nft_reject_inet; the kernel said: {}), \
         so the ruleset is installed without `reject with tcp reset`: a runtime's direct TCP connects to \
         outside will time out instead of being reset",
        std::io::Error::from_raw_os_error(errno as i32)
    )
}

/// clap's first line without its "error: " prefix (the usage lines that follow are noise
/// in an init container's termination message); a line ending in ':' takes the next.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => format!("{first} {next}"),
        _ => first.to_string(),
    }
}
