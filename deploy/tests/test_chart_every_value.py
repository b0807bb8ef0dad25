"""No value is accepted and ignored. Every leaf of values.yaml is flipped, one at a time,
and the release rendered by real Helm is compared with the unflipped one:

- a value that reaches the job manager's ConfigMap must change what the real job manager
  does with it: the runtime objects `job-manager render` creates (or the warnings it
  prints), or, for settings only a running process can show (poll interval, log format,
  broker proxy...), the configuration `job-manager run --print-config` loads AND a named
  test that proves the behaviour;
- any other value must change the objects the chart renders (Deployment, Service, HPA,
  Secrets, NetworkPolicy, ...), checksum annotations aside;
- or the flip is refused, with a message saying why.

A new value in values.yaml fails here until it does one of these (or says which test
covers it), so "accepted and ignored" cannot come back unnoticed."""
import copy
import functools
import json
import re
import subprocess
from pathlib import Path

import pytest
from helm_python.errors import HelmError

from conftest import NAMESPACE, REPO, REQUIRED, deep_merge, job_manager_binary, load_all, render
from test_chart_job_manager_accepts import pod_environment

DIGEST = "sha256:" + "c" * 64
SPREAD = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}

# How to flip a value whose generic flip (bool: negate, int: +1, quantity: bump, name:
# suffix) is not a valid or meaningful one: key -> (context, flip). The context is merged
# into both renders (it makes the value matter: KEDA values need KEDA on); the flip only
# into the second.
FLIPS = {
    "global.internalApiKey": ({}, {"global": {"internalApiKey": "another-key"}}),
    "global.internalApiKeySecretName": ({}, {"global": {"internalApiKey": "", "internalApiKeySecretName": "mine"}}),
    "global.persistence.existingClaimName": ({}, {"global": {"persistence": {"existingClaimName": "shared"}}}),
    "global.persistence.existingVolumeName": ({}, {"global": {"persistence": {"existingVolumeName": "pv-1"}}}),
    "global.persistence.storageClass": ({}, {"global": {"persistence": {"storageClass": "nfs"}}}),
    "global.persistence.size": ({"global": {"persistence": {"enabled": True}}}, {"global": {"persistence": {"size": "3Gi"}}}),
    "global.persistence.accessMode": ({"global": {"persistence": {"enabled": True}}},
                                      {"global": {"persistence": {"accessMode": "ReadWriteOnce"}}}),
    "global.persistence.mountPath": ({}, {"global": {"persistence": {"mountPath": "/srv/data"}}}),
    "global.persistence.subPath": ({}, {"global": {"persistence": {"subPath": "jm"}}}),
    "global.customNodeModules.customNodeModulesPath": ({}, {"global": {"customNodeModules": {"customNodeModulesPath": "modules"}}}),
    "global.imageRegistry": ({}, {"global": {"imageRegistry": "registry.example.com"}}),
    "global.imagePullSecrets": ({}, {"global": {"imagePullSecrets": ["regcred"]}}),
    "global.podAnnotations": ({}, {"global": {"podAnnotations": {"team": "jobs"}}}),
    "global.extraEnv": ({}, {"global": {"extraEnv": {"GLOBAL_SETTING": "1"}}}),
    "nameOverride": ({}, {"nameOverride": "jm2"}),
    "fullnameOverride": ({}, {"fullnameOverride": "jobs-manager"}),
    "appVersionOverride": ({}, {"appVersionOverride": "9.9.9"}),
    "imagePullSecrets": ({}, {"imagePullSecrets": ["jm-only"]}),
    "jobManager.locationKey": ({}, {"jobManager": {"locationKey": "another-location"}}),
    "jobManager.locationKeySecretName": ({}, {"jobManager": {"locationKey": "", "locationKeySecretName": "my-location"}}),
    "jobManager.logLevel": ({}, {"jobManager": {"logLevel": "DEBUG"}}),
    "jobManager.logFormat": ({}, {"jobManager": {"logFormat": "json"}}),
    "jobManager.brokerApiEndpoint": ({}, {"jobManager": {"brokerApiEndpoint": "https://compute-broker.eu01.nr-data.net/"}}),
    "jobManager.vsePassphrase": ({}, {"jobManager": {"vsePassphrase": "vse"}}),
    "jobManager.vsePassphraseSecretName": ({}, {"jobManager": {"vsePassphraseSecretName": "my-vse"}}),
    "jobManager.apiProxyHost": ({}, {"jobManager": {"apiProxyHost": "proxy.corp", "apiProxyPort": 3128}}),
    "jobManager.apiProxyPort": ({"jobManager": {"apiProxyHost": "proxy.corp", "apiProxyPort": 3128}},
                                {"jobManager": {"apiProxyPort": 3129}}),
    "jobManager.brokerApiProxySelfSignedCert": ({"jobManager": {"apiProxyHost": "proxy.corp", "apiProxyPort": 3128}},
                                                {"jobManager": {"brokerApiProxySelfSignedCert": "yes"}}),
    "jobManager.brokerApiProxyUsername": ({"jobManager": {"apiProxyHost": "proxy.corp", "apiProxyPort": 3128}},
                                          {"jobManager": {"brokerApiProxyUsername": "user"}}),
    "jobManager.brokerApiProxyPw": ({"jobManager": {"apiProxyHost": "proxy.corp", "apiProxyPort": 3128,
                                                    "brokerApiProxyUsername": "user"}},
                                    {"jobManager": {"brokerApiProxyPw": "pw"}}),
    "jobManager.jvmOpts": ({}, {"jobManager": {"jvmOpts": "-Xmx1g"}}),
    "jobManager.tokenSigningKey": ({}, {"jobManager": {"tokenSigningKey": "sign"}}),
    "jobManager.tokenSigningKeySecretName": ({}, {"jobManager": {"tokenSigningKeySecretName": "my-signing"}}),
    "jobManager.extraEnv": ({}, {"jobManager": {"extraEnv": {"AGENT_SETTING": "1"}}}),
    "jobManager.maxResultBytes": ({}, {"jobManager": {"maxResultBytes": 2 * 1024 * 1024}}),
    "jobManager.hpa.minReplicas": ({}, {"jobManager": {"hpa": {"minReplicas": 2}}}),
    "jobManager.hpa.customMetrics.queueDepthMetricName": ({}, {"jobManager": {"hpa": {"customMetrics": {"queueDepthMetricName": "other_depth"}}}}),
    "jobManager.sidecar.image.pullPolicy": ({}, {"jobManager": {"sidecar": {"image": {"pullPolicy": "Always"}}}}),
    "jobManager.sidecar.extraEnv": ({}, {"jobManager": {"sidecar": {"extraEnv": {"SIDECAR_SETTING": "1"}}}}),
    "jobManager.sidecar.allowCidrs": ({}, {"jobManager": {"sidecar": {"allowCidrs": ["10.1.0.0/16"]}}}),
    "jobManager.sidecar.denyCidrs": ({}, {"jobManager": {"sidecar": {"denyCidrs": ["10.2.0.0/16"]}}}),
    "jobManager.sidecar.allowHosts": ({}, {"jobManager": {"sidecar": {"allowHosts": ["*.example.com"]}}}),
    "jobManager.sidecar.denyHosts": ({}, {"jobManager": {"sidecar": {"denyHosts": ["bad.example.com"]}}}),
    "jobManager.sidecar.apiServerAddresses": ({}, {"jobManager": {"sidecar": {"apiServerAddresses": ["10.96.0.1"]}}}),
    "jobManager.sidecar.upstreamProxy": ({}, {"jobManager": {"sidecar": {"upstreamProxy": "http://proxy:3128"}}}),
    "jobManager.sidecar.upstreamProxyBypass": ({"jobManager": {"sidecar": {"upstreamProxy": "http://proxy:3128"}}},
                                               {"jobManager": {"sidecar": {"upstreamProxyBypass": [".svc.cluster.local"]}}}),
    "jobManager.sidecar.upstreamProxyUnresolved": ({"jobManager": {"sidecar": {"upstreamProxy": "http://proxy:3128"}}},
                                                   {"jobManager": {"sidecar": {"upstreamProxyUnresolved": "forward"}}}),
    "jobManager.sidecar.noProxy": ({}, {"jobManager": {"sidecar": {"noProxy": ["internal.example.com"]}}}),
    "replicaCount": ({"jobManager": {"hpa": {"enabled": False}}}, {"replicaCount": 2}),
    "image.pullPolicy": ({}, {"image": {"pullPolicy": "Always"}}),
    "image.tag": ({}, {"image": {"tag": "1.2.3"}}),
    "image.digest": ({}, {"image": {"digest": DIGEST}}),
    "jobManager.sidecar.image.digest": ({}, {"jobManager": {"sidecar": {"image": {"digest": DIGEST}}}}),
    "global.image.registry": ({}, {"global": {"image": {"registry": "umbrella.example.com"}}}),
    "serviceAccount.name": ({}, {"serviceAccount": {"name": "jm-sa"}}),
    "serviceAccount.annotations": ({}, {"serviceAccount": {"annotations": {"iam.example.com/role": "jm"}}}),
    "networkPolicy.apiServerCidrs": ({"networkPolicy": {"enabled": True}}, {"networkPolicy": {"apiServerCidrs": ["10.96.0.1/32"]}}),
    "networkPolicy.apiServerPorts": ({"networkPolicy": {"enabled": True}}, {"networkPolicy": {"apiServerPorts": [443]}}),
    "networkPolicy.brokerCidrs": ({"networkPolicy": {"enabled": True}}, {"networkPolicy": {"brokerCidrs": ["203.0.113.0/24"]}}),
    "networkPolicy.brokerPorts": ({"networkPolicy": {"enabled": True}}, {"networkPolicy": {"brokerPorts": [8443]}}),
    "networkPolicy.allowInternetEgress": ({"networkPolicy": {"enabled": True}}, {"networkPolicy": {"allowInternetEgress": False}}),
    "networkPolicy.runtimeNamespaceSelector": ({"networkPolicy": {"enabled": True}},
                                               {"networkPolicy": {"runtimeNamespaceSelector": {"matchLabels": {"jobs": "yes"}}}}),
    "networkPolicy.extraIngressFrom": ({"networkPolicy": {"enabled": True}},
                                       {"networkPolicy": {"extraIngressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}),
    "podAnnotations": ({}, {"podAnnotations": {"a": "1"}}),
    "annotations": ({}, {"annotations": {"b": "1"}}),
    "labels": ({}, {"labels": {"team": "jobs"}}),
    "extraEnv": ({}, {"extraEnv": {"COMPONENT_SETTING": "1"}}),
    "podSecurityContext.fsGroupChangePolicy": ({}, {"podSecurityContext": {"fsGroupChangePolicy": "Always"}}),
    "podSecurityContext.seccompProfile.type": ({}, {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}),
    "securityContext.capabilities.drop": ({}, {"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}),
    "securityContext.seccompProfile.type": ({}, {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
    "terminationGracePeriodSeconds": ({}, {"terminationGracePeriodSeconds": 60}),
    "nodeSelector": ({}, {"nodeSelector": {"pool": "jm"}}),
    "tolerations": ({}, {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}),
    "affinity": ({}, {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["jm"]}]}]}}}}),
    "podAntiAffinity": ({}, {"podAntiAffinity": "hard"}),
    "runtimePods.podAnnotations": ({}, {"runtimePods": {"podAnnotations": {"a": "1"}}}),
    "runtimePods.podLabels": ({}, {"runtimePods": {"podLabels": {"cost": "jobs"}}}),
    "runtimePods.nodeSelector": ({}, {"runtimePods": {"nodeSelector": {"pool": "runtimes"}}}),
    "runtimePods.tolerations": ({}, {"runtimePods": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}),
    "runtimePods.affinity": ({}, {"runtimePods": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["runtimes"]}]}]}}}}}),
    "runtimePods.podSecurityContext.fsGroupChangePolicy": ({}, {"runtimePods": {"podSecurityContext": {"fsGroupChangePolicy": "Always"}}}),
    "runtimePods.podSecurityContext.seccompProfile.type": ({}, {"runtimePods": {"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
    "runtimePods.sidecarSecurityContext.capabilities.drop": ({}, {"runtimePods": {"sidecarSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}}}),
    "runtimePods.sidecarSecurityContext.seccompProfile.type": ({}, {"runtimePods": {"sidecarSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
    "runtimePods.runtimeSecurityContext.capabilities.drop": ({}, {"runtimePods": {"runtimeSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}}}),
    "runtimePods.runtimeSecurityContext.seccompProfile.type": ({}, {"runtimePods": {"runtimeSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
    # 1002 is the sidecar's UID: the runtime must differ from it.
    "runtimePods.runtimeSecurityContext.runAsUser": ({}, {"runtimePods": {"runtimeSecurityContext": {"runAsUser": 1003}}}),
    "runtimePods.extraVolumes": ({}, {"runtimePods": {"extraVolumes": [{"name": "extra", "emptyDir": {}}]}}),
    "runtimePods.extraVolumeMounts": ({"runtimePods": {"extraVolumes": [{"name": "extra", "emptyDir": {}}]}},
                                      {"runtimePods": {"extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}]}}),
    "runtimePods.sidecars": ({}, {"runtimePods": {"sidecars": [{"name": "logs", "image": "busybox:1"}]}}),
    "runtimePods.networkPolicy.denyCidrs": ({}, {"runtimePods": {"networkPolicy": {"denyCidrs": ["10.240.0.0/16"]}}}),
    "runtimePods.runtimeClassName": ({}, {"runtimePods": {"runtimeClassName": "gvisor"}}),
    "priorityClassName": ({}, {"priorityClassName": "jobs-high"}),
    "topologySpreadConstraints": ({}, {"topologySpreadConstraints": [SPREAD]}),
    "runtimePods.caBundle": ({}, {"runtimePods": {"caBundle": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}}),
    "runtimePods.priorityClassName": ({}, {"runtimePods": {"priorityClassName": "jobs-low"}}),
    "runtimePods.topologySpreadConstraints": ({}, {"runtimePods": {"topologySpreadConstraints": [SPREAD]}}),
    "runtimePods.serviceAccount.name": ({}, {"runtimePods": {"serviceAccount": {"name": "runtimes"}}}),
}
for _rt in ("node-api-runtime", "node-browser-runtime"):
    FLIPS |= {
        f"{_rt}.workload": ({}, {_rt: {"workload": "persistent"}}),
        f"{_rt}.imagePullSecrets": ({}, {_rt: {"imagePullSecrets": ["rt-cred"]}}),
        f"{_rt}.image.pullPolicy": ({}, {_rt: {"image": {"pullPolicy": "Always"}}}),
        f"{_rt}.image.digest": ({}, {_rt: {"image": {"digest": DIGEST}}}),
        f"{_rt}.replicas.min": ({_rt: {"workload": "persistent"}}, {_rt: {"replicas": {"min": 2}}}),
        f"{_rt}.replicas.max": ({_rt: {"workload": "persistent"}}, {_rt: {"replicas": {"max": 6}}}),
        f"{_rt}.extraEnv": ({}, {_rt: {"extraEnv": {"RUNTIME_SETTING": "1"}}}),
        f"{_rt}.runtimeClassName": ({}, {_rt: {"runtimeClassName": "kata"}}),
        f"{_rt}.nodeSelector": ({}, {_rt: {"nodeSelector": {"pool": _rt}}}),
        f"{_rt}.tolerations": ({}, {_rt: {"tolerations": [{"key": _rt, "operator": "Exists", "effect": "NoSchedule"}]}}),
        f"{_rt}.affinity": ({}, {_rt: {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": [_rt]}]}]}}}}}),
        f"{_rt}.podAnnotations": ({}, {_rt: {"podAnnotations": {"runtime": _rt}}}),
        f"{_rt}.securityContext": ({}, {_rt: {"securityContext": {
            "runAsUser": 3000, "runAsGroup": 3000, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
            "privileged": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"}}}}),
    }
for _monitor in ("serviceMonitor", "podMonitor"):
    FLIPS[f"{_monitor}.interval"] = ({_monitor: {"enabled": True}}, None)
    FLIPS[f"{_monitor}.scrapeTimeout"] = ({_monitor: {"enabled": True}}, None)
    FLIPS[f"{_monitor}.labels"] = ({_monitor: {"enabled": True}}, {_monitor: {"labels": {"release": "prometheus"}}})
_DASH = {"grafanaDashboard": {"enabled": True}}
FLIPS |= {
    "grafanaDashboard.namespace": (_DASH, {"grafanaDashboard": {"namespace": "monitoring"}}),
    "grafanaDashboard.labels": (_DASH, {"grafanaDashboard": {"labels": {"release": "grafana"}}}),
    "grafanaDashboard.annotations": (_DASH, {"grafanaDashboard": {"annotations": {"grafana_folder": "Jobs"}}}),
}
for _key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod", "activationTargetValue"):
    FLIPS[f"jobManager.keda.{_key}"] = ({"jobManager": {"keda": {"enabled": True}}}, None)  # generic flip, KEDA on

# Flips refused on purpose: key -> text the refusal must contain (the reason).
REFUSED = {
    "jobManager.sidecar.enabled": "the sidecar is every runtime's only way to its job",
}

# Reach the job manager and are proven by their own tests (the values need files the
# pod mounts): key -> test that fails if the value stops working.
COVERED_BY = {
    "jobManager.brokerTls.caBundle":
        "deploy/tests/test_chart_job_manager_accepts.py::test_broker_ca_bundle_and_client_certificate_reach_the_job_manager",
    "jobManager.brokerTls.clientCertSecretName":
        "deploy/tests/test_chart_job_manager_accepts.py::test_broker_ca_bundle_and_client_certificate_reach_the_job_manager",
    "jobManager.userDefinedVariables.userDefinedJson":
        "deploy/tests/test_chart_runtime_objects.py::test_user_defined_variables_reach_the_runtime_from_each_source",
    "jobManager.userDefinedVariables.userDefinedFile":
        "deploy/tests/test_chart_runtime_objects.py::test_user_defined_variables_reach_the_runtime_from_each_source",
    "jobManager.userDefinedVariables.userDefinedPath":
        "deploy/tests/test_chart_runtime_objects.py::test_user_defined_variables_reach_the_runtime_from_each_source",
}

# Settings only a running job manager shows (it polls, logs, dials the broker): the
# loaded configuration must change AND this test proves what the setting does.
_MAPPING = "job-manager/src/app.rs::process_settings_come_from_the_config"
PROCESS_TESTS = {
    "jobManager.brokerApiEndpoint": _MAPPING,
    "jobManager.apiProxyHost": _MAPPING,
    "jobManager.apiProxyPort": _MAPPING,
    "jobManager.brokerApiProxySelfSignedCert": _MAPPING,
    "jobManager.brokerApiProxyUsername": _MAPPING,
    "jobManager.poll.intervalMs": _MAPPING,
    "jobManager.poll.batchSize": _MAPPING,
    "jobManager.shutdownGraceSecs": _MAPPING,
    "node-api-runtime.parallelism": _MAPPING,
    "node-browser-runtime.parallelism": _MAPPING,
    "jobManager.networkHealthCheckDisabled":
        "job-manager/tests/jm_network_health_check.rs::an_unreachable_broker_ends_the_start_only_while_the_check_is_on",
}

JOB_TIMEOUT = 900  # above any checkTimeout, so the Job's deadline shows checkTimeout


def leaves(node, path=()):
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from leaves(child, path + (key,))
    else:
        yield ".".join(path), node


def nest(key: str, value) -> dict:
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def generic_flip(key: str, default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, str):
        quantity = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", default)
        if quantity:
            number = float(quantity.group(1)) + 1
            return f"{number:g}{quantity.group(2)}"
        if default:
            return default + "-x"
    raise AssertionError(f"{key}: no generic flip for {default!r}: add it to FLIPS")


def strip_volatile(objects: list) -> list:
    for o in objects:
        if o.get("kind") == "JobRecord":
            o["spec"].pop("deadline", None)
    return objects


class Observed:
    """What one set of values does: the chart's objects (ConfigMap apart), the job
    manager's config, the runtime objects the real job manager creates for a job of each
    runtime type, and the configuration it loads."""

    def __init__(self, chart, values: dict, tmp_path: Path):
        rendered = render(chart, values)
        self.config_map = None
        self.objects = []
        for doc in copy.deepcopy(rendered.docs):
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-config"):
                self.config_map = doc["data"]
                continue
            template = doc.get("spec", {}).get("template", {}).get("metadata", {})
            for name in [a for a in template.get("annotations", {}) if a.startswith("checksum/")]:
                del template["annotations"][name]
            self.objects.append(doc)
        self._rendered, self._tmp = rendered, tmp_path

    def _run(self, *args):
        binary = job_manager_binary()
        assert binary, "target/debug/job-manager missing: chart-test.sh builds it"
        self._tmp.mkdir(parents=True, exist_ok=True)
        config = self._tmp / "config.yaml"
        config.write_text(self.config_map["config.yaml"])
        env = {**pod_environment(self._rendered, config), "PATH": "/usr/bin:/bin"}
        return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, env=env)

    @functools.cached_property
    def runtime_objects(self) -> dict:
        """Per runtime type: what `job-manager render` answers (objects, warnings, refusal)."""
        out = {}
        for runtime in ("node-api-runtime", "node-browser-runtime"):
            job = self._tmp / f"{runtime}.json"
            self._tmp.mkdir(parents=True, exist_ok=True)
            job.write_text(json.dumps({"id": "every-value-1", "runtime_type": runtime, "timeout_secs": JOB_TIMEOUT}))
            answer = self._run("render", "--job", str(job), "--config", str(self._tmp / "config.yaml"), "--namespace", NAMESPACE)
            objects = strip_volatile(load_all(answer.stdout)) if answer.returncode == 0 else None
            out[runtime] = (answer.returncode, answer.stderr, objects)
        return out

    @functools.cached_property
    def loaded(self) -> tuple:
        """The configuration the job manager would run with (`run --print-config`)."""
        answer = self._run("run", "--print-config")
        assert answer.returncode == 0, f"the job manager refuses the chart's config: {answer.stderr}"
        return answer.stdout, answer.stderr


def every_key():
    import yaml
    values = yaml.safe_load((REPO / "deploy/helm/job-manager/values.yaml").read_text())
    return list(leaves(values))


@pytest.fixture(scope="module")
def baselines():
    return {}


@pytest.mark.parametrize("key,default", every_key(), ids=[k for k, _ in every_key()])
def test_every_value_changes_what_the_job_manager_does_or_is_refused(chart, key, default, baselines, tmp_path_factory):
    if key in COVERED_BY:
        path, name = COVERED_BY[key].split("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{key}: {COVERED_BY[key]} does not exist"
        return
    context, flip = FLIPS.get(key, ({}, None))
    if flip is None:
        flip = nest(key, generic_flip(key, default))
    base_values = deep_merge(REQUIRED, context)
    flipped_values = deep_merge(base_values, flip)
    if key in REFUSED:
        with pytest.raises(HelmError) as refused:
            render(chart, flipped_values)
        assert REFUSED[key] in str(refused.value), str(refused.value)
        return
    cache_key = json.dumps(context, sort_keys=True)
    if cache_key not in baselines:
        baselines[cache_key] = Observed(chart, base_values, tmp_path_factory.mktemp("base"))
    before = baselines[cache_key]
    after = Observed(chart, flipped_values, tmp_path_factory.mktemp("flipped"))
    if after.config_map == before.config_map:
        assert after.objects != before.objects, (
            f"{key}: flipping {default!r} changes nothing the chart renders: accepted and ignored")
        return
    if after.runtime_objects != before.runtime_objects:
        return
    assert key in PROCESS_TESTS, (
        f"{key}: reaches the job manager's ConfigMap but changes neither the objects it creates for a job nor the "
        f"warnings it prints: accepted and ignored (or a setting only a running process shows: name its test in "
        f"PROCESS_TESTS)")
    assert after.loaded != before.loaded, f"{key}: the job manager loads the same configuration either way"
    path, name = PROCESS_TESTS[key].split("::")
    text = (REPO / path).read_text()
    assert re.search(rf"\bfn {name}\(|\bdef {name}\(", text), f"{key}: {PROCESS_TESTS[key]} does not exist"


def test_every_seed_value_is_among_the_values_flipped():
    """The seed documents' configuration tables are covered: each of their keys is a leaf
    above or an object whose leaves are."""
    from test_chart_seed_values import SEED_000, SEED_001
    keys = [k for k, _ in every_key()]
    for seed_key, _ in SEED_000 + SEED_001:
        assert any(k == seed_key or k.startswith(seed_key + ".") for k in keys), f"{seed_key} is not flipped"
