"""Live scrapes of the real binaries: a job manager with the Kubernetes executor (what the
chart deploys; against the workspace's `kube-emulator`) and a sidecar, both on loopback.

- `promtool check metrics` accepts both text scrapes (the gate of issue 13). In CI
  (`CI=true`) a missing promtool fails; elsewhere the test is skipped, loudly.
- Every query of the chart's Grafana dashboard parses (`promtool check rules`).
- A scraper asking for OpenMetrics gets it, and it parses as OpenMetrics.
- Every metric name in the chart's Grafana dashboard and the HPA's default metric name
  are exported by the real registries (names read from the scrapes, not a list).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import CHART, REPO

DASHBOARD = CHART / "files" / "dashboard.json"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
# Prometheus 2.x's default scrape Accept header.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def binary(name: str) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = (target if target.is_absolute() else REPO / target) / "debug" / name
    assert path.exists(), f"{path} missing: deploy/scripts/chart-test.sh builds it (cargo build)"
    return path


def wait_for(what: str, cond, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    detail = log.read_text() if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def get(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


class Live:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, args: list, env: dict | None = None, stdout=subprocess.DEVNULL) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen([str(binary(name)), *args], stdout=stdout, stderr=log.open("w"),
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc, log

    def start_job_manager(self) -> str:
        kubeconfig = self.tmp / "kubeconfig"
        emu, emu_log = self.spawn("kube-emulator", ["--listen", "127.0.0.1:0", "--namespace", "jobs", "--kubeconfig",
                                                    str(kubeconfig)], stdout=subprocess.PIPE)
        first = emu.stdout.readline().decode()
        assert first.startswith("kube-emulator serving http://127.0.0.1:"), first + emu_log.read_text()
        api = first.split()[2]
        crd = (CHART / "crds" / "jobrecords.yaml").read_bytes()
        req = urllib.request.Request(
            f"{api}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/jobrecords.jobs.jobmanager.dev"
            "?fieldManager=chart-test&force=true",
            data=crd, method="PATCH", headers={"Content-Type": "application/apply-patch+yaml"})
        urllib.request.urlopen(req, timeout=10).close()
        config = self.tmp / "job-manager.yaml"
        config.write_text(json.dumps({
            "executor": "kubernetes", "namespace": "jobs", "brokerApiEndpoint": "embedded",
            "locationKey": "live-location-key", "internalApiKey": "live-internal-key", "listen": "127.0.0.1:0",
            "logFormat": "json",
            "runtimes": [{"name": "rt", "workload": "ephemeral", "parallelism": 1,
                          "image": {"repository": "example.invalid/rt", "tag": "1"}}],
            "sidecar": {"image": {"repository": "example.invalid/sidecar", "tag": "1"}},
            "kubernetes": {"internalApiKeySecretName": "internal-key"},
        }))
        jm, log = self.spawn("job-manager", ["--config", str(config)], env={"KUBECONFIG": str(kubeconfig)})

        def started():
            for line in log.read_text().splitlines():
                if '"job manager started"' in line:
                    return json.loads(line)["addr"]
            return None
        return wait_for("the job manager to start", started, proc=jm, log=log)

    def start_sidecar(self) -> str:
        ready = self.tmp / "sidecar-ready.json"
        # Allow-list mode with an empty list: this sidecar can reach nothing at all.
        sc, log = self.spawn("sidecar", ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--ready-file",
                                         str(ready), "--log-format", "json", "--job-id", "live-1", "--deny-public",
                                         "--deny-private"])
        wait_for("the sidecar's ready file", ready.exists, proc=sc, log=log)
        addrs = json.loads(ready.read_text())
        # One refused request through the proxy (refused by policy before any dial).
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://{addrs['listen']}"}))
        try:
            opener.open("http://169.254.169.254/latest/meta-data/", timeout=10)
            raise AssertionError("the metadata address was not refused")
        except urllib.error.HTTPError as e:
            assert e.code == 403
        return addrs["admin"]

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    live = Live(tmp_path_factory.mktemp("live-metrics"))
    try:
        jm, sc = live.start_job_manager(), live.start_sidecar()
        yield {"job-manager": f"http://{jm}/metrics", "sidecar": f"http://{sc}/metrics"}
    finally:
        live.stop()


BINARIES = ["job-manager", "sidecar"]


def exported_names(text: str) -> set:
    """Every sample name a Prometheus text-format exposition can carry, read from its
    TYPE lines (so families without samples yet count) and its samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def need_promtool(what: str) -> str:
    """promtool's path; without it, a failure under CI=true and a loud skip elsewhere."""
    promtool = shutil.which("promtool")
    if promtool is None:
        message = f"PROMTOOL NOT INSTALLED: {what} (apt-get install prometheus, or deploy/scripts/setup-test-env.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        print(f"\n*** {message} ***", file=sys.stderr)
        pytest.skip(message)
    return promtool


