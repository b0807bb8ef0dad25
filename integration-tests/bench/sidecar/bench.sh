#!/usr/bin/env bash
# Sidecar benchmark section. Prints a markdown report on stdout;
# progress and raw tool output go to stderr and $work/raw.log.
#
#   1. HTTP forward proxying: wrk, absolute-URI Lua script, 50 connections, keep-alive,
#      through sidecar / squid / tinyproxy and direct, all to one nginx origin on loopback
#      serving a small file. Rounds are interleaved so every peer sees the same noise;
#      the report uses per-peer medians and the ratios come from the same run.
#   2. CONNECT tunnel throughput: curl downloading a 1 GiB (sparse) file through a
#      CONNECT tunnel of the sidecar (and squid) vs direct, from the origin's plain HTTP
#      port (--proxytunnel) and from its HTTPS port (self-signed certificate made here
#      with openssl; what a runtime's HTTPS_PROXY traffic is). Rounds interleaved
#      direct -> sidecar -> squid, medians. Then the same rounds pinned: each proxy on a
#      CPU of its own (a sidecar container's CPU), nginx and curl on theirs (3+ CPUs) or
#      sharing CPU 0 (2 CPUs). BENCH_PINNED=0 skips this pass.
#   3. RSS (VmRSS): idle after start, and with 1,000 open tunnels each proven by a GET.
#   4. Exec to ready: spawn to the first `/readyz` 200.
#
# Peers run from temporary configs on free loopback ports in a temp dir; no system
# service is touched. Tools are installed via apt when missing (idempotent).
#
# Knobs: SIDECAR_BIN (default target/release/sidecar, built here), BENCH_ROUNDS (3),
# BENCH_DURATION (10s), BENCH_CONNECTIONS (50), BENCH_THREADS (2), BENCH_TUNNELS (1000),
# BENCH_EXEC_ITERATIONS (30), BENCH_TUNNEL_MIB (1024), BENCH_TUNNEL_ROUNDS (5),
# BENCH_PINNED (1), BENCH_ORIGIN_CPUS / BENCH_CLIENT_CPUS / BENCH_PROXY_CPUS (pinned pass).
# SIDECAR_STATIC_BIN: the statically linked build the images ship (default: built here
# exactly as deploy/scripts/images.sh does; BENCH_STATIC=0 skips it); its idle RSS is
# reported beside the dynamic build's.
# SIDECAR_BASELINE_BIN: a second sidecar binary (e.g. the previous commit's, copied
# aside) measured as "baseline" in the same interleaved wrk and tunnel rounds, for A/B.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
rounds="${BENCH_ROUNDS:-3}"
duration="${BENCH_DURATION:-10s}"
conns="${BENCH_CONNECTIONS:-50}"
threads="${BENCH_THREADS:-2}"
ntunnels="${BENCH_TUNNELS:-1000}"
exec_iters="${BENCH_EXEC_ITERATIONS:-30}"
tunnel_mib="${BENCH_TUNNEL_MIB:-1024}"
tunnel_rounds="${BENCH_TUNNEL_ROUNDS:-5}"
baseline_bin="${SIDECAR_BASELINE_BIN:-}"

log() { echo "bench/sidecar: $*" >&2; }

