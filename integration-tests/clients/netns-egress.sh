#!/usr/bin/env bash
# Network-namespace egress test for `sidecar egress-init`, the pod's kernel-enforced
# egress firewall: after it runs, a runtime UID that ignores HTTP_PROXY cannot get a
# packet out of the pod (TCP or UDP, IPv4 or IPv6; its TCP connects are reset at once,
# not left to time out), yet works through the sidecar; the
# sidecar's UID gets out; a rerun leaves the same ruleset; without CAP_NET_ADMIN or with
# proxy UID 0 it refuses with one line.
#
#   integration-tests/clients/netns-egress.sh [SIDECAR_BIN]     (root; ip, nft, curl, setpriv)
#
# Topology, all in throwaway namespaces, sealed (no default route, no link to the host;
# the host's network and firewall are untouched):
#
#   netns "pod"   egress-init --proxy-uid 2102 (root, like the init container)
#                 lo: sidecar on 127.0.0.1:3128 as uid 2102; runtime as uid 1001
#                 veth 10.213.0.2/24, fd42:213::2/64
#   netns "world" veth 10.213.0.1/24, fd42:213::1/64
#                 origin: python http.server on [::]:8080 (IPv4 too), UDP echo on [::]:53
#
# `nft` is only the test's independent reader of the ruleset; egress-init itself speaks
# netlink. Prints one "ok - ..." line per check; exits non-zero at the first failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
sidecar_bin="${1:-$root/target/debug/sidecar}"
runtime_uid=1001   # the chart's runtime runAsUser
proxy_uid=2102     # the sidecar's UID, the only one let out

fail() { echo "not ok - $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, nftables)"
for t in ip nft curl python3 setpriv; do
  command -v "$t" >/dev/null || fail "$t not installed (deploy/scripts/setup-test-env.sh installs it)"
done
[ -x "$sidecar_bin" ] || fail "no sidecar binary at $sidecar_bin (cargo build -p sidecar --bins)"
sidecar_bin="$(cd "$(dirname "$sidecar_bin")" && pwd)/$(basename "$sidecar_bin")"

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
as_uid() { local uid=$1; shift; in_pod setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"; }
as_runtime() { as_uid "$runtime_uid" "$@"; }

ip netns add "$pod"
ip netns add "$world"
ip link add "vp$id" netns "$pod" type veth peer name "vw$id" netns "$world"
in_pod ip link set lo up
in_world ip link set lo up
in_pod ip addr add 10.213.0.2/24 dev "vp$id"
in_world ip addr add 10.213.0.1/24 dev "vw$id"
in_pod ip addr add fd42:213::2/64 dev "vp$id" nodad
in_world ip addr add fd42:213::1/64 dev "vw$id" nodad
in_pod ip link set "vp$id" up
in_world ip link set "vw$id" up

# A socket probe: prints what connect()/sendto() did: "connected", "reply", or the errno
# ("EPERM", "ECONNREFUSED", "ETIMEDOUT").
cat >"$work/probe.py" <<'EOF'
import errno, socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "udp-echo":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if mode == "tcp":
        # One SYN retry: should SYNs be dropped rather than reset (a regression), the
        # connect fails with ETIMEDOUT in ~3 s rather than hanging ~2 minutes.
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 1)
        s.settimeout(10)
        s.connect((host, port))
        print("connected")
    else:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"ping", (host, port))
        print("reply" if s.recv(64) == b"ping" else "garbage")
except OSError as e:
    # Python's own timeout is a TimeoutError without errno; the kernel's carries ETIMEDOUT.
    print(errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "timeout")
EOF
chmod 644 "$work/probe.py"
probe() { local uid=$1; shift; as_uid "$uid" "$python" "$work/probe.py" "$@"; }
# expect_probe UID WANT MODE HOST PORT
expect_probe() {
  local uid=$1 want=$2; shift 2
  local got; got=$(probe "$uid" "$@")
  [ "$got" = "$want" ] || fail "uid $uid $* gave '$got', expected '$want'"
}

# Origin in "world": HTTP on both families, and UDP echo on the DNS port.
marker="netns-origin-$id"
mkdir -p "$work/www"
echo "$marker" > "$work/www/index.txt"
# Backgrounded commands call `ip netns exec` directly, not through in_world/in_pod: a
# backgrounded shell function is a subshell whose pid is not the server's.
ip netns exec "$world" "$python" -m http.server --bind :: --directory "$work/www" 8080 >"$work/origin.log" 2>&1 &
pids+=($!)
ip netns exec "$world" "$python" "$work/probe.py" udp-echo :: 53 >"$work/udp.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 250); do
  in_world curl -sf -o /dev/null http://10.213.0.1:8080/index.txt && grep -q ready "$work/udp.log" && break
  sleep 0.02
done
in_world curl -sf -o /dev/null "http://[fd42:213::1]:8080/index.txt" || fail "origin did not start: $(cat "$work/origin.log")"
grep -q ready "$work/udp.log" || fail "UDP echo did not start: $(cat "$work/udp.log")"

