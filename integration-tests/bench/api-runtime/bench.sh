#!/usr/bin/env bash
# API runtime benchmark section. Prints a markdown report on stdout; progress on stderr.
#
#   1. Start to job fetched: spawn `api-runtime` to its `GET /v1/job` arriving at a local
#      stand-in of the sidecar's API (p50/p90 of BENCH_STARTS runs), beside `node -e 0`
#      (spawn to exit) and node's own start to its first request, in the same run,
#      interleaved.
#   2. Idle RSS: VmRSS of a runtime waiting for its job (the stand-in holds the answer),
#      and VmHWM after a check with one GET.
#   3. A simple GET check end to end, pod start excluded: job answered -> result posted,
#      for `GET origin; assert status`, through the real sidecar (release build, on
#      loopback, allow-list mode), vs the same GET made directly (new connection each),
#      p50 of BENCH_CHECKS interleaved rounds.
#   4. Sizes: the binary (stripped, dynamic) and its gzip (~ the image's compressed layer).
#
# Everything is on 127.0.0.1; nothing else is touched. Knobs: API_RUNTIME_BIN and
# SIDECAR_BIN (default target/release/*, built here), BENCH_STARTS (50), BENCH_CHECKS (50).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
log() { echo "bench/api-runtime: $*" >&2; }

runtime_bin="${API_RUNTIME_BIN:-$root/target/release/api-runtime}"
sidecar_bin="${SIDECAR_BIN:-$root/target/release/sidecar}"
if [ -z "${API_RUNTIME_BIN:-}" ] || [ -z "${SIDECAR_BIN:-}" ]; then
  log "cargo build --release -p api-runtime -p sidecar"
  (cd "$root" && cargo build --release --locked -p api-runtime -p sidecar --bins >&2)
fi
command -v node >/dev/null || { log "node is needed for the baseline (apt-get install nodejs)"; exit 1; }

exec python3 - "$runtime_bin" "$sidecar_bin" "${BENCH_STARTS:-50}" "${BENCH_CHECKS:-50}" <<'PY'
import gzip, http.client, http.server, json, os, socketserver, statistics, subprocess, sys, tempfile, threading, time

runtime_bin, sidecar_bin, starts, checks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def log(*a): print("bench/api-runtime:", *a, file=sys.stderr, flush=True)

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

