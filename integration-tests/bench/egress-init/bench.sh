#!/usr/bin/env bash
# Egress firewall benchmark section (`make bench`, BENCH_ONLY=egress-init). Prints a
# markdown report on stdout; progress goes to stderr.
#
# A runtime pod's start gains one step: `sidecar egress-init` programs the pod's network
# namespace before the sidecar starts. Measured here with the release binary, in
# throwaway network namespaces (root; nothing on the host network is touched):
#
#   1. Start: per fresh namespace, spawn -> sidecar /readyz answering, without and with
#      `egress-init` run first (what the init container adds, less the kubelet's own
#      container start). Interleaved, BENCH_START_ITERATIONS (30) each; p50s and the
#      difference (target: under 20 ms added at p50).
#   2. Proxied throughput: wrk (as the runtime's UID 1001) -> sidecar (UID 2102, the only
#      UID the firewall lets out) -> nginx in a second namespace over a veth pair, with the
#      firewall installed and not, rounds interleaved (BENCH_ROUNDS, 3), medians and the
#      ratio from the same run (target: unchanged).
#
# Knobs: SIDECAR_BIN (default target/release/sidecar, built here), BENCH_START_ITERATIONS,
# BENCH_ROUNDS, BENCH_DURATION (10s), BENCH_CONNECTIONS (50).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
iters="${BENCH_START_ITERATIONS:-30}"
rounds="${BENCH_ROUNDS:-3}"
duration="${BENCH_DURATION:-10s}"
conns="${BENCH_CONNECTIONS:-50}"
proxy_uid=2102
runtime_uid=1001

log() { echo "bench/egress-init: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (network namespaces)"; exit 1; }
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"

sidecar_bin="${SIDECAR_BIN:-$root/target/release/sidecar}"
if [ -z "${SIDECAR_BIN:-}" ]; then
  log "cargo build --release -p sidecar"
  (cd "$root" && cargo build --release -p sidecar --bins >&2)
fi

work="$(mktemp -d /tmp/bench-egress.XXXXXX)"
chmod 755 "$work"
cp "$sidecar_bin" "$work/sidecar"   # readable and runnable by the unprivileged UIDs
chmod 755 "$work/sidecar"
id=$$
pod="be-pod-$id"; world="be-world-$id"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$world" 2>/dev/null || true
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^be-start-$id-" || true); do ip netns del "$n"; done
  rm -rf "$work"
}
trap cleanup EXIT

p50() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# --- 1. start latency ---------------------------------------------------------------------
# One run: a fresh namespace (lo up), then inside it (timed there, so `ip netns exec`
# itself is not counted): optionally egress-init, then the sidecar until its /readyz
# answers. Prints the elapsed microseconds.
start_once() {
  local ns="be-start-$id-$1" with="$2"
  ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" env WITH="$with" BIN="$work/sidecar" UID_="$proxy_uid" bash -c '
    t0=$(date +%s%N)
    [ "$WITH" = 1 ] && "$BIN" egress-init --proxy-uid "$UID_" >/dev/null
    setpriv --reuid "$UID_" --regid "$UID_" --clear-groups \
      "$BIN" --listen 127.0.0.1:3128 --admin-listen 127.0.0.1:9901 >/dev/null 2>&1 &
    pid=$!
    until curl -s -o /dev/null --max-time 1 http://127.0.0.1:9901/readyz 2>/dev/null; do :; done
    t1=$(date +%s%N)
    kill $pid; wait $pid 2>/dev/null
    echo $(( (t1 - t0) / 1000 ))'
  ip netns del "$ns"
}
log "start latency: $iters iterations each, interleaved"
: > "$work/start-without"; : > "$work/start-with"; : > "$work/init-only"
for i in $(seq 1 "$iters"); do
  start_once "a$i" 0 >> "$work/start-without"
  start_once "b$i" 1 >> "$work/start-with"
  ns="be-start-$id-c$i"; ip netns add "$ns"
  ip netns exec "$ns" env BIN="$work/sidecar" UID_="$proxy_uid" bash -c '
    t0=$(date +%s%N); "$BIN" egress-init --proxy-uid "$UID_" >/dev/null; t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000 ))' >> "$work/init-only"
  ip netns del "$ns"
