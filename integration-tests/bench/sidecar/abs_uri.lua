-- wrk script for the sidecar benchmark.
-- BENCH_TARGET=http://127.0.0.1:PORT/small.txt sends absolute-form request-targets (what a
-- client configured with HTTP_PROXY sends to its proxy; wrk's URL is then the proxy).
-- BENCH_TARGET=/small.txt sends origin-form (the "direct" baseline).
-- done() prints one machine-readable RESULT line that sidecar.sh parses.
local target = os.getenv("BENCH_TARGET") or "/"
wrk.path = target
local authority = target:match("^https?://([^/]+)")
if authority then
  wrk.headers["Host"] = authority
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d max_us=%d errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
