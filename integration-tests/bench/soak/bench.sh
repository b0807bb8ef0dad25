#!/usr/bin/env bash
# Soak benchmark section (`make bench`, BENCH_ONLY=soak): SOAK_SECS (1800) of steady jobs
# through a real job manager with faults sprinkled, then the numbers that must be zero.
# Prints a markdown report on stdout, progress on stderr. Root (a tmpfs for the state dir).
#
#   broker host   `job-manager run` with the embedded broker on loopback; its only runtime
#                 type is one no job asks for, so it never runs the soak's jobs. It is the
#                 broker that survives everything below (only ever paused).
#   worker        `job-manager run` against that broker over HTTP, local executor,
#                 SOAK_PARALLELISM test-runtimes (each with its real sidecar), state dir on
#                 a SOAK_TMPFS_MB tmpfs.
#   load          every second SOAK_RATE jobs (`sleep` 0-2 s, then succeed) via the
#                 broker's admin API.
#   faults        one every SOAK_FAULT_EVERY seconds, in turn: SIGKILL the worker and start
#                 it again; pause the broker (SIGSTOP) for 20 s; fill the worker's state
#                 dir for 10 s; pause the worker for 15 s (past jobs' deadlines).
#
# Then: stop the load, wait for every job's result (SOAK_DRAIN_SECS, 300), and report
# lost (no result), wrong outcomes (not `succeeded`), jobs acked more than once (ran
# twice), conflicting results, the worker's RSS and open fds (first and last sample of
# its last run), and what leaked after it stopped: processes and job / scratch dirs.
#
# Knobs: SOAK_SECS, SOAK_RATE (2), SOAK_PARALLELISM (8), SOAK_FAULT_EVERY (120),
# SOAK_TMPFS_MB (64), SOAK_DRAIN_SECS, BENCH_PROFILE (release | dev).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
secs="${SOAK_SECS:-1800}"
rate="${SOAK_RATE:-2}"
parallelism="${SOAK_PARALLELISM:-8}"
fault_every="${SOAK_FAULT_EVERY:-120}"
tmpfs_mb="${SOAK_TMPFS_MB:-64}"
drain_secs="${SOAK_DRAIN_SECS:-300}"
profile="${BENCH_PROFILE:-release}"

log() { echo "bench/soak: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (tmpfs for the state dir)"; exit 1; }
if [ "$profile" = dev ]; then bin="$root/target/debug"; else bin="$root/target/$profile"; fi
log "building ($profile)"
(cd "$root" && cargo build --profile "$profile" -p job-manager -p sidecar -p integration-tests --bins >&2)

work="$(mktemp -d /tmp/soak.XXXXXX)"
chmod 711 "$work"
# A copy of the binaries: a rebuild during a long soak must not swap them under it.
mkdir -p "$work/bin"
cp "$bin/job-manager" "$bin/sidecar" "$bin/test-runtime" "$bin/jm-bench" "$work/bin/"
chmod 755 "$work/bin" "$work/bin/"*
bin="$work/bin"
state="$work/state"
mkdir -p "$state"
mount -t tmpfs -o "size=${tmpfs_mb}m,mode=0711" tmpfs "$state"
key="soak-location-key"
broker_port=$((20000 + RANDOM % 10000)); broker_jm_port=$((broker_port + 1)); worker_port=$((broker_port + 2))
broker_url="http://127.0.0.1:$broker_port"
host_pid=""; worker_pid=""
cleanup() {
  [ -z "$worker_pid" ] || kill -CONT "$worker_pid" 2>/dev/null || true
  [ -z "$host_pid" ] || kill -CONT "$host_pid" 2>/dev/null || true
  [ -z "$worker_pid" ] || { kill -TERM "$worker_pid" 2>/dev/null; wait "$worker_pid" 2>/dev/null || true; }
  [ -z "$host_pid" ] || { kill -TERM "$host_pid" 2>/dev/null; wait "$host_pid" 2>/dev/null || true; }
  umount "$state" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/host.yaml" <<EOF
brokerApiEndpoint: embedded
locationKey: $key
logLevel: WARN
listen: 127.0.0.1:$broker_jm_port
runtimes:
  - name: broker-host-idle
    command: ["/bin/true"]
sidecar:
  binary: $bin/sidecar
local:
  uidRange: 3101000-3101099
EOF
"$bin/job-manager" run --config "$work/host.yaml" --state-dir "$work/host-state" \
  --embedded-broker-listen "127.0.0.1:$broker_port" > "$work/host.log" 2>&1 &
host_pid=$!

cat > "$work/worker.yaml" <<EOF
brokerApiEndpoint: $broker_url
locationKey: $key
internalApiKey: soak-internal-key
tokenSigningKey: soak-signing-key
logLevel: WARN
checkTimeout: 30
listen: 127.0.0.1:$worker_port
poll:
  intervalMs: 100
  batchSize: $parallelism
shutdownGraceSecs: 5
runtimes:
  - name: node-api-runtime
    parallelism: $parallelism
    command: ["$bin/test-runtime"]
sidecar:
  binary: $bin/sidecar
  denyPrivate: true
  denyPublic: true
# UIDs of its own, so a job manager run beside the soak (the demo) keeps its default range.
local:
  uidRange: 3100000-3100999
EOF
start_worker() {
  "$bin/job-manager" run --config "$work/worker.yaml" --state-dir "$state" >> "$work/worker.log" 2>&1 &
  worker_pid=$!
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$worker_port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  log "worker not healthy: $(tail -5 "$work/worker.log")"; return 1
}
for _ in $(seq 1 200); do curl -fsS -o /dev/null -H "Authorization: Bearer $key" "$broker_url/v1/queue" 2>/dev/null && break; sleep 0.05; done
start_worker

sample() { # rss_kib fds of the worker
  echo "$(awk '/^VmRSS:/ {print $2}' "/proc/$worker_pid/status" 2>/dev/null || echo 0) $(ls "/proc/$worker_pid/fd" 2>/dev/null | wc -l)"
}
first_sample=""; last_sample=""; fault=0; submitted=0; faults_done=()
started=$(date +%s); next_fault=$((started + fault_every))
log "soak for ${secs}s: $rate jobs/s, a fault every ${fault_every}s"
while [ $(( $(date +%s) - started )) -lt "$secs" ]; do
  "$bin/jm-bench" submit --broker "$broker_url" --key "$key" --count "$rate" --prefix "soak-$submitted-" \
    --payload "{\"action\":\"sleep\",\"secs\":$((RANDOM % 3))}" --timeout-secs 20 --concurrency 2 >/dev/null
  submitted=$((submitted + rate))
  [ -n "$first_sample" ] || first_sample="$(sample)"
  now=$(date +%s)
  if [ "$now" -ge "$next_fault" ]; then
    case $((fault % 4)) in
      0) log "fault: SIGKILL the worker"; kill -KILL "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
         sleep 2; start_worker; first_sample=""; faults_done+=("kill") ;;
      1) log "fault: broker paused 20 s"; kill -STOP "$host_pid"; sleep 20; kill -CONT "$host_pid"; faults_done+=("broker-outage") ;;
      2) log "fault: state dir full 10 s"; dd if=/dev/zero of="$state/filler" bs=1M count="$tmpfs_mb" 2>/dev/null || true
         sleep 10; rm -f "$state/filler"; faults_done+=("disk-full") ;;
      3) log "fault: worker paused 15 s"; kill -STOP "$worker_pid"; sleep 15; kill -CONT "$worker_pid"; faults_done+=("worker-paused") ;;
    esac
    fault=$((fault + 1)); next_fault=$(( $(date +%s) + fault_every ))
  fi
  sleep 1
