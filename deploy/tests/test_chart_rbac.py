"""The chart's Role grants exactly what the job manager uses: the rules `job-manager rbac`
prints (job-manager/src/backend/kubernetes/rbac.rs), no more, no less."""
import yaml

from conftest import REQUIRED, job_manager_binary, render, run


def grants(rules: list) -> set:
    """(apiGroup, resource, verb) triples: the comparison ignores how rules are grouped."""
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def job_manager_rules() -> list:
    binary = job_manager_binary()
    assert binary, "target/debug/job-manager missing: chart-test.sh builds it (cargo build -p job-manager --bins)"
    out = run([str(binary), "rbac"])
    assert out.returncode == 0, f"job-manager rbac failed: {out.stderr}"
    rules = yaml.safe_load(out.stdout)
    assert isinstance(rules, list) and rules, out.stdout
    return rules


def test_role_grants_exactly_what_the_job_manager_uses(chart):
    role = render(chart, REQUIRED).one("Role")
    granted, needed = grants(role["rules"]), grants(job_manager_rules())
    assert granted == needed, (
        f"extra: {sorted(granted - needed)}; missing: {sorted(needed - granted)}; "
        "regenerate with: target/debug/job-manager rbac > deploy/helm/job-manager/files/role-rules.yaml")
