"""Bad values are refused before anything is rendered, with a message that names the
value and the rule (values.schema.json, or a template `fail` where JSON Schema cannot
say it clearly)."""
import helm_python as helm
import pytest
from helm_python.errors import HelmError

from conftest import CHART, REQUIRED, deep_merge, render

REFUSED = {
    "check-timeout-0": ({"global": {"checkTimeout": 0}}, ["/global/checkTimeout", "minimum: got 0, want 1"]),
    "check-timeout-901": ({"global": {"checkTimeout": 901}}, ["/global/checkTimeout", "maximum: got 901, want 900"]),
    "check-timeout-string": ({"global": {"checkTimeout": "soon"}}, ["/global/checkTimeout", "want integer"]),
    "no-location-key": ({"jobManager": {"locationKey": ""}},
                        ["jobManager.locationKey or jobManager.locationKeySecretName is required"]),
    "both-location-keys": ({"jobManager": {"locationKeySecretName": "mine"}},
                           ["set only one of jobManager.locationKey and jobManager.locationKeySecretName"]),
    "no-internal-api-key": ({"global": {"internalApiKey": ""}},
                            ["global.internalApiKey or global.internalApiKeySecretName is required"]),
    "resources-bad-quantity": ({"resources": {"requests": {"cpu": "lots"}}}, ["/resources/requests/cpu", "does not match pattern"]),
    "resources-typo": ({"resources": {"request": {"cpu": "1"}}}, ["/resources", "additional properties 'request' not allowed"]),
    "runtime-resources-bad-name": ({"node-api-runtime": {"resources": {"limits": {"CPU!": "1"}}}},
                                   ["/node-api-runtime/resources/limits", "CPU!"]),
    "sidecar-resources-list": ({"jobManager": {"sidecar": {"resources": ["cpu"]}}}, ["/jobManager/sidecar/resources", "want object"]),
    "unknown-top-level-key": ({"jobManger": {"locationKey": "x"}}, ["additional properties 'jobManger' not allowed"]),
    "unknown-nested-key": ({"jobManager": {"hpa": {"minReplica": 2}}}, ["/jobManager/hpa", "'minReplica' not allowed"]),
    "bad-upstream-proxy-unresolved": ({"jobManager": {"sidecar": {"upstreamProxyUnresolved": "resolve"}}},
                                      ["/jobManager/sidecar/upstreamProxyUnresolved", "value must be one of"]),
    "bad-log-level": ({"jobManager": {"logLevel": "verbose"}}, ["/jobManager/logLevel", "value must be one of"]),
    "bad-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, ["/image/pullPolicy"]),
    "bad-workload": ({"node-browser-runtime": {"workload": "forever"}}, ["/node-browser-runtime/workload"]),
    "bad-service-name": ({"global": {"hostnameOverride": "Job_Manager"}}, ["/global/hostnameOverride"]),
    "bad-proxy-port": ({"jobManager": {"apiProxyPort": 70000}}, ["/jobManager/apiProxyPort"]),
    "grace-too-short": ({"terminationGracePeriodSeconds": 30},
                        ["terminationGracePeriodSeconds (30) must be greater than jobManager.shutdownGraceSecs (30)"]),
    "hpa-min-above-max": ({"jobManager": {"hpa": {"minReplicas": 5, "maxReplicas": 2}}},
                          ["jobManager.hpa.minReplicas (5) must not exceed jobManager.hpa.maxReplicas (2)"]),
    "proxy-port-without-host": ({"jobManager": {"apiProxyPort": 3128}},
                                ["jobManager.apiProxyHost is required when jobManager.apiProxyPort"]),
    "proxy-host-without-port": ({"jobManager": {"apiProxyHost": "proxy"}},
                                ["jobManager.apiProxyPort is required (1-65535) when jobManager.apiProxyHost is set"]),
    "proxy-password-without-user": ({"jobManager": {"apiProxyHost": "proxy", "apiProxyPort": 3128, "brokerApiProxyPw": "pw"}},
                                    ["jobManager.brokerApiProxyUsername is required when jobManager.brokerApiProxyPw is set"]),
    "two-user-variable-sources": ({"jobManager": {"userDefinedVariables": {"userDefinedJson": "{}", "userDefinedPath": "v.json"}}},
                                  ["set only one of jobManager.userDefinedVariables.userDefinedJson"]),
    "user-variables-path-escapes": ({"jobManager": {"userDefinedVariables": {"userDefinedPath": "../etc/passwd"}}},
                                    ["userDefinedPath must be a relative path inside the persistent volume"]),
    "poll-too-fast": ({"jobManager": {"poll": {"intervalMs": 5}}}, ["/jobManager/poll/intervalMs", "minimum: got 5, want 10"]),
    "batch-too-big": ({"jobManager": {"poll": {"batchSize": 5000}}}, ["/jobManager/poll/batchSize", "maximum: got 5,000, want 1,000"]),
    "sidecar-disabled": ({"jobManager": {"sidecar": {"enabled": False}}},
                         ["jobManager.sidecar.enabled cannot be false", "only way to its job",
                          "set jobManager.sidecar.reportOnly=true"]),
    "user-variables-file-given-as-path": ({"jobManager": {"userDefinedVariables": {"userDefinedFile": "/etc/vars.json"}}},
                                          ["userDefinedFile must be the content of a JSON object file",
                                           "--set-file jobManager.userDefinedVariables.userDefinedFile=<path>", "/etc/vars.json"]),
    "user-variables-file-a-list": ({"jobManager": {"userDefinedVariables": {"userDefinedFile": "[1, 2]"}}},
                                   ["userDefinedFile must be the content of a JSON object file", "cannot unmarshal array"]),
    "user-variables-json-broken": ({"jobManager": {"userDefinedVariables": {"userDefinedJson": '{"a": '}}},
                                   ["userDefinedJson must be a JSON object", "unexpected end of JSON input"]),
    "ca-bundle-given-as-path": ({"jobManager": {"brokerTls": {"caBundle": "/etc/ssl/ca.pem"}}},
                                ["/jobManager/brokerTls/caBundle", "does not match pattern"]),
    "bad-digest": ({"node-api-runtime": {"image": {"digest": "latest"}}}, ["/node-api-runtime/image/digest", "does not match pattern"]),
    "no-runtime": ({"node-api-runtime": {"enabled": False}, "node-browser-runtime": {"enabled": False}},
                   ["enable at least one runtime"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_clear_message(chart, case):
    values, expected = REFUSED[case]
    with pytest.raises(HelmError) as refused:
        render(chart, deep_merge(REQUIRED, values))
    message = str(refused.value)
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_lint_reports_the_refusal():
    report = helm.lint(CHART, deep_merge(REQUIRED, {"global": {"checkTimeout": 0}}), strict=True, kube_version="v1.29.0")
    assert any("checkTimeout" in m["error"] for m in report["messages"] if m["severity"] >= 3), report


@pytest.mark.parametrize("values", [
    {"global": {"checkTimeout": 1}},
    {"global": {"checkTimeout": 900}},
    {"jobManager": {"apiProxyHost": "proxy", "apiProxyPort": "3128", "brokerApiProxySelfSignedCert": "1"}},
    {"jobManager": {"brokerApiProxySelfSignedCert": True}, "resources": {"limits": {"cpu": 2, "memory": "1.5e9"}}},
    {"jobManager": {"hpa": {"customMetrics": {"targetValue": "100"}}}},
    {"global": {"imagePullSecrets": ["a", {"name": "b"}]}},
    {"jobManager": {"userDefinedVariables": {"userDefinedJson": '{"Error": "a fine variable name"}'}}},
    {"jobManager": {"userDefinedVariables": {"userDefinedFile": ' {"Error": "x"}\n'}}},
])
def test_accepted_edge_values(chart, values):
    render(chart, deep_merge(REQUIRED, values))
