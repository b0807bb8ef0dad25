//! `api-runtime`: runs a user's JavaScript API check from the job, through the sidecar.
//!
//! `api-runtime` (ephemeral: one job from `JOB_API_URL`, then exit) or
//! `api-runtime --serve ADDR [--max-concurrent N]` (persistent). `--memory-limit-mb N`
//! sets the script heap limit (default 128).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use api_runtime::contract::{self, exit, Settings};
use api_runtime::engine::Limits;

#[derive(Debug, PartialEq)]
enum Mode {
    Once,
    Serve { addr: std::net::SocketAddr, max_concurrent: usize },
}

#[derive(Debug, PartialEq)]
struct Args {
    mode: Mode,
    memory_limit_mb: usize,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut serve = None;
    let mut max_concurrent = 1usize;
    let mut memory_limit_mb = 128usize;
    let mut it = args.iter();
    let positive = |flag: &str, v: Option<&String>| -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a number"))?;
        v.parse().ok().filter(|n| *n > 0).ok_or(format!("{flag} {v}: not a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--serve" => {
                let v = it.next().ok_or("--serve needs an address")?;
                serve = Some(v.parse().map_err(|e| format!("--serve {v}: {e}"))?);
            }
            "--max-concurrent" => max_concurrent = positive("--max-concurrent", it.next())?,
            "--memory-limit-mb" => memory_limit_mb = positive("--memory-limit-mb", it.next())?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let mode = match serve {
        Some(addr) => Mode::Serve { addr, max_concurrent },
        None => Mode::Once,
    };
    Ok(Args { mode, memory_limit_mb })
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("api-runtime: {e}\nusage: api-runtime [--serve ADDR [--max-concurrent N]] [--memory-limit-mb N]");
            std::process::exit(exit::USAGE);
        }
    };
    let limits = Limits { memory_bytes: args.memory_limit_mb * 1024 * 1024, ..Limits::default() };
    let settings = match Settings::from_env(&|k| std::env::var(k).ok(), limits) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("api-runtime: {e}");
            std::process::exit(exit::CONFIG);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(64)
        .thread_stack_size(4 * 1024 * 1024)
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match args.mode {
            Mode::Once => contract::run_once(settings).await,
            Mode::Serve { addr, max_concurrent } => match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => contract::serve(settings, listener, max_concurrent).await,
                Err(e) => {
                    eprintln!("api-runtime: cannot listen on {addr}: {e}");
                    exit::CONFIG
                }
            },
        }
    });
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments_select_the_mode_and_limits() {
        assert_eq!(parse_args(&s(&[])), Ok(Args { mode: Mode::Once, memory_limit_mb: 128 }));
        assert_eq!(
            parse_args(&s(&["--serve", "127.0.0.1:8081", "--max-concurrent", "3", "--memory-limit-mb", "64"])),
            Ok(Args {
                mode: Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: 3 },
                memory_limit_mb: 64
            })
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        assert_eq!(parse_args(&s(&["--max-concurrent", "0"])), Err("--max-concurrent 0: not a positive number".into()));
        assert_eq!(parse_args(&s(&["--bogus"])), Err("unknown argument \"--bogus\"".into()));
        assert_eq!(parse_args(&s(&["--serve"])), Err("--serve needs an address".into()));
    }
}
