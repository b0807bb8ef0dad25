//! Resource limits and timeouts ([`Limits`]) and the runtime's worker thread count:
//! sidecar-private settings, not part of the job-manager contract.
use super::check::{err, positive, Check};
use super::*;
use std::time::Duration;

/// Every limit (clap's default where unset or invalid) and the worker thread count.
pub(super) fn limits(c: &mut Check<'_>, cli: &Cli) -> (Limits, usize) {
    // clap supplies every default; `Limits::default()` stands in only for a value that
    // failed (the error is reported and this config is never used).
    let d = Limits::default();
    let (ms, secs) = (Duration::from_millis, Duration::from_secs);
    let positive_count = |n: &usize| *n > 0;
    let limits = Limits {
        max_header_bytes: c
            .num(
                &cli.max_header_bytes,
                "max_header_bytes",
                ENV_MAX_HEADER_BYTES,
                "--max-header-bytes",
                |n| *n >= 8192,
                "a byte count >= 8192",
            )
            .unwrap_or(d.max_header_bytes),
        max_body_bytes: c
            .num(
                &cli.max_body_bytes,
                "max_body_bytes",
                ENV_MAX_BODY_BYTES,
                "--max-body-bytes",
                positive_count,
                "a positive byte count",
            )
            .unwrap_or(d.max_body_bytes),
        max_body_memory_bytes: c
            .num(
                &cli.max_body_memory_bytes,
                "max_body_memory_bytes",
                ENV_MAX_BODY_MEMORY_BYTES,
                "--max-body-memory-bytes",
                positive_count,
                "a positive byte count",
            )
            .unwrap_or(d.max_body_memory_bytes),
        body_read_timeout: c
            .num(
                &cli.body_read_timeout_ms,
                "body_read_timeout_ms",
                ENV_BODY_READ_TIMEOUT_MS,
                "--body-read-timeout-ms",
                positive,
                "a positive number of ms",
            )
            .map_or(d.body_read_timeout, ms),
        connect_timeout: c
            .num(
                &cli.connect_timeout_ms,
                "connect_timeout_ms",
                ENV_CONNECT_TIMEOUT_MS,
                "--connect-timeout-ms",
                positive,
                "a positive number of ms",
            )
            .map_or(d.connect_timeout, ms),
        idle_timeout: c
            .num(
                &cli.idle_timeout_secs,
                "idle_timeout_secs",
                ENV_IDLE_TIMEOUT_SECS,
                "--idle-timeout-secs",
                positive,
                "a positive number of seconds",
            )
            .map_or(d.idle_timeout, secs),
        tunnel_idle_timeout: c
            .num(
                &cli.tunnel_idle_timeout_secs,
                "tunnel_idle_timeout_secs",
                ENV_TUNNEL_IDLE_TIMEOUT_SECS,
                "--tunnel-idle-timeout-secs",
                positive,
                "a positive number of seconds",
            )
            .map_or(d.tunnel_idle_timeout, secs),
        header_read_timeout: c
            .num(
                &cli.header_read_timeout_ms,
                "header_read_timeout_ms",
                ENV_HEADER_READ_TIMEOUT_MS,
                "--header-read-timeout-ms",
                positive,
                "a positive number of ms",
            )
            .map_or(d.header_read_timeout, ms),
        max_connections: c
            .num(
                &cli.max_connections,
                "max_connections",
                ENV_MAX_CONNECTIONS,
                "--max-connections",
                positive_count,
                "a positive count",
            )
            .unwrap_or(d.max_connections),
        max_admin_connections: c
            .num(
                &cli.max_admin_connections,
                "max_admin_connections",
                ENV_MAX_ADMIN_CONNECTIONS,
                "--max-admin-connections",
                positive_count,
                "a positive count",
            )
            .unwrap_or(d.max_admin_connections),
        max_ingress_connections: c
            .num(
                &cli.max_ingress_connections,
                "max_ingress_connections",
                ENV_MAX_INGRESS_CONNECTIONS,
                "--max-ingress-connections",
                positive_count,
                "a positive count",
            )
            .unwrap_or(d.max_ingress_connections),
        max_tunnels: c
            .num(&cli.max_tunnels, "max_tunnels", ENV_MAX_TUNNELS, "--max-tunnels", positive_count, "a positive count")
            .unwrap_or(d.max_tunnels),
    };
    if limits.max_body_memory_bytes < limits.max_body_bytes {
        let m = format!(
            "{} is less than one body of --max-body-bytes ({}): no body of that size could ever be read",
            limits.max_body_memory_bytes, limits.max_body_bytes
        );
        c.fail(err(ENV_MAX_BODY_MEMORY_BYTES, "--max-body-memory-bytes", m));
    }
    let worker_threads = c
        .num(&cli.worker_threads, "worker_threads", ENV_WORKER_THREADS, "--worker-threads", |_: &usize| true, "a count")
        .unwrap_or(0);
    (limits, worker_threads)
}
