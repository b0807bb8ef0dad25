#!/usr/bin/env bash
# Chart tests (`make chart-test`, part of `make test`): render the chart with real Helm
# (helm-python-sdk), lint it strictly, validate every manifest with kubernetes-validate,
# check security-critical fields, the schema's refusals and the generated README, run
# the job manager's own translation on the rendered config, and check live scrapes of
# both binaries (promtool, OpenMetrics, the Grafana dashboard's metric names).
# Offline and fast; uses the venv made by setup-test-env.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
if ! "$py" -c 'import helm_python, kubernetes_validate, prometheus_client, pytest, yaml' 2>/dev/null; then
  deploy/scripts/setup-test-env.sh
fi
# The Role is compared with `job-manager rbac`, and the chart's ConfigMap is fed to
# `job-manager render`: the tests use the real binary (a no-op build after test-rust).
# test_metrics_live.py scrapes a real job manager (against kube-emulator) and sidecar.
cargo build -q -p job-manager -p sidecar --bins
cargo build -q -p integration-tests --bin kube-emulator
export PYTHONDONTWRITEBYTECODE=1
# -rs: a skipped test says why in the summary (promtool missing outside CI).
exec "$py" -m pytest -q -rs -p no:cacheprovider deploy/tests "$@"