done
without=$(p50 < "$work/start-without"); with=$(p50 < "$work/start-with"); init=$(p50 < "$work/init-only")
added=$(( with - without ))

# --- 2. proxied throughput -----------------------------------------------------------------
ip netns add "$pod"; ip netns add "$world"
ip link add "bp$id" netns "$pod" type veth peer name "bw$id" netns "$world"
ip netns exec "$pod" ip link set lo up; ip netns exec "$world" ip link set lo up
ip netns exec "$pod" ip addr add 10.214.0.2/24 dev "bp$id"
ip netns exec "$world" ip addr add 10.214.0.1/24 dev "bw$id"
ip netns exec "$pod" ip link set "bp$id" up; ip netns exec "$world" ip link set "bw$id" up
mkdir -p "$work/www" "$work/nginx-tmp"
head -c 1024 /dev/zero | tr '\0' x > "$work/www/small.txt"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx-tmp/body;
  proxy_temp_path $work/nginx-tmp/proxy;
  fastcgi_temp_path $work/nginx-tmp/fastcgi;
  uwsgi_temp_path $work/nginx-tmp/uwsgi;
  scgi_temp_path $work/nginx-tmp/scgi;
  server { listen 10.214.0.1:8080; root $work/www; keepalive_requests 1000000; }
}
EOF
ip netns exec "$world" nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)
ip netns exec "$pod" setpriv --reuid "$proxy_uid" --regid "$proxy_uid" --clear-groups \
  "$work/sidecar" --listen 127.0.0.1:3128 --allow-cidr 10.214.0.0/24 --deny-public >"$work/sidecar.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 500); do
  ip netns exec "$pod" curl -sf -o /dev/null -x http://127.0.0.1:3128 http://10.214.0.1:8080/small.txt && break
  sleep 0.02
done
ip netns exec "$pod" curl -sf -o /dev/null -x http://127.0.0.1:3128 http://10.214.0.1:8080/small.txt \
  || { log "proxy path not working: $(tail -5 "$work/sidecar.log")"; exit 1; }

wrk_round() {
  ip netns exec "$pod" setpriv --reuid "$runtime_uid" --regid "$runtime_uid" --clear-groups \
    env BENCH_TARGET=http://10.214.0.1:8080/small.txt \
    wrk -t 2 -c "$conns" -d "$duration" -s "$root/integration-tests/bench/sidecar/abs_uri.lua" http://127.0.0.1:3128 \
    | sed -n 's/^RESULT .*rps=\([0-9.]*\).*/\1/p'
}
: > "$work/rps-without"; : > "$work/rps-with"
for r in $(seq 1 "$rounds"); do
  ip netns exec "$pod" nft delete table inet sidecar_egress 2>/dev/null || true
  log "round $r: without the firewall"; wrk_round >> "$work/rps-without"
  ip netns exec "$pod" "$work/sidecar" egress-init --proxy-uid "$proxy_uid" >/dev/null
  # The firewall is in: the runtime's UID cannot go around the sidecar.
  if ip netns exec "$pod" setpriv --reuid "$runtime_uid" --regid "$runtime_uid" --clear-groups \
      curl -s -o /dev/null --max-time 2 http://10.214.0.1:8080/small.txt; then
    log "the firewall let the runtime UID out"; exit 1
  fi
  log "round $r: with the firewall"; wrk_round >> "$work/rps-with"
done
rps_without=$(p50 < "$work/rps-without"); rps_with=$(p50 < "$work/rps-with")

cat <<EOF
## Egress firewall (egress-init)

\`$sidecar_bin\`, throwaway network namespaces, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ).

| start (spawn -> sidecar /readyz), p50 of $iters | without firewall | with egress-init first | added |
|---|---|---|---|
| microseconds | $without | $with | $added (target < 20000) |

\`egress-init\` alone (process start + one netlink batch), p50 of $iters: $init us.

| proxied throughput (wrk as UID $runtime_uid -> sidecar as UID $proxy_uid -> nginx over veth), median of $rounds | without | with | ratio |
|---|---|---|---|
| requests/s ($conns connections, $duration) | $rps_without | $rps_with | $(awk -v a="$rps_with" -v b="$rps_without" 'BEGIN { printf "%.3f", a / b }') |
EOF
