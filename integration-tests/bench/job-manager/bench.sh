#!/usr/bin/env bash
# Job-manager benchmarks, a `make bench` section (run.sh runs every
# integration-tests/bench/*/bench.sh); also runs standalone:
#   integration-tests/bench/job-manager/bench.sh            # release build, full sizes
#   BENCH_PROFILE=dev BENCH_E2E_JOBS=50 BENCH_INFLIGHT=100 BENCH_RESULTS=20000 ...   # quick
# Prints a markdown report on stdout, progress on stderr.
#
# What it measures, each against a fresh job manager (local executor, embedded broker
# served on loopback so the driver can submit jobs and read results):
# 1. Idle RSS of the job-manager process.
# 2. Result API ingestion: BENCH_RESULTS valid results (distinct job ids, tokens minted
#    with the configured signing key) posted over BENCH_CONNECTIONS keep-alive
#    connections by `jm-bench results`; the jobs are queued at the broker first under a
#    runtime type nobody polls, so delivery to the broker succeeds too.
# 3. End-to-end throughput: BENCH_E2E_JOBS jobs with the trivial runtime (test-runtime,
#    `sleep 0`), each with a real sidecar; jobs/s from submission to the last result at
#    the broker; poll->hand-off latency p50/p99 from the job manager's histogram
#    `job_manager_poll_to_handoff_seconds`.
# 4. RSS with BENCH_INFLIGHT jobs in flight (a runtime sleeping BENCH_SLEEP_SECS).
# 5. With BENCH_BASELINE_JM=<path to another job-manager binary> (e.g. a release build of
#    the previous commit): BENCH_AB_ROUNDS rounds of (1) + (2) alternating baseline and
#    this build, reported as per-round ratios and their median (this build / baseline),
#    so a regression shows up against a peer measured in the same run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"

profile="${BENCH_PROFILE:-release}"
e2e_jobs="${BENCH_E2E_JOBS:-300}"
e2e_parallelism="${BENCH_E2E_PARALLELISM:-16}"
inflight="${BENCH_INFLIGHT:-1000}"
sleep_secs="${BENCH_SLEEP_SECS:-120}"
results="${BENCH_RESULTS:-100000}"
connections="${BENCH_CONNECTIONS:-32}"
jm_port="${BENCH_JM_PORT:-18480}"
broker_port="${BENCH_BROKER_PORT:-18470}"

log() { echo "bench[job-manager]: $*" >&2; }

if [ "$profile" = dev ]; then bin_dir="$root/target/debug"; else bin_dir="$root/target/$profile"; fi
log "building ($profile)"
cargo build --profile "$profile" -p job-manager -p sidecar -p integration-tests --bins >&2

work="$(mktemp -d /tmp/jm-bench.XXXXXX)"
jm_pid=""
cleanup() {
  stop_jm || true
  rm -rf "$work"
}
trap cleanup EXIT

key="bench-location-key"
internal_key="bench-internal-key"
signing_key="bench-signing-key"
jm_url="http://127.0.0.1:$jm_port"
broker_url="http://127.0.0.1:$broker_port"

# start_jm <name> <parallelism> <check timeout secs>
start_jm() {
  local name="$1" parallelism="$2" check_timeout="$3"
  local dir="$work/$name"
  mkdir -p "$dir/state"
  cat > "$dir/config.yaml" <<EOF
brokerApiEndpoint: embedded
locationKey: $key
internalApiKey: $internal_key
tokenSigningKey: $signing_key
logLevel: WARN
checkTimeout: $check_timeout
listen: 127.0.0.1:$jm_port
poll:
  intervalMs: 50
  batchSize: $parallelism
shutdownGraceSecs: 2
runtimes:
  - name: node-api-runtime
    parallelism: $parallelism
    command: ["$bin_dir/test-runtime"]
sidecar:
  binary: $bin_dir/sidecar
EOF
  "${JM_BIN:-$bin_dir/job-manager}" run --config "$dir/config.yaml" --state-dir "$dir/state" \
    --embedded-broker-listen "127.0.0.1:$broker_port" > "$dir/job-manager.log" 2>&1 &
  jm_pid=$!
  for _ in $(seq 1 200); do
    if curl -fsS "$jm_url/healthz" > /dev/null 2>&1 && curl -sS -o /dev/null "$broker_url/v1/queue" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$jm_pid" 2> /dev/null; then
      log "job manager exited; log:"; cat "$dir/job-manager.log" >&2; return 1
    fi
    sleep 0.05
  done
  log "job manager not healthy after 10 s"; return 1
}

