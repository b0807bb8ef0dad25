#!/usr/bin/env bash
# Network-namespace egress test: a runtime user whose direct egress is blocked
# by an iptables owner-match rule still works through the sidecar, and the sidecar still
# refuses what policy forbids.
#
#   integration-tests/clients/netns-egress.sh [SIDECAR_BIN]     (root; ip, iptables, curl)
#
# Topology, all in throwaway namespaces (the host's network and firewall are untouched):
#
#   netns "pod"   lo: sidecar on 127.0.0.1:3128 (runs as root, like the sidecar container)
#                 veth 10.213.0.2  --- runtime user (uid 1001) may only reach 127.0.0.1:3128
#   netns "world" veth 10.213.0.1  --- origin: python http.server on :8080
#
# Prints one "ok - ..." line per check; exits non-zero at the first failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sidecar_bin="${1:-$root/target/debug/sidecar}"
runtime_uid=1001   # the chart's runtime runAsUser

fail() { echo "not ok - $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, iptables)"
for t in ip iptables curl python3 setpriv; do
  command -v "$t" >/dev/null || fail "$t not installed (deploy/scripts/setup-test-env.sh installs it)"
done
[ -x "$sidecar_bin" ] || fail "no sidecar binary at $sidecar_bin (cargo build -p sidecar --bins)"

# The real interpreter, not a pyenv shim, so the pid we keep is the server's.
python=$(python3 -c 'import sys; print(sys.executable)')

id=$$
pod="sc-pod-$id"; world="sc-world-$id"
work="$(mktemp -d /tmp/netns-egress.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$world" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

in_pod() { ip netns exec "$pod" "$@"; }
in_world() { ip netns exec "$world" "$@"; }
as_runtime() { in_pod setpriv --reuid "$runtime_uid" --regid "$runtime_uid" --clear-groups "$@"; }

ip netns add "$pod"
ip netns add "$world"
ip link add "vp$id" netns "$pod" type veth peer name "vw$id" netns "$world"
in_pod ip link set lo up
in_world ip link set lo up
in_pod ip addr add 10.213.0.2/24 dev "vp$id"
in_world ip addr add 10.213.0.1/24 dev "vw$id"
in_pod ip link set "vp$id" up
in_world ip link set "vw$id" up

# Origin in "world".
marker="netns-origin-$id"
mkdir -p "$work/www"
echo "$marker" > "$work/www/index.txt"
# Backgrounded commands call `ip netns exec` directly, not through in_world/in_pod: a
# backgrounded shell function is a subshell whose pid is not the server's.
ip netns exec "$world" "$python" -m http.server --bind 10.213.0.1 --directory "$work/www" 8080 >"$work/origin.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 250); do
  in_world curl -sf -o /dev/null http://10.213.0.1:8080/index.txt && break
  sleep 0.02
done
in_world curl -sf -o /dev/null http://10.213.0.1:8080/index.txt || fail "origin did not start: $(cat "$work/origin.log")"

# Sidecar in "pod", default policy (private ranges allowed, metadata/link-local denied).
ip netns exec "$pod" "$sidecar_bin" --listen 127.0.0.1:3128 --ready-file "$work/ready.json" >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
pids+=($sidecar_pid)
for _ in $(seq 1 1000); do
  [ -f "$work/ready.json" ] && break
  kill -0 "$sidecar_pid" 2>/dev/null || fail "sidecar exited: $(cat "$work/sidecar.log")"
  sleep 0.01
done
[ -f "$work/ready.json" ] || fail "sidecar not ready in 10 s: $(cat "$work/sidecar.log")"

# The pod's firewall: the runtime user may talk to the sidecar and nothing else.
in_pod iptables -A OUTPUT -o lo -p tcp -d 127.0.0.1 --dport 3128 -m owner --uid-owner "$runtime_uid" -j ACCEPT
in_pod iptables -A OUTPUT -p tcp -m owner --uid-owner "$runtime_uid" -j REJECT --reject-with tcp-reset
in_pod iptables -A OUTPUT -m owner --uid-owner "$runtime_uid" -j REJECT

url=http://10.213.0.1:8080/index.txt
# 1. The topology works for anyone else (so a failure below is the owner rule's doing).
[ "$(in_pod curl -sf --max-time 10 "$url")" = "$marker" ] || fail "root in pod cannot reach the origin directly"
echo "ok - root in the pod reaches the origin directly"

# 2. The runtime user cannot go direct.
if as_runtime curl -sf --max-time 10 -o /dev/null "$url" 2>/dev/null; then
  fail "runtime user reached the origin directly despite the owner-match rule"
fi
echo "ok - runtime user's direct egress is blocked"

# 3. ... but works through the sidecar, with HTTP_PROXY as the job manager sets it.
body=$(as_runtime env HTTP_PROXY=http://127.0.0.1:3128 http_proxy=http://127.0.0.1:3128 curl -sS --max-time 10 "$url") \
  || fail "runtime user through the sidecar failed: $(tail -5 "$work/sidecar.log")"
[ "$body" = "$marker" ] || fail "through the sidecar got '$body', expected '$marker'"
echo "ok - runtime user reaches the origin through the sidecar"

# 4. ... and a CONNECT tunnel too (any TCP through the sidecar).
body=$(as_runtime curl -sS --max-time 10 --proxytunnel --proxy http://127.0.0.1:3128 "$url") \
  || fail "runtime user's CONNECT through the sidecar failed: $(tail -5 "$work/sidecar.log")"
[ "$body" = "$marker" ] || fail "CONNECT through the sidecar got '$body'"
echo "ok - runtime user tunnels (CONNECT) to the origin through the sidecar"

# 5. The sidecar is still the policy point: metadata is refused with 403.
answer=$(as_runtime curl -s --max-time 10 -w ' %{http_code}' --proxy http://127.0.0.1:3128 \
  http://169.254.169.254/latest/meta-data/ || true)
[ "${answer##* }" = 403 ] || fail "metadata through the sidecar answered '$answer', expected 403"
case "$answer" in *metadata*) ;; *) fail "403 without the metadata reason: '$answer'";; esac
echo "ok - the sidecar refuses the metadata address for the runtime user (403)"