# --- tools -------------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v squid >/dev/null || [ -x /usr/sbin/squid ] || need+=(squid)
command -v tinyproxy >/dev/null || need+=(tinyproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v pgrep >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # policy-rc.d / no systemd: the packages' own services are not started here, and we
  # never start them; every peer below runs from a temp config.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"

sidecar_bin="${SIDECAR_BIN:-$root/target/release/sidecar}"
if [ -z "${SIDECAR_BIN:-}" ]; then
  log "cargo build --release -p sidecar"
  (cd "$root" && cargo build --release -p sidecar --bins >&2)
fi
[ -x "$sidecar_bin" ] || { log "no sidecar binary at $sidecar_bin"; exit 1; }
[ -z "$baseline_bin" ] || [ -x "$baseline_bin" ] || { log "no baseline binary at $baseline_bin"; exit 1; }
# The image's binary: glibc with crt-static, as deploy/scripts/images.sh builds it.
static_bin="${SIDECAR_STATIC_BIN:-}"
if [ -z "$static_bin" ] && [ "${BENCH_STATIC:-1}" != 0 ]; then
  triple="$(rustc -vV | sed -n 's/^host: //p')"
  log "cargo build --release --target $triple -p sidecar (static, as in the image)"
  (cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --target "$triple" -p sidecar --bins >&2)
  static_bin="$root/target/$triple/release/sidecar"
fi

# --- workspace and cleanup ---------------------------------------------------------------
work="$(mktemp -d /tmp/bench-sidecar.XXXXXX)"
chmod 755 "$work"   # nginx workers and squid drop privileges and must read it
raw="$work/raw.log"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${BENCH_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # port, name, pid: wait until something accepts on 127.0.0.1:port
  local port=$1 name=$2 pid=$3 i
  for i in $(seq 1 500); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { log "$name exited before listening"; return 1; }
    sleep 0.02
  done
  log "$name not listening on $port after 10 s"; return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Every process here gets room for the 1,000-tunnel test (2 fds per tunnel in a proxy).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- origin: nginx on loopback -----------------------------------------------------------
origin_port=$(free_port)
mkdir -p "$work/www" "$work/nginx-tmp"
head -c 1024 /dev/zero | tr '\0' 'a' > "$work/www/small.txt"
truncate -s "${tunnel_mib}M" "$work/www/big.bin"
# HTTPS origin: a throwaway self-signed certificate for 127.0.0.1 (curl gets it as CA).
tls_port=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/origin.key" -out "$work/origin.crt" 2>>"$raw"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $work/nginx-tmp/body;
  proxy_temp_path $work/nginx-tmp/proxy;
  fastcgi_temp_path $work/nginx-tmp/fastcgi;
  uwsgi_temp_path $work/nginx-tmp/uwsgi;
  scgi_temp_path $work/nginx-tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$origin_port; root $work/www; }
  server {
    listen 127.0.0.1:$tls_port ssl;
    ssl_certificate $work/origin.crt;
    ssl_certificate_key $work/origin.key;
    ssl_protocols TLSv1.3;
    root $work/www;
  }
}
EOF
nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" &
pids+=($!)
nginx_pid=$!
wait_port "$origin_port" nginx "$!"
wait_port "$tls_port" nginx "$!"
log "origin nginx on 127.0.0.1:$origin_port (HTTPS on $tls_port)"

# --- sidecar -----------------------------------------------------------------------------
start_sidecar() { # port -> pid in $sidecar_pid
  # Log level warn: the peers below log nothing per request either.
  SIDECAR_LOG_LEVEL=warn "$sidecar_bin" --listen "127.0.0.1:$1" --allow-cidr 127.0.0.1/32 \
    >>"$work/sidecar.log" 2>&1 &
  sidecar_pid=$!
  pids+=($sidecar_pid)
  wait_port "$1" sidecar "$sidecar_pid"
}
sidecar_port=$(free_port)
start_sidecar "$sidecar_port"
main_sidecar_pid=$sidecar_pid
log "sidecar on 127.0.0.1:$sidecar_port"
peers=(direct sidecar squid tinyproxy)
tunnel_peers=(direct sidecar squid)
if [ -n "$baseline_bin" ]; then
  baseline_port=$(free_port)
  SIDECAR_LOG_LEVEL=warn "$baseline_bin" --listen "127.0.0.1:$baseline_port" --allow-cidr 127.0.0.1/32 \
    >>"$work/baseline.log" 2>&1 &
  pids+=($!)
  baseline_pid=$!
  wait_port "$baseline_port" baseline "$!"
  log "baseline sidecar ($baseline_bin) on 127.0.0.1:$baseline_port"
  peers=(direct sidecar baseline squid tinyproxy)
  tunnel_peers=(direct sidecar baseline squid)
