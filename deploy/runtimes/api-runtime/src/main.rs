//! `api-runtime`: runs a user's JavaScript API check from the job, through the sidecar.
//!
//! `api-runtime` (ephemeral: one job from `JOB_API_URL`, then exit) or
//! `api-runtime --serve ADDR [--max-concurrent N]` (persistent). `--memory-limit-mb N`
//! sets the script heap limit (default 128). Pods get no arguments from the job manager,
//! so each flag has an environment twin for the chart's `extraEnv`: `API_RUNTIME_SERVE`,
//! `API_RUNTIME_MAX_CONCURRENT`, `API_RUNTIME_MEMORY_LIMIT_MB` (a flag wins).

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

/// Environment twins of the flags (a flag wins).
const ENV_SERVE: &str = "API_RUNTIME_SERVE";
const ENV_MAX_CONCURRENT: &str = "API_RUNTIME_MAX_CONCURRENT";
const ENV_MEMORY_LIMIT_MB: &str = "API_RUNTIME_MEMORY_LIMIT_MB";

fn parse_args(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Args, String> {
    let positive = |what: &str, v: &str| -> Result<usize, String> {
        v.trim().parse().ok().filter(|n| *n > 0).ok_or(format!("{what} {v}: not a positive number"))
    };
    let address = |what: &str, v: &str| -> Result<std::net::SocketAddr, String> {
        v.trim().parse().map_err(|e| format!("{what} {v}: {e}"))
    };
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut serve = var(ENV_SERVE).map(|v| address(ENV_SERVE, &v)).transpose()?;
    let mut max_concurrent =
        var(ENV_MAX_CONCURRENT).map(|v| positive(ENV_MAX_CONCURRENT, &v)).transpose()?.unwrap_or(1);
    let mut memory_limit_mb =
        var(ENV_MEMORY_LIMIT_MB).map(|v| positive(ENV_MEMORY_LIMIT_MB, &v)).transpose()?.unwrap_or(128);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--serve" => serve = Some(address(a, value()?)?),
            "--max-concurrent" => max_concurrent = positive(a, value()?)?,
            "--memory-limit-mb" => memory_limit_mb = positive(a, value()?)?,
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
    if argv.first().map(String::as_str) == Some("--version") {
        println!("api-runtime {}", common::build_info::LONG_VERSION);
        return;
    }
    let args = match parse_args(&argv, &|k| std::env::var(k).ok()) {
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
            Mode::Serve { addr, max_concurrent } => contract::serve(settings, addr, max_concurrent).await,
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

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn arguments_select_the_mode_and_limits() {
        assert_eq!(parse_args(&s(&[]), &no_env), Ok(Args { mode: Mode::Once, memory_limit_mb: 128 }));
        assert_eq!(
            parse_args(&s(&["--serve", "127.0.0.1:8081", "--max-concurrent", "3", "--memory-limit-mb", "64"]), &no_env),
            Ok(Args {
                mode: Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: 3 },
                memory_limit_mb: 64
            })
        );
    }

    #[test]
    fn the_environment_can_say_what_a_pod_cannot_pass_as_arguments() {
        let env = |k: &str| match k {
            "API_RUNTIME_SERVE" => Some("127.0.0.1:8081".to_string()),
            "API_RUNTIME_MAX_CONCURRENT" => Some("4".to_string()),
            "API_RUNTIME_MEMORY_LIMIT_MB" => Some("256".to_string()),
            _ => None,
        };
        let serve = Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: 4 };
        assert_eq!(parse_args(&s(&[]), &env), Ok(Args { mode: serve, memory_limit_mb: 256 }));
        let flagged = parse_args(&s(&["--max-concurrent", "2"]), &env).unwrap();
        assert_eq!(
            flagged.mode,
            Mode::Serve { addr: "127.0.0.1:8081".parse().unwrap(), max_concurrent: 2 },
            "a flag wins"
        );
        let bad = |k: &str| (k == "API_RUNTIME_MAX_CONCURRENT").then(|| "lots".to_string());
        assert_eq!(parse_args(&s(&[]), &bad), Err("API_RUNTIME_MAX_CONCURRENT lots: not a positive number".into()));
    }

    #[test]
    fn bad_arguments_are_named() {
        assert_eq!(
            parse_args(&s(&["--max-concurrent", "0"]), &no_env),
            Err("--max-concurrent 0: not a positive number".into())
        );
        assert_eq!(parse_args(&s(&["--bogus"]), &no_env), Err("unknown argument \"--bogus\"".into()));
        assert_eq!(parse_args(&s(&["--serve"]), &no_env), Err("--serve needs a value".into()));
    }
}
