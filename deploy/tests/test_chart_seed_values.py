"""Every value of the product's seed tables exists with the seed's key and default
(seed 000: the job-manager chart; seed 001: the agent-job values that apply here)."""
import pytest

MISSING = object()

# (key, seed default); None = documented without a default in the seed (empty here).
SEED_000 = [
    ("jobManager.locationKey", ""), ("jobManager.locationKeySecretName", ""),
    ("global.internalApiKey", ""), ("global.internalApiKeySecretName", ""),
    ("global.hostnameOverride", "job-manager"), ("global.checkTimeout", 180),
    ("global.persistence.existingClaimName", ""), ("global.persistence.existingVolumeName", ""),
    ("global.persistence.storageClass", ""), ("global.persistence.size", "2Gi"),
    ("global.customNodeModules.customNodeModulesPath", ""),
    ("imagePullSecrets", []), ("nameOverride", ""), ("fullnameOverride", ""), ("appVersionOverride", ""),
    ("jobManager.logLevel", "INFO"), ("jobManager.brokerApiEndpoint", "https://compute-broker.nr-data.net"),
    ("jobManager.vsePassphrase", ""), ("jobManager.vsePassphraseSecretName", ""),
    ("jobManager.apiProxyHost", ""), ("jobManager.apiProxyPort", ""),
    ("jobManager.brokerApiProxySelfSignedCert", ""), ("jobManager.brokerApiProxyUsername", ""),
    ("jobManager.brokerApiProxyPw", ""), ("jobManager.jvmOpts", ""), ("jobManager.networkHealthCheckDisabled", False),
    ("jobManager.userDefinedVariables.userDefinedJson", ""), ("jobManager.userDefinedVariables.userDefinedFile", ""),
    ("jobManager.userDefinedVariables.userDefinedPath", ""),
    ("jobManager.hpa.enabled", True), ("jobManager.hpa.minReplicas", 1), ("jobManager.hpa.maxReplicas", 10),
    # jobManager.hpa.customMetrics.queueDepthMetricName: see test_queue_depth_metric_name_is_one_that_is_exported.
    ("jobManager.hpa.customMetrics.targetValue", 100),
    ("jobManager.sidecar.enabled", True), ("jobManager.sidecar.image.repository", "newrelic/serverless-sidecar"),
    ("jobManager.sidecar.image.tag", "latest"),
    ("jobManager.sidecar.resources", {"requests": {"cpu": "0.1", "memory": "128Mi"}, "limits": {"cpu": "0.2", "memory": "256Mi"}}),
    ("image.repository", "newrelic/serverless-job-manager"), ("image.pullPolicy", "IfNotPresent"),
    ("resources", {"requests": {"cpu": "0.5", "memory": "800Mi"}, "limits": {"cpu": "0.75", "memory": "1.6Gi"}}),
    ("serviceAccount.create", True), ("serviceAccount.name", ""), ("serviceAccount.annotations", {}),
    ("rbac.create", True), ("networkPolicy.enabled", False),
    ("podAnnotations", {}), ("podSecurityContext", None), ("securityContext", None), ("labels", {}), ("annotations", {}),
    ("nodeSelector", {}), ("tolerations", []), ("affinity", {}),
    ("node-api-runtime.enabled", True), ("node-browser-runtime.enabled", True),
    ("node-api-runtime.parallelism", 1), ("node-api-runtime.completions", 6), ("node-api-runtime.imagePullSecrets", []),
    # Issue 11: the API runtime image is ours (the upstream one speaks another contract).
    ("node-api-runtime.image.repository", "newrelic/serverless-api-runtime"),
    ("node-api-runtime.image.pullPolicy", "IfNotPresent"),
    ("node-api-runtime.resources", {"requests": {"cpu": "0.5", "memory": "1250Mi"}, "limits": {"cpu": "0.75", "memory": "2500Mi"}}),
    ("node-browser-runtime.parallelism", 1), ("node-browser-runtime.completions", 6),
    ("node-browser-runtime.imagePullSecrets", []),
    ("node-browser-runtime.image.repository", "newrelic/synthetics-node-browser-runtime"),
    ("node-browser-runtime.image.pullPolicy", "IfNotPresent"),
    ("node-browser-runtime.resources", {"requests": {"cpu": "1", "memory": "2000Mi"}, "limits": {"cpu": "1.5", "memory": "3000Mi"}}),
]

HARDENED_POD = {"fsGroup": 1001, "fsGroupChangePolicy": "OnRootMismatch", "runAsGroup": 1001, "runAsNonRoot": True,
                "runAsUser": 1001, "seccompProfile": {"type": "RuntimeDefault"}}
HARDENED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
                      "readOnlyRootFilesystem": True, "runAsGroup": 1001, "runAsNonRoot": True, "runAsUser": 1001,
                      "seccompProfile": {"type": "RuntimeDefault"}}

SEED_001 = [
    ("global.imageRegistry", ""), ("global.imagePullSecrets", []), ("global.podAnnotations", {}), ("global.extraEnv", {}),
    ("jobManager.extraEnv", {}), ("extraEnv", {}),
    ("podSecurityContext", HARDENED_POD), ("securityContext", HARDENED_CONTAINER),
    ("runtimePods.podSecurityContext", HARDENED_POD),
    ("runtimePods.runtimeSecurityContext", {**HARDENED_CONTAINER, "readOnlyRootFilesystem": False}),
    ("global.persistence.emptyDir.sizeLimit", "2Gi"), ("global.persistence.accessMode", "ReadWriteMany"),
    ("global.persistence.subPath", ""),
    ("serviceAccount.automountToken", True), ("runtimePods.job.backoffLimit", 0),
    ("runtimePods.job.ttlSecondsAfterFinished", 60),
    ("runtimePods.extraVolumes", []), ("runtimePods.sidecars", []),
]


def lookup(values: dict, key: str):
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


@pytest.mark.parametrize("key,default", SEED_000 + SEED_001, ids=[k for k, _ in SEED_000 + SEED_001])
def test_seed_value_present_with_default(chart, key, default):
    value = lookup(chart.values, key)
    assert value is not MISSING, f"{key} is missing from values.yaml"
    if default is not None:
        assert value == default, f"{key}: {value!r}, seed says {default!r}"


def test_restrict_metadata_and_grace_period_exist(chart):
    # Seed 001 defaults restrictMetadataService to false; this system's threat model
    # (seed 000: metadata blocked) makes true the default, documented in the README.
    assert chart.values["restrictMetadataService"] is True
    assert chart.values["terminationGracePeriodSeconds"] > chart.values["jobManager"]["shutdownGraceSecs"]
    assert chart.values["runtimePods"]["terminationGracePeriodSeconds"] == 30


def test_queue_depth_metric_name_is_one_that_is_exported(chart):
    # Seed 000 defaults it to `serverless_queue_depth`, a name nothing in this system
    # exports; the default is the job manager's own gauge of the broker's queue depth
    # (test_metrics_live.py checks a live job manager exports it). The key is the seed's.
    assert chart.values["jobManager"]["hpa"]["customMetrics"]["queueDepthMetricName"] == "job_manager_broker_queue_depth"