url4=http://10.213.0.1:8080/index.txt
url6="http://[fd42:213::1]:8080/index.txt"

# 1. Before the firewall the runtime UID gets out on every path (so the blocks below are
#    egress-init's doing, not the topology's).
expect_probe "$runtime_uid" connected tcp 10.213.0.1 8080
expect_probe "$runtime_uid" connected tcp fd42:213::1 8080
expect_probe "$runtime_uid" reply udp 10.213.0.1 53
expect_probe "$runtime_uid" reply udp fd42:213::1 53
echo "ok - before egress-init the runtime UID reaches the world directly (TCP and UDP, IPv4 and IPv6)"

# Someone else's table, which egress-init must leave alone.
in_pod nft add table ip bystander
in_pod nft add chain ip bystander keep
in_pod nft add rule ip bystander keep counter accept

# one_line_failure WANT_RC WANT_FRAGMENT CMD...: exits WANT_RC with one stderr line holding
# WANT_FRAGMENT, and installs nothing.
one_line_failure() {
  local want_rc=$1 want=$2; shift 2
  local rc=0
  "$@" >"$work/out" 2>"$work/err" || rc=$?
  [ "$rc" = "$want_rc" ] || fail "$* exited $rc, expected $want_rc: $(cat "$work/err")"
  [ "$(wc -l <"$work/err")" = 1 ] || fail "$* printed more than one line: $(cat "$work/err")"
  grep -qF -- "$want" "$work/err" || fail "$* said '$(cat "$work/err")', expected '$want'"
  [ -z "$(in_pod nft list table inet sidecar_egress 2>/dev/null)" ] || fail "$* installed a table"
}

# 2. Without CAP_NET_ADMIN it refuses with the capability named: as a plain UID, and as
#    root with every capability dropped.
cap_reason="egress-init: cannot program nftables in this network namespace: Operation not permitted (os error 1); the init container needs CAP_NET_ADMIN"
one_line_failure 1 "$cap_reason" as_runtime "$sidecar_bin" egress-init --proxy-uid "$proxy_uid"
one_line_failure 1 "$cap_reason" in_pod setpriv --inh-caps=-all --bounding-set=-all "$sidecar_bin" egress-init --proxy-uid "$proxy_uid"
echo "ok - without CAP_NET_ADMIN egress-init exits 1 with one line naming CAP_NET_ADMIN"

# 3. Root is never the proxy UID; a UID must be a number.
one_line_failure 64 "0 is root" in_pod "$sidecar_bin" egress-init --proxy-uid 0
one_line_failure 64 "not a numeric UID" in_pod "$sidecar_bin" egress-init --proxy-uid sidecar
one_line_failure 64 "--proxy-uid" in_pod "$sidecar_bin" egress-init
echo "ok - --proxy-uid 0, a non-numeric or a missing UID exits 64 with one line"

# 4. The firewall, as the init container runs it.
out=$(in_pod "$sidecar_bin" egress-init --proxy-uid "$proxy_uid" 2>"$work/err") || fail "egress-init failed: $(cat "$work/err")"
[ "$out" = "egress-init: installed table inet sidecar_egress (chain output, hook output): only loopback and uid $proxy_uid may send" ] \
  || fail "egress-init said '$out'"
# Nothing on stderr: this kernel has the reject expression, so no fallback warning.
[ ! -s "$work/err" ] || fail "egress-init warned: $(cat "$work/err")"
want_table="table inet sidecar_egress {
	chain output {
		type filter hook output priority filter; policy accept;
		oifname \"lo\" accept
		meta l4proto tcp meta skuid != $proxy_uid reject with tcp reset
		meta skuid != $proxy_uid drop
	}
}"
[ "$(in_pod nft list table inet sidecar_egress)" = "$want_table" ] \
  || fail "installed table differs: $(in_pod nft list table inet sidecar_egress)"
echo "ok - egress-init installs 'oifname lo accept; meta l4proto tcp meta skuid != $proxy_uid reject with tcp reset; meta skuid != $proxy_uid drop' in table inet sidecar_egress"

# 5. A rerun (init container restart) replaces our table: same ruleset, one copy, and
#    the bystander table untouched.
before=$(in_pod nft list ruleset)
in_pod "$sidecar_bin" egress-init --proxy-uid "$proxy_uid" >/dev/null || fail "second egress-init failed"
after=$(in_pod nft list ruleset)
[ "$before" = "$after" ] || fail "ruleset changed on rerun:
--- before
$before
--- after
$after"
[ "$(in_pod nft list tables)" = "table ip bystander
table inet sidecar_egress" ] || fail "tables after rerun: $(in_pod nft list tables)"
bystander=$(in_pod nft list chain ip bystander keep)
case "$bystander" in *"counter packets 0 bytes 0 accept"*) ;; *) fail "bystander table changed: $bystander";; esac
echo "ok - a second egress-init succeeds and leaves the ruleset identical, other tables untouched"

