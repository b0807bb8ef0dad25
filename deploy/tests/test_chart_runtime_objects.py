"""What the job manager creates from the chart's ConfigMap: the chart renders the config,
the real `job-manager render` (the same translation the Kubernetes executor runs) turns
it and a sample job into runtime objects, and those must be valid Kubernetes objects
with no service-account token, hardened containers and the sidecar as the only way out."""
import json
import subprocess

import jsonschema
import pytest
import yaml

from conftest import KUBE_VERSIONS, NAMESPACE, RELEASE, deep_merge, job_manager_binary, kube_validate, load_all, render
from test_chart_job_manager_accepts import pod_environment
from test_chart_matrix import values_for

CASES = ["defaults", "everything", "registry-override", "persistence-pvc", "network-policy", "runtime-sandbox",
         "egress-firewall-off", "scheduling"]


def render_objects(chart, values: dict, runtime: str, tmp_path, sets=()) -> subprocess.CompletedProcess:
    """`job-manager render` on the chart's ConfigMap, in the job-manager container's
    environment (its JM_* env, secrets resolved from the rendered Secrets), as the pod
    loads it; `sets` are extra `--set` flags (e.g. where the data volume is mounted)."""
    binary = job_manager_binary()
    assert binary, "target/debug/job-manager missing: chart-test.sh builds it (cargo build -p job-manager --bins)"
    rendered = render(chart, values)
    config = tmp_path / "config.yaml"
    config.write_text(rendered.config_map()["data"]["config.yaml"])
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"id": "chart-test-1", "runtime_type": runtime, "timeout_secs": 60, "payload": {"script": "ok"}}))
    env = pod_environment(rendered, config)
    env["PATH"] = "/usr/bin:/bin"
    cmd = [str(binary), "render", "--job", str(job), "--config", str(config), "--namespace", NAMESPACE]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def runtime_objects(chart, case: str, runtime: str, tmp_path) -> list:
    out = render_objects(chart, values_for(case), runtime, tmp_path)
    assert out.returncode == 0, f"job-manager render refused the chart's config ({case}): {out.stderr}"
    return load_all(out.stdout)


def crd_schema(chart) -> dict:
    crd = yaml.safe_load(chart.crds[0]["data"])
    return crd, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def pod_specs(objects: list) -> list:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("case", CASES)
def test_runtime_objects_are_valid(chart, case, tmp_path):
    crd, schema = crd_schema(chart)
    objects = runtime_objects(chart, case, "node-api-runtime", tmp_path)
    assert pod_specs(objects), [o["kind"] for o in objects]
    for obj in objects:
        if obj["apiVersion"].startswith(crd["spec"]["group"] + "/"):
            # The job record: checked against the CRD's own schema, as the API server would.
            assert obj["kind"] == crd["spec"]["names"]["kind"]
            jsonschema.validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema)
            continue
        for version in KUBE_VERSIONS:
            kube_validate(obj, version)


