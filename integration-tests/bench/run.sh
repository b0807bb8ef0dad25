#!/usr/bin/env bash
# `make bench`: runs every benchmark section and collects their reports.
# Sections are the executables integration-tests/bench/*/bench.sh (one per component);
# BENCH_ONLY=sidecar runs just that one. Each section prints a markdown report on stdout;
# run.sh tees them to target/bench/<section>.md and target/bench/report.md.
# Not part of `make test`: numbers from a shared, noisy machine are recorded by hand in
# BENCHMARKS.md together with the exact command, never asserted.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/target/bench"
mkdir -p "$out"

sections=()
for s in "$here"/*/bench.sh; do
  [ -x "$s" ] || continue
  name="$(basename "$(dirname "$s")")"
  if [ -n "${BENCH_ONLY:-}" ] && [ "$name" != "$BENCH_ONLY" ]; then continue; fi
  sections+=("$name")
done
[ ${#sections[@]} -gt 0 ] || { echo "bench: no section matches BENCH_ONLY=${BENCH_ONLY:-}" >&2; exit 1; }

{
  echo "# Benchmark report ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r))"
  echo
} > "$out/report.md"
status=0
for name in "${sections[@]}"; do
  echo "bench: section $name" >&2
  if "$here/$name/bench.sh" | tee "$out/$name.md"; then
    cat "$out/$name.md" >> "$out/report.md"
  else
    echo "bench: section $name FAILED" >&2
    status=1
  fi
done
echo "bench: report in $out/report.md" >&2
exit $status
