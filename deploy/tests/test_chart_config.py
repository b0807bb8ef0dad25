"""The ConfigMap the chart renders is a config file the job manager accepts: only keys its
model (job-manager/src/config/model.rs, `deny_unknown_fields`) knows, with the values
the chart's inheritance rules promise."""
import re

import pytest

from conftest import REPO, REQUIRED, RELEASE, deep_merge, render
from test_chart_matrix import MATRIX, values_for

MODEL = REPO / "job-manager" / "src" / "config" / "model.rs"
STRUCT = re.compile(r"pub struct (\w+) \{(.*?)\n\}", re.S)
FIELD = re.compile(r"^\s*pub (\w+): ([^,]+),", re.M)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.capitalize() for p in rest)


def model_structs() -> dict:
    """struct name -> {camelCase key: Rust type} for every struct in model.rs."""
    return {name: {camel(f): t.strip() for f, t in FIELD.findall(body)} for name, body in STRUCT.findall(MODEL.read_text())}


def unknown_keys(value, rust_type: str, structs: dict, path: str) -> list:
    """Keys of `value` the model would refuse. Kubernetes types (k8s-openapi) and maps are
    not descended into: kubernetes-validate checks the former, the latter take any key."""
    inner = re.fullmatch(r"(?:Vec|Option)<(.+)>", rust_type)
    if inner:
        items = value if rust_type.startswith("Vec") and isinstance(value, list) else [value]
        return [k for item in items for k in unknown_keys(item, inner[1], structs, path)]
    if rust_type not in structs or not isinstance(value, dict):
        return []
    fields = structs[rust_type]
    out = []
    for key, sub in value.items():
        if key not in fields:
            out.append(f"{path}{key}")
        else:
            out += unknown_keys(sub, fields[key], structs, f"{path}{key}.")
    return out


def test_model_parser_sees_the_model():
    structs = model_structs()
    assert {"Config", "RuntimeConfig", "SidecarSettings", "KubernetesSettings"} <= structs.keys()
    assert structs["Config"]["checkTimeout"] == "u32"
    assert unknown_keys({"checkTimeOut": 5}, "Config", structs, "") == ["checkTimeOut"]
    assert unknown_keys({"runtimes": [{"nmae": "x"}]}, "Config", structs, "") == ["runtimes.nmae"]


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_config_only_uses_model_keys(chart, case):
    config = render(chart, values_for(case)).config()
    assert unknown_keys(config, "Config", model_structs(), "") == []


def test_defaults_match_the_seed(chart):
    config = render(chart, REQUIRED).config()
    assert config["executor"] == "kubernetes"
    assert config["checkTimeout"] == 180
    assert config["brokerApiEndpoint"] == "https://compute-broker.nr-data.net"
    assert config["logLevel"] == "INFO"
    assert config["hostnameOverride"] == "job-manager"
    api, browser = config["runtimes"]
    assert (api["name"], browser["name"]) == ("node-api-runtime", "node-browser-runtime")
    assert (api["image"]["repository"], api["image"]["tag"]) == ("newrelic/serverless-api-runtime", "latest")
    assert (browser["image"]["repository"], browser["image"]["tag"]) == ("newrelic/serverless-browser-runtime", "latest")
    assert api["parallelism"] == 1
    assert "completions" not in api, "the seed's default asks for nothing: no warning for it"
    assert api["resources"] == {"requests": {"cpu": "0.5", "memory": "1250Mi"}, "limits": {"cpu": "0.75", "memory": "2500Mi"}}
    assert browser["resources"] == {"requests": {"cpu": "1", "memory": "2000Mi"}, "limits": {"cpu": "1.5", "memory": "3000Mi"}}
    sidecar = config["sidecar"]
    assert sidecar["enabled"] is True
    assert sidecar["image"] == {"repository": "newrelic/serverless-sidecar", "tag": "latest", "pullPolicy": "IfNotPresent", "digest": ""}
    assert sidecar["resources"] == {"requests": {"cpu": "0.1", "memory": "128Mi"}, "limits": {"cpu": "0.2", "memory": "256Mi"}}
    assert sidecar["upstreamProxyUnresolved"] == "refuse", "unresolvable names behind an upstream proxy are refused"
    k8s = config["kubernetes"]
    assert k8s["job"] == {"backoffLimit": 0, "ttlSecondsAfterFinished": 60}
    assert k8s["persistence"] == {"existingClaimName": "", "emptyDirSizeLimit": "2Gi", "mountPath": "/data", "subPath": ""}
    assert k8s["internalApiKeySecretName"] == f"{RELEASE}-job-manager-internal-api-key"
    container = render(chart, REQUIRED).jm_container()
    assert container["resources"] == {"requests": {"cpu": "0.5", "memory": "800Mi"}, "limits": {"cpu": "0.75", "memory": "1.6Gi"}}
    assert container["image"] == "newrelic/serverless-job-manager:0.1.0"