@pytest.mark.parametrize("case", CASES)
def test_runtime_pods_have_no_token_and_go_out_through_the_sidecar(chart, case, tmp_path):
    for pod in pod_specs(runtime_objects(chart, case, "node-api-runtime", tmp_path)):
        assert pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == f"{RELEASE}-job-manager-runtime"
        assert pod["securityContext"]["runAsNonRoot"] is True
        sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        assert len(sidecars) == 1, "the sidecar is a native sidecar (restartPolicy: Always init container)"
        runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
        for container in sidecars + [runtime]:
            ctx = container["securityContext"]
            assert ctx["capabilities"]["drop"] == ["ALL"] and ctx["allowPrivilegeEscalation"] is False
            assert ctx["runAsNonRoot"] is True
        env = {e["name"]: e for e in runtime.get("env", [])}
        assert env["HTTPS_PROXY"]["value"].startswith("http://127.0.0.1:")
        assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in runtime.get("env", [])), \
            "the runtime never sees a secret (internal API key, job token)"
        sidecar_refs = [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"]) for e in sidecars[0].get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        assert (f"{RELEASE}-job-manager-internal-api-key", "internalApiKey") in sidecar_refs


def test_registry_override_reaches_runtime_images(chart, tmp_path):
    for pod in pod_specs(runtime_objects(chart, "registry-override", "node-api-runtime", tmp_path)):
        images = [c["image"] for c in pod["containers"] + pod.get("initContainers", [])]
        assert all(i.startswith("registry.example.com:5000/") for i in images), images
        assert {"name": "regcred"} in pod["imagePullSecrets"]


def egress_init(pod: dict):
    return next((c for c in pod.get("initContainers", []) if c["name"] == "egress-init"), None)


@pytest.mark.parametrize("case,uid", [("defaults", 1002), ("runtime-sandbox", 2102)])
def test_egress_firewall_runs_first_and_lets_only_the_sidecar_uid_out(chart, case, uid, tmp_path):
    for pod in pod_specs(runtime_objects(chart, case, "node-api-runtime", tmp_path)):
        inits = pod["initContainers"]
        assert [c["name"] for c in inits[:2]] == ["egress-init", "sidecar"], "the firewall is in before the sidecar starts"
        init = inits[0]
        assert init["args"] == ["egress-init", "--proxy-uid", str(uid)]
        assert init["image"] == inits[1]["image"], "shipped in the sidecar image"
        assert "restartPolicy" not in init
        assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN"], "drop": ["ALL"]}
        assert init["securityContext"]["runAsUser"] == 0 and init["securityContext"]["allowPrivilegeEscalation"] is False
        assert inits[1]["securityContext"]["runAsUser"] == uid
        runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
        assert runtime["securityContext"]["runAsUser"] != uid


def test_egress_firewall_off_renders_no_init_and_says_so(chart, tmp_path):
    for pod in pod_specs(runtime_objects(chart, "egress-firewall-off", "node-api-runtime", tmp_path)):
        assert egress_init(pod) is None
    notes = render(chart, values_for("egress-firewall-off")).notes()
    assert "WARNING: runtimePods.egressFirewall.enabled is false" in notes
    assert "pod-security.kubernetes.io/enforce=privileged" in render(chart, values_for("defaults")).notes()


def test_runtime_class_global_and_per_runtime(chart, tmp_path):
    api = pod_specs(runtime_objects(chart, "runtime-sandbox", "node-api-runtime", tmp_path))
    browser = pod_specs(runtime_objects(chart, "runtime-sandbox", "node-browser-runtime", tmp_path))
    assert {p["runtimeClassName"] for p in api} == {"gvisor"}
    assert {p["runtimeClassName"] for p in browser} == {"kata"}
    assert all("runtimeClassName" not in p for p in pod_specs(runtime_objects(chart, "defaults", "node-api-runtime", tmp_path)))


def test_network_policy_deny_cidrs_reach_the_runtime_policy(chart, tmp_path):
    objects = runtime_objects(chart, "runtime-sandbox", "node-api-runtime", tmp_path)
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    excepts = {b["cidr"]: b.get("except", []) for rule in policy["spec"]["egress"] for peer in rule.get("to", [])
               if "ipBlock" in peer for b in [peer["ipBlock"]]}
    assert "10.240.0.0/16" in excepts["0.0.0.0/0"] and "169.254.0.0/16" in excepts["0.0.0.0/0"]
    assert "fd10:240::/64" in excepts["::/0"] and "fd00:ec2::254/128" in excepts["::/0"]


def sidecar_env(pod: dict) -> dict:
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "sidecar")
    return {e["name"]: e.get("value") for e in sidecar.get("env", [])}


def test_sidecar_policy_values_reach_the_sidecar_the_job_manager_renders(chart, tmp_path):
    """What `jobManager.sidecar.*` says reaches the sidecar's env through the real job
    manager's translation (not just the ConfigMap)."""
    everything = [sidecar_env(p) for p in pod_specs(runtime_objects(chart, "everything", "node-api-runtime", tmp_path))]
    defaults = [sidecar_env(p) for p in pod_specs(runtime_objects(chart, "defaults", "node-api-runtime", tmp_path))]
    assert everything and defaults
    for env in everything:
        assert env["SIDECAR_DENY_PUBLIC"] == "true" and env["SIDECAR_DENY_PRIVATE"] == "true", env
    for env in defaults:
        assert "SIDECAR_DENY_PUBLIC" not in env and "SIDECAR_DENY_PRIVATE" not in env, env
        assert env["SIDECAR_MAX_BODY_BYTES"] == str(1024 * 1024), env


