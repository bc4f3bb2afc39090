#!/usr/bin/env bash
# Checks the library's stated MSRV (`rust-version` in crates/bufring/Cargo.toml) without an old
# toolchain:
# 1. clippy's incompatible_msrv lint over the library, its tests, benches and the model
#    (clippy.toml turns it on for test code too): no standard-library API newer than the MSRV.
#    It does not see language features; the MSRV section of CONTRIBUTING.md lists what to watch.
# 2. Every package the library builds on (normal and build dependencies, as locked in
#    Cargo.lock) declares a rust-version no newer than the library's.
# The test-only dependencies locked for the workspace may need a newer Rust (CONTRIBUTING.md
# says how to lock versions that fit the MSRV).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== clippy incompatible_msrv (library, all targets, all features)"
# Cargo does not re-lint a crate when only its rust-version changed: make clippy look again.
touch crates/bufring/src/lib.rs
cargo clippy -p bufring --all-targets --all-features -- -D clippy::incompatible_msrv

echo "== rust-version of the library's dependencies"
python3 - <<'PY'
import json, subprocess, sys

m = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked",
     "--filter-platform", "x86_64-unknown-linux-gnu"],
    check=True, stdout=subprocess.PIPE).stdout)
pkgs = {p["id"]: p for p in m["packages"]}
nodes = {n["id"]: n for n in m["resolve"]["nodes"]}
root = next(i for i, p in pkgs.items() if p["name"] == "bufring" and p["source"] is None)


def ver(v):
    return tuple(int(x) for x in (v or "0").split("."))


msrv = pkgs[root]["rust_version"]
seen, todo, bad = set(), [root], []
while todo:
    i = todo.pop()
    for d in nodes[i]["deps"]:
        # Normal and build dependencies, but not cfg(loom) ones (loom is a CI-only checker).
        if any(k["kind"] in (None, "build") and "loom" not in (k["target"] or "")
               for k in d["dep_kinds"]):
            if d["pkg"] not in seen:
                seen.add(d["pkg"])
                todo.append(d["pkg"])
for i in sorted(seen, key=lambda i: pkgs[i]["name"]):
    p = pkgs[i]
    rv = p["rust_version"] or "(none)"
    print(f"  {p['name']} {p['version']}: rust-version {rv}")
    if ver(p["rust_version"]) > ver(msrv):
        bad.append(f"{p['name']} {p['version']} needs Rust {rv}")
if bad:
    sys.exit(f"bufring states rust-version {msrv}, but: " + "; ".join(bad))
print(f"bufring's rust-version {msrv} holds for all {len(seen)} dependencies")
PY
