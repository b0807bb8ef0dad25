#!/usr/bin/env python3
"""The workspace's declared `rust-version` must be at least every dependency's.

    deploy/scripts/check-msrv.py            (after a build: reads the registry sources)

Reads `Cargo.lock`, finds each registry package's own `Cargo.toml` in cargo's registry
source cache, and compares the highest `rust-version` there with the workspace's. Exits
1 naming the packages that need more than is declared; 2 if sources are missing (run a
build first). Prints the declared and the required version on success.
"""
import glob
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main() -> int:
    manifest = open(os.path.join(root, "Cargo.toml")).read()
    declared_text = re.search(r'^rust-version\s*=\s*"([^"]+)"', manifest, re.M).group(1)
    declared = version(declared_text)
    lock = open(os.path.join(root, "Cargo.lock")).read()
    packages = re.findall(r'\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"\nsource = "registry', lock)
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    registries = glob.glob(os.path.join(cargo_home, "registry", "src", "*"))
    needs, missing = [], []
    for name, ver in packages:
        found = [p for r in registries for p in [os.path.join(r, f"{name}-{ver}", "Cargo.toml")] if os.path.exists(p)]
        if not found:
            missing.append(f"{name} {ver}")
            continue
        m = re.search(r'^rust-version\s*=\s*"([^"]+)"', open(found[0]).read(), re.M)
        if m:
            needs.append((version(m.group(1)), m.group(1), f"{name} {ver}"))
    if missing:
        print(f"check-msrv: no sources for {len(missing)} packages (e.g. {missing[0]}): build first", file=sys.stderr)
        return 2
    needs.sort()
    required = needs[-1] if needs else ((0,), "0", "nothing")
    too_new = [f"{pkg} needs {text}" for v, text, pkg in needs if v > declared]
    if too_new:
        print(f"check-msrv: rust-version = {declared_text} in Cargo.toml, but: " + "; ".join(too_new), file=sys.stderr)
        return 1
    print(f"check-msrv: rust-version {declared_text} covers every dependency (highest: {required[2]}, {required[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