@pytest.mark.parametrize("name", BINARIES)
def test_promtool_accepts_the_scrape(live, name):
    content_type, text = get(live[name])
    assert content_type == TEXT
    # promtool passes an empty input: make sure this is a real exposition first.
    prefix = name.replace("-", "_")
    for family in (f"{prefix}_build_info", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        assert f"# TYPE {family} " in text, f"{family} missing from\n{text}"
    promtool = need_promtool("`promtool check metrics` NOT RUN on the live scrapes")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"promtool: {result.stdout}{result.stderr}"
    # ... and promtool is a gate that can fail: the old always-OpenMetrics answer fails it.
    _, om = get(live[name], accept="application/openmetrics-text")
    bad = subprocess.run([promtool, "check", "metrics"], input=om, capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "no help text" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


@pytest.mark.parametrize("name", BINARIES)
@pytest.mark.parametrize("accept", ["application/openmetrics-text", PROMETHEUS_ACCEPT])
def test_openmetrics_when_asked_for(live, name, accept):
    content_type, om = get(live[name], accept=accept)
    assert content_type == OPENMETRICS
    assert om.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(om)}
    prefix = name.replace("-", "_")
    assert families[f"{prefix}_build_info"].type == "gauge"
    assert families["process_cpu_seconds"].type == "counter"
    # The same samples as the text format.
    _, text = get(live[name])
    om_samples = {s.name for f in families.values() for s in f.samples}
    text_samples = {re.split(r"[{ ]", l, maxsplit=1)[0] for l in text.splitlines() if l and not l.startswith("#")}
    assert om_samples == text_samples, om_samples ^ text_samples


def test_connection_counts_have_a_listener_and_skip_admin_scrapes(live):
    for _ in range(3):
        get(live["sidecar"])
    _, text = get(live["sidecar"])
    assert 'sidecar_connections_total{listener="proxy"} 1\n' in text, text
    assert 'listener="admin"' not in text
    assert 'sidecar_denials_total{class="metadata",enforced="true"} 1\n' in text
    assert 'sidecar_denials_total{class="loopback",enforced="true"} 0\n' in text, "known label sets start at zero"


# --- the Grafana dashboard ----------------------------------------------------------

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set:
    """Metric names in a PromQL expression: identifiers that are not functions or
    aggregations (followed by `(`), keywords, label names (inside `{}` or the `(...)` of
    by/without/on/...) or durations (inside `[]`)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    # Label lists of by/without/on/ignoring/group_*: gone, so `sum by (le) (x)` reads `sum (x)`.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*(\([^)]*\))?", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if not call and word not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_exprs(dashboard: dict) -> list:
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))
    walk(dashboard["panels"])
    return exprs


def unknown_names(dashboard: dict, exported: set) -> dict:
    """expr -> the metric names in it that nothing exports."""
    return {e: missing for e in dashboard_exprs(dashboard) if (missing := promql_metric_names(e) - exported)}


@pytest.fixture(scope="module")
def exported(live):
    return set().union(*(exported_names(get(url)[1]) for url in live.values()))


def test_promql_names_are_extracted():
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x="y(z)", le!="1"}[$__rate_interval])))') == {"a_bucket"}
    assert promql_metric_names(
        "process_open_fds / process_max_fds * on (instance, job) group_left (version) b_info") == {
        "process_open_fds", "process_max_fds", "b_info"}
    assert promql_metric_names("count by (version, commit) (c) offset 5m > bool 0 or vector(1)") == {"c"}
    assert promql_metric_names("sum without (pod) (d) / ignoring (x) e unless f") == {"d", "e", "f"}


def test_every_dashboard_query_uses_exported_names(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 20, "the dashboard has its queries"
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert {"job_manager_broker_queue_depth", "sidecar_denials_total", "process_resident_memory_bytes"} <= used
    assert unknown_names(dashboard, exported) == {}


def promtool_check_queries(exprs: list, tmp_path: Path) -> subprocess.CompletedProcess:
    """`promtool check rules` on a rule file with one recording rule per query (Grafana's
    `$__rate_interval` as 5m): Prometheus's own PromQL parser reads every query."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m")} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(json.dumps(rules))
    promtool = need_promtool("the dashboard's queries NOT parsed by `promtool check rules`")
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)


def test_every_dashboard_query_parses(tmp_path):
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    result = promtool_check_queries(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout, result.stdout
    broken = promtool_check_queries(["sum by (le (rate(x[5m]))"], tmp_path)
    assert broken.returncode != 0, "a query that does not parse is caught"


def test_a_wrong_name_in_the_dashboard_is_caught(exported):
    dashboard = json.loads(DASHBOARD.read_text())
    text = json.dumps(dashboard).replace("sidecar_tunnel_received_bytes_total", "sidecar_bytes_total")
    wrong = json.loads(text)
    wrong["panels"][1]["targets"].append({"refId": "Z", "expr": "sum(rate(job_manager_jobs_polled[5m]))"})
    found = set().union(*unknown_names(wrong, exported).values())
    assert found == {"sidecar_bytes_total", "job_manager_jobs_polled"}


def test_the_hpa_default_metric_is_exported(chart, exported):
    assert chart.values["jobManager"]["hpa"]["customMetrics"]["queueDepthMetricName"] in exported
