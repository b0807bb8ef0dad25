#!/usr/bin/env bash
# Browser-runtime benchmarks, a `make bench` section (run.sh runs every
# integration-tests/bench/*/bench.sh); also runs standalone:
#   integration-tests/bench/browser-runtime/bench.sh                 # release build
#   BENCH_PROFILE=dev BENCH_ROUNDS=5 integration-tests/bench/browser-runtime/bench.sh
# Prints a markdown report on stdout, progress on stderr.
#
# What it measures, BENCH_ROUNDS times each, everything on loopback:
# 1. A simple browser check end to end: a real sidecar (job directory, allow-list
#    policy) and `browser-runtime` (fetch the job, start Chromium, load a local page,
#    timings, screenshot, post the result) until the runtime exits; plus the result's own
#    figures: Chromium start (spawn to first DevTools answer) and page load wall time.
# 2. Baseline in the same run: Chromium's own CLI doing the same page through the same
#    sidecar (`chromium --headless --screenshot`, a fresh profile each time).
# 3. The image: its compressed size as pushed (gzip layers + config), when
#    `images.sh build browser-runtime` has built it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"

profile="${BENCH_PROFILE:-release}"
rounds="${BENCH_ROUNDS:-10}"

log() { echo "bench[browser-runtime]: $*" >&2; }
command -v chromium >/dev/null || { log "chromium not installed: run deploy/scripts/setup-test-env.sh"; exit 1; }

if [ "$profile" = dev ]; then bin_dir="$root/target/debug"; else bin_dir="$root/target/$profile"; fi
log "building ($profile)"
cargo build --profile "$profile" -p browser-runtime -p sidecar --bins >&2

work="$(mktemp -d /tmp/br-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port); jm_port=$(free_port)
mkdir -p "$work/www"
cat > "$work/www/index.html" <<'HTML'
<!doctype html><html><head><title>bench page</title><style>body{font:20px sans-serif;background:#eef}</style></head>
<body><h1>Browser runtime bench</h1><p>A small page with a stylesheet-free layout and one image.</p>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" width="100" height="100"></body></html>
HTML
python3 -m http.server "$origin_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
pids+=($!)
# A stand-in job manager: keeps the last result it is given.
python3 - "$jm_port" "$work/result.json" <<'PY' >/dev/null 2>&1 &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
class JM(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        open(out, "wb").write(body)
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), JM).serve_forever()
PY
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$origin_port/" 2>/dev/null && curl -fsS -o /dev/null "http://127.0.0.1:$jm_port/" 2>/dev/null && break
  sleep 0.05
done
url="http://127.0.0.1:$origin_port/index.html"

# start_sidecar DIR: a sidecar for one job; prints its proxy address.
start_sidecar() {
  local dir=$1
  SIDECAR_INTERNAL_API_KEY=bench-key "$bin_dir/sidecar" --listen 127.0.0.1:0 --ready-file "$dir/ready.json" \
    --allow-cidr 127.0.0.1/32 --deny-public --deny-private --job-manager-url "http://127.0.0.1:$jm_port" \
    --spool-dir "$dir/spool" ${2:+--job-dir "$2"} >"$dir/sidecar.log" 2>&1 &
  echo $! > "$dir/sidecar.pid"
  for _ in $(seq 1 200); do [ -s "$dir/ready.json" ] && break; sleep 0.01; done
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listen"])' "$dir/ready.json"
}

now_ms() { date +%s%3N; }
: > "$work/runtime.tsv"; : > "$work/cli.tsv"
for i in $(seq 1 "$rounds"); do
  d="$work/r$i"; mkdir -p "$d/job" "$d/tmp"
  printf '{"id":"bench-%s","runtime_type":"node-browser-runtime","timeout_secs":60,"payload":{"type":"simple","url":"%s"}}' "$i" "$url" > "$d/job/job.json"
  printf 'bench-token' > "$d/job/token"
  proxy=$(start_sidecar "$d" "$d/job")
  rm -f "$work/result.json"
  t0=$(now_ms)
  env -u http_proxy -u https_proxy -u no_proxy JOB_API_URL="http://$proxy" HTTP_PROXY="http://$proxy" HTTPS_PROXY="http://$proxy" \
    TMPDIR="$d/tmp" "$bin_dir/browser-runtime" 2>"$d/runtime.log"
  t1=$(now_ms)
  for _ in $(seq 1 200); do [ -s "$work/result.json" ] && break; sleep 0.01; done
  kill "$(cat "$d/sidecar.pid")" 2>/dev/null || true
  python3 - "$work/result.json" "$((t1 - t0))" >> "$work/runtime.tsv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); o = r["output"]
