"""The chart's Role grants exactly what the job manager uses: the rules `job-manager rbac`
prints (job-manager/src/kubernetes/rbac.rs), no more, no less."""
from conftest import REQUIRED, render

# What job-manager/src/kubernetes/rbac.rs declares, until `job-manager rbac` is committed;
# then this test compares against the subcommand's output instead.
EXPECTED_RULES = [
    {"apiGroups": ["jobs.jobmanager.dev"], "resources": ["jobrecords"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": ["jobs.jobmanager.dev"], "resources": ["jobrecords/status"], "verbs": ["get", "update", "patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "patch"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["get", "patch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]},
]


def grants(rules: list) -> set:
    """(apiGroup, resource, verb) triples: the comparison ignores how rules are grouped."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_role_grants_exactly_what_the_job_manager_uses(chart):
    role = render(chart, REQUIRED).one("Role")
    granted, needed = grants(role["rules"]), grants(EXPECTED_RULES)
    assert granted == needed, f"extra: {sorted(granted - needed)}; missing: {sorted(needed - granted)}"
