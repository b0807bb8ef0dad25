"""Security-critical fields of the rendered chart: non-root everywhere, no capabilities,
no service-account token for runtimes, cloud metadata blocked, secrets only in Secrets,
namespaced RBAC only."""
import ipaddress

import pytest

from conftest import REQUIRED, RELEASE, deep_merge, render
from test_chart_matrix import MATRIX, values_for

METADATA = [ipaddress.ip_network(n) for n in (
    "169.254.169.254/32", "169.254.170.2/32", "169.254.170.23/32", "100.100.100.200/32", "168.63.129.16/32",
    "fd00:ec2::254/128", "fd00:ec2::23/128", "fd20:ce::254/128", "fd00:c1::a9fe:a9fe/128")]


def assert_hardened_container(ctx: dict, read_only_root: bool, what: str):
    assert ctx["runAsNonRoot"] is True, what
    assert ctx["runAsUser"] != 0 and ctx["runAsGroup"] != 0, what
    assert ctx["allowPrivilegeEscalation"] is False, what
    assert ctx["privileged"] is False, what
    assert ctx["capabilities"] == {"drop": ["ALL"]}, what
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, what
    assert ctx["readOnlyRootFilesystem"] is read_only_root, what


def assert_hardened_pod(ctx: dict, what: str):
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, what
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, what


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_job_manager_pod_is_hardened(chart, case):
    rendered = render(chart, values_for(case))
    pod = rendered.jm_pod()
    assert_hardened_pod(pod["securityContext"], "job-manager pod")
    for container in pod["containers"]:
        assert_hardened_container(container["securityContext"], True, container["name"])
    # Read-only root filesystem: every path the process writes is a volume.
    mounts = {m["mountPath"] for m in rendered.jm_container()["volumeMounts"]}
    assert "/tmp" in mounts


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_runtime_pods_are_hardened_and_tokenless(chart, case):
    rendered = render(chart, values_for(case))
    k8s = rendered.config()["kubernetes"]
    assert_hardened_pod(k8s["podSecurityContext"], "runtime pod")
    assert_hardened_container(k8s["securityContext"], True, "sidecar container")
    assert_hardened_container(k8s["runtimeSecurityContext"], False, "runtime container")
    # Runtime pods run as a dedicated account that never mounts a token and has no rights.
    runtime_sa = k8s["runtimeServiceAccount"]
    assert runtime_sa == f"{RELEASE}-job-manager-runtime"
    account = rendered.one("ServiceAccount", runtime_sa)
    assert account["automountServiceAccountToken"] is False
    for binding in rendered.of_kind("RoleBinding"):
        assert runtime_sa not in [s["name"] for s in binding["subjects"]]


def test_sidecar_security_context_own_uid_inherits_and_overrides(chart):
    k8s = render(chart, REQUIRED).config()["kubernetes"]
    assert k8s["securityContext"]["runAsUser"] == 1002, "the sidecar's own UID (the egress firewall lets only it out)"
    assert k8s["runtimeSecurityContext"]["runAsUser"] == 1001
    # null removes the chart's default (Helm merges maps, so `{}` would keep it).
    emptied = deep_merge(REQUIRED, {"runtimePods": {"sidecarSecurityContext": None}})
    inherited = render(chart, emptied).config()["kubernetes"]["securityContext"]
    assert inherited == render(chart, REQUIRED).jm_container()["securityContext"]
    custom = deep_merge(REQUIRED, {"runtimePods": {"sidecarSecurityContext": {
        "runAsNonRoot": True, "runAsUser": 2000, "runAsGroup": 2000, "allowPrivilegeEscalation": False, "privileged": False,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}, "readOnlyRootFilesystem": True}}})
    assert render(chart, custom).config()["kubernetes"]["securityContext"]["runAsUser"] == 2000


def test_job_manager_token_follows_automount_value(chart):
    assert render(chart, REQUIRED).jm_pod()["automountServiceAccountToken"] is True
    off = render(chart, deep_merge(REQUIRED, {"serviceAccount": {"automountToken": False}}))
    assert off.jm_pod()["automountServiceAccountToken"] is False
    assert off.one("ServiceAccount", f"{RELEASE}-job-manager")["automountServiceAccountToken"] is False


def ip_blocks(policy: dict):
    for rule in policy["spec"].get("egress", []):
        for peer in rule.get("to", []):
            if "ipBlock" in peer:
                yield peer["ipBlock"]


def reaches_metadata(block: dict) -> bool:
    net = ipaddress.ip_network(block["cidr"])
    excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
    for metadata in METADATA:
        if metadata.version == net.version and metadata.subnet_of(net):
            if not any(metadata.version == e.version and metadata.subnet_of(e) for e in excepted):
                return True
    return False


