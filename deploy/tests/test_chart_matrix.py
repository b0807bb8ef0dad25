"""The chart renders, lints clean in strict mode and yields manifests valid for the oldest
and newest supported Kubernetes, for default values and a matrix of settings."""
import json

import helm_python as helm
import pytest
import yaml

from conftest import CHART, KUBE_VERSIONS, REQUIRED, deep_merge, kube_validate, render, seed_values

# name -> (values over the required ones, kinds that must appear, kinds that must not)
MATRIX = {
    "defaults": ({}, {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap",
                      "HorizontalPodAutoscaler", "NetworkPolicy"},
                 {"PodDisruptionBudget", "ScaledObject", "PersistentVolumeClaim", "ClusterRole", "ClusterRoleBinding"}),
    "secrets-by-name": ({"jobManager": {"locationKey": "", "locationKeySecretName": "my-location",
                                        "vsePassphraseSecretName": "my-vse", "tokenSigningKeySecretName": "my-signing"},
                         "global": {"internalApiKey": "", "internalApiKeySecretName": "my-internal"}},
                        {"Deployment"}, {"Secret"}),
    "hpa-off": ({"jobManager": {"hpa": {"enabled": False}}}, {"Deployment"}, {"HorizontalPodAutoscaler", "PodDisruptionBudget"}),
    "network-policy": ({"networkPolicy": {"enabled": True, "apiServerCidrs": ["10.96.0.1/32"], "brokerCidrs": ["203.0.113.0/24"]},
                        "jobManager": {"apiProxyHost": "proxy.local", "apiProxyPort": 3128}},
                       {"NetworkPolicy"}, set()),
    "network-policy-no-internet": ({"networkPolicy": {"enabled": True, "allowInternetEgress": False}}, {"NetworkPolicy"}, set()),
    "persistence-pvc": ({"global": {"persistence": {"storageClass": "nfs", "accessMode": "ReadWriteMany", "size": "5Gi"}}},
                        {"PersistentVolumeClaim"}, set()),
    "persistence-existing-volume": ({"global": {"persistence": {"existingVolumeName": "pv-data"}}}, {"PersistentVolumeClaim"}, set()),
    "persistence-existing-claim": ({"global": {"persistence": {"existingClaimName": "shared"}}}, set(), {"PersistentVolumeClaim"}),
    "registry-override": ({"global": {"imageRegistry": "registry.example.com:5000/", "imagePullSecrets": ["regcred"],
                                      "podAnnotations": {"team": "global", "a": "global"}},
                           "imagePullSecrets": [{"name": "jm-only"}], "podAnnotations": {"a": "component"}},
                          {"Deployment"}, set()),
    "keda": ({"jobManager": {"keda": {"enabled": True}}}, {"ScaledObject", "TriggerAuthentication"},
             {"HorizontalPodAutoscaler", "PodDisruptionBudget"}),
    "replicas-3": ({"jobManager": {"hpa": {"enabled": False}}, "replicaCount": 3}, {"PodDisruptionBudget"}, {"HorizontalPodAutoscaler"}),
    "hpa-min-2": ({"jobManager": {"hpa": {"minReplicas": 2}}}, {"PodDisruptionBudget", "HorizontalPodAutoscaler"}, set()),
    "metadata-unrestricted": ({"restrictMetadataService": False}, set(), {"NetworkPolicy"}),
    "runtime-sandbox": ({"runtimePods": {"runtimeClassName": "gvisor", "networkPolicy": {"denyCidrs": ["10.240.0.0/16", "fd10:240::/64"]},
                                         "sidecarSecurityContext": {"runAsNonRoot": True, "runAsUser": 2102, "runAsGroup": 2102,
                                                                    "allowPrivilegeEscalation": False, "privileged": False,
                                                                    "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
                                                                    "seccompProfile": {"type": "RuntimeDefault"}}},
                         "node-browser-runtime": {"runtimeClassName": "kata"}},
                        {"Deployment"}, set()),
    "scheduling": ({"priorityClassName": "jobs-high",
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                                   "whenUnsatisfiable": "ScheduleAnyway"}],
                    "runtimePods": {"priorityClassName": "jobs-low",
                                    "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                                                                   "whenUnsatisfiable": "DoNotSchedule",
                                                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "runtime"}}}]},
                    "node-api-runtime": {"nodeSelector": {"pool": "api"}, "podAnnotations": {"rt": "api"},
                                         "tolerations": [{"key": "api", "operator": "Exists", "effect": "NoSchedule"}],
                                         "securityContext": {"runAsUser": 3000, "runAsGroup": 3000, "runAsNonRoot": True,
                                                             "allowPrivilegeEscalation": False, "privileged": False,
                                                             "capabilities": {"drop": ["ALL"]},
                                                             "seccompProfile": {"type": "RuntimeDefault"}}}},
                   {"Deployment"}, set()),
    "egress-firewall-off": ({"runtimePods": {"egressFirewall": {"enabled": False}}}, {"Deployment"}, set()),
    "everything": ({"jobManager": {"vsePassphrase": "vse", "brokerApiProxyPw": "pw", "brokerApiProxyUsername": "u",
                                   "apiProxyHost": "proxy.corp", "apiProxyPort": "3128",
                                   "brokerApiProxySelfSignedCert": "yes", "tokenSigningKey": "sign", "jvmOpts": "-Xmx1g",
                                   "logLevel": "DEBUG", "logFormat": "json",
                                   "extraEnv": {"AGENT": "1"},
                                   "userDefinedVariables": {"userDefinedJson": '{"a": 1}'},
                                   "sidecar": {"upstreamProxy": "http://u:p@proxy:3128", "denyPrivate": True, "denyPublic": True,
                                               "upstreamProxyUnresolved": "forward",
                                               "allowHosts": ["*.example.com"], "extraEnv": {"SIDE": "x"}}},
                    "global": {"checkTimeout": 900, "extraEnv": {"GLOBAL": "g", "AGENT": "0"}, "hostnameOverride": "jm-results",
                               "customNodeModules": {"customNodeModulesPath": "/data/modules"}},
                    "extraEnv": {"COMPONENT": "c"},
                    "podAntiAffinity": "hard",
                    "nodeSelector": {"pool": "jm"},
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "jm", "effect": "NoSchedule"}],
                    "runtimePods": {"nodeSelector": {"pool": "runtimes"}, "podLabels": {"cost": "jobs"},
                                    "extraVolumes": [{"name": "extra", "emptyDir": {}}],
                                    "extraVolumeMounts": [{"name": "extra", "mountPath": "/extra"}]},
                    "node-api-runtime": {"workload": "persistent", "parallelism": 4, "extraEnv": {"RT": "api"}},
                    "node-browser-runtime": {"enabled": False}},
                   {"Deployment", "Secret"}, set()),
}