def runtime_env(pod: dict) -> dict:
    runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
    return {e["name"]: e.get("value") for e in runtime.get("env", [])}


def mounts(rendered) -> dict:
    """The job-manager container's mounts: path -> volume (as the Deployment says)."""
    volumes = {v["name"]: v for v in rendered.jm_pod()["volumes"]}
    return {m["mountPath"]: (volumes[m["name"]], m.get("subPath")) for m in rendered.jm_container()["volumeMounts"]}


@pytest.mark.parametrize("source", ["json", "file", "path"])
def test_user_defined_variables_reach_the_runtime_from_each_source(chart, source, tmp_path):
    """Each of userDefinedJson, userDefinedFile (content, as --set-file gives it) and
    userDefinedPath (on the data volume) ends in the runtime's USER_DEFINED_VARIABLES, read
    by the real job manager where the Deployment mounts it."""
    variables = {"SOURCE": source, "N": 1}
    text = json.dumps(variables, indent=2)
    key = {"json": "userDefinedJson", "file": "userDefinedFile", "path": "userDefinedPath"}[source]
    values = values_for("defaults")
    values["jobManager"] = {**values["jobManager"], "userDefinedVariables": {key: "variables" if source == "path" else text}}
    rendered = render(chart, values)
    config = rendered.config()
    sets = []
    if source == "file":
        # The kubelet's view: the ConfigMap mounted where the Deployment says.
        path = config["userDefinedVariables"]["userDefinedFile"]
        mount_dir, name = path.rsplit("/", 1)
        volume, sub_path = mounts(rendered)[mount_dir]
        assert sub_path is None and volume["configMap"]["name"] == rendered.config_map()["metadata"]["name"]
        mounted = tmp_path / "configmap"
        mounted.mkdir()
        for k, v in rendered.config_map()["data"].items():
            (mounted / k).write_text(v)
        assert json.loads((mounted / name).read_text()) == variables
        sets.append(f"userDefinedVariables.userDefinedFile={mounted / name}")
    if source == "path":
        # The data volume, mounted at kubernetes.persistence.mountPath in the job-manager pod.
        assert "data" in [v["name"] for v, _ in [mounts(rendered)[config["kubernetes"]["persistence"]["mountPath"]]]]
        volume = tmp_path / "volume"
        (volume / "variables").mkdir(parents=True)
        (volume / "variables" / "user_defined_variables.json").write_text(text)
        sets.append(f"kubernetes.persistence.mountPath={volume}")
    out = render_objects(chart, values, "node-api-runtime", tmp_path, sets)
    assert out.returncode == 0, out.stderr
    pods = pod_specs(load_all(out.stdout))
    assert pods
    for pod in pods:
        assert json.loads(runtime_env(pod)["USER_DEFINED_VARIABLES"]) == variables
    # And without any source: an empty object.
    for pod in pod_specs(runtime_objects(chart, "defaults", "node-api-runtime", tmp_path)):
        assert runtime_env(pod)["USER_DEFINED_VARIABLES"] == "{}"


def test_service_port_reaches_sidecars_and_the_runtime_network_policy(chart, tmp_path):
    """service.port moves the Service, the container's port and the listener; the real job
    manager then points sidecars at it and opens it in the runtime NetworkPolicy."""
    values = deep_merge(values_for("defaults"), {"service": {"port": 9090}})
    rendered = render(chart, values)
    assert rendered.config()["listen"] == "0.0.0.0:9090"
    assert rendered.one("Service")["spec"]["ports"][0]["port"] == 9090
    assert rendered.jm_container()["ports"][0]["containerPort"] == 9090
    out = render_objects(chart, values, "node-api-runtime", tmp_path)
    assert out.returncode == 0, out.stderr
    objects = load_all(out.stdout)
    for pod in pod_specs(objects):
        assert sidecar_env(pod)["SIDECAR_JOB_MANAGER_URL"] == f"http://job-manager.{NAMESPACE}.svc:9090"
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    to_job_manager = [r for r in policy["spec"]["egress"] if any("podSelector" in p for p in r.get("to", []))]
    assert [p["port"] for r in to_job_manager for p in r["ports"]] == [9090]


