"""The real job manager accepts what the chart gives it: the rendered ConfigMap as its
config file and the Deployment's env (secrets resolved from the rendered Secrets), so a
release never crash-loops on exit 64 (invalid configuration)."""
import base64
from pathlib import Path
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from conftest import NAMESPACE, job_manager_binary
from conftest import render as render_chart
from test_chart_matrix import MATRIX, values_for

EXIT_CONFIG = 64
# Values for Secrets the operator creates (the `*SecretName` cases): not in the render.
EXTERNAL_SECRET_VALUE = "operator-provided"


def pod_environment(rendered, config_path) -> dict:
    """The job-manager container's environment as the kubelet would build it."""
    secrets = {s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()}
               for s in rendered.of_kind("Secret")}
    env = {}
    for entry in rendered.jm_container()["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        source = entry["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
            env[entry["name"]] = NAMESPACE
        else:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secrets.get(ref["name"], {}).get(ref["key"], EXTERNAL_SECRET_VALUE)
    env["JM_CONFIG_FILE"] = str(config_path)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_job_manager_accepts_the_chart_config(chart, case, tmp_path):
    binary = job_manager_binary()
    assert binary, "target/debug/job-manager missing: chart-test.sh builds it (cargo build -p job-manager --bins)"
    rendered = render_chart(chart, values_for(case))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(rendered.config_map()["data"]["config.yaml"])
    port = free_port()
    env = pod_environment(rendered, config_path)
    # Keep the test hermetic: no real broker, no cluster. A refused broker and a missing
    # kubeconfig fail after validation; what matters is that validation passed.
    env.update({"JM_BROKER_API_ENDPOINT": "http://127.0.0.1:9", "JM_LISTEN": f"127.0.0.1:{port}",
                "KUBECONFIG": str(tmp_path / "no-kubeconfig"), "PATH": "/usr/bin:/bin"})
    process = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Done when it exits (it cannot reach the broker or the API server) or when it
        # serves /healthz (it validated its settings and is retrying instead).
        deadline = time.monotonic() + 30
        while process.poll() is None and not healthy(port):
            assert time.monotonic() < deadline, "job-manager neither exited nor became healthy"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert process.returncode != EXIT_CONFIG, f"{case}: the job manager refused the chart's settings:\n{stderr}"
    assert "invalid setting" not in stderr and "unknown field" not in stderr, stderr


def test_a_sidecar_sharing_the_runtime_uid_is_refused_with_the_rule(chart, tmp_path):
    """`sidecarSecurityContext: null` inherits the job manager's context (UID 1001, the
    runtime's): the job manager refuses it at load, naming the rule."""
    values = values_for("defaults")
    values.setdefault("runtimePods", {})["sidecarSecurityContext"] = None
    rendered = render_chart(chart, values)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(rendered.config_map()["data"]["config.yaml"])
    env = pod_environment(rendered, config_path)
    env.update({"JM_BROKER_API_ENDPOINT": "http://127.0.0.1:9", "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
                "PATH": "/usr/bin:/bin"})
    out = subprocess.run([str(job_manager_binary())], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == EXIT_CONFIG, out.stderr
    assert "the sidecar and the runtime both run as UID 1001; they must differ" in out.stderr, out.stderr


TLS_SUPPORT = Path(__file__).resolve().parents[2] / "job-manager" / "tests" / "broker_support"


def test_broker_ca_bundle_and_client_certificate_reach_the_job_manager(chart, tmp_path):
    """jobManager.brokerTls: the CA bundle (content, --set-file) lands in the ConfigMap and
    the client certificate Secret is mounted where the config says; the real job manager
    loads and checks both (a broken bundle is refused at start, exit 64, naming it)."""
    ca = (TLS_SUPPORT / "private-ca-cert.pem").read_text()
    values = values_for("defaults")
    values["jobManager"] = {**values["jobManager"], "brokerTls": {"caBundle": ca, "clientCertSecretName": "jm-broker-client"}}
    rendered = render_chart(chart, values)
    config = yaml.safe_load(rendered.config_map()["data"]["config.yaml"])["brokerTls"]
    # The kubelet's view: the ConfigMap and the Secret mounted where the Deployment says.
    mounts = {m["mountPath"]: m for m in rendered.jm_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in rendered.jm_pod()["volumes"]}
    ca_dir, ca_name = config["caFile"].rsplit("/", 1)
    assert volumes[mounts[ca_dir]["name"]]["configMap"]["name"] == rendered.config_map()["metadata"]["name"]
    assert rendered.config_map()["data"][ca_name] == ca
    cert_dir = config["clientCertFile"].rsplit("/", 1)[0]
    assert config["clientKeyFile"] == f"{cert_dir}/tls.key" and config["clientCertFile"] == f"{cert_dir}/tls.crt"
    assert volumes[mounts[cert_dir]["name"]]["secret"]["secretName"] == "jm-broker-client"
    assert mounts[cert_dir]["readOnly"] is True
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / ca_name).write_text(rendered.config_map()["data"][ca_name])
    (mounted / "tls.crt").write_text((TLS_SUPPORT / "private-client-cert.pem").read_text())
    (mounted / "tls.key").write_text((TLS_SUPPORT / "private-client-key.pem").read_text())
    config_path = tmp_path / "config.yaml"
    config_path.write_text(rendered.config_map()["data"]["config.yaml"])
    env = {**pod_environment(rendered, config_path), "PATH": "/usr/bin:/bin"}
    sets = ["--set", f"brokerTls.caFile={mounted / ca_name}", "--set", f"brokerTls.clientCertFile={mounted / 'tls.crt'}",
            "--set", f"brokerTls.clientKeyFile={mounted / 'tls.key'}"]
    out = subprocess.run([str(job_manager_binary()), "run", "--print-config", *sets], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["brokerTls"]["caFile"] == str(mounted / ca_name)
    (mounted / ca_name).write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    out = subprocess.run([str(job_manager_binary()), "run", "--print-config", *sets], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == EXIT_CONFIG and "brokerTls" in out.stderr, out.stderr