def values_for(case: str) -> dict:
    return deep_merge(REQUIRED, MATRIX[case][0])


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_lint_strict_clean(case):
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, values_for(case), strict=True, kube_version=f"v{version}", namespace="jobs")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"{case} @ {version}: {problems}"


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_renders_expected_objects_valid_for_kubernetes(chart, case):
    _, present, absent = MATRIX[case]
    rendered = render(chart, values_for(case))
    assert present <= rendered.kinds(), f"missing {present - rendered.kinds()}"
    assert not (absent & rendered.kinds()), f"unexpected {absent & rendered.kinds()}"
    for doc in rendered.docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            # KEDA's custom resources: no schema in kubernetes-validate; checked in test_keda.
            continue
        for version in KUBE_VERSIONS:
            kube_validate(doc, version)


def test_seed_install_example_renders(chart):
    """`helm install … --set jobManager.locationKey=… --set global.internalApiKey=…` as written in the seeds."""
    rendered = render(chart, seed_values())
    secrets = {s["metadata"]["name"] for s in rendered.of_kind("Secret")}
    assert secrets == {"jm-job-manager-credentials", "jm-job-manager-internal-api-key"}
    assert rendered.env()["JM_LOCATION_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "jm-job-manager-credentials", "key": "locationKey"}
    report = helm.lint(CHART, seed_values(), strict=True, kube_version="v1.29.0")
    assert not [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]


def test_crds_valid(chart):
    """The job-record CRD Helm installs from crds/ (generated by the kubernetes executor's code)."""
    crds = chart.crds
    for crd in crds:
        doc = yaml.safe_load(crd["data"])
        assert doc["kind"] == "CustomResourceDefinition"
        assert doc["spec"]["scope"] == "Namespaced", "the job manager has no cluster-wide rights: records are namespaced"
        for version in KUBE_VERSIONS:
            kube_validate(doc, version)


def test_keda_objects(chart):
    rendered = render(chart, values_for("keda"))
    scaled = rendered.one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "jm-job-manager"}
    assert scaled["spec"]["minReplicaCount"] == 0, "scale to zero by default"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["url"] == "https://compute-broker.nr-data.net/v1/queue"
    assert trigger["metadata"]["valueLocation"] == "depth"
    auth = rendered.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "token", "name": "jm-job-manager-credentials", "key": "locationKey"}]
    assert "replicas" not in rendered.one("Deployment")["spec"], "KEDA owns the replica count"


