"""deploy/scripts/sbom.py: the SBOM lists exactly the runtime crates of the binary's
embedded `.dep-v0` list (cargo-auditable format), with licences and checksums, and is
byte-identical for identical inputs. The binary is a copy of /bin/true with a section
added by objcopy, so no Rust build is needed."""
import json
import shutil
import subprocess
import tomllib
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "scripts" / "sbom.py"


def locked(name: str) -> dict:
    with open(ROOT / "Cargo.lock", "rb") as f:
        return next(p for p in tomllib.load(f)["package"] if p["name"] == name)


def binary_with(tmp_path: Path, packages: list) -> Path:
    section = tmp_path / "dep-v0"
    section.write_bytes(zlib.compress(json.dumps({"packages": packages}).encode()))
    plain = tmp_path / "plain"
    shutil.copy("/bin/true", plain)
    out = tmp_path / "bin"
    subprocess.run(["objcopy", "--add-section", f".dep-v0={section}", str(plain), str(out)], check=True)
    return out


def sbom(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), str(binary), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_runtime_crates_only_with_licences_checksums_and_edges(tmp_path):
    itoa, syn, derive = locked("itoa"), locked("syn"), locked("serde_derive")
    packages = [
        {"name": "sidecar", "version": "0.1.0", "source": "local", "root": True, "dependencies": [1, 2]},
        {"name": "common", "version": "0.1.0", "source": "local", "dependencies": [3, 5]},
        {"name": "syn", "version": syn["version"], "source": "crates.io", "kind": "build"},
        {"name": "itoa", "version": itoa["version"], "source": "crates.io"},
        {"name": "unreached", "version": "9.9.9", "source": "crates.io"},
        # cargo-auditable lists a proc macro named by a normal dependency as runtime.
        {"name": "serde_derive", "version": derive["version"], "source": "crates.io", "dependencies": [6]},
        {"name": "proc-macro2", "version": locked("proc-macro2")["version"], "source": "crates.io"},
    ]
    out = sbom(binary_with(tmp_path, packages), "sidecar", "0.1.0", "abc123", "1700000000")
    assert out.returncode == 0, out.stderr
    bom = json.loads(out.stdout)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    assert bom["metadata"]["timestamp"] == "2023-11-14T22:13:20Z"
    assert bom["metadata"]["component"]["purl"] == "pkg:cargo/sidecar@0.1.0?vcs_commit=abc123"
    by_name = {c["name"]: c for c in bom["components"]}
    assert sorted(by_name) == ["common", "itoa"], "build-time, proc-macro and unreachable crates are not in the binary"
    assert by_name["itoa"]["hashes"] == [{"alg": "SHA-256", "content": itoa["checksum"]}]
    assert by_name["itoa"]["licenses"] == [{"expression": "MIT OR Apache-2.0"}]
    assert by_name["common"]["licenses"] == [{"expression": "Apache-2.0"}]
    edges = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}
    assert edges["pkg:cargo/sidecar@0.1.0"] == ["pkg:cargo/common@0.1.0"]
    assert edges["pkg:cargo/common@0.1.0"] == [f"pkg:cargo/itoa@{itoa['version']}"]
    again = sbom(binary_with(tmp_path, packages), "sidecar", "0.1.0", "abc123", "1700000000")
    assert again.stdout == out.stdout, "same inputs, same bytes"


@pytest.mark.parametrize("packages", [None, [{"name": "a", "version": "1", "source": "local"}]],
                         ids=["no-section", "no-root"])
def test_a_binary_without_a_usable_crate_list_is_refused(tmp_path, packages):
    binary = binary_with(tmp_path, packages) if packages else Path("/bin/true")
    out = sbom(binary, "x", "0.1.0", "abc", "0")
    assert out.returncode != 0 and out.stdout == ""
    assert ("no .dep-v0 section" if packages is None else "expected one root package") in out.stderr
