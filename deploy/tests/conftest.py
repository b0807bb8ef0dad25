"""Shared helpers for the chart tests: render with real Helm (helm-python-sdk, Helm v4 as
a library) and validate with kubernetes-validate. Everything is offline."""
import functools
import os
import subprocess
from pathlib import Path

import helm_python as helm
import kubernetes_validate.utils as kv_utils
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "job-manager"
RELEASE = "jm"
NAMESPACE = "jobs"
# Oldest supported (native sidecars need 1.29) and newest known to kubernetes-validate.
KUBE_VERSIONS = ["1.29.0", "1.37.0"]

# The seeds' install example, exactly as an operator types it.
SEED_SET_ARGS = ["jobManager.locationKey=<enter_location_key>", "global.internalApiKey=<enter_internal_api_key>"]
REQUIRED = {"jobManager": {"locationKey": "loc-key-123"}, "global": {"internalApiKey": "internal-key-456"}}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def seed_values() -> dict:
    values: dict = {}
    for arg in SEED_SET_ARGS:
        values = deep_merge(values, helm.parse_set_string(arg))
    return values


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    """A rendered release: documents by (kind, name), plus the raw files (NOTES.txt)."""

    def __init__(self, files: dict):
        self.files = files
        self.docs = []
        for path, text in sorted(files.items()):
            if not path.endswith(".yaml"):
                continue
            self.docs += [d for d in yaml.safe_load_all(text) if d]

    def of_kind(self, kind: str) -> list:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
        return found[0]

    def kinds(self) -> set:
        return {d["kind"] for d in self.docs}

    def notes(self) -> str:
        return next(v for k, v in self.files.items() if k.endswith("NOTES.txt"))

    def config_map(self) -> dict:
        """The job manager's own ConfigMap (config.yaml and the files it names)."""
        return self.one("ConfigMap", f"{RELEASE}-job-manager-config")

    def config(self) -> dict:
        return yaml.safe_load(self.config_map()["data"]["config.yaml"])

    def jm_pod(self) -> dict:
        return self.one("Deployment")["spec"]["template"]["spec"]

    def jm_container(self) -> dict:
        return self.jm_pod()["containers"][0]

    def env(self) -> dict:
        return {e["name"]: e for e in self.jm_container()["env"]}


def render(chart, values: dict) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


@functools.lru_cache(maxsize=None)
def _schema_contents(filename: str, desired_version: str):
    return _uncached_schema_contents(filename, desired_version)


# kubernetes-validate re-reads and re-parses its (large) schema files for every document;
# caching them keeps the whole matrix well under a minute without changing what is checked.
_uncached_schema_contents = kv_utils.schema_contents
kv_utils.schema_contents = _schema_contents


def kube_validate(doc: dict, version: str) -> None:
    """Strict validation of one manifest; raises on any error. Unknown kinds raise too:
    callers decide which custom resources the validator cannot know."""
    kv_utils.validate(doc, version, strict=True)


class PlainLoader(yaml.SafeLoader):
    """Leaves timestamps as strings, as the API server and JSON Schema see them."""


PlainLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_all(text: str) -> list:
    return [d for d in yaml.load_all(text, Loader=PlainLoader) if d]


def job_manager_binary() -> Path | None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    path = target / "debug" / "job-manager"
    return path if path.exists() else None


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **kw.pop("env", {})}, **kw)