stop_jm() {
  [ -n "$jm_pid" ] || return 0
  kill -TERM "$jm_pid" 2> /dev/null || true
  wait "$jm_pid" 2> /dev/null || true
  jm_pid=""
  # The job manager kills its runtimes when draining; as a safety net, end any process
  # still recorded in a leftover job dir (by pid, as recorded by the executor).
  local f pids=""
  for f in "$work"/*/state/jobs/*/meta.json; do
    [ -f "$f" ] || continue
    pids="$pids $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(" ".join(str(m[k]["pid"]) for k in ("sidecar","runtime") if m.get(k)))' "$f" 2> /dev/null || true)"
  done
  for pid in $pids; do kill -KILL "$pid" 2> /dev/null || true; done
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
json_field() { python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(f"{v:.1f}" if isinstance(v,float) else v)' "$1"; }
metric_sum() { curl -fsS "$jm_url/metrics" | awk -v m="$1" '$1 ~ "^"m"([{]|$)" {s += $2} END {print s + 0}'; }

# Quantile from a Prometheus histogram: linear interpolation inside the bucket.
histogram_quantile() {
  curl -fsS "$jm_url/metrics" | python3 -c '
import re, sys
q = float(sys.argv[1]); buckets = []
for line in sys.stdin:
    m = re.match(r"job_manager_poll_to_handoff_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)", line)
    if m: buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
buckets.sort(); total = buckets[-1][1] if buckets else 0
if total == 0: print("n/a"); sys.exit()
rank, lo, below = q * total, 0.0, 0.0
for le, c in buckets:
    if c >= rank:
        if le == float("inf"): print(f">{lo:g} s"); break
        print(f"{(lo + (le - lo) * (rank - below) / max(c - below, 1e-9)) * 1000:.1f} ms (bucket <= {le:g} s)"); break
    lo, below = le, c
' "$1"
}

echo "## Job manager"
echo
echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(uname -r)), profile \`$profile\`, by \`integration-tests/bench/job-manager/bench.sh\`."
echo

# --- 1 + 2: idle RSS, then result ingestion -------------------------------------------
log "idle RSS + result ingestion ($results results, $connections connections)"
start_jm ingest 4 180
sleep 2 # let startup allocations settle before sampling idle memory
idle_rss="$(rss_kib "$jm_pid")"
"$bin_dir/jm-bench" submit --broker "$broker_url" --key "$key" --count "$results" --prefix ingest- \
  --runtime-type bench-ingest-unpolled --concurrency 16 > "$work/submit.json"
"$bin_dir/jm-bench" results --url "$jm_url" --internal-key "$internal_key" --signing-key "$signing_key" \
  --count "$results" --prefix ingest- --connections "$connections" > "$work/ingest.json"
ingest_rss="$(rss_kib "$jm_pid")"
stop_jm
ingest_rate="$(json_field accepted_per_sec < "$work/ingest.json")"

# --- 3: end-to-end throughput and poll->hand-off latency -------------------------------
log "end to end: $e2e_jobs trivial jobs, parallelism $e2e_parallelism"
start_jm e2e "$e2e_parallelism" 60
since="$(date +%s%3N)"
"$bin_dir/jm-bench" submit --broker "$broker_url" --key "$key" --count "$e2e_jobs" --prefix e2e- \
  --runtime-type node-api-runtime --payload '{"action":"sleep","secs":0}' > /dev/null
"$bin_dir/jm-bench" wait-results --broker "$broker_url" --key "$key" --count "$e2e_jobs" --prefix e2e- \
  --since-unix-ms "$since" --timeout-secs 900 > "$work/e2e.json"
e2e_rate="$(json_field per_sec < "$work/e2e.json")"
p50="$(histogram_quantile 0.5)"
p99="$(histogram_quantile 0.99)"
stop_jm

# --- 4: RSS with many jobs in flight ---------------------------------------------------
log "RSS with $inflight sleeping jobs in flight"
start_jm inflight "$inflight" 600
"$bin_dir/jm-bench" submit --broker "$broker_url" --key "$key" --count "$inflight" --prefix sleep- \
  --runtime-type node-api-runtime --payload "{\"action\":\"sleep\",\"secs\":$sleep_secs}" > /dev/null
reached=0
for _ in $(seq 1 1200); do
  n="$(metric_sum job_manager_jobs_in_flight)"
  if [ "${n%.*}" -ge "$inflight" ]; then reached=1; break; fi
  sleep 0.25
done
inflight_now="$(metric_sum job_manager_jobs_in_flight)"
inflight_rss="$(rss_kib "$jm_pid")"
stop_jm
[ "$reached" = 1 ] || log "only $inflight_now of $inflight jobs reached in-flight"

echo "| measurement | result | goal |"
echo "|---|---|---|"
echo "| result API ingestion (loopback, $connections connections, $results results) | **$ingest_rate results/s** accepted (202) | >= 10,000/s |"
echo "| end-to-end throughput, trivial runtime + real sidecar per job, parallelism $e2e_parallelism, $e2e_jobs jobs | **$e2e_rate jobs/s** | - |"
echo "| poll -> runtime hand-off latency p50 / p99 (histogram) | $p50 / $p99 | - |"
echo "| job-manager RSS idle | $(mib "$idle_rss") MiB | - |"
echo "| job-manager RSS after the ingestion run | $(mib "$ingest_rss") MiB | - |"
echo "| job-manager RSS with ${inflight_now%.*} jobs in flight (sleeping runtime) | **$(mib "$inflight_rss") MiB** | <= 40 MiB at 1,000 |"
echo
echo "Raw: ingestion \`$(cat "$work/ingest.json")\`; end to end \`$(cat "$work/e2e.json")\`."

# --- 5: A/B against a baseline build (optional) ----------------------------------------
if [ -n "${BENCH_BASELINE_JM:-}" ]; then
  rounds="${BENCH_AB_ROUNDS:-3}"
  ab_results="${BENCH_AB_RESULTS:-$results}"
  log "A/B: $rounds rounds of idle RSS + ingestion ($ab_results results), baseline $BENCH_BASELINE_JM"
  # ingest_round <label> <binary> -> "accepted_per_sec idle_rss_kib"
  ingest_round() {
    JM_BIN="$2" start_jm "ab-$1" 4 180
    sleep 2
    local rss; rss="$(rss_kib "$jm_pid")"
    "$bin_dir/jm-bench" submit --broker "$broker_url" --key "$key" --count "$ab_results" --prefix "ab-$1-" \
      --runtime-type bench-ingest-unpolled --concurrency 16 > /dev/null
    # A round whose driver fails is reported as failed, not dropped: `jm-bench results`
    # sometimes ends with "connection closed before message completed" (open question).
    if "$bin_dir/jm-bench" results --url "$jm_url" --internal-key "$internal_key" --signing-key "$signing_key" \
      --count "$ab_results" --prefix "ab-$1-" --connections "$connections" > "$work/ab-$1.json"; then
      stop_jm
      echo "$(json_field accepted_per_sec < "$work/ab-$1.json") $rss"
    else
      stop_jm
      echo "failed $rss"
    fi
  }
  rate_ratios=(); rss_ratios=(); failed_rounds=0
  echo
  echo "A/B against \`$BENCH_BASELINE_JM\` ($rounds rounds, order alternating; ratio = this build / baseline):"
  echo
  echo "| round | baseline results/s | this build results/s | ratio | baseline idle RSS | this build idle RSS | ratio |"
  echo "|---|---|---|---|---|---|---|"
  for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then
      read -r b_rate b_rss < <(ingest_round "base-$r" "$BENCH_BASELINE_JM")
      read -r n_rate n_rss < <(ingest_round "new-$r" "$bin_dir/job-manager")
    else
      read -r n_rate n_rss < <(ingest_round "new-$r" "$bin_dir/job-manager")
      read -r b_rate b_rss < <(ingest_round "base-$r" "$BENCH_BASELINE_JM")
    fi
    mr="$(awk -v a="$n_rss" -v b="$b_rss" 'BEGIN { printf "%.3f", a / b }')"
    rss_ratios+=("$mr")
    if [ "$n_rate" = failed ] || [ "$b_rate" = failed ]; then
      rr="-"; failed_rounds=$((failed_rounds + 1))
    else
      rr="$(awk -v a="$n_rate" -v b="$b_rate" 'BEGIN { printf "%.3f", a / b }')"
      rate_ratios+=("$rr")
    fi
    echo "| $r | $b_rate | $n_rate | $rr | $(mib "$b_rss") MiB | $(mib "$n_rss") MiB | $mr |"
  done
  median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
  echo
  if [ ${#rate_ratios[@]} -gt 0 ]; then ingest_median="$(median "${rate_ratios[@]}")"; else ingest_median="n/a"; fi
  echo "Median ratio: ingestion **$ingest_median** ($failed_rounds rounds with a failed driver left out), idle RSS **$(median "${rss_ratios[@]}")**."
fi