def reply(handler, status, body=b""):
    # One write per answer: headers and body in separate small writes would meet Nagle
    # and delayed ACKs (40 ms stalls that are the stand-in's, not the runtime's).
    reason = {200: "OK", 204: "No Content"}[status]
    handler.wfile.write(b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n\r\n" % (status, reason.encode(), len(body)) + body)
    handler.wfile.flush()

# --- the stand-in local API: records when the job is asked for and the result arrives --
class LocalApi:
    def __init__(self):
        self.job = None
        self.hold = 0.0
        self.events = {}
        self.cond = threading.Condition()
        api = self
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def do_GET(self):
                now = time.perf_counter()
                with api.cond:
                    api.events["job_asked"] = now
                    api.cond.notify_all()
                if api.hold: time.sleep(api.hold)
                reply(self, 200, json.dumps(api.job).encode())
                with api.cond:
                    api.events["job_answered"] = time.perf_counter()
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.perf_counter()
                with api.cond:
                    api.events["result"] = now
                    api.events["result_body"] = json.loads(body)
                    api.cond.notify_all()
                reply(self, 204)
        self.server = Server(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
    def reset(self, job, hold=0.0):
        with self.cond:
            self.job, self.hold, self.events = job, hold, {}
    def wait(self, key, timeout=20):
        with self.cond:
            self.cond.wait_for(lambda: key in self.events, timeout)
            return self.events.get(key)

class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        reply(self, 200, b"hello from the bench origin\n")

api = LocalApi()
origin = Server(("127.0.0.1", 0), Origin)
threading.Thread(target=origin.serve_forever, daemon=True).start()
origin_url = "http://127.0.0.1:%d/health" % origin.server_address[1]

tmp = tempfile.mkdtemp(prefix="bench-api-runtime-")
ready = os.path.join(tmp, "ready.json")
sidecar = subprocess.Popen([sidecar_bin, "--listen", "127.0.0.1:0", "--allow-cidr", "127.0.0.1/32",
                            "--deny-public", "--deny-private", "--ready-file", ready, "--log-level", "error"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(400):
    if os.path.exists(ready): break
    time.sleep(0.01)
proxy = "http://" + json.load(open(ready))["listen"]

def env():
    e = {"PATH": os.environ.get("PATH", ""), "JOB_API_URL": api.url, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy,
         "USER_DEFINED_VARIABLES": "{}"}
    return e

def job(script, jid="bench-1"):
    return {"id": jid, "runtime_type": "node-api-runtime", "timeout_secs": 30, "attempt": 1, "payload": {"script": script}}

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

# --- 1. start to job fetched, vs node ------------------------------------------------------
node_get = ("require('http').get(process.env.JOB_API_URL + '/v1/job', r => r.resume())")
rt_ms, node0_ms, nodeget_ms = [], [], []
log(f"start to job fetched: {starts} rounds")
for i in range(starts):
    api.reset(job("1"))
    t0 = time.perf_counter()
    p = subprocess.Popen([runtime_bin], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    asked = api.wait("job_asked")
    rt_ms.append((asked - t0) * 1000)
    p.wait(timeout=30)

    t0 = time.perf_counter()
    subprocess.run(["node", "-e", "0"], check=True)
    node0_ms.append((time.perf_counter() - t0) * 1000)

    api.reset(job("1"))
    t0 = time.perf_counter()
    p = subprocess.Popen(["node", "-e", node_get], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    asked = api.wait("job_asked")
    nodeget_ms.append((asked - t0) * 1000)
    p.wait(timeout=30)

# --- 2. idle RSS ------------------------------------------------------------------------
def status_kb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
api.reset(job("1"), hold=1.0)
p = subprocess.Popen([runtime_bin], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
api.wait("job_asked")
time.sleep(0.3)
idle_rss = status_kb(p.pid, "VmRSS")
p.wait(timeout=30)

# --- 3. a simple GET check end to end vs the direct request --------------------------------
script = f"const res = await $http.get('{origin_url}');\nassert.strictEqual(res.statusCode, 200);"
check_ms, direct_ms, request_ms, peak = [], [], [], []
log(f"GET check end to end: {checks} rounds")
host, port = "127.0.0.1", origin.server_address[1]
for i in range(checks):
    api.reset(job(script, f"bench-{i}"))
    p = subprocess.Popen([runtime_bin], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api.wait("result")
    try:
        kb = status_kb(p.pid, "VmHWM")  # None once it is a zombie
        if kb: peak.append(kb)
    except (FileNotFoundError, ProcessLookupError):
        pass
    p.wait(timeout=30)
    ev = api.events
    assert ev["result_body"]["outcome"] == "succeeded", ev["result_body"]
    check_ms.append((ev["result"] - ev["job_answered"]) * 1000)
    request_ms.append(ev["result_body"]["output"]["requests"][0]["timings"]["total_ms"])

    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port)
    c.request("GET", "/health"); r = c.getresponse(); r.read(); c.close()
    assert r.status == 200
    direct_ms.append((time.perf_counter() - t0) * 1000)

sidecar.kill(); sidecar.wait()

size = os.path.getsize(runtime_bin)
gz = len(gzip.compress(open(runtime_bin, "rb").read(), 9))
p50 = lambda xs: statistics.median(xs)
print("## API runtime (`api-runtime`, release build)\n")
print(f"{starts} starts, {checks} checks, interleaved with their baselines; medians (p90).\n")
print("| what | api-runtime | baseline | ratio / difference |")
print("|---|---|---|---|")
print(f"| start to job fetched (spawn -> `GET /v1/job`) | **{p50(rt_ms):.1f} ms** ({pct(rt_ms, 90):.1f}) | `node -e 0` (spawn -> exit): {p50(node0_ms):.1f} ms ({pct(node0_ms, 90):.1f}); node spawn -> its first request: {p50(nodeget_ms):.1f} ms | {p50(node0_ms) / p50(rt_ms):.1f}x faster than `node -e 0` |")
print(f"| idle RSS (waiting for its job) | **{idle_rss / 1024:.1f} MiB** | - | goal 10 MB |")
print(f"| peak RSS of a GET check (VmHWM) | {p50(peak) / 1024:.1f} MiB | - | - |" if peak else "| peak RSS of a GET check | n/a | - | - |")
print(f"| GET check end to end, pod start excluded (job answered -> result posted; engine, script, GET through the sidecar, result) | **{p50(check_ms):.2f} ms** ({pct(check_ms, 90):.2f}) | the same GET direct, new connection: {p50(direct_ms):.2f} ms ({pct(direct_ms, 90):.2f}) | **{p50(check_ms) - p50(direct_ms):+.2f} ms** (goal <= 5 ms) |")
print(f"| the GET itself as the script timed it (`timings.total_ms`, through the sidecar) | {p50(request_ms):.2f} ms | direct: {p50(direct_ms):.2f} ms | {p50(request_ms) - p50(direct_ms):+.2f} ms |")
ldd = subprocess.run(["ldd", runtime_bin], capture_output=True, text=True)
linkage = "dynamic glibc" if "=>" in ldd.stdout else "static"
print(f"| binary ({linkage}, stripped) | {size / 1e6:.2f} MB | - | gzip -9: {gz / 1e6:.2f} MB (~ the image's compressed layer; goal 10 MB) |")
print()
PY