assert r["outcome"] == "succeeded", r["message"]
print(sys.argv[2], o["chromium_start_ms"], o["page_load_wall_ms"], o["timings"]["load_ms"], len(o["artifacts"][0]["data"]), o["chromium_stop_ms"], sep="\t")
PY
  # Baseline: Chromium's CLI, same page, same kind of sidecar, fresh profile.
  proxy=$(start_sidecar "$d")
  t0=$(now_ms)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$d/cli-profile" --proxy-server="http://$proxy" \
    --proxy-bypass-list='<-loopback>' --window-size=1280,720 --screenshot="$d/cli.png" "$url" >/dev/null 2>&1
  t1=$(now_ms)
  kill "$(cat "$d/sidecar.pid")" 2>/dev/null || true
  [ -s "$d/cli.png" ] || { log "chromium --screenshot wrote nothing"; exit 1; }
  echo "$((t1 - t0))" >> "$work/cli.tsv"
  log "round $i: runtime $(tail -1 "$work/runtime.tsv" | cut -f1) ms, chromium CLI $(tail -1 "$work/cli.tsv") ms"
done

# The image as a registry would store it: `buildah push` to an OCI layout with gzip
# layers, config + layers summed (what a node pulls); unpacked size from buildah.
image_line="not built (run \`deploy/scripts/images.sh build browser-runtime\`)"
image="localhost/newrelic/serverless-browser-runtime:latest"
export CONTAINERS_STORAGE_CONF="$root/.cache/images/storage.conf"
if command -v buildah >/dev/null && [ -f "$CONTAINERS_STORAGE_CONF" ] && buildah inspect --type image "$image" >/dev/null 2>&1; then
  buildah push --quiet --compression-format gzip "$image" "oci:$work/oci" >/dev/null
  image_line=$(python3 - "$work/oci" "$(buildah images --noheading --format '{{.Size}}' "$image" | head -1)" <<'PY'
import json, sys
d, unpacked = sys.argv[1], sys.argv[2]
m = json.load(open(f"{d}/index.json"))["manifests"][0]["digest"].split(":")[1]
man = json.load(open(f"{d}/blobs/sha256/{m}"))
size = man["config"]["size"] + sum(l["size"] for l in man["layers"])
print(f"{size / 1e6:.1f} MB compressed ({len(man['layers'])} gzip layer), {unpacked} unpacked")
PY
)
fi

python3 - "$work/runtime.tsv" "$work/cli.tsv" "$rounds" "$profile" "$image_line" "$(chromium --version 2>/dev/null)" <<'PY'
import statistics, sys
rt = [list(map(float, l.split("\t"))) for l in open(sys.argv[1]) if l.strip()]
cli = [int(l) for l in open(sys.argv[2]) if l.strip()]
rounds, profile, image, version = sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
col = lambda i: [r[i] for r in rt]
fmt = lambda xs: f"{statistics.median(xs):.0f} ms (min {min(xs):.0f}, max {max(xs):.0f})"
print(f"## Browser runtime ({version}, {rounds} rounds, {profile} build)\n")
print("| measurement | result |")
print("|---|---|")
print(f"| simple check end to end: runtime start -> job fetched, Chromium started, page loaded, timings + screenshot, result posted, Chromium gone | **{fmt(col(0))}** |")
print(f"| of which Chromium start (spawn -> first DevTools answer) | {fmt(col(1))} |")
print(f"| of which page load (navigate -> load event), through the sidecar | {fmt(col(2))} |")
print(f"| page `loadEventEnd` (navigation timing) | {statistics.median(col(3)):.0f} ms |")
print(f"| of which Chromium stop (process group killed and reaped) | {fmt(col(5))} |")
print(f"| screenshot (base64 bytes) | {statistics.median(col(4)):.0f} |")
print(f"| baseline: `chromium --headless --screenshot` of the same page through a sidecar | {fmt(cli)} |")
print(f"| image `newrelic/serverless-browser-runtime` | {image} |")
print()
PY