fi

# --- squid -------------------------------------------------------------------------------
squid_port=$(free_port)
mkdir -p "$work/squid"; chmod 777 "$work/squid"
cat > "$work/squid.conf" <<EOF
http_port 127.0.0.1:$squid_port
http_access allow all
# No caching: every request goes to the origin, as through the sidecar.
cache deny all
cache_mem 0 MB
access_log none
cache_log $work/squid/cache.log
pid_filename none
coredump_dir $work/squid
shutdown_lifetime 0 seconds
max_filedescriptors 65536
EOF
squid -N -f "$work/squid.conf" >>"$work/squid/stdout.log" 2>&1 &
pids+=($!)
squid_pid=$!
wait_port "$squid_port" squid "$squid_pid"
log "squid on 127.0.0.1:$squid_port"

# --- tinyproxy ---------------------------------------------------------------------------
tiny_port=$(free_port)
cat > "$work/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port $tiny_port
Listen 127.0.0.1
Timeout 600
MaxClients 1024
LogLevel Critical
PidFile "$work/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
EOF
tinyproxy -d -c "$work/tinyproxy.conf" >>"$work/tinyproxy.log" 2>&1 &
pids+=($!)
tiny_pid=$!
wait_port "$tiny_port" tinyproxy "$tiny_pid"
log "tinyproxy on 127.0.0.1:$tiny_port"

# Sanity: each path serves the file before anything is measured.
target="http://127.0.0.1:$origin_port/small.txt"
curl -sf -o /dev/null "$target" || { log "origin does not serve $target"; exit 1; }
for p in "$sidecar_port" "$squid_port" "$tiny_port" ${baseline_port:-}; do
  curl -sf -o /dev/null --proxy "http://127.0.0.1:$p" "$target" || { log "proxy :$p cannot fetch $target"; exit 1; }
done