def test_hpa_on_external_queue_depth(chart):
    hpa = render(chart, REQUIRED).one("HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 1 and hpa["spec"]["maxReplicas"] == 10
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "job_manager_broker_queue_depth"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "100"}


def test_pdb_only_with_more_than_one_replica(chart):
    pdb = render(chart, values_for("replicas-3")).one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert render(chart, values_for("replicas-3")).one("Deployment")["spec"]["replicas"] == 3


def test_kube_version_floor(chart):
    """Runtime pods use native sidecars (restartPolicy: Always init containers): Kubernetes >= 1.29."""
    assert chart.metadata["kubeVersion"] == ">=1.29.0-0"
    assert chart.metadata["apiVersion"] == "v2"


def test_notes_tell_the_operator_what_to_check(chart):
    notes = render(chart, REQUIRED).notes()
    assert "rollout status deployment/jm-job-manager" in notes
    assert 'Service "job-manager" on port 8080' in notes
    assert "job_manager_broker_queue_depth" in notes and "external metrics adapter" in notes
    assert "169.254.169.254 must be unreachable" in notes
    keda = render(chart, values_for("keda")).notes()
    assert "KEDA scales the job manager between 0 and 10" in keda and "HorizontalPodAutoscaler" not in keda
    assert "reportOnly is true" in render(chart, deep_merge(REQUIRED, {"jobManager": {"sidecar": {"reportOnly": True}}})).notes()
    completions = render(chart, deep_merge(REQUIRED, {"node-api-runtime": {"completions": 12}})).notes()
    assert "node-api-runtime.completions is ignored" in completions and "node-browser-runtime.completions" not in completions
    assert "completions" not in notes


def test_grafana_dashboard_configmap_only_when_enabled(chart):
    names = lambda r: {d["metadata"]["name"] for d in r.of_kind("ConfigMap")}
    assert "jm-job-manager-dashboard" not in names(render(chart, REQUIRED))
    values = deep_merge(REQUIRED, {"grafanaDashboard": {
        "enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Jobs"},
        # The loader's label is always "1"; a value given here does not make a duplicate key.
        "labels": {"release": "prom", "grafana_dashboard": "0"}}})
    cm = render(chart, values).one("ConfigMap", "jm-job-manager-dashboard")
    for version in KUBE_VERSIONS:
        kube_validate(cm, version)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["labels"]["release"] == "prom"
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "jm"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Jobs"}
    assert json.loads(cm["data"]["job-manager.json"]) == json.loads((CHART / "files" / "dashboard.json").read_text())
    default_ns = render(chart, deep_merge(REQUIRED, {"grafanaDashboard": {"enabled": True}}))
    assert default_ns.one("ConfigMap", "jm-job-manager-dashboard")["metadata"]["namespace"] == "jobs"


def test_grafana_dashboard_namespace_must_be_a_namespace_name(chart):
    with pytest.raises(Exception, match="namespace"):
        render(chart, deep_merge(REQUIRED, {"grafanaDashboard": {"enabled": True, "namespace": "Not_A_Namespace"}}))
