"""deploy/scripts/images.sh push: TLS is verified for every registry but a loopback one.
The script is sourced (functions only) with a fake buildah on PATH that records its
arguments, so the real cmd_push runs and nothing is pushed anywhere."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "scripts" / "images.sh"

LOOPBACK = ["127.0.0.1:5000", "127.0.0.1", "localhost:5000", "localhost", "[::1]:5000", "[::1]"]
# Everything else verifies, including names and spellings built to look like loopback.
REMOTE = ["registry.example.com", "registry.example.com:443", "ghcr.io", "10.0.0.5:5000", "192.168.1.10:5000",
          "127.0.0.1.nip.io:5000", "localhost.example.com:5000", "127.0.0.2:5000", "127.1:5000", "[::2]:5000",
          "localhost:5000/../evil", "evil.com/localhost:5000", "localhost:5000 evil.com", "user@localhost:5000",
          "LOCALHOST.:5000", "[::1]x:5000", "0.0.0.0:5000", ""]


def run(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for tool in ("buildah", "skopeo", "podman"):
        fake = fake_bin / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", f'source "{SCRIPT}"; {script}'], env=env, capture_output=True, text=True,
                          timeout=30)


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("registry", LOOPBACK + REMOTE)
def test_tls_verify_for(registry, tmp_path):
    out = run(f'tls_verify_for {registry!r}', tmp_path)
    assert out.returncode == 0, out.stderr
    want = "false" if registry in LOOPBACK else "true"
    assert out.stdout.strip() == want, f"{registry!r}: {out.stdout!r}"


# The real cmd_push, with the build-dependent steps stubbed: which images exist and the
# apt/storage setup (buildah itself is the recording fake).
STUBS = "built_names() { echo sidecar; echo job-manager; }; ensure_apt() { :; }; ensure_storage() { :; }"


@pytest.mark.parametrize("registry,verify", [("registry.example.com:443", "true"), ("ghcr.io/acme", "true"),
                                             ("127.0.0.1:5000", "false"), ("localhost:5000", "false"),
                                             ("127.0.0.1.nip.io:5000", "true")])
def test_push_passes_the_decision_to_every_buildah_push(registry, verify, tmp_path):
    out = run(f"{STUBS}; cmd_push {registry!r}", tmp_path)
    assert out.returncode == 0, out.stderr
    pushes = [c for c in calls(tmp_path) if c.startswith("buildah push")]
    assert len(pushes) == 4, pushes  # two images, two tags each
    for c in pushes:
        assert f"--tls-verify={verify}" in c.split(), c
        assert f"docker://{registry}/newrelic/serverless-" in c, c
    if verify == "true":
        assert not any("--tls-verify=false" in c for c in calls(tmp_path))


def test_push_without_a_registry_is_a_usage_error(tmp_path):
    out = run(f"{STUBS}; cmd_push", tmp_path)
    assert out.returncode != 0
    assert "usage: images.sh push REGISTRY" in out.stderr
    assert calls(tmp_path) == []
