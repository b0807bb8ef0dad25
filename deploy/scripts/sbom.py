#!/usr/bin/env python3
"""CycloneDX 1.5 SBOM of one binary, from the dependency list `cargo auditable` embedded in it.

    sbom.py BINARY NAME VERSION COMMIT EPOCH > NAME.cdx.json

The crate list is the `.dep-v0` section of the binary itself (zlib-compressed JSON, the
cargo-auditable format), so it names exactly the crates linked into that binary: no
dev-dependencies, no crates of other targets or of other binaries. Build-time crates
(build scripts, and proc macros, which cargo-auditable lists as runtime crates when a
normal dependency names them, found through `cargo metadata`) are left out with whatever
only they reach: none of their code is in the image. Licences
come from `cargo metadata`, SHA-256 checksums from Cargo.lock. The output depends only on
its inputs (timestamp from EPOCH, serial number derived from the content), so two builds
of one commit give the same file.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import uuid
import zlib
from datetime import datetime, timezone


def embedded_packages(binary):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "dep-v0")
        res = subprocess.run(["objcopy", "--dump-section", f".dep-v0={out}", binary, os.path.join(tmp, "copy")],
                             capture_output=True, text=True)
        if res.returncode != 0 or not os.path.exists(out):
            sys.exit(f"sbom: {binary} has no .dep-v0 section (not built with `cargo auditable`): {res.stderr.strip()}")
        with open(out, "rb") as f:
            return json.loads(zlib.decompress(f.read()))["packages"]


def runtime_closure(packages, proc_macros):
    """Indices of the root and of every package it reaches through runtime edges, not
    entering build-time crates or proc macros."""
    roots = [i for i, p in enumerate(packages) if p.get("root")]
    if len(roots) != 1:
        sys.exit(f"sbom: expected one root package in .dep-v0, found {len(roots)}")
    seen, todo = set(), roots[:]
    while todo:
        i = todo.pop()
        p = packages[i]
        if i in seen or p.get("kind", "runtime") != "runtime" or (p["name"], p["version"]) in proc_macros:
            continue
        seen.add(i)
        todo.extend(packages[i].get("dependencies", []))
    return roots[0], seen


def purl(p):
    return f"pkg:cargo/{p['name']}@{p['version']}"


def main():
    if len(sys.argv) != 6:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    binary, name, version, commit, epoch = sys.argv[1:]
    packages = embedded_packages(binary)
    meta = json.loads(subprocess.run(["cargo", "metadata", "--format-version", "1", "--locked", "--offline"],
                                     check=True, capture_output=True, text=True).stdout)
    proc_macros = {(p["name"], p["version"]) for p in meta["packages"]
                   if any("proc-macro" in t["kind"] for t in p["targets"])}
    root, keep = runtime_closure(packages, proc_macros)
    licences = {(p["name"], p["version"]): p.get("license") for p in meta["packages"]}
    with open(os.path.join(meta["workspace_root"], "Cargo.lock"), "rb") as f:
        checksums = {(p["name"], p["version"]): p.get("checksum") for p in tomllib.load(f)["package"]}

    def component(i):
        p = packages[i]
        c = {"type": "application" if i == root else "library", "bom-ref": purl(p), "name": p["name"],
             "version": p["version"], "purl": purl(p)}
        lic = licences.get((p["name"], p["version"]))
        if lic:
            c["licenses"] = [{"expression": lic}]
        digest = checksums.get((p["name"], p["version"]))
        if digest:
            c["hashes"] = [{"alg": "SHA-256", "content": digest}]
        return c

    others = sorted((i for i in keep if i != root), key=lambda i: (packages[i]["name"], packages[i]["version"]))
    with open(binary, "rb") as f:
        binary_sha = hashlib.sha256(f.read()).hexdigest()
    subject = component(root)
    subject.update({"name": name, "version": version, "bom-ref": f"pkg:cargo/{name}@{version}",
                    "purl": f"pkg:cargo/{name}@{version}?vcs_commit={commit}",
                    "hashes": [{"alg": "SHA-256", "content": binary_sha}]})
    ref = {i: component(i)["bom-ref"] for i in keep}
    ref[root] = subject["bom-ref"]
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{name}@{version}:{commit}:{binary_sha}')}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "deploy/scripts/sbom.py"}]},
            "component": subject,
        },
        "components": [component(i) for i in others],
        "dependencies": [
            {"ref": ref[i], "dependsOn": sorted({ref[d] for d in packages[i].get("dependencies", []) if d in keep})}
            for i in [root] + others
        ],
    }
    json.dump(bom, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
