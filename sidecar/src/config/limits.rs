//! Resource limits and timeouts ([`Limits`]) and the runtime's worker thread count:
//! sidecar-private settings, not part of the job-manager contract.
use super::check::{ms, parse_num, positive, secs, Check};
use super::*;

/// Every limit (clap's default where unset or invalid) and the worker thread count.
pub(super) fn limits(c: &mut Check<'_>, cli: &Cli) -> (Limits, usize) {
    let d = Limits::default();
    let any = |_: &usize| true;
    let max_header_bytes = parse_num(
        c.one(&cli.max_header_bytes, "max_header_bytes"),
        ENV_MAX_HEADER_BYTES,
        "--max-header-bytes",
        |n| *n >= 8192,
        "a byte count >= 8192",
    );
    let max_body_bytes = parse_num(
        c.one(&cli.max_body_bytes, "max_body_bytes"),
        ENV_MAX_BODY_BYTES,
        "--max-body-bytes",
        |n| *n > 0,
        "a positive byte count",
    );
    let connect_timeout = parse_num(
        c.one(&cli.connect_timeout_ms, "connect_timeout_ms"),
        ENV_CONNECT_TIMEOUT_MS,
        "--connect-timeout-ms",
        positive,
        "a positive number of ms",
    );
    let idle_timeout = parse_num(
        c.one(&cli.idle_timeout_secs, "idle_timeout_secs"),
        ENV_IDLE_TIMEOUT_SECS,
        "--idle-timeout-secs",
        positive,
        "a positive number of seconds",
    );
    let tunnel_idle_timeout = parse_num(
        c.one(&cli.tunnel_idle_timeout_secs, "tunnel_idle_timeout_secs"),
        ENV_TUNNEL_IDLE_TIMEOUT_SECS,
        "--tunnel-idle-timeout-secs",
        positive,
        "a positive number of seconds",
    );
    let header_read_timeout = parse_num(
        c.one(&cli.header_read_timeout_ms, "header_read_timeout_ms"),
        ENV_HEADER_READ_TIMEOUT_MS,
        "--header-read-timeout-ms",
        positive,
        "a positive number of ms",
    );
    let max_connections = parse_num(
        c.one(&cli.max_connections, "max_connections"),
        ENV_MAX_CONNECTIONS,
        "--max-connections",
        |n| *n > 0,
        "a positive count",
    );
    let max_tunnels = parse_num(
        c.one(&cli.max_tunnels, "max_tunnels"),
        ENV_MAX_TUNNELS,
        "--max-tunnels",
        |n| *n > 0,
        "a positive count",
    );
    let limits = Limits {
        max_header_bytes: c.ok(max_header_bytes).flatten().unwrap_or(d.max_header_bytes),
        max_body_bytes: c.ok(max_body_bytes).flatten().unwrap_or(d.max_body_bytes),
        connect_timeout: ms(c.ok(connect_timeout).flatten(), 10_000),
        idle_timeout: secs(c.ok(idle_timeout).flatten(), 90),
        tunnel_idle_timeout: secs(c.ok(tunnel_idle_timeout).flatten(), 600),
        header_read_timeout: ms(c.ok(header_read_timeout).flatten(), 10_000),
        max_connections: c.ok(max_connections).flatten().unwrap_or(d.max_connections),
        max_tunnels: c.ok(max_tunnels).flatten().unwrap_or(d.max_tunnels),
    };
    let worker_threads =
        parse_num(c.one(&cli.worker_threads, "worker_threads"), ENV_WORKER_THREADS, "--worker-threads", any, "a count");
    let worker_threads = c.ok(worker_threads).flatten().unwrap_or(0);
    (limits, worker_threads)
}
