#!/usr/bin/env bash
# Kubernetes benchmark: E2E_JOBS (default 1000) jobs per workload, ephemeral and
# persistent, through two job-manager replicas (one SIGKILLed mid-flight), the emulated
# cluster (injected 429/500/conflicts) and real sidecar + test-runtime processes.
# Prints jobs/s, API writes per job (emulator request log; goal <= 4 for ephemeral; also
# measured by a calm run, E2E_CALM=1: no injected faults, no kill, E2E_CALM_JOBS jobs)
# and poll -> pod-running latency (p50/p95). Set E2E_KUBECONFIG to run against a real
# cluster (see README); API-side metrics then come only from the emulator and are skipped.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export E2E_JOBS="${E2E_JOBS:-1000}"
export E2E_CALM_JOBS="${E2E_CALM_JOBS:-200}"
cargo build --workspace --bins >&2
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo test -p integration-tests --test e2e_kubernetes -- --nocapture --test-threads=1 >"$out" 2>&1 || true
# What an ephemeral job costs on a healthy cluster: no injected faults, no kill.
calm="$(mktemp)"
trap 'rm -f "$out" "$calm"' EXIT
E2E_CALM=1 E2E_JOBS="$E2E_CALM_JOBS" cargo test -p integration-tests --test e2e_kubernetes e2e_ephemeral \
  -- --nocapture --test-threads=1 >"$calm" 2>&1 || true
grep -q 'test result: ok' "$calm" || { echo "kubernetes bench: the calm run failed" >&2; tail -30 "$calm" >&2; exit 1; }
if ! grep -q 'test result: ok' "$out"; then
  echo "kubernetes bench: the end-to-end run failed" >&2
  grep -E "panicked|only [0-9]+ of|lost|duplicat" "$out" >&2 || true
  tail -50 "$out" >&2
  exit 1
fi
echo "## Kubernetes executor: ${E2E_JOBS} jobs per workload, 2 job-manager replicas (one SIGKILLed), emulated cluster"
echo
echo "Command: \`E2E_JOBS=${E2E_JOBS} integration-tests/bench/kubernetes/bench.sh\`"
echo
echo "| metric | value |"
echo "|---|---|"
grep '^E2E-METRIC' "$out" | sed 's/^E2E-METRIC //' | awk '{print "| " $1 " | " $2 " |"}'
grep '^E2E-METRIC' "$calm" | sed 's/^E2E-METRIC eph\./calm_eph./' | awk '{print "| " $1 " (E2E_CALM=1, " ENVIRON["E2E_CALM_JOBS"] " jobs) | " $2 " |"}'
echo