@pytest.mark.parametrize("case", ["defaults", "network-policy", "network-policy-no-internet"])
def test_network_policy_blocks_metadata(chart, case):
    rendered = render(chart, values_for(case))
    policies = rendered.of_kind("NetworkPolicy")
    assert len(policies) == 1, "exactly one policy: NetworkPolicies add up, a looser second one would undo the first"
    policy = policies[0]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "job-manager"
    assert "Egress" in policy["spec"]["policyTypes"]
    blocks = list(ip_blocks(policy))
    assert blocks, "egress is restricted by address"
    for block in blocks:
        assert not reaches_metadata(block), f"{case}: {block} lets the job manager reach cloud metadata"
    assert rendered.config()["kubernetes"]["restrictMetadataService"] is True


def test_network_policy_full_shape(chart):
    policy = render(chart, values_for("network-policy")).one("NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress = policy["spec"]["ingress"]
    assert len(ingress) == 1
    assert ingress[0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress[0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "runtime"}
    egress_ports = [{p["port"] for p in rule.get("ports", [])} for rule in policy["spec"]["egress"]]
    assert {53} in egress_ports, "DNS"
    assert {443, 6443} in egress_ports, "API server"
    assert {443, 3128} in egress_ports, "broker and its proxy (jobManager.apiProxyPort)"
    api_rule = policy["spec"]["egress"][egress_ports.index({443, 6443})]
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]
    # Runtime pods must match the labels the chart asks the job manager to put on them.
    labels = render(chart, values_for("network-policy")).config()["kubernetes"]["podLabels"]
    assert ingress[0]["from"][0]["podSelector"]["matchLabels"].items() <= labels.items()


def test_no_internet_means_no_catch_all_rule(chart):
    policy = render(chart, values_for("network-policy-no-internet")).one("NetworkPolicy")
    assert all(rule.get("ports") for rule in policy["spec"]["egress"]), "every egress rule names its ports"


def test_metadata_restriction_can_be_turned_off(chart):
    rendered = render(chart, values_for("metadata-unrestricted"))
    assert not rendered.of_kind("NetworkPolicy")
    assert rendered.config()["kubernetes"]["restrictMetadataService"] is False


def test_secrets_never_in_configmap_or_env_values(chart):
    rendered = render(chart, values_for("everything"))
    secret_values = ["loc-key-123", "internal-key-456", "vse", "http://u:p@proxy:3128", "sign"]
    config_text = rendered.config_map()["data"]["config.yaml"]
    for value in secret_values:
        assert value not in config_text.split(), f"{value!r} leaked into the ConfigMap"
    plain_env = {e["name"]: e.get("value") for e in rendered.jm_container()["env"]}
    for name in ["JM_LOCATION_KEY", "JM_INTERNAL_API_KEY", "JM_VSE_PASSPHRASE", "JM_BROKER_API_PROXY_PW",
                 "JM_TOKEN_SIGNING_KEY", "JM_SIDECAR_UPSTREAM_PROXY"]:
        assert name in plain_env and plain_env[name] is None, f"{name} must come from a Secret"
        assert "secretKeyRef" in rendered.env()[name]["valueFrom"]


def test_rbac_is_namespaced_and_bounded(chart):
    rendered = render(chart, REQUIRED)
    assert not {"ClusterRole", "ClusterRoleBinding"} & rendered.kinds()
    role = rendered.one("Role")
    assert role["metadata"]["namespace"] == "jobs"
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"roles", "rolebindings", "clusterroles", "clusterrolebindings"} & set(rule["resources"]), rule
        assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"] and "impersonate" not in rule["verbs"]
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-job-manager", "namespace": "jobs"}]
    assert rendered.jm_pod()["serviceAccountName"] == f"{RELEASE}-job-manager"


def test_rbac_can_be_left_to_the_operator(chart):
    rendered = render(chart, deep_merge(REQUIRED, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-made"}}))
    assert not {"Role", "RoleBinding"} & rendered.kinds()
    assert rendered.jm_pod()["serviceAccountName"] == "ops-made"


def test_runtime_network_policy_admits_exactly_our_job_manager(chart):
    """The job manager's runtime NetworkPolicy lets runtime pods talk to pods with these
    labels: they must select this release's job-manager pods."""
    rendered = render(chart, REQUIRED)
    labels = rendered.config()["kubernetes"]["jobManagerPodLabels"]
    assert labels == rendered.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert labels.items() <= rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