# --- 1. wrk ------------------------------------------------------------------------------
declare -A rps p99 errs
run_wrk() { # name url target -> appends to rps[name], p99[name]
  local name=$1 url=$2 tgt=$3 line
  line=$(BENCH_TARGET="$tgt" wrk -t "$threads" -c "$conns" -d "$duration" --timeout 5s \
           -s "$here/abs_uri.lua" "$url" 2>&1 | tee -a "$raw" | grep '^RESULT' || true)
  [ -n "$line" ] || { log "wrk $name printed no RESULT (see $raw)"; exit 1; }
  local r q e
  r=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$line")
  q=$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line")
  e=$(awk '{s=0; for(i=1;i<=NF;i++) if ($i ~ /^errors_/) {split($i,a,"="); s+=a[2]}; print s}' <<<"$line")
  rps[$name]="${rps[$name]:-} $r"; p99[$name]="${p99[$name]:-} $q"; errs[$name]=$(( ${errs[$name]:-0} + e ))
  log "wrk $name: rps=$r p99=${q}us errors=$e"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

log "wrk warm-up"
BENCH_TARGET="$target" wrk -t 1 -c 10 -d 2s -s "$here/abs_uri.lua" "http://127.0.0.1:$sidecar_port/" >/dev/null 2>&1 || true
for round in $(seq 1 "$rounds"); do
  log "wrk round $round/$rounds"
  run_wrk direct "http://127.0.0.1:$origin_port/" "/small.txt"
  run_wrk sidecar "http://127.0.0.1:$sidecar_port/" "$target"
  [ -z "$baseline_bin" ] || run_wrk baseline "http://127.0.0.1:$baseline_port/" "$target"
  run_wrk squid "http://127.0.0.1:$squid_port/" "$target"
  run_wrk tinyproxy "http://127.0.0.1:$tiny_port/" "$target"
done
declare -A rps_med p99_med
for n in "${peers[@]}"; do
  rps_med[$n]=$(median <<<"${rps[$n]}")
  p99_med[$n]=$(median <<<"${p99[$n]}")
done

# --- 2. CONNECT tunnel throughput ---------------------------------------------------------
# Two origins: plain HTTP (the worst case for a relay: nginx sendfile()s straight into
# curl's socket when direct, one loopback hop, while the tunnel adds a second hop that
# competes for the same cores) and HTTPS (what a runtime's HTTPS_PROXY traffic is: TLS
# end to end, the proxy relays ciphertext it cannot read).
declare -A bps cpu_proxy cpu_curl cpu_origin
nginx_worker=$(pgrep -P "$nginx_pid" | head -1)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, in clock ticks
tick_ms=$(( 1000 / $(getconf CLK_TCK) ))
declare -A proxy_pid=([sidecar]=$main_sidecar_pid [squid]=$squid_pid [baseline]=${baseline_pid:-})
declare -A proxy_port=([sidecar]=$sidecar_port [squid]=$squid_port [baseline]=${baseline_port:-})
proxy_pid_of() { echo "${proxy_pid[$1]}"; }
proxy_port_of() { echo "${proxy_port[$1]}"; }
run_curl() { # proto name; proto http|https, or pin-http|pin-https for the pinned pass
  local proto=$1 name=$2 url args=() out pin=()
  [ "${proto#pin-}" = "$proto" ] || pin=(taskset -c "$client_cpus")
  if [ "${proto#pin-}" = https ]; then
    url="https://127.0.0.1:$tls_port/big.bin"; args=(--cacert "$work/origin.crt")
  else
    url="http://127.0.0.1:$origin_port/big.bin"
  fi
  [ "$name" = direct ] || args+=(--proxytunnel --proxy "http://127.0.0.1:$(proxy_port_of "$name")")
  # CPU seconds of each process on the path, per download: what the tunnel costs, and
  # what it takes from the endpoints on a machine whose cores they share.
  local ppid="" p0=0 o0 tf=$work/time.out
  [ "$name" = direct ] || { ppid=$(proxy_pid_of "$name"); p0=$(ticks "$ppid"); }
  o0=$(ticks "$nginx_worker")
  out=$( { TIMEFORMAT='%3U %3S'; time "${pin[@]}" curl -sf -o /dev/null -w '%{speed_download} %{size_download}' "${args[@]}" "$url"; } 2>"$tf")
  cpu_curl[$proto.$name]="${cpu_curl[$proto.$name]:-} $(awk '{printf "%d", ($1 + $2) * 1000}' "$tf")"
  cpu_origin[$proto.$name]="${cpu_origin[$proto.$name]:-} $(( ($(ticks "$nginx_worker") - o0) * tick_ms ))"
  [ -z "$ppid" ] || cpu_proxy[$proto.$name]="${cpu_proxy[$proto.$name]:-} $(( ($(ticks "$ppid") - p0) * tick_ms ))"
  [ "${out#* }" = "$((tunnel_mib * 1024 * 1024))" ] || { log "curl $proto $name fetched ${out#* } bytes"; exit 1; }
  bps[$proto.$name]="${bps[$proto.$name]:-} ${out% *}"
  log "tunnel $proto $name: ${out% *} B/s"
}
# Warm-up: page cache, the origin's first sendfile and its TLS session setup.
curl -sf -o /dev/null "http://127.0.0.1:$origin_port/big.bin"
curl -sf -o /dev/null --cacert "$work/origin.crt" "https://127.0.0.1:$tls_port/big.bin"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$tunnel_rounds"); do
  log "tunnel round $r/$tunnel_rounds"
  for proto in http https; do
    for n in "${tunnel_peers[@]}"; do run_curl "$proto" "$n"; done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
# Pinned pass: origin (nginx), client (curl) and each proxy on CPUs of their own, direct
# included. In a pod the sidecar container has CPU of its own beside the runtime's, and
# the origin is another host; in the pass above the proxy takes its CPU from the
# endpoints (BENCHMARKS.md, "Sidecar"). With 3+ CPUs: origin 0, curl 1, proxy 2; with
# 2 the endpoints share CPU 0 and the proxy gets CPU 1. BENCH_ORIGIN_CPUS,
# BENCH_CLIENT_CPUS, BENCH_PROXY_CPUS (taskset lists) override; BENCH_PINNED=0 skips it.
ncpu=$(nproc)
all_cpus="0-$(( ncpu - 1 ))"
origin_cpus=${BENCH_ORIGIN_CPUS:-0}
if [ "$ncpu" -ge 3 ]; then client_cpus=${BENCH_CLIENT_CPUS:-1}; proxy_cpus=${BENCH_PROXY_CPUS:-2}
else client_cpus=${BENCH_CLIENT_CPUS:-0}; proxy_cpus=${BENCH_PROXY_CPUS:-1}; fi
pin_protos=()
set_affinity() { # origin cpus, squid's cpus
  local p
  for p in "$nginx_pid" "$nginx_worker"; do taskset -a -pc "$1" "$p" >/dev/null; done
  taskset -a -pc "$2" "$squid_pid" >/dev/null
}
if [ "${BENCH_PINNED:-1}" != 0 ] && [ "$ncpu" -ge 2 ] && command -v taskset >/dev/null; then
  pin_protos=(pin-http pin-https)
  set_affinity "$origin_cpus" "$proxy_cpus"
  # Sidecars started on their CPU, so they size their runtime as in a 1-CPU container
  # (one worker thread: available_parallelism() follows the affinity mask and cgroup quota).
  for n in sidecar baseline; do
    [ -n "${proxy_pid[$n]}" ] || continue
    port=$(free_port)
    bin=$sidecar_bin; [ "$n" = sidecar ] || bin=$baseline_bin
    SIDECAR_LOG_LEVEL=warn taskset -c "$proxy_cpus" "$bin" --listen "127.0.0.1:$port" \
      --allow-cidr 127.0.0.1/32 >>"$work/sidecar.log" 2>&1 &
    pids+=($!)
    wait_port "$port" "pinned $n" "$!"
    proxy_pid[$n]=$!; proxy_port[$n]=$port
  done
  pin_load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  for r in $(seq 1 "$tunnel_rounds"); do
    log "pinned tunnel round $r/$tunnel_rounds"
    for proto in "${pin_protos[@]}"; do
      for n in "${tunnel_peers[@]}"; do run_curl "$proto" "$n"; done
    done
  done
  pin_load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  set_affinity "$all_cpus" "$all_cpus"
fi
declare -A bps_med
for proto in http https "${pin_protos[@]}"; do
  for n in "${tunnel_peers[@]}"; do bps_med[$proto.$n]=$(median <<<"${bps[$proto.$n]}"); done
done
# Median over rounds of (peer / direct) within each round: steadier than the ratio of the
# medians when the machine's load moves between rounds.
round_ratio() { # proto name -> percent
  local -a a b
  read -r -a a <<<"${bps[$1.$2]}"; read -r -a b <<<"${bps[$1.direct]}"
  local i out=""
  for i in "${!a[@]}"; do out="$out $(awk "BEGIN { printf \"%.1f\", 100 * ${a[$i]} / ${b[$i]} }")"; done
  median <<<"$out"
}
cpu_cell() { # array-name key -> median CPU ms as seconds per GiB, or -
  local -n arr=$1
  local v=${arr[$2]:-}
  if [ -z "$v" ]; then echo -; else calc "%.2f" "$(median <<<"$v") / 1000 / ($tunnel_mib / 1024)"; fi
}

# --- 3. RSS --------------------------------------------------------------------------------
# Idle: median VmRSS of 5 fresh processes, each read 0.5 s after it first accepted a
# connection (wait_port's probe), so nothing is still starting up.
idle_rss() { # bin -> "median KiB" then the 5 samples, on one line
  local bin=$1 i port pid samples=""
  for i in 1 2 3 4 5; do
    port=$(free_port)
    SIDECAR_LOG_LEVEL=warn "$bin" --listen "127.0.0.1:$port" --allow-cidr 127.0.0.1/32 >>"$work/sidecar.log" 2>&1 &
    pid=$!
    wait_port "$port" sidecar "$pid" >&2
    sleep 0.5
    samples="$samples $(rss_kib "$pid")"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  echo "$(median <<<"$samples")$samples"
}
read -r rss_idle rss_idle_samples <<<"$(idle_rss "$sidecar_bin")"
log "sidecar idle RSS ${rss_idle} KiB (samples $rss_idle_samples)"
static_idle=""
if [ -n "$static_bin" ]; then
  read -r static_idle static_idle_samples <<<"$(idle_rss "$static_bin")"
  log "static sidecar idle RSS ${static_idle} KiB (samples $static_idle_samples)"
fi
squid_idle=$(rss_kib "$squid_pid")   # squid's main process, for context
# A fresh sidecar for the tunnels, so the numbers are not those of the one wrk exercised.
rss_port=$(free_port)
start_sidecar "$rss_port"
rss_pid=$sidecar_pid
log "holding $ntunnels tunnels"
coproc HOLD { python3 "$here/hold_tunnels.py" "127.0.0.1:$rss_port" "127.0.0.1:$origin_port" "$ntunnels"; }
hold_pid=$HOLD_PID
pids+=($hold_pid)
read -r holding <&"${HOLD[0]}" || true
[ "$holding" = "HOLDING $ntunnels" ] || { log "tunnel holder failed: '$holding'"; tail -5 "$work/sidecar.log" >&2; exit 1; }
rss_tunnels=$(rss_kib "$rss_pid")
hwm_tunnels=$(awk '/^VmHWM:/ {print $2}' "/proc/$rss_pid/status")
exec {HOLD[1]}>&-   # closing its stdin releases the tunnels
wait "$hold_pid" 2>/dev/null || true
log "sidecar RSS with $ntunnels tunnels: ${rss_tunnels} KiB (HWM ${hwm_tunnels} KiB)"

# --- 4. exec to ready ----------------------------------------------------------------------
exec_line=$(python3 "$here/exec_to_ready.py" "$sidecar_bin" "$exec_iters" --allow-cidr 127.0.0.1/32 | tee -a "$raw")
log "$exec_line"
kv() { sed -E "s/.* $1=([0-9.]+).*/\1/" <<<"$exec_line"; }

# --- report --------------------------------------------------------------------------------
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
ms() { calc "%.2f" "$1 / 1000"; }
cat <<EOF
## Sidecar

Run: \`make bench\` (or \`BENCH_ONLY=sidecar integration-tests/bench/run.sh\`) on $(nproc) cores,
$(date -u +%Y-%m-%dT%H:%MZ). Peers: $(squid -v | head -1), tinyproxy $(tinyproxy -v | awk '{print $2}'),
nginx $(nginx -v 2>&1 | sed 's|.*/||') as origin; sidecar \`$sidecar_bin\`.

### HTTP forward proxy (wrk)

\`BENCH_TARGET=http://127.0.0.1:ORIGIN/small.txt wrk -t $threads -c $conns -d $duration --timeout 5s -s integration-tests/bench/sidecar/abs_uri.lua http://127.0.0.1:PROXY/\`
(direct: \`BENCH_TARGET=/small.txt ... http://127.0.0.1:ORIGIN/\`), 1 KiB file, keep-alive,
$rounds interleaved rounds, medians.

| path | req/s | p99 (ms) | errors | rounds (req/s) |
|---|---:|---:|---:|---|
$(for n in "${peers[@]}"; do echo "| $n | ${rps_med[$n]} | $(ms "${p99_med[$n]}") | ${errs[$n]} | ${rps[$n]} |"; done)
$([ -z "$baseline_bin" ] || echo "
baseline: \`$baseline_bin\`; sidecar / baseline req/s: **$(calc "%.3f" "${rps_med[sidecar]} / ${rps_med[baseline]}")x**")

- sidecar / squid req/s: **$(calc "%.2f" "${rps_med[sidecar]} / ${rps_med[squid]}")x** (goal >= 2x)
- sidecar / tinyproxy req/s: $(calc "%.2f" "${rps_med[sidecar]} / ${rps_med[tinyproxy]}")x
- sidecar p99 - direct p99: **$(calc "%.2f" "(${p99_med[sidecar]} - ${p99_med[direct]}) / 1000") ms** (goal <= 1 ms)

### CONNECT tunnel throughput (${tunnel_mib} MiB)

\`curl -sf -o /dev/null -w '%{speed_download}' [--proxytunnel --proxy http://127.0.0.1:PROXY] http://127.0.0.1:ORIGIN/big.bin\`
and the same from the HTTPS port (\`--cacert origin.crt https://127.0.0.1:TLS_ORIGIN/big.bin\`, TLS 1.3,
self-signed certificate made by openssl at bench time); $tunnel_rounds rounds, each
http: direct -> proxies, then https: direct -> proxies; medians. Load average
$load_before before, $load_after after.

| path | HTTP MiB/s | HTTP % of direct | HTTPS MiB/s | HTTPS % of direct | HTTP rounds (MiB/s) | HTTPS rounds (MiB/s) |
|---|---:|---:|---:|---:|---|---|
$(for n in "${tunnel_peers[@]}"; do
  echo "| $n | $(calc "%.0f" "${bps_med[http.$n]} / 1048576") | $(calc "%.1f" "100 * ${bps_med[http.$n]} / ${bps_med[http.direct]}")% | $(calc "%.0f" "${bps_med[https.$n]} / 1048576") | $(calc "%.1f" "100 * ${bps_med[https.$n]} / ${bps_med[https.direct]}")% | $(for v in ${bps[http.$n]}; do printf '%s ' "$(calc "%.0f" "$v / 1048576")"; done)| $(for v in ${bps[https.$n]}; do printf '%s ' "$(calc "%.0f" "$v / 1048576")"; done)|"
done)

CPU seconds per GiB (medians over the same rounds; utime + stime of the proxy process and
of nginx's worker from /proc, curl's from bash \`time\`). On a machine whose cores the
endpoints saturate, a tunnel's throughput follows the CPU it adds to the path.

| path | proxy HTTP | curl HTTP | nginx HTTP | proxy HTTPS | curl HTTPS | nginx HTTPS |
|---|---:|---:|---:|---:|---:|---:|
$(for n in "${tunnel_peers[@]}"; do
  echo "| $n | $(cpu_cell cpu_proxy "http.$n") | $(cpu_cell cpu_curl "http.$n") | $(cpu_cell cpu_origin "http.$n") | $(cpu_cell cpu_proxy "https.$n") | $(cpu_cell cpu_curl "https.$n") | $(cpu_cell cpu_origin "https.$n") |"
done)

- per-round ratios (median of sidecar / direct within each round): HTTPS $(round_ratio https sidecar)%, HTTP $(round_ratio http sidecar)%
- sidecar / direct, HTTPS: **$(calc "%.1f" "100 * ${bps_med[https.sidecar]} / ${bps_med[https.direct]}")%**; plain HTTP (worst case): **$(calc "%.1f" "100 * ${bps_med[http.sidecar]} / ${bps_med[http.direct]}")%** (goal >= 90%)

$([ ${#pin_protos[@]} -eq 0 ] || cat <<PIN
#### Pinned: nginx on CPU $origin_cpus, curl on CPU $client_cpus, each proxy on CPU $proxy_cpus

The same downloads, $tunnel_rounds more rounds, with nginx pinned to CPU $origin_cpus, curl to CPU
$client_cpus (taskset; direct too) and each proxy to CPU $proxy_cpus: in a pod the sidecar container
has CPU of its own, which the pass above cannot give it. Load average $pin_load_before before,
$pin_load_after after.

| path | HTTP MiB/s | HTTP % of direct | HTTPS MiB/s | HTTPS % of direct | HTTP rounds (MiB/s) | HTTPS rounds (MiB/s) |
|---|---:|---:|---:|---:|---|---|
$(for n in "${tunnel_peers[@]}"; do
  echo "| $n | $(calc "%.0f" "${bps_med[pin-http.$n]} / 1048576") | $(calc "%.1f" "100 * ${bps_med[pin-http.$n]} / ${bps_med[pin-http.direct]}")% | $(calc "%.0f" "${bps_med[pin-https.$n]} / 1048576") | $(calc "%.1f" "100 * ${bps_med[pin-https.$n]} / ${bps_med[pin-https.direct]}")% | $(for v in ${bps[pin-http.$n]}; do printf '%s ' "$(calc "%.0f" "$v / 1048576")"; done)| $(for v in ${bps[pin-https.$n]}; do printf '%s ' "$(calc "%.0f" "$v / 1048576")"; done)|"
done)

| path | proxy HTTP | curl HTTP | nginx HTTP | proxy HTTPS | curl HTTPS | nginx HTTPS |
|---|---:|---:|---:|---:|---:|---:|
$(for n in "${tunnel_peers[@]}"; do
  echo "| $n | $(cpu_cell cpu_proxy "pin-http.$n") | $(cpu_cell cpu_curl "pin-http.$n") | $(cpu_cell cpu_origin "pin-http.$n") | $(cpu_cell cpu_proxy "pin-https.$n") | $(cpu_cell cpu_curl "pin-https.$n") | $(cpu_cell cpu_origin "pin-https.$n") |"
done)

- per-round ratios (median of sidecar / direct within each round): HTTPS $(round_ratio pin-https sidecar)%, HTTP $(round_ratio pin-http sidecar)%
- pinned sidecar / direct, HTTPS: **$(calc "%.1f" "100 * ${bps_med[pin-https.sidecar]} / ${bps_med[pin-https.direct]}")%**; plain HTTP: **$(calc "%.1f" "100 * ${bps_med[pin-http.sidecar]} / ${bps_med[pin-http.direct]}")%** (goal >= 90%)
PIN
)

### Memory (VmRSS of the sidecar process)

| state | RSS |
|---|---:|
| idle, fresh process (median of 5: $rss_idle_samples KiB) | $(calc "%.1f" "$rss_idle / 1024") MiB ($(calc "%.2f" "$rss_idle * 1024 / 1000000") MB) |
$([ -z "$static_idle" ] || echo "| idle, static build as in the image (median of 5: $static_idle_samples KiB) | $(calc "%.1f" "$static_idle / 1024") MiB ($(calc "%.2f" "$static_idle * 1024 / 1000000") MB) |")
| $ntunnels open CONNECT tunnels (each proven by a GET) | $(calc "%.1f" "$rss_tunnels / 1024") MiB (peak $(calc "%.1f" "$hwm_tunnels / 1024") MiB) |
| squid main process, after the wrk runs (context) | $(calc "%.1f" "$squid_idle / 1024") MiB |

Goals: idle <= 6 MB, 1,000 tunnels <= 30 MB. Tunnels: \`integration-tests/bench/sidecar/hold_tunnels.py 127.0.0.1:PROXY 127.0.0.1:ORIGIN $ntunnels\`.

### Exec to ready

\`integration-tests/bench/sidecar/exec_to_ready.py $sidecar_bin $exec_iters --allow-cidr 127.0.0.1/32\`
(spawn to first \`GET /readyz\` 200, polling without sleeps):
min $(kv min_ms) ms, **median $(kv median_ms) ms**, p90 $(kv p90_ms) ms, max $(kv max_ms) ms (goal <= 20 ms).
EOF
