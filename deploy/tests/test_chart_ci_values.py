"""The values files under the chart's ci/ (what chart-testing installs): each lints clean,
renders manifests valid for the oldest and newest Kubernetes, and the real job manager
accepts its config and renders valid runtime objects from it. Plus the conventions they
exercise: the `helm test` pod and the Prometheus Operator monitors."""
import subprocess

import helm_python as helm
import pytest
import yaml

from conftest import CHART, KUBE_VERSIONS, NAMESPACE, RELEASE, REQUIRED, deep_merge, job_manager_binary, kube_validate, load_all, render
from test_chart_job_manager_accepts import pod_environment
from test_chart_runtime_objects import pod_specs, render_objects

CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
# Custom resources kubernetes-validate has no schema for (checked field by field below).
CUSTOM = ("keda.sh/", "monitoring.coreos.com/")


def ci_values(path) -> dict:
    return yaml.safe_load(path.read_text())


def test_ci_files_exist():
    assert {p.name for p in CI_FILES} >= {"defaults-values.yaml", "umbrella-values.yaml", "observability-values.yaml",
                                         "scheduling-values.yaml"}


@pytest.mark.parametrize("path", CI_FILES, ids=[p.name for p in CI_FILES])
def test_ci_values_lint_render_and_run(chart, path, tmp_path):
    values = ci_values(path)
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{version}", namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{path.name} @ {version}: {problems}"
    rendered = render(chart, values)
    for doc in rendered.docs:
        if not doc["apiVersion"].startswith(CUSTOM):
            for version in KUBE_VERSIONS:
                kube_validate(doc, version)
    config = tmp_path / "config.yaml"
    config.write_text(rendered.one("ConfigMap", f"{RELEASE}-job-manager-config")["data"]["config.yaml"])
    env = {**pod_environment(rendered, config), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(job_manager_binary()), "run", "--print-config"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, f"{path.name}: the job manager refuses the chart's config: {out.stderr}"
    for runtime in ("node-api-runtime", "node-browser-runtime"):
        answer = render_objects(chart, values, runtime, tmp_path)
        assert answer.returncode == 0, f"{path.name} {runtime}: {answer.stderr}"
        objects = load_all(answer.stdout)
        assert pod_specs(objects)
        for obj in objects:
            if obj["kind"] != "JobRecord":
                for version in KUBE_VERSIONS:
                    kube_validate(obj, version)


def test_helm_test_pod_checks_readyz_through_the_service(chart):
    values = ci_values(CHART / "ci" / "observability-values.yaml")
    rendered = render(chart, values)
    pod = next(d for d in rendered.of_kind("Pod") if d["metadata"]["annotations"].get("helm.sh/hook") == "test")
    container = pod["spec"]["containers"][0]
    assert container["image"] == rendered.jm_container()["image"], "the job-manager image's own check verb"
    assert container["args"] == ["check", "--url", f"http://job-manager.{NAMESPACE}.svc:9090/readyz", "--timeout-secs", "20"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["runAsNonRoot"] is True
    service_selector = rendered.one("Service")["spec"]["selector"]
    assert not all(pod["metadata"]["labels"].get(k) == v for k, v in service_selector.items()), \
        "the Service must never send traffic to the test pod"
    # The job manager's NetworkPolicy lets it in (nothing else new).
    policy = rendered.one("NetworkPolicy")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE,
                                            "app.kubernetes.io/component": "helm-test"}}} in peers
    assert all(set(p["podSelector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
               for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "helm-test")
    # Off: no pod, no peer.
    off = render(chart, deep_merge(values, {"helmTest": {"enabled": False}}))
    assert not off.of_kind("Pod")
    assert "helm-test" not in yaml.safe_dump(off.one("NetworkPolicy"))


def test_monitors_scrape_the_metrics_port(chart):
    rendered = render(chart, ci_values(CHART / "ci" / "observability-values.yaml"))
    service = rendered.one("Service")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    pod_monitor = rendered.one("PodMonitor")
    template_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    assert not {"ServiceMonitor", "PodMonitor"} & render(chart, REQUIRED).kinds(), "off by default"