def test_completions_set_reaches_the_job_manager_as_a_warning(chart, tmp_path):
    values = deep_merge(values_for("defaults"), {"node-api-runtime": {"completions": 12}})
    out = render_objects(chart, values, "node-api-runtime", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "completions (node-api-runtime: 12) is accepted for chart compatibility and ignored" in out.stderr
    assert "completions" not in render_objects(chart, values_for("defaults"), "node-api-runtime", tmp_path).stderr


def test_umbrella_globals_and_digests_reach_every_image(chart, tmp_path):
    """Under an umbrella chart: unknown global keys pass, `global.image.registry` prefixes
    every image (job manager, sidecar, egress-init, runtime); a digest wins over the tag."""
    digest = "sha256:" + "d" * 64
    values = deep_merge(values_for("defaults"), {
        "global": {"image": {"registry": "umbrella.example.com"}, "storageClass": "fast", "someOtherChart": {"x": 1}},
        "image": {"digest": digest},
        "jobManager": {"sidecar": {"image": {"digest": digest}}},
        "node-api-runtime": {"image": {"tag": "9.9", "digest": digest}},
    })
    rendered = render(chart, values)
    assert rendered.jm_container()["image"] == f"umbrella.example.com/newrelic/serverless-job-manager@{digest}"
    for pod in pod_specs(load_all(render_objects(chart, values, "node-api-runtime", tmp_path).stdout)):
        images = {c["name"]: c["image"] for c in pod["containers"] + pod["initContainers"]}
        assert images["runtime"] == f"umbrella.example.com/newrelic/serverless-api-runtime@{digest}"
        assert images["sidecar"] == images["egress-init"] == f"umbrella.example.com/newrelic/serverless-sidecar@{digest}"
    # global.imageRegistry, when set, wins.
    values["global"]["imageRegistry"] = "mine.example.com"
    assert render(chart, values).jm_container()["image"].startswith("mine.example.com/")


def test_scheduling_values_reach_the_job_manager_and_runtime_pods(chart, tmp_path):
    rendered = render(chart, values_for("scheduling"))
    jm = rendered.jm_pod()
    assert jm["priorityClassName"] == "jobs-high"
    assert jm["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "job-manager"
    for pod in pod_specs(runtime_objects(chart, "scheduling", "node-api-runtime", tmp_path)):
        assert pod["priorityClassName"] == "jobs-low"
        assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
        assert pod["nodeSelector"] == {"pool": "api"}
        assert pod["tolerations"] == [{"key": "api", "operator": "Exists", "effect": "NoSchedule"}]
        runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
        assert runtime["securityContext"]["runAsUser"] == 3000
    for pod in pod_specs(runtime_objects(chart, "scheduling", "node-browser-runtime", tmp_path)):
        assert "nodeSelector" not in pod and "tolerations" not in pod, "per-runtime values stay with their runtime"


def test_runtime_ca_bundle_reaches_runtime_containers(chart, tmp_path):
    ca = "-----BEGIN CERTIFICATE-----\nMIIBcorp\n-----END CERTIFICATE-----\n"
    values = deep_merge(values_for("defaults"), {"runtimePods": {"caBundle": ca}})
    rendered = render(chart, values)
    config_map = rendered.one("ConfigMap", f"{RELEASE}-job-manager-runtime-ca")
    assert config_map["data"]["ca.crt"] == ca
    for pod in pod_specs(runtime_objects_for(chart, values, "node-browser-runtime", tmp_path)):
        volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == config_map["metadata"]["name"])
        runtime = next(c for c in pod["containers"] if c["name"] == "runtime")
        mount = next(m for m in runtime["volumeMounts"] if m["name"] == volume["name"])
        assert runtime_env(pod)["NODE_EXTRA_CA_CERTS"] == f"{mount['mountPath']}/ca.crt"
        assert mount["readOnly"] is True
    for pod in pod_specs(runtime_objects(chart, "defaults", "node-api-runtime", tmp_path)):
        assert "NODE_EXTRA_CA_CERTS" not in runtime_env(pod)


def runtime_objects_for(chart, values, runtime, tmp_path) -> list:
    out = render_objects(chart, values, runtime, tmp_path)
    assert out.returncode == 0, out.stderr
    return load_all(out.stdout)