# Sidecar in "pod" as its own UID, default policy (private ranges allowed,
# metadata/link-local denied). Started after the firewall, as in the pod.
install -d -o "$proxy_uid" -g "$proxy_uid" "$work/sidecar"
ip netns exec "$pod" setpriv --reuid "$proxy_uid" --regid "$proxy_uid" --clear-groups \
  "$sidecar_bin" --listen 127.0.0.1:3128 --ready-file "$work/sidecar/ready.json" >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
pids+=($sidecar_pid)
for _ in $(seq 1 1000); do
  [ -f "$work/sidecar/ready.json" ] && break
  kill -0 "$sidecar_pid" 2>/dev/null || fail "sidecar exited: $(cat "$work/sidecar.log")"
  sleep 0.01
done
[ -f "$work/sidecar/ready.json" ] || fail "sidecar not ready in 10 s: $(cat "$work/sidecar.log")"

# 6. The sidecar's UID still gets out directly, every path.
expect_probe "$proxy_uid" connected tcp 10.213.0.1 8080
expect_probe "$proxy_uid" connected tcp fd42:213::1 8080
expect_probe "$proxy_uid" reply udp 10.213.0.1 53
expect_probe "$proxy_uid" reply udp fd42:213::1 53
[ "$(as_uid "$proxy_uid" curl -sf --max-time 10 "$url4")" = "$marker" ] || fail "uid $proxy_uid cannot fetch the origin"
echo "ok - the sidecar's UID $proxy_uid reaches the origin directly (TCP and UDP, IPv4 and IPv6)"

# 7-8. The runtime UID cannot. Its SYN is answered with a RST in the output hook, so
#      connect() to a port that answered in check 1 now fails at once with ECONNREFUSED
#      (not a ~2-minute timeout of a dropped SYN); UDP sendto() fails at once with EPERM,
#      so not a datagram leaves (DNS included: the runtime resolves nothing itself).
# expect_fast_refusal HOST PORT: ECONNREFUSED in under 2 s.
expect_fast_refusal() {
  local t0 t1 got
  t0=$(date +%s%N)
  got=$(probe "$runtime_uid" tcp "$1" "$2")
  t1=$(date +%s%N)
  [ "$got" = ECONNREFUSED ] || fail "uid $runtime_uid tcp $1 $2 gave '$got', expected 'ECONNREFUSED'"
  [ $(( (t1 - t0) / 1000000 )) -lt 2000 ] || fail "uid $runtime_uid tcp $1 $2 took $(( (t1 - t0) / 1000000 )) ms to be refused"
}
expect_fast_refusal 10.213.0.1 8080
expect_fast_refusal fd42:213::1 8080
if as_runtime curl -sf --max-time 2 -o /dev/null "$url4" 2>/dev/null; then
  fail "runtime user fetched the origin directly"
fi
echo "ok - runtime UID's direct TCP is reset: connect() fails with ECONNREFUSED in under 2 s (IPv4 and IPv6)"
expect_probe "$runtime_uid" EPERM udp 10.213.0.1 53
expect_probe "$runtime_uid" EPERM udp fd42:213::1 53
echo "ok - runtime UID's direct UDP (port 53) is refused with EPERM (IPv4 and IPv6)"

# 9. ... but it gets out through the sidecar, with HTTP_PROXY as the job manager sets it.
body=$(as_runtime env HTTP_PROXY=http://127.0.0.1:3128 http_proxy=http://127.0.0.1:3128 curl -sS --max-time 10 "$url4") \
  || fail "runtime user through the sidecar (IPv4) failed: $(tail -5 "$work/sidecar.log")"
[ "$body" = "$marker" ] || fail "through the sidecar (IPv4) got '$body', expected '$marker'"
body=$(as_runtime curl -sS --max-time 10 -x http://127.0.0.1:3128 "$url6") \
  || fail "runtime user through the sidecar (IPv6) failed: $(tail -5 "$work/sidecar.log")"
[ "$body" = "$marker" ] || fail "through the sidecar (IPv6) got '$body', expected '$marker'"
echo "ok - runtime UID reaches the origin through the sidecar (IPv4 and IPv6)"

# 10. ... and a CONNECT tunnel too (any TCP through the sidecar).
body=$(as_runtime curl -sS --max-time 10 --proxytunnel --proxy http://127.0.0.1:3128 "$url4") \
  || fail "runtime user's CONNECT through the sidecar failed: $(tail -5 "$work/sidecar.log")"
[ "$body" = "$marker" ] || fail "CONNECT through the sidecar got '$body'"
echo "ok - runtime UID tunnels (CONNECT) to the origin through the sidecar"

# 11. The sidecar is still the policy point: metadata is refused with 403.
answer=$(as_runtime curl -s --max-time 10 -w ' %{http_code}' --proxy http://127.0.0.1:3128 \
  http://169.254.169.254/latest/meta-data/ || true)
[ "${answer##* }" = 403 ] || fail "metadata through the sidecar answered '$answer', expected 403"
case "$answer" in *metadata*) ;; *) fail "403 without the metadata reason: '$answer'";; esac
echo "ok - the sidecar refuses the metadata address for the runtime UID (403)"