done
last_sample="$(sample)"
log "submitted $submitted jobs; draining (up to ${drain_secs}s)"
deadline=$(( $(date +%s) + drain_secs ))
count_results() { curl -fsS -H "Authorization: Bearer $key" "$broker_url/admin/v1/results" | python3 -c 'import json,sys; print(sum(1 for k in json.load(sys.stdin) if k.startswith("soak-")))'; }
while [ "$(count_results)" -lt "$submitted" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 2; done

report="$(curl -fsS -H "Authorization: Bearer $key" "$broker_url/admin/v1/results" > "$work/results.json"
  curl -fsS -H "Authorization: Bearer $key" "$broker_url/admin/v1/counters" > "$work/counters.json"
  python3 - "$work/results.json" "$work/counters.json" "$submitted" <<'PY'
import json, sys
results = {k: v for k, v in json.load(open(sys.argv[1])).items() if k.startswith("soak-")}
counters = {k: v for k, v in json.load(open(sys.argv[2])).items() if k.startswith("soak-")}
submitted = int(sys.argv[3])
wrong = [k for k, v in results.items() if v["outcome"] != "succeeded"]
twice = [k for k, c in counters.items() if c["acks"] > 1]
conflicting = [k for k, c in counters.items() if c["results_conflicting"] > 0]
print(f"{submitted} {len(results)} {submitted - len(results)} {len(wrong)} {len(twice)} {len(conflicting)}")
for k in wrong[:5]:
    print("wrong", k, results[k]["outcome"], results[k].get("message", "")[:160], file=sys.stderr)
PY
)"
read -r n_submitted n_results n_lost n_wrong n_twice n_conflicting <<< "$(echo "$report" | head -1)"
kill -TERM "$worker_pid"; wait "$worker_pid" 2>/dev/null || true; worker_pid=""
# This soak's runtimes and sidecars only (other work on the machine may run the same
# binaries): their environment names this run's state dir.
leaked_procs=0
for pid in $(pgrep -f "$bin/test-runtime|$bin/sidecar" || true); do
  if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -q "$state"; then leaked_procs=$((leaked_procs + 1)); fi
done
leaked_dirs=$(find "$state/jobs" "$state/scratch" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
read -r rss0 fd0 <<< "$first_sample"; read -r rss1 fd1 <<< "$last_sample"

cat <<EOF
## Soak

\`integration-tests/bench/soak/bench.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, profile \`$profile\`:
${secs} s of $rate jobs/s (test-runtime sleeping 0-2 s, each with its sidecar), parallelism
$parallelism, a fault every ${fault_every} s (${faults_done[*]:-none}).

| submitted | results | lost | wrong outcome | acked twice | conflicting results | leaked processes | leaked job/scratch dirs |
|---|---|---|---|---|---|---|---|
| $n_submitted | $n_results | $n_lost | $n_wrong | $n_twice | $n_conflicting | $leaked_procs | $leaked_dirs |

Worker RSS $((rss0 / 1024)) MiB -> $((rss1 / 1024)) MiB, open fds $fd0 -> $fd1 (first and last sample of its last run).
EOF