def test_everything_reaches_the_config(chart):
    rendered = render(chart, values_for("everything"))
    config = rendered.config()
    assert config["checkTimeout"] == 900
    assert config["brokerApiProxySelfSignedCert"] is True, "seed 000 accepts yes/1/true"
    assert config["jvmOpts"] == "-Xmx1g", "passed on so the job manager can warn that it is ignored"
    assert config["logFormat"] == "json"
    assert config["hostnameOverride"] == "jm-results"
    assert rendered.one("Service")["metadata"]["name"] == "jm-results"
    assert config["userDefinedVariables"]["userDefinedJson"] == '{"a": 1}'
    api, browser = config["runtimes"]
    assert api["workload"] == "persistent" and api["parallelism"] == 4
    assert browser["enabled"] is False
    k8s = config["kubernetes"]
    assert k8s["customNodeModulesPath"] == "/data/modules"
    assert k8s["nodeSelector"] == {"pool": "runtimes"}
    assert k8s["podLabels"]["cost"] == "jobs"
    assert k8s["extraVolumes"] == [{"name": "extra", "emptyDir": {}}]
    assert config["sidecar"]["denyPrivate"] is True and config["sidecar"]["allowHosts"] == ["*.example.com"]
    assert config["sidecar"]["denyPublic"] is True
    assert "upstreamProxy" not in config["sidecar"], "it may carry credentials: env from the Secret"
    assert config["sidecar"]["upstreamProxyUnresolved"] == "forward"
    assert "NOTE: jobManager.jvmOpts is ignored" in rendered.notes()


def test_extra_env_inheritance(chart):
    """global -> agent level (jobManager.extraEnv: our binaries) -> component; runtimes get global only."""
    rendered = render(chart, values_for("everything"))
    jm_env = {e["name"]: e.get("value") for e in rendered.jm_container()["env"]}
    assert jm_env["GLOBAL"] == "g" and jm_env["COMPONENT"] == "c"
    assert jm_env["AGENT"] == "1", "agent level wins over global"
    config = rendered.config()
    assert config["kubernetes"]["extraEnv"] == {"GLOBAL": "g", "AGENT": "1", "SIDE": "x"}
    assert config["runtimes"][0]["extraEnv"] == {"GLOBAL": "g", "AGENT": "0", "RT": "api"}, "runtimes skip the agent level"


def test_registry_pull_secrets_and_annotations(chart):
    rendered = render(chart, values_for("registry-override"))
    pod = rendered.jm_pod()
    assert rendered.jm_container()["image"] == "registry.example.com:5000/newrelic/serverless-job-manager:0.1.0"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "jm-only"}]
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["team"] == "global" and annotations["a"] == "component", "component wins on duplicates"
    k8s = rendered.config()["kubernetes"]
    assert k8s["imageRegistry"] == "registry.example.com:5000", "the job manager prefixes runtime and sidecar images"
    assert k8s["imagePullSecrets"] == [{"name": "regcred"}]
    assert k8s["podAnnotations"] == {"team": "global", "a": "global"}


@pytest.mark.parametrize("case,claim", [
    ("persistence-pvc", f"{RELEASE}-job-manager-data"),
    ("persistence-existing-volume", f"{RELEASE}-job-manager-data"),
    ("persistence-existing-claim", "shared"),
    ("defaults", ""),
])
def test_persistence(chart, case, claim):
    rendered = render(chart, values_for(case))
    assert rendered.config()["kubernetes"]["persistence"]["existingClaimName"] == claim
    data = next(v for v in rendered.jm_pod()["volumes"] if v["name"] == "data")
    if claim:
        assert data == {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
    else:
        assert data == {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}}
    if case == "persistence-pvc":
        pvc = rendered.one("PersistentVolumeClaim")
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pvc["spec"]["storageClassName"] == "nfs"
        assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    if case == "persistence-existing-volume":
        assert rendered.one("PersistentVolumeClaim")["spec"]["volumeName"] == "pv-data"


def test_deployment_wiring(chart):
    rendered = render(chart, REQUIRED)
    env = rendered.env()
    assert env["JM_EXECUTOR"]["value"] == "kubernetes"
    assert env["JM_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["JM_CONFIG_FILE"]["value"] == "/etc/job-manager/config.yaml"
    container = rendered.jm_container()
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    pod = rendered.jm_pod()
    assert pod["terminationGracePeriodSeconds"] > rendered.config()["shutdownGraceSecs"]
    assert "podAntiAffinity" in pod["affinity"]
    service = rendered.one("Service")
    assert service["metadata"]["name"] == "job-manager"
    assert service["spec"]["selector"] == rendered.one("Deployment")["spec"]["selector"]["matchLabels"]


def test_config_change_rolls_the_pods(chart):
    def checksum(values):
        return render(chart, values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum(REQUIRED) == checksum(REQUIRED)
    assert checksum(REQUIRED) != checksum(deep_merge(REQUIRED, {"global": {"checkTimeout": 300}}))
